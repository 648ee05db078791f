"""Streaming throughput and latency against a real Kafka broker (started by connectors/kafka/broker).

    python benchmarks/stream_throughput.py [--records 200000] [--repeats 3] [--latency-seconds 30] [--rate 5000]
        [--modes alo,eos,kafka-python] [--baseline OTHER/src] [--id-field] [--no-latency]

1. Throughput, the same ~200-byte JSON card transactions on a 3-partition topic, each run in its own process:
   (a) a confluent-kafka passthrough: consume 5,000, produce them unchanged, flush (acks=all), commit, repeat (a
       Python process that imports confluent-kafka only);
   (b) `segscope stream` at-least-once (confluent-kafka, the default client);
   (c) `segscope stream --exactly-once` (one transaction per batch);
   (d) `segscope stream --client kafka-python`.
   Rate = records / (time of the last output - launch of the process), start to end: start-up included (also
   reported: the rate from the first output to the last, and the seconds from launch to the first output).
   Runs alternate (a, b, c, d, a, b, ...) so all see the same machine; medians over --repeats. Every process runs
   with Python's bytecode cache, as an installed package has it (pip writes it at install; with
   PYTHONDONTWRITEBYTECODE, which some sandboxes set, an editable install's own modules would be compiled from
   source at every launch, about 0.2 s of segscope's start-up, while confluent-kafka was compiled at its install):
   the source trees are compiled first and the variable is dropped for the processes started. --baseline adds
   (e): the at-least-once stream of another source tree (e.g. a worktree of an earlier commit), in the same run;
   --id-field gives every message an "id" field holding a 30-digit integer (not the bundle's id column: segscope
   appends its own id in its place).
2. Where the time goes: the stream's stages run in this process on the same records (consume, decode, score,
   encode + produce, commit), in microseconds per record.
3. Latency: a confluent-kafka producer in another process sends records at a steady --rate with their send time
   inside; `segscope stream` scores them; latency = the scored record's timestamp - send time; p50/p99 after a 5 s
   warm-up.
Writes benchmarks/results/stream_throughput.json.
"""

from __future__ import annotations

import argparse
import inspect
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import polars as pl  # noqa: E402

from segscope import Model  # noqa: E402
from segscope.config import SegscopeConfig  # noqa: E402
from segscope.testing.data import make_transactions  # noqa: E402
from tests.kafka_helpers import broker, create_topic, free_port, start_stream  # noqa: E402


def payloads(n: int, seed: int, id_field: bool = False) -> list[bytes]:
    frame = make_transactions(n, seed=seed).drop("is_fraud").with_columns(pl.col("ts").cast(pl.String))
    # an extra free-text field (kept in the output, not a feature) brings records to ~200 bytes
    return [
        json.dumps(
            {**({"id": 10**29 + i} if id_field else {}), **r, "merchant": f"merchant {i % 997:04d}, main st."},
            separators=(",", ":"),
        ).encode()
        for i, r in enumerate(frame.iter_rows(named=True))
    ]


def fill(bootstrap: str, topic: str, values: list[bytes]) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all"})
    for value in values:
        while True:
            try:
                producer.produce(topic, value)
                break
            except BufferError:
                producer.poll(0.05)
    producer.flush(60)


