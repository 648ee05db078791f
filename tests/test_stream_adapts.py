"""The maintenance pack as shipped (it keeps learning: the levels each machine has seen, the state a machine with
several sensors learns from its first readings, its alarm cooldown live in the entity state) through a real Kafka
broker: the stream's decisions equal the file scored in order, with a SIGKILL in the middle (entity state
checkpointed with the offsets in --state-dir)."""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from segscope.config import AdaptConfig, DetectorConfig, config_from_dict, load_config
from segscope.model import Model
from tests.kafka_helpers import consume_all, create_topic, produce, stream_killed_midway


def _machines(days: int) -> pl.DataFrame:
    """Three machines read every minute (a daily cycle plus noise); b spikes now and then, c drifts up from the
    third day (a new level every few hours), a settles at a new level on day three."""
    rng = np.random.default_rng(11)
    n = days * 1440
    stamps = [datetime(2024, 3, 1) + timedelta(minutes=i) for i in range(n)]
    rows = []
    for machine in ("a", "b", "c"):
        value = 40 + 4 * np.sin(np.arange(n) * 2 * np.pi / 1440) + rng.normal(0, 0.6, n)
        if machine == "a":
            value[int(2.5 * 1440) :] += 9
        if machine == "b":
            spikes = rng.choice(np.arange(1440, n), 12, replace=False)
            value[spikes] += rng.uniform(6, 20, 12)
        if machine == "c":
            value[2 * 1440 :] += np.linspace(0, 15, n - 2 * 1440)
        rows.append(pl.DataFrame({"machine_id": machine, "timestamp": stamps, "value": value}))
    frame = pl.concat(rows).sort("timestamp", "machine_id", maintain_order=True)
    return frame.with_columns(pl.int_range(pl.len()).cast(pl.String).alias("reading_id"), pl.lit(0).alias("label"))


def _streamed_through_a_sigkill(bootstrap: str, tmp_path: Path, live: pl.DataFrame, name: str) -> list[dict[str, Any]]:
    """``live`` produced to topic ``<name>.in`` (keyed by machine), `segscope stream` of the bundle in ``tmp_path``
    SIGKILLed in the middle and started again from its --state-dir, then every output read back: each reading
    scored (duplicates of a replay allowed)."""
    create_topic(bootstrap, f"{name}.in", partitions=3)
    payloads = [json.dumps({**r, "timestamp": r["timestamp"].isoformat()}).encode() for r in live.iter_rows(named=True)]
    produce(bootstrap, f"{name}.in", payloads, keys=[m.encode() for m in live["machine_id"]])
    args = [
        "--in-topic", f"{name}.in", "--out-topic", f"{name}.out", "--group", f"g-{name}", "--batch-size", "500",
        "--state-dir", str(tmp_path / "state"),
    ]  # fmt: skip
    stream_killed_midway(tmp_path / "bundle", bootstrap, args, f"{name}.out", live.height)
    out = consume_all(bootstrap, f"{name}.out", idle=5)
    assert set(Counter(r["id"] for r in out)) == set(live["reading_id"])  # every reading scored
    return out


