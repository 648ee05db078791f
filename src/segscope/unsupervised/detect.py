"""Anomaly detectors behind one contract: ``fit(frame) -> self``, ``score(frame) -> Series``, higher = more
anomalous.

Every detector scores a record from the fitted state alone. PyOD's ECOD and COPOD ``decision_function``
recompute their ECDFs on training *plus test* rows, so a record's score there depends on its batch; the
ECOD/COPOD here keep the fit-time ECDFs instead (same formulas). The isolation forest is fitted with PyOD's
``IForest`` (scikit-learn's trees) and compiled to flat arrays, which scores ~an order of magnitude faster
than walking the scikit-learn objects and stores as plain NumPy arrays instead of a pickle.

Each detector also exposes ``fit_matrix`` / ``score_matrix`` on the prepared float64 matrix (what the
pipeline uses) and ``reference_scores_``: the scores of its fit rows, computed the way new rows are scored
(a neighbour detector leaves the row itself out), which calibration uses.
"""

from __future__ import annotations

import io
import pickle
import warnings
from typing import Any, ClassVar, Self

import numpy as np

from segscope._arrays import check_indices, take
from segscope._params import Constraint, Interval, IsInstance, check_params
from segscope.exceptions import BundleError, ConfigError
from segscope.unsupervised import _ecdf, _kernels, _trees
from segscope.unsupervised._detector import Detector, reference_sample
from segscope.unsupervised.distance import CBLOFDetector, KNNDetector

__all__ = [
    "DETECTORS",
    "CBLOFDetector",
    "COPODDetector",
    "Detector",
    "ECODDetector",
    "HBOSDetector",
    "IForestDetector",
    "KNNDetector",
    "PyODDetector",
    "make_detector",
]


class _ECDFDetector(Detector):
    """Shared state for ECOD/COPOD: the fit-time column ECDFs and skewness signs."""

    _constraints: ClassVar[dict[str, Constraint]] = {"max_reference": Interval(int, 100, 10_000_000)}

    def __init__(self, *, max_reference: int = 20_000) -> None:
        # 20k reference rows: tail resolution 5e-5 (values beyond extend the tail, see _ecdf._lookup) and
        # ECDF lookups that stay in cache (30% faster scoring than 50k)
        self.max_reference = max_reference

    def _fit(self, x: np.ndarray) -> None:
        from scipy.stats import skew

        ref = reference_sample(x, self.max_reference, seed=0)
        self.ecdf_ = _ecdf.build_ecdf(ref)
        with warnings.catch_warnings():  # near-constant columns: scipy warns, and their skew sign is moot
            warnings.simplefilter("ignore", RuntimeWarning)
            sk = np.nan_to_num(skew(x, axis=0), nan=0.0)
        self.skew_sign_ = np.sign(sk).astype(np.float64)
        self.reference_scores_ = self._score(x)

    def _ecdf_score(self, x: np.ndarray, copod: bool) -> np.ndarray:
        return _ecdf.ecdf_outlier_scores(x, self.ecdf_, self.skew_sign_, copod)

    def to_state(self) -> dict[str, np.ndarray]:
        return {
            "sorted_ref": self.ecdf_.sorted_ref,
            "skew_sign": self.skew_sign_,
            "reference_scores": self.reference_scores_,
        }

    def load_state(self, arrays: dict[str, np.ndarray], *, pickled: bytes | None = None) -> None:
        owner = f"detector {self.name}"
        sorted_ref = take(arrays, "sorted_ref", owner, shape=(None, None), finite=True, min_size=1)
        d = sorted_ref.shape[0]
        self.skew_sign_ = take(arrays, "skew_sign", owner, shape=(d,), finite=True)
        self.reference_scores_ = take(arrays, "reference_scores", owner, shape=(None,), finite=True)
        self.ecdf_ = _ecdf.build_ecdf(sorted_ref.T)
        self.n_features_ = d


class ECODDetector(_ECDFDetector):
    """Empirical-CDF outlier detection (PyOD's ECOD formulas, fit-time ECDFs)."""

    name = "ecod"

    def _score(self, x: np.ndarray) -> np.ndarray:
        return self._ecdf_score(x, copod=False)


