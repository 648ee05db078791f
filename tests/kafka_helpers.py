"""Helpers for tests against the real Kafka broker (connectors/kafka/broker)."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

ROOT = Path(__file__).resolve().parent.parent
BROKER = ROOT / "connectors" / "kafka" / "broker"


def free_port() -> int:
    """A free port below the kernel's ephemeral range (32768+): a broker restarted on it cannot find it taken
    by a client's outgoing connection (clients reconnecting to the stopped broker use ephemeral ports)."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-32000")


def broker(action: str, data: Path, port: int | None = None) -> str:
    args = [str(BROKER), action, "--data", str(data)] + (["--port", str(port)] if port else [])
    out = subprocess.run(args, capture_output=True, text=True, check=False, timeout=180)
    if out.returncode != 0:
        raise RuntimeError(f"connectors/kafka/broker {action} failed ({out.returncode}): {out.stderr[-3000:]}")
    return out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""


def create_topic(bootstrap: str, name: str, partitions: int = 3) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        admin.close()


def produce(bootstrap: str, topic: str, values: Iterable[bytes], keys: Iterable[bytes | None] | None = None) -> int:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_request_size=2_000_000)
    n = 0
    listed = None if keys is None else list(keys)
    for i, value in enumerate(values):
        key = None if listed is None else listed[i]
        producer.send(topic, key=key, value=value)
        n += 1
    producer.flush()
    producer.close()
    return n


def records(frame) -> list[bytes]:  # type: ignore[no-untyped-def]
    import polars as pl

    rows = frame.with_columns(pl.col("ts").cast(pl.String)).iter_rows(named=True)
    return [json.dumps(r).encode() for r in rows]


def _reader(bootstrap: str, topic: str, idle: float) -> KafkaConsumer:
    """Reads the whole topic from the start, stopping after ``idle`` seconds without a message."""
    return KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=int(idle * 1000),
        max_poll_records=10_000,
        fetch_max_bytes=64 * 1024 * 1024,
    )


def _drain(bootstrap: str, topic: str, idle: float, timeout: float = 180.0) -> list[Any]:
    """Every message of the topic: read until each partition's position reaches its end offset (a pause of
    ``idle`` seconds alone does not end it: a busy machine or a restarted broker can pause that long)."""
    consumer = _reader(bootstrap, topic, idle)
    out: list[Any] = []
    started = time.monotonic()
    try:
        while True:
            out += list(consumer)
            parts = list(consumer.assignment())
            if parts:
                ends = consumer.end_offsets(parts)
                if all(consumer.position(tp) >= end for tp, end in ends.items()):
                    return out
            elif time.monotonic() > started + 3 * idle:
                return out  # nothing assigned after waiting: a topic that does not exist
            if time.monotonic() > started + timeout:
                raise AssertionError(f"{topic}: not read to its end in {timeout:.0f} s ({len(out)} messages)")
    finally:
        consumer.close()


def consume_all(bootstrap: str, topic: str, idle: float = 3.0) -> list[dict]:
    return [json.loads(m.value) for m in _drain(bootstrap, topic, idle)]


def consume_dead_letters(bootstrap: str, topic: str, idle: float = 3.0) -> list[dict]:
    """Dead letters as dicts: the ``segscope.dlq.*`` headers (without the prefix), plus the record's ``key``,
    raw ``value`` and the original ``headers``."""
    out = []
    for m in _drain(bootstrap, topic, idle):
        headers = list(m.headers or [])
        letter = {k.removeprefix("segscope.dlq."): v.decode() for k, v in headers if k.startswith("segscope.dlq.")}
        letter.update(key=m.key, value=m.value, headers=[(k, v) for k, v in headers if not k.startswith("segscope.")])
        out.append(letter)
    return out