def watch_rate(
    bootstrap: str, topic: str, n: int, launched: float, proc: subprocess.Popen[Any], timeout: float = 900
) -> tuple[float, float, float]:
    """(records/s start to end: from ``launched`` (time.monotonic() at the process's start) to the last output;
    records/s from the first output to the last; seconds from ``launched`` to the first output). One client asks
    for the end offsets every 50 ms (a new client each time would take CPU from the process measured)."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    watcher = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-watch"})
    parts = [TopicPartition(topic, p) for p in watcher.list_topics(topic, timeout=10).topics[topic].partitions]
    first = None
    deadline, exited = time.monotonic() + timeout, time.monotonic()
    try:
        while time.monotonic() < deadline:
            try:
                c = sum(watcher.get_watermark_offsets(tp, timeout=10, cached=False)[1] for tp in parts)
            except KafkaException:  # a busy broker's leadership moving: asked again
                time.sleep(0.05)
                continue
            now = time.monotonic()
            if c > 0 and first is None:
                first = (now, c)
            if c >= n and first is not None:
                return n / (now - launched), (c - first[1]) / max(now - first[0], 1e-9), first[0] - launched
            time.sleep(0.05)
            if proc.poll() is not None and time.monotonic() > exited + 10:  # gone for 10 s: not coming
                break
            if proc.poll() is None:
                exited = time.monotonic()
    finally:
        watcher.close()
    raise RuntimeError(f"{topic} did not reach {n} records (the process exited with {proc.returncode})")


def passthrough(bootstrap: str, source: str, target: str, n: int, group: str) -> None:
    """Consume 5,000, produce unchanged, flush (acks=all), commit: the client's own speed, no work."""
    from confluent_kafka import Consumer, Producer

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([source])
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5})
    done = 0
    while done < n:
        messages = [m for m in consumer.consume(5000, 0.1) if m.error() is None]
        for m in messages:
            producer.produce(target, m.value(), m.key())
        producer.flush(60)
        if messages:
            consumer.commit(asynchronous=False)
        done += len(messages)
    consumer.close()


def steady_producer(bootstrap: str, topic: str, values: list[bytes], rate: int) -> None:
    """``values`` at ``rate`` a second from when this process is ready (a start time set by the parent would be
    past already when a busy machine starts the process late, and the records behind it would go as one burst)."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1, "acks": "all"})
    start_at = time.time() + 0.2
    while time.time() < start_at:
        time.sleep(0.001)
    for i, value in enumerate(values):
        record = json.loads(value)
        record["sent_at"] = time.time()
        producer.produce(topic, json.dumps(record).encode())
        producer.poll(0)
        ahead = start_at + (i + 1) / rate - time.time()
        if ahead > 0:
            time.sleep(ahead)
    producer.flush(60)


def stages(bootstrap: str, bundle: Path, topic: str, n: int) -> dict[str, float]:
    """The stream's stages on the same records, in this process: microseconds per record."""
    import numba

    from segscope.sinks.kafka import KafkaSink, encode
    from segscope.sources.kafka import KafkaSource
    from segscope.sources.messages import decode

    numba.set_num_threads(1)  # as segscope stream does
    model = Model.load(bundle)
    source = KafkaSource(bootstrap=bootstrap, topic=topic, group="stages", schema=model.preparer_.schema_)
    sink = KafkaSink(bootstrap=bootstrap, topic="stages.out", dead_letter_topic="stages.dlq")
    source.open()
    sink.open()
    spent: Counter[str] = Counter()
    state, seen = model.new_state(), 0
    while seen < n:
        t0 = time.perf_counter()
        polled = source.consumer_.poll(5000, 0.5)
        t1 = time.perf_counter()
        if polled is None:
            continue
        batch = decode(polled, source.schema, max_bytes=65_536)
        t2 = time.perf_counter()
        scored = model.score(batch.frame, state=state)
        t3 = time.perf_counter()
        encode(scored, batch)
        t4 = time.perf_counter()
        sink.write(scored, batch)  # encodes again and produces
        t5 = time.perf_counter()
        source.commit_positions(sink.done_positions())
        t6 = time.perf_counter()
        for name, spent_s in (
            ("consume", t1 - t0),
            ("decode (JSON, checks, frame)", t2 - t1),
            ("score (features, detectors, reasons, policy)", t3 - t2),
            ("encode (append the scored fields)", t4 - t3),
            ("produce", (t5 - t4) - (t4 - t3)),
            ("commit", t6 - t5),
        ):
            spent[name] += spent_s
        seen += len(polled)
    sink.flush()
    source.close()
    sink.close()
    return {name: spent_s / seen * 1e6 for name, spent_s in spent.items()}


