"""`segscope stream` through broker outages: the broker of the test is stopped (a controlled shutdown, or SIGKILL)
for 5 s and then for 60 s while records arrive and transactions are open, and started again on the same port and
data. Three streams (exactly-once; at-least-once; at-least-once whose outputs time out after 10 s, so an outage
loses them and it goes back to its last commit; each with per-entity features checkpointed in --state-dir) must
run on by themselves, catch up, and give every input record the features and score of one batch run;
exactly-once, a read_committed reader sees each input's output once and the summary counts each record once."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest

from segscope.config import load_config
from segscope.model import Model
from segscope.testing.data import make_card_stream
from tests.kafka_helpers import (
    Feeder,
    broker,
    committed_offsets,
    consume_all,
    create_topic,
    free_port,
    group_caught_up,
    kill_broker,
    produce,
    read_committed,
    records,
    start_stream,
    terminate,
    wait_until,
)

PACK = Path(__file__).resolve().parents[1] / "configs" / "fraud.yaml"
FEED_SECONDS = 110  # the input arrives at a steady rate over this long, through both outages


def _committed(bootstrap: str, group: str) -> int:
    try:
        return sum(committed_offsets(bootstrap, group).values())
    except Exception:  # the coordinator is not back yet
        return -1


def _tail(log: Path) -> str:
    """What a stream wrote, without the client's connection warnings of an outage."""
    lines = log.read_text(errors="replace").splitlines()
    return "\n".join(line for line in lines if "Connection refused" not in line)[-4000:]


def _same_as_batch(out: list[dict], whole, names: list[str]) -> list[str]:  # type: ignore[no-untyped-def]
    expected = {r["txn_id"]: r for r in whole.select("txn_id", *names, "anomaly_score").iter_rows(named=True)}
    return [r["id"] for r in out if any(r[c] != expected[r["id"]][c] for c in [*names, "anomaly_score"])]


@pytest.mark.parametrize("kind", ["stop", "kill"])
def test_outages_of_5_and_60_seconds_end_with_every_record_scored_exactly_once(tmp_path: Path, kind: str) -> None:
    events = make_card_stream(400, days=20, seed=61)
    cut = int(events.height * 0.6)
    history, live = events[:cut], events[cut:].drop("is_fraud")
    model = Model(load_config(PACK)).fit(history)
    model.save(tmp_path / "bundle")
    names = list(model.entity_features)
    whole = model.score(live, state=model.new_state())

    data = tmp_path / "kafka"
    bootstrap = broker("start", data, free_port())
    streams = {}
    try:
        create_topic(bootstrap, "outage.in", partitions=3)
        keys = [c.encode() for c in live["card_id"]]
        feeder = Feeder(bootstrap, "outage.in", records(live), keys, seconds=FEED_SECONDS)
        feeder.start()
        # "lost": outputs wait 2 s before they are sent, so the 60 s outage always finds some in flight (a stream
        # caught up with the feed may have none the moment the broker goes), and they time out after 10 s
        lost = ["--kafka-option", "delivery.timeout.ms=10000", "--kafka-option", "linger.ms=2000"]
        kinds = {"eos": ["--exactly-once"], "alo": [], "lost": lost}
        logs = {mode: tmp_path / f"{mode}.log" for mode in kinds}
        for mode, extra in kinds.items():
            streams[mode] = start_stream(
                tmp_path / "bundle", bootstrap, "--in-topic", "outage.in", "--out-topic", f"outage.{mode}",
                "--group", f"g-{mode}", "--batch-size", "500", "--state-dir", str(tmp_path / f"state-{mode}"),
                "--stats-interval", "5", *extra, log=logs[mode],
            )  # fmt: skip

        def wait(mode: str, predicate, timeout: float) -> None:  # type: ignore[no-untyped-def]
            wait_until(predicate, timeout=timeout, proc=streams[mode], explain=lambda: f"{mode}: {_tail(logs[mode])}")

        recovery = {}
        for seconds in (5, 60):
            marks = {mode: _committed(bootstrap, f"g-{mode}") for mode in streams}
            for mode in streams:  # both are at work: their commits move
                wait(mode, lambda m=mode, at=marks[mode]: _committed(bootstrap, f"g-{m}") > at + 300, 120)
            marks = {mode: _committed(bootstrap, f"g-{mode}") for mode in streams}
            if kind == "kill":
                kill_broker(data)
            else:
                broker("stop", data)
            time.sleep(seconds)
            assert broker("start", data) == bootstrap  # the same port and data
            back = time.monotonic()
            for mode in streams:
                wait(mode, lambda m=mode, at=marks[mode]: _committed(bootstrap, f"g-{m}") > at, 240)
                recovery[f"{mode} after {seconds} s"] = time.monotonic() - back
        feeder.join(timeout=400)
        assert not feeder.is_alive() and not feeder.errors, feeder.errors[:3]
        for mode, proc in streams.items():
            wait(mode, lambda m=mode: group_caught_up(bootstrap, f"g-{m}", "outage.in"), 300)
            assert proc.poll() is None  # still running, by itself
        err = {}
        for mode, proc in streams.items():
            code, _ = terminate(proc)
            err[mode] = _tail(logs[mode])
            assert code == 0, err[mode]

        sent = Counter(json.loads(v)["txn_id"] for v in read_committed(bootstrap, "outage.in"))
        assert set(sent) == set(live["txn_id"]) and max(sent.values()) == 1  # the input, once each
        eos = [json.loads(v) for v in read_committed(bootstrap, "outage.eos")]
        once = Counter(r["id"] for r in eos)
        assert set(once) == set(sent) and max(once.values()) == 1  # exactly once
        assert not _same_as_batch(eos, whole, names)  # the entity state went back with the offsets
        assert f"stream stopped: {live.height:,} in, {live.height:,} scored" in err["eos"]  # counted once each
        duplicates = {}
        for mode in ("alo", "lost"):
            alo = consume_all(bootstrap, f"outage.{mode}")
            assert {r["id"] for r in alo} == set(sent)  # at least once
            assert not _same_as_batch(alo, whole, names)
            duplicates[mode] = len(alo) - len(sent)
        assert "times back to the last commit after lost outputs" in err["lost"]  # it did lose outputs
        print(
            f"broker {kind}: back to committing "
            + ", ".join(f"{k} {v:.1f} s" for k, v in recovery.items())
            + f"; at-least-once duplicates {duplicates}; feeding clients replaced {feeder.replaced}"
        )
    finally:
        for proc in streams.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=30)
        broker("stop", data)