def test_the_adapting_pack_streams_what_the_file_in_order_gives_through_a_sigkill(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    frame = _machines(4)
    history, live = (
        frame.filter(pl.col("timestamp") < datetime(2024, 3, 2)),
        frame.filter(pl.col("timestamp") >= datetime(2024, 3, 2)),
    )
    model = Model(load_config("maintenance").with_features(id_column="reading_id", drop=())).fit(history)
    model.save(tmp_path / "bundle")
    whole = model.score(live, state=model.new_state())
    alerts = whole.filter(pl.col("is_alert"))
    assert 5 <= alerts.height <= 60 and set(alerts["machine_id"]) == {"a", "b", "c"}  # each machine's new levels
    # a's new level and c's drift climb the pack's ladder (a new level next to a known one is 0 after a machine's
    # 8th since the fit), so the stream below must carry each machine's count through the SIGKILL too
    pack = model.config.model_dump(mode="json")
    pack["entities"][0]["features"][0].pop("ladder")
    flat = Model(config_from_dict(pack)).fit(history)
    unladdered = flat.score(live, state=flat.new_state())
    level = "machine_id_value_new_level"
    for machine in "ac":
        new, before = (f.filter(pl.col("machine_id") == machine)[level].sum() for f in (whole, unladdered))
        assert 8 <= new <= before - 6

    out = _streamed_through_a_sigkill(kafka_bootstrap, tmp_path, live, "adapt")
    names = [*model.entity_features, "anomaly_score", "is_alert"]
    expected = {r["reading_id"]: r for r in whole.select("reading_id", *names).iter_rows(named=True)}
    # exact: the stream runs on this machine (another process, the same CPU and libraries), and JSON keeps floats
    differ = [r["id"] for r in out if any(r[c] != expected[r["id"]][c] for c in names)]
    assert not differ, f"{len(differ)} of {len(out)} readings differ from the file in order, e.g. {differ[:3]}"
    streamed_alerts = {r["id"] for r in out if r["is_alert"]}
    assert streamed_alerts == set(alerts["reading_id"])


def test_online_adaptation_streams_what_the_file_in_order_gives_through_a_sigkill(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """adapt: {every: 1d, window: 2d}: each machine's detectors refitted at midnight on its last two days, the
    windows checkpointed with the offsets; a SIGKILL in the middle, and the refits made again from the restored
    windows give the same decisions as the file scored in one batch."""
    frame = _machines(4)
    history, live = frame.filter(pl.col("timestamp") < datetime(2024, 3, 2)), frame[1440 * 3 :]
    pack = load_config("maintenance").with_features(id_column="reading_id", drop=())
    # without the ladder or min_deviation: c's drift keeps making new levels, which the refits' ranks gate (those
    # two quiet them before the gate sees them)
    features = tuple(f.model_copy(update={"ladder": None, "min_deviation": None}) for f in pack.entities[0].features)
    pack = pack.model_copy(update={"entities": (pack.entities[0].model_copy(update={"features": features}),)})
    detectors = (DetectorConfig(name="iforest", params={"n_estimators": 20}), DetectorConfig(name="ecod"))
    config = pack.model_copy(update={"adapt": AdaptConfig(every="1d", window="2d"), "detectors": detectors})
    model = Model(config).fit(history)
    model.save(tmp_path / "bundle")
    state = model.new_state()
    whole = model.score(live, state=state)
    assert state.entities is not None
    assert {w.refits for w in state.entities.blocks[0].trailing.values()} == {2}  # Mar 3 and Mar 4, each machine
    frozen = Model(pack).fit(history)
    assert not whole["is_alert"].equals(frozen.score(live, state=frozen.new_state())["is_alert"])  # it gated some

    out = _streamed_through_a_sigkill(kafka_bootstrap, tmp_path, live, "adapting")
    expected = {r["reading_id"]: r["is_alert"] for r in whole.select("reading_id", "is_alert").iter_rows(named=True)}
    differ = [r["id"] for r in out if r["is_alert"] != expected[r["id"]]]
    assert not differ, f"{len(differ)} of {len(out)} readings decided otherwise than the file in order: {differ[:3]}"


def _sensor_machines() -> pl.DataFrame:
    """Machines a and b (fitted on) and c (new to the stream: it learns its state live), three correlated noisy
    sensors each, a reading a minute for two days; a's and c's sensors move apart for two hours of day two."""
    rng = np.random.default_rng(5)
    n, rows = 2 * 1440, []
    for k, machine in enumerate(("a", "b", "c")):
        load = rng.normal(0, 1, n)
        vibration, current = 2 + 0.5 * load + 0.2 * rng.normal(0, 1, n), 10 + load + 0.3 * rng.normal(0, 1, n)
        pressure = 5 + 0.4 * load + 0.2 * rng.normal(0, 1, n)
        if machine != "b":
            fault = slice(1440 + 600, 1440 + 720)
            vibration[fault], current[fault], pressure[fault] = (
                vibration[fault] + 0.4,
                current[fault] + 0.6,
                pressure[fault] - 0.6,
            )
        stamps = [datetime(2024, 3, 1) + timedelta(minutes=i, seconds=k) for i in range(n)]
        data = {"vibration": vibration, "current": current, "pressure": pressure}
        rows.append(pl.DataFrame({"machine_id": machine, "timestamp": stamps, **data}))
    frame = pl.concat(rows).sort("timestamp")
    return frame.with_columns(pl.int_range(pl.len()).cast(pl.String).alias("reading_id"))


def test_the_machine_state_streams_what_the_file_in_order_gives_through_a_sigkill(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    frame = _sensor_machines()
    day_two = pl.col("timestamp") >= datetime(2024, 3, 2)
    history = frame.filter(~day_two & (pl.col("machine_id") != "c"))
    live = frame.filter(day_two | (pl.col("machine_id") == "c"))
    model = Model(load_config("maintenance").with_features(id_column="reading_id", drop=())).fit(history)
    model.save(tmp_path / "bundle")
    whole = model.score(live, state=model.new_state())
    fault = whole.filter(pl.col("timestamp").is_between(datetime(2024, 3, 2, 10, 30), datetime(2024, 3, 2, 12)))
    for machine in ("a", "c"):  # c learnt its state from its first 1,000 readings, on day one
        assert fault.filter(pl.col("machine_id") == machine)["is_alert"].mean() > 0.8
    assert whole.filter(pl.col("machine_id") == "b")["is_alert"].sum() <= 3

    out = _streamed_through_a_sigkill(kafka_bootstrap, tmp_path, live, "state")
    names = ["machine_id_state", "is_alert"]
    expected = {r["reading_id"]: r for r in whole.select("reading_id", *names).iter_rows(named=True)}
    differ = [r["id"] for r in out if any(r[c] != expected[r["id"]][c] for c in names)]
    assert not differ, f"{len(differ)} of {len(out)} readings differ from the file in order, e.g. {differ[:3]}"
