"""``sentinel://`` URLs: what they name, what kombu is given, and that a client of one opens nothing until used."""

from __future__ import annotations

import pytest
from redis.sentinel import SentinelConnectionPool

from conveyor.queue.app import create_celery
from conveyor.redis_client import display_url, is_sentinel, parse_sentinel_url, redis_client
from conveyor.settings import Settings

URL = "sentinel://:s%40cret@10.0.0.1:26380,10.0.0.2,10.0.0.3:26381/2?master=jobs"


def test_a_sentinel_url_names_every_sentinel_the_master_the_database_and_the_password() -> None:
    target = parse_sentinel_url(URL)
    assert target.sentinels == (("10.0.0.1", 26380), ("10.0.0.2", 26379), ("10.0.0.3", 26381))
    assert (target.master, target.db, target.password) == ("jobs", 2, "s@cret")
    assert is_sentinel(URL) and not is_sentinel("redis://127.0.0.1:6379/0")
    assert display_url(URL) == "sentinel://10.0.0.1:26380,10.0.0.2:26379,10.0.0.3:26381/2?master=jobs"


@pytest.mark.parametrize("bad", ["sentinel://10.0.0.1:26379/0", "sentinel:///0?master=m", "redis://h/0?master=m"])
def test_a_sentinel_url_without_a_master_or_a_sentinel_is_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_sentinel_url(bad)


def test_celery_gets_kombus_sentinel_transport_with_every_sentinel_and_the_master_name() -> None:
    app = create_celery(Settings(_env_file=None, redis_url=URL))  # type: ignore[call-arg]
    assert app.conf.broker_transport == "conveyor.queue.transport:SentinelTransport"
    assert app.conf.broker_transport_options["master_name"] == "jobs"
    connection = app.connection_for_write()
    assert connection.alt == [
        "sentinel://:s%40cret@10.0.0.1:26380/2",
        "sentinel://:s%40cret@10.0.0.2:26379/2",
        "sentinel://:s%40cret@10.0.0.3:26381/2",
    ]
    assert connection.password == "s@cret"
    connection.release()


def test_a_client_of_a_sentinel_url_asks_the_sentinels_only_when_used() -> None:
    client = redis_client(URL)
    assert isinstance(client.connection_pool, SentinelConnectionPool)
    assert client.connection_pool.service_name == "jobs"
    client.close()


def test_settings_refuse_a_sentinel_url_without_a_master() -> None:
    with pytest.raises(ValueError, match="master"):
        Settings(_env_file=None, redis_url="sentinel://10.0.0.1:26379/0")  # type: ignore[call-arg]
