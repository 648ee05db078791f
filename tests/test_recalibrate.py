"""policy.recalibrate: each entity held to its own trailing window of scores, alerts kept out of it, the window
carried in the entity state (any batches, a checkpoint in the middle: the same decisions)."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from segscope.config import PolicyConfig, SegscopeConfig, config_from_dict, load_config
from segscope.exceptions import ConfigError
from segscope.features._entity_kernel import PEAK_BUCKETS
from segscope.features.entity import RECALIBRATE_MIN_SCORES
from segscope.model import Model, ScoringState

SPAN = timedelta(days=3)


def _sensors(days: int = 12, seed: int = 0) -> pl.DataFrame:
    """Two machines read every 10 minutes: a daily cycle plus noise; machine b's noise grows over the days and it
    fails on day 9 (a level jump for six hours)."""
    rng = np.random.default_rng(seed)
    n = days * 144
    stamps = [datetime(2024, 1, 1) + timedelta(minutes=10 * i) for i in range(n)]
    rows = []
    for machine, grow in (("a", 0.0), ("b", 0.25)):
        cycle = np.sin(np.arange(n) * 2 * np.pi / 144)
        noise = rng.normal(0, 1, n) * (0.2 + grow * np.arange(n) / 144)
        value = 10 + cycle + noise
        if machine == "b":
            value[9 * 144 : 9 * 144 + 36] += 8
        rows.append(pl.DataFrame({"machine_id": machine, "timestamp": stamps, "value": value, "label": 0}))
    return pl.concat(rows).sort("timestamp", "machine_id", maintain_order=True)


def _pack(recalibrate: str | None, cooldown: str | None = None) -> SegscopeConfig:
    cfg = load_config("maintenance")
    policy = PolicyConfig(kind="contamination", contamination=0.001, recalibrate=recalibrate, cooldown=cooldown)
    return cfg.model_copy(update={"policy": policy})


def test_each_alert_beats_its_entity_window_and_every_other_score_does_not() -> None:
    frame = _sensors()
    history, new = frame[: 2 * 288], frame[2 * 288 :]
    model = Model(_pack("3d")).fit(history)
    scored = model.score(new, state=model.new_state()).with_columns(
        (pl.col("timestamp").cast(pl.Int64) / 1e6).alias("t")
    )
    sure = SPAN.total_seconds() * (PEAK_BUCKETS - 1) / PEAK_BUCKETS  # surely inside the bucketed window
    checked = 0
    for _, rows in scored.group_by("machine_id"):
        t, s, alert = rows["t"].to_numpy(), rows["score"].to_numpy(), rows["is_alert"].to_numpy()
        joined = s.copy()  # what each row left in the window: its score, or for an alert the level it beat
        for i in range(len(t)):
            window = (t < t[i]) & (t > t[i] - SPAN.total_seconds())
            top = joined[window].max() if window.any() else -np.inf
            if alert[i]:
                joined[i] = min(s[i], top)
            if ((t < t[i]) & (t >= t[i] - sure)).sum() < RECALIBRATE_MIN_SCORES:
                continue
            checked += 1
            assert (s[i] > top) == alert[i], i  # alerts exactly above the entity's own window
    assert checked > 2000
    b = scored.filter(pl.col("machine_id") == "b")
    fault = b["timestamp"].is_between(datetime(2024, 1, 10), datetime(2024, 1, 10, 6))
    # the failure is caught, and without a cooldown it goes on alerting: its readings never raise the window
    assert b.filter(fault)["is_alert"].sum() >= 0.8 * fault.sum()


def test_any_batches_and_a_checkpoint_in_the_middle_decide_the_same() -> None:
    frame = _sensors(days=8, seed=1)
    history, new = frame[:576], frame[576:]
    model = Model(_pack("2d", cooldown="6h")).fit(history)
    whole = model.score(new, state=model.new_state())
    assert whole["is_alert"].sum() > 0
    state = model.new_state()
    parts = [model.score(new[i : i + 97], state=state) for i in range(0, 970, 97)]
    assert isinstance(state, ScoringState) and state.entities is not None
    saved = [state.entities.to_bytes(i) for i in range(len(state.entities.blocks))]
    restored = model.new_state()
    assert isinstance(restored, ScoringState) and restored.entities is not None
    for i, data in enumerate(saved):
        restored.entities.load_bytes(i, data)
    parts += [model.score(new[i : i + 500], state=restored) for i in range(970, new.height, 500)]
    assert_frame_equal(whole, pl.concat(parts), check_exact=True)


def test_recalibrate_needs_entities_and_a_positive_window() -> None:
    with pytest.raises(ConfigError, match="recalibrate holds each entity"):
        config_from_dict({"policy": {"recalibrate": "7d"}})
    with pytest.raises(ConfigError, match="recalibrate must be longer than zero"):
        config_from_dict({"policy": {"recalibrate": "0d"}, "entities": [{"key": "m", "features": []}]})
