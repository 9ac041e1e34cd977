"""``python -m bench [NAME ...] [--quick] [--repeat N] [--out DIR]``: run benchmarks, print and write the results.

Each run ends with its goals table (every goal the benchmarks check, measured value, met or missed by how much);
with ``--repeat N`` the benchmarks run N times in a row and a last table shows each goal's value in every run and
their spread (each value is a ratio within one run)."""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

from bench.report import Report, machine, markdown, spread_table, write

#: Benchmark modules, run in this order by ``python -m bench``. Add a sibling module and list it here.
BENCHMARKS = ("latency", "throughput", "scale", "fanout", "upload", "chaos")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default: all of {', '.join(BENCHMARKS)})")
    parser.add_argument("--quick", action="store_true", help="smaller settings, for a fast check of the harness")
    parser.add_argument("--repeat", type=int, default=1, help="run the benchmarks N times, then show the spread")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    unknown = set(args.names) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    command = ("python -m bench " + " ".join(sys.argv[1:] if argv is None else argv)).strip()
    runs: list[list[Report]] = []
    for repeat in range(args.repeat):
        host = machine()
        reports: list[Report] = []
        for name in args.names or BENCHMARKS:
            module = importlib.import_module(f"bench.{name}")
            print(
                f"== {name}{f' (run {repeat + 1} of {args.repeat})' if args.repeat > 1 else ''}: {module.DESCRIPTION}",
                flush=True,
            )
            started = time.monotonic()
            report: Report = module.run(args)
            report.seconds = time.monotonic() - started
            reports.append(report)
        print()
        print(markdown(reports, host, command))
        md, js = write(reports, host, command, args.out)
        print(f"written: {md} {js}", flush=True)
        runs.append(reports)
    if len(runs) > 1:
        text = "\n".join(["# Spread over runs", "", f"`{command}`", "", *spread_table(runs)]) + "\n"
        print(text)
        spread = args.out / f"spread-{time.strftime('%Y%m%d-%H%M%S')}.md"
        spread.write_text(text)
        print(f"written: {spread}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
