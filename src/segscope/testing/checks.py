"""Conformance checks that every detector must pass (run over the registry by tests/test_common.py).

``yield_detector_checks(cls)`` yields ``(name, check)`` pairs; each check takes a fresh detector built with the
class's cheap ``_test_params()`` and raises ``AssertionError`` on failure.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import polars as pl
from sklearn.metrics import roc_auc_score

from segscope.exceptions import NotFittedError
from segscope.unsupervised.detect import Detector

__all__ = ["planted_matrix", "yield_detector_checks"]

Check = Callable[[Detector], None]


def planted_matrix(n: int = 1500, d: int = 5, *, n_anomalies: int = 30, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian inliers with a few planted far-off rows; returns (matrix, labels)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = np.zeros(n, dtype=np.int64)
    idx = rng.choice(n, size=n_anomalies, replace=False)
    x[idx] += rng.choice([-1.0, 1.0], size=(n_anomalies, d)) * rng.uniform(4, 7, size=(n_anomalies, d))
    y[idx] = 1
    return x, y


def check_params_stored(det: Detector) -> None:
    params = det.get_params()
    assert not [k for k in vars(det) if k.endswith("_")], "__init__ must only store parameters"
    clone = type(det)(**params)
    assert clone.get_params() == params


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


def check_batch_independence(det: Detector) -> None:
    x, _ = planted_matrix()
    det.fit_matrix(x)
    test, _ = planted_matrix(400, seed=2)
    whole = det.score_matrix(test)
    perm = np.random.default_rng(3).permutation(test.shape[0])
    parts = np.concatenate([det.score_matrix(test[perm[i : i + 37]]) for i in range(0, test.shape[0], 37)])
    restored = np.empty_like(parts)
    restored[perm] = parts
    np.testing.assert_allclose(restored, whole, rtol=1e-12, atol=1e-12)
    single = np.array([det.score_matrix(test[i : i + 1])[0] for i in range(5)])
    np.testing.assert_allclose(single, whole[:5], rtol=1e-12, atol=1e-12)


def check_scoring_does_not_change_state(det: Detector) -> None:
    x, _ = planted_matrix()
    det.fit_matrix(x)
    before = {k: v.copy() for k, v in det.state().items()}
    test, _ = planted_matrix(300, seed=4)
    first = det.score_matrix(test * 3)
    det.score_matrix(test)
    np.testing.assert_array_equal(det.score_matrix(test * 3), first)
    for key, value in det.state().items():
        np.testing.assert_array_equal(value, before[key], err_msg=f"state '{key}' changed by scoring")


def check_state_round_trip(det: Detector) -> None:
    x, _ = planted_matrix()
    det.fit_matrix(x)
    test, _ = planted_matrix(300, seed=5)
    copy = type(det)(**det.get_params())
    copy.load_state({k: np.asarray(v) for k, v in det.state().items()}, pickled=det.pickled())
    np.testing.assert_array_equal(copy.score_matrix(test), det.score_matrix(test))
    np.testing.assert_array_equal(copy.reference_scores_, det.reference_scores_)


def yield_detector_checks(cls: type[Detector]) -> Iterator[tuple[str, Check]]:
    """Every check a detector class must pass."""
    for check in (
        check_params_stored,
        check_not_fitted,
        check_score_shape_and_frame_api,
        check_higher_is_more_anomalous,
        check_batch_independence,
        check_scoring_does_not_change_state,
        check_state_round_trip,
    ):
        yield check.__name__, check
