"""File jobs: what `segscope fit`, `score`, `evaluate` and `finetune` do with files, and re-scoring a label store.

Each job wires a source, the model and a sink: :func:`fit_file` samples a history file and fits a
:class:`~segscope.model.Model`; :func:`score_file` reads a file in batches (bounded memory), scores each with one
scoring state for the whole file, and writes the output whole or not at all; :func:`finetune_file` fine-tunes a
new version and promotes it in a registry when it is better.
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from segscope import registry
from segscope._io import detect_format, sha256_file
from segscope.config import SegscopeConfig
from segscope.exceptions import DataError, SchemaError, SegscopeWarning, SinkError
from segscope.features.entity import EntityFeatures
from segscope.file_state import load_carried, lock_state_dir, save_carried
from segscope.labels._open import hide_password
from segscope.labels.parse import load_labels
from segscope.labels.queue import candidate_rows
from segscope.labels.records import store_labels, training_records
from segscope.labels.store import LabelStore, ReviewRecords
from segscope.metrics import evaluate_scores
from segscope.model import Model
from segscope.model.watcher import warm_up
from segscope.run import AllOrNothing, Hooks, RunState, prefetch, run, score_batch
from segscope.schema import SCORED_COLUMNS, ColumnSpec
from segscope.sinks.files import open_sink
from segscope.sources.base import Batch
from segscope.sources.files import (
    FileSource,
    check_file_ids,
    count_rows,
    read_file,
    sample_rows,
    warn_other_separator,
)
from segscope.sources.frames import check_unique_ids, parse_dates, parse_datetimes
from segscope.supervised.promotion import GATE_FOLDS
from segscope.tuning import finetune
from segscope.unsupervised.adapt import adapt_line
from segscope.unsupervised.drift import adaptation_of

__all__ = [
    "SCORED_COLUMNS",
    "Model",
    "ScoreSummary",
    "evaluate_file",
    "finetune",
    "finetune_file",
    "fit_file",
    "history_from_store",
    "iter_scored",
    "rescore_store",
    "score_file",
    "store_labels",
]


# ------------------------------------------------------------------ fit
def fit_file(
    path: str | Path,
    config: SegscopeConfig | None = None,
    *,
    on_step: Callable[[str], None] | None = None,
    previous: Model | None = None,
) -> Model:
    """Fit a model on a history file (a uniform sample of at most ``max_fit_rows`` rows)."""
    cfg = config if config is not None else SegscopeConfig()
    step = on_step or (lambda _: None)
    step("reading history")
    total = count_rows(path)
    if total == 0:
        raise DataError(f"{path}: the file has a header but no rows; fit needs at least one row")
    cfg = cfg.for_data(FileSource(path).schema)  # sensors: rules made concrete for this file
    entities = None
    if cfg.entities:
        entities, sample = _entity_sample(path, cfg, total, step)
    else:
        sample = sample_rows(path, total, cfg.max_fit_rows, cfg.seed)
    if detect_format(path) == "csv":
        warn_other_separator(path, sample.columns)
    if cfg.features.id_column is not None and total > sample.height and cfg.features.id_column in sample.columns:
        check_file_ids(path, cfg.features.id_column)
    return Model(cfg).fit(
        sample,
        fingerprint=sha256_file(path),
        total_rows=total,
        on_step=on_step,
        previous=previous,
        entities=entities,
        file_bytes=Path(path).stat().st_size,
    )


def _entity_sample(
    path: str | Path, cfg: SegscopeConfig, total: int, step: Callable[[str], None]
) -> tuple[EntityFeatures, pl.DataFrame]:
    """Per-entity features need every record of the history, in order: read it batch by batch (bounded memory),
    compute them, and keep a uniform sample (``max_fit_rows``, the config's seed) of the records after the warm-up."""
    entities = EntityFeatures(cfg.entities)
    start = int(total * cfg.entity_warmup)
    rng = np.random.default_rng(cfg.seed)
    keep = min(cfg.max_fit_rows, total - start)
    chosen = np.sort(rng.choice(total - start, keep, replace=False)) + start
    step(f"computing {len(entities.names)} entity features over {total:,} rows in order")
    text = detect_format(path) != "parquet"
    # text formats: the date columns are those of the first rows, as a sampled fit reads them (parse_dates)
    first = parse_dates(next(FileSource(path, batch_size=1000).iter_batches()).frame) if text else None
    dates = tuple(c for c, t in first.schema.items() if t.is_temporal()) if first is not None else ()
    # new_level grids span the whole history: a first read for its range (only with such features)
    ranges = entities.ranges_over(batch.frame for batch in FileSource(path, dates=dates).iter_batches())
    parts, offset = [], 0
    batches = (batch.frame for batch in FileSource(path, dates=dates).iter_batches())
    for frame in entities.fit_batches(batches, ranges):
        rows = chosen[np.searchsorted(chosen, offset) : np.searchsorted(chosen, offset + frame.height)] - offset
        parts.append(frame[rows])
        offset += frame.height
    if dates:  # a batch where some value is not a date keeps that column as text: read it as the others
        parts = [p.with_columns(parse_datetimes(p[c]) for c in dates if p.schema[c] == pl.String) for p in parts]
    return entities, pl.concat(parts, how="vertical_relaxed")


# ------------------------------------------------------------------ score
@dataclass(frozen=True)
class ScoreSummary:
    rows: int
    alerts: int
    seconds: float
    out: str
    #: records added to the label store (alerts and queue candidates), when one was given
    stored: int = 0
    #: what online adaptation did over the file (``adapt:``), for people; None without it
    adapted: str | None = None


def _check_columns(path: str | Path, model: Model) -> None:
    # the schema of the scan the run makes next (scan_file keeps it per file version: no second inference)
    schema = FileSource(path, dtypes=model.input_dtypes()).schema
    missing = [c.name for c in model.input_schema().columns if c.name not in schema]
    if model.id_column is not None and model.id_column not in schema:
        missing.append(model.id_column)
    if missing:
        raise SchemaError(
            f"{path}: column(s) {missing} are missing; the bundle was fitted with them: add them to the "
            "input (null is allowed) or refit without them (--drop)"
        )


def _file_source(model: Model, path: str | Path, batch_size: int, ids_first: bool) -> FileSource:
    """The file as the model reads it; ids checked first (a full pass, for outputs that stream) or as the batches
    go, a repeat being refused after the last batch, before anything is published (one read of the file)."""
    model.check_fitted()
    _check_columns(path, model)
    if model.id_column is not None and ids_first:
        check_file_ids(path, model.id_column)
    return FileSource(
        path,
        batch_size=batch_size,
        dtypes=model.input_dtypes(),
        dates=model.date_columns(),
        id_column=None if ids_first else model.id_column,
    )


def _file_state(model: Model, path: str | Path) -> RunState:
    # the history's own records get their entity features as at fit, not continued from its end
    return RunState.start(model, from_start=model.has_entities and _is_history(model, path))


class _AfterWarmUp(Hooks):
    """Batches are scored once the warm-up started with the run is done (it scores with the same model)."""

    def __init__(self, warming: threading.Thread) -> None:
        self.warming = warming

    def before(self, batch: Batch, state: RunState) -> None:
        self.warming.join()


class _FileChecks:
    """What a file's run checks besides scoring: after the last batch, that it had rows, then its drift, any
    fitted numeric column null in every row and any record behind the entities' time, as warnings."""

    def __init__(self, model: Model, path: str | Path, state: RunState) -> None:
        self.model, self.path, self.late = model, path, _late(state)
        self.present = {c.name: 0 for c in model.input_schema().columns if c.kind == "numeric"}

    def batch(self, batch: Batch, scored: pl.DataFrame | None) -> None:
        frame = batch.frame
        for name in self.present:
            self.present[name] += frame.height - frame.get_column(name).null_count()

    def end(self, state: RunState) -> None:
        if state.rows == 0:
            raise DataError(f"{self.path}: the file has a header but no rows; there is nothing to score")
        drift, config = state.drift, self.model.config
        drifted = drift.report(adaptation_of(config.policy, config.adapt)).warning() if drift is not None else None
        if drifted:
            warnings.warn(drifted, SegscopeWarning, stacklevel=3)
        empty = [name for name, count in self.present.items() if count == 0]
        if empty:
            warnings.warn(
                f"{self.path}: column(s) {empty} are null in every row (numeric at fit): scored as missing, which "
                "lowers their records' scores; check the input or refit without them (--drop)",
                SegscopeWarning,
                stacklevel=3,
            )
        if late := _late(state) - self.late:  # the file, or the files before it on a --state-dir, out of order
            warnings.warn(f"{self.path}: {late:,} record(s) came more than allowed_lateness behind the newest event "
                          "time their entities had seen (state carried or rows above): their entity features "
                          "continue from later events; score files, and the rows of each, in time order",
                          SegscopeWarning, stacklevel=3)  # fmt: skip


def _late(state: RunState) -> int:
    return state.scoring.entities.late if state.scoring is not None and state.scoring.entities is not None else 0


def iter_scored(
    model: Model, path: str | Path, *, batch_size: int = 200_000, ids_first: bool = True
) -> Iterator[pl.DataFrame]:
    """Score a file batch by batch (bounded memory, one read of the file, one scoring state for it), with the
    checks of :func:`score_file`, for callers that read the scored frames themselves."""
    source = _file_source(model, path, batch_size, ids_first)
    state = _file_state(model, path)
    checks = _FileChecks(model, path, state)
    source.open()
    try:
        for batch in prefetch(source.iter_batches(), depth=1):  # the next batch is read while this one scores
            scored = score_batch(batch, model, state)
            checks.batch(batch, scored)
            if scored is not None:
                yield scored
        checks.end(state)
    finally:
        source.close()


def score_file(
    model: Model,
    path: str | Path,
    out: str | Path,
    *,
    batch_size: int = 200_000,
    on_batch: Callable[[int], None] | None = None,
    store: LabelStore | None = None,
    state_dir: Path | None = None,
    name: str | None = None,
) -> ScoreSummary:
    """Score ``path`` into ``out`` (format by extension, ``-`` = NDJSON on stdout) through the one loop (:func:`run`),
    all or nothing. With ``store``, each batch's alerts and queue candidates are added to the label store once the
    output is complete; with ``state_dir``, the entities continue from the state the previous file left there, and
    leave theirs for the next (:mod:`segscope.file_state`); both name the file ``name`` (its own by default)."""
    if str(out) != "-" and Path(out).exists() and Path(out).resolve() == Path(path).resolve():
        raise SinkError(f"--out {out} is the input file; write the scores to another file (the input is kept)")
    started = time.perf_counter()
    sink = open_sink(out)
    # a file output is published only at the end, so ids are checked as the batches go; stdout streams, so first
    whole = isinstance(sink, AllOrNothing) and sink.all_or_nothing
    source = _file_source(model, path, batch_size, ids_first=not whole)
    state = _file_state(model, path)
    held = lock_state_dir(state_dir, model) if state_dir is not None else None  # one run at a time on a folder
    try:
        carried = load_carried(state_dir, model) if state_dir is not None else None
        if carried is not None and state.scoring is not None:
            state.scoring.entities = carried
        checks = _FileChecks(model, path, state)
        kept: list[ReviewRecords] = []

        def done(batch: Batch, scored: pl.DataFrame | None) -> None:
            checks.batch(batch, scored)
            if scored is None:
                return
            if store is not None:
                review = model.for_review(scored)
                kept.append(review.subset(candidate_rows(scored, review.threshold, 2000)))
            if on_batch is not None:
                on_batch(scored.height)

        # the file is read, and the next batch scored, while the last one is written (the kernels and the writers
        # release the GIL); the checks refuse a file without rows, so some batch has set the output's schema
        warming = warm_up(model)  # Numba's first use while the first batch is read
        run(source, model, sink, state, ahead=True, on_batch=done, on_end=checks.end, hooks=_AfterWarmUp(warming))
        name = name or Path(path).name
        stored = sum(store.add_records(review, source=name) for review in kept) if store is not None else 0
        if state_dir is not None and state.scoring is not None and state.scoring.entities is not None:
            save_carried(state_dir, model, state.scoring.entities, name, state.rows)
        seconds = time.perf_counter() - started
        adapted = adapt_line(model.config, state.scoring.entities if state.scoring is not None else None)
        return ScoreSummary(state.rows, state.alerts, seconds, str(out), stored, adapted)
    finally:
        if held is not None:
            os.close(held)


def evaluate_file(model: Model, path: str | Path, label_column: str, *, batch_size: int = 200_000) -> dict[str, Any]:
    """Score a labelled file and compare with its labels (1 = anomaly)."""
    model.check_fitted()
    if label_column in {c.name for c in model.feature_schema.columns}:
        raise SchemaError(
            f"the label column '{label_column}' is a feature of this bundle, so the model has seen the answer; "
            f"refit with --drop {label_column}"
        )
    schema = FileSource(path, dtypes=model.input_dtypes()).schema
    if label_column not in schema:
        raise SchemaError(f"{path}: label column '{label_column}' not found; columns are {list(schema)[:20]}")
    labels, scores, alerts = [], [], []
    for scored in iter_scored(model, path, batch_size=batch_size, ids_first=False):
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


# ------------------------------------------------------------------ fine-tune
def _is_history(model: Model, path: str | Path) -> bool:
    """Whether ``path`` is the file the model was fitted on: its size first (a bundle of an older version: its row
    count, a pass over a text file), and only a file of the same size is hashed (a read of the whole file)."""
    size = model.training.get("bytes")
    if size is not None and Path(path).stat().st_size != size:
        return False
    if size is None and count_rows(path) != model.training.get("rows"):
        return False
    return bool(model.training.get("fingerprint") == sha256_file(path))


def as_fitted(model: Model, path: str | Path, frame: pl.DataFrame) -> pl.DataFrame:
    """The fitting history itself (same checksum) gets each record's entity features as they were at fit, from an
    empty state; any other file is left to the model, which continues from the state at the end of history."""
    if model.has_entities and _is_history(model, path):
        return EntityFeatures(model.config.entities).fit_transform(frame)
    return frame


def finetune_file(
    bundle: str | Path,
    data: str | Path | None = None,
    labels_path: str | Path | pl.DataFrame | None = None,
    *,
    store: LabelStore | str | Path | None = None,
    labels_source: str | None = None,
    learner: str = "xgboost",
    out: str | Path | None = None,
    folds: int = GATE_FOLDS,
    metric: str = "aucpr",
    trusted: bool = False,
    on_step: Callable[[str], None] | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> tuple[Model, dict[str, Any], Path]:
    """The `segscope finetune` job: load, fine-tune, add the candidate to the registry at ``out`` (default: the
    bundle itself, turned into a registry) and promote it when it is better. Returns (candidate, report, path).

    The training data is the history file ``data``, the label ``store``'s records (their stored input values:
    labelled ones, at most ``max_fit_rows`` others as background), or both (the union by id, the file's winning).
    Labels come from ``labels_path`` or, without it, from the store."""
    step = on_step or (lambda _: None)
    if data is None and store is None:
        raise DataError("fine-tuning needs training records: pass --data (a history file) or --store (a label store)")
    current = Model.load(bundle, trusted=trusted)
    opened = LabelStore.open(store, create=False) if isinstance(store, str | Path) else store
    shown = f"label store {hide_password(store)}" if isinstance(store, str | Path) else "the label store"
    try:
        if labels_path is None:
            if opened is None:
                raise DataError("fine-tuning needs labels: pass --labels FILE or --store URL")
            labels, source = store_labels(opened, shown), labels_source or shown
        else:
            labels = labels_path if isinstance(labels_path, pl.DataFrame) else load_labels(labels_path)
            source = labels_source or str(labels_path)
        step("reading the training records")
        history, described, stored = _training_data(current, data, opened, shown, labels.get_column("id"))
    finally:
        if opened is not None and opened is not store:
            opened.close()
    candidate, report = finetune(
        current,
        history,
        labels,
        learner=learner,
        folds=folds,
        metric=metric,
        labels_source=source,
        on_step=on_step,
        on_progress=on_progress,
        stored=stored,
    )
    report["training_data"] = described  # the report is the candidate's promotion record: kept in its manifest
    target = Path(out) if out is not None else Path(bundle)
    if target.resolve() == Path(bundle).resolve():
        registry.ensure_registry(target)
    else:
        registry.ensure_registry(target, seed_bundle=registry.resolve(bundle))
    with registry.locked(target):  # judged against current.version: promote only if it is still current
        now = registry.current_version(target)
        if report["promote"] and now != current.version:
            report.update(
                promote=False,
                reason=f"{report['reason']}, but the current version changed from {current.version} to {now} while "
                "fine-tuning; run finetune again to compare with it",
            )
        base, n = candidate.version, 1
        while (target / registry.VERSIONS / candidate.version).exists():  # the same tuning twice in one second
            candidate = candidate.with_version(f"{base}-{n}")
            n += 1
        step(f"writing version {candidate.version}")
        candidate.save(target / registry.VERSIONS / candidate.version)
        if report["promote"]:
            registry.set_current(
                target,
                candidate.version,
                action="promote",
                detail={"reason": report["reason"]},
                expected=current.version,
            )
    return candidate, report, target


def history_from_store(
    store: LabelStore, model: Model, shown: str = "the label store", keep: Iterable[str] = ()
) -> pl.DataFrame:
    """The store's records as training data for ``model`` (:func:`~segscope.labels.records.training_records`):
    its input columns (with the per-entity features each record had when scored) and entity keys and times, in
    the types the bundle was fitted with, and the store's record ids in the bundle's id column (as text). The
    labelled records and those in ``keep`` are all read, the others up to the config's ``max_fit_rows``."""
    model.check_fitted()
    if model.id_column is None:
        raise DataError("fine-tuning joins labels to records by id, and this bundle has none; refit with --id-column")
    columns = list(model.feature_schema.columns)
    columns += [c for c in model.entity_inputs if c.name not in {x.name for x in columns}]
    budget_time = getattr(model.config.policy, "time_column", None)
    if budget_time and budget_time not in {c.name for c in columns}:  # an alert budget per day reads it
        columns.append(ColumnSpec(budget_time, "categorical", "String"))
    cap = model.config.max_fit_rows  # what fine-tuning keeps of the unlabelled records: no more is read
    return training_records(store, columns, id_column=model.id_column, shown=shown, background=cap, keep=keep)


def _training_data(
    model: Model, data: str | Path | None, store: LabelStore | None, shown: str, labelled: Iterable[str] = ()
) -> tuple[pl.DataFrame, dict[str, Any], np.ndarray]:
    """(the training records, what they were made of, which of them are the store's): the file, the store's
    records, or both by id."""
    from_file = as_fitted(model, data, read_file(data)) if data is not None else None
    if store is None:
        assert from_file is not None
        return from_file, {"file": str(data), "file_records": from_file.height}, np.zeros(from_file.height, bool)
    stored = history_from_store(store, model, shown, labelled)
    held = {"store_records": stored.height, "store_held": store.record_count()}
    if from_file is None:
        return stored, held, np.ones(stored.height, bool)
    id_column = model.id_column or ""
    if id_column not in from_file.columns:
        raise SchemaError(f"{data} has no id column '{id_column}'; pass the --data the bundle was fitted on")
    # the file's entity features over the whole file in order (not per training subset), as it would be scored
    from_file = model.with_entities(from_file).with_columns(pl.col(id_column).cast(pl.String))
    check_unique_ids(from_file, id_column)
    extra = stored.filter(~pl.col(id_column).is_in(from_file.get_column(id_column).implode()))
    try:
        both = pl.concat([from_file, extra], how="diagonal_relaxed")
    except pl.exceptions.PolarsError as exc:
        raise SchemaError(
            f"{data} and the records in {shown} do not fit in one table ({str(exc).splitlines()[0][:160]}); "
            "fine-tune on one of them"
        ) from None
    described = {"file": str(data), "file_records": from_file.height, **held}
    described["in_both"] = stored.height - extra.height  # the file's values were used for these
    return both, described, np.arange(both.height) >= from_file.height


def rescore_store(store: LabelStore, model: Model, *, batch_size: int = 5000) -> int:
    """Re-score the store's records that another model version scored (e.g. after a promotion), from their
    stored values, so the queue ranks by the current model. Returns how many were updated."""
    done = 0
    for ids, frame in store.stale_records(model.version, batch_size=batch_size):
        done += store.add_records(model.for_review(model.score(frame), ids=ids), source="rescore")
    return done
