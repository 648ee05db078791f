"""The supervised layer: a learner fine-tuned on analyst labels, blended with the unsupervised score only where
held-out data says the blend helps.

Analysts label few records, mostly anomalies, and the rest of the history is unlabelled, not normal. So:

* **inputs** (:class:`Layout`): the prepared features (categories as rarity), the unsupervised detectors'
  surprisals (monotone: more anomalous never lowers the probability), optional segment columns, and each
  category's identity: level codes for XGBoost's native categorical splits (one-vs-rest, as one-hot would) or
  torch embeddings, and out-of-fold target encoding for columns with more than ``max_onehot`` levels;
* **weights** (positive-unlabelled): confirmed normals are full negatives, unlabelled rows negatives with a small
  weight (``unlabelled_weight``), labelled anomalies up-weighted to balance the classes;
* **blend**, decided on out-of-fold predictions (3 folds, the anomalies spread over them), among the learner
  alone, a logistic stack of the learner and the unsupervised surprisal (non-negative weights), and the prior
  blend ``w * logit(learner) + surprisal - k * log(1 + distance to the nearest labelled anomaly)`` with
  ``w = n / (n + prior)`` for ``n`` labelled anomalies (it leans on the unsupervised score and on the labelled
  anomalies' neighbourhoods while labels are few). The distance is taken on the prepared features clipped to
  +-``proximity_clip`` robust deviations (beyond that a value is just "far": one heavy-tailed column no longer
  decides who is near), and ``k = proximity_weight``. Each candidate's AUCPR is measured on rows its own fit did
  not see (the stack is cross-fitted, proximity is to the other folds' anomalies); another blend replaces the
  learner only when it beats it in ``RELIABLY_BETTER`` of bootstrap resamples of those predictions, so the
  choice never falls below the learner alone out of fold, and a lucky fold does not decide. With fewer than
  ``prior_below`` labelled anomalies (75, 25 per fold) the prior blend is taken without a comparison: made from
  30 on, the comparison kept the learner alone where the prior blend ranked new records better (annthyroid with
  37 and 74 labelled anomalies, mammography with 32, under Overlap's protocol; four sets that chose nothing at
  40, ``benchmarks/held_out_few_labels.py``);
* **the learner's own parameters**, when it offers alternatives (XGBoost: stumps or depth 4), are chosen first by
  the same rule: the first unless another is reliably better out of fold, and the first with fewer than
  ``MIN_ANOMALIES_TO_CHOOSE`` labelled anomalies;
* **calibration**: the chosen blend is a logistic regression (Platt scaling for the learner and the prior blend),
  so ``supervised_score`` is a probability of "an analyst would confirm this".

Bundles fine-tuned before this design (no layout in their state) keep their own blend (``w * logit(learner) +
surprisal - log(1 + distance to the nearest confirmed anomaly)``, Platt-scaled) and score as they always did.

Measured in ``benchmarks/real_fraud.py`` (with an ablation of each part) and
``benchmarks/adbench_label_informed.py``. The proximity term's clip and weight (clip 5, weight 3; was unclipped,
weight 1) raised ADBench's mean AUCPR at 1 / 5 / 10% labelled from 74.1 / 82.4 / 86.8 to the figures in the
README (grid of clips 2-20 and weights 0.5-10 on that benchmark; checked on four sets that did not choose them,
``benchmarks/held_out_few_labels.py``, where it is better at 5, 10 and 20 labelled anomalies).
"""

from __future__ import annotations

from typing import Any, Protocol, Self

import numpy as np

from segscope._arrays import check_indices, take
from segscope.exceptions import BundleError, ConfigError, DataError, NotFittedError
from segscope.supervised.encoding import TargetEncoding
from segscope.supervised.layout import Layout, checked_layout
from segscope.supervised.promotion import share_better_aucpr

__all__ = ["BLENDS", "FineTuned", "Layout", "Learner"]

