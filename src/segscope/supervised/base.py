"""The supervised layer: a learner fine-tuned on analyst labels, blended with the unsupervised score only where
held-out data says the blend helps.

Analysts label few records, mostly anomalies, and the rest of the history is unlabelled, not normal. So:

* **inputs** (:class:`Layout`): the prepared features (categories as rarity), the unsupervised detectors'
  surprisals (monotone: more anomalous never lowers the probability), optional segment columns, and each
  category's identity: level codes for XGBoost's native categorical splits (one-vs-rest, as one-hot would) or
  torch embeddings, and out-of-fold target encoding for columns with more than ``max_onehot`` levels;
* **weights** (positive-unlabelled): confirmed normals are full negatives, unlabelled rows negatives with a small
  weight (``unlabelled_weight``), labelled anomalies up-weighted to balance the classes;
* **blend**, among the learner alone, a logistic stack of the learner and the unsupervised surprisal
  (non-negative weights), and the prior blend ``w * logit(learner) + surprisal - k * log(1 + distance to the
  nearest labelled anomaly)`` with ``w = n / (n + prior)`` for ``n`` labelled anomalies (it leans on the
  unsupervised score and on the labelled anomalies' neighbourhoods while labels are few; the distance on the
  prepared features clipped to +-``proximity_clip`` robust deviations, ``k = proximity_weight``);
* **the learner's own parameters**, when it offers alternatives (XGBoost: stumps, depth 4, its own defaults);
* **a plain XGBoost companion** (``companion``: its share of the served log-odds, 0 = none) averaged with the
  calibrated blend, the gate judging the average (:mod:`segscope.supervised.companion`);
* **calibration**: the chosen blend is a logistic regression (Platt scaling for the learner and the prior blend),
  so ``supervised_score`` is a probability of "an analyst would confirm this".

The ``finetune`` job chooses the parameters and the blend together on the promotion gate's folds and passes the
choice in (:class:`Chosen`, :mod:`segscope.supervised.selection`). Fitted without one, :meth:`FineTuned.fit`
chooses on 3 folds of its own (the anomalies spread over them): parameters first, the first unless another is
better in ``RELIABLY_BETTER`` of bootstrap resamples (the first below ``MIN_ANOMALIES_TO_CHOOSE`` labelled
anomalies), then the blend by the same rule, the prior blend without comparing below ``prior_below`` (75: made
from 30 on, the comparison kept the learner alone where the prior blend ranked new records better,
``benchmarks/held_out_few_labels.py``).

Bundles fine-tuned before this design (no layout in their state) keep their own blend (``w * logit(learner) +
surprisal - log(1 + distance to the nearest confirmed anomaly)``, Platt-scaled) and score as they always did.
Measured in ``benchmarks/real_fraud.py``, ``benchmarks/adbench_label_informed.py`` and
``benchmarks/served_model.py`` (the proximity clip 5 and weight 3 from a grid on ADBench, checked on four sets that
did not choose them).
"""

from __future__ import annotations

from typing import Any, Self

import numpy as np

from segscope._arrays import check_indices, take
from segscope.exceptions import BundleError, ConfigError, DataError, NotFittedError
from segscope.supervised.blend import NO_CLIP, Chosen, aucpr, fit_platt, fit_stack, logit, proximity
from segscope.supervised.companion import Companion
from segscope.supervised.encoding import TargetEncoding
from segscope.supervised.layout import Layout, checked_layout
from segscope.supervised.learner import Learner
from segscope.supervised.promotion import share_better_aucpr
from segscope.supervised.stored import MAX_EXEMPLARS, bounded_weights, checked_exemplars, no_nan

