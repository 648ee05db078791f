"""Per-entity features through a real Kafka broker: the parity of one batch, many small batches and a stream
killed with SIGKILL mid-way (its entity state checkpointed with the offsets in --state-dir)."""

from __future__ import annotations

import signal
from collections import Counter
from pathlib import Path

import polars as pl
from polars.testing import assert_frame_equal

from segscope.config import load_config
from segscope.model import Model
from segscope.testing.data import make_card_stream
from tests.kafka_helpers import consume_all, count, create_topic, produce, records, start_stream, wait_until

PACK = Path(__file__).resolve().parents[1] / "configs" / "fraud.yaml"


def test_one_batch_small_batches_and_a_killed_stream_give_identical_features_and_scores(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    events = make_card_stream(400, days=20, seed=21)
    cut = int(events.height * 0.6)
    history, live = events[:cut], events[cut:].drop("is_fraud")
    model = Model(load_config(PACK)).fit(history)
    model.save(tmp_path / "bundle")
    names = model.entities_.names if model.entities_ is not None else []

    whole = model.score(live, state=model.new_state())
    state = model.new_state()
    small = pl.concat([model.score(live[i : i + 97], state=state) for i in range(0, live.height, 97)])
    assert_frame_equal(whole, small, check_exact=True)

    topic = "entities.in"
    create_topic(kafka_bootstrap, topic, partitions=3)
    produce(kafka_bootstrap, topic, records(live), keys=[c.encode() for c in live["card_id"]])  # keyed by card
    args = [
        "--in-topic", topic, "--out-topic", "entities.out", "--group", "g-entities", "--batch-size", "300",
        "--state-dir", str(tmp_path / "state"), "--stats-interval", "2",
    ]  # fmt: skip
    proc = start_stream(tmp_path / "bundle", kafka_bootstrap, *args)
    wait_until(lambda: count(kafka_bootstrap, "entities.out") >= live.height // 2, timeout=240, proc=proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    proc = start_stream(tmp_path / "bundle", kafka_bootstrap, *args, "--idle-exit", "4")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]

    out = consume_all(kafka_bootstrap, "entities.out", idle=5)
    seen = Counter(r["id"] for r in out)
    assert set(seen) == set(live["txn_id"])  # every record scored
    expected = {r["txn_id"]: r for r in whole.select("txn_id", *names, "anomaly_score").iter_rows(named=True)}
    differ = [r["id"] for r in out if any(r[c] != expected[r["id"]][c] for c in [*names, "anomaly_score"])]
    assert not differ, f"{len(differ)} of {len(out)} records differ from the batch run, e.g. {differ[:3]}"
    duplicates = sum(c - 1 for c in seen.values())
    print(f"{live.height:,} records, SIGKILL at half-way: identical to the batch run, {duplicates} re-scored twice")
