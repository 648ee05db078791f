"""Which records an analyst should look at next: a mix of the highest scores, the records whose labels teach the
model most, and coverage across segments.

Top-score order spends much of the budget on near-copies of one another (a burst of card testing, a scan): the
same answer again teaches the re-fitted model nothing. So

- the *top* share walks down the score order but skips near-duplicates (closer than the 10th percentile of the
  distances among the top candidates) of records already picked or labelled, when feature vectors are given;
- the *uncertain* share takes records nearest the decision boundary (the alert threshold; 0.5 for a fine-tuned
  model's probability), spread out by farthest-point sampling so that they are also far from anything labelled;
- the *coverage* share takes the highest-scoring record of each segment, segments with the fewest labels first
  (without segments: farthest-point picks among the upper half of the scores).

:func:`select_queue` is a pure function of arrays, shared by the label store's queue, the CLI and the benchmark.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from segscope.exceptions import ConfigError

__all__ = ["BACKGROUND_SHARE", "QueueMix", "QueuePick", "candidate_rows", "parse_mix", "select_queue"]


class QueueMix(BaseModel):
    """Shares of a queue (they sum to 1) and the daily budget of labels per analyst.

    Defaults from ``python benchmarks/queue_quality.py`` (see README)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # 0.8/0.2/0 had a higher test AUCPR than top-score order after every round, on the mean of 9 sets x 3 seeds;
    # a coverage share cost AUCPR there (no segments in those runs), so it is opt-in
    top: float = Field(default=0.8, ge=0.0, le=1.0)
    uncertain: float = Field(default=0.2, ge=0.0, le=1.0)
    coverage: float = Field(default=0.0, ge=0.0, le=1.0)
    daily_budget: int = Field(default=200, ge=1)

    @model_validator(mode="after")
    def _shares_sum_to_one(self) -> QueueMix:
        total = self.top + self.uncertain + self.coverage
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"top + uncertain + coverage must be 1; got {total:g}")
        return self


def parse_mix(text: str | None, daily_budget: int | None = None) -> QueueMix:
    """``top=0.5,uncertain=0.3,coverage=0.2`` -> :class:`QueueMix` (a one-line error when malformed)."""
    values: dict[str, float | int] = {}
    if text:
        for part in text.split(","):
            key, sep, value = part.partition("=")
            try:
                if not sep:
                    raise ValueError
                values[key.strip()] = float(value)
            except ValueError:
                raise ConfigError(
                    f"--mix {text!r}: write it as top=0.5,uncertain=0.3,coverage=0.2 (shares summing to 1)"
                ) from None
    if daily_budget is not None:
        values["daily_budget"] = daily_budget
    try:
        return QueueMix(**values)  # type: ignore[arg-type]
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"])
        raise ConfigError(f"--mix {text!r}: {where + ': ' if where else ''}{error['msg']}") from None


@dataclass(frozen=True)
class QueuePick:
    """Positions into the candidate arrays, in queue order, and why each was picked."""

    index: np.ndarray
    why: list[str]


