"""`segscope stream` against a real Apache Kafka broker (started by connectors/kafka/broker)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import polars as pl
import pytest

from segscope import SCORED_COLUMNS, Model
from segscope import registry as reg
from segscope.testing.data import make_transactions
from tests.kafka_helpers import (
    broker,
    committed_offsets,
    consume_all,
    consume_dead_letters,
    count,
    create_topic,
    end_offsets,
    free_port,
    group_caught_up,
    group_members,
    produce,
    read_committed,
    records,
    scrape_metrics,
    start_stream,
    terminate,
    wait_until,
)


def _topics(name: str) -> dict[str, str]:
    return {"in": f"{name}.in", "out": f"{name}.out", "alerts": f"{name}.alerts", "dlq": f"{name}.dlq"}


def _args(t: dict[str, str], group: str, *extra: str) -> list[str]:
    return [
        "--in-topic",
        t["in"],
        "--out-topic",
        t["out"],
        "--alerts-topic",
        t["alerts"],
        "--dlq-topic",
        t["dlq"],
        "--group",
        group,
        "--stats-interval",
        "1",
        *extra,
    ]


def test_scores_every_record_and_dead_letters_poison(kafka_bootstrap: str, stream_bundle: Path) -> None:
    t = _topics("poison")
    create_topic(kafka_bootstrap, t["in"])
    good = records(make_transactions(5000, seed=11).drop("is_fraud"))
    template = json.loads(good[0])
    poison = {
        "invalid JSON": [b'{"amount": 3,'] * 50,
        "not an object": [b"[1, 2, 3]"] * 50,
        "missing field": [json.dumps({k: v for k, v in template.items() if k != "amount"}).encode()] * 50,
        "mistyped field": [json.dumps({**template, "n_txn_24h": "many"}).encode()] * 50,
        "oversized": [json.dumps({**template, "note": "x" * 70_000}).encode()] * 50,
    }
    values = good + [v for vs in poison.values() for v in vs]
    sent = produce(kafka_bootstrap, t["in"], values)
    proc = start_stream(
        stream_bundle, kafka_bootstrap, *_args(t, "g-poison", "--idle-exit", "4", "--metrics-port", str(free_port()))
    )
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    out, alerts = (consume_all(kafka_bootstrap, t[k]) for k in ("out", "alerts"))
    dlq = consume_dead_letters(kafka_bootstrap, t["dlq"])
    assert len(out) + len(dlq) == sent  # count in = count out + count dead-lettered
    assert len(dlq) == 250
    reasons = Counter(d["reason"].split(":")[0].split(" (")[0] for d in dlq)
    assert reasons["invalid JSON"] == 50 and reasons["a message must be one JSON object, got a JSON list"] == 50
    assert reasons["missing field 'amount'"] == 50
    assert sum(v for k, v in reasons.items() if k.startswith("field 'n_txn_24h' must be a number")) == 50
    assert sum(v for k, v in reasons.items() if k.startswith("message of")) == 50
    assert all({"topic", "partition", "offset", "length", "sha256", "tombstone"} <= set(d) for d in dlq)
    # the original bytes, unchanged (oversized ones cut at 64 KiB, with their full length and hash)
    assert all(d["value"] == b'{"amount": 3,' for d in dlq if d["reason"].startswith("invalid JSON"))
    big = [d for d in dlq if d["reason"].startswith("message of")]
    assert all(len(d["value"]) == 65_536 and d["truncated"] == "true" and int(d["length"]) > 70_000 for d in big)
    assert {r["txn_id"] for r in out} == {json.loads(v)["txn_id"] for v in good}
    assert set(SCORED_COLUMNS) | {"id"} <= set(out[0])
    assert len(alerts) == sum(r["is_alert"] for r in out) and all(a["is_alert"] for a in alerts)
    # the stream's scores are exactly `segscope score`'s
    model = Model.load(stream_bundle)
    frame = make_transactions(5000, seed=11).drop("is_fraud")
    expected = dict(zip(frame["txn_id"], model.score(frame)["score"], strict=True))
    assert all(abs(r["score"] - expected[r["txn_id"]]) < 1e-12 for r in out)
    assert "stream:" in err and "dead letters" in err


def test_sigkill_loses_nothing_and_duplicates_carry_the_same_id(kafka_bootstrap: str, stream_bundle: Path) -> None:
    t = _topics("kill")
    create_topic(kafka_bootstrap, t["in"])
    values = records(make_transactions(100_000, seed=12).drop("is_fraud"))
    produce(kafka_bootstrap, t["in"], values)
    args = _args(t, "g-kill", "--batch-size", "2000")
    for kill in range(3):  # kill -9 mid-stream, three times
        proc = start_stream(stream_bundle, kafka_bootstrap, *args)
        target = (kill + 1) * 20_000
        wait_until(lambda target=target: count(kafka_bootstrap, t["out"]) >= target, timeout=240)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    proc = start_stream(stream_bundle, kafka_bootstrap, *args, "--idle-exit", "4")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    out = consume_all(kafka_bootstrap, t["out"], idle=5)
    ids = Counter(r["id"] for r in out)
    assert set(ids) == {json.loads(v)["txn_id"] for v in values}  # every input record has an output: 0 lost
    duplicates = sum(c - 1 for c in ids.values())
    assert duplicates <= 3 * 2000 * 3  # at most the uncommitted batches of each killed process
    print(f"SIGKILL x3 over 100k records: 0 lost, {duplicates} duplicates")


def test_sigterm_drains_commits_and_exits_zero(kafka_bootstrap: str, stream_bundle: Path) -> None:
    t = _topics("term")
    create_topic(kafka_bootstrap, t["in"])
    produce(kafka_bootstrap, t["in"], records(make_transactions(20_000, seed=13).drop("is_fraud")))
    port = free_port()
    proc = start_stream(
        stream_bundle, kafka_bootstrap, *_args(t, "g-term", "--batch-size", "1000", "--metrics-port", str(port))
    )
    wait_until(lambda: count(kafka_bootstrap, t["out"]) >= 3000, proc=proc)
    # the counters take a batch once the loop has seen it delivered: they may trail the topic by a batch or two
    wait_until(lambda: scrape_metrics(port).get("segscope_records_in_total", 0) >= 3000, timeout=60, proc=proc)
    scraped = scrape_metrics(port)
    assert "segscope_consumer_lag" in scraped and "segscope_batch_seconds_count" in scraped
    code, err = terminate(proc, signal.SIGTERM)
    assert code == 0, err
    assert "stream stopped" in err
    first = count(kafka_bootstrap, t["out"])
    proc = start_stream(stream_bundle, kafka_bootstrap, *_args(t, "g-term", "--idle-exit", "4"))
    proc.communicate(timeout=180)
    out = consume_all(kafka_bootstrap, t["out"])
    ids = Counter(r["id"] for r in out)
    assert len(ids) == 20_000
    assert sum(ids.values()) == 20_000  # a clean stop committed everything it produced: no duplicates
    assert first >= 3000


_LOSE_LAST_COMMITS = """
import json, sys
from segscope import _kafka
from segscope.cli import main

