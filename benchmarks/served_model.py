"""What labels do to the *served* model: the whole ``finetune`` job (gate included) on real data, judged by what
the registry serves afterwards, against a plain XGBoost on the same labels and the unsupervised model.

    python benchmarks/served_model.py [--data ../shared/data] [--draws 10] [--sets a,b] [--shares 0.05,0.2]
        [--out served_model] [--resume]

Protocols (every one: the unsupervised model fitted on the training part without labels, then labels revealed,
``segscope.tuning.finetune`` run, and the served model = the candidate if the gate promoted it, else the current):

* ``fraud_vehicle_insurance``: fit on the 1994-95 claims (``Year`` and the label dropped, ``PolicyNumber`` the id),
  a share of their frauds and 200 random normals labelled; scored on 1996.
* ``fraud_ethereum_accounts``: random 70/30 split (seed 0); a share of the training frauds labelled, **no normal**
  (positives only).
* public sets (``cardio``, ``thyroid``, ``mammography``, ``annthyroid``, ``unsw_nb15_backdoor``, ``nslkdd``,
  ``ai4i2020``): random 70/30 split (seed 0, at most 20,000 rows per set), a share of the training anomalies and
  the same share of the training normals labelled.

Per draw the labelled rows change (seed = draw). ``plain xgboost`` is ``XGBClassifier()`` with its defaults on the
columns one-hot encoded, unlabelled rows as normal. The gate's two error rates: **power** = share of draws where
the candidate is better than the current version on the test part (AUCPR) and the gate promoted it; **false
promotion** = share of draws where labels put on random rows (as many anomalies and normals) were promoted.

Writes benchmarks/results/<out>.json and .md after every draw (means ± standard deviations over the draws so
far); ``--resume`` keeps the draws already written and runs the rest. The plain XGBoost fit is timed too: the
summary's ``fine-tune / plain fit`` is the median ratio of the whole ``finetune`` (gate included) to it.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import xgboost as xgb
from sklearn.metrics import average_precision_score, roc_auc_score

from segscope._io import write_text_atomic
from segscope.config import SegscopeConfig
from segscope.model import Model
from segscope.tuning import finetune

from _adbench import data_dir

PUBLIC = ("cardio", "thyroid", "mammography", "annthyroid", "unsw_nb15_backdoor", "nslkdd", "ai4i2020")
SETS = ("fraud_vehicle_insurance", "fraud_ethereum_accounts", *PUBLIC)
MAX_ROWS = 20_000
RESULTS = Path(__file__).parent / "results"


def load(data: Path, name: str) -> tuple[pl.DataFrame, pl.DataFrame, tuple[str, ...], str]:
    """(train, test, columns to drop, id column); ``label`` is 1 for anomalies."""
    frame = pl.read_parquet(data / f"{name}.parquet")
    if name == "fraud_vehicle_insurance":
        train, test = frame.filter(pl.col("Year") < 1996), frame.filter(pl.col("Year") == 1996)
        return train, test, ("label", "Year"), "PolicyNumber"
    drop = {"fraud_ethereum_accounts": ("label", "Index"), "nslkdd": ("label", "attack_type", "attack_category")}
    drop_cols = tuple(c for c in drop.get(name, ("label",)) if c in frame.columns)
    if name == "ai4i2020":  # the failure-mode flags give the label away
        flags = ("UDI", "Product ID", "Machine failure", "TWF", "HDF", "PWF", "OSF", "RNF")
        drop_cols += tuple(c for c in flags if c in frame.columns)
    frame = frame.with_row_index("row")
    if frame.height > MAX_ROWS / 0.7 * 1.0:
        frame = frame.sample(int(MAX_ROWS / 0.7), seed=0)
    mask = pl.Series(np.random.default_rng(0).random(frame.height) < 0.7)
    return frame.filter(mask), frame.filter(~mask), drop_cols, "row"


def one_hot(train: pl.DataFrame, test: pl.DataFrame, drop: tuple[str, ...], id_column: str) -> tuple[np.ndarray, ...]:
    columns = [c for c in train.columns if c not in (*drop, id_column)]
    both = pl.concat([train.select(columns), test.select(columns)], how="vertical_relaxed")
    both = both.to_dummies([c for c in columns if both.schema[c] in (pl.String, pl.Categorical)])
    matrix = both.cast(pl.Float64, strict=False).to_numpy()
    return matrix[: train.height], matrix[train.height :]


def reveal(name: str, y: np.ndarray, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(1 for the revealed anomalies, which rows are labelled) as the set's protocol says."""
    rng = np.random.default_rng(seed)
    anomalies, normals = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    shown = rng.choice(anomalies, max(2, int(np.ceil(share * anomalies.size))), replace=False)
    labelled = np.zeros(y.size, bool)
    labelled[shown] = True
    if name == "fraud_vehicle_insurance":
        labelled[rng.choice(normals, 200, replace=False)] = True
    elif name != "fraud_ethereum_accounts":
        labelled[rng.choice(normals, int(np.ceil(share * normals.size)), replace=False)] = True
    revealed = np.zeros(y.size, np.int64)
    revealed[shown] = 1
    return revealed, labelled


