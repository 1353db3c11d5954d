"""`python -m benchmarks <name> [options]` runs one benchmark; `python -m benchmarks report`
rewrites BENCHMARKS.md from the kept results."""

from __future__ import annotations

import argparse
import sys

from benchmarks import NAMES, benchmark, save, write_report

REPORT_ONLY = "report"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(REPORT_ONLY, help="rewrite BENCHMARKS.md from benchmarks/results")
    for name in NAMES:
        module = benchmark(name)
        module.add_arguments(commands.add_parser(name, help=module.TITLE))
    options = parser.parse_args(argv)
    if options.command != REPORT_ONLY:
        figures = benchmark(options.command).run(options)
        print(f"kept in {save(options.command, figures)}")
    print(f"wrote {write_report()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
