"""Drift against the fit data: a column that left its fit range, categories never seen at fit, an alert rate far
from the policy's, columns that look like time at fit; on files (score, evaluate), in the report, and in the
stream's stats line."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from segscope.config import SegscopeConfig
from segscope.exceptions import SegscopeWarning
from segscope.model import Model
from segscope.testing.data import make_transactions
from segscope.unsupervised.drift import ColumnDrift, DriftReference, DriftReport, adaptation_of, time_like_columns


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
    assert line.startswith("warning: drift in 1 column(s): Year: 100% of rows outside the fit range 2024-2025 (PSI ")
    assert "alert rate" in line and "vs 1.0% expected" in line
    assert line.endswith("the alert rate moved with the drift: if Year change(s) by construction (a clock, a counter, "
                         "a year), refit with --drop Year; else refit on recent data")  # fmt: skip
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
    assert set(fitted.training["time_like_columns"]) == {"row_no", "counter"}


def test_counters_written_as_floats_are_named_too() -> None:
    """An integer column written with a missing value (pandas: 12.0 and NaN) is a counter all the same; whole
    amounts in no order are not named."""
    n, rng = 2000, np.random.default_rng(0)
    hours = (np.arange(n) // 50).astype(np.float64)
    hours[[5, 700]] = np.nan
    frame = pl.DataFrame({
        "hour_counter": hours,
        "timestep": (rng.permutation(n) // 5).astype(np.float64),
        "dollars": rng.integers(1, 500, n).astype(np.float64),
        "amount": rng.gamma(2.0, 30.0, n),
    })  # fmt: skip
    named = time_like_columns(frame, [(c, "numeric") for c in frame.columns])
    assert named == {"hour_counter": "rises with the row order (0-39): a clock or a counter",
                     "timestep": "is named like a time counter (0-399)"}  # fmt: skip


def test_the_report_shows_drift(model: Model, tmp_path: Path) -> None:
    from segscope.report import build_report, load_report_data

    path = tmp_path / "new.parquet"
    make_transactions(2000, seed=3).with_columns((pl.col("amount") * 10).alias("amount")).write_parquet(path)
    data = load_report_data(model, path)
    assert data.drift is not None and data.drift.warning() is not None
    html = build_report(model, data)
    assert "Drift against the fit data" in html and "amount" in html.split("Drift against the fit data")[1]


def _report(alert_rate: float, expected: float | None, *columns: ColumnDrift) -> DriftReport:
    return DriftReport(10_000, alert_rate, expected, list(columns))


def _shift(name: str, psi: float, outside: float = 0.0, part: str = "") -> ColumnDrift:
    return ColumnDrift(name, psi, outside, 0.0, "0-1", part=part)


def test_a_drift_line_names_every_drifted_column_and_advises_dropping_only_when_alerts_moved() -> None:
    columns = [_shift(f"c{i:02d}", psi=1.0 + i) for i in range(28)] + [_shift("calm", 0.01)]
    assert _report(0.011, 0.01, *columns).warning() is None  # drift, alerts as expected: described, no warning
    unaffected = _report(0.011, 0.01, *columns).summary()
    assert unaffected is not None and "drift in 28 column(s)" in unaffected
    assert all(f"c{i:02d}" in unaffected for i in range(28)) and "calm" not in unaffected  # every one, no "more"
    assert "more column" not in unaffected and "--drop" not in unaffected and "drop the column" not in unaffected
    assert unaffected.endswith(
        "alert rate 1.1% vs 1.0% expected: drift seen but alerts are unaffected (the rate is as expected): no column "
        "needs dropping"
    )
    assert unaffected.index("c27:") < unaffected.index("also ")  # the worst three described first
    # the alert rate moved: drop only what left its fit range (a clock), not a column that merely shifted
    clock, shifted = _shift("epoch_s", 9.0, outside=1.0), _shift("amount", 3.0, outside=0.2)
    hour = _shift("ts__hour", 5.0, outside=0.9, part="hour")
    moved = _report(0.4, 0.01, clock, shifted, hour).warning()
    assert moved is not None and "refit with --drop epoch_s; else refit on recent data" in moved
    assert "--drop amount" not in moved and "--drop ts" not in moved
    only_shifted = _report(0.4, 0.01, shifted).warning()
    assert only_shifted is not None and "--drop" not in only_shifted and "refit on recent data" in only_shifted
    budget = _report(0.002, None, shifted).warning()
    assert budget is not None and "--drop" not in budget and "cannot show whether alerts are affected" in budget
    low = _report(0.0005, 0.01, shifted).summary()
    assert low is not None and "fewer alerts than expected" in low and "--drop" not in low
    assert _report(0.3, 0.01).warning() == "alert rate 30.0% vs 1.0% expected with no column drifted: check the " + (
        "input or refit"
    )
    assert _report(0.01, 0.01, _shift("calm", 0.01)).warning() is None


def test_clocks_and_counters_are_named_at_fit_with_the_drop_to_use(run_cli, tmp_path: Path) -> None:
    """An hour counter, epoch seconds and epoch milliseconds went in as plain numbers: fit names them in one
    warning with the exact options, keeps them (nothing dropped silently), and score's drift line points at them
    once the alert rate moves; refitting with those options quiets both."""
    rng = np.random.default_rng(0)

    def month(seed: int, start: datetime, first_step: int) -> pl.DataFrame:
        frame = make_transactions(4000, seed=seed, start=start)
        epoch = frame["ts"].dt.epoch("s") + rng.integers(-900, 900, frame.height)  # arrival not quite in order
        return frame.with_columns(
            (pl.int_range(pl.len()) // 200 + first_step).alias("step"),  # hours since the start, in order
            epoch.alias("epoch_s"),
            (epoch * 1000 + rng.integers(0, 1000, frame.height)).alias("epoch_ms"),
            pl.col("ts").dt.hour().alias("hour"),  # the hour of the day: stays in its range, not named
            pl.Series("shuffled_step", rng.permutation(frame.height) // 5 + first_step),
        ).rename({"shuffled_step": "timestep"})

    month(0, datetime(2026, 1, 1), 1).write_parquet(tmp_path / "jan.parquet")
    month(1, datetime(2026, 3, 1), 1000).write_parquet(tmp_path / "mar.parquet")
    fit = run_cli("fit", tmp_path / "jan.parquet", "--bundle", tmp_path / "b", "--id-column", "txn_id",
                  "--drop", "is_fraud")  # fmt: skip
    assert fit.code == 0, fit.err
    (line,) = _warnings(fit)
    assert "'step' rises with the row order (1-20): a clock or a counter" in line
    assert "'epoch_s' holds epoch seconds (2026-01-01 to 2026-01-30)" in line
    assert "'epoch_ms' holds epoch milliseconds (" in line and "'timestep' is named like a time counter (" in line
    assert "'hour'" not in line
    assert line.endswith("refit with --drop step --drop epoch_s --drop epoch_ms --drop timestep unless that is what "
                         "you want")  # fmt: skip
    kept = set(Model.load(tmp_path / "b").feature_schema.features)
    assert {"step", "epoch_s", "epoch_ms", "timestep", "hour"} <= kept  # named, not dropped
    scored = run_cli("score", tmp_path / "mar.parquet", "--bundle", tmp_path / "b", "--out", tmp_path / "o.parquet")
    (drift,) = _warnings(scored)
    assert "the alert rate moved with the drift" in drift
    assert "--drop step --drop epoch_s --drop epoch_ms --drop timestep" in drift.replace("--drop ts ", "")

    refit = run_cli("fit", tmp_path / "jan.parquet", "--bundle", tmp_path / "b2", "--id-column", "txn_id",
                    "--drop", "is_fraud", "--drop", "step", "--drop", "epoch_s", "--drop", "epoch_ms",
                    "--drop", "timestep")  # fmt: skip
    assert refit.code == 0 and _warnings(refit) == []
    again = run_cli("score", tmp_path / "mar.parquet", "--bundle", tmp_path / "b2", "--out", tmp_path / "o2.parquet")
    assert again.code == 0 and not any("alert rate moved" in w for w in _warnings(again))


def test_an_epoch_event_time_is_named_and_its_drop_keeps_the_entity_features() -> None:
    from segscope.config import load_config
    from segscope.testing.data import make_card_stream

    pack = load_config(Path(__file__).resolve().parents[1] / "configs" / "fraud.yaml")
    cards = make_card_stream(200, days=10, seed=4)
    epoch_ms = cards.with_columns(pl.col("ts").dt.epoch("ms"))
    keep_ts = pack.features.model_copy(update={"drop": tuple(c for c in pack.features.drop if c != "ts")})
    with pytest.warns(SegscopeWarning, match=r"column 'ts' holds epoch milliseconds .*; --drop ts unless"):
        Model(pack.model_copy(update={"features": keep_ts})).fit(epoch_ms)
    quiet = Model(pack).fit(epoch_ms)  # the pack drops ts
    names = list(quiet.entity_features)
    assert names and "ts" in {c.name for c in quiet.input_schema().columns}  # the entities still read it
    assert all(n in quiet.score(epoch_ms.head(50)).columns for n in names)


def test_the_warning_comes_where_alerts_explode_and_says_when_the_policy_adapted() -> None:
    """A stream's columns move all the time; a run is bad when its alerts explode. The fit rows show a rate down to
    one row in them: 0 alerts among 750 fit rows is not an expected rate of zero that one alert exceeds."""
    shifted = _shift("machine_value_zscore_1d", 2.0)
    ref = DriftReference().fit(pl.DataFrame({"v": np.arange(750.0)}), [("v", "numeric")], 0.0)
    assert ref.expected_alert_rate == pytest.approx(1 / 750)
    assert DriftReference.from_state(ref.to_state(), [("v", "numeric")]).expected_alert_rate == pytest.approx(1 / 750)
    old = {k: v for k, v in ref.to_state().items() if k != "fit_rows"}  # a bundle saved before fit_rows was kept
    assert DriftReference.from_state(old, [("v", "numeric")]).expected_alert_rate == 0.0
    few = DriftReport(4000, 5 / 4000, ref.expected_alert_rate, [shifted], "policy.recalibrate 60d, cooldown 1d")
    assert few.warning() is None
    assert "the adaptation took it into account" in (few.summary() or "")
    many = DriftReport(4000, 40 / 4000, ref.expected_alert_rate, [shifted], "policy.recalibrate 60d, cooldown 1d")
    warning = many.warning() or ""
    assert "alert rate 1.0% vs 0.1% expected (adapting: policy.recalibrate 60d, cooldown 1d)" in warning
    assert "moved with the drift despite the adaptation" in warning
    frozen = DriftReport(4000, 40 / 4000, ref.expected_alert_rate, [shifted])
    assert "adapting" not in (frozen.warning() or "") and "despite" not in (frozen.warning() or "")
    config = SegscopeConfig.model_validate(
        {"policy": {"recalibrate": "60d", "cooldown": "1d"}, "entities": [{"features": [{"kind": "since_last"}]}]}
    )
    assert adaptation_of(config.policy) == "policy.recalibrate 60d, cooldown 1d"
    assert adaptation_of(SegscopeConfig().policy) == ""


@settings(max_examples=200, deadline=None)
@given(
    values=hnp.arrays(
        np.float64,
        st.integers(0, 9_000),  # past two of the kernel's blocks of 4,096 rows
        elements=st.one_of(st.floats(-1e6, 1e6), st.just(np.nan), st.sampled_from([0.0, 1.0, -1.0])),
    ),
    edges=st.lists(st.sampled_from([-2.0, -1.0, 0.0, 0.5, 1.0, 3.0, 1e5]), max_size=9, unique=True).map(sorted),
    bounds=st.tuples(st.floats(-10, 10), st.floats(-10, 10)).map(sorted),
)
def test_drift_counts_match_numpy(values: np.ndarray, edges: list[float], bounds: list[float]) -> None:
    """The compiled per-column count (blocks in parallel) against NumPy's searchsorted and bincount."""
    from segscope.unsupervised import _kernels

    grid = np.asarray(edges, dtype=np.float64)
    low, high = bounds
    counts, outside = _kernels.drift_counts(values, grid, low, high)
    present = values[~np.isnan(values)]
    expected = np.bincount(np.searchsorted(grid, present, side="left"), minlength=grid.size + 1)
    assert counts.tolist() == [*expected.tolist(), int(np.isnan(values).sum())]
    assert outside == int(((present < low) | (present > high)).sum())
