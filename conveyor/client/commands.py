"""The client commands of ``conveyor``: their arguments and what each does.

Every command exits 0 when it did what was asked, 2 with one line on stderr when the api refused it or could not
be reached; ``watch`` (and ``--watch``) exits 1 when a job it followed failed or was cancelled.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conveyor.client.http import Api, ApiError, api_key, api_url
from conveyor.client.stream import EventReader
from conveyor.settings import Settings

if TYPE_CHECKING:  # rich is imported by the commands that draw, not by every `conveyor` start
    from conveyor.client.display import Display

NAMES = ("submit", "upload", "watch", "jobs", "job", "retry", "cancel", "tail")
CHANNELS = ("log", "webhook", "email", "websocket", "http")
FINISHED = frozenset({"succeeded", "failed", "cancelled"})
#: Exit status of a command the api refused, or of a bad argument.
REFUSED = 2
#: The body's text fields that have a flag of their own, and which channels read each.
_TEXT_FLAGS = {
    "message": "log: the message; websocket: the message (JSON, or else text)",
    "level": "log: debug, info, warning or error",
    "url": "webhook, http: where to send it",
    "type": "webhook: the event type (default notification)",
    "subject": "email: the subject",
    "text": "email: the plain-text body",
    "html": "email: an HTML body as well",
    "topic": "websocket: the topic to publish to",
    "method": "http: GET, POST, PUT, PATCH or DELETE",
    "secret": "webhook: its own signing secret (whsec_…), instead of the server's",
}


class UsageError(Exception):
    """An argument the client cannot use (not JSON, say)."""


def add_arguments(name: str, command: argparse.ArgumentParser) -> None:
    """The arguments of client command ``name``."""
    command.add_argument("--api", help="the api's address (default: CONVEYOR_API_URL, else the local api)")
    command.add_argument("--key", help="the API key (default: CONVEYOR_API_KEY, else var/dev-api-key)")
    command.add_argument("--output", choices=("text", "json"), default="text", help="json: for scripts")
    if name != "submit":
        command.add_argument("--json", dest="output", action="store_const", const="json", help="same as --output json")
    if name == "submit":
        command.add_argument("channel", choices=CHANNELS)
        command.add_argument("--json", dest="body", metavar="BODY", help="the whole body, as JSON (flags add to it)")
        for flag, text in _TEXT_FLAGS.items():
            command.add_argument(f"--{flag}", help=text)
        command.add_argument("--data", metavar="JSON", help="log, webhook: structured data, as a JSON object")
        command.add_argument("--to", action="append", help="email: a recipient (repeat for more)")
        command.add_argument("--header", action="append", metavar="NAME=VALUE", help="http: a header (repeatable)")
        command.add_argument("--idempotency-key", help="the same key returns the same job")
        command.add_argument("--watch", action="store_true", help="follow the job until it finishes")
    if name == "upload":
        command.add_argument("files", nargs="+", type=Path, metavar="FILE")
        command.add_argument("--watch", action="store_true", help="then follow the processing until it finishes")
    if name == "watch":
        command.add_argument("job_ids", nargs="+", metavar="JOB_ID")
    if name in ("job", "retry", "cancel"):
        command.add_argument("job_id", metavar="JOB_ID")
    if name == "jobs":
        command.add_argument("--status", choices=("queued", "started", "retrying", "succeeded", "failed", "cancelled"))
        command.add_argument("--kind", choices=("notification", "upload"))
        command.add_argument("--limit", type=int, default=50)


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Carry out client command ``args.command``; its exit status."""
    api = Api(api_url(settings, args.api), api_key(settings, args.key))
    try:
        return _HANDLERS[args.command](api, args)
    except (ApiError, UsageError) as exc:
        sys.stderr.write(f"conveyor {args.command}: {exc}\n")
        return REFUSED
    except KeyboardInterrupt:
        return 130
    finally:
        api.close()


