"""Conformance checks every component must pass, run over the registries by ``tests/test_common.py``.

``yield_*_checks`` yield ``(name, check)`` pairs. Detectors, policies, learners and the segmenter share the
contract checks (``__init__`` only stores parameters, refusal before fit, scoring that depends neither on the
batch nor changes the component, a state round trip); sources and sinks have their own (every row once and in
order; output whole or not at all).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import polars as pl
from sklearn.metrics import roc_auc_score

from segscope.exceptions import NotFittedError
from segscope.features.entity import EntityFeatures
from segscope.sinks.base import Sink
from segscope.sources.base import Source
from segscope.unsupervised.detect import Detector

__all__ = [
    "planted_matrix",
    "yield_detector_checks",
    "yield_learner_checks",
    "yield_policy_checks",
    "yield_segmenter_checks",
    "yield_sink_checks",
    "yield_source_checks",
]

Check = Callable[[Any], None]


def _named(*checks: Check) -> Iterator[tuple[str, Check]]:
    return ((check.__name__, check) for check in checks)


def planted_matrix(n: int = 1500, d: int = 5, *, n_anomalies: int = 30, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian inliers with a few planted far-off rows; returns (matrix, labels)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = np.zeros(n, dtype=np.int64)
    idx = rng.choice(n, size=n_anomalies, replace=False)
    x[idx] += rng.choice([-1.0, 1.0], size=(n_anomalies, d)) * rng.uniform(4, 7, size=(n_anomalies, d))
    y[idx] = 1
    return x, y


def _check_params_stored(component: Any) -> None:
    params = component.get_params()
    assert not [k for k in vars(component) if k.endswith("_")], "__init__ must only store parameters"
    clone = type(component)(**params)
    assert clone.get_params() == params


# ------------------------------------------------------------------------------------------ detectors
def check_params_stored(det: Detector) -> None:
    _check_params_stored(det)


def check_not_fitted(det: Detector) -> None:
    x, _ = planted_matrix(50, 3)
    try:
        det.score_matrix(x)
    except NotFittedError:
        return
    raise AssertionError("scoring before fit must raise NotFittedError")


def check_score_shape_and_frame_api(det: Detector) -> None:
    x, _ = planted_matrix()
    frame = pl.DataFrame(x, schema=[f"c{i}" for i in range(x.shape[1])])
    det.fit(frame)
    scores = det.score(frame)
    assert isinstance(scores, pl.Series)
    assert scores.len() == frame.height
    assert scores.dtype == pl.Float64
    assert scores.is_finite().all()
    assert det.reference_scores_.shape == (frame.height,)


def check_higher_is_more_anomalous(det: Detector) -> None:
    x, _y = planted_matrix()
    det.fit_matrix(x)
    test, labels = planted_matrix(seed=1)
    auc = roc_auc_score(labels, det.score_matrix(test))
    assert auc >= 0.9, f"planted anomalies must score higher (AUC {auc:.3f})"


def _assert_batch_independent(score: Callable[[np.ndarray], np.ndarray], test: np.ndarray) -> None:
    whole = score(test)
    perm = np.random.default_rng(3).permutation(test.shape[0])
    parts = np.concatenate([score(test[perm[i : i + 37]]) for i in range(0, test.shape[0], 37)])
    restored = np.empty_like(parts)
    restored[perm] = parts
    np.testing.assert_allclose(restored, whole, rtol=1e-12, atol=1e-12)
    single = np.array([score(test[i : i + 1])[0] for i in range(5)])
    np.testing.assert_allclose(single, whole[:5], rtol=1e-12, atol=1e-12)


def check_batch_independence(det: Detector) -> None:
    x, _ = planted_matrix()
    det.fit_matrix(x)
    _assert_batch_independent(det.score_matrix, planted_matrix(400, seed=2)[0])


def check_scoring_does_not_change_state(det: Detector) -> None:
    x, _ = planted_matrix()
    det.fit_matrix(x)
    before = {k: v.copy() for k, v in det.to_state().items()}
    test, _ = planted_matrix(300, seed=4)
    first = det.score_matrix(test * 3)
    det.score_matrix(test)
    np.testing.assert_array_equal(det.score_matrix(test * 3), first)
    for key, value in det.to_state().items():
        np.testing.assert_array_equal(value, before[key], err_msg=f"state '{key}' changed by scoring")


def check_state_round_trip(det: Detector) -> None:
    x, _ = planted_matrix()
    det.fit_matrix(x)
    test, _ = planted_matrix(300, seed=5)
    copy = type(det)(**det.get_params())
    copy.load_state({k: np.asarray(v) for k, v in det.to_state().items()}, pickled=det.pickled())
    np.testing.assert_array_equal(copy.score_matrix(test), det.score_matrix(test))
    np.testing.assert_array_equal(copy.reference_scores_, det.reference_scores_)


def yield_detector_checks(cls: type[Detector]) -> Iterator[tuple[str, Check]]:
    """Every check a detector class must pass."""
    return _named(
        check_params_stored,
        check_not_fitted,
        check_score_shape_and_frame_api,
        check_higher_is_more_anomalous,
        check_batch_independence,
        check_scoring_does_not_change_state,
        check_state_round_trip,
    )


# ------------------------------------------------------------------------------------------ alert policies
def _policy_frame(n: int) -> pl.DataFrame:
    start = np.datetime64("2026-01-01T00:00:00", "ms")
    # "new": a new_level feature column (1 on every 7th record), for policies that alert on one
    return pl.DataFrame(
        {"ts": start + np.arange(n).astype("timedelta64[ms]") * 37 * 60_000, "new": (np.arange(n) % 7 == 0) * 1.0}
    )


def check_policy_params_stored(policy: Any) -> None:
    _check_params_stored(policy)


def check_policy_not_fitted(policy: Any) -> None:
    try:
        policy.decide(np.ones(3), _policy_frame(3))
    except NotFittedError:
        return
    raise AssertionError("deciding before fit must raise NotFittedError")


def check_policy_decides_and_never_changes(policy: Any) -> None:
    reference = np.random.default_rng(0).uniform(size=5000)
    policy.fit(reference, _policy_frame(5000))
    described = policy.describe()
    scores = np.random.default_rng(1).uniform(size=2000) ** 0.5
    frame = _policy_frame(2000)
    first = policy.decide(scores, frame)
    assert first.dtype == bool
    assert first.shape == scores.shape
    assert 0 < first.sum() < scores.size
    state = policy.new_state()
    policy.decide(scores, frame, state)
    np.testing.assert_array_equal(policy.decide(scores, frame), first)  # without a state: the batch on its own
    assert policy.describe() == described, "deciding must not change the fitted policy"
    higher = policy.decide(np.ones(10), _policy_frame(10))
    assert higher.any(), "a score of 1 must be able to alert"


def check_policy_state_spans_batches(policy: Any) -> None:
    """One state over a file split in batches decides as one state over the whole file."""
    reference = np.random.default_rng(0).uniform(size=5000)
    policy.fit(reference, _policy_frame(5000))
    scores = np.random.default_rng(2).uniform(size=3000) ** 0.3
    frame = _policy_frame(3000)
    whole = policy.decide(scores, frame, policy.new_state())
    state = policy.new_state()
    parts = np.concatenate([policy.decide(scores[i : i + 250], frame[i : i + 250], state) for i in range(0, 3000, 250)])
    np.testing.assert_array_equal(parts, whole)


def yield_policy_checks(cls: type) -> Iterator[tuple[str, Check]]:
    return _named(
        check_policy_params_stored,
        check_policy_not_fitted,
        check_policy_decides_and_never_changes,
        check_policy_state_spans_batches,
    )


# ------------------------------------------------------------------------------------------ learners
def _supervision(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    x, y = planted_matrix(800, 4, n_anomalies=40, seed=seed)
    surprisal = np.abs(x).max(axis=1, keepdims=True)  # stands in for the unsupervised columns
    matrix = np.hstack([x, surprisal])
    monotone = np.array([0, 0, 0, 0, 1.0])
    return matrix, y, np.ones(x.shape[0]), monotone


def check_learner_params_stored(learner: Any) -> None:
    _check_params_stored(learner)


def check_learner_not_fitted(learner: Any) -> None:
    try:
        learner.predict_raw(np.zeros((2, 5)))
    except NotFittedError:
        return
    raise AssertionError("predicting before fit must raise NotFittedError")


def check_learner_learns_and_round_trips(learner: Any) -> None:
    x, y, weight, monotone = _supervision(0)
    learner.fit(x, y, weight, monotone)
    test, labels, _, _ = _supervision(1)
    raw = learner.predict_raw(test)
    assert raw.shape == (test.shape[0],)
    assert np.all((raw > 0) & (raw < 1))
    assert roc_auc_score(labels, raw) > 0.9
    name, blob = learner.artifact()
    assert isinstance(name, str)
    assert isinstance(blob, bytes)
    copy = type(learner)(**learner.get_params())
    copy.load_artifact(blob)
    np.testing.assert_allclose(copy.predict_raw(test), raw, rtol=1e-6, atol=1e-7)
    _assert_batch_independent(learner.predict_raw, test[:400])


def check_learner_is_deterministic(learner: Any) -> None:
    x, y, weight, monotone = _supervision(0)
    first = type(learner)(**learner.get_params()).fit(x, y, weight, monotone).predict_raw(x[:50])
    again = type(learner)(**learner.get_params()).fit(x, y, weight, monotone).predict_raw(x[:50])
    np.testing.assert_array_equal(first, again)


def _by_category(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Anomalies are the rows of one level of a 6-level column whose levels are equally common (so its rarity
    says nothing): [2 noise columns, the level code]; about 1% of codes are NaN (a value never seen at fit)."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 6, size=1200).astype(np.float64)
    y = (codes == 3).astype(np.int64)
    codes[rng.random(1200) < 0.01] = np.nan
    return np.column_stack([rng.normal(size=(1200, 2)), codes]), y


def check_learner_sees_category_identity(learner: Any) -> None:
    """With ``categories`` set, the trailing code columns are categories: the learner finds the one level that
    carries the anomalies, scores unseen codes, and round-trips."""
    params = {**learner.get_params(), "categories": [6]}
    x, y = _by_category(0)
    fitted = type(learner)(**params).fit(x, y, np.ones(y.size), np.zeros(3))
    test, labels = _by_category(1)
    raw = fitted.predict_raw(test)
    assert np.all(np.isfinite(raw))
    assert np.all((raw > 0) & (raw < 1))
    seen = ~np.isnan(test[:, -1])
    assert roc_auc_score(labels[seen], raw[seen]) > 0.95
    copy = type(learner)(**params)
    copy.load_artifact(fitted.artifact()[1])
    np.testing.assert_allclose(copy.predict_raw(test), raw, rtol=1e-6, atol=1e-7)


def yield_learner_checks(cls: type) -> Iterator[tuple[str, Check]]:
    return _named(
        check_learner_params_stored,
        check_learner_not_fitted,
        check_learner_learns_and_round_trips,
        check_learner_is_deterministic,
        check_learner_sees_category_identity,
    )


# ------------------------------------------------------------------------------------------ segmenter
def check_segmenter_contract(segmenter: Any) -> None:
    """On a fitted segmenter: known segments only, batch-independent, unchanged by assigning, state round trip."""
    x, _ = planted_matrix(600, 5, seed=7)
    segments, confidence = segmenter.assign(x)
    assert segments.dtype == np.int32
    assert segments.shape == (600,)
    assert set(np.unique(segments).tolist()) <= {-1, *segmenter.segments_.tolist()}
    assert np.all((confidence >= 0) & (confidence <= 1))
    before = {k: np.copy(v) for k, v in segmenter.to_state().items()}
    _assert_batch_independent(lambda rows: segmenter.assign(rows)[1], x)
    for key, value in segmenter.to_state().items():
        np.testing.assert_array_equal(value, before[key], err_msg=f"state '{key}' changed by assigning")
    copy = type(segmenter)(**segmenter.get_params())
    copy.load_state({k: np.asarray(v) for k, v in segmenter.to_state().items()})
    np.testing.assert_array_equal(copy.assign(x)[0], segments)


def yield_segmenter_checks(cls: type) -> Iterator[tuple[str, Check]]:
    return _named(check_segmenter_contract)


# ------------------------------------------------------------------------------------------ sources and sinks
def check_source_yields_every_row_once_in_order(case: tuple[Source, pl.DataFrame, int]) -> None:
    """``case``: (a source over ``expected``, ``expected``, the batch size it was made with)."""
    source, expected, batch_size = case
    source.open()
    try:
        batches = list(source.iter_batches())
        for batch in batches:
            assert 0 < batch.frame.height <= batch_size
            source.commit(batch)
        assert [b.start for b in batches] == list(np.cumsum([0] + [b.frame.height for b in batches[:-1]]))
        assert pl.concat([b.frame for b in batches]).equals(expected)
    finally:
        source.close()


def yield_source_checks() -> Iterator[tuple[str, Check]]:
    return _named(check_source_yields_every_row_once_in_order)


def check_sink_writes_everything_or_nothing(case: tuple[Callable[[], Sink], Callable[[], pl.DataFrame | None]]) -> None:
    """``case``: (a factory of fresh sinks to one target, a function reading the target back; None if absent)."""
    make, read_back = case
    frame = pl.DataFrame({"a": [1.0, 2.0, 3.0], "b": ["x", "y", "z"]})
    aborted = make()
    aborted.write(frame)
    aborted.abort()
    assert read_back() is None, "an aborted sink must leave nothing behind"
    sink = make()
    sink.write(frame)
    sink.write(frame.slice(0, 0))
    sink.write(frame.reverse())
    sink.flush()
    sink.close()
    got = read_back()
    assert got is not None
    assert got.select("a", "b").equals(pl.concat([frame, frame.reverse()]))


def yield_sink_checks() -> Iterator[tuple[str, Check]]:
    return _named(check_sink_writes_everything_or_nothing)


def check_entity_batches_through_checkpoints(feats: EntityFeatures, frame: pl.DataFrame, cuts: list[int]) -> None:
    """``frame`` transformed in one batch from the end of ``feats``' history equals it cut at ``cuts`` (row
    indices) into batches, with the bundle's entity files and the state written and read back between batches
    (a restart from a checkpoint), to the bit."""
    from polars.testing import assert_frame_equal

    whole = feats.transform(frame, feats.new_state())
    state, parts = feats.new_state(), []
    for a, b in itertools.pairwise([0, *sorted(c for c in set(cuts) if 0 < c < frame.height), frame.height]):
        parts.append(feats.transform(frame[a:b], state))
        feats = EntityFeatures.from_state(feats.specs, list(feats.to_state().values()))
        restored = feats.new_state()
        restored.load_bytes(0, state.to_bytes(0))
        state = restored
    assert_frame_equal(whole, pl.concat(parts), check_exact=True)
