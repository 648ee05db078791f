"""Per-entity state in the stream: throughput with the fraud pack's state on, as a ratio to the same stream
without state, against a real Kafka broker; and the state's memory per million entities.

    python benchmarks/entity_stream.py [--records 200000] [--repeats 3] [--entities 1000000]

1. Throughput: card payments (``make_card_stream``, JSON, keyed by card on a 3-partition topic), scored by
   `segscope stream` (at-least-once) with three bundles fitted on the same history: (a) the fraud pack's
   detectors and columns without ``entities:`` (no state), (b) the fraud pack with its entity state checkpointed
   in --state-dir with the offsets, (c) the fraud pack without --state-dir (state kept in memory only). Each run in
   its own process; rate = records / (time of the last output - time of the first output); runs alternate;
   medians over --repeats.
2. Memory: one pass of the fraud pack over --entities cards with 3 payments each; the state's own account
   (arrays, keys, the (card, value) table) and the process's resident memory before and after, per million.
Writes benchmarks/results/entity_stream.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from segscope import Model  # noqa: E402
from segscope.config import load_config  # noqa: E402
from segscope.features.entity import EntityFeatures  # noqa: E402
from segscope.testing.data import make_card_stream  # noqa: E402
from tests.kafka_helpers import broker, create_topic, free_port, produce, start_stream  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from stream_throughput import watch_rate  # noqa: E402

PACK = ROOT / "configs" / "fraud.yaml"


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def memory(n_entities: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    n = 3 * n_entities
    start = datetime(2025, 1, 1)
    frame = pl.DataFrame(
        {
            "card_id": [f"c{x:08d}" for x in rng.permutation(np.repeat(np.arange(n_entities), 3))],
            "ts": pl.datetime_range(start, start + timedelta(seconds=n - 1), "1s", eager=True),
            "amount": np.round(rng.lognormal(3, 1, n), 2),
            "merchant": [f"m{x:04d}" for x in rng.integers(0, 5000, n)],
            "country": rng.choice(["FR", "DE", "GB", "ES", "IT"], n).tolist(),
        }
    )
    gc.collect()
    before = _rss()
    feats = EntityFeatures(load_config(PACK).entities).fit(frame)
    del frame
    gc.collect()
    after = _rss()
    state = feats.state_
    per_million = 1e6 / state.entities
    return {
        "entities": state.entities,
        "state_bytes_per_million": state.nbytes() * per_million,
        "rss_growth_per_million": (after - before) * per_million,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--entities", type=int, default=1_000_000)
    args = parser.parse_args()
    cards = make_card_stream(max(200, args.records // 140), days=60, seed=2)
    history, live = cards[: cards.height // 3], cards[cards.height // 3 :].drop("is_fraud")[: args.records]
    values = [v.encode() for v in live.with_columns(pl.col("ts").cast(pl.String)).write_ndjson().splitlines()]
    keys = [c.encode() for c in live["card_id"]]
    pack = load_config(PACK)
    no_state = pack.model_copy(update={"entities": ()})
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        bootstrap = broker("start", tmp / "kafka", free_port())
        try:
            Model(no_state).fit(history).save(tmp / "plain")
            Model(pack).fit(history).save(tmp / "pack")
            create_topic(bootstrap, "cards.in", partitions=3)
            produce(bootstrap, "cards.in", values, keys)
            modes = {
                "no entity state": ("plain", []),
                "fraud pack, state checkpointed (--state-dir)": ("pack", ["--state-dir"]),
                "fraud pack, state in memory only": ("pack", []),
            }
            rates: dict[str, list[float]] = {m: [] for m in modes}
            for r in range(args.repeats):
                for m, (mode, (bundle, extra)) in enumerate(modes.items()):
                    target = f"cards.out{r}.{m}"
                    create_topic(bootstrap, target, partitions=3)
                    flags = [*extra, str(tmp / f"state{r}.{m}")] if extra else []
                    launched = time.monotonic()
                    proc = start_stream(
                        tmp / bundle, bootstrap, "--in-topic", "cards.in", "--out-topic", target,
                        "--group", f"c{r}.{m}", "--idle-exit", "3", *flags,
                    )  # fmt: skip
                    rates[mode].append(watch_rate(bootstrap, target, len(values), launched, proc)[1])
                    proc.communicate(timeout=300)
                print(f"run {r + 1}: " + ", ".join(f"{k} {v[-1]:,.0f}/s" for k, v in rates.items()), flush=True)
        finally:
            broker("stop", tmp / "kafka")
    medians = {k: statistics.median(v) for k, v in rates.items()}
    base = medians["no entity state"]
    for k, v in medians.items():
        print(f"  {k}: {v:,.0f} records/s ({v / base:.2f}x the stream without state)", flush=True)
    mem = memory(args.entities)
    print(
        f"state of {mem['entities']:,} cards: {mem['state_bytes_per_million'] / 2**20:,.0f} MiB per million entities "
        f"(its own account), process grew {mem['rss_growth_per_million'] / 2**20:,.0f} MiB per million",
        flush=True,
    )
    out = ROOT / "benchmarks" / "results" / "entity_stream.json"
    out.write_text(json.dumps({"records": len(values), "rates": rates, "medians": medians, "memory": mem}, indent=1))


if __name__ == "__main__":
    main()