def shuffled(y: np.ndarray, labelled: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """As many anomaly and normal labels, on rows drawn at random (an analyst clicking at random)."""
    rng = np.random.default_rng(10_000 + seed)
    rows = rng.choice(y.size, int(labelled.sum()), replace=False)
    noise_y = np.zeros(y.size, np.int64)
    noise_y[rows[: int(y.sum())]] = 1
    noise_labelled = np.zeros(y.size, bool)
    noise_labelled[rows] = True
    return noise_y, noise_labelled


def as_labels(ids: pl.Series, y: np.ndarray, labelled: np.ndarray) -> pl.DataFrame:
    return pl.DataFrame(
        {"id": ids.filter(pl.Series(labelled)), "label": y[labelled].astype(np.int8), "category": None},
        schema={"id": pl.String, "label": pl.Int8, "category": pl.String},
    )


def figures(y: np.ndarray, score: np.ndarray) -> dict[str, float]:
    return {"aucroc": float(roc_auc_score(y, score)), "aucpr": float(average_precision_score(y, score))}


def evidence(report: dict[str, Any]) -> dict[str, Any]:
    """What each promotion rule reads from the gate's report (so a rule can be re-decided from the results
    exactly: the candidate is the same whatever the rule): better at all, the permutation p-value, the least gain
    without one anomaly, the share of bootstrap resamples better and the paired t-test's p-value."""
    return {
        "better": "not better than the current version" not in report["reason"] and "candidate" in report,
        "p": report.get("permutation_p_value"),
        "least": report.get("least_gain_without_one"),
        "share": report.get("share_of_resamples_better"),
        "t": report.get("paired_t_p_value"),
    }


def draw_once(
    model: Model, train: pl.DataFrame, test: pl.DataFrame, prepared: dict[str, Any], share: float, draw: int
) -> dict[str, Any]:
    """One draw: fine-tune on the revealed labels and on as many labels put on random rows, and a plain XGBoost."""
    name, ids, current = prepared["name"], prepared["ids"], prepared["current"]
    y_test = test["label"].to_numpy()
    y, labelled = reveal(name, train["label"].to_numpy(), share, draw)
    started = time.perf_counter()
    candidate, report = finetune(model, train, as_labels(ids, y, labelled))
    seconds = time.perf_counter() - started
    cand = figures(y_test, candidate.score(test)["score"].to_numpy())
    started = time.perf_counter()
    plain = xgb.XGBClassifier(n_jobs=2, random_state=draw).fit(prepared["plain_train"], y)
    plain_seconds = time.perf_counter() - started
    noise_y, noise_labelled = shuffled(y, labelled, draw)
    _, noise_report = finetune(model, train, as_labels(ids, noise_y, noise_labelled))
    return {
        "draw": draw,
        "labelled_anomalies": int(y.sum()),
        "labelled": int(labelled.sum()),
        "promoted": bool(report["promote"]),
        "reason": report["reason"],
        "chosen": report.get("candidates", {}).get("chosen"),
        "candidate": cand,
        "served": cand if report["promote"] else current,
        "plain xgboost": figures(y_test, plain.predict_proba(prepared["plain_test"])[:, 1]),
        "gate": report["split"],
        "evidence": evidence(report),
        "shuffled promoted": bool(noise_report["promote"]),
        "shuffled reason": noise_report["reason"],
        "shuffled evidence": evidence(noise_report),
        "seconds": seconds,
        "plain seconds": plain_seconds,
    }


def run(data: Path, names: list[str], shares: list[float], draws: int, out: Path) -> dict[str, Any]:
    """Every set, share and draw, written to ``out`` after each draw (a run stopped half-way keeps what it did;
    ``--resume`` starts from it)."""
    results: dict[str, Any] = json.loads(out.read_text())["results"] if out.exists() else {}
    for name in names:
        train, test, drop, id_column = load(data, name)
        model = Model(SegscopeConfig().with_features(id_column=id_column, drop=drop)).fit(train)
        current = figures(test["label"].to_numpy(), model.score(test)["score"].to_numpy())
        plain_train, plain_test = one_hot(train, test, drop, id_column)
        prepared = {
            "name": name,
            "ids": train[id_column].cast(pl.String),
            "current": current,
            "plain_train": plain_train,
            "plain_test": plain_test,
        }
        entry = results.setdefault(name, {"shares": {}})
        entry.update(rows=[train.height, test.height], current=current)
        for share in shares:
            runs = entry["shares"].setdefault(f"{share:.0%}", [])
            for draw in range(draws):
                if any(r["draw"] == draw for r in runs):
                    continue
                runs.append(draw_once(model, train, test, prepared, share, draw))
                print(f"{name} {share:.0%} draw {draw}: {json.dumps(runs[-1])}", flush=True)
                write(out, results)
    return results


def write(out: Path, results: dict[str, Any]) -> None:
    summary = summarise(results)
    write_text_atomic(out, json.dumps({"results": results, "summary": summary}, indent=1))
    write_text_atomic(out.with_suffix(".md"), markdown(summary))


def _spread(values: list[float]) -> list[float]:
    """[mean, standard deviation] over the draws."""
    return [float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0]


def _says_what_is_missing(reason: str) -> bool:
    """A refusal is one line that ends with what to do or what was missing."""
    return "\n" not in reason and ("label more" in reason or "not better" in reason or "label " in reason)


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    better = promoted_when_better = shuffled_promoted = total = 0
    for name, result in results.items():
        for key, runs in result["shares"].items():
            if not runs:
                continue
            spread = {
                variant: {m: _spread([r[variant][m] for r in runs]) for m in ("aucroc", "aucpr")}
                for variant in ("served", "candidate", "plain xgboost")
            }
            truly = [r["candidate"]["aucpr"] > result["current"]["aucpr"] for r in runs]
            refusals = [r["reason"] for r in runs if not r["promoted"]] + [
                r["shuffled reason"] for r in runs if not r["shuffled promoted"]
            ]
            summary.setdefault(name, {})[key] = {
                **spread,
                "current": result["current"],
                "served - plain aucpr": _spread([r["served"]["aucpr"] - r["plain xgboost"]["aucpr"] for r in runs]),
                "promoted": sum(r["promoted"] for r in runs),
                "draws": len(runs),
                "candidate better": sum(truly),
                "promoted when better": sum(r["promoted"] and t for r, t in zip(runs, truly, strict=True)),
                "shuffled promoted": sum(r["shuffled promoted"] for r in runs),
                "refusals saying what is missing": [
                    sum(
                        ("label more" in reason or "not better" in reason) and "\n" not in reason for reason in refusals
                    ),
                    len(refusals),
                ],
                "chosen": dict(Counter(r.get("chosen") for r in runs)),
                "labelled anomalies": float(np.mean([r["labelled_anomalies"] for r in runs])),
                "seconds": float(np.median([r["seconds"] for r in runs])),
                "fine-tune / plain fit": float(
                    np.median([r["seconds"] / r["plain seconds"] for r in runs if "plain seconds" in r] or [np.nan])
                ),
            }
            better += sum(truly)
            promoted_when_better += summary[name][key]["promoted when better"]
            shuffled_promoted += summary[name][key]["shuffled promoted"]
            total += len(runs)
    summary["_error rates"] = {
        "power (promoted when the candidate is better on the test part)": [promoted_when_better, better],
        "false promotion (shuffled labels promoted)": [shuffled_promoted, total],
    }
    return summary


def markdown(summary: dict[str, Any]) -> str:
    lines = [
        "| set | labelled | draws | served AUCPR | plain XGBoost AUCPR | served - plain | served AUCROC | "
        "plain AUCROC | unsupervised | promoted when better | shuffled promoted |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, by_share in summary.items():
        if name.startswith("_"):
            continue
        for key, row in by_share.items():

            def cell(v: str, m: str, row: dict[str, Any] = row) -> str:
                return f"{row[v][m][0]:.3f} ± {row[v][m][1]:.3f}"

            diff = row["served - plain aucpr"]
            lines.append(
                f"| {name} | {key} ({row['labelled anomalies']:.0f} anomalies) | {row['draws']} | "
                f"**{cell('served', 'aucpr')}** | {cell('plain xgboost', 'aucpr')} | {diff[0]:+.3f} ± {diff[1]:.3f} | "
                f"{cell('served', 'aucroc')} | {cell('plain xgboost', 'aucroc')} | "
                f"{row['current']['aucroc']:.3f} / {row['current']['aucpr']:.3f} | "
                f"{row['promoted when better']}/{row['candidate better']} | {row['shuffled promoted']}/{row['draws']} |"
            )
    rates = summary["_error rates"]
    lines += ["", *(f"- {k}: {v[0]} of {v[1]}" for k, v in rates.items())]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--draws", type=int, default=10)
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--shares", default="0.05,0.2")
    parser.add_argument("--out", default="served_model")
    parser.add_argument("--resume", action="store_true", help="keep the draws already in --out and run the rest")
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # drift lines: the splits are by time or at random, as the protocol says
    data = data_dir(args.data)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{args.out}.json"
    if out.exists() and not args.resume:
        out.unlink()
    results = run(data, args.sets.split(","), [float(s) for s in args.shares.split(",")], args.draws, out)
    print(markdown(summarise(results)))


if __name__ == "__main__":
    main()
