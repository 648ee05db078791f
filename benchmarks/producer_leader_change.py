"""Outputs reported delivered that no topic holds: librdkafka's idempotent producer and a partition whose leader is
not ready yet (a topic the first produce creates, as a stream's output, alerts and dead-letter topics are), against
a real broker started for each series (connectors/kafka/broker):

    python benchmarks/producer_leader_change.py [--series 6] [--rounds 12] [--busy 1]

Each round produces to two topics that do not exist yet: on the first, two record batches of one 1.2 MB message
(over the broker's 1 MB limit: refused) then 399 small ones; on the second, a message every 50. Delivered = the
delivery reports without an error; written = the first topic's end offset. A loss is a round where more were
reported delivered than written. Two producers, each series on a fresh broker, alternating:
(a) segscope's own (``segscope._kafka.make_producer``, the settings `segscope stream` uses);
(b) the same settings with librdkafka's default of 5 requests in flight (``max.in.flight.requests.per.connection``,
    which segscope no longer lets a user set);
and for each, librdkafka's debug lines counted: "Not leader for partition" (the broker refused a batch unwritten)
and IMPLICITACK (a batch taken as delivered because a later one of its partition was written).
``--busy N`` runs N Python busy loops meanwhile (a loaded machine makes the leader's start slower). Writes
benchmarks/results/producer_leader_change.json.
"""

from __future__ import annotations

import argparse
import base64
import json
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.kafka_helpers import broker, free_port  # noqa: E402


def _busy(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def _reporter(delivered: list[bool]) -> Any:
    def report(err: object, _msg: object) -> None:
        delivered.append(err is None)

    return report


def series(arm: str, rounds: int, log: Path) -> dict[str, int]:
    """One broker, ``rounds`` rounds with the producer of ``arm``; librdkafka's lines go to ``log`` (fd 2)."""
    from confluent_kafka import Consumer, Producer, TopicPartition

    from segscope._kafka import make_producer
    from segscope._kafka_setup import KafkaSettings

    with tempfile.TemporaryDirectory() as tmp:
        bootstrap = broker("start", Path(tmp) / "kafka", free_port())
        saved = os.dup(2)
        out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(out, 2)  # librdkafka writes its debug lines to standard error itself
        lost = 0
        try:
            for _ in range(rounds):
                topic = f"leader-{time.time_ns()}"
                if arm == "segscope":  # the client itself, as the stream's sink drives it
                    producer = make_producer(
                        "confluent", bootstrap=bootstrap, max_request_bytes=6_000_000,
                        settings=KafkaSettings.build(None, ["debug=msg"]),
                    ).producer  # fmt: skip
                else:
                    producer = Producer({
                        "bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True, "linger.ms": 5,
                        "message.max.bytes": 6_000_000, "compression.type": "lz4", "debug": "msg",
                        "max.in.flight.requests.per.connection": 5,
                    })  # fmt: skip
                delivered: list[bool] = []
                report = _reporter(delivered)
                for _batch in range(2):
                    huge = b'{"note": "' + base64.b64encode(os.urandom(900_000)) + b'"}'
                    producer.produce(topic, huge, on_delivery=report)
                    for i in range(399):
                        producer.produce(topic, b'{"i": %d, "pad": "%s"}' % (i, b"x" * 150), on_delivery=report)
                        if i % 50 == 0:
                            producer.produce(topic + ".b", b'{"i": %d}' % i)
                    producer.poll(0)
                producer.flush(60)
                reader = Consumer({"bootstrap.servers": bootstrap, "group.id": topic})
                written = reader.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)[1]
                reader.close()
                lost += sum(delivered) > written
                del producer  # destroyed here, before its broker stops
        finally:
            os.dup2(saved, 2)
            os.close(out)
            broker("stop", Path(tmp) / "kafka")
    text = log.read_text(errors="replace")
    return {
        "rounds": rounds,
        "rounds_with_a_loss": lost,
        "not_leader": text.count("Not leader for partition"),
        "implicit_acks": text.count("IMPLICITACK"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=6, help="series per producer, each on a fresh broker")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--busy", type=int, default=1, help="Python busy loops running meanwhile")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "producer_leader_change.json"))
    args = parser.parse_args()
    arms = {"segscope": "segscope (one request in flight)", "five": "same settings, 5 requests in flight"}
    totals = {arm: {"rounds": 0, "rounds_with_a_loss": 0, "not_leader": 0, "implicit_acks": 0} for arm in arms}
    loops = [multiprocessing.Process(target=_busy, args=(86_400,), daemon=True) for _ in range(args.busy)]
    for loop in loops:
        loop.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for s in range(args.series):
                for arm in arms:
                    got = series(arm, args.rounds, Path(tmp) / f"{arm}-{s}.log")
                    for key, value in got.items():
                        totals[arm][key] += value
                    print(f"series {s + 1}, {arms[arm]}: {got}", flush=True)
    finally:
        for loop in loops:
            loop.terminate()
    for arm, label in arms.items():
        t = totals[arm]
        print(
            f"  {label}: {t['rounds_with_a_loss']} rounds of {t['rounds']} with a loss; {t['not_leader']} batches "
            f"refused unwritten (not leader), {t['implicit_acks']} taken as delivered by a later batch"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "totals": totals}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
