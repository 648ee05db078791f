"""The scoring contract (README, "What a scored record holds") on the library API."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from segscope import SCORED_COLUMNS, Model, NotFittedError, SchemaError
from segscope.config import DetectorConfig, SegscopeConfig
from segscope.unsupervised.explain import REASON_DTYPE


def test_scored_columns_types_and_ranges(model: Model, new_records: pl.DataFrame) -> None:
    scored = model.score(new_records)
    assert scored.columns == [*new_records.columns, *SCORED_COLUMNS]
    assert scored.select(new_records.columns).equals(new_records)  # input columns untouched
    schema = scored.schema
    assert schema["score"] == pl.Float64
    assert schema["anomaly_score"] == pl.Float64
    assert schema["supervised_score"] == pl.Float64
    assert scored["supervised_score"].null_count() == scored.height
    assert schema["is_alert"] == pl.Boolean
    assert schema["segment"] == pl.Int32
    assert (scored["segment"] == -1).all()
    assert schema["segment_confidence"] == pl.Float64 and scored["segment_confidence"].is_null().all()
    assert schema["reasons"] == REASON_DTYPE
    assert schema["model_version"] == pl.String
    assert (scored["model_version"] == model.version).all()
    assert scored["anomaly_score"].is_between(0.0, 1.0).all()
    assert scored["score"].equals(scored["anomaly_score"])


def test_the_scored_schema_is_known_without_scoring(
    model: Model, segments_model: Model, segments_history: pl.DataFrame, new_records: pl.DataFrame
) -> None:
    """What `score` gives, from the input's schema alone (Spark's output schema, an empty file's output): an input
    column with a scored column's name keeps its place and takes the scored type."""
    renamed = new_records.rename({"is_fraud": "score"})
    for fitted, frame in ((model, new_records), (model, renamed), (segments_model, segments_history.head(50))):
        assert fitted.scored_schema(frame.schema) == fitted.score(frame).schema
    with pytest.raises(SchemaError, match=r"\['amount'\] are missing"):
        model.scored_schema(new_records.drop("amount").schema)


def test_planted_fraud_ranks_high(model: Model, new_records: pl.DataFrame) -> None:
    scored = model.score(new_records)
    auc = roc_auc_score(scored["is_fraud"].to_numpy(), scored["score"].to_numpy())
    assert auc > 0.95


def test_reasons_name_the_planted_feature(model: Model) -> None:
    frame = pl.DataFrame(
        {
            "txn_id": ["a", "b"],
            "ts": pl.Series(["2026-02-01 13:00:00", "2026-02-01 14:00:00"]).str.to_datetime(),
            "amount": [35.0, 90_000.0],
            "merchant_category": ["grocery", "grocery"],
            "country": ["US", "US"],
            "card_present": [True, True],
            "n_txn_24h": [3, 3],
            "distance_km": [5.0, 5.0],
            "is_fraud": [0, 1],
        }
    )
    scored = model.score(frame)
    assert scored["score"][1] > scored["score"][0]
    top = scored["reasons"][1][0]
    assert top["feature"] == "amount"
    assert top["value"] == "90000"
    assert float(top["expected"]) == pytest.approx(float(model.expected_values["amount"]))
    assert 0 < top["contribution"] <= 1


def test_unseen_category_is_scored_with_a_reason(model: Model, new_records: pl.DataFrame) -> None:
    frame = new_records.head(3).with_columns(pl.lit("XX-never-seen").alias("country"))
    reasons = model.score(frame)["reasons"].to_list()
    values = [r["value"] for row in reasons for r in row if r["feature"] == "country"]
    assert values
    assert all(v == "XX-never-seen (unseen)" for v in values)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_scores_do_not_depend_on_the_batch(model: Model, new_records: pl.DataFrame, data: st.DataObject) -> None:
    rows = new_records.head(300)
    whole = model.score(rows).select("txn_id", "score", "anomaly_score", "reasons")
    perm = data.draw(st.permutations(range(rows.height)))
    cuts = sorted(data.draw(st.lists(st.integers(1, rows.height - 1), max_size=6, unique=True)))
    shuffled = rows[list(perm)]
    parts = [shuffled[a:b] for a, b in zip([0, *cuts], [*cuts, rows.height], strict=True)]
    rescored = pl.concat([model.score(p) for p in parts]).select(whole.columns)
    assert rescored.sort("txn_id").equals(whole.sort("txn_id"))  # same process, same CPU: exact


