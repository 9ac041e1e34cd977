"""The README's shell examples, run as written against a fresh ``conveyor run`` (what ``make run`` starts).

Every ```sh block runs, in order, in one bash session (``set -e``; variables and functions carry over), from a
working directory that looks like the repository's top (``var/`` is the stack's data directory, ``.venv`` the
repository's). A block preceded by ``<!-- not run: <why> -->`` is skipped. The only changes made to the text are the
addresses: ``127.0.0.1:8000`` (the api) and ``127.0.0.1:1080`` (the development catcher) become the ports this test
gave the stack. Conventions the README's text already follows for a reader:

- ``curl`` must answer below 400, unless its line ends with ``# expect NNN`` (then exactly NNN);
- a command ending with ``# … Ctrl-D to leave`` is an interactive client: the plain block right after it shows what
  is typed (``> `` lines, typed here one by one) and what arrives (``< `` lines: their ``type``\\ s must arrive, in
  order); the client leaves a few seconds after the last line typed;
- a command ending with ``# Ctrl-C to stop`` runs for three seconds;
- a command ending with ``&`` runs in the background until the end.

Afterwards no job the examples made may have failed.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.support import ROOT, bearer, conveyor, run_env, wait_until_healthy

pytestmark = [pytest.mark.system, pytest.mark.timeout(420)]

README = ROOT / "README.md"
_SKIP = re.compile(r"^<!-- not run: (.+) -->$")
_EXPECT = re.compile(r"#\s*expect (\d{3})\b")
_TYPE = re.compile(r'"type":"([a-z._]+)"')
#: Seconds an interactive client stays after the last line typed, and between two lines.
LINGER_SECONDS = 3.0
TYPING_SECONDS = 0.5


@dataclass
class Block:
    """One ```sh block: the README line of its fence, its code, why it is skipped (if it is), and for an
    interactive client the lines the transcript after it types and the message types it shows arriving."""

    line: int
    code: list[str]
    skip: str | None = None
    typed: list[str] = field(default_factory=list)
    shown: list[str] = field(default_factory=list)


def blocks(text: str) -> list[Block]:
    """The README's ```sh blocks, each with the transcript (a plain ``` block) that directly follows it, if any."""
    lines = text.splitlines()
    found: list[Block] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.startswith("```"):
            info = line[3:].strip()
            end = lines.index("```", index + 1)
            body = lines[index + 1 : end]
            if info == "sh":
                previous = lines[index - 1] if index else ""
                skip = match.group(1) if (match := _SKIP.match(previous)) else None
                found.append(Block(index + 1, body, skip))
            elif info == "" and found and found[-1].line + len(found[-1].code) + 2 >= index - 1:
                found[-1].typed = [entry[2:] for entry in body if entry.startswith("> ")]
                found[-1].shown = [
                    m.group(1) for entry in body if entry.startswith("< ") for m in [_TYPE.search(entry)] if m
                ]
            index = end + 1
            continue
        index += 1
    return found


def logical_lines(code: list[str]) -> list[str]:
    """Lines with their ``\\`` continuations (kept: bash reads them) joined."""
    joined: list[str] = []
    pending = ""
    for line in code:
        if line.endswith("\\"):
            pending += line + "\n"
            continue
        joined.append(pending + line)
        pending = ""
    return joined


def command_and_comment(line: str) -> tuple[str, str]:
    """A line split before its trailing comment (two spaces then ``#``, as the README writes them)."""
    cut = line.rfind("  #")
    return (line[:cut].rstrip(), line[cut:]) if cut > 0 else (line, "")


def shell(block: Block, output: Path) -> str:
    """The bash text that runs ``block`` (see the module docstring for what changes)."""
    out: list[str] = [f"echo '::: README line {block.line}' >&2"]
    for line in logical_lines(block.code):
        command, comment = command_and_comment(line)
        if command.lstrip().startswith("#") or not command.strip():
            continue
        if "Ctrl-D to leave" in comment:
            typing = "".join(f"printf '%s\\n' {json.dumps(typed)}; sleep {TYPING_SECONDS}; " for typed in block.typed)
            out.append(f"{{ sleep 1; {typing}sleep {LINGER_SECONDS}; }} | timeout 30 {command} | tee -a {output}")
        elif "Ctrl-C to stop" in comment:
            out.append(f"timeout 3 {command} || [ $? -eq 124 ]")
        elif expect := _EXPECT.search(comment):
            out.append(f"EXPECT={expect.group(1)} {command}")
        else:
            out.append(command)
    return "\n".join(out)


PRELUDE = """
set -e
readme_failures=$PWD/readme-failures
: > "$readme_failures"
# curl as the examples use it, checked: an HTTP status of 400 or more (or not the one expected) is a failure.
curl() {
  local head status rc=0
  head=$(mktemp)
  command curl -D "$head" "$@" || rc=$?
  status=$(awk '/^HTTP\\//{s=$2} END{print s}' "$head")
  rm -f "$head"
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 28 ]; then echo "curl failed ($rc): $*" >> "$readme_failures"; return $rc; fi
  if [ -n "${EXPECT:-}" ]; then
    [ "$status" = "$EXPECT" ] || { echo "expected HTTP $EXPECT, got $status: $*" >> "$readme_failures"; return 1; }
  elif [ "${status:-0}" -ge 400 ]; then
    echo "HTTP $status: $*" >> "$readme_failures"; return 1
  fi
  return $rc
}
"""


def test_the_readme_examples_run_as_written(tmp_path: Path) -> None:
    work = tmp_path / "repo"
    work.mkdir()
    (work / ".venv").symlink_to(ROOT / ".venv")
    env, api_port, _flower_port = run_env(work / "var")
    run = conveyor("run", ["run"], {**env, "CONVEYOR_DATA_DIR": "var"}, tmp_path, cwd=work)
    base = f"http://127.0.0.1:{api_port}"
    try:
        wait_until_healthy(base, 120, [run])
        found = [block for block in blocks(README.read_text()) if block.skip is None]
        assert len(found) >= 15, "the README's examples were not found"
        script = [PRELUDE]
        for block in found:
            text = shell(block, work / f"out-{block.line}")
            text = text.replace("127.0.0.1:8000", f"127.0.0.1:{api_port}")
            text = text.replace("127.0.0.1:1080", f"127.0.0.1:{env['CONVEYOR_CATCHER_HTTP_PORT']}")
            script.append(text)
        script.append("kill $(jobs -p) 2> /dev/null || true; wait || true")
        done = subprocess.run(
            ["bash", "-c", "\n".join(script)], cwd=work, capture_output=True, text=True, timeout=300, check=False
        )
        failures = (work / "readme-failures").read_text() if (work / "readme-failures").exists() else ""
        where = [line for line in done.stderr.splitlines() if line.startswith("::: README line")][-1:]
        report = (
            f"{where}\n--- failures\n{failures}\n--- stderr\n{done.stderr[-3000:]}\n--- stdout\n{done.stdout[-3000:]}"
        )
        assert done.returncode == 0 and not failures, report
        for block in found:
            if not block.shown:
                continue
            received = (work / f"out-{block.line}").read_text()
            types = _TYPE.findall(received.replace(": ", ":"))
            position = 0
            for wanted in block.shown:
                assert wanted in types[position:], f"README line {block.line}: no {wanted} in {types}\n{received}"
                position = types.index(wanted, position) + 1
        settled(base, bearer((work / "var" / "dev-api-key").read_text().strip()))
    finally:
        run.stop(timeout=30)


def settled(base: str, headers: dict[str, str]) -> None:
    """Every job the examples made finishes, and none failed."""
    deadline = time.monotonic() + 60
    while True:
        jobs = httpx.get(f"{base}/jobs", params={"limit": 200}, headers=headers, timeout=10).json()["jobs"]
        live = [job for job in jobs if job["status"] in ("queued", "started", "retrying")]
        if not live:
            break
        assert time.monotonic() < deadline, f"jobs still running: {live}"
        time.sleep(0.5)
    failed = [(job["request"].get("channel", job["kind"]), job["error"]) for job in jobs if job["status"] == "failed"]
    assert not failed, failed
    assert len(jobs) >= 7
