"""The promotion gate's permutation test on labels that carry nothing: is its p-value uniform?

    python benchmarks/gate_null.py [--draws 60] [--out gate_null]
    python benchmarks/gate_null.py --closest-of gate_null      # why its draws passed (no fine-tuning)

The synthetic set of ``tests/test_gate.py`` (3,000 records, four uniform features, twelve frauds packed at the
centre): per draw, 3 "anomalies" and 60 "normals" put on random records, the gate's candidates built out of fold
as ``segscope.tuning.finetune`` builds them, and the permutation p-value (``promotion.permutation_p``, 2,000 random
draws) computed on the gate's scores two ways: each fold's candidate Platt-scaled on every judged record (its own
fold's labels included), and Platt-scaled on the other folds only (what ``Candidates.gate_scores`` does; each fold
predicted by a candidate taught on all the others: the gate before chaining). An exact test gives p <= 0.05 in 5%
of draws and p <= 0.01 in 1%. Then that gate's whole decision (``promotion.compare``) under each promotion rule of
``RULES``, and the shipped gate's (``tuning.chained_gate``: the folds chained both ways, each chain at half the
level, the p-value doubled): how often labels that carry nothing are promoted. ``--first`` starts at another draw
(to add draws to a run), ``--merge a,b --out c`` puts the draws of two runs in one file. Writes
benchmarks/results/<out>.json and .md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from segscope._io import write_text_atomic
from segscope.config import SegscopeConfig
from segscope.model import Model
from segscope.supervised.blend import fit_platt, proximity
from segscope.supervised.learners import make_finetuned
from segscope.supervised.promotion import GATE_FOLDS, break_ties, compare, gate_folds, judged_rows, permutation_p
from segscope.supervised.selection import Candidates, choose, out_of_fold
from segscope.tuning import chained_gate

RESULTS = Path(__file__).parent / "results"


def centre(n: int, seed: int) -> pl.DataFrame:
    """Four uniform features; twelve frauds packed at the centre (as ``tests/test_gate.py``)."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, 4))
    x[:12] = 0.5 + rng.normal(0.0, 0.01, size=(12, 4))
    order = rng.permutation(n)
    return pl.DataFrame({"id": [f"r{i}" for i in range(n)], **{f"f{j}": x[order, j] for j in range(4)}})


def pooled_calibration(candidates: Candidates, n_pos: int) -> tuple[np.ndarray, list[str]]:
    """Each fold scored by the candidate chosen on the other folds, Platt-scaled on every record (own fold too)."""
    calibrated = {}
    for name, value in candidates.values.items():
        a, c = fit_platt(value, candidates.y)
        calibrated[name] = 1.0 / (1.0 + np.exp(-(a * value + c)))
    scores, taken = np.empty(candidates.rows.size), []
    for k in np.unique(candidates.fold):
        here, ref = candidates.fold == k, candidates.fold != k
        values = {n: v[ref] for n, v in candidates.values.items()}
        name = choose(candidates.y[ref], values, candidates.names(n_pos))
        scores[here] = calibrated[name][here]
        taken.append(name)
    return scores, taken


def draw_once(model: Model, history: pl.DataFrame, x: np.ndarray, layout: Any, draw: int) -> dict[str, Any]:
    rng = np.random.default_rng(draw)
    rows = rng.choice(history.height, 63, replace=False)
    y = np.zeros(history.height, np.int64)
    y[rows[:3]] = 1
    labelled = np.zeros(history.height, bool)
    labelled[rows] = True
    gate = gate_folds(y, times=None, column=None, folds=GATE_FOLDS, rng=np.random.default_rng(model.config.seed))
    tuned = make_finetuned("xgboost", n_features=model.n_features, seed=model.config.seed)
    cache: dict[tuple[bytes, bytes, int], np.ndarray] = {}
    candidates = out_of_fold(tuned, x, y, labelled, layout, gate, cache=cache)
    current = model.score(history)["score"].to_numpy()
    keep, _ = judged_rows(y[candidates.rows], labelled[candidates.rows], current[candidates.rows])
    judged = candidates.rows[keep]
    result: dict[str, Any] = {"draw": draw}
    for how, (scores, taken) in {
        "own fold in the calibration": pooled_calibration(candidates, 3),
        "other folds only (shipped)": candidates.gate_scores(3),
    }.items():
        tie_rng = np.random.default_rng(0)
        cur, new = break_ties(current[judged], tie_rng), break_ties(scores[keep], tie_rng)
        p = permutation_p(y[judged], cur, new, "aucpr", folds=candidates.fold[keep])
        result[how] = {"p": p, "taken": taken}
    scores, _ = candidates.gate_scores(3)
    report = compare(y[judged], current[judged], scores[keep], "aucpr", folds=candidates.fold[keep])
    better = "not better than the current version" not in report["reason"]
    result["rules"] = {rule: bool(better and passes(report)) for rule, passes in RULES.items()}
    chained = chained_gate(tuned, x, y, labelled, layout, gate, current, "aucpr", cache=cache, seed=model.config.seed)
    result[TWO_WAY] = {
        "p": chained["permutation_p_value"],
        "promote": bool(chained["promote"]),
        "by chain": {k: v["permutation_p_value"] for k, v in chained["chains"].items()},
    }
    return result


