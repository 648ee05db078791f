"""XGBoost learner: gradient-boosted trees on the prepared features plus the unsupervised layer's outputs
(the XGBOD idea), trained continued from the previous version's booster when there is one. Category codes (the
trailing ``categories`` columns) use XGBoost's native categorical splits, one level against the rest as one-hot
columns would (partition splits over many levels overfit a few labels).

The unsupervised scores enter with a *monotone increasing* constraint: a more anomalous record can never get
a lower probability for it, which carries the unsupervised ranking through when labels are scarce.

Depth is chosen (``max_depth = None``): stumps (an additive model, one feature per tree) unless there are enough
labelled anomalies for out-of-fold predictions to show depth 4 reliably better (:meth:`alternatives`, decided
in :class:`~segscope.supervised.base.FineTuned`). Measured with depths 1, 2, 3, 4, 6
(``benchmarks/adbench_label_informed.py``, ``benchmarks/real_fraud.py``): with the few labelled anomalies
analysts give, deeper trees fit the positives' exact corners; stumps raised ADBench's mean AUCPR at 1 / 5 / 10%
labelled from 69.1 / 79.5 / 83.9 (depth 4) to 74.1 / 82.4 / 86.8, and were level or better on both fraud sets
(Ethereum accounts, 5% labelled: AUCPR 0.965 -> 0.982). With hundreds of labels and frauds that are
combinations (the demo's card-testing bursts: many small payments), depth 4 ranks the unlabelled new records
better (AUCPR 0.956 against 0.916 for stumps), which is what the choice is for; in the demo itself the labelled
rows (alerts and chargebacks) did not show it reliably out of fold, and stumps were kept.
"""

from __future__ import annotations

import itertools
import json
from typing import Any, ClassVar, Self

import numpy as np

from segscope._deps import require
from segscope._params import Constraint, Interval, Options, Sizes, StoresParams
from segscope.exceptions import BundleError, NotFittedError

__all__ = ["XGBoostLearner", "check_booster_json"]

_OWNER = "supervised/xgboost.json"
_INVALID_NODE = 2147483647  # XGBoost's parent of a root
#: Category codes above this are refused: XGBoost sizes a bitset by the largest code (a crafted one asks for
#: gigabytes). segscope target-encodes columns past 64 levels, so its own codes stay far below.
_MAX_CATEGORY = 1 << 20


def _bad(problem: str, owner: str = _OWNER) -> BundleError:
    return BundleError(f"{owner}: {problem}; the bundle is damaged or was edited by hand: refit it")


def _ints(tree: dict[str, Any], key: str, n: int, owner: str = _OWNER) -> np.ndarray:
    values = tree.get(key)
    if not isinstance(values, list) or len(values) != n or not all(type(v) is int for v in values):
        raise _bad(f"a tree's '{key}' is not {n} whole numbers", owner)
    return np.asarray(values, dtype=np.int64)


#: A leaf value far past any a logistic booster learns (XGBoost's are within a few units): sums of a huge one
#: overflow into NaN scores, which never alert.
_MAX_LEAF = 1e6


