"""Promotion-gate designs judged by what they would serve: the protocol of ``benchmarks/served_model.py`` (the same
sets, splits, labelled rows per draw, shuffled labels and plain XGBoost), with the gate's own out-of-fold arrays
kept, so that every design decides on the same candidates.

    python benchmarks/gate_designs.py [--data ../shared/data] [--sets cardio,thyroid] [--shares 0.05,0.2]
        [--draws 10] [--cache benchmarks/results/gate_designs.cache.pkl] [--out gate_designs]

A gate does not change the candidate (``finetune`` fits it whatever the gate says), so per draw one ``finetune``
on the revealed labels and one on as many labels put on random rows give the candidate, the gate's inputs (each
judged record's label, the current version's score, the candidate's out-of-fold probability, its fold) and the
figures on the test part; each design then decides on those inputs, and the served model is the candidate if it
promotes, else the unsupervised version. ``shipped`` is :func:`segscope.supervised.promotion.compare` as it is
now (its decision is the one ``finetune`` makes). The cache (a local pickle this script writes and reads, never
committed) keeps the draws done, so a run stopped half-way resumes. Writes benchmarks/results/<out>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import pickle
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import served_model as sm
import xgboost as xgb
from sklearn.metrics import average_precision_score

import segscope.tuning as tuning
from segscope._io import write_text_atomic
from segscope.config import SegscopeConfig
from segscope.model import Model
from segscope.supervised.promotion import break_ties, compare, least_gain_without_one, paired_t, permutation_p

from _adbench import data_dir

RESULTS = Path(__file__).parent / "results"
_SEEN: dict[str, Any] = {}


def _keep_gate_inputs() -> None:
    """Wrap the gate's pieces in :mod:`segscope.tuning` so each ``finetune`` leaves its inputs in ``_SEEN``."""
    real_compare, real_oof, real_judged = tuning.compare, tuning.out_of_fold, tuning.judged_rows

    def kept_compare(y: np.ndarray, cur: np.ndarray, cand: np.ndarray, metric: str, **kw: Any) -> dict[str, Any]:
        _SEEN.update(y=y, cur=cur, cand=cand, against=kw.get("against"))
        return real_compare(y, cur, cand, metric, **kw)

    def kept_oof(*args: Any, **kw: Any) -> Any:
        _SEEN["candidates"] = real_oof(*args, **kw)
        return _SEEN["candidates"]

    def kept_judged(y: np.ndarray, labelled: np.ndarray, current: np.ndarray, **kw: Any) -> tuple[np.ndarray, str]:
        keep, against = real_judged(y, labelled, current, **kw)
        _SEEN["keep"] = keep
        return keep, against

    tuning.compare, tuning.out_of_fold, tuning.judged_rows = kept_compare, kept_oof, kept_judged  # type: ignore[assignment]


def _gate_inputs() -> dict[str, Any]:
    fold = _SEEN["candidates"].fold[_SEEN["keep"]]
    return {k: _SEEN[k] for k in ("y", "cur", "cand", "against")} | {"fold": fold}


def capture(data: Path, names: list[str], shares: list[float], draws: int, cache: Path) -> dict[Any, Any]:
    store: dict[Any, Any] = pickle.loads(cache.read_bytes()) if cache.exists() else {}
    _keep_gate_inputs()
    for name in names:
        if all((name, s, d) in store for s in shares for d in range(draws)):
            continue
        train, test, drop, id_column = sm.load(data, name)
        model = Model(SegscopeConfig().with_features(id_column=id_column, drop=drop)).fit(train)
        y_test = test["label"].to_numpy()
        current = sm.figures(y_test, model.score(test)["score"].to_numpy())
        plain_train, plain_test = sm.one_hot(train, test, drop, id_column)
        ids = train[id_column].cast(pl.String)
        for share in shares:
            for draw in range(draws):
                if (name, share, draw) in store:
                    continue
                y, labelled = sm.reveal(name, train["label"].to_numpy(), share, draw)
                started = time.perf_counter()
                candidate, _ = tuning.finetune(model, train, sm.as_labels(ids, y, labelled))
                seconds = time.perf_counter() - started
                real = _gate_inputs()
                plain = xgb.XGBClassifier(n_jobs=2, random_state=draw).fit(plain_train, y)
                noise_y, noise_labelled = sm.shuffled(y, labelled, draw)
                tuning.finetune(model, train, sm.as_labels(ids, noise_y, noise_labelled))
                store[(name, share, draw)] = {
                    "real": real,
                    "noise": _gate_inputs(),
                    "candidate": sm.figures(y_test, candidate.score(test)["score"].to_numpy()),
                    "current": current,
                    "plain": sm.figures(y_test, plain.predict_proba(plain_test)[:, 1]),
                    "labelled anomalies": int(y.sum()),
                    "seconds": seconds,
                }
                cache.write_bytes(pickle.dumps(store))
                print(f"{name} {share:.0%} draw {draw}: {int(y.sum())} anomalies, {seconds:.0f} s", flush=True)
    return store