def select_queue(
    score: np.ndarray,
    n: int,
    mix: QueueMix,
    *,
    threshold: float | None = None,
    segment: np.ndarray | None = None,
    vectors: np.ndarray | None = None,
    labelled_vectors: np.ndarray | None = None,
    labelled_segment: np.ndarray | None = None,
    distinct_top: bool = True,
    seed: int = 0,
) -> QueuePick:
    """Pick ``n`` of the unlabelled candidates (``score`` etc. describe only those).

    ``threshold``: the decision boundary on ``score`` (the alert threshold, or 0.5 for a fine-tuned model's
    probability; default: the 99th percentile of the candidates). ``distinct_top``: skip near-duplicates in the
    top share (needs ``vectors``).
    ``vectors``/``labelled_vectors``: prepared feature vectors of the candidates and of labelled records, for
    "far from anything labelled"; ``labelled_segment``: segments of labelled records, for coverage."""
    score = np.asarray(score, dtype=np.float64)
    n = min(n, score.size)
    if n <= 0:
        return QueuePick(np.empty(0, dtype=np.int64), [])
    n_top = round(n * mix.top)
    n_uncertain = min(n - n_top, round(n * mix.uncertain))
    n_coverage = n - n_top - n_uncertain
    taken = np.zeros(score.size, dtype=bool)
    order: list[int] = []
    why: list[str] = []

    def take(rows: list[int] | np.ndarray, reason: str) -> None:
        for r in rows:
            if not taken[r]:
                taken[r] = True
                order.append(int(r))
                why.append(reason)

    by_score = np.argsort(-score, kind="stable")
    if distinct_top and vectors is not None and n_top:
        take(_distinct_in_order(vectors, by_score, n_top, labelled_vectors), "top score")
    else:
        take(by_score[:n_top], "top score")
    if n_uncertain:
        thr = float(threshold) if threshold is not None else float(np.quantile(score, 0.99))
        free = np.flatnonzero(~taken)
        near = free[np.argsort(np.abs(score[free] - thr), kind="stable")][: 4 * n_uncertain]
        if vectors is not None:
            near = near[_farthest_points(vectors[near], _anchors(vectors, taken, labelled_vectors), n_uncertain)]
        take(near[:n_uncertain], "near the threshold" + (", far from labels" if vectors is not None else ""))
    if n_coverage:
        before = len(order)
        if segment is not None:
            take(_segment_round_robin(score, segment, taken, labelled_segment, n_coverage), "segment coverage")
        missing = n_coverage - (len(order) - before)
        if missing > 0:  # no (more) segments: spread the rest over the upper half of the scores
            free = np.flatnonzero(~taken)
            upper = free[score[free] >= np.median(score[free])] if free.size else free
            if vectors is not None and upper.size:
                pool = upper[_farthest_points(vectors[upper], _anchors(vectors, taken, labelled_vectors), missing)]
            else:
                pool = upper[np.argsort(-score[upper], kind="stable")][:missing]
            take(pool, "coverage")
    if len(order) < n:  # pools ran dry: fill with the next highest scores
        take([r for r in by_score if not taken[r]][: n - len(order)], "top score")
    return QueuePick(np.asarray(order, dtype=np.int64), why)


def _distinct_in_order(vectors: np.ndarray, order: np.ndarray, k: int, labelled: np.ndarray | None) -> np.ndarray:
    """The first ``k`` of ``order`` skipping near-duplicates (closer than the 10th percentile of the distances
    between the top candidates) of records already picked or labelled: the same answer twice teaches nothing."""
    pool = order[: min(order.size, 10 * k)]
    points = vectors[pool]
    dist = np.sqrt(((points[:, None, :] - points[None, :, :]) ** 2).sum(axis=2))
    off = dist[np.triu_indices(pool.size, 1)]
    radius = float(np.quantile(off, 0.1)) if off.size else 0.0
    near_labelled = np.zeros(pool.size, dtype=bool)
    if labelled is not None and labelled.size and radius > 0:
        for start in range(0, labelled.shape[0], 2048):
            chunk = labelled[start : start + 2048]
            d = np.sqrt(((points[:, None, :] - chunk[None, :, :]) ** 2).sum(axis=2))
            near_labelled |= (d < radius).any(axis=1)
    picked: list[int] = []
    for i in range(pool.size):
        if len(picked) == k:
            break
        if near_labelled[i] or (picked and (dist[i, picked] < radius).any()):
            continue
        picked.append(i)
    if len(picked) < k:  # not enough distinct ones: the rest in score order
        rest = [i for i in range(pool.size) if i not in set(picked)]
        picked += rest[: k - len(picked)]
    return pool[np.asarray(picked, dtype=np.int64)]


def _anchors(vectors: np.ndarray, taken: np.ndarray, labelled: np.ndarray | None) -> np.ndarray:
    """Points a new pick should be far from: labelled records and this queue's picks so far."""
    parts = [vectors[taken]]
    if labelled is not None and labelled.size:
        parts.append(labelled)
    return np.concatenate(parts) if parts else vectors[:0]