#: At most this many confirmed anomalies are kept as exemplars (the "prior" blend's proximity term).
MAX_EXEMPLARS = 512
#: Bundles fine-tuned before the proximity clip measured distances on the prepared features as they are.
_NO_CLIP = np.inf
#: Blend choices: "auto" picks on out-of-fold AUCPR; the others force one (for ablations).
BLENDS = ("auto", "learner", "unsupervised", "stack", "prior")
#: With fewer labelled anomalies than this, out-of-fold AUCPR (a few anomalies per fold) cannot tell the
#: learner's parameters apart, and the first is kept.
MIN_ANOMALIES_TO_CHOOSE = 30
#: With fewer labelled anomalies than this (25 per fold), "auto" takes the prior blend without comparing: the
#: out-of-fold comparison, made from 30, kept the learner alone where the prior blend was better on new data.
PRIOR_BELOW = 75
#: ... and with more, a blend other than the learner alone must beat it in this share of bootstrap resamples of
#: the out-of-fold predictions (differences of a few anomalies are the folds' luck, and do not carry to new data).
RELIABLY_BETTER = 0.95
_RESAMPLES = 100


class Learner(Protocol):
    """A supervised learner. Its ``categories`` parameter (if it has one) lists the number of levels of the
    trailing columns of ``x`` that hold category codes."""

    name: str

    def get_params(self) -> dict[str, Any]: ...

    def alternatives(self) -> list[dict[str, Any]]:
        """Parameter sets to compare out of fold when there are enough labelled anomalies (the first is the
        default, kept unless another is reliably better); empty when nothing is chosen."""
        ...

    def pretrain(self, x: np.ndarray) -> Any:
        """Label-free preparation shared by every fit on the same rows (e.g. an encoder), or None."""
        ...

    def fit(
        self,
        x: np.ndarray,
        y: np.ndarray,
        weight: np.ndarray,
        monotone: np.ndarray,
        *,
        init: bytes | None = None,
        pretrained: Any = None,
    ) -> Self: ...

    def predict_raw(self, x: np.ndarray) -> np.ndarray: ...

    def artifact(self) -> tuple[str, bytes]: ...

    def load_artifact(self, blob: bytes) -> None: ...


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-9, 1 - 1e-9)
    return np.asarray(np.log(p / (1 - p)))


def _nearest(x: np.ndarray, exemplars: np.ndarray) -> np.ndarray:
    """Euclidean distance from each row to the nearest exemplar (inf without exemplars)."""
    if exemplars.shape[0] == 0:
        return np.full(x.shape[0], np.inf)
    from sklearn.neighbors import KDTree

    dist, _ = KDTree(exemplars).query(x, k=1)
    return np.asarray(dist[:, 0])


def _proximity(x: np.ndarray, exemplars: np.ndarray, clip: float = _NO_CLIP) -> np.ndarray:
    """log(1 + distance to the nearest exemplar), both clipped to +-``clip``; 0 without exemplars."""
    if np.isfinite(clip):
        x, exemplars = np.clip(x, -clip, clip), np.clip(exemplars, -clip, clip)
    distance = _nearest(x, exemplars)
    return np.asarray(np.where(np.isfinite(distance), np.log1p(distance), 0.0))


def _aucpr(y: np.ndarray, score: np.ndarray) -> float:
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(y, score)) if 0 < y.sum() < y.size else 0.0


