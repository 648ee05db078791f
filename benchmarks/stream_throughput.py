"""Streaming throughput and latency against a real Kafka broker (started by connectors/kafka/broker).

    python benchmarks/stream_throughput.py [--records 200000] [--latency-seconds 30]

1. Throughput: the same ~200-byte JSON card transactions on a 3-partition topic, consumed -> produced by
   (a) a plain kafka-python passthrough (consume, produce unchanged, flush, commit per batch) and
   (b) `segscope stream` with the default model (decode, check, score, reasons, produce, flush, commit).
   Rate = records / (time of the last output - time of the first output), so process start-up is excluded.
2. Latency: a producer sends records at a steady 5,000/s with their send time inside; `segscope stream`
   scores them; latency = timestamp of the scored record - send time; p50/p99 after a 5 s warm-up.
Writes benchmarks/results/stream_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import polars as pl  # noqa: E402
from kafka import KafkaConsumer, KafkaProducer  # noqa: E402
from kafka.structs import OffsetAndMetadata  # noqa: E402

from segscope import Model  # noqa: E402
from segscope.config import SegscopeConfig  # noqa: E402
from segscope.testing.data import make_transactions  # noqa: E402
from tests.kafka_helpers import broker, count, create_topic, free_port, produce, start_stream  # noqa: E402


def payloads(n: int, seed: int) -> list[bytes]:
    frame = make_transactions(n, seed=seed).drop("is_fraud").with_columns(pl.col("ts").cast(pl.String))
    # an extra free-text field (kept in the output, not a feature) brings records to ~200 bytes
    return [
        json.dumps({**r, "merchant": f"merchant {i % 997:04d}, main st."}, separators=(",", ":")).encode()
        for i, r in enumerate(frame.iter_rows(named=True))
    ]


def watch_rate(bootstrap: str, topic: str, n: int, timeout: float = 900) -> float:
    first = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        c = count(bootstrap, topic)
        now = time.monotonic()
        if c > 0 and first is None:
            first = (now, c)
        if c >= n and first is not None:
            return (c - first[1]) / max(now - first[0], 1e-9)
        time.sleep(0.1)
    raise RuntimeError(f"{topic} did not reach {n} records")


def passthrough(bootstrap: str, source: str, target: str, n: int, batch: int, group: str) -> None:
    consumer = KafkaConsumer(
        source,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=batch,
        fetch_max_bytes=64 * 1024 * 1024,
    )
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, batch_size=512 * 1024)
    done = 0
    while done < n:
        polled = consumer.poll(timeout_ms=500, max_records=batch)
        futures = [producer.send(target, key=m.key, value=m.value) for msgs in polled.values() for m in msgs]
        producer.flush()
        assert all(f.succeeded() for f in futures)
        consumer.commit({tp: OffsetAndMetadata(msgs[-1].offset + 1, "", -1) for tp, msgs in polled.items()})
        done += len(futures)
    consumer.close()
    producer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--latency-seconds", type=float, default=30.0)
    parser.add_argument("--rate", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "stream_throughput.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="segscope-stream-bench-") as tmp_name:
        tmp = Path(tmp_name)
        bootstrap = broker("start", tmp / "kafka", free_port())
        try:
            bundle = tmp / "bundle"
            Model(SegscopeConfig().with_features(id_column="txn_id", drop=("is_fraud",))).fit(
                make_transactions(50_000, seed=0)
            ).save(bundle)
            values = payloads(args.records, seed=1)
            size = statistics.mean(len(v) for v in values)
            for topic in ("bench.in", "lat.in", "lat.out"):
                create_topic(bootstrap, topic, partitions=3)
            produce(bootstrap, "bench.in", values)
            plains, ours_runs = [], []
            for r in range(args.repeats):  # alternate, so both see the same machine
                create_topic(bootstrap, f"bench.pass{r}", partitions=3)
                create_topic(bootstrap, f"bench.out{r}", partitions=3)
                thread = threading.Thread(
                    target=passthrough, args=(bootstrap, "bench.in", f"bench.pass{r}", args.records, 5000, f"pass{r}")
                )
                thread.start()
                plains.append(watch_rate(bootstrap, f"bench.pass{r}", args.records))
                thread.join()
                proc = start_stream(
                    bundle,
                    bootstrap,
                    "--in-topic",
                    "bench.in",
                    "--out-topic",
                    f"bench.out{r}",
                    "--group",
                    f"bench{r}",
                    "--idle-exit",
                    "5",
                )
                ours_runs.append(watch_rate(bootstrap, f"bench.out{r}", args.records))
                proc.communicate(timeout=120)
                print(
                    f"run {r + 1}: passthrough {plains[-1]:,.0f}/s, segscope stream {ours_runs[-1]:,.0f}/s", flush=True
                )
            plain, ours = statistics.median(plains), statistics.median(ours_runs)
            print(
                f"medians: passthrough {plain:,.0f} records/s, segscope stream {ours:,.0f} records/s = "
                f"{ours / plain:.0%} of the passthrough",
                flush=True,
            )

            # latency at a steady rate
            proc = start_stream(
                bundle,
                bootstrap,
                "--in-topic",
                "lat.in",
                "--out-topic",
                "lat.out",
                "--group",
                "lat",
                "--batch-size",
                "1000",
            )
            time.sleep(4)  # start-up
            total = int(args.rate * args.latency_seconds)
            steady = payloads(total, seed=2)
            producer = KafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=1)
            start = time.time()
            for i, value in enumerate(steady):
                record = json.loads(value)
                record["sent_at"] = time.time()
                producer.send("lat.in", json.dumps(record).encode())
                ahead = start + (i + 1) / args.rate - time.time()
                if ahead > 0:
                    time.sleep(ahead)
            producer.flush()
            consumer = KafkaConsumer(
                "lat.out",
                bootstrap_servers=bootstrap,
                auto_offset_reset="earliest",
                consumer_timeout_ms=8000,
                max_poll_records=10_000,
            )
            latencies = []
            for msg in consumer:
                record = json.loads(msg.value)
                if record["sent_at"] - start > 5:  # warm-up excluded
                    latencies.append(msg.timestamp / 1000.0 - record["sent_at"])
            consumer.close()
            proc.terminate()
            proc.communicate(timeout=60)
            latencies.sort()
            p50 = latencies[len(latencies) // 2] * 1000
            p99 = latencies[int(len(latencies) * 0.99)] * 1000
            achieved = total / (time.time() - start)
            print(f"latency at {args.rate:,}/s: p50 {p50:.0f} ms, p99 {p99:.0f} ms over {len(latencies):,} records")
            result = {
                "records": args.records,
                "partitions": 3,
                "mean_record_bytes": size,
                "repeats": args.repeats,
                "passthrough_runs": plains,
                "segscope_runs": ours_runs,
                "passthrough_records_per_s": plain,
                "segscope_records_per_s": ours,
                "ratio": ours / plain,
                "latency_rate_per_s": args.rate,
                "latency_records": len(latencies),
                "latency_p50_ms": p50,
                "latency_p99_ms": p99,
                "producer_rate_achieved": achieved,
            }
        finally:
            broker("stop", tmp / "kafka")
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