def latency(bootstrap: str, bundle: Path, rate: int, seconds: float) -> dict[str, float]:
    """p50/p99 from send to scored output at a steady ``rate`` for ``seconds`` (after a 5 s warm-up)."""
    spawn = multiprocessing.get_context("spawn")
    proc = start_stream(
        bundle, bootstrap, "--in-topic", "lat.in", "--out-topic", "lat.out", "--group", "lat",
    )  # fmt: skip
    time.sleep(5)  # start-up
    total = int(rate * seconds)
    sender = spawn.Process(target=steady_producer, args=(bootstrap, "lat.in", payloads(total, seed=2), rate))
    sender.start()
    sender.join()
    from confluent_kafka import Consumer

    reader = Consumer({"bootstrap.servers": bootstrap, "group.id": "lat-reader", "auto.offset.reset": "earliest"})
    reader.subscribe(["lat.out"])
    sends: list[tuple[float, float]] = []  # (send time, latency)
    idle_since = time.monotonic()
    while time.monotonic() - idle_since < 8 and len(sends) < total:
        messages = [m for m in reader.consume(10_000, 0.5) if m.error() is None]
        if messages:
            idle_since = time.monotonic()
        for m in messages:
            sent = json.loads(m.value())["sent_at"]
            sends.append((sent, m.timestamp()[1] / 1000.0 - sent))
    reader.close()
    proc.terminate()
    proc.communicate(timeout=60)
    first = min(sent for sent, _ in sends)
    latencies = sorted(lag for sent, lag in sends if sent - first > 5)  # the first 5 s of sending: warm-up
    p50 = latencies[len(latencies) // 2] * 1000
    p99 = latencies[int(len(latencies) * 0.99)] * 1000
    print(f"latency at {rate:,}/s: p50 {p50:.0f} ms, p99 {p99:.0f} ms over {len(latencies):,} records")
    return {"latency_rate_per_s": rate, "latency_records": len(latencies), "latency_p50_ms": p50, "latency_p99_ms": p99}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--latency-seconds", type=float, default=30.0)
    parser.add_argument("--rate", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modes", default="alo,eos,kafka-python", help="which segscope runs (comma-separated)")
    parser.add_argument("--baseline", type=Path, help="also at-least-once from this source tree (a src folder)")
    parser.add_argument("--id-field", action="store_true", help="messages carry an 'id' field (a 30-digit integer)")
    parser.add_argument("--no-latency", action="store_true", help="throughput and stages only")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "stream_throughput.json"))
    args = parser.parse_args()
    every = {
        "alo": ("segscope (at-least-once)", []),
        "eos": ("segscope --exactly-once", ["--exactly-once"]),
        "kafka-python": ("segscope --client kafka-python", ["--client", "kafka-python"]),
    }
    modes = dict(every[m] for m in args.modes.split(","))
    source = {mode: None for mode in modes}  # the source tree each runs from (None: this one)
    if args.baseline is not None:
        modes[f"baseline {args.baseline}"] = []
        source[f"baseline {args.baseline}"] = args.baseline.resolve()
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)  # for the processes started (see the module docstring)
    for tree in {ROOT / "src", *(s for s in source.values() if s is not None)}:
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(tree)], check=True)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        bootstrap = broker("start", tmp / "kafka", free_port())
        try:
            bundle = tmp / "bundle"
            Model(SegscopeConfig().with_features(id_column="txn_id", drop=("is_fraud",))).fit(
                make_transactions(50_000, seed=0)
            ).save(bundle)
            values = payloads(args.records, seed=1, id_field=args.id_field)
            size = statistics.mean(len(v) for v in values)
            for topic in ("bench.in", "lat.in"):
                create_topic(bootstrap, topic, partitions=3)
            fill(bootstrap, "bench.in", values)
            names = ["confluent-kafka passthrough", *modes]
            rates: dict[str, list[float]] = {m: [] for m in names}
            steady: dict[str, list[float]] = {m: [] for m in names}
            first: dict[str, list[float]] = {m: [] for m in names}

            def watch(mode: str, target: str, launched: float, proc: subprocess.Popen[Any]) -> None:
                rate, between, first_s = watch_rate(bootstrap, target, args.records, launched, proc)
                rates[mode].append(rate)
                steady[mode].append(between)
                first[mode].append(first_s)

            for r in range(args.repeats):
                target = f"bench.pass{r}"
                create_topic(bootstrap, target, partitions=3)
                # a process of its own importing only confluent-kafka (a spawned child would import this module,
                # Polars and segscope too: a second of start-up that is not the passthrough's)
                call = (bootstrap, "bench.in", target, args.records, f"p{r}")
                code = f"{inspect.getsource(passthrough)}\npassthrough{call!r}"
                launched = time.monotonic()
                worker = subprocess.Popen([sys.executable, "-c", code])
                watch("confluent-kafka passthrough", target, launched, worker)
                worker.wait(timeout=300)
                for m, (mode, extra) in enumerate(modes.items()):
                    target = f"bench.out{r}.{m}"
                    create_topic(bootstrap, target, partitions=3)
                    saved = os.environ.get("PYTHONPATH")
                    launched = time.monotonic()
                    if source[mode] is not None:
                        os.environ["PYTHONPATH"] = str(source[mode])
                    proc = start_stream(
                        bundle, bootstrap, "--in-topic", "bench.in", "--out-topic", target, "--group", f"b{r}.{m}",
                        "--idle-exit", "3", *extra, log=tmp / f"{target}.log",
                    )  # fmt: skip
                    if saved is None:
                        os.environ.pop("PYTHONPATH", None)
                    else:
                        os.environ["PYTHONPATH"] = saved
                    try:
                        watch(mode, target, launched, proc)
                    except RuntimeError:
                        print((tmp / f"{target}.log").read_text()[-3000:], file=sys.stderr)
                        raise
                    proc.communicate(timeout=300)
                print(
                    f"run {r + 1}: "
                    + ", ".join(f"{k} {v[-1]:,.0f}/s (first output {first[k][-1]:.1f} s)" for k, v in rates.items()),
                    flush=True,
                )
            medians = {k: statistics.median(v) for k, v in rates.items()}
            # each run's ratio to the passthrough run just before it, then the median of those
            ratios = {
                k: statistics.median(a / b for a, b in zip(v, rates[names[0]], strict=True)) for k, v in rates.items()
            }
            plain = medians["confluent-kafka passthrough"]
            for k, v in medians.items():
                print(
                    f"  {k}: {v:,.0f} records/s start to end ({ratios[k]:.2f}x the passthrough), "
                    f"{statistics.median(steady[k]):,.0f}/s first to last output, "
                    f"first output {statistics.median(first[k]):.1f} s after launch",
                    flush=True,
                )
            breakdown = stages(bootstrap, bundle, "bench.in", min(args.records, 100_000))
            print("where the time goes (us/record): " + ", ".join(f"{k} {v:.1f}" for k, v in breakdown.items()))

            lat = {} if args.no_latency else latency(bootstrap, bundle, args.rate, args.latency_seconds)
            result = {
                "records": args.records,
                "partitions": 3,
                "mean_record_bytes": size,
                "repeats": args.repeats,
                "runs_records_per_s": rates,
                "median_records_per_s": medians,
                "ratio_to_passthrough": {k: v / plain for k, v in medians.items()},
                "median_ratio_to_passthrough_by_run": ratios,
                "runs_first_to_last_output_per_s": steady,
                "runs_first_output_s": first,
                "median_first_output_s": {k: statistics.median(v) for k, v in first.items()},
                "load_average": os.getloadavg(),
                "stages_us_per_record": breakdown,
                "id_field": args.id_field,
                **lat,
            }
        finally:
            broker("stop", tmp / "kafka")
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
