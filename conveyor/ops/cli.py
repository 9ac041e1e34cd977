"""The ``conveyor`` command: run the whole stack or any one part of it."""

from __future__ import annotations

import argparse
import atexit
import logging
import math
import os
import sys
from collections.abc import Sequence
from typing import TextIO

from conveyor import logs, names
from conveyor.settings import Settings, get_settings

log = logs.get("conveyor.ops.cli")


def _migrate(settings: Settings) -> None:
    from conveyor.store.db import create_engine, migrate

    engine = create_engine(settings.effective_database_url)
    try:
        migrate(engine)
    finally:
        engine.dispose()


def cmd_migrate(settings: Settings, _args: argparse.Namespace) -> int:
    """Apply the job store's migrations and exit."""
    _migrate(settings)
    log.info("migrations applied", database=settings.effective_database_url.split("@")[-1])
    return 0


def cmd_api(settings: Settings, args: argparse.Namespace) -> int:
    """Serve the HTTP and WebSocket api with uvicorn (the app applies migrations as it starts)."""
    import uvicorn

    uvicorn.run(
        "api.main:create_app",
        factory=True,
        host=args.host or settings.api_host,
        port=args.port or settings.api_port,
        loop="uvloop",
        # uvicorn's httptools protocol plus header and idle deadlines and a per-address cap (api/connections.py).
        http="api.connections:HttpProtocol",
        ws="api.streams.native:WebSocketProtocol",
        log_config=None,
        access_log=False,
        timeout_keep_alive=math.ceil(settings.keepalive_timeout_seconds),
        timeout_graceful_shutdown=3,
        ws_per_message_deflate=False,
        ws_ping_interval=settings.ws_ping_interval or None,
        ws_ping_timeout=settings.ws_ping_timeout,
    )
    return 0


def worker_pool(settings: Settings, queues: list[str]) -> tuple[str, int]:
    """The Celery pool and concurrency that suit ``queues``: notifications are network waits, run on threads that
    share one process (and its job-store commits); uploads hash and copy bytes, in processes; housekeeping runs one
    short task at a time in the worker process itself."""
    if queues == [names.QUEUE_NOTIFICATIONS]:
        return "threads", settings.notification_threads
    if queues == [names.QUEUE_HOUSEKEEPING]:
        return "solo", 1
    return "prefork", settings.worker_concurrency


def default_hostname(queues: list[str]) -> str:
    """A worker's node name: its queues, its process id and the host (``notifications-4242@vm``), so that several
    workers of one queue on one host are told apart (Flower lists each, with its own counts)."""
    return f"{'+'.join(queues)}-{os.getpid()}@%h"


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    """Run a Celery worker for the given queues (tasks are imported by the worker only)."""
    from conveyor.queue.app import app

    _migrate(settings)
    queues = args.queues.split(",")
    unknown = set(queues) - set(names.QUEUES)
    if unknown:
        log.error("unknown queues", unknown=",".join(sorted(unknown)), known=",".join(names.QUEUES))
        return 2
    pool, concurrency = worker_pool(settings, queues)
    app.worker_main(
        [
            "worker",
            f"--queues={','.join(queues)}",
            f"--pool={args.pool or pool}",
            f"--concurrency={args.concurrency or concurrency}",
            f"--hostname={args.hostname or default_hostname(queues)}",
            f"--loglevel={settings.log_level}",
            "--without-mingle",
            "--without-gossip",
        ]
    )
    return 0


def cmd_beat(settings: Settings, _args: argparse.Namespace) -> int:
    """Run Celery beat, which schedules the housekeeping tasks. Run exactly one."""
    from conveyor.queue.app import app

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app.start(
        [
            "beat",
            f"--schedule={settings.data_dir / 'celerybeat-schedule'}",
            f"--loglevel={settings.log_level}",
        ]
    )
    return 0


