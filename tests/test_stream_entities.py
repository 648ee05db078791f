"""Per-entity features through a real Kafka broker: the parity of one batch, many small batches and a stream
killed with SIGKILL mid-way (its entity state checkpointed with the offsets in --state-dir)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import polars as pl
from polars.testing import assert_frame_equal

from segscope.config import load_config
from segscope.model import Model
from segscope.testing.data import make_card_stream
from tests.kafka_helpers import (
    consume_all,
    consume_dead_letters,
    count,
    create_topic,
    group_caught_up,
    group_members,
    produce,
    records,
    start_stream,
    stream_killed_midway,
    terminate,
    wait_until,
)

PACK = Path(__file__).resolve().parents[1] / "configs" / "fraud.yaml"


def _fitted(tmp_path: Path, seed: int) -> tuple[Model, pl.DataFrame, list[str]]:
    events = make_card_stream(400, days=20, seed=seed)
    cut = int(events.height * 0.6)
    history, live = events[:cut], events[cut:].drop("is_fraud")
    model = Model(load_config(PACK)).fit(history)
    model.save(tmp_path / "bundle")
    return model, live, list(model.entity_features)


def _same_as_batch(out: list[dict], whole: pl.DataFrame, names: list[str]) -> list[str]:
    # exact: the stream runs on this machine (another process, the same CPU and libraries), and JSON keeps floats
    expected = {r["txn_id"]: r for r in whole.select("txn_id", *names, "anomaly_score").iter_rows(named=True)}
    return [r["id"] for r in out if any(r[c] != expected[r["id"]][c] for c in [*names, "anomaly_score"])]


def test_one_batch_small_batches_and_a_killed_stream_give_identical_features_and_scores(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    model, live, names = _fitted(tmp_path, 21)

    whole = model.score(live, state=model.new_state())
    state = model.new_state()
    small = pl.concat([model.score(live[i : i + 97], state=state) for i in range(0, live.height, 97)])
    assert_frame_equal(whole, small, check_exact=True)  # same process, same CPU: exact

    topic = "entities.in"
    create_topic(kafka_bootstrap, topic, partitions=3)
    produce(kafka_bootstrap, topic, records(live), keys=[c.encode() for c in live["card_id"]])  # keyed by card
    args = [
        "--in-topic", topic, "--out-topic", "entities.out", "--group", "g-entities", "--batch-size", "300",
        "--state-dir", str(tmp_path / "state"), "--stats-interval", "2",
    ]  # fmt: skip
    stream_killed_midway(tmp_path / "bundle", kafka_bootstrap, args, "entities.out", live.height)

    out = consume_all(kafka_bootstrap, "entities.out", idle=5)
    seen = Counter(r["id"] for r in out)
    assert set(seen) == set(live["txn_id"])  # every record scored
    differ = _same_as_batch(out, whole, names)
    assert not differ, f"{len(differ)} of {len(out)} records differ from the batch run, e.g. {differ[:3]}"
    duplicates = sum(c - 1 for c in seen.values())
    print(f"{live.height:,} records, SIGKILL at half-way: identical to the batch run, {duplicates} re-scored twice")


def test_a_rebalance_hands_each_partition_its_entities(kafka_bootstrap: str, tmp_path: Path) -> None:
    """A second process joins mid-stream: the partitions it takes over continue from the checkpoints the first
    one wrote, so every record still gets the features and score of the batch run."""
    model, live, names = _fitted(tmp_path, 22)
    whole = model.score(live, state=model.new_state())
    topic, out_topic = "entities.rebalance.in", "entities.rebalance.out"
    create_topic(kafka_bootstrap, topic, partitions=4)
    half = live.height // 2
    keys = [c.encode() for c in live["card_id"]]
    produce(kafka_bootstrap, topic, records(live[:half]), keys=keys[:half])
    args = [
        "--in-topic", topic, "--out-topic", out_topic, "--group", "g-entities-rebalance", "--batch-size", "200",
        "--state-dir", str(tmp_path / "state"), "--stats-interval", "2",
    ]  # fmt: skip
    first = start_stream(tmp_path / "bundle", kafka_bootstrap, *args)
    wait_until(lambda: count(kafka_bootstrap, out_topic) >= half // 2, timeout=240, proc=first)
    second = start_stream(tmp_path / "bundle", kafka_bootstrap, *args, "--idle-exit", "6")  # joins: a rebalance
    wait_until(lambda: group_members(kafka_bootstrap, "g-entities-rebalance") == 2, proc=second)
    produce(kafka_bootstrap, topic, records(live[half:]), keys=keys[half:])  # both now have work
    wait_until(lambda: group_caught_up(kafka_bootstrap, "g-entities-rebalance", topic), timeout=240, proc=first)
    _, err2 = second.communicate(timeout=120)
    code, err1 = terminate(first)
    assert code == 0, err1[-2000:]
    out = consume_all(kafka_bootstrap, out_topic, idle=5)
    assert {r["id"] for r in out} == set(live["txn_id"])
    assert not _same_as_batch(out, whole, names)
    assert int(err2.split("stream stopped: ")[1].split(" in")[0].replace(",", "")) > 0  # it really took partitions


def test_hostile_records_are_dead_letters_and_the_entities_go_on(kafka_bootstrap: str, tmp_path: Path) -> None:
    model, live, names = _fitted(tmp_path, 23)
    good = records(live[:500])
    hostile = [
        b'{"txn_id":"h1","ts":"2025-03-20 10:00:00","merchant":"m1","country":"FR","amount":5.0}',  # no card
        b'{"txn_id":"h2","card_id":"c00001","ts":"not a time","merchant":"m1","country":"FR","amount":5.0}',
        b'{"txn_id":"h3","card_id":["c00001"],"ts":"2025-03-20 10:00:00","merchant":"m1","country":"FR","amount":5}',
        b'{"txn_id":"h4","card_id":"c00001","ts":"2025-03-20 10:00:00","merchant":"m1","country":"FR","amount":"x"}',
    ]
    topic = "entities.hostile.in"
    create_topic(kafka_bootstrap, topic, partitions=1)
    produce(kafka_bootstrap, topic, [*good[:250], *hostile, *good[250:]])
    args = ["--in-topic", topic, "--out-topic", "entities.hostile.out", "--group", "g-hostile",
            "--state-dir", str(tmp_path / "state"), "--idle-exit", "4"]  # fmt: skip
    proc = start_stream(tmp_path / "bundle", kafka_bootstrap, *args)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    reasons = sorted(d["reason"] for d in consume_dead_letters(kafka_bootstrap, f"{topic}.dlq"))
    assert len(reasons) == 4 and any("'ts' is not an ISO-8601" in r for r in reasons)
    assert any("missing field 'card_id'" in r for r in reasons)
    out = consume_all(kafka_bootstrap, "entities.hostile.out")
    whole = model.score(live[:500], state=model.new_state())
    assert len(out) == 500 and not _same_as_batch(out, whole, names)  # the bad records changed no entity
