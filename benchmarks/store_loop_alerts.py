"""The README's loop from the label store alone, on public labelled sets: how many alerts the new version raises.

    python benchmarks/store_loop_alerts.py [--data ../shared/data] [--sets thyroid,cardio] [--rounds 3 --per 30]
        [--history]

Per set: `segscope fit` on the earlier part (claims: 1994-95; the others a random 60%), `score --store` over it,
`--rounds` rounds of `label queue -n PER` labelled with their truth (`label import`), `finetune --store` without
`--data` (`--history`: with `--data` the earlier part too, all of its records where the store keeps a sample, so a
part above max_fit_rows is sampled), then `score` of the later part by the version served before and after: alerts,
recall, precision, and AUCROC / AUCPR of `score` over every later record. The alert policy is a rate, so the two
versions should raise about as many alerts; the labels should move them onto the anomalies. Every step is the
`segscope` command, as a user runs it.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import polars as pl

from _adbench import data_dir

SETS = ("thyroid", "mammography", "cardio", "annthyroid", "fraud_ethereum_accounts")
COMMAND = [str(Path(sys.executable).with_name("segscope"))]


def run(*args: object) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([*COMMAND, *map(str, args)], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"segscope {' '.join(map(str, args))}: {done.stderr.strip()}")
    return done


def split(data: Path, name: str, seed: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    frame = pl.read_parquet(data / f"{name}.parquet")
    frame = frame.drop([c for c in ("Index", "PolicyNumber") if c in frame.columns])
    frame = frame.with_row_index("rid").with_columns(pl.col("rid").cast(pl.Int64))
    if name == "fraud_vehicle_insurance":
        return frame.filter(pl.col("Year") < 1996).drop("Year"), frame.filter(pl.col("Year") == 1996).drop("Year")
    early = pl.Series(np.random.default_rng(seed).random(frame.height) < 0.6)
    return frame.filter(early), frame.filter(~early)


def alerts(bundle: Path, later: Path, out: Path) -> dict[str, float]:
    run("score", later, "--bundle", bundle, "--out", out)
    from sklearn.metrics import average_precision_score, roc_auc_score

    scored = pl.read_parquet(out, columns=["rid", "is_alert", "score"]).join(
        pl.read_parquet(later, columns=["rid", "label"]), on="rid"
    )
    alert, truth = scored["is_alert"].to_numpy(), scored["label"].to_numpy() == 1
    hit = int((alert & truth).sum())
    score = scored["score"].to_numpy()
    return {
        "alerts": int(alert.sum()),
        "recall": hit / max(int(truth.sum()), 1),
        "precision": hit / max(int(alert.sum()), 1),
        # the ranking of every later record, alerted or not: labels can lift the anomalies like the labelled ones
        # and sink the kinds no label showed
        "aucroc": float(roc_auc_score(truth, score)),
        "aucpr": float(average_precision_score(truth, score)),
    }


def one(data: Path, name: str, seed: int, rounds: int, per: int, work: Path, history: bool) -> dict[str, object]:
    early, later = split(data, name, seed)
    early.write_parquet(work / "early.parquet")
    later.write_parquet(work / "later.parquet")
    run("fit", work / "early.parquet", "--bundle", work / "reg", "--id-column", "rid", "--drop", "label")
    shutil.copytree(work / "reg", work / "before")
    store = work / "labels.db"
    run(
        "score",
        work / "early.parquet",
        "--bundle",
        work / "reg",
        "--out",
        work / "early-scored.parquet",
        "--store",
        store,
    )
    truth = dict(zip(early["rid"].to_list(), early["label"].to_list(), strict=True))
    positives = 0
    for r in range(rounds):
        ids = [
            json.loads(line)["id"]
            for line in run("label", "queue", "--store", store, "-n", per, "--json").stdout.splitlines()
            if line.strip()
        ]
        labels = ["anomaly" if truth[int(i)] == 1 else "normal" for i in ids]
        positives += labels.count("anomaly")
        pl.DataFrame({"id": [str(i) for i in ids], "label": labels}).write_csv(work / f"labels-{r}.csv")
        run("label", "import", work / f"labels-{r}.csv", "--store", store)
    extra = ["--data", work / "early.parquet"] if history else []
    said = run("finetune", "--bundle", work / "reg", "--store", store, *extra).stderr
    return {
        "set": name,
        "seed": seed,
        "labelled_anomalies": positives,
        "promoted": re.search(r"^promoted:", said, re.MULTILINE) is not None,  # not "not promoted:"
        "before": alerts(work / "before", work / "later.parquet", work / "out.parquet"),
        "after": alerts(work / "reg", work / "later.parquet", work / "out.parquet"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None)
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--per", type=int, default=30)
    parser.add_argument("--history", action="store_true", help="finetune with --data the earlier part as well")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "store_loop_alerts.json"))
    args = parser.parse_args()
    data, results = data_dir(args.data), []
    for name in args.sets.split(","):
        for seed in range(args.seeds):
            with tempfile.TemporaryDirectory(prefix="segscope-loop-") as tmp:
                results.append(one(data, name, seed, args.rounds, args.per, Path(tmp), args.history))
            b, a = results[-1]["before"], results[-1]["after"]
            ratio = a["alerts"] / max(b["alerts"], 1)
            print(
                f"{name} seed {seed}: alerts {b['alerts']} -> {a['alerts']} (x{ratio:.2f}), recall {b['recall']:.3f} "
                f"-> {a['recall']:.3f}, precision {b['precision']:.3f} -> {a['precision']:.3f}, AUCROC "
                f"{b['aucroc']:.3f} -> {a['aucroc']:.3f}, AUCPR {b['aucpr']:.3f} -> {a['aucpr']:.3f}"
                f" ({'promoted' if results[-1]['promoted'] else 'not promoted'})",
                flush=True,
            )
    Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