#: The shipped gate: the folds chained both ways, each chain at half the level (``tuning.chained_gate``).
TWO_WAY = "chained both ways, percentiles (shipped)"


#: Promotion rules read from the gate's report (the candidate better by AUCPR, ties broken, and ...).
RULES = {
    "permutation p <= 0.01, no anomaly carries it": lambda r: (
        r["permutation_p_value"] <= 0.01 and r["least_gain_without_one"] >= 0
    ),
    "permutation p <= 0.05, no anomaly carries it": lambda r: (
        r["permutation_p_value"] <= 0.05 and r["least_gain_without_one"] >= 0
    ),
    "bootstrap 95% and paired t p <= 0.05 (the old rule)": lambda r: (
        r["share_of_resamples_better"] >= 0.95 and r["paired_t_p_value"] <= 0.05
    ),
    "permutation p <= 0.01 or the old rule": lambda r: (
        (r["permutation_p_value"] <= 0.01 and r["least_gain_without_one"] >= 0)
        or (r["share_of_resamples_better"] >= 0.95 and r["paired_t_p_value"] <= 0.05)
    ),
}


def summary(draws: list[dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for how in ("own fold in the calibration", "other folds only (shipped)"):
        p = np.array([d[how]["p"] for d in draws])
        mixed = [len(set(d[how]["taken"])) > 1 for d in draws]
        out[how] = {
            "draws": int(p.size),
            "p <= 0.05": int((p <= 0.05).sum()),
            "p <= 0.01": int((p <= 0.01).sum()),
            "mean p": float(p.mean()),
            "draws whose folds took different candidates": int(sum(mixed)),
            "p <= 0.05 among them": int(sum(pi <= 0.05 for pi, m in zip(p, mixed, strict=True) if m)),
        }
    chained = [d[TWO_WAY] for d in draws if TWO_WAY in d]
    if chained:
        p = np.array([c["p"] for c in chained])
        out[TWO_WAY] = {
            "draws": int(p.size),
            "p <= 0.05": int((p <= 0.05).sum()),
            "p <= 0.01": int((p <= 0.01).sum()),
            "mean p": float(p.mean()),
            "promoted": int(sum(c["promote"] for c in chained)),
        }
    ruled = [d for d in draws if "rules" in d]
    out["_rules"] = {rule: [sum(d["rules"][rule] for d in ruled), len(ruled)] for rule in RULES}
    return out


def markdown(result: dict[str, Any]) -> str:
    lines = ["| gate scores | draws | p <= 0.05 | p <= 0.01 | mean p | folds took different candidates (p <= 0.05) |"]
    lines.append("|---|---|---|---|---|---|")
    for how, row in result.items():
        if how.startswith("_") or how == TWO_WAY:
            continue
        name = how.replace("(shipped)", "(unchained: the gate before)")
        lines.append(
            f"| {name} | {row['draws']} | {row['p <= 0.05']} | {row['p <= 0.01']} | {row['mean p']:.3f} | "
            f"{row['draws whose folds took different candidates']} ({row['p <= 0.05 among them']}) |"
        )
    lines += ["", "| promotion rule (unchained gate scores) | promoted on labels that carry nothing |", "|---|---|"]
    lines += [f"| {rule} | {k} of {n} |" for rule, (k, n) in result.get("_rules", {}).items()]
    if TWO_WAY in result:
        row = result[TWO_WAY]
        lines += [
            "",
            "| gate | draws | p <= 0.05 (doubled p) | p <= 0.01 (doubled p) | mean p | promoted |",
            "|---|---|---|---|---|---|",
            f"| {TWO_WAY} | {row['draws']} | {row['p <= 0.05']} | {row['p <= 0.01']} | {row['mean p']:.3f} | "
            f"{row['promoted']} of {row['draws']} |",
        ]
    return "\n".join(lines) + "\n"


def closest_of(model: Model, x: np.ndarray, path: Path) -> str:
    """Why labels that carry nothing pass too often: each draw of a results file (its p-value on the shipped scale)
    by how many of its 3 labelled anomalies are the closest record of their fold (of the 63 labelled) to a
    labelled anomaly of another fold, which the fold's candidate was taught on (the proximity term of the prior
    blend lifts exactly those, and the learner's splits around them). The draws' labels and folds are rebuilt
    from their seeds; nothing is fitted but the unsupervised model."""
    table: dict[int, list[int]] = {}
    for run in json.loads(path.read_text())["draws"]:
        rng = np.random.default_rng(run["draw"])
        rows = rng.choice(x.shape[0], 63, replace=False)
        y = np.zeros(x.shape[0], np.int64)
        y[rows[:3]] = 1
        labelled = np.zeros(x.shape[0], bool)
        labelled[rows] = True
        gate = gate_folds(y, times=None, column=None, folds=GATE_FOLDS, rng=np.random.default_rng(model.config.seed))
        count = 0
        for p in rows[:3]:
            members = np.flatnonzero(labelled & (gate.fold == gate.fold[p]))
            near = proximity(x[members], x[(y == 1) & (gate.fold != gate.fold[p])], 5.0)  # the learner's clip
            count += int(near[members == p][0] <= near.min())
        p_value = run["other folds only (shipped)"]["p"]
        row = table.setdefault(count, [0, 0, 0])
        row[0], row[1], row[2] = row[0] + 1, row[1] + (p_value <= 0.01), row[2] + (p_value <= 0.05)
    lines = ["| labelled anomalies the closest of their fold to another fold's | draws | p <= 0.01 | p <= 0.05 |"]
    lines.append("|---|---|---|---|")
    lines += [f"| {count} | {n} | {a} | {b} |" for count, (n, a, b) in sorted(table.items())]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--draws", type=int, default=60)
    parser.add_argument("--out", default="gate_null")
    parser.add_argument("--first", type=int, default=0, help="the first draw's seed (to add draws to a run)")
    parser.add_argument("--merge", help="results names a,b,...: their draws in one file (--out), no fine-tuning")
    parser.add_argument(
        "--closest-of", help="a results name (benchmarks/results/NAME.json): why its draws passed, no fine-tuning"
    )
    args = parser.parse_args()
    if args.merge:
        draws = [
            d for name in args.merge.split(",") for d in json.loads((RESULTS / f"{name}.json").read_text())["draws"]
        ]
        result = summary(draws)
        write_text_atomic(RESULTS / f"{args.out}.json", json.dumps({"draws": draws, "summary": result}, indent=1))
        write_text_atomic(RESULTS / f"{args.out}.md", markdown(result))
        print(markdown(result))
        return
    history = centre(3000, seed=0)
    model = Model(SegscopeConfig().with_features(id_column="id", drop=())).fit(history)
    x, layout, _ = model.supervision_matrix(history, with_segments=model.learner_sees_segments())
    if args.closest_of:
        table = closest_of(model, x[:, : layout.n_features], RESULTS / f"{args.closest_of}.json")
        write_text_atomic(RESULTS / f"{args.closest_of}_closest.md", table)
        print(table)
        return
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{args.out}.json"
    draws: list[dict[str, Any]] = []
    for draw in range(args.first, args.first + args.draws):
        draws.append(draw_once(model, history, x, layout, draw))
        print(json.dumps(draws[-1]), flush=True)
        result = summary(draws)
        write_text_atomic(out, json.dumps({"draws": draws, "summary": result}, indent=1))
        write_text_atomic(out.with_suffix(".md"), markdown(result))
    print(markdown(summary(draws)))


if __name__ == "__main__":
    main()
