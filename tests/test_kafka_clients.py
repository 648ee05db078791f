"""`segscope stream` with what real producers send, written by clients the project does not use to produce:
Debian's kcat (librdkafka's command line) and a confluent-kafka transactional producer; checked with Kafka's own
Java tools. Every codec, poison of any size, tombstones, aborted transactions, exactly-once under SIGKILL,
group-aware idle exit, headers, outputs the broker refuses."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from segscope.testing.data import make_transactions
from tests.kafka_helpers import (
    BROKER,
    consume_all,
    consume_dead_letters,
    count,
    create_topic,
    read_committed,
    records,
    scrape_metrics,
    start_stream,
    wait_until,
)

CODECS = ("gzip", "snappy", "lz4", "zstd")


def _kcat() -> str:
    path = shutil.which("kcat")
    if path is None:  # a missing install step, not a reason to skip
        raise AssertionError("kcat is not installed; `make test` installs Debian's kcat package")
    return path


def _kcat_produce(bootstrap: str, topic: str, lines: list[bytes], tmp: Path, *, codec: str, header: str) -> None:
    """``key:value`` lines through kcat, with a codec and a header on every message."""
    path = tmp / f"{topic}.{codec}.txt"
    path.write_bytes(b"\n".join(lines) + b"\n")
    cmd = [_kcat(), "-P", "-b", bootstrap, "-t", topic, "-K:", "-z", codec, "-H", header, "-l", str(path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr


def _kcat_read(bootstrap: str, topic: str) -> list[str]:
    """Every record as kcat prints it: 'key|headers|value' (kcat reads read_committed by default)."""
    cmd = [_kcat(), "-C", "-b", bootstrap, "-t", topic, "-e", "-o", "beginning", "-q", "-f", "%k|%h|%s\\n"]
    done = subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return [line.decode("utf-8", "replace") for line in done.stdout.splitlines() if line]


def _args(prefix: str, group: str, *extra: str) -> list[str]:
    return [
        "--in-topic", f"{prefix}.in", "--out-topic", f"{prefix}.out", "--alerts-topic", f"{prefix}.alerts",
        "--dlq-topic", f"{prefix}.dlq", "--group", group, "--stats-interval", "1", *extra,
    ]  # fmt: skip


def _tool(*args: str) -> str:
    done = subprocess.run([str(BROKER), *args], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_every_codec_in_and_out_with_headers(
    kafka_broker: tuple[str, Path], stream_bundle: Path, tmp_path: Path
) -> None:
    bootstrap, data = kafka_broker
    create_topic(bootstrap, "codecs.in")
    sent: dict[str, str] = {}
    for n, codec in enumerate(CODECS):  # one topic holding batches of every codec
        frame = make_transactions(500, seed=40 + n).drop("is_fraud")
        values = records(frame)
        _kcat_produce(
            bootstrap, "codecs.in", [f"k{codec}{i}:".encode() + v for i, v in enumerate(values)], tmp_path,
            codec=codec, header=f"trace={codec}",
        )  # fmt: skip
        sent |= dict.fromkeys(frame["txn_id"].to_list(), codec)
    for client, out_codec in (("confluent", "zstd"), ("kafka-python", "snappy")):
        prefix = f"codecs-{client}"
        args = _args(prefix, f"g-{prefix}", "--idle-exit", "3", "--client", client, "--compression", out_codec)
        args[1] = "codecs.in"
        proc = start_stream(stream_bundle, bootstrap, *args)
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err
        printed = _kcat_read(bootstrap, f"{prefix}.out")
        assert len(printed) == len(sent)
        got = {}
        for line in printed:
            key, headers, value = line.split("|", 2)
            record = json.loads(value)
            got[record["txn_id"]] = headers
            assert key.startswith(f"k{sent[record['txn_id']]}")  # the input's key
            assert {"score", "is_alert", "reasons", "model_version", "id"} <= set(record)
        assert got == {i: f"trace={c}" for i, c in sent.items()}  # the input's headers
        # what the broker holds for the output is compressed with the codec asked for
        segments = sorted((data / "kraft-combined-logs").glob(f"{prefix}.out-*/*.log"))
        dumped = _tool("dump-log", "--files", ",".join(map(str, segments)))
        assert f"compresscodec: {out_codec}" in dumped.lower()


def test_poison_of_any_size_never_stops_the_stream(kafka_bootstrap: str, stream_bundle: Path) -> None:
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    created = admin.create_topics([NewTopic("poison2.in", 1, 1, config={"max.message.bytes": "2000000"})])
    for future in created.values():
        future.result()
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "message.max.bytes": 2_000_000, "linger.ms": 5})
    good = make_transactions(3000, seed=44).drop("is_fraud")
    values = records(good)
    template = json.loads(values[0])
    poison = {
        "non-ascii 600 KB": json.dumps({**template, "note": "é🙂" * 200_000}, ensure_ascii=False).encode(),
        "binary 700 KB": bytes(range(256)) * 2800,
        "not UTF-8": b'{"amount": "\xff\xfe"}',
        "empty": b"",
        "tombstone": None,
    }
    for i, value in enumerate(values[:1500]):
        producer.produce("poison2.in", value, f"g{i}".encode())
    for name, value in poison.items():
        producer.produce("poison2.in", value, name.encode(), headers=[("trace", name.encode())])
    for i, value in enumerate(values[1500:]):
        producer.produce("poison2.in", value, f"g{1500 + i}".encode())
    producer.flush(60)
    proc = start_stream(stream_bundle, kafka_bootstrap, *_args("poison2", "g-poison2", "--idle-exit", "3"))
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    out = consume_all(kafka_bootstrap, "poison2.out")
    assert len(out) == 3000  # every good record after the poison was scored
    letters = {d["key"].decode(): d for d in consume_dead_letters(kafka_bootstrap, "poison2.dlq")}
    assert set(letters) == set(poison)
    big = letters["non-ascii 600 KB"]
    assert "larger than --max-message-bytes" in big["reason"] and big["truncated"] == "true"
    assert int(big["length"]) == len(poison["non-ascii 600 KB"]) and len(big["value"]) == 65_536
    assert big["value"] == poison["non-ascii 600 KB"][:65_536]  # raw bytes, never re-escaped
    assert big["sha256"] == __import__("hashlib").sha256(poison["non-ascii 600 KB"]).hexdigest()
    assert letters["binary 700 KB"]["value"] == poison["binary 700 KB"][:65_536]
    assert letters["not UTF-8"]["reason"].startswith("not UTF-8 text: byte 0xff")
    assert letters["empty"]["tombstone"] == "false" and letters["empty"]["value"] == b""
    assert letters["empty"]["reason"].startswith("empty message")
    assert letters["tombstone"]["tombstone"] == "true" and letters["tombstone"]["value"] is None
    assert letters["tombstone"]["reason"].startswith("tombstone")
    assert all(d["headers"] == [("trace", name.encode())] for name, d in letters.items())  # original headers kept


def _transactional_input(bootstrap: str, topic: str) -> tuple[set[str], set[str]]:
    """500 committed, 500 aborted, 500 committed records from a confluent-kafka transactional producer."""
    from confluent_kafka import Producer

    frame = make_transactions(1500, seed=45).drop("is_fraud")
    values, ids = records(frame), frame["txn_id"].to_list()
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": f"upstream-{topic}"})
    producer.init_transactions(30)
    for start, commit in ((0, True), (500, False), (1000, True)):
        producer.begin_transaction()
        for value in values[start : start + 500]:
            producer.produce(topic, value)
        producer.flush(30)
        if commit:
            producer.commit_transaction()
        else:
            producer.abort_transaction()
    return set(ids[:500] + ids[1000:]), set(ids[500:1000])


def test_aborted_transactions_are_never_scored_and_the_lag_reaches_zero(
    kafka_bootstrap: str, stream_bundle: Path
) -> None:
    create_topic(kafka_bootstrap, "txin.in")
    committed, aborted = _transactional_input(kafka_bootstrap, "txin.in")
    proc = start_stream(stream_bundle, kafka_bootstrap, *_args("txin", "g-txin", "--idle-exit", "3"))
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    scored = {r["txn_id"] for r in consume_all(kafka_bootstrap, "txin.out")}
    assert scored == committed and not scored & aborted
    # Kafka's own ConsumerGroupCommand: every partition's lag is 0 (committed past the transaction markers)
    described = _tool("groups", "--bootstrap-server", kafka_bootstrap, "--describe", "--group", "g-txin")
    rows = [line.split() for line in described.splitlines() if line.startswith("g-txin ")]
    assert rows and all(row[5] == "0" for row in rows), described
    # an explicit read_uncommitted reader sees the aborted records too
    args = _args("txin", "g-txin-all", "--idle-exit", "3", "--isolation-level", "read_uncommitted")
    args[3] = "txin.all"
    proc = start_stream(stream_bundle, kafka_bootstrap, *args)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    assert {r["txn_id"] for r in consume_all(kafka_bootstrap, "txin.all")} == committed | aborted


def test_exactly_once_survives_sigkill(kafka_bootstrap: str, stream_bundle: Path) -> None:
    create_topic(kafka_bootstrap, "eos.in")
    frame = make_transactions(60_000, seed=46).drop("is_fraud")
    _kcat_produce(
        kafka_bootstrap, "eos.in", [f"k{i}:".encode() + v for i, v in enumerate(records(frame))],
        Path(__import__("tempfile").mkdtemp()), codec="lz4", header="h=1",
    )  # fmt: skip
    args = _args("eos", "g-eos", "--exactly-once", "--batch-size", "2000")
    for kill in range(3):  # kill -9 mid-stream, three times
        proc = start_stream(stream_bundle, kafka_bootstrap, *args)
        target = (kill + 1) * 12_000
        wait_until(lambda target=target: count(kafka_bootstrap, "eos.out") >= target, timeout=240, proc=proc)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    proc = start_stream(stream_bundle, kafka_bootstrap, *args, "--idle-exit", "4")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    ids = Counter(json.loads(v)["txn_id"] for v in read_committed(kafka_bootstrap, "eos.out"))
    assert set(ids) == set(frame["txn_id"].to_list())  # 0 lost
    assert max(ids.values()) == 1  # 0 duplicates
    uncommitted = count(kafka_bootstrap, "eos.out") - sum(ids.values())
    print(f"exactly-once, SIGKILL x3 over 60k records: 0 lost, 0 duplicates ({uncommitted} aborted or markers)")


def test_idle_exit_waits_for_the_whole_group(kafka_bootstrap: str, stream_bundle: Path, tmp_path: Path) -> None:
    """Two members; one is killed with work left on its partitions: the survivor does not exit at its own 'lag 0'
    but takes the partitions over (once the dead member's session times out) and finishes them."""
    from tests.kafka_helpers import group_members

    create_topic(kafka_bootstrap, "idle.in", partitions=4)
    frame = make_transactions(300_000, seed=47).drop("is_fraud")
    lines = [f"k{i}:".encode() + v for i, v in enumerate(records(frame))]
    _kcat_produce(kafka_bootstrap, "idle.in", lines, tmp_path, codec="lz4", header="h=1")
    args = _args("idle", "g-idle", "--batch-size", "1000")
    doomed = start_stream(stream_bundle, kafka_bootstrap, *args)
    survivor = start_stream(stream_bundle, kafka_bootstrap, *args, "--idle-exit", "3")
    wait_until(lambda: group_members(kafka_bootstrap, "g-idle") == 2, every=0.05, proc=survivor)
    doomed.send_signal(signal.SIGKILL)
    doomed.communicate(timeout=30)
    killed_at = time.monotonic()
    left = 300_000 - count(kafka_bootstrap, "idle.out")
    assert left > 10_000, "the killed member had no work left: the test shows nothing"
    _, err = survivor.communicate(timeout=240)
    assert survivor.returncode == 0, err
    assert time.monotonic() - killed_at > 8  # it waited for the dead member's session to end, then took over
    ids = {r["txn_id"] for r in consume_all(kafka_bootstrap, "idle.out")}
    assert ids == set(frame["txn_id"].to_list())  # nothing left unprocessed
    print(f"idle exit: {left:,} records were left on the killed member's partitions; the survivor scored them")


@pytest.mark.parametrize("mode", ["at-least-once", "exactly-once"])
def test_outputs_the_broker_refuses_are_dead_lettered_and_counted_apart(
    kafka_bootstrap: str, stream_bundle: Path, mode: str
) -> None:
    """A scored record larger than the output topic allows (1 MB, the broker's default) is replaced by a dead
    letter of its input, the stream goes on, and the summary line and the metrics count it as a refused output,
    apart from the scored records and from the messages that could not be scored."""
    import base64
    import os

    from confluent_kafka.admin import AdminClient, NewTopic

    from tests.kafka_helpers import free_port, group_caught_up, produce, terminate

    prefix = f"refuse-{mode}"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    created = admin.create_topics([NewTopic(f"{prefix}.in", 1, 1, config={"max.message.bytes": "3000000"})])
    for future in created.values():
        future.result()
    frame = make_transactions(2000, seed=48).drop("is_fraud")
    values = [json.loads(v) for v in records(frame)]
    huge = range(0, 2000, 400)
    for i in huge:  # 1.2 MB of text that does not compress: accepted in, too large to come out
        values[i]["note"] = base64.b64encode(os.urandom(900_000)).decode()
    produce(kafka_bootstrap, f"{prefix}.in", [json.dumps(v).encode() for v in values] + [b"{not json"] * 3)
    port = free_port()
    extra = ["--exactly-once"] if mode == "exactly-once" else []
    args = _args(prefix, f"g-{prefix}", "--max-message-bytes", "3000000", "--metrics-port", str(port), *extra)
    proc = start_stream(stream_bundle, kafka_bootstrap, *args)
    wait_until(lambda: group_caught_up(kafka_bootstrap, f"g-{prefix}", f"{prefix}.in"), timeout=180, proc=proc)
    wait_until(lambda: scrape_metrics(port).get("segscope_records_in_total", 0) >= 2003, timeout=30, proc=proc)
    scraped = scrape_metrics(port)
    code, err = terminate(proc)
    assert code == 0, err
    out = [json.loads(v) for v in read_committed(kafka_bootstrap, f"{prefix}.out")]
    letters = consume_dead_letters(kafka_bootstrap, f"{prefix}.dlq", committed=True)
    # what came, if short: a refused output's letter was lost twice, the record counted as scored, before the
    # producer kept one request in flight (librdkafka took the refused batch as delivered: its IMPLICITACK)
    seen = sorted(f"{d['offset']}: {d['reason'][:48]}" for d in letters)
    said = [line for line in err.splitlines() if not line.startswith("%")][-12:]  # the stream's own, not librdkafka's
    assert len(out) == 1995 and len(letters) == 8, "\n".join([f"{len(out)} outputs, letters:", *seen, *said])
    refused = [d for d in letters if d["reason"].startswith("the scored record could not be produced")]
    assert len(refused) == 5 and all(int(d["length"]) > 1_200_000 and d["truncated"] == "true" for d in refused)
    assert {r["txn_id"] for r in out} == {v["txn_id"] for i, v in enumerate(values) if i not in huge}
    # each record counted once, in exactly one of scored, dead letters (not scorable) and refused outputs
    assert "2,003 in, 1,995 scored, " in err and " 3 dead letters, 5 refused outputs (dead-lettered)" in err, err
    assert scraped["segscope_records_in_total"] == 2003 and scraped["segscope_records_out_total"] == 1995
    assert scraped["segscope_dead_letters_total"] == 3 and scraped["segscope_refused_outputs_total"] == 5


def test_outputs_keep_every_byte_of_the_message_read_by_kcat(
    kafka_bootstrap: str, stream_bundle: Path, tmp_path: Path
) -> None:
    """Numbers a float cannot hold, escapes, a field named like a scored one: produced and read back by kcat, each
    output is the message's own bytes with the scored fields appended, with its key and header."""
    create_topic(kafka_bootstrap, "bytes.in")
    spelled = (
        ', "big": 123456789012345678901234567890, "huge": 1e400, "exact": 0.1000000000000000055511151231257827, '
        '"text": "caf\\u00e9 \\ud83d\\ude00 \\"q\\"", "nested": {"score": [1e400, {"id": "}"}]}}'
    )
    values = [v[:-1] + spelled.encode() for v in records(make_transactions(500, seed=50).drop("is_fraud"))]
    clash = values[0][:-1] + b', "score": "mine"}'  # a field named like one segscope appends: replaced
    lines = [f"k{i}:".encode() + v for i, v in enumerate([clash, *values[1:]])]
    _kcat_produce(kafka_bootstrap, "bytes.in", lines, tmp_path, codec="zstd", header="trace=t1")
    proc = start_stream(stream_bundle, kafka_bootstrap, *_args("bytes", "g-bytes", "--idle-exit", "3"))
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    out = {line.split("|", 2)[0]: line.split("|", 2) for line in _kcat_read(kafka_bootstrap, "bytes.out")}
    assert len(out) == 500
    for i, value in enumerate(values[1:], start=1):
        _, headers, text = out[f"k{i}"]
        assert headers == "trace=t1" and text.encode().startswith(value[:-1] + b",")  # every byte, in order
        record = json.loads(text, parse_int=str, parse_float=str)
        assert record["big"] == "123456789012345678901234567890" and record["huge"] == "1e400"
        assert record["id"] == json.loads(value)["txn_id"] and float(record["score"]) >= 0
    first = json.loads(out["k0"][2])
    assert first["score"] != "mine" and list(first).count("score") == 1 and first["nested"]["score"][1] == {"id": "}"}


@pytest.mark.parametrize("client", ["confluent", "kafka-python"])
def test_both_clients_score_the_same(kafka_bootstrap: str, stream_bundle: Path, client: str) -> None:
    from segscope import Model

    topic = f"clients-{client}"
    create_topic(kafka_bootstrap, f"{topic}.in")
    frame = make_transactions(2000, seed=49).drop("is_fraud")
    from tests.kafka_helpers import produce

    produce(kafka_bootstrap, f"{topic}.in", records(frame))
    proc = start_stream(
        stream_bundle, kafka_bootstrap, *_args(topic, f"g-{topic}", "--idle-exit", "3", "--client", client)
    )
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    expected = dict(zip(frame["txn_id"], Model.load(stream_bundle).score(frame)["score"], strict=True))
    out = consume_all(kafka_bootstrap, f"{topic}.out")
    assert len(out) == 2000 and all(abs(r["score"] - expected[r["txn_id"]]) < 1e-12 for r in out)
