"""What keeping on learning costs the stream: the maintenance pack as shipped (new levels learned per machine,
kept in the entity state) and the pack with online adaptation, as ratios to the same pack frozen at fit, against a
real Kafka broker.

    python benchmarks/adapt_stream.py [--records 200000] [--machines 200] [--repeats 3] [--adapt 1d/7d]

Sensor readings of --machines machines every minute from the day after the history (a daily cycle plus noise,
some machines drifting), JSON keyed by machine on a 3-partition topic, scored by `segscope stream` (at-least-once,
entity state checkpointed in --state-dir) with three bundles fitted on the same first day: (a) frozen: the pack's
features without its alarms (``new_level``, ``stuck``, ``seasonal_drop``, ``state``), alerting on the 0.1% threshold
of the fit scores (``contamination``), same cooldown; (b) the pack as shipped (those alarms); (c) the pack with
``adapt: {every, window}`` (--adapt): each machine's detectors refitted at every boundary its readings cross
(records / machines minutes of readings: 200,000 / 200 is under a day, no refit; 100,000 / 25 crosses two
midnights). Each run in its own process, runs alternate; rate = records / (last output - first output); medians
over --repeats. Writes benchmarks/results/adapt_stream[-<out>].json.
"""

from __future__ import annotations

import argparse
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
from segscope._typing import ALARM_KINDS  # noqa: E402
from segscope.config import AdaptConfig, PolicyConfig, load_config  # noqa: E402
from tests.kafka_helpers import broker, create_topic, free_port, produce, start_stream  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from stream_throughput import watch_rate  # noqa: E402


def readings(machines: int, minutes: int, seed: int = 0, day: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    t = np.arange(minutes)
    base = datetime(2024, 1, 1) + timedelta(days=day)
    stamps = [base + timedelta(minutes=int(i)) for i in t]
    frames = []
    for m in range(machines):
        value = 50 + 5 * np.sin(t * 2 * np.pi / 1440 + m) + rng.normal(0, 1, minutes)
        value += np.linspace(0, rng.uniform(0, 20), minutes) * (m % 5 == 0)  # every fifth machine drifts
        frames.append(pl.DataFrame({"machine_id": f"m{m:04d}", "timestamp": stamps, "value": value}))
    return pl.concat(frames).sort("timestamp", "machine_id").with_columns(pl.lit(0).alias("label"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--machines", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--adapt", default="1d/7d", help="EVERY/WINDOW of the adapting bundle")
    parser.add_argument("--out", default=None, help="results file stem suffix")
    args = parser.parse_args()
    history = readings(args.machines, 1440, seed=1)
    live = readings(args.machines, args.records // args.machines + 1, seed=2, day=1)[: args.records]
    values = [v.encode() for v in live.with_columns(pl.col("timestamp").cast(pl.String)).write_ndjson().splitlines()]
    keys = [m.encode() for m in live["machine_id"]]
    pack = load_config("maintenance")
    spec = pack.entities[0]
    learning = ALARM_KINDS  # what keeps learning from every reading: new levels, holds, hours of day, states
    frozen_spec = spec.model_copy(update={"features": tuple(f for f in spec.features if f.kind not in learning)})
    frozen = pack.model_copy(
        update={
            "entities": (frozen_spec,),
            "policy": PolicyConfig(kind="contamination", contamination=0.001, cooldown=pack.policy.cooldown),
        }
    )
    every, window = args.adapt.split("/")
    adapting = pack.model_copy(update={"adapt": AdaptConfig(every=every, window=window)})
    modes = {
        "frozen at fit": "frozen",
        "learning new levels (shipped)": "pack",
        f"adapt every {every}, window {window}": "adapting",
    }
    rates: dict[str, list[float]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        bootstrap = broker("start", tmp / "kafka", free_port())
        try:
            Model(frozen).fit(history).save(tmp / "frozen")
            Model(pack).fit(history).save(tmp / "pack")
            Model(adapting).fit(history).save(tmp / "adapting")
            create_topic(bootstrap, "sensors.in", partitions=3)
            produce(bootstrap, "sensors.in", values, keys)
            for r in range(args.repeats):
                for m, (mode, bundle) in enumerate(modes.items()):
                    target = f"sensors.out{r}.{m}"
                    create_topic(bootstrap, target, partitions=3)
                    launched = time.monotonic()
                    proc = start_stream(
                        tmp / bundle, bootstrap, "--in-topic", "sensors.in", "--out-topic", target,
                        "--group", f"s{r}.{m}", "--idle-exit", "3", "--state-dir", str(tmp / f"state{r}.{m}"),
                    )  # fmt: skip
                    rates[mode].append(watch_rate(bootstrap, target, len(values), launched, proc)[1])
                    proc.communicate(timeout=300)
                print(f"run {r + 1}: " + ", ".join(f"{k} {v[-1]:,.0f}/s" for k, v in rates.items()), flush=True)
        finally:
            broker("stop", tmp / "kafka")
    medians = {k: statistics.median(v) for k, v in rates.items()}
    base = medians["frozen at fit"]
    for k, v in medians.items():
        print(f"  {k}: {v:,.0f} records/s ({v / base:.2f}x the frozen pack)", flush=True)
    out = ROOT / "benchmarks" / "results" / f"adapt_stream{'-' + args.out if args.out else ''}.json"
    summary = {"records": len(values), "machines": args.machines, "rates": rates, "medians": medians}
    out.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