def _percentile(score: np.ndarray) -> np.ndarray:
    ranks = np.empty(score.size)
    ranks[np.argsort(score, kind="stable")] = np.arange(score.size)
    return ranks / max(score.size - 1, 1)


def _lift_p(g: dict[str, Any], log: bool, permutations: int = 2000) -> float:
    """Permutation p-value of the labelled anomalies' mean rank lift (percentile, or log of the rank from the top)
    against as many random records of the same folds."""
    rng = np.random.default_rng(0)
    cur, cand = break_ties(g["cur"], rng), break_ties(g["cand"], rng)
    if log:
        n = cur.size
        lift = np.log(n - _percentile(cur) * (n - 1)) - np.log(n - _percentile(cand) * (n - 1))
    else:
        lift = _percentile(cand) - _percentile(cur)
    y, fold = g["y"], g["fold"]
    observed = lift[y == 1].mean()
    null = np.zeros(permutations)
    for k in np.unique(fold[y == 1]):
        members = np.flatnonzero(fold == k)
        m = int(y[members].sum())
        picks = np.argsort(rng.random((permutations, members.size)), axis=1)[:, :m]
        null += lift[members][picks].sum(axis=1)
    null /= y.sum()
    return float((1 + np.sum(null >= observed - 1e-12)) / (permutations + 1))


def _matched_p(g: dict[str, Any], window: int = 2, permutations: int = 2000) -> float:
    """Permutation p-value of the AUCPR gain against records the current version ranked alike: each labelled
    anomaly replaced by a record of its fold at most ``window`` places from it in the current version's order."""
    rng = np.random.default_rng(0)
    cur, cand = break_ties(g["cur"], rng), break_ties(g["cand"], rng)
    y, fold, n = g["y"], g["fold"], g["y"].size
    rank_cur, rank_new = np.empty(n, np.int64), np.empty(n, np.int64)
    rank_cur[np.argsort(-cur, kind="stable")] = np.arange(1, n + 1)
    rank_new[np.argsort(-cand, kind="stable")] = np.arange(1, n + 1)
    picks = []
    for k in np.unique(fold[y == 1]):
        members = np.flatnonzero(fold == k)
        members = members[np.argsort(rank_cur[members])]
        for at in np.flatnonzero(y[members] == 1):
            lo, hi = max(0, at - window), min(members.size, at + window + 1)
            picks.append(members[rng.integers(lo, hi, size=permutations)])
    rows = np.column_stack(picks)

    def ap(ranks: np.ndarray) -> np.ndarray:
        ranks = np.sort(ranks, axis=1)
        return np.asarray((np.arange(1, ranks.shape[1] + 1) / ranks).mean(axis=1))

    pos = np.flatnonzero(y == 1)[None]
    observed = ap(rank_new[pos]) - ap(rank_cur[pos])
    null = ap(rank_new[rows]) - ap(rank_cur[rows])
    return float((1 + np.sum(null >= observed[0] - 1e-12)) / (permutations + 1))


def _figures(g: dict[str, Any]) -> dict[str, Any]:
    """What every design reads: AUCPR better (ties broken as the gate breaks them), the p-values and the share."""
    y, rng = g["y"], np.random.default_rng(0)
    cur, cand = break_ties(g["cur"], rng), break_ties(g["cand"], rng)
    shipped = compare(y, g["cur"], g["cand"], "aucpr", against=g["against"], folds=g["fold"])
    return {
        "better": average_precision_score(y, cand) > average_precision_score(y, cur),
        "t": paired_t(y, cur, cand, "aucpr"),
        "t roc": paired_t(y, cur, cand, "aucroc"),
        "share": shipped["share_of_resamples_better"],
        "permutation": permutation_p(y, cur, cand, "aucpr", folds=g["fold"]),
        "least without one": least_gain_without_one(y, cur, cand, "aucpr"),
        "matched": _matched_p(g),
        "lift": _lift_p(g, log=False),
        "log lift": _lift_p(g, log=True),
        "shipped": shipped["promote"],
    }


DESIGNS: dict[str, Callable[[dict[str, Any]], bool]] = {
    "before: bootstrap >= 95% and paired t p <= 0.05": lambda f: f["better"] and f["share"] >= 0.95 and f["t"] <= 0.05,
    "paired t p <= 0.05 alone": lambda f: f["better"] and f["t"] <= 0.05,
    "bootstrap >= 95% alone": lambda f: f["better"] and f["share"] >= 0.95,
    "paired t on AUCROC terms p <= 0.05": lambda f: f["better"] and f["t roc"] <= 0.05,
    "rank lift vs random records p <= 0.05": lambda f: f["better"] and f["lift"] <= 0.05,
    "log-rank lift vs random records p <= 0.05": lambda f: f["better"] and f["log lift"] <= 0.05,
    "AUCPR gain vs random records p <= 0.05": lambda f: f["better"] and f["permutation"] <= 0.05,
    "AUCPR gain vs random records p <= 0.01": lambda f: f["better"] and f["permutation"] <= 0.01,
    "AUCPR gain p <= 0.05 and bootstrap >= 80%": lambda f: (
        f["better"] and f["permutation"] <= 0.05 and f["share"] >= 0.8
    ),
    "AUCPR gain p <= 0.05 and no anomaly carries it alone": lambda f: (
        f["better"] and f["permutation"] <= 0.05 and f["least without one"] >= 0.0
    ),
    "AUCPR gain p <= 0.01 and no anomaly carries it alone": lambda f: (
        f["better"] and f["permutation"] <= 0.01 and f["least without one"] >= 0.0
    ),
    "AUCPR gain p <= 0.01 and no anomaly carries it, or before's rule": lambda f: (
        f["better"]
        and ((f["permutation"] <= 0.01 and f["least without one"] >= 0.0) or (f["share"] >= 0.95 and f["t"] <= 0.05))
    ),
    "AUCPR gain vs records ranked alike (2 places) p <= 0.05": lambda f: f["better"] and f["matched"] <= 0.05,
    "shipped (compare as it is)": lambda f: bool(f["shipped"]),
}