def _farthest_points(points: np.ndarray, anchors: np.ndarray, k: int) -> np.ndarray:
    """Greedy farthest-point sampling: ``k`` positions into ``points``, each the farthest from the anchors and the
    picks before it (ties and the first pick without anchors: the earliest position)."""
    k = min(k, points.shape[0])
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    nearest = np.full(points.shape[0], np.inf)
    for start in range(0, anchors.shape[0], 2048):
        chunk = anchors[start : start + 2048]
        d = ((points[:, None, :] - chunk[None, :, :]) ** 2).sum(axis=2)
        nearest = np.minimum(nearest, d.min(axis=1))
    picks: list[int] = []
    for _ in range(k):
        i = int(np.argmax(nearest)) if np.isfinite(nearest).any() else len(picks)
        picks.append(i)
        nearest = np.minimum(nearest, ((points - points[i]) ** 2).sum(axis=1))
        nearest[i] = -1.0
    return np.asarray(picks, dtype=np.int64)


def _segment_round_robin(
    score: np.ndarray, segment: np.ndarray, taken: np.ndarray, labelled_segment: np.ndarray | None, k: int
) -> list[int]:
    """The highest-scoring free record of each segment in turn, segments with the fewest labels first."""
    free = ~taken & (segment >= 0)
    if not free.any():
        return []
    segments = np.unique(segment[free])
    labels_in = {int(s): 0 for s in segments}
    if labelled_segment is not None:
        for s, c in zip(*np.unique(labelled_segment, return_counts=True), strict=True):
            if int(s) in labels_in:
                labels_in[int(s)] = int(c)
    queues = {
        int(s): list(np.flatnonzero(free & (segment == s))[np.argsort(-score[free & (segment == s)])]) for s in segments
    }
    turn = sorted(labels_in, key=lambda s: (labels_in[s], -score[queues[s][0]]))
    picks: list[int] = []
    while len(picks) < k and any(queues.values()):
        for s in turn:
            if queues[s] and len(picks) < k:
                picks.append(int(queues[s].pop(0)))
    return picks


#: Share of each scored batch kept as a uniform sample besides the candidates (at most a quarter of the limit):
#: the unlabelled background that fine-tuning from the store alone (``finetune --store`` without ``--data``) ranks
#: the labelled anomalies against; the candidates are all high scores. Synthetic transactions, 200 labels from the
#: queue, 5 seeds: AUCPR on later records 0.987 with it, 0.969 without (0.981 trained on the whole file).
BACKGROUND_SHARE = 0.01


def candidate_rows(
    scored: pl.DataFrame, threshold: float | None, limit: int, *, background: float = BACKGROUND_SHARE
) -> np.ndarray:
    """Positions of the rows of a scored batch worth keeping for the queue: alerts, rows nearest the alert
    ``threshold``, and the top rows of each segment (highest scores first), plus a uniform sample of
    ``background`` of the batch (a seed drawn from the scores: the same batch keeps the same rows); at most
    ``limit`` in all."""
    if scored.height <= limit:
        return np.arange(scored.height)
    score = scored["score"].to_numpy()
    n_background = min(limit // 4, math.ceil(background * scored.height)) if background > 0 else 0
    keep = np.zeros(scored.height, dtype=bool)
    alerts = np.flatnonzero(scored["is_alert"].to_numpy())
    keep[alerts[np.argsort(-score[alerts])][: limit // 2]] = True
    thr = float(threshold) if threshold is not None else float(np.quantile(score, 0.99))
    keep[np.argsort(np.abs(score - thr))[: limit // 4]] = True
    segment = scored["segment"].to_numpy()
    for s in np.unique(segment):
        members = np.flatnonzero(segment == s)
        keep[members[np.argsort(-score[members])][:5]] = True
    chosen = np.flatnonzero(keep)
    chosen = chosen[np.argsort(-score[chosen])][: limit - n_background]
    if n_background:
        rest = np.setdiff1d(np.arange(scored.height), chosen)
        seed = int.from_bytes(hashlib.sha256(np.ascontiguousarray(score).tobytes()).digest()[:8], "little")
        sample = np.random.default_rng(seed).choice(rest, size=min(n_background, rest.size), replace=False)
        chosen = np.concatenate([chosen, sample])
    return np.sort(chosen)