class COPODDetector(_ECDFDetector):
    """Copula-based outlier detection (PyOD's COPOD formulas, fit-time ECDFs)."""

    name = "copod"

    def _score(self, x: np.ndarray) -> np.ndarray:
        return self._ecdf_score(x, copod=True)


class HBOSDetector(Detector):
    """Histogram-based outlier score with static bins (PyOD's HBOS defaults: 10 bins, alpha 0.1, tol 0.5)."""

    name = "hbos"
    _constraints: ClassVar[dict[str, Constraint]] = {
        "n_bins": Interval(int, 2, 10_000),
        "alpha": Interval(float, 0.0, 1.0, closed="right"),
        "tol": Interval(float, 0.0, 1e6),
    }

    def __init__(self, *, n_bins: int = 10, alpha: float = 0.1, tol: float = 0.5) -> None:
        self.n_bins = n_bins
        self.alpha = alpha
        self.tol = tol

    def _fit(self, x: np.ndarray) -> None:
        n_bins = self.n_bins
        lo = x.min(axis=0)
        hi = x.max(axis=0)
        width = np.where(hi > lo, (hi - lo) / n_bins, 1.0)
        heights = np.zeros((x.shape[1], n_bins))
        for j in range(x.shape[1]):
            counts, _ = np.histogram(x[:, j], bins=n_bins, range=(lo[j], lo[j] + width[j] * n_bins))
            heights[j] = counts / max(counts.max(), 1)
        self.lo_, self.width_, self.heights_ = lo, width, heights
        self.reference_scores_ = self._score(x)

    def _score(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(
            _kernels.hbos_scores(x, self.lo_, self.width_, self.heights_, float(self.alpha), float(self.tol))
        )

    def to_state(self) -> dict[str, np.ndarray]:
        return {
            "lo": self.lo_,
            "width": self.width_,
            "heights": self.heights_,
            "reference_scores": self.reference_scores_,
        }

    def load_state(self, arrays: dict[str, np.ndarray], *, pickled: bytes | None = None) -> None:
        owner = "detector hbos"
        self.heights_ = take(arrays, "heights", owner, shape=(None, None), finite=True, min_size=1)
        d = self.heights_.shape[0]
        self.lo_ = take(arrays, "lo", owner, shape=(d,), finite=True)
        self.width_ = take(arrays, "width", owner, shape=(d,), finite=True)
        self.reference_scores_ = take(arrays, "reference_scores", owner, shape=(None,), finite=True)
        self.n_features_ = d


def _average_path_length(n: np.ndarray) -> np.ndarray:
    """c(n) of Liu et al. (2008), as scikit-learn computes it."""
    n = np.asarray(n, dtype=np.float64)
    out = np.zeros_like(n)
    out[n == 2] = 1.0
    big = n > 2
    out[big] = 2.0 * (np.log(n[big] - 1.0) + np.euler_gamma) - 2.0 * (n[big] - 1.0) / n[big]
    return out


class IForestDetector(Detector):
    """Isolation forest fitted by PyOD's ``IForest``, scored by a compiled copy of its trees."""

    name = "iforest"
    _constraints: ClassVar[dict[str, Constraint]] = {
        "n_estimators": Interval(int, 1, 10_000),
        "max_samples": Interval(int, 2, 10_000_000),
        "random_state": Interval(int, 0, 2**32 - 1),
    }

    def __init__(self, *, n_estimators: int = 100, max_samples: int = 256, random_state: int = 0) -> None:
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.random_state = random_state

    @classmethod
    def _test_params(cls) -> dict[str, Any]:
        return {"n_estimators": 20}

    def _fit(self, x: np.ndarray) -> None:
        from pyod.models.iforest import IForest

        max_samples = min(self.max_samples, x.shape[0])
        model = IForest(
            n_estimators=self.n_estimators,
            max_samples=max_samples,
            random_state=self.random_state,
            n_jobs=1,
        ).fit(x)
        forest = model.detector_
        depth = max(1, max(est.tree_.max_depth for est in forest.estimators_))
        n_internal = 2**depth - 1
        n_trees = len(forest.estimators_)
        feature = np.zeros((n_trees, n_internal), dtype=np.uint32)
        threshold = np.full((n_trees, n_internal), np.inf, dtype=np.float32)
        leaf_value = np.zeros((n_trees, n_internal + 1), dtype=np.float64)
        for t, (est, est_features) in enumerate(zip(forest.estimators_, forest.estimators_features_, strict=True)):
            tree = est.tree_
            values = forest._decision_path_lengths[t] + forest._average_path_length_per_tree[t] - 1.0
            columns = np.asarray(est_features)
            thr32 = _trees.float32_thresholds(tree.threshold)
            stack = [(0, 0, 0)]  # (scikit-learn node, heap node, level)
            while stack:
                node, heap, level = stack.pop()
                if level == depth:
                    leaf_value[t, heap - n_internal] = values[node]
                    continue
                left, right = tree.children_left[node], tree.children_right[node]
                if left < 0:  # a leaf above full depth: both sides continue to the same leaf value
                    stack.append((node, 2 * heap + 1, level + 1))
                    stack.append((node, 2 * heap + 2, level + 1))
                    continue
                feature[t, heap] = columns[tree.feature[node]]
                threshold[t, heap] = thr32[node]
                stack.append((left, 2 * heap + 1, level + 1))
                stack.append((right, 2 * heap + 2, level + 1))
        self.feature_, self.threshold_, self.leaf_value_ = feature, threshold, leaf_value
        self.depth_ = depth
        self.denominator_ = np.array([n_trees * _average_path_length(np.array([forest._max_samples]))[0]])
        self.reference_scores_ = self._score(x)

    def _score(self, x: np.ndarray) -> np.ndarray:
        depths = _kernels.forest_depths(
            np.ascontiguousarray(x, dtype=np.float32), self.feature_, self.threshold_, self.leaf_value_, self.depth_
        )
        denominator = float(self.denominator_[0])
        if denominator == 0:
            return np.ones(x.shape[0])
        # scikit-learn's score_samples is -2**(-depth/c); PyOD's decision_function is its negation + offset.
        return np.asarray(2.0 ** (-np.asarray(depths) / denominator))

    def to_state(self) -> dict[str, np.ndarray]:
        return {
            "feature": self.feature_.astype(np.int32),  # the bundle's format; the kernel walks unsigned
            "threshold": self.threshold_,
            "leaf_value": self.leaf_value_,
            "denominator": self.denominator_,
            "reference_scores": self.reference_scores_,
            "n_features": np.array([self.n_features_]),
        }

    def load_state(self, arrays: dict[str, np.ndarray], *, pickled: bytes | None = None) -> None:
        owner = "detector iforest"
        # a NaN path length or a denominator of 0 or below would score every record NaN or alert on all of them
        self.leaf_value_ = take(arrays, "leaf_value", owner, shape=(None, None), finite=True, min_size=2)
        if (self.leaf_value_ < 0).any():
            raise BundleError(f"{owner}: 'leaf_value' holds negative path lengths; the bundle is damaged: refit it")
        trees, leaves = self.leaf_value_.shape
        if leaves < 2 or leaves & (leaves - 1) or leaves > 2**30:
            raise BundleError(f"{owner}: 'leaf_value' has {leaves} leaves per tree, not a power of two; refit it")
        self.depth_ = leaves.bit_length() - 1
        self.n_features_ = int(take(arrays, "n_features", owner, shape=(1,), kind="i")[0])
        feature = take(arrays, "feature", owner, shape=(trees, leaves - 1), kind="i")
        check_indices(feature, 0, self.n_features_, owner, "feature numbers")
        self.feature_ = feature.astype(np.uint32)
        self.threshold_ = take(arrays, "threshold", owner, shape=(trees, leaves - 1)).astype(np.float32)  # inf: a pad
        self.denominator_ = take(arrays, "denominator", owner, shape=(1,), finite=True)
        if self.denominator_[0] <= 0:
            raise BundleError(
                f"{owner}: 'denominator' is {self.denominator_[0]}, not above 0; the bundle is damaged: refit it"
            )
        self.reference_scores_ = take(arrays, "reference_scores", owner, shape=(None,), finite=True)


class PyODDetector(Detector):
    """Any PyOD detector by class name, e.g. ``{name = "pyod", params = {model = "LOF", n_neighbors = 20}}``.

    Refused at fit time when its scores depend on the batch (checked on the data). Persisted with pickle,
    so a bundle holding one loads only with ``trusted=True``.
    """

    name = "pyod"
    needs_pickle = True
    _constraints: ClassVar[dict[str, Constraint]] = {"model": IsInstance((str,))}

    def __init__(self, *, model: str | None = None, **params: Any) -> None:
        self.model = model
        self.params = params  # handed to the PyOD class, which checks them

    def get_params(self) -> dict[str, Any]:
        return {"model": self.model, **self.params}

    def check_params(self) -> None:
        check_params(type(self).__name__, {"model": self.model}, self._constraints)

    def fit_matrix(self, x: np.ndarray) -> Self:
        import importlib

        self.check_params()
        params = dict(self.params)
        model_name = str(self.model)
        import pkgutil

        package = importlib.import_module("pyod.models")
        # PyOD keeps each class in a module of its lower-case name (LOF in pyod.models.lof); search as a fallback,
        # skipping modules whose own optional dependencies (torch, ...) are missing
        names = [model_name.lower()] + [m.name for m in pkgutil.iter_modules(package.__path__)]
        cls = None
        for module_name in names:
            try:
                module = importlib.import_module(f"pyod.models.{module_name}")
            except ImportError:
                continue
            if hasattr(module, model_name):
                cls = getattr(module, model_name)
                break
        if cls is None:
            raise ConfigError(f"PyOD has no detector class '{model_name}'; see pyod.models for the names")
        import inspect

        accepted = set(inspect.signature(cls).parameters)
        unknown = sorted(set(params) - accepted)
        if unknown and not any(p.kind is p.VAR_KEYWORD for p in inspect.signature(cls).parameters.values()):
            raise ConfigError(
                f"PyOD's {model_name} has no parameter(s) {unknown}; it takes {sorted(accepted)}: fix the "
                "detector's params"
            )
        self.n_features_ = x.shape[1]
        try:
            self.model_ = cls(**params).fit(x)
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"PyOD's {model_name} refused its parameters or this data ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:160] if str(exc) else ''}); fix the detector's params"
            ) from None
        probe = x[: min(64, x.shape[0])]
        alone = self.model_.decision_function(probe)
        mixed = self.model_.decision_function(np.concatenate([probe, x[::-1][:64]]))[: probe.shape[0]]
        if not np.allclose(alone, mixed, rtol=1e-9, atol=1e-12):
            raise ConfigError(
                f"PyOD's {model_name} gives a record different scores in different batches; segscope "
                "only uses batch-independent detectors: choose another model"
            )
        self.reference_scores_ = np.asarray(self.model_.decision_scores_, dtype=np.float64)
        return self

    def _score(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.model_.decision_function(x), dtype=np.float64)

    def to_state(self) -> dict[str, np.ndarray]:
        return {"reference_scores": self.reference_scores_, "n_features": np.array([self.n_features_])}

    def pickled(self) -> bytes:
        buffer = io.BytesIO()
        pickle.dump(self.model_, buffer)
        return buffer.getvalue()

    def load_state(self, arrays: dict[str, np.ndarray], *, pickled: bytes | None = None) -> None:
        # the pickle only ever comes from the bundle's .pkl file, which BundleReader hands out to a trusted load;
        # nothing in ``arrays`` is ever unpickled
        if pickled is None:
            raise BundleError(
                "the PyOD detector is stored as a pickle, which runs code when loaded; load the bundle with "
                "--trust-bundle (trusted=True) only if you trust its origin"
            )
        self.model_ = pickle.loads(pickled)
        self.reference_scores_ = take(arrays, "reference_scores", "detector pyod", shape=(None,), finite=True)
        self.n_features_ = int(take(arrays, "n_features", "detector pyod", shape=(1,), kind="i")[0])


DETECTORS: dict[str, type[Detector]] = {
    cls.name: cls
    for cls in (
        IForestDetector,
        ECODDetector,
        COPODDetector,
        HBOSDetector,
        KNNDetector,
        CBLOFDetector,
        PyODDetector,
    )
}


def make_detector(name: str, params: dict[str, Any] | None = None) -> Detector:
    """A detector by registered name."""
    try:
        cls = DETECTORS[name]
    except KeyError:
        raise ConfigError(f"unknown detector '{name}'; choose one of {sorted(DETECTORS)}") from None
    params = params or {}
    if cls is not PyODDetector:  # refuse unknown keys before they reach __init__
        check_params(cls.__name__, {k: v for k, v in params.items() if k not in cls._constraints}, cls._constraints)
    return cls(**params)