def read_committed(bootstrap: str, topic: str, timeout: float = 60.0) -> list[bytes]:
    """Every value a read_committed reader (confluent-kafka, i.e. librdkafka) sees, reading each partition until its
    position passes the partition's end (the end of the last transaction included)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{time.monotonic_ns()}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    parts = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
    consumer.assign([TopicPartition(topic, p, 0) for p in parts])
    ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
    out: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out += [m.value() for m in consumer.consume(10_000, 0.5) if m.error() is None]
        positions = {tp.partition: tp.offset for tp in consumer.position([TopicPartition(topic, p) for p in parts])}
        if all(positions[p] >= ends[p] or ends[p] == 0 for p in parts):
            break
    else:
        raise AssertionError(f"{topic}: a read_committed reader did not reach the end in {timeout} s")
    consumer.close()
    return out


def count(bootstrap: str, topic: str) -> int:
    """Messages in ``topic``: the sum of its partitions' end offsets (0 for a topic that does not exist)."""
    return sum(end_offsets(bootstrap, topic).values())


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """Each partition's end offset (high watermark)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        from kafka.structs import TopicPartition

        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or set()]
        return {tp.partition: int(o) for tp, o in sorted(consumer.end_offsets(tps).items())}
    finally:
        consumer.close()


def committed_offsets(bootstrap: str, group: str) -> dict[str, int]:
    """The group's committed offsets, as "topic/partition": offset."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        found = admin.list_group_offsets({group: None})[group]
        return {f"{tp.topic}/{tp.partition}": int(meta.offset) for tp, meta in sorted(found.items())}
    finally:
        admin.close()


def group_caught_up(bootstrap: str, group: str, topic: str) -> bool:
    """Whether ``group`` has committed every partition of ``topic`` up to its end: the stream's work is done.
    (The output topic's size is no such signal: at-least-once, a rebalance or a restart re-sends batches, and
    their duplicates can make it reach the input's count while records are still to come.)"""
    ends = end_offsets(bootstrap, topic)
    try:
        committed = committed_offsets(bootstrap, group)
    except Exception:  # the coordinator is not there yet (a restarted broker)
        return False
    return bool(ends) and all(committed.get(f"{topic}/{p}", -1) >= end for p, end in ends.items())


def group_members(bootstrap: str, group: str) -> int:
    """Members of a consumer group once it is stable (0 while it rebalances)."""
    from kafka.errors import KafkaError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        info = admin.describe_groups([group])[group]
        return len(info["members"]) if info["group_state"] == "Stable" else 0
    except KafkaError:  # the group's coordinator is not there yet (a new group on a new broker)
        return 0
    finally:
        admin.close()


def start_stream(bundle: Path, bootstrap: str, *args: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "segscope.cli", "stream", "--bundle", str(bundle), "--bootstrap", bootstrap, *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def wait_until(predicate, timeout: float = 120.0, every: float = 0.3, proc=None, explain=None) -> None:  # type: ignore[no-untyped-def]
    """Wait for ``predicate``; on time-out, stop ``proc`` (a stream) and show what it printed, and what
    ``explain()`` says (e.g. offsets and the broker's log, to tell a lost output from a slow stream)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the stream exited with {proc.returncode}: {proc.communicate()[1][-3000:]}")
        if time.monotonic() > deadline:
            detail = ""
            if proc is not None:
                proc.kill()
                detail = proc.communicate()[1][-3000:]
            if explain is not None:
                detail += f"\n{explain()}"
            raise AssertionError(f"condition not reached in {timeout} s {detail}")
        time.sleep(every)


def terminate(proc: subprocess.Popen[str], sig: int = signal.SIGTERM, timeout: float = 60) -> tuple[int, str]:
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


REGISTRY = ROOT / "connectors" / "schema-registry" / "registry"


def schema_registry(action: str, data: Path, port: int | None = None, *auth: str) -> str:
    """Start or stop a real schema registry (Apicurio Registry, Confluent's API) by connectors/schema-registry;
    ``auth``: ``--user NAME --password-file FILE``. Returns its URL on start."""
    args = [str(REGISTRY), action, "--data", str(data), *(["--port", str(port)] if port else []), *auth]
    out = subprocess.run(args, capture_output=True, text=True, check=False, timeout=300)
    if out.returncode != 0:
        raise RuntimeError(f"schema-registry/registry {action} failed ({out.returncode}): {out.stderr[-3000:]}")
    return out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
