"""Fine-tuning a model version on analyst labels: join the labels to the history, judge the fine-tuning on every
label out of fold against the current version (:mod:`segscope.supervised.promotion`: time-ordered when the
records have an event time), train the candidate on all records (continued from the current learner when it can
be) and refit the alert policy on its score. Writing and promoting the candidate is the caller's job
(:func:`segscope.pipeline.finetune_file`)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np
import polars as pl

from segscope.exceptions import DataError, SchemaError
from segscope.model import Model
from segscope.sources.frames import check_unique_ids, parse_datetimes
from segscope.supervised.base import FineTuned, Layout
from segscope.supervised.held_out import held_out_proba
from segscope.supervised.learners import make_finetuned
from segscope.supervised.promotion import GATE_FOLDS, Folds, compare, fold_percentiles, gate_folds, judged_rows
from segscope.supervised.selection import choose, out_of_fold

__all__ = ["GATE_LEVEL", "chained_gate", "finetune", "time_column"]

#: The gate's level: labels that carry nothing are promoted at most this often (random folds: each of the two
#: chains at half of it).
GATE_LEVEL = 0.01


def time_column(model: Model, frame: pl.DataFrame) -> str | None:
    """The column that orders records in time: the alert policy's, else an entity's event time, else the first
    datetime feature column."""
    named = [model.config.policy.time_column, *(spec.time for spec in model.config.entities)]
    for column in named:
        if column and column in frame.columns:
            return column
    return next(
        (c.name for c in model.feature_schema.columns if c.kind == "datetime" and c.name in frame.columns), None
    )


def _event_times(column: pl.Series) -> np.ndarray:
    """Event times as numbers that order the records (datetimes, epoch numbers, or text holding either); a value
    that does not read counts as earliest."""
    if column.dtype == pl.String:
        parsed = parse_datetimes(column)
        column = parsed if parsed.null_count() < column.len() else column.cast(pl.Float64, strict=False)
    return column.to_physical().cast(pl.Float64, strict=False).fill_null(-np.inf).to_numpy()


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
    folds: int = GATE_FOLDS,
    metric: str = "aucpr",
    labels_source: str = "labels",
    on_step: Callable[[str], None] | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
    stored: np.ndarray | None = None,
) -> tuple[Model, dict[str, Any]]:
    """Fine-tune a new version of ``current`` on analyst labels and decide whether it should be promoted.

    ``history`` holds the labelled records (joined by the bundle's id column) and unlabelled ones; ``labels`` is
    a :data:`~segscope.labels.parse.LABEL_SCHEMA` frame. Returns (candidate, report); ``report["promote"]`` says
    whether fine-tuning beat the current version out of fold on the labelled records.

    ``stored``: which rows of ``history`` come from a label store. A store keeps mostly alerts and queue
    candidates, no sample of the traffic, so the alert policy is refit on the other rows when there are; a policy
    of a rate then alerts on as many of its rows as the current version does (:func:`_policy_rows`).
    """
    step = on_step or (lambda _: None)
    current.check_fitted()
    label = _join_labels(current, history, labels, labels_source)
    rng = np.random.default_rng(current.config.seed)
    # every labelled record, and at most max_fit_rows unlabelled ones as the background
    known = label.is_not_null().to_numpy()
    unlabelled = np.flatnonzero(~known)
    cap = current.config.max_fit_rows
    sampled = min(1.0, cap / unlabelled.size) if unlabelled.size else 1.0  # the unlabelled records' share kept
    if unlabelled.size > cap:
        unlabelled = rng.choice(unlabelled, size=cap, replace=False)
    rows = np.sort(np.concatenate([np.flatnonzero(known), unlabelled]))
    frame = history[rows]
    y = (label.gather(rows) == 1).fill_null(False).to_numpy().astype(np.int64)
    labelled = known[rows]
    column = time_column(current, frame)
    times = _event_times(frame.get_column(column)) if column else None
    gate = gate_folds(y, times=times, column=column, folds=folds, rng=rng)
    step(f"preparing {rows.size:,} records ({int(y.sum())} labelled anomalies)")
    with_segments = current.learner_sees_segments()
    x, layout, _ = current.supervision_matrix(frame, with_segments=with_segments)
    init = None
    previous = current.supervised
    same_inputs = (
        previous is not None
        and previous.uses_layout
        and previous.layout_ == layout
        and current.supervised_sees_segments == with_segments
    )
    if previous is not None and previous.learner.name == learner and same_inputs:
        init = previous.learner.artifact()[1]  # continue from the previous booster

    tuned = make_finetuned(learner, n_features=current.n_features, seed=current.config.seed, progress=on_progress)
    cache: dict[tuple[bytes, bytes, int], np.ndarray] = {}
    candidates = out_of_fold(tuned, x, y, labelled, layout, gate, init=init, step=step, cache=cache)
    n_pos = int(y.sum())
    chosen, oof, name = None, np.empty(0), ""
    taken: list[str] = []
    if candidates.y.any():
        oof, taken = candidates.gate_scores(n_pos, seed=current.config.seed)
        names = candidates.names(n_pos)
        name = choose(candidates.y, candidates.values, names, seed=current.config.seed)
        chosen = candidates.chosen(name, f"{len(names)} candidates compared on the gate's folds")
    continued = " (continued from the current version)" if init else ""
    picked = f" ({name})" if name else ""
    step(f"fine-tuning the {learner} learner{picked} on every record{continued}")
    tuned.fit(x, y, labelled, layout, init=init, chosen=chosen)

    in_store = stored[rows] if stored is not None else None
    reference, alerts, drawn_from = _policy_rows(current, frame, in_store, labelled, sampled, cap, rng)
    created = datetime.now(UTC)
    label_digest = hashlib.sha256(labels.sort("id").write_csv().encode()).hexdigest()
    version_digest = hashlib.sha256(f"{label_digest}|{learner}|{current.version}".encode()).hexdigest()
    snapshot = {
        "source": labels_source,
        "sha256": label_digest,
        "labels": int(labels.height),
        "anomalies": int((labels["label"] == 1).sum()),
        "normals": int((labels["label"] == 0).sum()),
        "used_for_training": int(labelled.sum()),
    }

    report: dict[str, Any] = {
        "metric": metric,
        "split": gate.kind,
        "held_out_records": 0,
        "held_out_labelled_anomalies": 0,
        "supervised": tuned.describe(),
        "continued_from": current.version if init else None,
    }
    if chosen is None:
        report.update(promote=False, reason="no fold could be predicted (each needs a labelled anomaly before it)")
    elif gate.ordered:
        judged = candidates.rows
        current_scores = current.score(frame[judged])["score"].to_numpy()
        keep, against = judged_rows(y[judged], labelled[judged], current_scores)
        judged, oof, current_scores = judged[keep], oof[keep], current_scores[keep]
        step(f"comparing with the current version on {judged.size:,} records predicted out of fold")
        report.update(held_out_records=int(judged.size), held_out_labelled_anomalies=int(y[judged].sum()))
        report["candidates"] = {"chosen": name, "taken_by_fold": taken, "out_of_fold_aucpr": candidates.table()}
        folds_judged = candidates.fold[keep]
        report.update(compare(y[judged], current_scores, oof, metric, against=against, folds=folds_judged))
    else:
        report["candidates"] = {"chosen": name, "out_of_fold_aucpr": candidates.table()}
        current_all = np.full(rows.size, np.nan)
        current_all[candidates.rows] = current.score(frame[candidates.rows])["score"].to_numpy()
        step(f"comparing with the current version on folds chained both ways ({gate.n_folds} folds)")
        report.update(
            chained_gate(
                tuned,
                x,
                y,
                labelled,
                layout,
                gate,
                current_all,
                metric,
                init=init,
                step=step,
                cache=cache,
                seed=current.config.seed,
            )
        )
        report["candidates"]["taken_by_fold"] = report.pop("taken_by_fold", [])
    if alerts is not None:
        among = (
            f"the {drawn_from:,}"
            if drawn_from == reference.size
            else f"{reference.size:,} drawn from the {drawn_from:,}"
        )
        report["alert_policy"] = (
            f"set to alert on {alerts:,} of {among} records it learnt from (each scored as if new), as many as the "
            "current version does"
        )
    step("calibrating the alert policy on the supervised score")
    candidate = current.with_supervised(
        tuned,
        sees_segments=with_segments,
        scores=held_out_proba(tuned, x, y, labelled, reference, init=init, pretrained=candidates.pretrained),
        frame=frame[reference],
        version=f"{created:%Y%m%d-%H%M%S}-{version_digest[:8]}",
        created_at=created.isoformat(timespec="seconds"),
        labels=snapshot,
        promotion=report,  # the report is the version's promotion record (the caller completes it)
        alerts=alerts,
    )
    return candidate, report


def _policy_rows(
    current: Model,
    frame: pl.DataFrame,
    stored: np.ndarray | None,
    labelled: np.ndarray,
    sampled: float,
    cap: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, int | None, int]:
    """(the rows of ``frame`` the alert policy is refit on, at most ``cap``; how many of them it must alert on, or
    None to keep its own rate; how many records of the history they were drawn from). A policy of a rate alerts on
    as many of them as the current version does: the analysts' load stays, the alerts move to what the labels
    taught, however the rows' share of anomalies differs from the fit history's. The labelled rows are among
    them: analysts label the alerts first, so the rest is no sample of the traffic (a rate set on it alerts on
    several times too many new records). ``frame`` keeps every labelled record but only the share ``sampled`` of
    the unlabelled ones, so the labelled rows are thinned to that share too: all of them stood for ten times
    their share of a history ten times max_fit_rows. Rows that are no store's, when there are: a store keeps
    mostly alerts and queue candidates."""
    from_store = stored if stored is not None and stored.any() else np.zeros(frame.height, dtype=bool)
    pool = np.arange(frame.height) if from_store.all() else np.flatnonzero(~from_store)
    known, rest = pool[labelled[pool]], pool[~labelled[pool]]
    drawn_from = known.size + round(rest.size / sampled)
    kept = rng.choice(known, size=round(known.size * sampled), replace=False) if sampled < 1 else known
    pool = np.sort(np.concatenate([kept, rest]))
    reference = np.sort(rng.choice(pool, size=cap, replace=False)) if pool.size > cap else pool
    if current.config.policy.kind not in ("quantile", "contamination"):
        return reference, None, drawn_from
    alerts = int(np.count_nonzero(current.score(frame[reference]).get_column("is_alert").to_numpy()))
    return reference, alerts, drawn_from


def chained_gate(
    tuned: FineTuned,
    x: np.ndarray,
    y: np.ndarray,
    labelled: np.ndarray,
    layout: Layout,
    gate: Folds,
    current: np.ndarray,
    metric: str,
    *,
    init: bytes | None = None,
    step: Callable[[str], None] | None = None,
    cache: dict[tuple[bytes, bytes, int], np.ndarray] | None = None,
    seed: int = 0,
    level: float = GATE_LEVEL,
) -> dict[str, Any]:
    """The promotion decision on random folds chained both ways (:meth:`Folds.chains`): each chain's candidates
    predict each fold from the folds before it only, so no two labelled anomalies teach each other's folds and,
    on labels that carry nothing, each fold's labelled anomalies are records drawn at random from it given the
    folds before; each fold's scores (``current``: the current version's, one per row of ``x``, and the
    candidate's) are judged as percentiles of its records (a scale that uses no label), and each chain is tested
    at half of ``level`` (promoted when either passes: at most ``level`` in all). The report is the deciding
    chain's (the one with the smaller p-value), its p-value doubled."""
    n_pos = int(y.sum())
    confirmed = int((labelled & (y != 1)).sum())
    chains = gate.chains()
    reports = []
    for chain in chains:
        predicted = out_of_fold(tuned, x, y, labelled, layout, chain, init=init, step=step, cache=cache)
        if not predicted.y.any():
            continue
        scores, taken = predicted.gate_scores(n_pos, seed=seed)
        rows = predicted.rows
        cur = fold_percentiles(current[rows], predicted.fold)
        keep, against = judged_rows(y[rows], labelled[rows], cur, confirmed=confirmed)
        cur, new = cur[keep], fold_percentiles(scores, predicted.fold)[keep]
        decided = compare(
            y[rows][keep],
            cur,
            new,
            metric,
            against=against,
            folds=predicted.fold[keep],
            probabilities=scores[keep],
            scale="each fold's scores as percentiles of its records, ",
            confidence=1 - level / len(chains),
            seed=seed,
        )
        decided.update(
            chain=chain.kind,
            taken_by_fold=taken,
            held_out_records=int(keep.sum()),
            held_out_labelled_anomalies=int(y[rows][keep].sum()),
        )
        reports.append(decided)
    if not reports:
        return {"promote": False, "reason": "no fold could be predicted (each needs a labelled anomaly before it)"}
    judged = [r for r in reports if "permutation_p_value" in r]
    if not judged:
        return reports[0]
    best = min(judged, key=lambda r: (not r["promote"], r["permutation_p_value"]))
    others = "; ".join(f"{r['chain']} p={r['permutation_p_value']:.4f}" for r in judged if r is not best)
    return {
        **best,
        "permutation_p_value": min(1.0, len(chains) * best["permutation_p_value"]),
        "chains": {r["chain"]: {k: r.get(k) for k in ("permutation_p_value", "promote", "reason")} for r in reports},
        "reason": f"folds chained {best['chain']}"
        + (f" (the other way: {others})" if others else "")
        + f": {best['reason']}",
    }
