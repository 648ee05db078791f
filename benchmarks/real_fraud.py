"""Fine-tuning on real fraud data with few labels, against a plain XGBoost on one-hot columns and the
unsupervised layer alone.

    python benchmarks/real_fraud.py [--data ../shared/data] [--seeds 1 2 3] [--quick]

Sets: the vehicle-insurance claims (fitted on the 1994-95 claims, scored on 1996; ``Year`` and the label dropped,
``PolicyNumber`` the id) and the Ethereum fraud accounts (random 70/30 split, seed 0; ``Index`` dropped, it
repeats). Per seed, the unsupervised layer is fitted on the train split without labels; then 5% or 20% of the
train split's frauds (at least one) and 200 random normals are labelled, and everything else is unlabelled.

* ``fine-tuned``: segscope's supervised layer on those labels (``FineTuned``, blend chosen out of fold);
* ``plain xgboost``: ``XGBClassifier()`` with default parameters on the columns one-hot encoded
  (``to_dummies``), unlabelled rows as normal: what a data scientist would write first;
* ``unsupervised``: the ensemble's anomaly score, no labels.

Ablation rows change one part of ``fine-tuned`` at a time: the blend forced to the learner alone, the stack or the
unsupervised score; unlabelled rows at weight 1.0 instead of 0.2; the category codes withheld (the learner sees
categories only as rarity, as before). ``gate`` runs the whole ``finetune`` job (held-out split, promotion
decision) with the true labels and with random labels (as many "frauds" and normals, on rows drawn at random: an
analyst clicking at random): the first should be promoted, the second refused.

AUCROC / AUCPR on the test split, means over seeds. Writes benchmarks/results/real_fraud.json and .md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import xgboost as xgb
from sklearn.metrics import average_precision_score, roc_auc_score

from segscope.config import SegscopeConfig
from segscope.model import Model
from segscope.supervised.base import FineTuned
from segscope.supervised.learners import make_finetuned
from segscope.tuning import finetune

from _adbench import data_dir

SETS = ("fraud_vehicle_insurance", "fraud_ethereum_accounts")
FRACTIONS = (0.05, 0.2)
NORMALS = 200
VARIANTS = (
    "fine-tuned",
    "plain xgboost",
    "unsupervised",
    "ablation: blend = learner",
    "ablation: blend = stack",
    "ablation: blend = unsupervised",
    "ablation: unlabelled weight 1.0",
    "ablation: no category codes",
)


def load(data: Path, name: str) -> tuple[pl.DataFrame, pl.DataFrame, tuple[str, ...], str]:
    """(train, test, columns to drop, id column)."""
    frame = pl.read_parquet(data / f"{name}.parquet")
    if name == "fraud_vehicle_insurance":
        train, test = frame.filter(pl.col("Year") < 1996), frame.filter(pl.col("Year") == 1996)
        return train, test, ("label", "Year"), "PolicyNumber"
    frame = frame.with_row_index("row").drop("Index")
    mask = pl.Series(np.random.default_rng(0).random(frame.height) < 0.7)
    return frame.filter(mask), frame.filter(~mask), ("label",), "row"


def one_hot(train: pl.DataFrame, test: pl.DataFrame, drop: tuple[str, ...], id_column: str) -> tuple[np.ndarray, ...]:
    columns = [c for c in train.columns if c not in (*drop, id_column)]
    both = pl.concat([train.select(columns), test.select(columns)])
    both = both.to_dummies([c for c in columns if both.schema[c] == pl.String])
    matrix = both.to_numpy().astype(np.float64)
    return matrix[: train.height], matrix[train.height :]


def reveal(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(labels with only the revealed frauds as 1, which rows are labelled)."""
    rng = np.random.default_rng(seed)
    frauds, normals = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    shown = rng.choice(frauds, max(1, int(np.ceil(fraction * frauds.size))), replace=False)
    labelled = np.zeros(y.size, bool)
    labelled[shown] = True
    labelled[rng.choice(normals, NORMALS, replace=False)] = True
    revealed = np.zeros(y.size, np.int64)
    revealed[shown] = 1
    return revealed, labelled


def figures(y: np.ndarray, score: np.ndarray) -> tuple[float, float]:
    return float(roc_auc_score(y, score)), float(average_precision_score(y, score))


def fine_tuned(seed: int, n_features: int, **params: Any) -> FineTuned:
    return make_finetuned("xgboost", n_features=n_features, seed=seed, **params)


