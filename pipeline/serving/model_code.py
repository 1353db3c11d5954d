"""The file MLflow runs to build the logged model ("models from code"), so no pickle is stored."""

from mlflow.models import set_model

from pipeline.serving.segmenter import Segmenter

set_model(Segmenter())