def check_booster_json(blob: bytes, owner: str = _OWNER) -> None:
    """Refuse an XGBoost JSON model whose trees XGBoost would walk out of bounds (it does not check them):
    every child after its node and inside the tree, each node the child of exactly one parent, feature numbers
    below the model's feature count, categorical splits within their tables. Only the gbtree booster, which is
    what segscope writes. ``owner``: the file the errors name."""
    try:
        model = json.loads(blob)
        learner = model["learner"]
        n_features = int(learner["learner_model_param"]["num_feature"])
        booster = learner["gradient_booster"]
        trees = booster["model"]["trees"]
        tree_info = booster["model"]["tree_info"]
    except (ValueError, KeyError, TypeError) as exc:
        raise _bad(f"it is not an XGBoost JSON model ({type(exc).__name__}: {str(exc)[:80]})", owner) from None
    if booster.get("name") != "gbtree":
        raise _bad(f"its booster is {str(booster.get('name'))[:40]!r}; segscope writes only 'gbtree'", owner)
    if not isinstance(trees, list) or not isinstance(tree_info, list) or len(tree_info) != len(trees):
        raise _bad("its trees and tree_info do not match", owner)
    try:
        groups = max(
            1, int(learner["learner_model_param"]["num_class"]), int(learner["learner_model_param"]["num_target"])
        )
    except (KeyError, TypeError, ValueError):
        raise _bad("it has no num_class", owner) from None
    if not all(type(g) is int and 0 <= g < groups for g in tree_info):
        raise _bad(f"a tree's output group lies outside [0, {groups})", owner)
    indptr = booster["model"].get("iteration_indptr", [0, len(trees)])
    if not (
        isinstance(indptr, list)
        and all(type(i) is int for i in indptr)
        and indptr[:1] == [0]
        and indptr[-1:] == [len(trees)]
        and all(a <= b for a, b in itertools.pairwise(indptr))
    ):
        raise _bad("its iteration_indptr does not index its trees", owner)
    if not 0 < n_features < 1 << 24:
        raise _bad(f"num_feature {n_features} is out of range", owner)
    objective = learner.get("objective")
    if not isinstance(objective, dict) or objective.get("name") != "binary:logistic" or groups != 1:
        name = objective.get("name") if isinstance(objective, dict) else objective
        raise _bad(
            f"its objective is {str(name)[:40]!r} with {groups} output(s); segscope writes binary:logistic", owner
        )
    if not _base_score_ok(learner["learner_model_param"].get("base_score")):
        raise _bad("its base_score is not one probability in (0, 1)", owner)
    for position, tree in enumerate(trees):
        if not isinstance(tree, dict) or tree.get("id") != position or type(tree.get("id")) is not int:
            raise _bad(f"tree {position} is not a JSON object with id {position}", owner)
        try:
            n = int(tree["tree_param"]["num_nodes"])
            leaf_vector = int(tree["tree_param"].get("size_leaf_vector", "1"))
        except (KeyError, TypeError, ValueError):
            raise _bad("a tree has no num_nodes", owner) from None
        if not 1 <= n < 1 << 24 or leaf_vector not in (0, 1):
            raise _bad(f"a tree has {n} nodes and leaf vectors of {leaf_vector}", owner)
        left, right = _ints(tree, "left_children", n, owner), _ints(tree, "right_children", n, owner)
        parents, split = _ints(tree, "parents", n, owner), _ints(tree, "split_indices", n, owner)
        kind = _ints(tree, "split_type", n, owner)
        _ints(tree, "default_left", n, owner)
        for key in ("split_conditions", "base_weights", "loss_changes", "sum_hessian"):
            values = tree.get(key)
            if not isinstance(values, list) or len(values) != n or not all(type(v) is float for v in values):
                raise _bad(f"a tree's '{key}' does not hold {n} numbers", owner)
        inner = np.flatnonzero(left != -1)
        if ((right == -1) != (left == -1)).any():
            raise _bad("a node has one child", owner)
        leaves = np.asarray(tree["split_conditions"], dtype=np.float64)[left == -1]  # a leaf's value
        if not (np.isfinite(leaves).all() and (np.abs(leaves) <= _MAX_LEAF).all()):
            limit = f"a leaf's value is not a number within +-{_MAX_LEAF:g} (a sum of them scores every record)"
            raise _bad(limit, owner)
        children = np.concatenate([left[inner], right[inner]])
        if (children >= n).any() or (left[inner] <= inner).any() or (right[inner] <= inner).any():
            raise _bad("a node's child lies outside the tree or before the node", owner)
        if np.unique(children).size != children.size or children.size != n - 1:
            raise _bad("a node is the child of more than one parent, or of none", owner)
        misplaced = (parents[left[inner]] != inner).any() or (parents[right[inner]] != inner).any()
        if parents[0] != _INVALID_NODE or misplaced:
            raise _bad("a node's parent does not match its place in the tree", owner)
        if ((split[inner] < 0) | (split[inner] >= n_features)).any():
            raise _bad(f"a split reads a feature number outside [0, {n_features})", owner)
        _check_categories(tree, n, inner, kind, owner)


def _base_score_ok(text: Any) -> bool:
    """XGBoost writes a logistic model's base score as ``"5E-1"`` (or ``"[5E-1]"`` from 3.0): one probability."""
    if not isinstance(text, str):
        return False
    try:
        value = float(text.strip().removeprefix("[").removesuffix("]"))
    except ValueError:
        return False
    return 0.0 < value < 1.0


def _check_categories(tree: dict[str, Any], n: int, inner: np.ndarray, kind: np.ndarray, owner: str) -> None:
    nodes = _ints(tree, "categories_nodes", len(tree.get("categories_nodes") or []), owner)
    segments = _ints(tree, "categories_segments", nodes.size, owner)
    sizes = _ints(tree, "categories_sizes", nodes.size, owner)
    codes = _ints(tree, "categories", len(tree.get("categories") or []), owner)
    if ((kind != 0) & (kind != 1)).any():
        raise _bad("a split type is neither numerical nor categorical", owner)
    categorical = np.flatnonzero(kind[inner] == 1)
    if not np.array_equal(np.sort(inner[categorical]), np.sort(nodes)):
        raise _bad("the categorical splits and their category lists do not match", owner)
    if (segments < 0).any() or (sizes < 0).any() or (segments + sizes > codes.size).any():
        raise _bad("a categorical split's list lies outside the category table", owner)
    if codes.size and (codes.min() < 0 or codes.max() >= _MAX_CATEGORY):
        raise _bad(f"a category code lies outside [0, {_MAX_CATEGORY})", owner)
    if nodes.size and (nodes.min() < 0 or nodes.max() >= n):
        raise _bad("a categorical split names a node outside the tree", owner)