def run_seed(train: pl.DataFrame, test: pl.DataFrame, drop: tuple[str, ...], id_column: str, seed: int) -> dict:
    y_train, y_test = train["label"].to_numpy(), test["label"].to_numpy()
    model = Model(SegscopeConfig(seed=seed).with_features(id_column=id_column, drop=drop)).fit(train)
    x_train, layout, _ = model.supervision_matrix(train)
    x_test, _, anomaly = model.supervision_matrix(test)
    plain_train, plain_test = one_hot(train, test, drop, id_column)
    base = len(layout.monotone)
    no_codes = dataclasses.replace(layout, categories=())
    out: dict = {}
    for fraction in FRACTIONS:
        y, labelled = reveal(y_train, fraction, seed)
        key = f"{fraction:.0%}"
        row: dict[str, tuple[float, float]] = {"unsupervised": figures(y_test, anomaly)}
        plain = xgb.XGBClassifier(n_jobs=2, random_state=seed).fit(plain_train, y)
        row["plain xgboost"] = figures(y_test, plain.predict_proba(plain_test)[:, 1])
        tuned = fine_tuned(seed, model.n_features).fit(x_train, y, labelled, layout)
        row["fine-tuned"] = figures(y_test, tuned.predict_proba(x_test))
        chosen = tuned.describe()["blend"]
        for blend in ("learner", "stack", "unsupervised"):
            forced = fine_tuned(seed, model.n_features, blend=blend).fit(x_train, y, labelled, layout)
            row[f"ablation: blend = {blend}"] = figures(y_test, forced.predict_proba(x_test))
        heavy = fine_tuned(seed, model.n_features, unlabelled_weight=1.0).fit(x_train, y, labelled, layout)
        row["ablation: unlabelled weight 1.0"] = figures(y_test, heavy.predict_proba(x_test))
        blind = fine_tuned(seed, model.n_features).fit(x_train[:, :base], y, labelled, no_codes)
        row["ablation: no category codes"] = figures(y_test, blind.predict_proba(x_test[:, :base]))
        out[key] = {"figures": row, "blend chosen": chosen, "gate": gate(model, train, y, labelled)}
    return out


def gate(model: Model, train: pl.DataFrame, y: np.ndarray, labelled: np.ndarray) -> dict:
    """The finetune job's promotion decision with the revealed labels, and with as many labels on random rows."""
    ids = train[model.config.features.id_column].cast(pl.String)
    decisions = {}
    rng = np.random.default_rng(0)  # random labels: as many "frauds" and normals, on rows drawn at random
    noise = rng.choice(y.size, int(labelled.sum()), replace=False)
    noise_y = np.zeros(y.size, np.int64)
    noise_y[noise[: int(y.sum())]] = 1
    noise_labelled = np.zeros(y.size, bool)
    noise_labelled[noise] = True
    for kind, values, rows in (("true labels", y, labelled), ("random labels", noise_y, noise_labelled)):
        labels = pl.DataFrame(
            {"id": ids.filter(pl.Series(rows)), "label": values[rows].astype(np.int8), "category": None},
            schema={"id": pl.String, "label": pl.Int8, "category": pl.String},
        )
        _, report = finetune(model, train, labels)
        decisions[kind] = {"promote": report["promote"], "reason": report["reason"]}  # with the bootstrap share
    return decisions


def summarise(results: dict, seeds: tuple[int, ...]) -> dict:
    summary: dict = {}
    for name, by_seed in results.items():
        for key in by_seed[str(seeds[0])]:
            cells = {}
            for variant in VARIANTS:
                values = np.array([by_seed[str(s)][key]["figures"][variant] for s in seeds])
                cells[variant] = {"aucroc": float(values[:, 0].mean()), "aucpr": float(values[:, 1].mean())}
            blends = [by_seed[str(s)][key]["blend chosen"] for s in seeds]
            gates = {
                kind: sum(by_seed[str(s)][key]["gate"][kind]["promote"] for s in seeds)
                for kind in ("true labels", "random labels")
            }
            summary.setdefault(name, {})[key] = {"means": cells, "blends": blends, "promoted": gates}
    return summary


def markdown(summary: dict, seeds: tuple[int, ...]) -> str:
    lines = []
    for name, by_key in summary.items():
        keys = list(by_key)
        lines += [f"### {name} (mean of seeds {', '.join(map(str, seeds))}; AUCROC / AUCPR)", ""]
        lines += ["| | " + " | ".join(f"{k} of frauds labelled" for k in keys) + " |"]
        lines += ["|---|" + "---|" * len(keys)]
        for variant in VARIANTS:
            cells = [by_key[k]["means"][variant] for k in keys]
            text = [f"{c['aucroc']:.3f} / {c['aucpr']:.3f}" for c in cells]
            label = f"**{variant}**" if variant == "fine-tuned" else variant
            lines.append(f"| {label} | " + " | ".join(text) + " |")
        blends = ["; ".join(by_key[k]["blends"]) for k in keys]
        lines.append("| blend chosen per seed | " + " | ".join(blends) + " |")
        for kind in ("true labels", "random labels"):
            promoted = [f"{by_key[k]['promoted'][kind]}/{len(seeds)}" for k in keys]
            lines.append(f"| gate promotes ({kind}) | " + " | ".join(promoted) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--quick", action="store_true", help="one seed")
    parser.add_argument("--out", default="benchmarks/results/real_fraud")
    args = parser.parse_args()
    seeds = (args.seeds[0],) if args.quick else tuple(args.seeds)
    data = data_dir(args.data)
    warnings.simplefilter("ignore")  # the drift guard's lines: Year is dropped, the split is by time
    results: dict = {}
    started = time.perf_counter()
    for name in SETS:
        train, test, drop, id_column = load(data, name)
        for seed in seeds:
            results.setdefault(name, {})[str(seed)] = run_seed(train, test, drop, id_column, seed)
            print(f"{name} seed {seed}: {time.perf_counter() - started:.0f} s", flush=True)
    summary = summarise(results, seeds)
    text = markdown(summary, seeds)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"seeds": seeds, "summary": summary, "runs": results}, indent=1))
    out.with_suffix(".md").write_text(text + "\n")


if __name__ == "__main__":
    main()
