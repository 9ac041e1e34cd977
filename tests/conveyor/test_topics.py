"""The shared-topic policy (pure functions)."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from conveyor.settings import Settings
from conveyor.topics import TopicPolicy


def test_topics_are_private_to_each_owner_by_default() -> None:
    policy = TopicPolicy.parse("")
    assert policy.key("alice", "news") != policy.key("bob", "news")
    assert policy.may_publish("alice", "news") and policy.may_subscribe("bob", "news")


def test_shared_topics_have_one_namespace_and_named_publishers() -> None:
    policy = TopicPolicy.parse("news.*:admin, chat.*:*, staff.*:admin|hr:hr")
    assert policy.key("alice", "news.today") == policy.key("bob", "news.today")
    assert policy.may_publish("admin", "news.today") and not policy.may_publish("alice", "news.today")
    assert policy.may_subscribe("alice", "news.today")
    assert policy.may_publish("alice", "chat.x") and policy.may_subscribe("bob", "chat.x")
    assert policy.may_publish("hr", "staff.pay") and not policy.may_subscribe("admin", "staff.pay")
    assert policy.key("alice", "other") != policy.key("bob", "other")


def test_no_private_topic_key_equals_a_shared_one() -> None:
    policy = TopicPolicy.parse("news:*")
    shared = policy.key("alice", "news")
    private = {policy.key(owner, topic) for owner in ("alice", "bob") for topic in ("*/news", "news/x", "x")}
    assert shared not in private and len(private) == 6


@pytest.mark.parametrize("bad", ["news", "news:", ":admin", "a:b:c:d"])
def test_malformed_rules_are_refused_at_start(bad: str) -> None:
    with pytest.raises(ValueError):
        TopicPolicy.parse(bad)
    with pytest.raises(ValueError):
        Settings(_env_file=None, shared_topics=bad)  # type: ignore[call-arg]


def test_auth_off_is_refused_in_production() -> None:
    with pytest.raises(ValueError, match="refused in production"):
        Settings(_env_file=None, environment="production", auth="off", flower_password=SecretStr("x"))  # type: ignore[call-arg]
