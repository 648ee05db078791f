"""Packs on real files: the column mapping (``columns:``, ``--map NAME=COLUMN``), columns a pack drops that the file
lacks, the maintenance pack's ``sensors: numeric`` (any number of sensors, no block per sensor), and a flat sensor
that is a finding, not a fit error. The data are generated here."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from segscope.columns import parse_mapping
from segscope.config import load_config
from segscope.exceptions import ConfigError
from segscope.expressions import rename_columns
from segscope.model import Model
from segscope.testing.data import make_card_stream


def _payments_of_a_real_file() -> pl.DataFrame:
    """The fraud pack's payments with another file's names: merchant_id, amount_eur, and no is_fraud column."""
    stream = make_card_stream(n_cards=60, days=20, seed=3)
    return stream.drop("is_fraud").rename({"merchant": "merchant_id", "amount": "amount_eur"})


def test_a_mapping_renames_every_column_the_config_names() -> None:
    assert parse_mapping(["merchant=merchant_id", " label = "]) == {"merchant": "merchant_id", "label": ""}
    with pytest.raises(ConfigError, match="write NAME=COLUMN"):
        parse_mapping(["merchant"])
    cfg = load_config("fraud", columns={"merchant": "merchant_id", "amount": "amount_eur", "is_fraud": ""})
    assert cfg.features.drop == ("card_id", "ts", "merchant_id", "country")
    ofs = [f.of for f in cfg.entities[0].features]
    assert "merchant_id" in ofs and "ln(amount_eur + 1)" in ofs and "amount_eur" in ofs and "merchant" not in ofs
    assert load_config("fraud", columns=dict(cfg.columns)) == cfg  # applied once: a bundle's config loads as fitted
    with pytest.raises(ConfigError, match=r"columns renames \['merchnt'\], which this config never names"):
        load_config("fraud", columns={"merchnt": "merchant_id"})
    with pytest.raises(ConfigError, match="which the column mapping says the data lacks"):
        load_config("fraud", columns={"amount": ""})
    assert rename_columns('ln("amount" + 1) - amount', {"amount": "amt EUR"}) == 'ln("amt EUR" + 1) - "amt EUR"'


def test_the_fraud_pack_fits_a_file_with_its_own_names(run_cli, tmp_path: Path) -> None:
    path = tmp_path / "payments.csv"
    _payments_of_a_real_file().write_csv(path)
    bundle = tmp_path / "b"
    refused = run_cli("fit", path, "--config", "fraud", "--bundle", bundle)
    assert refused.code != 0 and "column 'amount' is missing" in refused.err and "Traceback" not in refused.err
    mapped = ("--map", "merchant=merchant_id", "--map", "amount=amount_eur")
    fitted = run_cli("fit", path, "--config", "fraud", "--bundle", bundle, *mapped)
    assert fitted.code == 0, fitted.err  # is_fraud, which the pack drops, is not in the file: nothing to drop
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["config"]["columns"] == {"merchant": "merchant_id", "amount": "amount_eur"}
    assert "card_id_merchant_id_first_seen" in manifest["feature_schema"]["features"]
    out = tmp_path / "scored.parquet"
    scored = run_cli("score", path, "--bundle", bundle, "--out", out)  # the bundle speaks the file's names
    assert scored.code == 0, scored.err
    assert {"merchant_id", "amount_eur", "is_alert"} <= set(pl.read_parquet(out).columns)
    config = tmp_path / "mine.yaml"  # the same mapping in a config file
    config.write_text("columns: {merchant: merchant_id, amount: amount_eur}\n" + Path(_pack("fraud")).read_text())
    assert run_cli("fit", path, "--config", config, "--bundle", tmp_path / "c").code == 0
    bad = run_cli("fit", path, "--config", "fraud", "--bundle", tmp_path / "d", "--map", "merchant")
    assert bad.code != 0 and bad.err.count("\n") == 1 and "--map 'merchant': write NAME=COLUMN" in bad.err


def _pack(name: str) -> str:
    return str(Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml")


def _machines(n_days: int = 8, every_min: int = 10, seed: int = 0) -> pl.DataFrame:
    """Two machines, three sensors of their own names, a label and a change-point column (a SKAB-like file)."""
    rng = np.random.default_rng(seed)
    n = n_days * 24 * 60 // every_min
    t = np.arange(n)
    parts = []
    for machine in ("pump-1", "pump-2"):
        parts.append(
            pl.DataFrame(
                {
                    "experiment": machine,
                    "timestamp": [datetime(2024, 1, 1) + timedelta(minutes=every_min * i) for i in range(n)],
                    "Temperature": 50 + 5 * np.sin(2 * np.pi * t / 144) + rng.normal(0, 0.5, n),
                    "Pressure": 3 + rng.normal(0, 0.05, n),
                    "Volume Flow RateRMS": 30 + rng.normal(0, 1.0, n),
                    "label": np.zeros(n, dtype=np.int64),
                    "changepoint": np.zeros(n, dtype=np.int64),
                }
            )
        )
    return pl.concat(parts).sort("timestamp")


def test_the_maintenance_pack_takes_every_sensor_of_a_file(run_cli, tmp_path: Path) -> None:
    path = tmp_path / "machines.csv"
    _machines().write_csv(path)
    bundle = tmp_path / "b"
    result = run_cli(
        "fit", path, "--config", "maintenance", "--bundle", bundle, "--map", "machine_id=experiment",
        "--drop", "changepoint",
    )  # fmt: skip
    assert result.code == 0, result.err
    features = json.loads((bundle / "manifest.json").read_text())["feature_schema"]["features"]
    sensors = ("Temperature", "Pressure", "Volume Flow RateRMS")
    # the pack's eight features for each sensor and their state together; label and changepoint left out
    assert len(features) == 8 * len(sensors) + 1
    assert all(any(f == f"experiment_{s}_std_1h" for f in features) for s in sensors)
    assert "experiment_state" in features
    assert not any("changepoint" in f or "label" in f for f in features)
    loaded = Model.load(bundle)
    assert loaded.config.entities[0].sensors == sensors  # the bundle names the sensors it was fitted on
    assert set(loaded.config.features.drop) >= {*sensors, "label", "changepoint"}  # their raw levels are not features
    listed = load_config("maintenance", columns={"machine_id": "experiment"})
    named = listed.model_copy(update={"entities": (listed.entities[0].model_copy(update={"sensors": ("Temp*",)}),)})
    frame = _machines(n_days=3)
    fitted = Model(named).fit(frame).feature_schema.features
    assert [f for f in fitted if f.startswith("experiment_")] == [
        f"experiment_Temperature_{k}"
        for k in ("new_level", "stuck", "zscore_1h", "zscore_1d", "delta", "std_1h", "ratio_1d", "seasonal_drop")
    ]
    assert "Pressure" in fitted and "Temperature" not in fitted  # not a sensor here: a plain column
    nothing = named.model_copy(update={"entities": (named.entities[0].model_copy(update={"sensors": ("vib*",)}),)})
    with pytest.raises(ConfigError, match="sensors: 'vib\\*' matches no column of the data"):
        Model(nothing).fit(frame)


def test_a_flat_sensor_is_a_finding_not_a_fit_error(run_cli, tmp_path: Path) -> None:
    """A file of one machine (no machine column: ``--map machine_id=``) whose sensor is flat over the whole fit (a
    constant column, once a fit error): it fits, scoring stays quiet while it stays as flat as its whole history
    was (a hold from the history's start is its normal, NAB's art_flatline), and when the sensor comes alive that
    reading alerts, its reasons naming the sensor."""
    n, alive = 6 * 144, 4 * 144 + 36
    stamps = [datetime(2024, 1, 1) + timedelta(minutes=10 * i) for i in range(n)]
    value = np.full(n, 3.0)
    value[alive:] += np.random.default_rng(1).normal(0, 0.3, n - alive)
    path = tmp_path / "flat.csv"
    pl.DataFrame({"timestamp": stamps, "value": value}).write_csv(path)
    bundle = tmp_path / "flat"
    result = run_cli("fit", path, "--config", "maintenance", "--bundle", bundle, "--map", "machine_id=")
    assert result.code == 0, result.err  # NAB's art_flatline was refused: "no usable feature columns"
    frame = pl.DataFrame({"timestamp": stamps, "value": value})
    model = Model(load_config("maintenance", columns={"machine_id": ""})).fit(frame[: 3 * 144])
    assert "all_value_std_1h" in model.feature_schema.features  # constant at fit, kept
    scored = model.score(frame[3 * 144 :], state=model.new_state())
    alerts = scored.filter(pl.col("is_alert"))
    assert alerts.height > 0 and alerts["timestamp"][0] == stamps[alive]  # quiet while flat; alive: a new level
    assert alerts["reasons"][0][0]["feature"].startswith("all_value_")
    out = tmp_path / "scored.csv"
    assert run_cli("score", path, "--bundle", bundle, "--out", out).code == 0