topic, ends = sys.argv[1], {int(p): end for p, end in json.loads(sys.argv[2]).items()}
commit, lost = _kafka._ConfluentConsumer.commit, set()

def losing(self, offsets):  # the commit that reaches the end of a partition is lost, once per partition
    kept = {}
    for (t, p), at in offsets.items():
        if t == topic and at >= ends.get(p, 1 << 62) and p not in lost:
            lost.add(p)
            print(f"lost the commit of {t}/{p} at {at}", file=sys.stderr, flush=True)
        else:
            kept[(t, p)] = at
    commit(self, kept)

_kafka._ConfluentConsumer.commit = losing
sys.argv = ["segscope", "stream", *sys.argv[3:]]
main()
"""


@pytest.mark.parametrize("idle_exit", [True, False])
def test_an_idle_stream_commits_again_a_lost_last_commit(
    kafka_bootstrap: str, stream_bundle: Path, tmp_path: Path, idle_exit: bool
) -> None:
    """Commits are asynchronous, and one can fail (a coordinator moving). If the last batch's commit is lost, the
    group stays short of the end: --idle-exit, which waits for the whole group, waited for good, and a stream
    without it showed lag for good. An idle member commits again the positions whose commit was not confirmed
    (all its outputs are acknowledged). The lost commits are injected into the real client (tests/
    test_stream_outages.py loses one in a real outage); broker, topics and group are real."""
    t = _topics(f"lostcommit{int(idle_exit)}")
    create_topic(kafka_bootstrap, t["in"])
    values = records(make_transactions(3000, seed=41).drop("is_fraud"))
    produce(kafka_bootstrap, t["in"], values)
    ends = end_offsets(kafka_bootstrap, t["in"])
    script = tmp_path / "lose_last_commits.py"
    script.write_text(_LOSE_LAST_COMMITS)
    group = f"g-lostcommit{int(idle_exit)}"
    args = _args(t, group, "--batch-size", "500", *(["--idle-exit", "3"] if idle_exit else []))
    cmd = [sys.executable, str(script), t["in"], json.dumps(ends), "--bundle", str(stream_bundle)]
    proc = subprocess.Popen([*cmd, "--bootstrap", kafka_bootstrap, *args], stderr=subprocess.PIPE, text=True)
    if idle_exit:
        try:
            _, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError(f"the idle stream never exited: {proc.communicate()[1][-2000:]}") from None
        assert proc.returncode == 0, err
    else:
        wait_until(lambda: group_caught_up(kafka_bootstrap, group, t["in"]), timeout=60, proc=proc)
        code, err = terminate(proc)
        assert code == 0, err
    assert err.count("lost the commit of") == sum(1 for end in ends.values() if end > 0)
    assert group_caught_up(kafka_bootstrap, group, t["in"])
    assert {r["id"] for r in consume_all(kafka_bootstrap, t["out"], idle=5)} == {
        json.loads(v)["txn_id"] for v in values
    }


_STRAND_THE_CONSUMER = """
import sys
from segscope import _kafka
from segscope.cli import main