class XGBoostLearner(StoresParams):
    """``fit(x, y, weight, monotone)`` then ``predict_raw(x)`` (a probability-like score in (0, 1))."""

    name = "xgboost"
    _constraints: ClassVar[dict[str, Constraint]] = {
        "n_estimators": Interval(int, 1, 100_000),
        "max_depth": Interval(int, 1, 64, nullable=True),
        "learning_rate": Interval(float, 0.0, 1.0, closed="right"),
        "seed": Interval(int, 0, 2**32 - 1),
        "categories": Sizes(low=1),
        "plain": Options((False, True)),
    }

    def __init__(
        self,
        *,
        n_estimators: int = 200,
        max_depth: int | None = None,
        learning_rate: float = 0.1,
        seed: int = 0,
        categories: list[int] | tuple[int, ...] = (),
        plain: bool = False,
    ) -> None:
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.learning_rate = learning_rate
        self.seed = seed
        self.categories = categories
        self.plain = plain

    def _matrix(self, x: np.ndarray, **labels: Any) -> Any:
        xgb = require("xgboost", extra="xgboost", feature="the XGBoost learner")
        if not self.categories:
            return xgb.DMatrix(x, **labels)
        types = ["q"] * (x.shape[1] - len(self.categories)) + ["c"] * len(self.categories)
        return xgb.DMatrix(x, feature_types=types, enable_categorical=True, **labels)

    def alternatives(self) -> list[dict[str, Any]]:
        """Parameters to compare out of fold when the labels allow, the first the default, while the depth is not
        fixed: stumps, depth 4, XGBoost's own depth and rate (depth 6, 100 trees at rate 0.3) with this learner's
        weights, sampling and monotone surprisals, and a plain XGBoost (``plain``: the same, with every record
        weighted alike, no sampling, no constraint: what a user fitting ``XGBClassifier()`` on the labelled rows
        gets, so the choice includes it and falls below it only by the out-of-fold choice's own noise)."""
        if self.max_depth is not None:
            return []
        defaults = {"max_depth": 6, "n_estimators": 100, "learning_rate": 0.3}
        return [{"max_depth": 1}, {"max_depth": 4}, defaults, {**defaults, "plain": True}]

    def pretrain(self, x: np.ndarray) -> None:
        """Trees need no pre-training."""
        return None

    def fit(
        self,
        x: np.ndarray,
        y: np.ndarray,
        weight: np.ndarray,
        monotone: np.ndarray,
        *,
        init: bytes | None = None,
        pretrained: Any = None,
    ) -> Self:
        self.check_params()
        xgb = require("xgboost", extra="xgboost", feature="the XGBoost learner")
        params: dict[str, Any] = {
            "objective": "binary:logistic",
            "max_depth": self.max_depth or 1,
            "eta": self.learning_rate,
            "tree_method": "hist",
            "nthread": 2,
            "seed": self.seed,
        }
        if self.plain:  # XGBoost's defaults: every record weighted alike (unlabelled as normal), no sampling
            weight = np.ones_like(weight)
        else:
            params.update(
                subsample=0.8,
                colsample_bynode=0.8,
                min_child_weight=0.5,
                monotone_constraints="(" + ",".join(str(int(v)) for v in monotone) + ")",
            )
        if self.categories:
            params["max_cat_to_onehot"] = max(self.categories) + 1  # one level against the rest, always
        previous = None
        if init is not None:
            previous = xgb.Booster()
            previous.load_model(bytearray(init))
        data = self._matrix(x, label=y, weight=weight)
        self.booster_ = xgb.train(params, data, num_boost_round=self.n_estimators, xgb_model=previous)
        return self

    def predict_raw(self, x: np.ndarray) -> np.ndarray:
        if not hasattr(self, "booster_"):
            raise NotFittedError("XGBoostLearner is not fitted; call fit first")
        return np.asarray(self.booster_.predict(self._matrix(x)), dtype=np.float64)

    def artifact(self) -> tuple[str, bytes]:
        """File name and bytes of the fitted model in XGBoost's own JSON format (safe to load)."""
        return "xgboost.json", bytes(self.booster_.save_raw(raw_format="json"))

    def load_artifact(self, blob: bytes, owner: str = _OWNER) -> None:
        """The booster of ``blob``, checked first (``owner``: the bundle file its errors name)."""
        xgb = require("xgboost", extra="xgboost", feature="the XGBoost learner")
        check_booster_json(blob, owner=owner)
        self.booster_ = xgb.Booster()
        self.booster_.load_model(bytearray(blob))

    def n_inputs(self) -> int:
        """Columns the fitted model reads."""
        return int(self.booster_.num_features())
