"""Wires the layers: files -> frames -> features -> unsupervised layer -> alert policy -> sinks.

``Model`` is what a bundle holds; :func:`fit_file`, :func:`score_file` and :func:`evaluate_file` are what the
CLI calls.
"""

from __future__ import annotations

import hashlib
import io
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Self

import numpy as np
import polars as pl

from segscope import bundle as bundle_io
from segscope.config import SegscopeConfig
from segscope.exceptions import BundleError, DataError, NotFittedError, SchemaError
from segscope.features.prepare import FeaturePreparer, check_unique_ids
from segscope.sinks.files import open_sink, write_batches
from segscope.sources.files import count_rows, detect_format, iter_batches, read_file, scan_file
from segscope.unsupervised.detect import make_detector
from segscope.unsupervised.ensemble import AnomalyEnsemble
from segscope.unsupervised.explain import REASON_DTYPE, FeatureExplainer
from segscope.unsupervised.threshold import make_policy, restore_policy

__all__ = ["SCORED_COLUMNS", "Model", "ScoreSummary", "evaluate_file", "fit_file", "score_file"]

#: Columns every scored frame gains, in this order (PRODUCT.md, "Contracts").
SCORED_COLUMNS = ("score", "anomaly_score", "supervised_score", "is_alert", "segment", "reasons", "model_version")

_LIBRARIES = ("segscope", "polars", "numpy", "scipy", "scikit-learn", "pyod", "numba", "pyarrow")


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for lib in _LIBRARIES:
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
            out[lib] = "unknown"
    return out


def _frame_fingerprint(frame: pl.DataFrame) -> str:
    buffer = io.BytesIO()
    frame.write_ipc(buffer)
    return hashlib.sha256(buffer.getvalue()).hexdigest()


