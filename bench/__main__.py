"""``python -m bench [NAME ...] [--quick] [--out DIR]``: run benchmarks, print and write the results."""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

from bench.report import Report, machine, markdown, write

#: Benchmark modules, run in this order by ``python -m bench``. Add a sibling module and list it here.
BENCHMARKS = ("latency", "throughput", "fanout", "upload", "chaos")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default: all of {', '.join(BENCHMARKS)})")
    parser.add_argument("--quick", action="store_true", help="smaller settings, for a fast check of the harness")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    unknown = set(args.names) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    host = machine()
    reports: list[Report] = []
    for name in args.names or BENCHMARKS:
        module = importlib.import_module(f"bench.{name}")
        print(f"== {name}: {module.DESCRIPTION}", flush=True)
        started = time.monotonic()
        report: Report = module.run(args)
        report.seconds = time.monotonic() - started
        reports.append(report)
    command = "python -m bench " + " ".join(sys.argv[1:] if argv is None else argv)
    print()
    print(markdown(reports, host, command.strip()))
    md, js = write(reports, host, command.strip(), args.out)
    print(f"written: {md} {js}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
