"""segscope: segments and anomalies in tabular and streaming data, learning from what analysts confirm.

Library use mirrors the CLI::

    import polars as pl
    import segscope

    model = segscope.Model().fit(history)          # Polars frame in
    scored = model.score(new_records)              # Polars frame out: input + scored columns
    model.save("bundle/")
    model = segscope.Model.load("bundle/")
"""

from segscope.config import SegscopeConfig, load_config
from segscope.exceptions import (
    BundleError,
    ConfigError,
    DataError,
    MissingDependencyError,
    NotFittedError,
    SchemaError,
    SegscopeError,
    SegscopeWarning,
    SinkError,
    SourceError,
)
from segscope.model import Model
from segscope.pipeline import evaluate_file, fit_file, score_file
from segscope.schema import SCORED_COLUMNS

__version__ = "0.1.0"

__all__ = [
    "SCORED_COLUMNS",
    "BundleError",
    "ConfigError",
    "DataError",
    "MissingDependencyError",
    "Model",
    "NotFittedError",
    "SchemaError",
    "SegscopeConfig",
    "SegscopeError",
    "SegscopeWarning",
    "SinkError",
    "SourceError",
    "__version__",
    "evaluate_file",
    "fit_file",
    "load_config",
    "score_file",
]