def summarise(store: dict[Any, Any]) -> dict[str, Any]:
    decided = {key: {"real": _figures(v["real"]), "noise": _figures(v["noise"])} for key, v in store.items()}
    table: dict[str, Any] = {}
    for design, rule in DESIGNS.items():
        for share in sorted({key[1] for key in store}):
            keys = [key for key in store if key[1] == share]
            served, better, promoted, promoted_better, promoted_worse, shuffled = [], 0, 0, 0, 0, 0
            for key in keys:
                v, f = store[key], decided[key]
                go, truly = rule(f["real"]), v["candidate"]["aucpr"] > v["current"]["aucpr"]
                served.append(v["candidate"] if go else v["current"])
                better += truly
                promoted += go
                promoted_better += go and truly
                promoted_worse += go and not truly
                shuffled += rule(f["noise"])
            table.setdefault(design, {})[f"{share:.0%}"] = {
                "draws": len(keys),
                "sets": sorted({key[0] for key in keys}),
                "served": {m: float(np.mean([s[m] for s in served])) for m in ("aucroc", "aucpr")},
                "plain xgboost": {m: float(np.mean([store[k]["plain"][m] for k in keys])) for m in ("aucroc", "aucpr")},
                "candidate": {m: float(np.mean([store[k]["candidate"][m] for k in keys])) for m in ("aucroc", "aucpr")},
                "unsupervised": {
                    m: float(np.mean([store[k]["current"][m] for k in keys])) for m in ("aucroc", "aucpr")
                },
                "promoted": promoted,
                "promoted when better": [promoted_better, better],
                "promoted when not better": [promoted_worse, len(keys) - better],
                "shuffled promoted": shuffled,
            }
    per_draw = {
        f"{k[0]} {k[1]:.0%} draw {k[2]}": {
            "labelled anomalies": store[k]["labelled anomalies"],
            "candidate": store[k]["candidate"],
            "plain xgboost": store[k]["plain"],
            "unsupervised": store[k]["current"],
            **{side: {n: float(x) for n, x in decided[k][side].items()} for side in ("real", "noise")},
        }
        for k in sorted(store)
    }
    return {"designs": table, "draws": per_draw}


def markdown(summary: dict[str, Any]) -> str:
    lines = [
        "| design | labelled | draws | served AUCROC / AUCPR | plain XGBoost | promoted | promoted when better | "
        "promoted when not better | shuffled promoted |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for design, by_share in summary["designs"].items():
        for share, row in by_share.items():
            served, plain = row["served"], row["plain xgboost"]
            lines.append(
                f"| {design} | {share} | {row['draws']} | {served['aucroc']:.3f} / {served['aucpr']:.3f} | "
                f"{plain['aucroc']:.3f} / {plain['aucpr']:.3f} | {row['promoted']}/{row['draws']} | "
                f"{row['promoted when better'][0]}/{row['promoted when better'][1]} | "
                f"{row['promoted when not better'][0]}/{row['promoted when not better'][1]} | "
                f"{row['shuffled promoted']}/{row['draws']} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--sets", default="cardio,thyroid")
    parser.add_argument("--shares", default="0.05,0.2")
    parser.add_argument("--draws", type=int, default=10)
    parser.add_argument("--cache", type=Path, action="append", help="draws kept (the first is written; repeatable)")
    parser.add_argument("--summarise-only", action="store_true", help="judge the cached draws, run nothing")
    parser.add_argument("--out", default="gate_designs")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    caches = args.cache or [RESULTS / "gate_designs.cache.pkl"]
    store: dict[Any, Any] = {}
    for extra in caches[1:]:
        store.update(pickle.loads(extra.read_bytes()))
    if args.summarise_only:
        store.update(pickle.loads(caches[0].read_bytes()) if caches[0].exists() else {})
    else:
        names, shares = args.sets.split(","), [float(s) for s in args.shares.split(",")]
        store.update(capture(data_dir(args.data), names, shares, args.draws, caches[0]))
    summary = summarise(store)
    RESULTS.mkdir(exist_ok=True)
    write_text_atomic(RESULTS / f"{args.out}.json", json.dumps(summary, indent=1))
    write_text_atomic(RESULTS / f"{args.out}.md", markdown(summary))
    print(markdown(summary))


if __name__ == "__main__":
    main()
