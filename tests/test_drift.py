"""Drift against the fit data: a column that left its fit range, categories never seen at fit, an alert rate far
from the policy's, columns that look like time at fit; on files (score, evaluate), in the report, and in the
stream's stats line."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from segscope.config import SegscopeConfig
from segscope.exceptions import SegscopeWarning
from segscope.model import Model
from segscope.testing.data import make_transactions


@pytest.fixture(scope="module")
def yearly(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """History of 2024-2025 with a Year column, and next year's records: the claims set's trap, generated."""
    root = tmp_path_factory.mktemp("yearly")
    history = make_transactions(4000, seed=0).with_columns(
        pl.Series("Year", np.where(np.arange(4000) < 2000, 2024, 2025))
    )
    new = make_transactions(1500, seed=1).with_columns(pl.lit(2026).alias("Year"))
    history.write_parquet(root / "history.parquet")
    new.write_parquet(root / "new.parquet")
    same = make_transactions(1500, seed=2).with_columns(
        pl.Series("Year", np.where(np.arange(1500) % 2 == 0, 2024, 2025))
    )
    same.write_parquet(root / "same.parquet")
    return root / "history.parquet", root / "new.parquet", root / "same.parquet"


def _warnings(result) -> list[str]:  # type: ignore[no-untyped-def]
    return [line for line in result.err.splitlines() if line.startswith("warning:")]


def test_a_year_column_is_flagged_at_fit_and_its_drift_at_score(run_cli, yearly, tmp_path: Path) -> None:
    history, new, same = yearly
    bundle = tmp_path / "b"
    fit = run_cli("fit", history, "--bundle", bundle, "--id-column", "txn_id", "--drop", "is_fraud")
    assert fit.code == 0
    assert _warnings(fit) == [
        "warning: column 'Year' looks like a year (2024-2025): it drifts by construction, so new data will look "
        "anomalous on it; --drop Year unless that is what you want"
    ]
    scored = run_cli("score", new, "--bundle", bundle, "--out", tmp_path / "o.parquet")
    assert scored.code == 0
    (line,) = _warnings(scored)
    assert line.startswith("warning: Year: 100% of rows outside the fit range 2024-2025 (PSI ")
    assert "alert rate" in line and "vs 1.0% expected" in line and line.endswith("drop the column or refit")
    evaluated = run_cli("evaluate", new, "--bundle", bundle, "--label-column", "is_fraud")
    assert any("Year: 100% of rows outside" in w for w in _warnings(evaluated))
    quiet = run_cli("score", same, "--bundle", bundle, "--out", tmp_path / "q.parquet")
    assert quiet.code == 0 and _warnings(quiet) == []  # data like the fit data: nothing to say


def test_unseen_categories_and_shifted_distributions(model: Model) -> None:
    new = make_transactions(3000, seed=5)
    shifted = new.with_columns(
        pl.when(pl.int_range(pl.len()) % 4 == 0).then(pl.lit("ZZ")).otherwise(pl.col("country")).alias("country"),
        (pl.col("amount") * 8).alias("amount"),
        (pl.col("ts") + timedelta(hours=9)).alias("ts"),
    )
    tracker = model.drift_tracker()
    assert tracker is not None
    for part in shifted.iter_slices(700):  # one tracker over the batches of a file
        model.score(part, drift=tracker)
    report = tracker.report()
    by_name = {c.name: c for c in report.columns}
    assert by_name["country"].unseen == pytest.approx(0.25, abs=0.01)
    assert by_name["amount"].psi > 0.25 and by_name["ts__hour"].psi > 0.25
    assert by_name["distance_km"].psi < 0.1  # untouched columns stay quiet
    warning = report.warning()
    assert warning is not None and "country: 25% of rows hold categories never seen at fit" in warning
    calm = model.drift_tracker()
    model.score(make_transactions(3000, seed=6), drift=calm)
    assert calm.report().warning() is None


def test_missing_categories_count_as_missing_not_unseen(model: Model) -> None:
    """A null category is missing (its own share), never a category unseen at fit; a seen level outside the top
    levels is neither."""
    new = make_transactions(2000, seed=7)
    blanked = new.with_columns(
        pl.when(pl.int_range(pl.len()) % 5 == 0).then(None).otherwise(pl.col("country")).alias("country")
    )
    tracker = model.drift_tracker()
    assert tracker is not None
    model.score(blanked, drift=tracker)
    country = next(c for c in tracker.report().columns if c.name == "country")
    assert country.missing == pytest.approx(0.2, abs=0.005) and country.unseen == 0.0
    assert country.more_missing


def test_time_like_columns_are_named(model: Model) -> None:
    frame = make_transactions(500, seed=2).with_columns(
        pl.int_range(pl.len()).alias("row_no"), (pl.int_range(pl.len()) * 3 + 1000).alias("counter")
    )
    config = SegscopeConfig().with_features(id_column="txn_id", drop=("is_fraud",))
    with pytest.warns(SegscopeWarning) as caught:
        fitted = Model(config).fit(frame)
    texts = [str(w.message) for w in caught]
    assert any("'row_no' looks like a row number" in t for t in texts)
    assert any("'counter' looks like a row number or sequence" in t or "'counter' only grows" in t for t in texts)
    assert set(fitted.training_["time_like_columns"]) == {"row_no", "counter"}


def test_the_report_shows_drift(model: Model, tmp_path: Path) -> None:
    from segscope.report import build_report, load_report_data

    path = tmp_path / "new.parquet"
    make_transactions(2000, seed=3).with_columns((pl.col("amount") * 10).alias("amount")).write_parquet(path)
    data = load_report_data(model, path)
    assert data.drift is not None and data.drift.warning() is not None
    html = build_report(model, data)
    assert "Drift against the fit data" in html and "amount" in html.split("Drift against the fit data")[1]