def cmd_flower(settings: Settings, _args: argparse.Namespace) -> int:
    """Run Flower with basic auth on every path but /healthcheck, its /metrics included.

    Credentials come from settings, or in development from a password generated under the data directory
    (docs/SECURITY.md). Exits with 2, never listening, when there are none."""
    from conveyor.ops.flower import serve

    return serve(settings)


def cmd_redis(settings: Settings, _args: argparse.Namespace) -> int:
    """Run the embedded redis-server in the foreground (what ``conveyor run`` starts)."""
    from conveyor.ops.redis_server import redis_command

    settings.redis_dir.mkdir(parents=True, exist_ok=True)
    argv = redis_command(settings.redis_port, settings.redis_dir)
    os.execv(argv[0], argv)  # noqa: S606 - our own redis-server binary and arguments


def _say(line: str, stream: TextIO | None = None) -> None:
    out = stream or sys.stdout
    out.write(line + "\n")
    out.flush()


def cmd_keys(settings: Settings, args: argparse.Namespace) -> int:
    """Make, list and revoke API keys (``create`` prints the new key on its last line, once)."""
    import json

    from conveyor.store.apikeys import InvalidOwner, KeyStore
    from conveyor.store.db import create_engine, migrate

    engine = create_engine(settings.effective_database_url)
    try:
        migrate(engine)
        keys = KeyStore(engine)
        if args.action == "create":
            try:
                key, text = keys.create(args.owner, args.label)
            except InvalidOwner as exc:
                _say(f"conveyor keys: {exc}", sys.stderr)
                return 2
            _say(f"key {key.key_id} for owner {key.owner}; it is shown only now:")
            _say(text)
        elif args.action == "list":
            for key in keys.list(args.owner):
                if args.json:
                    _say(json.dumps(key.as_json()))
                else:
                    state = "active" if key.revoked_at is None else f"revoked {key.revoked_at:%Y-%m-%d %H:%M}"
                    _say(f"{key.key_id}  {key.owner}  {key.created_at:%Y-%m-%d %H:%M}  {state}  {key.label or ''}")
        else:
            revoked = keys.revoke(args.key_id)
            if revoked is None:
                _say(f"conveyor keys: no key {args.key_id}", sys.stderr)
                return 1
            _say(f"revoked {revoked.key_id} (owner {revoked.owner})")
        return 0
    finally:
        engine.dispose()


def development_key(settings: Settings) -> str | None:
    """The development key ``conveyor run`` prints: made on the first start (when no key exists) and kept in
    ``data_dir/dev-api-key``; ``None`` in production, with auth off, or once that key is revoked."""
    from conveyor.store.apikeys import KeyStore
    from conveyor.store.db import create_engine

    if settings.environment != "development" or settings.auth != "keys":
        return None
    path = settings.data_dir / "dev-api-key"
    engine = create_engine(settings.effective_database_url)
    try:
        keys = KeyStore(engine)
        if not path.exists():
            if keys.any_active():
                return None
            _key, text = keys.create("dev", "development key made by conveyor run")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch(0o600)
            path.write_text(text + "\n")
        text = path.read_text().strip()
        return text if keys.verify(text) is not None else None
    finally:
        engine.dispose()