def test_column_order_does_not_matter(model: Model, new_records: pl.DataFrame) -> None:
    reordered = new_records.select(list(reversed(new_records.columns)))
    a = model.score(new_records)["score"]
    b = model.score(reordered)["score"]
    assert a.equals(b)  # same process, same CPU: exact


def test_scoring_never_changes_the_model(model: Model, new_records: pl.DataFrame, tmp_path) -> None:
    model.save(tmp_path / "before")
    first = model.score(new_records)["score"]
    for _ in range(3):
        model.score(new_records.sample(200, seed=1))
    model.save(tmp_path / "after")
    before = (tmp_path / "before" / "arrays").iterdir()
    for path in before:
        assert path.read_bytes() == (tmp_path / "after" / "arrays" / path.name).read_bytes(), path.name
    assert model.score(new_records)["score"].equals(first)  # same process, same CPU: exact


def test_bundle_round_trip_scores_identically(model: Model, new_records: pl.DataFrame, tmp_path) -> None:
    model.save(tmp_path / "b")
    loaded = Model.load(tmp_path / "b")
    assert loaded.version == model.version
    assert loaded.score(new_records).equals(model.score(new_records))  # save/load in one process: exact


def test_isolation_forest_matches_scikit_learn_exactly() -> None:
    from sklearn.ensemble import IsolationForest

    from segscope.unsupervised.detect import IForestDetector

    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 6)) * [1, 10, 100, 0.1, 1, 5]
    det = IForestDetector(n_estimators=50).fit_matrix(x)
    reference = IsolationForest(n_estimators=50, max_samples=256, random_state=0).fit(x)
    test = rng.normal(size=(2000, 6)) * 3
    # exact: both scorers run in this process, on this CPU (nothing compared across machines)
    np.testing.assert_array_equal(det.score_matrix(test), -reference.score_samples(test))


@pytest.mark.parametrize("name", ["ecod", "copod"])
def test_ecdf_detectors_rank_training_rows_like_pyod(name: str) -> None:
    from pyod.models.copod import COPOD
    from pyod.models.ecod import ECOD
    from scipy.stats import spearmanr

    from segscope.unsupervised.detect import make_detector

    rng = np.random.default_rng(1)
    x = np.column_stack([rng.lognormal(size=2000), rng.normal(size=2000), -rng.lognormal(size=2000)])
    ours = make_detector(name).fit_matrix(x).reference_scores_
    theirs = (ECOD if name == "ecod" else COPOD)().fit(x).decision_scores_
    assert spearmanr(ours, theirs)[0] > 0.999


def test_every_detector_and_combination_runs(history: pl.DataFrame, new_records: pl.DataFrame, tmp_path: Path) -> None:
    """Every built-in detector fits, scores, and survives a bundle (its state is plain arrays the loader takes)."""
    detectors = tuple(DetectorConfig(name=n) for n in ("iforest", "ecod", "copod", "hbos", "knn", "cblof"))
    cfg = SegscopeConfig(detectors=detectors, combine="mean").with_features(id_column="txn_id", drop=("is_fraud",))
    model = Model(cfg).fit(history)
    scored = model.score(new_records)
    assert roc_auc_score(scored["is_fraud"].to_numpy(), scored["score"].to_numpy()) > 0.9
    model.save(tmp_path / "b")
    assert Model.load(tmp_path / "b").score(new_records)["score"].equals(scored["score"])  # one process: exact


def test_model_must_be_fitted(new_records: pl.DataFrame) -> None:
    with pytest.raises(NotFittedError, match="not fitted"):
        Model().score(new_records)


def test_empty_frame_scores_to_empty(model: Model, new_records: pl.DataFrame) -> None:
    scored = model.score(new_records.head(0))
    assert scored.height == 0
    assert scored.columns == [*new_records.columns, *SCORED_COLUMNS]


def test_a_record_scores_the_same_alone(model: Model, new_records: pl.DataFrame) -> None:
    """Every record scored on its own equals it scored among 1,500 (reasons included): a one-ulp difference in
    a prepared feature once moved a record across a tied reference value and changed its reasons."""
    whole = model.score(new_records).select("txn_id", "score", "anomaly_score", "reasons")
    alone = pl.concat([model.score(new_records[i : i + 1]) for i in range(new_records.height)]).select(whole.columns)
    assert alone.equals(whole)  # batch independence, same process, same CPU: exact
