"""Option sets and small shared types, in one place so that config, CLI and library agree."""

from __future__ import annotations

from typing import Literal

#: Detectors segscope knows by name (see ``segscope.unsupervised.detect.DETECTORS``).
DetectorName = Literal["iforest", "ecod", "copod", "hbos", "knn", "cblof", "pyod"]

#: How per-detector calibrated scores are combined into ``anomaly_score``.
CombineMethod = Literal["mean", "max"]

#: Where segments' boundaries are drawn at fit (``segscope.unsupervised.segment``): in the prepared features
#: (a linear discriminant taught by HDBSCAN's clustered rows) or in the UMAP embedding (noise to its neighbours).
SegmentBoundaries = Literal["linear", "embedding"]

#: Alert policies (``segscope.unsupervised.threshold``).
PolicyKind = Literal["contamination", "quantile", "fixed", "budget", "new_level"]

#: Time units an alert budget can be counted per.
BudgetPeriod = Literal["hour", "day", "week", "rows"]

#: Per-entity features (``segscope.features.entity``): windowed aggregates, baselines, lags, seen-value flags, a
#: machine's state over several sensors. In the kernel's order (``features/_entity_kernel.py``'s constants).
EntityFeatureKind = Literal[
    "count",
    "sum",
    "mean",
    "std",
    "zscore",
    "ratio",
    "since_last",
    "lag",
    "delta",
    "first_seen",
    "rare",
    "distinct",
    "new_level",
    "stuck",
    "state",
    "seasonal_drop",
]

#: Entity features that are alarms (1 where the entity alarms), which ``policy: {kind: new_level}`` alerts on.
ALARM_KINDS: tuple[EntityFeatureKind, ...] = ("new_level", "stuck", "state", "seasonal_drop")

#: Feature kinds the schema infers.
FeatureKind = Literal["numeric", "categorical", "boolean", "datetime"]

#: File formats segscope reads and writes, chosen by extension.
FileFormat = Literal["parquet", "csv", "ndjson"]

#: How a Kafka topic's messages are written: JSON objects, or Avro / Protobuf in a schema registry's wire format.
MessageFormat = Literal["json", "avro", "protobuf"]

#: How `segscope stream` writes scored records: JSON objects, or Avro (the input's schema plus the scored fields).
OutputFormat = Literal["json", "avro"]