def cmd_run(settings: Settings, _args: argparse.Namespace) -> int:
    """Run the whole stack: embedded Redis (unless configured), api, one worker per queue, beat, Flower."""
    from conveyor.ops.redis_server import port_in_use, redis_command, wait_for_port
    from conveyor.ops.supervisor import Child, Supervisor

    supervisor = Supervisor()
    supervisor.install_signal_handlers()
    env = dict(os.environ, PYTHONUNBUFFERED="1", CONVEYOR_DATA_DIR=str(settings.data_dir))
    env.pop("CONVEYOR_PROCESS_NAME", None)
    status = 1
    try:
        if settings.embedded_redis:
            if port_in_use(settings.redis_port):
                supervisor.say("conveyor", f"port {settings.redis_port} is taken: set CONVEYOR_REDIS_PORT or URL")
                return 1
            settings.redis_dir.mkdir(parents=True, exist_ok=True)
            redis = supervisor.start(Child("redis", redis_command(settings.redis_port, settings.redis_dir), env))
            assert redis.process is not None
            wait_for_port(settings.redis_port, 10, redis.process)
        env["CONVEYOR_REDIS_URL"] = settings.effective_redis_url
        _migrate(settings)
        dev_key = development_key(settings)
        me = [sys.executable, "-m", "conveyor"]
        parts = [("api", ["api"]), *((f"worker-{q}", ["worker", "--queues", q]) for q in names.QUEUES)]
        for name, argv in [*parts, ("beat", ["beat"]), ("flower", ["flower"])]:
            supervisor.start(Child(name, [*me, *argv], {**env, "CONVEYOR_PROCESS_NAME": name}))
        user, password = settings.flower_credentials()
        base = f"http://{settings.api_host}:{settings.api_port}"
        for line in (
            f"api     {base}  (docs {base}/docs, events ws://{settings.api_host}:{settings.api_port}/ws)",
            f"flower  http://{settings.flower_host}:{settings.flower_port}  user={user} password={password}",
            f"redis   {settings.effective_redis_url}" + ("  (embedded)" if settings.embedded_redis else ""),
            *([f"key     {dev_key}  (owner dev; send Authorization: Bearer <key>)"] if dev_key else []),
            *(["auth    OFF: anyone may use the api (CONVEYOR_AUTH=off)"] if settings.auth == "off" else []),
            f"data    {settings.data_dir}",
            "Ctrl-C stops everything.",
        ):
            supervisor.say("conveyor", line)
        status = supervisor.wait()
    finally:
        supervisor.stop(last=("redis",))
    return status


COMMANDS = {
    "run": cmd_run,
    "api": cmd_api,
    "worker": cmd_worker,
    "beat": cmd_beat,
    "flower": cmd_flower,
    "redis": cmd_redis,
    "migrate": cmd_migrate,
    "keys": cmd_keys,
}


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="conveyor", description="Conveyor job service")
    sub = root.add_subparsers(dest="command", required=True)
    for name, func in COMMANDS.items():
        command = sub.add_parser(name, help=(func.__doc__ or "").splitlines()[0])
        if name == "api":
            command.add_argument("--host")
            command.add_argument("--port", type=int)
        if name == "worker":
            command.add_argument("--queues", required=True, help=f"comma-separated, of {','.join(names.QUEUES)}")
            command.add_argument("--concurrency", type=int, help="processes (prefork) or threads of the pool")
            command.add_argument("--pool", choices=("prefork", "threads", "solo"), help="default: suited to the queue")
            command.add_argument("--hostname", help="the node name (default: <queues>-<pid>@<host>); %%h is the host")
        if name == "keys":
            actions = command.add_subparsers(dest="action", required=True)
            create = actions.add_parser("create", help="make a key for an owner; prints it once, on the last line")
            create.add_argument("--owner", required=True, help="whose jobs, uploads and events the key reaches")
            create.add_argument("--label", help="a note to recognise the key by")
            listing = actions.add_parser("list", help="every key: id, owner, created, active or revoked")
            listing.add_argument("--owner")
            listing.add_argument("--json", action="store_true", help="one JSON object per line")
            revoke = actions.add_parser("revoke", help="stop accepting a key (by its id or the whole key)")
            revoke.add_argument("key_id")
    return root


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``conveyor`` console script."""
    args = parser().parse_args(argv)
    settings = get_settings()
    process_name = args.command if args.command != "worker" else f"worker-{args.queues}"
    if args.command == "keys":
        logging.disable(logging.INFO)
    os.environ.setdefault("CONVEYOR_PROCESS_NAME", process_name)
    logs.configure(os.environ["CONVEYOR_PROCESS_NAME"], settings.log_level, settings.log_format)
    if settings.stats_file is not None and args.command != "api":  # the api writes them as its lifespan ends
        from conveyor.store.db import write_stats

        atexit.register(write_stats, settings.stats_file, os.environ["CONVEYOR_PROCESS_NAME"])
    return COMMANDS[args.command](settings, args)
