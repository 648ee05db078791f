"""segscope: segments and anomalies in tabular and streaming data, learning from what analysts confirm.

Library use mirrors the CLI::

    import polars as pl
    import segscope

    model = segscope.Model().fit(history)          # Polars frame in
    scored = model.score(new_records)              # Polars frame out: input + scored columns
    model.save("bundle/")
    model = segscope.Model.load("bundle/")

The names below other than the exceptions are imported on first use, so a command imports only what it needs
(``segscope stream`` neither the file pipeline nor its readers and writers).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from segscope._deps import lazy_names
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

if TYPE_CHECKING:
    from segscope.config import SegscopeConfig, load_config
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

#: Where each name imported on first use lives.
_LAZY = {
    "SCORED_COLUMNS": "segscope.schema",
    "Model": "segscope.model",
    "SegscopeConfig": "segscope.config",
    "load_config": "segscope.config",
    "evaluate_file": "segscope.pipeline",
    "fit_file": "segscope.pipeline",
    "score_file": "segscope.pipeline",
}


__getattr__ = lazy_names(__name__, _LAZY)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
