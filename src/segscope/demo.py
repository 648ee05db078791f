"""The demo's data and its simulated analysts: everything `segscope demo` does that is not printing.

The demo generates card payments whose frauds look ordinary one by one (card-testing bursts, a country new for
the card, an amount far from the card's habit: :func:`~segscope.testing.data.make_card_stream`), fits the fraud
pack on the first 30 days, scores the last 15 as a stream of small batches into a label store, and closes the
loop: analysts review the queue, chargebacks report most frauds the alerts missed, and those labels fine-tune a
new version that is promoted when it is better on held-out records. The 7 days after those are kept apart: both
versions score them, as the traffic nobody has labelled yet.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl

from segscope.labels.parse import LabelIn
from segscope.labels.store import LabelStore
from segscope.testing.data import make_card_stream

__all__ = ["DemoFiles", "SimulatedReview", "generate", "simulate_analysts"]

HISTORY_DAYS, NEW_DAYS, LATER_DAYS = 30, 15, 7


@dataclass(frozen=True)
class DemoFiles:
    history: Path
    new: Path
    later: Path
    scored: Path
    bundle: Path
    labels: Path
    store: Path
    report: Path


def generate(out_dir: Path, rows: int) -> DemoFiles:
    """Write about ``rows`` payments of the first 30 days (history), the 15 days after them (new) and the 7 after
    those (later) into ``out_dir``; the demo's bundle, registry and label store from a last run are removed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = DemoFiles(
        history=out_dir / "history.parquet",
        new=out_dir / "new.parquet",
        later=out_dir / "later.parquet",
        scored=out_dir / "scored.parquet",
        bundle=out_dir / "bundle",
        labels=out_dir / "labels.csv",
        store=out_dir / "labels.db",
        report=out_dir / "report.html",
    )
    shutil.rmtree(files.bundle, ignore_errors=True)
    files.store.unlink(missing_ok=True)
    start = datetime(2025, 3, 1)
    payments = make_card_stream(max(100, rows // 47), days=HISTORY_DAYS + NEW_DAYS + LATER_DAYS, seed=0, start=start)
    cut, last = start + timedelta(days=HISTORY_DAYS), start + timedelta(days=HISTORY_DAYS + NEW_DAYS)
    payments.filter(pl.col("ts") < cut).write_parquet(files.history)
    payments.filter((pl.col("ts") >= cut) & (pl.col("ts") < last)).write_parquet(files.new)
    payments.filter(pl.col("ts") >= last).write_parquet(files.later)
    return files


@dataclass(frozen=True)
class SimulatedReview:
    reviewed: int
    confirmed: int
    chargebacks: int


def simulate_analysts(store: LabelStore, scored: pl.DataFrame, labels: Path, *, review: int) -> SimulatedReview:
    """Analysts label the first ``review`` records of the store's queue by the planted truth, and chargebacks
    report 80% of the frauds nobody reviewed (card fraud is mostly charged back within weeks); the labels go to
    the store and to ``labels`` (``id,label,category``)."""
    truth = dict(zip(scored["txn_id"].to_list(), scored["is_fraud"].to_list(), strict=True))
    queued = [str(r["id"]) for r in store.queue(review)]
    reviewed = set(queued)
    missed = (
        scored.filter((pl.col("is_fraud") == 1) & ~pl.col("txn_id").is_in(list(reviewed)))
        .sample(fraction=0.8, seed=0)["txn_id"]
        .to_list()
    )
    rows = [(i, "anomaly" if truth[i] else "normal", "queue review") for i in queued]
    rows += [(i, "anomaly", "chargeback") for i in missed]
    store.add_labels([LabelIn(i, label, "demo-analyst", category) for i, label, category in rows], source="import")
    pl.DataFrame(rows, schema=["id", "label", "category"], orient="row").write_csv(labels)
    return SimulatedReview(len(queued), sum(truth[i] for i in queued), len(missed))
