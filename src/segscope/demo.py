"""The demo's data and its simulated analysts: everything `segscope demo` does that is not printing.

The demo generates card transactions with planted fraud (:func:`~segscope.testing.data.make_transactions`),
fits, scores, and closes the loop: analysts review the history's top alerts, chargebacks report some of the
frauds the alerts missed, and those labels fine-tune a new version.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from segscope.model import Model
from segscope.testing.data import make_transactions

__all__ = ["DemoFiles", "SimulatedReview", "generate", "simulate_analysts"]


@dataclass(frozen=True)
class DemoFiles:
    history: Path
    new: Path
    scored: Path
    bundle: Path
    labels: Path


def generate(out_dir: Path, rows: int) -> DemoFiles:
    """Write ``rows`` historical and ``rows // 5`` new transactions (1% planted fraud) into ``out_dir``; the
    demo's own bundle or registry from a last run is removed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = DemoFiles(
        history=out_dir / "history.parquet",
        new=out_dir / "new.parquet",
        scored=out_dir / "scored.parquet",
        bundle=out_dir / "bundle",
        labels=out_dir / "labels.csv",
    )
    shutil.rmtree(files.bundle, ignore_errors=True)
    make_transactions(rows, seed=0).write_parquet(files.history)
    make_transactions(rows // 5, seed=1).write_parquet(files.new)
    return files


@dataclass(frozen=True)
class SimulatedReview:
    reviewed: int
    confirmed: int
    chargebacks: int


def simulate_analysts(model: Model, history: Path, labels: Path, *, review: int) -> SimulatedReview:
    """Analysts label the history's top ``review`` alerts by its planted truth, and chargebacks report 80% of the
    frauds below them (card fraud is mostly charged back within weeks); the labels go to ``labels``
    (``id,label,category``)."""
    scored = pl.read_parquet(history).pipe(model.score).sort("score", descending=True)
    reviewed = scored.head(review)
    missed = scored.slice(review).filter(pl.col("is_fraud") == 1).sample(fraction=0.8, seed=0)  # 30%: too few to
    # show a gain in 95% of resamples of the held-out part
    labelled = pl.concat([reviewed, missed])
    pl.DataFrame(
        {
            "id": labelled["txn_id"],
            "label": labelled["is_fraud"].replace_strict({1: "anomaly", 0: "normal"}, return_dtype=pl.String),
            "category": ["alert review"] * reviewed.height + ["chargeback"] * missed.height,
        }
    ).write_csv(labels)
    return SimulatedReview(reviewed.height, int(reviewed["is_fraud"].sum()), missed.height)
