"""Queue quality: does segscope's review queue find more anomalies, or teach the model more, than top-score order?

    python benchmarks/queue_quality.py [--data ../shared/data] [--seeds 1,2,3] [--rounds 10] [--per-round 20]

Per ADBench set and seed: the 70/30 split of ADBench's protocol; segscope's unsupervised layer is fitted on the
train split without labels. A simulated analyst then labels ``--per-round`` records of the train split per round
with their true labels, for ``--rounds`` rounds. Which records is the strategy under test: plain top-score order,
or segscope's queue (``segscope.queue.select_queue``: top scores + near-threshold records far from anything
labelled + coverage) with a few mixes. Between rounds the supervised layer is re-fitted on the labels so far
(XGBoost through segscope's FineTuned blend, as `segscope finetune` does) and scores the next round. Reported
after each round: anomalies found so far, and AUCPR on the test split. Writes benchmarks/results/queue_quality.json
and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score

from segscope.config import SegscopeConfig
from segscope.labels.queue import QueueMix, select_queue
from segscope.model import Model
from segscope.supervised.learners import make_finetuned

from _adbench import ADBENCH_SETS, data_dir, load_set, split

STRATEGIES = {  # name: (mix, distinct top, boundary 0.5 once supervised)
    "top-score order": (QueueMix(top=1.0, uncertain=0.0, coverage=0.0), False, False),
    "queue 1/0/0": (QueueMix(top=1.0, uncertain=0.0, coverage=0.0), True, True),
    "queue 0.8/0.2/0": (QueueMix(top=0.8, uncertain=0.2, coverage=0.0), True, True),
    "queue 0.8/0.1/0.1": (QueueMix(top=0.8, uncertain=0.1, coverage=0.1), True, True),
    "queue 0.5/0.3/0.2": (QueueMix(top=0.5, uncertain=0.3, coverage=0.2), True, True),
}


def simulate(name: str, seed: int, data: Path, rounds: int, per_round: int) -> dict[str, dict[str, list[float]]]:
    frame = load_set(data, name)
    train, test = split(frame, seed)
    model = Model(SegscopeConfig(seed=seed).with_features(id_column=None, drop=("label",))).fit(train)
    x_pool, layout, unsupervised_pool = model.supervision_matrix(train)
    x_test, _, unsupervised_test = model.supervision_matrix(test)
    truth, y_test = train["label"].to_numpy(), test["label"].to_numpy()
    vectors = x_pool[:, : model.n_features]
    out: dict[str, dict[str, list[float]]] = {}
    for strategy, (mix, distinct, boundary) in STRATEGIES.items():
        supervised = False
        labelled = np.zeros(train.height, dtype=bool)
        score_pool, score_test = unsupervised_pool, unsupervised_test
        found, aucpr = [], []
        for _ in range(rounds):
            free = np.flatnonzero(~labelled)
            pick = select_queue(
                score_pool[free],
                per_round,
                mix,
                threshold=0.5 if boundary and supervised else float(np.quantile(score_pool, 0.99)),
                vectors=vectors[free],
                labelled_vectors=vectors[labelled],
                distinct_top=distinct,
                seed=seed,
            )
            labelled[free[pick.index]] = True
            y = np.where(labelled, truth, 0)
            found.append(int(y.sum()))
            if y.sum():  # re-fit the supervised layer on every label so far
                tuned = make_finetuned("xgboost", n_features=model.n_features, seed=seed)
                tuned.fit(x_pool, y, labelled, layout)
                score_pool, score_test = tuned.predict_proba(x_pool), tuned.predict_proba(x_test)
                supervised = True
            aucpr.append(100 * average_precision_score(y_test, score_test))
        out[strategy] = {"found": found, "aucpr": aucpr}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None)
    parser.add_argument("--sets", default=",".join(ADBENCH_SETS))
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--per-round", type=int, default=20)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "queue_quality.json"))
    args = parser.parse_args()
    data = data_dir(args.data)
    seeds = [int(s) for s in args.seeds.split(",")]
    results: dict[str, dict[str, dict[str, list[list[float]]]]] = {}
    for name in args.sets.split(","):
        for seed in seeds:
            run = simulate(name, seed, data, args.rounds, args.per_round)
            for strategy, rec in run.items():
                slot = results.setdefault(name, {}).setdefault(strategy, {"found": [], "aucpr": []})
                slot["found"].append(rec["found"])
                slot["aucpr"].append(rec["aucpr"])
            print(name, seed, {s: (r["found"][-1], round(r["aucpr"][-1], 1)) for s, r in run.items()}, flush=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(markdown(results, args.rounds, args.per_round))


def markdown(results: dict, rounds: int, per_round: int) -> str:
    strategies = list(STRATEGIES)
    lines = [
        f"Anomalies found after {rounds} rounds of {per_round} labels, and test AUCPR after the last round "
        "(mean over seeds):",
        "",
        "| set | " + " | ".join(f"{s}: found / AUCPR" for s in strategies) + " |",
        "|---|" + "---|" * len(strategies),
    ]
    for name, by in results.items():
        cells = [
            f"{np.mean([f[-1] for f in by[s]['found']]):.1f} / {np.mean([a[-1] for a in by[s]['aucpr']]):.1f}"
            for s in strategies
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    mean_found = {s: np.mean([np.mean([f[-1] for f in by[s]["found"]]) for by in results.values()]) for s in strategies}
    mean_pr = {s: np.mean([np.mean([a[-1] for a in by[s]["aucpr"]]) for by in results.values()]) for s in strategies}
    lines.append("| **mean** | " + " | ".join(f"**{mean_found[s]:.1f} / {mean_pr[s]:.1f}**" for s in strategies) + " |")
    curve = {  # the learning curve's mean: AUCPR averaged over rounds, sets and seeds
        s: np.mean([np.mean([np.mean(a) for a in by[s]["aucpr"]]) for by in results.values()]) for s in strategies
    }
    lines.append("| mean AUCPR over the 10 rounds | " + " | ".join(f"{curve[s]:.1f}" for s in strategies) + " |")
    lines += [
        "",
        "Mean test AUCPR after each round:",
        "",
        "| round | " + " | ".join(strategies) + " |",
        "|---|" + "---|" * len(strategies),
    ]
    for r in range(rounds):
        cells = [
            f"{np.mean([np.mean([a[r] for a in by[s]['aucpr']]) for by in results.values()]):.1f}" for s in strategies
        ]
        lines.append(f"| {r + 1} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
