"""Entry point `demo`: a page in the browser to try a model on your own photos."""

from __future__ import annotations

import logging
import sys

import uvicorn
from mlflow.exceptions import MlflowException

from pipeline.console import log, quiet_libraries
from pipeline.demo.app import DemoModel, demo_app
from pipeline.demo.model_card import model_card
from pipeline.errors import PipelineError, first_line
from pipeline.params import DemoParams, parse
from pipeline.tracking.models import load_predictor, pixel_limit, segmenter_of
from pipeline.tracking.runs import configure_tracking

PARAMS = DemoParams


def check(params: DemoParams) -> None:
    pixel_limit()


def serve(params: DemoParams) -> None:
    """Load the model first, so that a URI that does not exist stops the command at once with
    a message naming model_uri, rather than a page that can only ever say so."""
    configure_tracking()
    model = load_predictor(params.model_uri)
    segmenter = segmenter_of(model, params.model_uri)  # photos in, masks out: the pipeline's own
    card = model_card(model, params.model_uri)
    app = demo_app(DemoModel(model, segmenter.max_pixels), card, params.threshold)
    log.info(
        "try %s at http://%s:%d/ (Ctrl-C stops it)", params.model_uri, params.host, params.port
    )
    uvicorn.run(app, host=params.host, port=params.port, access_log=False)


def main(argv: list[str] | None = None) -> int:
    """Serve the page until stopped; no MLflow run is opened, since trying photos records
    nothing. Bad params and a model that cannot be loaded exit 2 with one line, as in every
    entry point."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    quiet_libraries()
    try:
        params = parse(PARAMS, argv, prog="python -m pipeline demo")
        check(params)
        serve(params)
    except PipelineError as error:
        print(f"demo: error: {error}", file=sys.stderr)
        return 2
    except MlflowException as error:
        print(
            f"demo: error: the tracking store failed ({first_line(error.message)})", file=sys.stderr
        )
        return 2
    return 0
