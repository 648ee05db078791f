"""Whether another rule for choosing the capacity and blend would keep AUCROC: each candidate fitted and scored.

    python benchmarks/choice_rules.py --set mammography --share 0.05 --draws 5 [--data ../shared/data]
    python benchmarks/choice_rules.py --set mammography --share 0.05 --draws 5 --surprisal-inputs

``served_model.py``'s split and labels (seed = draw). Default mode: the gate's folds and every candidate's
out-of-fold values built as ``finetune`` builds them, then each of the candidates (4 capacities x 3 blends) fitted on
all labels and scored on the scoring part; each choice rule (``RULES``: AUCPR as shipped, rank-averages,
AUCROC non-inferiority margins) is judged by the candidates it picks, next to the per-draw best candidate on the
scoring part (an oracle) and a plain ``XGBClassifier()``. ``--surprisal-inputs``: stumps and the plain
configuration taught with and without the unsupervised surprisals among the learner's inputs (the surprisal kept
in the prior blend), and a plain ``XGBClassifier()`` on the raw columns, the supervision matrix and its prepared
features. Prints the tables; writes nothing.
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import xgboost as xgb
from scipy.stats import rankdata
from served_model import load, one_hot, reveal
from sklearn.metrics import average_precision_score, roc_auc_score

from segscope.config import SegscopeConfig
from segscope.model import Model
from segscope.supervised.blend import logit, proximity
from segscope.supervised.learners import make_finetuned
from segscope.supervised.promotion import GATE_FOLDS, gate_folds
from segscope.supervised.selection import choose, out_of_fold

from _adbench import data_dir

Rows = dict[str, dict[str, float]]


def _by(names: Callable[[Rows], list[str]], delta: float | None) -> Callable[[Rows, str], str]:
    """AUCPR among the candidates within ``delta`` of the best out-of-fold AUCROC (None: the rank-average)."""

    def pick(rows: Rows, shipped: str) -> str:
        allowed = names(rows)
        if delta is None:
            pr = rankdata([rows[n]["oof_pr"] for n in allowed])
            roc = rankdata([rows[n]["oof_roc"] for n in allowed])
            return allowed[int(np.argmax(pr + roc))]
        best = max(rows[n]["oof_roc"] for n in allowed)
        return max((n for n in allowed if rows[n]["oof_roc"] >= best - delta), key=lambda n: rows[n]["oof_pr"])

    return pick


def _prior(rows: Rows) -> list[str]:
    return [n for n in rows if n.endswith("prior blend")]


def _all(rows: Rows) -> list[str]:
    return list(rows)


RULES: dict[str, Callable[[Rows, str], str]] = {
    "AUCPR (shipped)": lambda rows, shipped: shipped,
    "rank-average of AUCPR and AUCROC, prior blends": _by(_prior, None),
    "rank-average, all candidates": _by(_all, None),
    "AUCPR within 0.005 of the best AUCROC, prior blends": _by(_prior, 0.005),
    "AUCPR within 0.005 of the best AUCROC, all": _by(_all, 0.005),
    "AUCPR within 0.01 of the best AUCROC, all": _by(_all, 0.01),
    "best out-of-fold AUCROC": _by(_all, 0.0),
}


def figures(y: np.ndarray, score: np.ndarray) -> tuple[float, float]:
    return float(roc_auc_score(y, score)), float(average_precision_score(y, score))


def rules(model: Model, prepared: dict[str, Any], draws: int) -> None:
    x, layout, xt, yt = prepared["x"], prepared["layout"], prepared["xt"], prepared["yt"]
    picked: dict[str, list[tuple[float, float]]] = {}
    for draw in range(draws):
        y, labelled = reveal(prepared["name"], prepared["y"], prepared["share"], draw)
        gate = gate_folds(y, times=None, column=None, folds=GATE_FOLDS, rng=np.random.default_rng(model.config.seed))
        tuned = make_finetuned("xgboost", n_features=model.n_features, seed=model.config.seed)
        candidates = out_of_fold(tuned, x, y, labelled, layout, gate)
        shipped = choose(candidates.y, candidates.values, candidates.names(int(y.sum())), seed=model.config.seed)
        rows: Rows = {}
        for name, value in candidates.values.items():
            fitted = make_finetuned("xgboost", n_features=model.n_features, seed=model.config.seed)
            fitted.fit(x, y, labelled, layout, chosen=candidates.chosen(name, "choice_rules"))
            roc, pr = figures(yt, fitted.predict_proba(xt))
            oof_roc, oof_pr = figures(candidates.y, value)
            rows[name] = {"roc": roc, "pr": pr, "oof_roc": oof_roc, "oof_pr": oof_pr}
        for rule, pick in RULES.items():
            name = pick(rows, shipped)
            picked.setdefault(rule, []).append((rows[name]["roc"], rows[name]["pr"]))
        picked.setdefault("the best on the scoring part (an oracle)", []).append(
            max((r["roc"], r["pr"]) for r in rows.values())
        )
        plain = xgb.XGBClassifier(n_jobs=2, random_state=draw).fit(prepared["raw"], y)
        picked.setdefault("plain XGBClassifier()", []).append(figures(yt, plain.predict_proba(prepared["raw_t"])[:, 1]))
        print(f"draw {draw}: shipped {shipped}", flush=True)
    print("| rule | AUCROC / AUCPR on the scoring part |\n|---|---|")
    for rule, values in picked.items():
        roc, pr = np.mean(values, axis=0)
        print(f"| {rule} | {roc:.3f} / {pr:.3f} |")


def surprisal_inputs(model: Model, prepared: dict[str, Any], draws: int) -> None:
    x, layout, xt, yt = prepared["x"], prepared["layout"], prepared["xt"], prepared["yt"]
    both = np.vstack([x, xt])
    without = both.copy()
    n_features, inputs = layout.n_features, len(layout.monotone)
    without[:, n_features:inputs] = 0.0  # constant: the learner cannot split on them
    taught, held = np.arange(x.shape[0]), x.shape[0] + np.arange(xt.shape[0])
    found: dict[str, list[tuple[float, float]]] = {}
    for draw in range(draws):
        y, labelled = reveal(prepared["name"], prepared["y"], prepared["share"], draw)
        y_all, labelled_all = np.r_[y, np.zeros(xt.shape[0], np.int64)], np.r_[labelled, np.zeros(xt.shape[0], bool)]
        tuned = make_finetuned("xgboost", n_features=model.n_features, seed=model.config.seed)
        configs = tuned.learner.alternatives()
        weight = int(y.sum()) / (int(y.sum()) + tuned.prior)
        near = proximity(xt[:, :n_features], x[y == 1, :n_features], tuned.proximity_clip)
        for j, label in ((0, "stumps"), (3, "plain configuration")):
            for inputs_kind, matrix in (("with", both), ("without", without)):
                raw = tuned.fold_predictions(matrix, y_all, labelled_all, layout, taught, held, configs[j])
                blended = weight * logit(raw) + xt[:, layout.surprisal] - tuned.proximity_weight * near
                found.setdefault(f"{label}, prior blend, {inputs_kind} surprisal inputs", []).append(
                    figures(yt, blended)
                )
        for kind, (a, b) in {
            "raw columns": (prepared["raw"], prepared["raw_t"]),
            "supervision matrix": (x, xt),
            "prepared features only": (x[:, :n_features], xt[:, :n_features]),
        }.items():
            plain = xgb.XGBClassifier(n_jobs=2, random_state=draw).fit(a, y)
            found.setdefault(f"plain XGBClassifier() on the {kind}", []).append(
                figures(yt, plain.predict_proba(b)[:, 1])
            )
    print("| learner | AUCROC / AUCPR on the scoring part |\n|---|---|")
    for kind, values in found.items():
        roc, pr = np.mean(values, axis=0)
        print(f"| {kind} | {roc:.3f} / {pr:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=None)
    parser.add_argument("--set", default="mammography")
    parser.add_argument("--share", type=float, default=0.05)
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--surprisal-inputs", action="store_true")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    train, test, drop, id_column = load(data_dir(args.data), args.set)
    model = Model(SegscopeConfig().with_features(id_column=id_column, drop=drop)).fit(train)
    with_segments = model.learner_sees_segments()
    x, layout, _ = model.supervision_matrix(train, with_segments=with_segments)
    xt, _, _ = model.supervision_matrix(test, with_segments=with_segments)
    raw, raw_t = one_hot(train, test, drop, id_column)
    prepared = {
        "name": args.set,
        "share": args.share,
        "y": train["label"].to_numpy(),
        "x": x,
        "layout": layout,
        "xt": xt,
        "yt": test["label"].to_numpy(),
        "raw": raw,
        "raw_t": raw_t,
    }
    (surprisal_inputs if args.surprisal_inputs else rules)(model, prepared, args.draws)


if __name__ == "__main__":
    main()
