"""`python -m benchmarks [--quick]` runs the CPU suite; `python -m benchmarks --gpu` the GPU
training benchmark; `python -m benchmarks <name> [options]` one benchmark;
`python -m benchmarks report` rewrites BENCHMARKS.md from the kept results."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from benchmarks import NAMES, REPORT, RESULTS, benchmark, save, write_report
from benchmarks.suite import DISTINCT, default_options, run_suite
from benchmarks.workspace import Workspace

REPORT_ONLY = "report"


def parser() -> argparse.ArgumentParser:
    commands_parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    scale = commands_parser.add_mutually_exclusive_group()
    scale.add_argument(
        "--quick", action="store_true", help="the CPU suite at sizes that take <= 5 min on 2 cores"
    )
    # For the tests: the whole suite at sizes that only show it runs.
    scale.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)
    scale.add_argument(
        "--gpu", action="store_true", help="GPU training img/s (needs CUDA; else exits 1)"
    )
    commands_parser.add_argument(
        "--results-dir", type=Path, default=RESULTS, help="where <machine>.json files are kept"
    )
    commands_parser.add_argument(
        "--report", type=Path, default=REPORT, help="the Markdown file written from them"
    )
    commands = commands_parser.add_subparsers(dest="command", metavar="{report,<benchmark>}")
    commands.add_parser(REPORT_ONLY, help="rewrite the report from the kept results")
    for name in NAMES:
        module = benchmark(name)
        module.add_arguments(commands.add_parser(name, help=module.TITLE))
    return commands_parser


def run_one(name: str, options: argparse.Namespace) -> None:
    """One benchmark, on data generated for it alone where it needs any."""
    with tempfile.TemporaryDirectory(prefix=f"benchmark-{name}-") as scratch:
        options.workspace = Workspace(Path(scratch), DISTINCT["full"])
        figures = benchmark(name).run(options)
    print(f"kept in {save(name, figures, options.results_dir)}")


def main(argv: list[str] | None = None) -> int:
    command_line = parser()
    options = command_line.parse_args(argv)
    if options.command and (options.quick or options.smoke or options.gpu):
        command_line.error("--quick and --gpu run the suite: give no benchmark name with them")
    if options.command is None and not options.gpu:
        scale = "smoke" if options.smoke else "quick" if options.quick else "full"
        return run_suite(scale, options.results_dir, options.report)
    if options.gpu:
        vars(options).update(vars(default_options("gpu")), command="gpu")
    if options.command != REPORT_ONLY:
        run_one(options.command, options)
    print(f"wrote {write_report(options.results_dir, options.report)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