def _display(args: argparse.Namespace) -> Display | None:
    """Bars (or plain lines) for text output; none for ``--output json``."""
    if args.output == "json":
        return None
    from conveyor.client.display import Display

    return Display()


def _write(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _json(value: Any, pretty: bool = False) -> str:
    return json.dumps(value, indent=2 if pretty else None, ensure_ascii=False)


def _parse(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{what} is not JSON: {exc}") from exc


def submit_body(args: argparse.Namespace) -> dict[str, Any]:
    """The notification body the flags describe (``--json BODY`` first, each flag over it)."""
    body = _parse(args.body, "--json") if args.body else {}
    if not isinstance(body, dict):
        raise UsageError("--json must be a JSON object")
    body["channel"] = args.channel
    for flag in _TEXT_FLAGS:
        value = getattr(args, flag)
        if value is not None:
            body[flag] = value
    if args.channel == "websocket" and args.message is not None:
        try:
            body["message"] = json.loads(args.message)
        except json.JSONDecodeError:
            body["message"] = args.message
    if args.data is not None:
        body["data"] = _parse(args.data, "--data")
    if args.to:
        body["to"] = args.to
    if args.header:
        pairs = [item.partition("=") for item in args.header]
        if any(not sep or not name for name, sep, _ in pairs):
            raise UsageError("--header takes NAME=VALUE")
        body["headers"] = {name: value for name, _, value in pairs}
    return body


def cmd_submit(api: Api, args: argparse.Namespace) -> int:
    """Submit a notification; prints its job id (or follows it with ``--watch``)."""
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else {}
    accepted = api.call("POST", "/notifications", json=submit_body(args), headers=headers)
    if not args.watch:
        _write(_json(accepted) if args.output == "json" else accepted["job_id"])
        return 0
    if args.output == "json":
        _write(_json(accepted))
    display = _display(args)
    try:
        return follow(api, {accepted["job_id"]: f"{args.channel} {accepted['job_id']}"}, display)
    finally:
        if display is not None:
            display.close()


def cmd_upload(api: Api, args: argparse.Namespace) -> int:
    """Upload files, each with a bar of the bytes sent (and its rate); with ``--watch`` a second bar per file
    follows its processing by a worker."""
    for path in args.files:
        if not path.is_file():
            raise UsageError(f"{path}: no such file")
    display = _display(args)
    jobs: dict[str, str] = {}
    try:
        for path in args.files:
            accepted = _send(api, path, display)
            if display is None:
                _write(_json(accepted))
            else:
                display.line(f"{path.name} job {accepted['job_id']}")
            jobs[accepted["job_id"]] = f"processing {path.name}"
        return follow(api, jobs, display) if args.watch else 0
    finally:
        if display is not None:
            display.close()


def _send(api: Api, path: Path, display: Display | None) -> dict[str, Any]:
    size = path.stat().st_size
    if display is None:
        return api.upload(path, lambda _done: None)
    key = f"send:{path}"
    display.add(key, f"sending {path.name}", size, in_bytes=True)
    accepted = api.upload(path, lambda done: display.update(key, done))
    display.update(key, size, status="sent")
    return accepted


def follow(api: Api, jobs: dict[str, str], display: Display | None) -> int:
    """Follow ``jobs`` (id: label) on the event stream until each has finished, one bar per job (or, without a
    display, each event as a JSON line). 0 when all succeeded, 1 when any failed or was cancelled."""
    status: dict[str, str] = {}
    for job_id, label in jobs.items():
        job = api.call("GET", f"/jobs/{job_id}")
        status[job_id] = job["status"]
        if display is not None:
            display.add(job_id, label)
            display.update(job_id, 100 if job["status"] == "succeeded" else job["progress"], job["status"])
    reconnecting: Callable[[str], None] = lambda _reason: None  # noqa: E731
    if display is not None:
        reconnecting = lambda reason: display.line(f"reconnecting: {reason}")  # noqa: E731
    if not FINISHED.issuperset(status.values()):
        for event in EventReader(api, list(jobs), reconnecting):
            if display is None:
                _write(_json(event))
            if event.get("type") == "resync":  # events may be missing: read the jobs themselves
                for job_id in jobs:
                    job = api.call("GET", f"/jobs/{job_id}")
                    _show(display, status, job_id, job["status"], job["progress"])
            elif event.get("job_id") in jobs and event.get("status"):
                _show(display, status, event["job_id"], event["status"], event.get("progress"))
            if FINISHED.issuperset(status.values()):
                break
    if display is not None:
        for job_id, label in jobs.items():
            if status[job_id] != "succeeded":
                display.line(f"{label}: {status[job_id]}")
    return 0 if all(value == "succeeded" for value in status.values()) else 1


def _show(display: Display | None, status: dict[str, str], job_id: str, now: str, progress: float | None) -> None:
    status[job_id] = now
    if display is not None:
        display.update(job_id, 100 if now == "succeeded" else progress, now)


def cmd_watch(api: Api, args: argparse.Namespace) -> int:
    """Follow jobs until they finish: a bar each, live, resumed after a disconnect."""
    display = _display(args)
    try:
        return follow(api, {job_id: job_id for job_id in args.job_ids}, display)
    finally:
        if display is not None:
            display.close()


def cmd_jobs(api: Api, args: argparse.Namespace) -> int:
    """The caller's jobs, newest first: a table on a terminal, a line each otherwise."""
    params = {"limit": args.limit, **{k: v for k in ("status", "kind") if (v := getattr(args, k))}}
    page = api.call("GET", "/jobs", params=params)
    if args.output == "json":
        _write(_json(page))
        return 0
    rows = [
        (job["job_id"], job["kind"], job["status"], f"{job['progress']:.0f}%", job["created_at"][:19].replace("T", " "))
        for job in page["jobs"]
    ]
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table("job", "kind", "status", "progress", "created (UTC)")
        for row in rows:
            table.add_row(*row)
        Console().print(table)
    else:
        for row in rows:
            _write("  ".join(row))
    return 0


def cmd_job(api: Api, args: argparse.Namespace) -> int:
    """One job as the api holds it."""
    _write(_json(api.call("GET", f"/jobs/{args.job_id}"), pretty=args.output == "text"))
    return 0


def cmd_retry(api: Api, args: argparse.Namespace) -> int:
    """Queue a failed job again."""
    job = api.call("POST", f"/jobs/{args.job_id}/retry")
    _write(_json(job) if args.output == "json" else f"{job['job_id']} {job['status']}")
    return 0


def cmd_cancel(api: Api, args: argparse.Namespace) -> int:
    """Cancel a job that has not finished."""
    job = api.call("DELETE", f"/jobs/{args.job_id}")
    _write(_json(job) if args.output == "json" else f"{job['job_id']} {job['status']}")
    return 0


def cmd_tail(api: Api, args: argparse.Namespace) -> int:
    """Every event of the caller's jobs as it happens, until Ctrl-C."""

    def reconnecting(reason: str) -> None:
        sys.stderr.write(f"reconnecting: {reason}\n")

    reader = EventReader(api, (), reconnecting)
    for event in reader:
        if args.output == "json":
            _write(_json(event))
            continue
        progress = event.get("progress")
        fields = [
            event.get("type", "?"),
            event.get("job_id") or event.get("topic") or "",
            event.get("status") or "",
            "" if progress is None else f"{progress:.0f}%",
            event.get("error") or "",
        ]
        _write(" ".join(field for field in fields if field))
    return 0


_HANDLERS: dict[str, Callable[[Api, argparse.Namespace], int]] = {
    "submit": cmd_submit,
    "upload": cmd_upload,
    "watch": cmd_watch,
    "jobs": cmd_jobs,
    "job": cmd_job,
    "retry": cmd_retry,
    "cancel": cmd_cancel,
    "tail": cmd_tail,
}


def summary(name: str) -> str:
    """The first line of client command ``name``'s description."""
    return (_HANDLERS[name].__doc__ or "").splitlines()[0]
