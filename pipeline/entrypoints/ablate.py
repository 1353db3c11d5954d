"""Entry point `ablate`: the architecture study under one parent run."""

from __future__ import annotations

from pipeline.console import log
from pipeline.entrypoints.runner import run_entry_point
from pipeline.orchestration.ablation import run_study
from pipeline.study.summary import markdown_table
from pipeline.training_params import AblateParams

PARAMS = AblateParams


def run(params: AblateParams) -> None:
    table = run_study(params)
    log.info("study done:\n%s", markdown_table(table))


def main(argv: list[str] | None = None) -> int:
    return run_entry_point(__name__, PARAMS, run, argv)