__all__ = ["BLENDS", "Chosen", "FineTuned", "Layout", "Learner"]

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
        companion: float = 0.0,
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
        self.companion = companion

    def weights(self, y: np.ndarray, labelled: np.ndarray) -> np.ndarray:
        w = np.where(labelled, 1.0, self.unlabelled_weight)
        pos = y == 1
        if pos.any():
            w[pos] = w[~pos].sum() / pos.sum()
        return np.asarray(w)

    # ------------------------------------------------------------------ inputs
    def _learner_input(self, x: np.ndarray, layout: Layout, encoded_values: np.ndarray) -> np.ndarray:
        """[features, surprisals, segments | target encodings | category codes]: codes last, as the learner's
        ``categories`` parameter says."""
        base = len(layout.monotone)
        codes, _ = layout.split_categories(self.max_onehot)
        return np.hstack([x[:, :base], encoded_values, x[:, [base + j for j in codes]]])

    def _encoded_codes(self, x: np.ndarray, layout: Layout) -> np.ndarray:
        _, encoded = layout.split_categories(self.max_onehot)
        return x[:, [len(layout.monotone) + j for j in encoded]]

    # --------------------------------------------------------------------- fit
    def fit(
        self,
        x: np.ndarray,
        y: np.ndarray,
        labelled: np.ndarray,
        layout: Layout,
        *,
        init: bytes | None = None,
        chosen: Chosen | None = None,
    ) -> Self:
        """``x``: supervision matrix laid out as ``layout`` says; ``y``: 1 for labelled anomalies;
        ``labelled``: rows an analyst labelled (anomaly or normal). ``chosen``: the learner's parameters and the
        blend chosen already (on the promotion gate's folds), with the out-of-fold values its weights are fitted
        on; otherwise both are chosen here, on 3 folds."""
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
        self._use_categories(layout)
        self.layout_ = layout
        self.clip_ = float(self.proximity_clip)
        weight = self.weights(y, labelled)
        inputs, folds, self.encoding_ = self._inputs(x, y, layout)
        monotone = self._monotone(layout, inputs)
        features = x[:, : layout.n_features]
        if chosen is None:
            shared = self.learner.pretrain(inputs) if init is None else None  # once, label-free, for every fold
            oof = self._choose_learner(inputs, y, weight, monotone, folds, init, shared)
            self.blend_, self.blend_kind_, self.oof_aucpr_ = self._choose_blend(
                logit(oof), x[:, layout.surprisal], y, folds, features
            )
        else:
            shared = chosen.pretrained
            for key, value in chosen.params.items():  # parameters are plain attributes (StoresParams)
                setattr(self.learner, key, value)
            rows = chosen.rows
            self.blend_kind_, self.oof_aucpr_ = chosen.blend, dict(chosen.figures)
            self.blend_ = self._blend_weights(
                chosen.blend, chosen.learner, x[rows, layout.surprisal], chosen.proximity, y[rows], pos.size
            )
        self.exemplars_ = self._exemplars(features, pos) if self.blend_[2] > 0 else np.empty((0, layout.n_features))
        if chosen is not None:
            self.blend_by_ = chosen.by
        elif self.blend != "auto":
            self.blend_by_ = f"set by blend = {self.blend}"
        elif pos.size < self.prior_below:
            self.blend_by_ = f"taken below {self.prior_below} labelled anomalies"
        else:
            self.blend_by_ = "chosen out of fold"
        self.learner.fit(inputs, y, weight, monotone, init=init, pretrained=shared)
        self.companion_: Companion | None = None
        if chosen is not None and chosen.companion is not None:
            self.companion_ = Companion(weight=self.companion, seed=self.seed)
            self.companion_.fit(x, y, layout, self.max_onehot, chosen.companion, y[chosen.rows])
        self.n_positives_ = int(pos.size)
        self.n_labelled_ = int(labelled.sum())
        return self

    def _use_categories(self, layout: Layout) -> None:
        codes, _ = layout.split_categories(self.max_onehot)
        if "categories" in self.learner.get_params():  # the learner treats the trailing code columns as categories
            self.learner.categories = [layout.categories[j] for j in codes]  # type: ignore[attr-defined]

    def _inputs(self, x: np.ndarray, y: np.ndarray, layout: Layout) -> tuple[np.ndarray, np.ndarray, TargetEncoding]:
        """(the learner's inputs, with out-of-fold target encodings; 3 folds, the labelled anomalies spread over
        them; the target encoding of all rows, for new ones)."""
        pos = np.flatnonzero(y == 1)
        rng = np.random.default_rng(self.seed)
        folds = np.asarray(rng.integers(0, 3, size=x.shape[0]), dtype=np.int64)
        folds[pos] = rng.permutation(np.arange(pos.size) % 3)  # spread the few anomalies over the folds
        _, encoded = layout.split_categories(self.max_onehot)
        cards = tuple(layout.categories[j] for j in encoded)
        raw_codes = self._encoded_codes(x, layout)
        encoding = TargetEncoding()
        inputs = self._learner_input(x, layout, encoding.out_of_fold(raw_codes, y, cards, folds))
        return inputs, folds, encoding.fit(raw_codes, y, cards)

    @staticmethod
    def _monotone(layout: Layout, inputs: np.ndarray) -> np.ndarray:
        return np.concatenate([np.asarray(layout.monotone), np.zeros(inputs.shape[1] - len(layout.monotone))])

    def learner_inputs(self, x: np.ndarray, y: np.ndarray, layout: Layout) -> np.ndarray:
        """The learner's inputs for every row of ``x`` as :meth:`fit` builds them (for a label-free pre-training
        shared by several fits, :meth:`Learner.pretrain`)."""
        self._use_categories(layout)
        return self._inputs(x, y, layout)[0]

    def fold_predictions(
        self,
        x: np.ndarray,
        y: np.ndarray,
        labelled: np.ndarray,
        layout: Layout,
        taught: np.ndarray,
        held: np.ndarray,
        params: dict[str, Any],
        *,
        init: bytes | None = None,
        pretrained: Any = None,
    ) -> np.ndarray:
        """The learner's raw predictions for rows ``held`` by a learner with ``params`` taught on rows ``taught``
        only (its inputs and target encodings built from those rows, as :meth:`fit` builds them)."""
        self._use_categories(layout)
        inputs, _, encoding = self._inputs(x[taught], y[taught], layout)
        learner = type(self.learner)(**{**self.learner.get_params(), **params})
        weight = self.weights(y[taught], labelled[taught])
        learner.fit(inputs, y[taught], weight, self._monotone(layout, inputs), init=init, pretrained=pretrained)
        held_inputs = self._learner_input(x[held], layout, encoding.transform(self._encoded_codes(x[held], layout)))
        return np.asarray(learner.predict_raw(held_inputs))

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
        """The learner's out-of-fold predictions with the :meth:`Learner.alternatives` chosen (module docstring),
        which the learner keeps."""
        data = (inputs, y, weight, monotone)
        options = self.learner.alternatives() or [{}]
        chosen = options[0]
        oof = self._out_of_fold({**self.learner.get_params(), **chosen}, data, folds, init, shared)
        if int((y == 1).sum()) >= MIN_ANOMALIES_TO_CHOOSE:
            for option in options[1:]:
                candidate = self._out_of_fold({**self.learner.get_params(), **option}, data, folds, init, shared)
                if aucpr(y, candidate) > aucpr(y, oof) and (
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
        candidates' out-of-fold AUCPR (the stack cross-fitted, proximity to the other folds' anomalies)."""
        n_pos = int((y == 1).sum())
        weight = n_pos / (n_pos + self.prior)
        both = np.column_stack([learner, surprisal])
        stacked, near = np.zeros(y.size), np.zeros(y.size)
        for k in np.unique(folds):
            held = folds == k
            a, b, c = fit_stack(both[~held], y[~held])
            stacked[held] = a * learner[held] + b * surprisal[held] + c
            near[held] = proximity(features[held], features[(y == 1) & ~held], self.clip_)
        prior = weight * learner + surprisal - self.proximity_weight * near
        scores = {
            "learner": aucpr(y, learner),
            "unsupervised": aucpr(y, surprisal),
            "stack": aucpr(y, stacked),
            "prior": aucpr(y, prior),
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
        return self._blend_weights(kind, learner, surprisal, near, y, n_pos), kind, scores

    def _blend_weights(
        self, kind: str, learner: np.ndarray, surprisal: np.ndarray, near: np.ndarray, y: np.ndarray, n_pos: int
    ) -> np.ndarray:
        """(a, b, d, c) of the blend ``kind`` fitted on out-of-fold values: the learner's logit, the surprisal,
        the proximity to the other folds' labelled anomalies; ``n_pos`` labelled anomalies in all."""
        if kind == "stack":
            a, b, c = fit_stack(np.column_stack([learner, surprisal]), y)
            return np.array([a, b, 0.0, c])
        if kind == "prior":
            weight = n_pos / (n_pos + self.prior)
            scale, c = fit_platt(weight * learner + surprisal - self.proximity_weight * near, y)
            return np.array([scale * weight, scale, scale * self.proximity_weight, c])
        a, c = fit_platt(learner if kind == "learner" else surprisal, y)
        return np.array([a, 0.0, 0.0, c]) if kind == "learner" else np.array([0.0, a, 0.0, c])

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
            raw = self.learner.predict_raw(inputs) if self.blend_[0] != 0.0 else np.full(x.shape[0], 0.5)
            z = self.decision(raw, x, self.exemplars_)
            return no_nan(np.asarray(expit(z if self.companion_ is None else self.companion_.served(z, x))))
        if not hasattr(self, "platt_"):
            raise NotFittedError("FineTuned is not fitted; call fit first")
        z = self._legacy_decision(self.learner.predict_raw(x), x)
        a, c = self.platt_
        return no_nan(np.asarray(expit(a * z + c)))

    def decision(self, raw: np.ndarray, x: np.ndarray, exemplars: np.ndarray) -> np.ndarray:
        """The blend's log-odds for rows ``x`` from the learner's ``raw`` predictions, proximity to ``exemplars``."""
        a, b, d, c = self.blend_
        near = proximity(x[:, : self.layout_.n_features], exemplars, self.clip_) if d > 0 else 0.0
        return np.asarray(a * logit(raw) + b * x[:, self.layout_.surprisal] + c - d * near)

    def _legacy_decision(self, raw: np.ndarray, x: np.ndarray) -> np.ndarray:
        """The blend of bundles fine-tuned before layouts (the ensemble surprisal read from the last column)."""
        near = proximity(x[:, : self.n_features], self.exemplars_)
        return np.asarray(self.learner_weight_ * logit(raw) + x[:, -1] - near)

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
        codes, encoded = self.layout_.split_categories(self.max_onehot)
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
            **({"companion": self.companion_.describe()} if self.companion_ is not None else {}),
        }

    def to_state(self) -> dict[str, np.ndarray]:
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
            "layout": self.layout_.to_state(),
            "meta": np.array(
                [self.n_positives_, self.n_labelled_, kinds[self.blend_kind_], self.max_onehot], dtype=np.float64
            ),
            "oof_aucpr": np.array([self.oof_aucpr_.get(k, np.nan) for k in BLENDS[1:]], dtype=np.float64),
            "proximity_clip": np.array([self.clip_], dtype=np.float64),
            **self.encoding_.to_state(),
            **(self.companion_.to_state() if self.companion_ is not None else {}),
        }

    def load_state(self, arrays: dict[str, np.ndarray], blob: bytes, companion: bytes | None = None) -> None:
        """``companion``: the plain XGBoost companion's model, when the bundle has one."""
        owner = "supervised"
        self.companion_ = None
        if "blend" not in arrays:  # fine-tuned before layouts
            platt = bounded_weights(take(arrays, "platt", owner, shape=(2,), finite=True), "platt")
            self.platt_ = (float(platt[0]), float(platt[1]))
            self.exemplars_ = checked_exemplars(arrays, self.n_features)
            meta = take(arrays, "meta", owner, shape=(3,), finite=True)
            self.learner_weight_ = float(meta[0])
            self.n_positives_, self.n_labelled_ = int(meta[1]), int(meta[2])
            self.learner.load_artifact(blob)
            return
        blend = bounded_weights(take(arrays, "blend", owner, shape=(None,), finite=True), "blend")
        if blend.size not in (3, 4):
            raise BundleError(
                f"{owner}: 'blend' holds {blend.size} weights, expected 4; the bundle is damaged: refit it"
            )
        self.blend_ = np.insert(blend, 2, 0.0) if blend.size == 3 else blend  # (a, b, c) before the prior blend
        self.layout_ = checked_layout(take(arrays, "layout", owner, shape=(None,), finite=True), self.n_features)
        exemplars = arrays.get("exemplars", np.empty((0, self.layout_.n_features)))
        self.exemplars_ = checked_exemplars({"exemplars": exemplars}, self.layout_.n_features)
        meta = take(arrays, "meta", owner, shape=(4,), finite=True)
        self.n_positives_, self.n_labelled_ = int(meta[0]), int(meta[1])
        check_indices(meta[2:3].astype(np.int64), 0, len(BLENDS), owner, "the blend's kind")
        self.blend_kind_, self.max_onehot = BLENDS[int(meta[2])], int(meta[3])
        oof = take(arrays, "oof_aucpr", owner, shape=(None,))
        self.oof_aucpr_ = {k: float(v) for k, v in zip(BLENDS[1:], oof, strict=False) if v == v}
        clip = take(arrays, "proximity_clip", owner, shape=(1,)) if "proximity_clip" in arrays else [NO_CLIP]
        if np.isnan(clip[0]):
            raise BundleError(f"{owner}: 'proximity_clip' is not a number; the bundle is damaged: refit it")
        self.clip_ = float(clip[0])
        _, encoded = self.layout_.split_categories(self.max_onehot)
        for j in range(len(encoded)):
            take(arrays, f"target_encoding_{j}", owner, shape=(None,), finite=True, min_size=1)
        self.encoding_ = TargetEncoding.from_state(arrays, len(encoded))
        self.learner.load_artifact(blob)
        if self.learner.n_inputs() != self.layout_.width:
            raise BundleError(
                f"{owner}: its {self.learner.name} model reads {self.learner.n_inputs()} columns but its layout "
                f"gives {self.layout_.width}; the bundle is damaged or edited: refit it"
            )
        if ("companion" in arrays) != (companion is not None):
            raise BundleError(f"{owner}: its companion's weights and model do not come together; refit the bundle")
        if companion is not None:
            self.companion_ = Companion.from_state(arrays, companion, self.layout_, self.max_onehot)
