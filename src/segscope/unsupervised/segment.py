"""Segments: UMAP + HDBSCAN on a sample of the prepared history, served by a distilled forest.

UMAP + HDBSCAN finds good segments but serves new records badly: ``UMAP.transform`` is slow and depends on
the batch, and ``hdbscan.approximate_predict`` can return labels the model never had. So the fit clusters a
sample, draws the boundaries between the segments HDBSCAN found in the prepared features (a linear
discriminant taught by the clustered rows labels every sample row, HDBSCAN's noise included), then *distils*
the segmentation into a random forest on the prepared features. Assignment is the forest's vote, compiled in
Numba: per record, deterministic, fast, and it can only return segments the model has. Every record gets its
nearest segment and the vote's share as its confidence (-1 only when the fit found no segment, or below an
opt-in ``min_confidence``). The agreement of the distilled assignment with the fit-time segmentation is
measured on the sample and on held-out rows and stored in the manifest.

Measured (``benchmarks/segments_quality.py``, UMAP seeds 0-2, ARI against the true groups): HDBSCAN's
``min_cluster_size`` at 2% of the sample with ``min_samples`` equal to it, on the detection features
(robust-scaled: standardising or a quantile-normal view lets rare binary flags split nslkdd into small
segments): nslkdd 0.19 -> 0.30 (KMeans given the true k, standardised: 0.39), ImageSegments 0.33 -> 0.48. The
boundaries drawn in the features instead of the embedding (noise given to its nearest clustered neighbours
there, ``boundaries="embedding"``): ImageSegments 0.48 -> 0.50 (KMeans 0.48), handwritten digits 0.70 -> 0.73
(0.47), wine 0.77 -> 0.84 (0.90), nslkdd 0.30 either way; the served assignment agrees with the fit-time
segmentation on 98% of held-out rows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Self

import numpy as np

from segscope._arrays import check_indices, take
from segscope._deps import require
from segscope._params import Constraint, Interval, Options, StoresParams
from segscope._typing import SegmentBoundaries
from segscope.exceptions import BundleError, NotFittedError
from segscope.unsupervised import _kernels, _trees

__all__ = ["Segmenter"]


class Segmenter(StoresParams):
    """``fit(x)`` on the prepared matrix; ``assign(x)`` -> (segment ids, confidence)."""

    _constraints: ClassVar[dict[str, Constraint]] = {
        "sample_size": Interval(int, 100, None),
        "n_neighbors": Interval(int, 2, 1000),
        "n_components": Interval(int, 2, 100),
        "min_cluster_size": Interval(int, 2, None, nullable=True),
        "min_samples": Interval(int, 1, None, nullable=True),
        "n_trees": Interval(int, 1, 1000),
        "max_depth": Interval(int, 1, 64),
        "min_confidence": Interval(float, 0.0, 1.0),
        "boundaries": Options(("linear", "embedding")),
        "seed": Interval(int, 0, 2**32 - 1),
    }

    def __init__(
        self,
        *,
        sample_size: int = 20_000,
        n_neighbors: int = 30,
        n_components: int = 5,
        min_cluster_size: int | None = None,
        min_samples: int | None = None,
        n_trees: int = 30,
        max_depth: int = 14,
        min_confidence: float = 0.0,
        boundaries: SegmentBoundaries = "linear",
        seed: int = 0,
    ) -> None:
        self.sample_size = sample_size
        self.n_neighbors = n_neighbors
        self.n_components = n_components
        self.min_cluster_size = min_cluster_size
        self.min_samples = min_samples
        self.n_trees = n_trees
        self.max_depth = max_depth
        self.min_confidence = min_confidence
        self.boundaries = boundaries
        self.seed = seed

    def fit(self, x: np.ndarray, previous_segments: np.ndarray | None = None) -> Self:
        """Segment ``x``. With ``previous_segments`` (the last version's segment of each row of ``x``), new
        segments take the ids of the old ones they overlap most (Hungarian matching on member overlap), so ids
        keep their meaning; births, deaths, merges and splits are recorded in ``lineage_``."""
        self.check_params()
        if previous_segments is not None and previous_segments.shape[0] != x.shape[0]:
            raise ValueError(f"previous_segments has {previous_segments.shape[0]} rows; x has {x.shape[0]}")
        umap = require("umap", extra="segments", feature="segmentation (UMAP)")
        hdbscan = require("hdbscan", extra="segments", feature="segmentation (HDBSCAN)")
        from sklearn.ensemble import RandomForestClassifier

        rng = np.random.default_rng(self.seed)
        n = x.shape[0]
        order = rng.permutation(n)
        take = min(self.sample_size, n)
        sample_rows = np.sort(order[:take])
        held_rows = np.sort(order[take : take + min(5000, n - take)])
        sample = x[sample_rows]
        reducer = umap.UMAP(
            n_neighbors=self.n_neighbors,
            n_components=min(self.n_components, max(2, x.shape[1] - 1)),
            min_dist=0.0,
            random_state=self.seed,
            n_jobs=1,
        ).fit(sample)
        embedding = reducer.embedding_
        mcs = self.min_cluster_size or max(15, take // 50)
        clusterer = hdbscan.HDBSCAN(
            min_cluster_size=mcs,
            min_samples=self.min_samples or mcs,
            prediction_data=self.boundaries == "embedding",  # approximate_predict, for the held-out reference
        )
        found = clusterer.fit_predict(embedding)
        self.noise_share_ = float((found < 0).mean())
        linear = _linear_labeller(sample, found) if self.boundaries == "linear" else None
        found_labels = linear(sample) if linear is not None else _to_nearest_segment(embedding, found, embedding, found)
        labels = found_labels
        self.lineage_: dict[str, Any] = {}
        if previous_segments is not None:
            labels, self.lineage_ = _match_to_previous(found_labels, previous_segments[sample_rows])
        self.segments_ = np.unique(labels[labels >= 0]).astype(np.int32)
        forest = RandomForestClassifier(
            n_estimators=self.n_trees,
            max_depth=self.max_depth,
            min_samples_leaf=2,
            random_state=self.seed,
            n_jobs=2,
        ).fit(sample.astype(np.float32), labels)
        self._compile(forest)
        assigned, _ = self.assign(sample)
        self.sample_labels_ = labels.astype(np.int32)
        self.agreement_fit_ = float((assigned == labels).mean())
        self.agreement_held_out_ = None
        if held_rows.size:  # held-out rows: the fit-time segmentation applied to rows it did not see
            held = x[held_rows]
            if linear is not None:
                reference = linear(held)
            else:  # HDBSCAN's own out-of-sample labels through UMAP.transform: slow, so at most 5,000 rows, once
                held_embedding = reducer.transform(held)
                reference = _to_nearest_segment(
                    held_embedding, hdbscan.approximate_predict(clusterer, held_embedding)[0], embedding, found
                )
            # in the ids the segments were given (matched to the previous version's)
            final_id = dict(zip(found_labels.tolist(), labels.tolist(), strict=True))
            reference = np.array([final_id.get(v, -1) for v in reference.tolist()])
            self.agreement_held_out_ = float((self.assign(held)[0] == reference).mean())
        self.sample_rows_ = sample_rows
        self.embedding_ = embedding[:, :2].astype(np.float32)
        return self

    def _compile(self, forest: Any) -> None:
        classes = forest.classes_.astype(np.int32)
        roots, feats, thr, lefts, rights, values = [], [], [], [], [], []
        offset = 0
        for est in forest.estimators_:
            t = est.tree_
            leaf = t.children_left < 0
            roots.append(offset)
            feats.append(np.where(leaf, 0, t.feature))
            thr.append(_trees.float32_thresholds(t.threshold))
            lefts.append(np.where(leaf, -1, t.children_left + offset))
            rights.append(np.where(leaf, -1, t.children_right + offset))
            dist = t.value[:, 0, :]
            values.append(dist / np.maximum(dist.sum(axis=1, keepdims=True), 1e-12))
            offset += t.node_count
        self.classes_ = classes
        self.roots_ = np.asarray(roots, dtype=np.int64)
        self.feature_ = np.concatenate(feats).astype(np.int64)
        self.threshold_ = np.concatenate(thr).astype(np.float32)
        self.left_ = np.concatenate(lefts).astype(np.int64)
        self.right_ = np.concatenate(rights).astype(np.int64)
        self.value_ = np.concatenate(values).astype(np.float64)

    def assign(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(nearest segment per row, -1 when the fit found none or the confidence is below ``min_confidence``;
        confidence in [0, 1]: the share of the forest's vote for that segment)."""
        if not hasattr(self, "classes_"):
            raise NotFittedError("Segmenter is not fitted; call fit(matrix) first")
        if x.shape[0] == 0:
            return np.empty(0, dtype=np.int32), np.empty(0)
        proba = _kernels.forest_class_proba(
            np.ascontiguousarray(x, dtype=np.float32),
            self.roots_,
            self.feature_,
            self.threshold_,
            self.left_,
            self.right_,
            self.value_,
        )
        best = proba.argmax(axis=1)
        confidence = proba[np.arange(x.shape[0]), best]
        segment = self.classes_[best]
        segment = np.where(confidence >= self.min_confidence, segment, -1).astype(np.int32)
        return segment, np.asarray(confidence)

    def to_state(self) -> dict[str, np.ndarray]:
        return {
            "classes": self.classes_,
            "roots": self.roots_,
            "feature": self.feature_,
            "threshold": self.threshold_,
            "left": self.left_,
            "right": self.right_,
            "value": self.value_,
            "segments": self.segments_,
            "sample_labels": self.sample_labels_,
            "sample_rows": self.sample_rows_,
            "embedding": self.embedding_,
            "agreement": np.array(
                [self.agreement_fit_, np.nan if self.agreement_held_out_ is None else self.agreement_held_out_]
            ),
            "noise_share": np.array([self.noise_share_]),
        }

    def load_state(self, arrays: dict[str, np.ndarray], *, n_features: int | None = None) -> None:
        """Restore :meth:`state`; the forest is checked to be a forest over ``n_features`` inputs (when given)
        before the compiled walk ever reads it: children after their parent, indices inside the arrays."""
        owner = "segmenter"
        for key in ("segments", "sample_labels", "sample_rows", "embedding"):
            setattr(self, f"{key}_", arrays[key])
        value = take(arrays, "value", owner, shape=(None, None), min_size=1)
        nodes, classes = value.shape
        self.classes_ = take(arrays, "classes", owner, shape=(classes,), kind="i").astype(arrays["classes"].dtype)
        roots = take(arrays, "roots", owner, shape=(None,), kind="i", min_size=1)
        feature = take(arrays, "feature", owner, shape=(nodes,), kind="i")
        left = take(arrays, "left", owner, shape=(nodes,), kind="i")
        right = take(arrays, "right", owner, shape=(nodes,), kind="i")
        check_indices(roots, 0, nodes, owner, "tree roots")
        inner = left >= 0
        check_indices(left[inner], 0, nodes, owner, "left children")
        check_indices(right[inner], 0, nodes, owner, "right children")
        if not (left[inner] > np.flatnonzero(inner)).all() or not (right[inner] > np.flatnonzero(inner)).all():
            raise BundleError(f"{owner}: a node's child comes before it (a loop); the bundle is damaged: refit it")
        check_indices(feature[inner], 0, n_features if n_features is not None else 2**31, owner, "feature numbers")
        self.value_, self.roots_, self.feature_, self.left_, self.right_ = value, roots, feature, left, right
        self.threshold_ = take(arrays, "threshold", owner, shape=(nodes,)).astype(np.float32)
        self.agreement_fit_ = float(arrays["agreement"][0])
        held = float(arrays["agreement"][1])
        self.agreement_held_out_ = None if np.isnan(held) else held
        # bundles from before noise went to the nearest segment: what their forest learnt as -1
        noise = arrays.get("noise_share")
        self.noise_share_ = float(noise[0]) if noise is not None else float((self.sample_labels_ < 0).mean())
        self.lineage_ = {}


def _linear_labeller(sample: np.ndarray, found: np.ndarray) -> Callable[[np.ndarray], np.ndarray] | None:
    """The segments' boundaries in the prepared features: a linear discriminant taught by the rows HDBSCAN
    clustered, which then labels every row (noise included). UMAP + HDBSCAN find the groups; where two meet,
    the features draw the line better than the embedding does (see the module's figures). None when nothing
    was clustered."""
    clustered = found >= 0
    ids = np.unique(found[clustered])
    if ids.size == 0:
        return None
    if ids.size == 1:
        return lambda rows: np.full(rows.shape[0], ids[0], dtype=np.int64)
    import warnings

    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    with warnings.catch_warnings():  # one-hot and constant columns are collinear: the SVD solver copes
        warnings.simplefilter("ignore", UserWarning)
        lda = LinearDiscriminantAnalysis().fit(sample[clustered], found[clustered])
    return lambda rows: np.asarray(lda.predict(rows), dtype=np.int64)


def _to_nearest_segment(
    points: np.ndarray, labels: np.ndarray, clustered: np.ndarray, clustered_labels: np.ndarray, k: int = 5
) -> np.ndarray:
    """``labels`` with each noise point (-1) given the majority segment of its ``k`` nearest clustered points
    (``clustered`` with ``clustered_labels`` >= 0) in the embedding; unchanged when nothing was clustered."""
    keep = clustered_labels >= 0
    noise = labels < 0
    if not keep.any() or not noise.any():
        return labels.astype(np.int64)
    from sklearn.neighbors import KNeighborsClassifier

    vote = KNeighborsClassifier(n_neighbors=min(k, int(keep.sum()))).fit(clustered[keep], clustered_labels[keep])
    out = labels.astype(np.int64).copy()
    out[noise] = vote.predict(points[noise])
    return out


def _match_to_previous(new: np.ndarray, old: np.ndarray, min_jaccard: float = 0.3) -> tuple[np.ndarray, dict[str, Any]]:
    """Relabel ``new`` clusters with the ids of the ``old`` segments (the previous model's assignment of the same
    rows) they overlap most; unmatched new clusters get fresh ids. Returns (labels, lineage)."""
    from scipy.optimize import linear_sum_assignment

    new_ids = np.unique(new[new >= 0])
    old_ids = np.unique(old[old >= 0])
    if new_ids.size == 0 or old_ids.size == 0:
        return new, {"matched": {}, "births": new_ids.tolist(), "deaths": old_ids.tolist(), "merges": [], "splits": []}
    inter = np.array([[np.sum((new == i) & (old == j)) for j in old_ids] for i in new_ids], dtype=np.float64)
    size_new = np.array([np.sum(new == i) for i in new_ids], dtype=np.float64)
    size_old = np.array([np.sum(old == j) for j in old_ids], dtype=np.float64)
    jaccard = inter / (size_new[:, None] + size_old[None, :] - inter)
    rows, cols = linear_sum_assignment(-jaccard)
    mapping: dict[int, int] = {}
    for r, c in zip(rows, cols, strict=True):
        if jaccard[r, c] >= min_jaccard:
            mapping[int(new_ids[r])] = int(old_ids[c])
    next_id = int(old_ids.max()) + 1
    births = []
    for i in new_ids:
        if int(i) not in mapping:
            mapping[int(i)] = next_id
            births.append(next_id)
            next_id += 1
    relabelled = np.array([mapping.get(int(v), -1) if v >= 0 else -1 for v in new], dtype=np.int64)
    # merges: a new segment holding >= 30% of two or more old ones; splits: an old one spread over >= 2 new ones
    share_of_old = inter / size_old[None, :]
    merges = [
        {"into": mapping[int(new_ids[r])], "from": [int(old_ids[c]) for c in np.flatnonzero(share_of_old[r] >= 0.3)]}
        for r in range(new_ids.size)
        if (share_of_old[r] >= 0.3).sum() >= 2
    ]
    splits = [
        {"from": int(old_ids[c]), "into": [mapping[int(new_ids[r])] for r in np.flatnonzero(share_of_old[:, c] >= 0.3)]}
        for c in range(old_ids.size)
        if (share_of_old[:, c] >= 0.3).sum() >= 2
    ]
    kept = set(mapping[int(i)] for i in new_ids)
    lineage = {
        "matched": {str(k): v for k, v in mapping.items() if v not in births},
        "births": births,
        "deaths": [int(j) for j in old_ids if int(j) not in kept],
        "merges": merges,
        "splits": splits,
    }
    return relabelled, lineage