class Model:
    """The fitted unsupervised layer plus its alert policy: ``fit(frame)``, ``score(frame)``, ``save(dir)``."""

    #: The manifest a loaded model came from (set by :meth:`load`).
    manifest_: dict[str, Any]
    #: The fine-tuned learner, when this version has one (``supervised_score`` is null otherwise).
    supervised_: Any = None

    def __init__(self, config: SegscopeConfig | None = None) -> None:
        self.config = config if config is not None else SegscopeConfig()

    # ------------------------------------------------------------------ fit
    def fit(
        self,
        frame: pl.DataFrame,
        *,
        fingerprint: str | None = None,
        total_rows: int | None = None,
        on_step: Callable[[str], None] | None = None,
    ) -> Self:
        """Fit on history (already sampled to at most ``config.max_fit_rows`` rows by the caller)."""
        step = on_step or (lambda _: None)
        cfg = self.config
        step("preparing features")
        prep = FeaturePreparer(
            id_column=cfg.features.id_column,
            drop=cfg.features.drop,
            max_categories=cfg.features.max_categories,
            clip=cfg.features.clip,
        ).fit(frame)
        validated = prep.validate(frame)
        x = prep.transform(validated)
        step(f"fitting {len(cfg.detectors)} detectors on {x.shape[0]:,} rows x {x.shape[1]} features")
        detectors = [make_detector(d.name, d.params) for d in cfg.detectors]
        ensemble = AnomalyEnsemble(detectors, combine=cfg.combine).fit(x)
        step("calibrating and fitting the alert policy")
        shared = _ecod_index(ensemble)
        explainer = FeatureExplainer(top_k=cfg.top_k_reasons).fit(
            x,
            list(prep.schema_.features),
            [prep.expected_[f] for f in prep.schema_.features],
            ecdf=ensemble.detectors[shared].ecdf_ if shared is not None else None,  # type: ignore[attr-defined]
        )
        policy = make_policy(cfg.policy).fit(ensemble.reference_scores_, frame)
        created = datetime.now(UTC)
        fingerprint = fingerprint or _frame_fingerprint(frame)
        self.preparer_, self.ensemble_, self.explainer_, self.policy_ = prep, ensemble, explainer, policy
        self.shared_ecod_ = shared
        self.created_at_ = created.isoformat(timespec="seconds")
        self.version_ = f"{created:%Y%m%d-%H%M%S}-{fingerprint[:8]}"
        self.training_ = {
            "rows": int(total_rows if total_rows is not None else frame.height),
            "fit_rows": int(frame.height),
            "fingerprint": fingerprint,
            "columns": frame.columns,
            "reference_alert_rate": float(policy.decide(ensemble.reference_scores_, frame).mean())
            if cfg.policy.kind != "budget"
            else None,
        }
        if cfg.policy.kind == "budget":
            self.policy_ = restore_policy(cfg.policy, policy.describe())
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "ensemble_"):
            raise NotFittedError("Model is not fitted; call fit(frame) or Model.load(bundle) first")

    @property
    def n_features(self) -> int:
        """Number of prepared features (the first columns of :meth:`supervision_matrix`)."""
        self._check_fitted()
        return len(self.preparer_.schema_.features)

    @property
    def version(self) -> str:
        self._check_fitted()
        return self.version_

    # ---------------------------------------------------------------- score
    def _unsupervised(
        self, frame: pl.DataFrame, *, with_reasons: bool = True
    ) -> tuple[pl.DataFrame, np.ndarray, np.ndarray, np.ndarray, pl.Series]:
        """(validated frame, prepared matrix, anomaly_score, its parts, reasons)."""
        validated = self.preparer_.validate(frame)
        x = self.preparer_.transform(validated)
        if not frame.height:
            parts = np.empty((0, len(self.ensemble_.detectors) + 1))
            return validated, x, np.empty(0), parts, pl.Series("reasons", [], dtype=REASON_DTYPE)
        # ECOD and the reasons look up the same ECDF: one fused pass computes both
        shared = self.shared_ecod_
        skew = self.ensemble_.detectors[shared].skew_sign_ if shared is not None else None  # type: ignore[attr-defined]
        idx, val, total, ecod = self.explainer_.top_contributions(x, skew)
        anomaly, parts = self.ensemble_.score_with_parts(x, {shared: ecod} if shared is not None else None)
        reasons = pl.Series("reasons", [], dtype=REASON_DTYPE)
        if with_reasons:
            reasons = self.explainer_.explain(x, *self.preparer_.readable_values(validated), top=(idx, val, total))
        return validated, x, anomaly, parts, reasons

    def supervision_matrix(self, frame: pl.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(features for the supervised layer, +1/0 monotone constraints, anomaly_score): the prepared features
        plus every detector's calibrated surprisal and the ensemble's (the XGBOD idea)."""
        self._check_fitted()
        _, x, anomaly, parts, _ = self._unsupervised(frame, with_reasons=False)
        monotone = np.concatenate([np.zeros(x.shape[1]), np.ones(parts.shape[1])])
        return np.hstack([x, parts]), monotone, anomaly

    def score(self, frame: pl.DataFrame) -> pl.DataFrame:
        """Input columns plus :data:`SCORED_COLUMNS`. Never changes the model; batch-independent scores."""
        self._check_fitted()
        validated, x, anomaly, parts, reasons = self._unsupervised(frame)
        supervised = None
        if self.supervised_ is not None and frame.height:
            supervised = self.supervised_.predict_proba(np.hstack([x, parts]))
        elif self.supervised_ is not None:
            supervised = np.empty(0)
        score = supervised if supervised is not None else anomaly
        alerts = self.policy_.decide(score, validated)
        return frame.with_columns(
            pl.Series("score", score, dtype=pl.Float64),
            pl.Series("anomaly_score", anomaly, dtype=pl.Float64),
            pl.Series("supervised_score", supervised, dtype=pl.Float64)
            if supervised is not None
            else pl.lit(None, dtype=pl.Float64).alias("supervised_score"),
            pl.Series("is_alert", alerts, dtype=pl.Boolean),
            pl.lit(-1, dtype=pl.Int32).alias("segment"),
            reasons.alias("reasons"),
            pl.lit(self.version_, dtype=pl.String).alias("model_version"),
        )

    def reset_policy(self) -> None:
        """Start a new run of the alert policy (an alert budget's per-period counts restart)."""
        self._check_fitted()
        self.policy_ = restore_policy(self.config.policy, self.policy_.describe())

    # ------------------------------------------------------------- persist
    def manifest(self) -> dict[str, Any]:
        self._check_fitted()
        schema = self.preparer_.schema_
        return {
            "segscope_bundle": True,
            "model_version": self.version_,
            "created_at": self.created_at_,
            "versions": _versions(),
            "feature_schema": schema.to_dict(),
            "feature_schema_hash": schema.hash,
            "dropped_columns": self.preparer_.dropped_,
            "components": [
                {
                    "role": "detector",
                    "name": det.name,
                    "class": type(det).__name__,
                    "params": det.get_params(),
                    "artifact": f"arrays/detector-{i}-{det.name}.npz",
                }
                for i, det in enumerate(self.ensemble_.detectors)
            ]
            + [
                {"role": "combiner", "name": self.ensemble_.combine, "artifact": "arrays/calibration.npz"},
                {
                    "role": "explainer",
                    "name": "tail-surprisal",
                    "params": {"top_k": self.explainer_.top_k},
                    "artifact": "arrays/explainer.npz",
                },
                {"role": "segmenter", "name": None, "note": "not fitted (segment = -1)"},
                {"role": "supervised", "name": None, "note": "no fine-tuned model (supervised_score = null)"},
            ],
            "config": self.config.model_dump(mode="json"),
            "policy": self.policy_.describe(),
            "training": self.training_,
            "label_snapshot": None,
        }

    def save(self, path: str | Path) -> Path:
        """Write the bundle folder (atomically)."""
        self._check_fitted()
        arrays: dict[str, dict[str, np.ndarray]] = {}
        pickles: dict[str, bytes] = {}
        for i, det in enumerate(self.ensemble_.detectors):
            state = det.state()
            part = f"detector-{i}-{det.name}"
            if det.needs_pickle:
                pickles[part] = state.pop("pickle").tobytes()
            arrays[part] = state
        calibration: dict[str, np.ndarray] = {}
        for i, cal in enumerate([*self.ensemble_.calibrators_, self.ensemble_.final_]):
            for key, value in cal.state().items():
                calibration[f"{i}_{key}"] = value
        calibration["reference_scores"] = self.ensemble_.reference_scores_
        arrays["calibration"] = calibration
        arrays["explainer"] = self.explainer_.state()
        return bundle_io.write_bundle(
            path,
            manifest=self.manifest(),
            json_files={"features.json": self.preparer_.to_state()},
            arrays=arrays,
            pickles=pickles,
        )

    @classmethod
    def load(cls, path: str | Path, *, trusted: bool = False) -> Model:
        """Load and verify a bundle folder (see :mod:`segscope.bundle`)."""
        from segscope.config import config_from_dict
        from segscope.unsupervised.calibrate import ReferenceCalibrator

        reader = bundle_io.BundleReader(path, trusted=trusted)
        manifest = reader.open()
        try:
            model = cls(config_from_dict(manifest["config"], source=f"bundle {path}"))
            prep = FeaturePreparer.from_state(reader.json("features.json"))
            if prep.schema_.hash != manifest["feature_schema_hash"]:
                raise BundleError(f"bundle {path}: features.json does not match the manifest's schema hash; refit")
            detectors = []
            for comp in (c for c in manifest["components"] if c["role"] == "detector"):
                det = make_detector(comp["name"], comp["params"])
                part = Path(comp["artifact"]).stem
                state = reader.arrays(part)
                blob = reader.pickle_bytes(part)
                if blob is not None:
                    state["pickle"] = np.frombuffer(blob, dtype=np.uint8)
                det.load_state(state)
                detectors.append(det)
            ensemble = AnomalyEnsemble(detectors, combine=model.config.combine)
            cal = reader.arrays("calibration")
            calibrators = []
            for i in range(len(detectors) + 1):
                calibrators.append(
                    ReferenceCalibrator.from_state(
                        {k.split("_", 1)[1]: v for k, v in cal.items() if k.startswith(f"{i}_")}
                    )
                )
            ensemble.calibrators_, ensemble.final_ = calibrators[:-1], calibrators[-1]
            ensemble.reference_scores_ = cal["reference_scores"]
            explainer = FeatureExplainer.from_state(
                reader.arrays("explainer"),
                list(prep.schema_.features),
                [prep.expected_[f] for f in prep.schema_.features],
                model.config.top_k_reasons,
            )
        except (KeyError, ValueError, TypeError) as exc:
            if isinstance(exc, BundleError):
                raise
            raise BundleError(f"bundle {path} is incomplete or damaged ({exc!r}); refit the bundle") from None
        shared = _ecod_index(ensemble)
        if shared is not None and np.array_equal(
            ensemble.detectors[shared].ecdf_.sorted_ref,  # type: ignore[attr-defined]
            explainer.ecdf_.sorted_ref,
        ):
            explainer.ecdf_ = ensemble.detectors[shared].ecdf_  # type: ignore[attr-defined]
        else:
            shared = None
        model.preparer_, model.ensemble_, model.explainer_ = prep, ensemble, explainer
        model.shared_ecod_ = shared
        model.policy_ = restore_policy(model.config.policy, manifest["policy"])
        model.version_ = manifest["model_version"]
        model.created_at_ = manifest["created_at"]
        model.training_ = manifest["training"]
        model.manifest_ = manifest
        return model


# ------------------------------------------------------------------ file jobs
def _ecod_index(ensemble: AnomalyEnsemble) -> int | None:
    from segscope.unsupervised.detect import ECODDetector

    return next((i for i, d in enumerate(ensemble.detectors) if isinstance(d, ECODDetector)), None)


def _sample_rows(path: str | Path, total: int, max_rows: int, seed: int) -> pl.DataFrame:
    if total <= max_rows:
        return read_file(path)
    keep = np.sort(np.random.default_rng(seed).choice(total, size=max_rows, replace=False))
    lf = (
        scan_file(path)
        .with_row_index("__segscope_row")
        .filter(pl.col("__segscope_row").is_in(pl.Series(keep, dtype=pl.get_index_type())))
    )
    return lf.collect(engine="streaming").drop("__segscope_row")


def fit_file(
    path: str | Path, config: SegscopeConfig | None = None, *, on_step: Callable[[str], None] | None = None
) -> Model:
    """Fit a model on a history file (a uniform sample of at most ``max_fit_rows`` rows)."""
    cfg = config if config is not None else SegscopeConfig()
    step = on_step or (lambda _: None)
    step("reading history")
    total = count_rows(path)
    if total == 0:
        raise DataError(f"{path}: the file has a header but no rows; fit needs at least one row")
    sample = _sample_rows(path, total, cfg.max_fit_rows, cfg.seed)
    if cfg.features.id_column is not None and total > sample.height and cfg.features.id_column in sample.columns:
        _check_unique_ids_lazy(path, cfg.features.id_column)
    return Model(cfg).fit(sample, fingerprint=bundle_io.fingerprint_file(path), total_rows=total, on_step=on_step)


def _check_unique_ids_lazy(path: str | Path, id_column: str) -> None:
    stats = (
        scan_file(path)
        .select(pl.len().alias("n"), pl.col(id_column).n_unique().alias("u"), pl.col(id_column).null_count().alias("z"))
        .collect(engine="streaming")
    )
    n, unique, nulls = (int(stats[c][0]) for c in ("n", "u", "z"))
    if nulls or unique != n:
        # find an example with the in-memory check on the duplicated values only
        dups = (
            scan_file(path)
            .filter(pl.col(id_column).is_duplicated() | pl.col(id_column).is_null())
            .select(id_column)
            .collect(engine="streaming")
        )
        check_unique_ids(dups, id_column)


@dataclass(frozen=True)
class ScoreSummary:
    rows: int
    alerts: int
    seconds: float
    out: str


def _check_columns(path: str | Path, model: Model) -> None:
    schema = scan_file(path).collect_schema()
    missing = [c.name for c in model.preparer_.schema_.columns if c.name not in schema]
    id_col = model.preparer_.schema_.id_column
    if id_col is not None and id_col not in schema:
        missing.append(id_col)
    if missing:
        raise SchemaError(
            f"{path}: column(s) {missing} are missing; the bundle was fitted with them: add them to the "
            "input (null is allowed) or refit without them (--drop)"
        )


def iter_scored(model: Model, path: str | Path, *, batch_size: int = 200_000) -> Iterator[pl.DataFrame]:
    """Score a file batch by batch (bounded memory); checks the schema and ids before the first batch."""
    model._check_fitted()
    _check_columns(path, model)
    id_col = model.preparer_.schema_.id_column
    if id_col is not None:
        _check_unique_ids_lazy(path, id_col)
    model.reset_policy()
    offset = 0
    for batch in iter_batches(path, batch_size=batch_size):
        try:
            yield model.score(batch)
        except (SchemaError, DataError) as exc:
            # row numbers in messages are batch-relative; make them file-relative
            raise type(exc)(_shift_row(str(exc), offset)) from None
        offset += batch.height


def _shift_row(message: str, offset: int) -> str:
    import re

    return re.sub(r"row (\d+)", lambda m: f"row {int(m.group(1)) + offset}", message, count=1)


def score_file(
    model: Model,
    path: str | Path,
    out: str | Path,
    *,
    batch_size: int = 200_000,
    on_batch: Callable[[int], None] | None = None,
) -> ScoreSummary:
    """Score ``path`` into ``out`` (format by extension, ``-`` = NDJSON on stdout). All or nothing."""
    start = time.perf_counter()
    counts = {"rows": 0, "alerts": 0}

    def batches() -> Iterator[pl.DataFrame]:
        for scored in iter_scored(model, path, batch_size=batch_size):
            counts["rows"] += scored.height
            counts["alerts"] += int(scored.get_column("is_alert").sum())
            if on_batch is not None:
                on_batch(scored.height)
            yield scored

    if str(out) == "-":
        sink = open_sink(out)
        for scored in batches():
            sink.write(scored)
        sink.close()
    else:
        detect_format(out)
        schema = scored_schema(model, scan_file(path).collect_schema())
        write_batches(_prefetch(batches()), schema, out)
    return ScoreSummary(rows=counts["rows"], alerts=counts["alerts"], seconds=time.perf_counter() - start, out=str(out))


def _prefetch(items: Iterator[pl.DataFrame], depth: int = 2) -> Iterator[pl.DataFrame]:
    """Run ``items`` one step ahead in a thread, so scoring the next batch overlaps writing the last one
    (the compiled kernels and Polars' writer release the GIL). Errors re-raise in the consumer."""
    import queue
    import threading

    slots: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                slots.put(("item", item))
            slots.put(("done", None))
        except BaseException as exc:  # handed to the consumer
            slots.put(("error", exc))

    worker = threading.Thread(target=produce, name="segscope-score", daemon=True)
    worker.start()
    try:
        while True:
            kind, value = slots.get()
            if kind == "done":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue
            try:
                slots.get_nowait()
            except queue.Empty:
                worker.join(timeout=0.05)


def scored_schema(model: Model, input_schema: pl.Schema) -> pl.Schema:
    """The schema of scored frames for a given input schema (input columns, then the scored columns)."""
    dtypes: dict[str, pl.DataType] = dict(input_schema)
    probe = model.score(pl.DataFrame(schema=input_schema))
    for name in SCORED_COLUMNS:
        dtypes[name] = probe.schema[name]
    return pl.Schema(dtypes)


def evaluate_file(model: Model, path: str | Path, label_column: str, *, batch_size: int = 200_000) -> dict[str, Any]:
    """Score a labelled file and compare with its labels (1 = anomaly)."""
    from segscope.evaluate import evaluate_scores

    model._check_fitted()
    if label_column in {c.name for c in model.preparer_.schema_.columns}:
        raise SchemaError(
            f"the label column '{label_column}' is a feature of this bundle, so the model has seen the answer; "
            f"refit with --drop {label_column}"
        )
    schema = scan_file(path).collect_schema()
    if label_column not in schema:
        raise SchemaError(f"{path}: label column '{label_column}' not found; columns are {list(schema)[:20]}")
    labels, scores, alerts = [], [], []
    for scored in iter_scored(model, path, batch_size=batch_size):
        lab = scored.get_column(label_column)
        if lab.null_count():
            raise DataError(
                f"label column '{label_column}' has missing values; label every row (1 = anomaly, 0 = normal)"
            )
        try:
            lab_arr = lab.cast(pl.Int64, strict=True).to_numpy()
        except pl.exceptions.PolarsError:
            raise DataError(f"label column '{label_column}' must hold 0/1 (or true/false); got {lab.dtype}") from None
        if not np.isin(lab_arr, [0, 1]).all():
            raise DataError(
                f"label column '{label_column}' must hold only 0 and 1; got {sorted(set(lab_arr.tolist()))[:5]}"
            )
        labels.append(lab_arr)
        scores.append(scored.get_column("score").to_numpy())
        alerts.append(scored.get_column("is_alert").to_numpy())
    return evaluate_scores(np.concatenate(labels), np.concatenate(scores), np.concatenate(alerts))
