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
from conveyor.client import commands as client
from conveyor.settings import Settings, env_file_names, get_settings, unknown_variables

log = logs.get("conveyor.ops.cli")


def _migrate(settings: Settings) -> None:
    from conveyor.store.db import migrate_database

    migrate_database(settings.effective_database_url)


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
    """Run Celery beat: it sends the housekeeping tasks, users' schedules among them. One is enough; a second (say,
    one per replica) does no harm: a user schedule fires once per due time however many beats run."""
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
    """Run the embedded redis-server in the foreground, locked as ``conveyor run`` starts it (its password in
    ``data_dir/redis-password``, which the other parts read when ``CONVEYOR_REDIS_URL`` is unset)."""
    from conveyor.ops.redis_server import locked_config, redis_command

    os.umask(0o077)
    config = locked_config(settings.redis_dir, settings.redis_password_file)
    argv = redis_command(settings.redis_port, settings.redis_dir, config=config)
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

    if args.action == "secret-key":
        from conveyor.secrets import new_key

        _say(new_key())
        return 0
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


def cmd_run(settings: Settings, _args: argparse.Namespace) -> int:
    """Run the whole stack, supervised: embedded Redis (unless configured), api, one worker per queue, beat, Flower."""
    from conveyor.ops.run import run_stack

    return run_stack(settings)


def cmd_catcher(settings: Settings, _args: argparse.Namespace) -> int:
    """Catch e-mail and HTTP requests for development: print them instead of sending them on."""
    from conveyor.ops.catcher import serve

    secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret is not None else None
    return serve(settings.catcher_smtp_port, settings.catcher_http_port, secret)


def cmd_client(settings: Settings, args: argparse.Namespace) -> int:
    """Talk to an api as a client (conveyor/client/): submit, upload, watch, jobs, job, retry, cancel, tail."""
    from conveyor.client.commands import run

    return run(settings, args)


COMMANDS = {
    "run": cmd_run,
    "api": cmd_api,
    "worker": cmd_worker,
    "beat": cmd_beat,
    "flower": cmd_flower,
    "redis": cmd_redis,
    "migrate": cmd_migrate,
    "keys": cmd_keys,
    "catcher": cmd_catcher,
    # The command-line client: one handler, the command names and arguments are conveyor.client.commands'.
    **dict.fromkeys(client.NAMES, cmd_client),
}


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="conveyor", description="Conveyor job service")
    sub = root.add_subparsers(dest="command", required=True)
    for name, func in COMMANDS.items():
        if name in client.NAMES:
            client.add_arguments(name, sub.add_parser(name, help=client.summary(name)))
            continue
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
            actions.add_parser("secret-key", help="print a new key for CONVEYOR_SECRETS_KEY (seals webhook secrets)")
    return root


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``conveyor`` console script."""
    args = parser().parse_args(argv)
    settings = get_settings()
    process_name = args.command if args.command != "worker" else f"worker-{args.queues}"
    if args.command == "keys" or args.command in client.NAMES:
        logging.disable(logging.INFO)
    started_by_conveyor = "CONVEYOR_PROCESS_NAME" in os.environ
    os.environ.setdefault("CONVEYOR_PROCESS_NAME", process_name)
    logs.configure(os.environ["CONVEYOR_PROCESS_NAME"], settings.log_level, settings.log_format)
    if not started_by_conveyor:  # warned once, by the process a person started (`conveyor run` passes its env on)
        for name, close in unknown_variables([*os.environ, *env_file_names()]):
            log.warning("unknown setting ignored", variable=name, did_you_mean=close)
    if settings.stats_file is not None and args.command != "api":  # the api writes them as its lifespan ends
        from conveyor.store.db import write_stats

        atexit.register(write_stats, settings.stats_file, os.environ["CONVEYOR_PROCESS_NAME"])
    return COMMANDS[args.command](settings, args)