class FineTuned:
    """A learner plus the inputs, blend and calibration above: ``fit`` on a supervision matrix and its
    :class:`Layout`, then ``predict_proba``."""

    def __init__(
        self,
        learner: Learner,
        *,
        n_features: int,
        prior: float = 5.0,
        unlabelled_weight: float = 0.2,
        seed: int = 0,
        blend: str = "auto",
        max_onehot: int = 64,
        proximity_weight: float = 3.0,
        proximity_clip: float = 5.0,
        prior_below: int = PRIOR_BELOW,
    ) -> None:
        self.learner = learner
        self.n_features = n_features
        self.prior = prior
        self.unlabelled_weight = unlabelled_weight
        self.seed = seed
        self.blend = blend
        self.max_onehot = max_onehot
        self.proximity_weight = proximity_weight
        self.proximity_clip = proximity_clip
        self.prior_below = prior_below

    def weights(self, y: np.ndarray, labelled: np.ndarray) -> np.ndarray:
        w = np.where(labelled, 1.0, self.unlabelled_weight)
        pos = y == 1
        if pos.any():
            w[pos] = w[~pos].sum() / pos.sum()
        return np.asarray(w)

    # ------------------------------------------------------------------ inputs
    def _split_categories(self, layout: Layout) -> tuple[list[int], list[int]]:
        """Indices (into ``layout.categories``) of the columns given as codes and of those target-encoded."""
        codes = [j for j, n in enumerate(layout.categories) if n <= self.max_onehot]
        encoded = [j for j, n in enumerate(layout.categories) if n > self.max_onehot]
        return codes, encoded

    def _learner_input(self, x: np.ndarray, layout: Layout, encoded_values: np.ndarray) -> np.ndarray:
        """[features, surprisals, segments | target encodings | category codes]: codes last, as the learner's
        ``categories`` parameter says."""
        base = len(layout.monotone)
        codes, _ = self._split_categories(layout)
        return np.hstack([x[:, :base], encoded_values, x[:, [base + j for j in codes]]])

    def _encoded_codes(self, x: np.ndarray, layout: Layout) -> np.ndarray:
        _, encoded = self._split_categories(layout)
        return x[:, [len(layout.monotone) + j for j in encoded]]

    # --------------------------------------------------------------------- fit
    def fit(
        self, x: np.ndarray, y: np.ndarray, labelled: np.ndarray, layout: Layout, *, init: bytes | None = None
    ) -> Self:
        """``x``: supervision matrix laid out as ``layout`` says; ``y``: 1 for labelled anomalies;
        ``labelled``: rows an analyst labelled (anomaly or normal)."""
        if self.blend not in BLENDS:
            raise ConfigError(f"blend must be one of {list(BLENDS)}; got {self.blend!r}")
        if not (self.proximity_weight >= 0 and self.proximity_clip > 0):
            raise ConfigError(
                f"proximity_weight must be >= 0 and proximity_clip > 0; got {self.proximity_weight}, "
                f"{self.proximity_clip}"
            )
        if x.shape[1] != layout.width:
            raise DataError(f"the supervision matrix has {x.shape[1]} columns; its layout says {layout.width}")
        pos = np.flatnonzero(y == 1)
        if pos.size == 0:
            raise DataError("fine-tuning needs at least one record labelled 'anomaly'; label some and retry")
        codes, encoded = self._split_categories(layout)
        if "categories" in self.learner.get_params():  # the learner treats the trailing code columns as categories
            self.learner.categories = [layout.categories[j] for j in codes]  # type: ignore[attr-defined]
        self.layout_ = layout
        self.clip_ = float(self.proximity_clip)
        weight = self.weights(y, labelled)
        rng = np.random.default_rng(self.seed)
        folds = np.asarray(rng.integers(0, 3, size=x.shape[0]), dtype=np.int64)
        folds[pos] = rng.permutation(np.arange(pos.size) % 3)  # spread the few anomalies over the folds
        cards = tuple(layout.categories[j] for j in encoded)
        raw_codes = self._encoded_codes(x, layout)
        encoding = TargetEncoding()
        inputs = self._learner_input(x, layout, encoding.out_of_fold(raw_codes, y, cards, folds))
        self.encoding_ = encoding.fit(raw_codes, y, cards)
        monotone = np.concatenate([np.asarray(layout.monotone), np.zeros(inputs.shape[1] - len(layout.monotone))])
        shared = self.learner.pretrain(inputs) if init is None else None  # once, label-free, reused by every fold
        oof = self._choose_learner(inputs, y, weight, monotone, folds, init, shared)
        features = x[:, : layout.n_features]
        self.blend_, self.blend_kind_, self.oof_aucpr_ = self._choose_blend(
            _logit(oof), x[:, layout.surprisal], y, folds, features
        )
        self.exemplars_ = self._exemplars(features, pos) if self.blend_[2] > 0 else np.empty((0, layout.n_features))
        if self.blend != "auto":
            self.blend_by_ = f"set by blend = {self.blend}"
        elif pos.size < self.prior_below:
            self.blend_by_ = f"taken below {self.prior_below} labelled anomalies"
        else:
            self.blend_by_ = "chosen out of fold"
        self.learner.fit(inputs, y, weight, monotone, init=init, pretrained=shared)
        self.n_positives_ = int(pos.size)
        self.n_labelled_ = int(labelled.sum())
        return self

    def _out_of_fold(
        self,
        params: dict[str, Any],
        data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
        folds: np.ndarray,
        init: bytes | None,
        shared: Any,
    ) -> np.ndarray:
        """Each row's prediction by a learner (``params``) fitted on the other folds."""
        inputs, y, weight, monotone = data
        oof = np.full(inputs.shape[0], 0.5)
        for k in range(3):
            held, rest = folds == k, folds != k
            if held.any() and (y[rest] == 1).any():
                fold_learner = type(self.learner)(**params)
                fold_learner.fit(inputs[rest], y[rest], weight[rest], monotone, init=init, pretrained=shared)
                oof[held] = fold_learner.predict_raw(inputs[held])
        return oof

    def _choose_learner(
        self,
        inputs: np.ndarray,
        y: np.ndarray,
        weight: np.ndarray,
        monotone: np.ndarray,
        folds: np.ndarray,
        init: bytes | None,
        shared: Any,
    ) -> np.ndarray:
        """The learner's out-of-fold predictions, after choosing among its :meth:`Learner.alternatives` (the first
        unless another beats it in ``RELIABLY_BETTER`` of bootstrap resamples; the first below
        ``MIN_ANOMALIES_TO_CHOOSE`` labelled anomalies). The learner keeps the chosen parameters."""
        data = (inputs, y, weight, monotone)
        options = self.learner.alternatives() or [{}]
        chosen = options[0]
        oof = self._out_of_fold({**self.learner.get_params(), **chosen}, data, folds, init, shared)
        if int((y == 1).sum()) >= MIN_ANOMALIES_TO_CHOOSE:
            for option in options[1:]:
                candidate = self._out_of_fold({**self.learner.get_params(), **option}, data, folds, init, shared)
                if _aucpr(y, candidate) > _aucpr(y, oof) and (
                    share_better_aucpr(y, oof, candidate, resamples=_RESAMPLES, seed=self.seed) >= RELIABLY_BETTER
                ):
                    chosen, oof = option, candidate
        for key, value in chosen.items():  # parameters are plain attributes (StoresParams)
            setattr(self.learner, key, value)
        return oof

    def _choose_blend(
        self, learner: np.ndarray, surprisal: np.ndarray, y: np.ndarray, folds: np.ndarray, features: np.ndarray
    ) -> tuple[np.ndarray, str, dict[str, float]]:
        """(a, b, d, c) of ``a * logit(learner) + b * surprisal - d * proximity + c``, its name, and the
        candidates' out-of-fold AUCPR. The stack is cross-fitted to be judged; proximity is to the labelled
        anomalies of the other folds. "auto" takes the best of the learner, the stack and the prior blend
        (the learner on ties); with fewer than ``prior_below`` anomalies, the prior blend."""
        n_pos = int((y == 1).sum())
        weight = n_pos / (n_pos + self.prior)
        both = np.column_stack([learner, surprisal])
        stacked, proximity = np.zeros(y.size), np.zeros(y.size)
        for k in np.unique(folds):
            held = folds == k
            a, b, c = _fit_stack(both[~held], y[~held])
            stacked[held] = a * learner[held] + b * surprisal[held] + c
            proximity[held] = _proximity(features[held], features[(y == 1) & ~held], self.clip_)
        prior = weight * learner + surprisal - self.proximity_weight * proximity
        scores = {
            "learner": _aucpr(y, learner),
            "unsupervised": _aucpr(y, surprisal),
            "stack": _aucpr(y, stacked),
            "prior": _aucpr(y, prior),
        }
        kind = self.blend
        if kind == "auto" and n_pos < self.prior_below:
            kind = "prior"
        elif kind == "auto":  # another blend only when it beats the learner reliably, not by the folds' luck
            reliable = [
                name
                for name, score in (("stack", stacked), ("prior", prior))
                if scores[name] > scores["learner"]
                and share_better_aucpr(y, learner, score, resamples=_RESAMPLES, seed=self.seed) >= RELIABLY_BETTER
            ]
            kind = max(reliable, key=lambda name: scores[name]) if reliable else "learner"
        if kind == "stack":
            a, b, c = _fit_stack(both, y)
            return np.array([a, b, 0.0, c]), kind, scores
        if kind == "prior":
            scale, c = _fit_platt(prior, y)
            return np.array([scale * weight, scale, scale * self.proximity_weight, c]), kind, scores
        a, c = _fit_platt(learner if kind == "learner" else surprisal, y)
        return (np.array([a, 0.0, 0.0, c]) if kind == "learner" else np.array([0.0, a, 0.0, c])), kind, scores

    def _exemplars(self, features: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """The labelled anomalies the proximity term measures against (at most ``MAX_EXEMPLARS``)."""
        if pos.size > MAX_EXEMPLARS:
            pos = np.sort(np.random.default_rng(self.seed).choice(pos, MAX_EXEMPLARS, replace=False))
        return np.ascontiguousarray(features[pos])

    # ----------------------------------------------------------------- predict
    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        from scipy.special import expit

        if hasattr(self, "blend_"):
            layout = self.layout_
            inputs = self._learner_input(x, layout, self.encoding_.transform(self._encoded_codes(x, layout)))
            a, b, d, c = self.blend_
            raw = self.learner.predict_raw(inputs) if a != 0.0 else np.full(x.shape[0], 0.5)
            decision = a * _logit(raw) + b * x[:, layout.surprisal] + c
            if d > 0:
                decision -= d * _proximity(x[:, : layout.n_features], self.exemplars_, self.clip_)
            return np.asarray(expit(decision))
        if not hasattr(self, "platt_"):
            raise NotFittedError("FineTuned is not fitted; call fit first")
        z = self._legacy_decision(self.learner.predict_raw(x), x)
        a, c = self.platt_
        return np.asarray(expit(a * z + c))

    def _legacy_decision(self, raw: np.ndarray, x: np.ndarray) -> np.ndarray:
        """The blend of bundles fine-tuned before layouts (the ensemble surprisal read from the last column)."""
        proximity = _proximity(x[:, : self.n_features], self.exemplars_)
        return np.asarray(self.learner_weight_ * _logit(raw) + x[:, -1] - proximity)

    @property
    def uses_layout(self) -> bool:
        """Whether this fine-tuned model takes category codes after the other columns (all but legacy ones)."""
        return not hasattr(self, "platt_")

    # ----------------------------------------------------------------- persist
    def describe(self) -> dict[str, Any]:
        common = {
            "learner": self.learner.name,
            "learner_params": self.learner.get_params(),
            "labelled_anomalies": self.n_positives_,
            "labelled_records": self.n_labelled_,
            "prior": self.prior,
            "unlabelled_weight": self.unlabelled_weight,
        }
        if not self.uses_layout:
            mode = "blend (leans on the unsupervised score)" if self.learner_weight_ < 0.5 else "learner-led blend"
            weight = round(self.learner_weight_, 4)
            return {**common, "mode": mode, "learner_weight": weight, "platt": list(self.platt_)}
        codes, encoded = self._split_categories(self.layout_)
        names = {
            "learner": "the learner alone",
            "unsupervised": "the unsupervised score",
            "stack": "a stack of both",
            "prior": "the prior blend",
        }
        return {
            **common,
            "mode": names[self.blend_kind_],
            "blend": self.blend_kind_,
            **({"blend_by": self.blend_by_} if hasattr(self, "blend_by_") else {}),  # not kept in the state
            "blend_weights": {
                "learner": float(self.blend_[0]),
                "unsupervised": float(self.blend_[1]),
                "proximity": float(self.blend_[2]),
            },
            "out_of_fold_aucpr": {k: round(v, 4) for k, v in self.oof_aucpr_.items()},
            "categories": {"codes": len(codes), "target_encoded": len(encoded)},
            "max_onehot": self.max_onehot,
            "proximity_clip": None if not np.isfinite(self.clip_) else self.clip_,
        }

    def state(self) -> dict[str, np.ndarray]:
        if not self.uses_layout:
            return {
                "platt": np.asarray(self.platt_),
                "exemplars": self.exemplars_,
                "meta": np.array([self.learner_weight_, self.n_positives_, self.n_labelled_], dtype=np.float64),
            }
        kinds = {k: i for i, k in enumerate(BLENDS)}
        return {
            "blend": np.asarray(self.blend_, dtype=np.float64),
            "exemplars": self.exemplars_,
            "layout": self.layout_.to_array(),
            "meta": np.array(
                [self.n_positives_, self.n_labelled_, kinds[self.blend_kind_], self.max_onehot], dtype=np.float64
            ),
            "oof_aucpr": np.array([self.oof_aucpr_.get(k, np.nan) for k in BLENDS[1:]], dtype=np.float64),
            "proximity_clip": np.array([self.clip_], dtype=np.float64),
            **self.encoding_.state(),
        }

    def load_state(self, arrays: dict[str, np.ndarray], blob: bytes) -> None:
        if "blend" not in arrays:  # fine-tuned before layouts
            self.platt_ = (float(arrays["platt"][0]), float(arrays["platt"][1]))
            self.exemplars_ = np.ascontiguousarray(arrays["exemplars"])
            self.learner_weight_ = float(arrays["meta"][0])
            self.n_positives_, self.n_labelled_ = int(arrays["meta"][1]), int(arrays["meta"][2])
            self.learner.load_artifact(blob)
            return
        owner = "supervised"
        blend = take(arrays, "blend", owner, shape=(None,), finite=True)
        if blend.size not in (3, 4):
            raise BundleError(
                f"{owner}: 'blend' holds {blend.size} weights, expected 4; the bundle is damaged: refit it"
            )
        self.blend_ = np.insert(blend, 2, 0.0) if blend.size == 3 else blend  # (a, b, c) before the prior blend
        self.layout_ = checked_layout(take(arrays, "layout", owner, shape=(None,), finite=True), self.n_features)
        exemplars = arrays.get("exemplars", np.empty((0, self.layout_.n_features)))
        self.exemplars_ = take({"exemplars": exemplars}, "exemplars", owner, shape=(None, self.layout_.n_features))
        meta = take(arrays, "meta", owner, shape=(4,), finite=True)
        self.n_positives_, self.n_labelled_ = int(meta[0]), int(meta[1])
        check_indices(meta[2:3].astype(np.int64), 0, len(BLENDS), owner, "the blend's kind")
        self.blend_kind_, self.max_onehot = BLENDS[int(meta[2])], int(meta[3])
        oof = take(arrays, "oof_aucpr", owner, shape=(None,))
        self.oof_aucpr_ = {k: float(v) for k, v in zip(BLENDS[1:], oof, strict=False) if v == v}
        self.clip_ = float(arrays["proximity_clip"][0]) if "proximity_clip" in arrays else _NO_CLIP
        _, encoded = self._split_categories(self.layout_)
        for j in range(len(encoded)):
            take(arrays, f"target_encoding_{j}", owner, shape=(None,), finite=True, min_size=1)
        self.encoding_ = TargetEncoding.from_state(arrays, len(encoded))
        self.learner.load_artifact(blob)


def _fit_stack(both: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Logistic regression of y on (logit(learner), surprisal) with both weights positive: a part that would
    get a weight <= 0 is left out (with one label the learner says nothing, and the stack is the surprisal)."""
    from sklearn.linear_model import LogisticRegression

    if y.min() == y.max():
        return np.array([1.0, 0.0, 0.0])
    fit = LogisticRegression(C=1.0).fit(both, y)
    if (fit.coef_[0] > 0).all():
        return np.array([*fit.coef_[0], fit.intercept_[0]])
    keep = int(np.argmax(fit.coef_[0]))  # the part that still raises the score
    a, c = _fit_platt(both[:, keep], y)
    return np.array([a, 0.0, c]) if keep == 0 else np.array([0.0, a, c])


def _fit_platt(score: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Platt scaling: a regularised logistic regression of y on one score, slope kept in (0, 10] so the
    calibration always keeps the ranking and cannot blow up on separable (tiny) label sets."""
    from sklearn.linear_model import LogisticRegression

    if y.min() == y.max():
        return 1.0, 0.0
    fit = LogisticRegression(C=1.0).fit(score.reshape(-1, 1), y)
    return float(np.clip(fit.coef_[0, 0], 1e-3, 10.0)), float(fit.intercept_[0])