topic, after = sys.argv[1], int(sys.argv[2])
poll, seen = _kafka._ConfluentConsumer.poll, {"records": 0, "stranded": False}

def stranding(self, max_records, timeout):  # once idle after `after` records, the client loses every broker
    got = poll(self, max_records, timeout)
    seen["records"] += len(got) if got is not None else 0
    if got is None and seen["records"] >= after and not seen["stranded"]:
        seen["stranded"] = True
        self.consumer.close()  # leaves the group, as a client that lost its brokers does when its session ends
        self.consumer = self.ck.Consumer({"bootstrap.servers": "127.0.0.1:9", "group.id": "stranded", "log_level": 0})
        self.consumer.subscribe([topic])
        print("the consumer lost every broker", file=sys.stderr, flush=True)
    return got

_kafka._ConfluentConsumer.poll = stranding
sys.argv = ["segscope", "stream", *sys.argv[3:]]
main()
"""


def test_a_consumer_that_lost_every_broker_is_replaced(
    kafka_bootstrap: str, stream_bundle: Path, tmp_path: Path
) -> None:
    """librdkafka drops the brokers a metadata response does not list, and a broker shutting down or starting up
    lists none: the client is left without a broker and never looks for one again (librdkafka issue 5301), so an
    exactly-once stream sat idle after a broker outage, its lag read as 0. A member whose client has lost the
    cluster while a new client reaches it is replaced, and scores what comes after, exactly once. The loss is
    injected into the real client (the broker's timing cannot be provoked on cue): its connection goes to a port
    where nothing listens."""
    t = _topics("stranded")
    create_topic(kafka_bootstrap, t["in"])
    values = records(make_transactions(2000, seed=43).drop("is_fraud"))
    produce(kafka_bootstrap, t["in"], values[:1000])
    script, log = tmp_path / "strand.py", tmp_path / "stream.log"
    script.write_text(_STRAND_THE_CONSUMER)
    args = _args(t, "g-stranded", "--batch-size", "500", "--exactly-once")
    cmd = [sys.executable, str(script), t["in"], "1000", "--bundle", str(stream_bundle), "--bootstrap", kafka_bootstrap]
    with log.open("w") as stderr:
        proc = subprocess.Popen([*cmd, *args], stderr=stderr, text=True)
    try:
        wait_until(lambda: "the consumer lost every broker" in log.read_text(), timeout=120, proc=proc)
        produce(kafka_bootstrap, t["in"], values[1000:])  # only a new client can read these
        wait_until(lambda: group_caught_up(kafka_bootstrap, "g-stranded", t["in"]), timeout=120, proc=proc)
        assert terminate(proc)[0] == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    text = log.read_text()
    assert "lost the cluster, which answers a new client: a new consumer takes over" in text, text[-3000:]
    assert "lag unknown (the cluster does not answer)" in text  # the stranded client's lag was not read as 0
    out = [json.loads(v)["id"] for v in read_committed(kafka_bootstrap, t["out"])]
    assert sorted(out) == sorted(json.loads(v)["txn_id"] for v in values)  # every record, exactly once
    assert "stream stopped: 2,000 in, 2,000 scored" in text


_STRAND_THE_LABELS_CONSUMER = """
import sys
from segscope import _kafka
from segscope.cli import main
from segscope.sources import kafka

topic, after = sys.argv[1], int(sys.argv[2])
opened, poll = kafka.TopicReader.open, _kafka._ConfluentConsumer.poll
seen = {"labels": 0, "stranded": False}

def open_(self):
    opened(self)
    self.consumer_.strands = True  # only the labels reader's first client

def stranding(self, max_records, timeout):  # once idle after `after` labels, that client loses every broker
    got = poll(self, max_records, timeout)
    if getattr(self, "strands", False):
        seen["labels"] += len(got) if got is not None else 0
        if got is None and seen["labels"] >= after and not seen["stranded"]:
            seen["stranded"] = True
            self.consumer.close()
            self.consumer = self.ck.Consumer({"bootstrap.servers": "127.0.0.1:9", "group.id": "x", "log_level": 0})
            self.consumer.assign([self.ck.TopicPartition(topic, 0)])
            print("the labels consumer lost every broker", file=sys.stderr, flush=True)
    return got

kafka.TopicReader.open, _kafka._ConfluentConsumer.poll = open_, stranding
sys.argv = ["segscope", "stream", *sys.argv[3:]]
main()
"""


def test_a_labels_consumer_that_lost_every_broker_is_replaced(
    kafka_bootstrap: str, stream_bundle: Path, tmp_path: Path
) -> None:
    """The labels topic's reader strands as the input's consumer does (librdkafka issue 5301, see above): it is
    replaced too, from the labels' last commit, and the labels sent after the loss reach the store."""
    from segscope.labels import LabelStore

    t, labels_topic, store = _topics("strandlabels"), "strandlabels.labels", tmp_path / "labels.db"
    create_topic(kafka_bootstrap, t["in"])
    create_topic(kafka_bootstrap, labels_topic, partitions=1)
    produce(kafka_bootstrap, t["in"], records(make_transactions(2000, seed=44).drop("is_fraud")))
    script, log = tmp_path / "strand.py", tmp_path / "stream.log"
    script.write_text(_STRAND_THE_LABELS_CONSUMER)
    args = _args(t, "g-strandlabels", "--store", str(store), "--labels-topic", labels_topic)
    cmd = [sys.executable, str(script), labels_topic, "2", "--bundle", str(stream_bundle), "--bootstrap",
           kafka_bootstrap, *args]  # fmt: skip
    with log.open("w") as stderr:
        proc = subprocess.Popen(cmd, stderr=stderr, text=True)
    try:
        wait_until(lambda: count(kafka_bootstrap, t["out"]) >= 2000, timeout=120, proc=proc)
        chosen = sorted({r["id"] for r in consume_all(kafka_bootstrap, t["alerts"])})[:4]
        with LabelStore.open(store) as opened:  # alerts are kept in the store before their batch commits
            wait_until(lambda: len(opened.records(chosen)) == 4, timeout=60, proc=proc)

        def label(i: int) -> bytes:
            return json.dumps({"id": chosen[i], "label": "anomaly", "analyst": "ann"}).encode()

        produce(kafka_bootstrap, labels_topic, [label(0), label(1)])
        wait_until(lambda: "the labels consumer lost every broker" in log.read_text(), timeout=120, proc=proc)
        produce(kafka_bootstrap, labels_topic, [label(2), label(3)])  # only a new client can read these
        with LabelStore.open(store) as opened:
            wait_until(lambda: opened.labels(history=True).height >= 4, timeout=120, proc=proc)
            stored = set(opened.labels(history=True)["id"].to_list())
        assert terminate(proc)[0] == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    text = log.read_text()
    assert stored == set(chosen)
    assert f"the labels consumer ({labels_topic}) lost the cluster, which answers a new client" in text, text[-3000:]


def test_stats_line_and_metrics_name_drift(kafka_bootstrap: str, stream_bundle: Path) -> None:
    t = _topics("drift")
    create_topic(kafka_bootstrap, t["in"])
    drifted = make_transactions(30_000, seed=14).drop("is_fraud").with_columns(pl.col("amount") * 10)
    produce(kafka_bootstrap, t["in"], records(drifted))
    port = free_port()
    proc = start_stream(
        stream_bundle, kafka_bootstrap, *_args(t, "g-drift", "--batch-size", "500", "--metrics-port", str(port))
    )

    wait_until(lambda: 'segscope_drift_psi{column="amount"}' in scrape_metrics(port), timeout=120)
    scraped = scrape_metrics(port)
    assert scraped['segscope_drift_psi{column="amount"}'] > 0.25  # amounts ten times the fit's
    assert scraped['segscope_drift_psi{column="distance_km"}'] < 0.25  # an untouched column stays low
    assert scraped["segscope_alert_rate"] > scraped["segscope_expected_alert_rate"]
    code, err = terminate(proc, signal.SIGTERM)
    assert code == 0, err
    stats = [line for line in err.splitlines() if "stream:" in line and "; drift: " in line]
    assert stats and "drift in " in stats[0] and "amount: " in stats[0]
    assert any("the alert rate moved with the drift" in line for line in stats)  # amounts ten times the fit's


def test_broker_restart_mid_stream(tmp_path: Path, stream_bundle: Path) -> None:
    data = tmp_path / "kafka"
    bootstrap = broker("start", data, free_port())
    try:
        t = _topics("restart")
        create_topic(bootstrap, t["in"])
        produce(bootstrap, t["in"], records(make_transactions(30_000, seed=14).drop("is_fraud")))
        proc = start_stream(stream_bundle, bootstrap, *_args(t, "g-restart", "--batch-size", "1000"))
        wait_until(lambda: count(bootstrap, t["out"]) >= 5000, proc=proc)
        broker("stop", data)
        time.sleep(2)
        assert broker("start", data) == bootstrap  # same port, same data

        def explain() -> str:  # on failure: a lost output or a stuck stream, and what the broker logged
            log = (data / "broker.out").read_text(errors="replace").splitlines()
            noted = [line for line in log if " WARN " in line or " ERROR " in line or "recover" in line.lower()]
            return (
                f"in {end_offsets(bootstrap, t['in'])} out {end_offsets(bootstrap, t['out'])} "
                f"committed {committed_offsets(bootstrap, 'g-restart')}\nbroker: " + "\n".join(noted[-30:])
            )

        wait_until(lambda: group_caught_up(bootstrap, "g-restart", t["in"]), timeout=240, proc=proc, explain=explain)
        code, err = terminate(proc)
        assert code == 0, err
        ids = {r["id"] for r in consume_all(bootstrap, t["out"])}
        assert len(ids) == 30_000  # re-sent batches are duplicates, nothing is missing
    finally:
        broker("stop", data)


def test_two_consumers_share_partitions_and_survive_a_rebalance(kafka_bootstrap: str, stream_bundle: Path) -> None:
    t = _topics("rebalance")
    create_topic(kafka_bootstrap, t["in"], partitions=4)
    produce(kafka_bootstrap, t["in"], records(make_transactions(40_000, seed=15).drop("is_fraud")))
    args = _args(t, "g-rebalance", "--batch-size", "1000")
    first = start_stream(stream_bundle, kafka_bootstrap, *args)
    wait_until(lambda: count(kafka_bootstrap, t["out"]) >= 4000, proc=first)
    second = start_stream(stream_bundle, kafka_bootstrap, *args, "--idle-exit", "6")  # joins: a rebalance
    wait_until(lambda: group_members(kafka_bootstrap, "g-rebalance") == 2, proc=second)
    # a second wave once both are members, so both have partitions with work on them
    produce(kafka_bootstrap, t["in"], records(make_transactions(40_000, seed=18).drop("is_fraud")))
    wait_until(lambda: group_caught_up(kafka_bootstrap, "g-rebalance", t["in"]), timeout=240, proc=first)
    _, err2 = second.communicate(timeout=120)
    code, err1 = terminate(first)
    assert code == 0, err1
    ids = Counter(r["id"] for r in consume_all(kafka_bootstrap, t["out"]))
    assert len(ids) == 80_000  # nothing lost across the rebalance
    in_second = int(err2.split("stream stopped: ")[1].split(" in")[0].replace(",", ""))
    assert in_second > 0  # the second process really got partitions


def test_hot_swap_to_a_promoted_version(kafka_bootstrap: str, tmp_path: Path, history: pl.DataFrame, config) -> None:
    from segscope.labels.parse import normalise_labels
    from segscope.tuning import finetune

    base = Model(config).fit(history)
    base.save(tmp_path / "reg")
    reg.ensure_registry(tmp_path / "reg")
    fraud = history.filter(pl.col("is_fraud") == 1)
    tuned, _ = finetune(
        base, history, normalise_labels(pl.DataFrame({"id": fraud["txn_id"], "label": [1] * fraud.height}))
    )
    tuned.save(tmp_path / "reg" / "versions" / tuned.version)
    t = _topics("swap")
    create_topic(kafka_bootstrap, t["in"])
    proc = start_stream(tmp_path / "reg", kafka_bootstrap, *_args(t, "g-swap", "--batch-size", "500"))
    produce(kafka_bootstrap, t["in"], records(make_transactions(3000, seed=16).drop("is_fraud")))
    wait_until(lambda: count(kafka_bootstrap, t["out"]) >= 3000)
    reg.set_current(tmp_path / "reg", tuned.version, action="promote")
    time.sleep(1.5)
    produce(kafka_bootstrap, t["in"], records(make_transactions(3000, seed=17).drop("is_fraud")))
    wait_until(lambda: count(kafka_bootstrap, t["out"]) >= 6000)
    code, err = terminate(proc)
    assert code == 0, err
    out = consume_all(kafka_bootstrap, t["out"])
    ids = Counter(r["id"] for r in out)
    assert len(ids) == 6000 and max(ids.values()) == 1  # nothing lost, nothing scored twice
    versions = Counter(r["model_version"] for r in out)
    assert versions[base.version] == 3000 and versions[tuned.version] == 3000
    assert all(r["supervised_score"] is not None for r in out if r["model_version"] == tuned.version)
    assert f"model versions {base.version}, {tuned.version}" in " ".join(err.split())


def test_missing_bundle_fails_at_start_up(kafka_bootstrap: str, tmp_path: Path) -> None:
    proc = start_stream(tmp_path / "nope", kafka_bootstrap, "--in-topic", "a", "--out-topic", "b")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert err.strip().startswith("error:") and "does not exist" in err and "Traceback" not in err


def test_store_keeps_alerts_and_the_labels_topic_feeds_it(
    kafka_bootstrap: str, stream_bundle: Path, tmp_path: Path
) -> None:
    from segscope.labels import LabelStore

    t = _topics("store")
    labels_topic = "store.labels"
    create_topic(kafka_bootstrap, t["in"])
    create_topic(kafka_bootstrap, labels_topic, partitions=1)
    store = tmp_path / "labels.db"
    produce(kafka_bootstrap, t["in"], records(make_transactions(6000, seed=21).drop("is_fraud")))
    proc = start_stream(
        stream_bundle,
        kafka_bootstrap,
        *_args(t, "g-store", "--batch-size", "2000", "--store", str(store), "--labels-topic", labels_topic),
    )
    wait_until(lambda: count(kafka_bootstrap, t["out"]) >= 6000, proc=proc)
    alerts = {r["id"] for r in consume_all(kafka_bootstrap, t["alerts"])}
    with LabelStore.open(store) as opened:
        wait_until(lambda: opened.record_count() >= len(alerts), proc=proc)
        kept = opened.records(sorted(alerts))
    assert set(kept) == alerts  # every alert is in the store, under the stream's id
    chosen = sorted(alerts)[:3]
    messages = [
        json.dumps({"id": chosen[0], "label": "anomaly", "analyst": "ann", "category": "card testing"}).encode(),
        json.dumps({"id": chosen[1], "label": "normal", "analyst": "bob"}).encode(),
        json.dumps({"id": chosen[2], "label": 1, "analyst": "ann"}).encode(),
        json.dumps({"id": chosen[2], "label": 1, "analyst": "ann"}).encode(),  # a repeat: stored once
        json.dumps({"id": "no-such-record", "label": "anomaly", "analyst": "ann"}).encode(),
        b"not json",
    ]
    produce(kafka_bootstrap, labels_topic, messages)
    with LabelStore.open(store) as opened:
        wait_until(lambda: opened.labels(history=True).height >= 3, proc=proc)
        time.sleep(2)  # anything more would show up now
        history = opened.labels(history=True)
    code, err = terminate(proc, signal.SIGTERM)
    assert code == 0, err
    got = {(r["id"], r["label"], r["analyst"], r["source"]) for r in history.iter_rows(named=True)}
    assert got == {
        (chosen[0], "anomaly", "ann", "kafka"),
        (chosen[1], "normal", "bob", "kafka"),
        (chosen[2], "anomaly", "ann", "kafka"),
    }
    letters = consume_dead_letters(kafka_bootstrap, f"{labels_topic}.dlq")
    reasons = sorted(letter["reason"].split(":")[0] for letter in letters)
    assert reasons == ["not a label", "unknown record id 'no-such-record'"]


def test_kafka_source_and_sink_contracts(kafka_bootstrap: str, stream_bundle: Path) -> None:
    """The Kafka source yields every message once (rows or dead letters, ids and keys aligned) and, once committed,
    never again to its group; the Kafka sink writes all or, aborted, nothing, and keeps keys and headers."""
    from segscope.sinks.kafka import KafkaSink
    from segscope.sources.kafka import KafkaSource

    model = Model.load(stream_bundle)
    t = {**_topics("contract"), "aborted": "contract.aborted"}
    create_topic(kafka_bootstrap, t["in"])
    good = records(make_transactions(3000, seed=31).drop("is_fraud"))
    produce(kafka_bootstrap, t["in"], [*good, b"not json"], keys=[f"k{i}".encode() for i in range(3001)])

    def source() -> KafkaSource:
        opened = KafkaSource(
            bootstrap=kafka_bootstrap, topic=t["in"], group="g-contract", schema=model.feature_schema, batch_size=700
        )
        opened.open()
        return opened

    first = source()
    batches = []
    deadline = time.monotonic() + 60
    while sum(b.size for b in batches) < 3001 and time.monotonic() < deadline:
        batch = first.poll()
        if batch is not None:
            assert batch.size <= 700
            assert len(batch.ids) == len(batch.keys) == len(batch.records) == batch.frame.height
            batches.append(batch)
            first.commit(batch)
    first.close()
    assert sum(b.frame.height for b in batches) == 3000 and sum(len(b.dead) for b in batches) == 1
    assert {i for b in batches for i in b.ids} == {json.loads(v)["txn_id"] for v in good}
    again = source()
    assert all(again.poll(timeout_ms=1000) is None for _ in range(3))  # committed: nothing comes back
    again.close()

    # a transactional sink that aborts: nothing becomes visible to a read_committed reader
    sink = KafkaSink(
        bootstrap=kafka_bootstrap, topic=t["aborted"], dead_letter_topic=t["dlq"], transactional_id="contract-tx"
    )
    sink.open()
    sink.begin()
    sink.write(model.score(batches[0].frame), batches[0])
    sink.flush()
    sink.abort()
    sink.close()
    assert count(kafka_bootstrap, t["aborted"]) > 700  # written to the log ...
    assert read_committed(kafka_bootstrap, t["aborted"]) == []  # ... but never committed
    sink = KafkaSink(bootstrap=kafka_bootstrap, topic=t["out"], dead_letter_topic=t["dlq"])
    sink.open()
    for batch in batches:
        sink.write(model.score(batch.frame), batch)
        sink.dead_letters(batch.dead)
    sink.flush()
    sink.close()
    out = consume_all(kafka_bootstrap, t["out"])
    assert sorted(r["id"] for r in out) == sorted(i for b in batches for i in b.ids)
    assert set(SCORED_COLUMNS) <= set(out[0])
    (letter,) = consume_dead_letters(kafka_bootstrap, t["dlq"])
    assert letter["value"] == b"not json" and letter["key"] == b"k3000" and letter["tombstone"] == "false"


def test_kafka_python_members_join_knowing_the_topics_partitions(kafka_bootstrap: str, stream_bundle: Path) -> None:
    """kafka-python's group leader keeps the metadata it assigned with and rejoins when that changes; a first join
    before the metadata named the topic's partitions was followed by such a rejoin, which a poll timing out mid-way
    could leave unapplied: 0 records in, for ever (a stream test hung on it about one run in eight). So the source
    has the partitions in hand before the first join (kafka-python's snapshot: read here because nothing public
    says it), and each fresh member, polling with a short time-out, holds all three partitions within seconds."""
    from segscope.sources.kafka import KafkaSource

    model = Model.load(stream_bundle)
    topic = "first-join.in"
    create_topic(kafka_bootstrap, topic)
    for i in range(8):
        source = KafkaSource(
            bootstrap=kafka_bootstrap,
            topic=topic,
            group=f"g-first-join-{i}",
            schema=model.feature_schema,
            poll_timeout_ms=5,
            client="kafka-python",
        )
        source.open()
        try:
            coordinator = source.consumer_.consumer._coordinator
            assert coordinator._metadata_snapshot == {topic: {0, 1, 2}}, f"member {i}"
            deadline = time.monotonic() + 20
            while len(source.consumer_.assignment()) < 3 and time.monotonic() < deadline:
                source.poll()
            assert sorted(source.consumer_.assignment()) == [(topic, 0), (topic, 1), (topic, 2)], f"member {i}"
        finally:
            source.close()


def test_kafka_python_commits_what_a_member_hands_over(kafka_bootstrap: str, stream_bundle: Path) -> None:
    """kafka-python calls the rebalance listener on its IO thread, where a blocking commit raises ("Cannot block
    on net.run() from the IO thread itself"), so the member taking the partitions over would score again what the
    first had done. The source commits the positions handed over on kafka-python's loop before they leave."""
    from segscope.sources.kafka import KafkaSource

    model = Model.load(stream_bundle)
    topic, group = "handover.in", "g-handover"
    create_topic(kafka_bootstrap, topic)
    produce(kafka_bootstrap, topic, records(make_transactions(3000, seed=21).drop("is_fraud")))

    def member() -> KafkaSource:
        return KafkaSource(
            bootstrap=kafka_bootstrap, topic=topic, group=group, schema=model.feature_schema, batch_size=200,
            client="kafka-python",
        )  # fmt: skip

    first, read = member(), {}
    handed: list[dict[tuple[str, int], int]] = []

    def on_revoke(parts: list[tuple[str, int]]) -> None:  # what the stream does: commit what it has done
        positions = {tp: at for tp, at in read.items() if tp in parts}
        first.commit_positions(positions)
        if parts:  # kafka-python also calls it, with none, before a first join
            handed.append(positions)

    first.open(on_revoke)
    deadline = time.monotonic() + 60
    while sum(read.values()) < 1200 and time.monotonic() < deadline:  # partway through the topic
        batch = first.poll()
        if batch is not None:
            read.update(batch.position or {})
    assert len(read) == 3 and sum(read.values()) < 3000, read
    second = member()
    second.open()
    try:
        deadline = time.monotonic() + 60
        while not (handed and second.consumer_.assignment()) and time.monotonic() < deadline:
            first.poll(50)  # nothing more is read by the first: the batch is dropped, its position not recorded
            second.poll(50)
        assert handed and handed[0] == read  # every partition was revoked, with the positions read so far
        committed = committed_offsets(kafka_bootstrap, group)
        assert {f"{t}/{p}": at for (t, p), at in read.items()} == committed  # the next owners start there
        assert first.confirmed() == read
    finally:
        second.close()
        first.close()