def test_the_feeder_replaces_a_client_that_lost_every_broker(kafka_bootstrap: str) -> None:
    """The feeding producer of the test above can lose every broker in an outage as a consumer can (librdkafka
    issue 5301), and the input would stop growing: it is replaced, and each value still arrives once, each key's
    in order. The loss is injected: from the 200th value on, the client is one whose broker is a closed port (the
    values sent before are delivered by the first client, without their reports: the new one finds them there)."""
    from confluent_kafka import Producer

    create_topic(kafka_bootstrap, "feeder.in", partitions=3)
    values = [json.dumps({"txn_id": i}).encode() for i in range(600)]
    keys = [f"card-{i % 7}".encode() for i in range(600)]

    class Stranding(Feeder):
        def _send(self, i: int) -> None:
            if i == 200 and not self.replaced:
                lost = {"bootstrap.servers": "127.0.0.1:9", "enable.idempotence": True, "log_level": 0}
                self.producer = Producer({**lost, "message.timeout.ms": 300_000})
            super()._send(i)

    feeder = Stranding(kafka_bootstrap, "feeder.in", values, keys, seconds=6)
    feeder.start()
    feeder.join(timeout=120)
    assert not feeder.is_alive() and not feeder.errors and feeder.replaced == 1, feeder.errors[:3]
    got = [json.loads(v) for v in read_committed(kafka_bootstrap, "feeder.in")]
    assert sorted(r["txn_id"] for r in got) == list(range(600))  # each once
    by_key: dict[int, list[int]] = {}
    for r in got:  # read partition by partition, each in offset order
        by_key.setdefault(r["txn_id"] % 7, []).append(r["txn_id"])
    assert all(ids == sorted(ids) for ids in by_key.values())


def test_an_idle_source_commits_again_what_an_outage_lost(tmp_path: Path, stream_bundle: Path) -> None:
    """At-least-once, a commit lost in an outage is covered by the next one; an idle stream has no next one, and
    its group stayed short of the end for good (its lag never 0). Here the broker is down for 8 s while the commit of
    everything read is asked (it fails: the coordinator is away, then the member is unknown), and the records the
    rejoined member gets again are read without a commit of their own (as when that commit is lost too): the
    source's recommit commits the positions it reads at, once, and no other."""
    from segscope.sources.kafka import KafkaSource
    from segscope.testing.data import make_transactions

    data = tmp_path / "kafka"
    bootstrap = broker("start", data, free_port())
    try:
        create_topic(bootstrap, "lost.in", partitions=3)
        produce(bootstrap, "lost.in", records(make_transactions(900, seed=3).drop("is_fraud")))
        source = KafkaSource(
            bootstrap=bootstrap, topic="lost.in", group="g-lost", schema=Model.load(stream_bundle).feature_schema
        )
        source.open()

        def read(seconds: float) -> dict[tuple[str, int], int]:
            reached: dict[tuple[str, int], int] = {}
            until = time.monotonic() + seconds
            while time.monotonic() < until:
                batch = source.poll()
                reached |= batch.position or {} if batch is not None else {}
            return reached

        ends = read(10)
        assert sum(ends.values()) == 900
        broker("stop", data)
        source.commit_positions(ends)
        read(8)
        assert broker("start", data) == bootstrap
        read(20)
        assert not committed_offsets(bootstrap, "g-lost"), "the commit was not lost: the test shows nothing"
        assert source.recommit() == 3
        wanted = {f"lost.in/{p}": at for (_, p), at in ends.items()}
        wait_until(lambda: committed_offsets(bootstrap, "g-lost") == wanted, timeout=30)
        read(2)
        assert source.recommit() == 0  # confirmed: not again
        source.close()
    finally:
        broker("stop", data)
