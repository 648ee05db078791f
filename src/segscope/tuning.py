"""Fine-tuning a model version on analyst labels: join the labels to the history, split off held-out records,
train the supervised layer on the rest (continued from the current learner when it can be), refit the alert
policy on the supervised score, and judge the candidate against the current version
(:mod:`segscope.supervised.promotion`). Writing and promoting the candidate is the caller's job
(:func:`segscope.pipeline.finetune_file`)."""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np
import polars as pl

from segscope.exceptions import DataError, SchemaError
from segscope.features.prepare import check_unique_ids
from segscope.model import Model
from segscope.supervised.learners import make_finetuned
from segscope.supervised.promotion import compare, split_holdout, training_rows
from segscope.unsupervised.threshold import make_policy

__all__ = ["finetune", "time_column"]


def time_column(model: Model, frame: pl.DataFrame) -> str | None:
    """The column that orders records in time: the alert policy's, else the first datetime feature column."""
    policy_column = model.config.policy.time_column
    if policy_column and policy_column in frame.columns:
        return policy_column
    return next((c.name for c in model.preparer_.schema_.columns if c.kind == "datetime"), None)


def _join_labels(current: Model, history: pl.DataFrame, labels: pl.DataFrame, source: str) -> pl.Series:
    """Each history row's label (1 anomaly / 0 normal / null unlabelled), joined by the bundle's id column."""
    id_col = current.id_column
    if id_col is None:
        raise DataError("fine-tuning joins labels to records by id, and this bundle has none; refit with --id-column")
    if id_col not in history.columns:
        raise SchemaError(f"the history has no id column '{id_col}'; pass the --data the bundle was fitted on")
    check_unique_ids(history, id_col)
    ids = history.get_column(id_col).cast(pl.String)
    unknown = labels.filter(~pl.col("id").is_in(ids.implode()))
    if unknown.height:
        raise DataError(
            f"{unknown.height} label(s) in {source} refer to ids not in the history (e.g. "
            f"{unknown['id'][0]!r}); pass the --data that holds the labelled records"
        )
    joined = history.select(ids.alias("__id")).join(
        labels.select(pl.col("id").alias("__id"), pl.col("label").alias("__label")), on="__id", how="left"
    )
    return joined.get_column("__label")


def finetune(
    current: Model,
    history: pl.DataFrame,
    labels: pl.DataFrame,
    *,
    learner: str = "xgboost",
    holdout: float = 0.3,
    metric: str = "aucpr",
    labels_source: str = "labels",
    on_step: Callable[[str], None] | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> tuple[Model, dict[str, Any]]:
    """Fine-tune a new version of ``current`` on analyst labels and decide whether it should be promoted.

    ``history`` holds the labelled records (joined by the bundle's id column) and unlabelled ones; ``labels`` is
    a :data:`~segscope.labels.parse.LABEL_SCHEMA` frame. Returns (candidate, report); ``report["promote"]`` says
    whether the candidate beat the current version on held-out records.
    """
    step = on_step or (lambda _: None)
    current._check_fitted()
    if not 0.05 <= holdout <= 0.9:
        raise DataError(f"--holdout must be between 0.05 and 0.9; got {holdout}")
    label = _join_labels(current, history, labels, labels_source)
    y = (label == 1).fill_null(False).to_numpy().astype(np.int64)
    labelled = label.is_not_null().to_numpy()
    column = time_column(current, history)
    times = history.get_column(column).to_physical().fill_null(0).to_numpy() if column is not None else None
    rng = np.random.default_rng(current.config.seed)
    split = split_holdout(history.height, holdout, times=times, column=column, rng=rng)
    cap = current.config.max_fit_rows
    fit_rows = training_rows(split, y, labelled, cap=cap, rng=rng)
    step(f"preparing {fit_rows.size:,} training records ({int(y[fit_rows].sum())} labelled anomalies)")
    with_segments = current.learner_sees_segments()
    x_fit, layout, _ = current.supervision_matrix(history[fit_rows], with_segments=with_segments)
    init = None
    previous = current.supervised_
    same_inputs = (
        previous is not None
        and previous.uses_layout
        and previous.layout_ == layout
        and current.supervised_segment_features_ == with_segments
    )
    if previous is not None and previous.learner.name == learner and same_inputs:
        init = previous.learner.artifact()[1]  # continue from the previous booster
    step(f"fine-tuning the {learner} learner" + (" (continued from the current version)" if init else ""))
    tuned = make_finetuned(learner, n_features=current.n_features, seed=current.config.seed, progress=on_progress)
    tuned.fit(x_fit, y[fit_rows], labelled[fit_rows], layout, init=init)

    step("calibrating the alert policy on the supervised score")
    candidate = copy.copy(current)
    candidate.supervised_ = tuned
    candidate.supervised_segment_features_ = with_segments
    reference_rows = fit_rows if fit_rows.size <= cap else np.sort(rng.choice(fit_rows, size=cap, replace=False))
    reference = tuned.predict_proba(x_fit[np.searchsorted(fit_rows, reference_rows)])
    candidate.policy_ = make_policy(current.config.policy).fit(reference, history[reference_rows])
    created = datetime.now(UTC)
    label_digest = hashlib.sha256(labels.sort("id").write_csv().encode()).hexdigest()
    candidate.created_at_ = created.isoformat(timespec="seconds")
    version_digest = hashlib.sha256(f"{label_digest}|{learner}|{current.version}".encode()).hexdigest()
    candidate.version_ = f"{created:%Y%m%d-%H%M%S}-{version_digest[:8]}"
    candidate.parent_version_ = current.version
    candidate.label_snapshot_ = {
        "source": labels_source,
        "sha256": label_digest,
        "labels": int(labels.height),
        "anomalies": int((labels["label"] == 1).sum()),
        "normals": int((labels["label"] == 0).sum()),
        "used_for_training": int(labelled[fit_rows].sum()),
    }

    step("comparing with the current version on the held-out records")
    held = history[split.held]
    y_held = y[split.held]
    report: dict[str, Any] = {
        "metric": metric,
        "split": split.kind,
        "held_out_records": int(split.held.size),
        "held_out_labelled_anomalies": int(y_held.sum()),
        "supervised": tuned.describe(),
        "continued_from": current.version if init else None,
    }
    if 0 < y_held.sum() < y_held.size:
        scores = (current.score(held)["score"].to_numpy(), candidate.score(held)["score"].to_numpy())
    else:
        scores = (np.empty(0), np.empty(0))
    report.update(compare(y_held, *scores, metric))
    candidate.promotion_ = report
    return candidate, report
