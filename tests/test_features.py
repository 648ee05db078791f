from __future__ import annotations

from datetime import datetime

import numpy as np
import polars as pl
import pytest

from segscope.exceptions import DataError, NotFittedError, SchemaError
from segscope.features.prepare import FeaturePreparer


def _frame() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "id": [1, 2, 3, 4, 5, 6],
            "amount": [1.0, 2.0, None, 4.0, float("nan"), 6.0],
            "kind": ["a", "a", "a", "b", None, "a"],
            "flag": [True, False, True, True, False, True],
            "when": [datetime(2026, 1, d, h) for d, h in [(1, 1), (2, 5), (3, 9), (4, 13), (5, 17), (6, 21)]],
            "constant": [7, 7, 7, 7, 7, 7],
            "empty": pl.Series([None] * 6, dtype=pl.Float64),
            "label": [0, 0, 0, 0, 0, 1],
        }
    )


def test_schema_inference_and_derived_features() -> None:
    prep = FeaturePreparer(id_column="id", drop=("label",)).fit(_frame())
    kinds = {c.name: c.kind for c in prep.schema_.columns}
    assert kinds == {"amount": "numeric", "kind": "categorical", "flag": "boolean", "when": "datetime"}
    assert prep.schema_.features == (
        "amount",
        "amount__missing",
        "kind",
        "flag",
        "when__hour",
        "when__weekday",
    )
    assert prep.dropped_ == {"constant": "constant (one value only)", "empty": "all values are null"}


def test_transform_is_robust_scaled_rarity_encoded_and_imputed() -> None:
    frame = _frame()
    prep = FeaturePreparer(id_column="id", drop=("label",)).fit(frame)
    x = prep.transform(prep.validate(frame))
    assert x.shape == (6, 6)
    assert x.dtype == np.float64
    amount = x[:, 0]
    assert amount[2] == 0.0
    assert amount[4] == 0.0
    np.testing.assert_array_equal(x[:, 1], [0, 0, 1, 0, 1, 0])  # missing indicator
    rarity = x[:, 2]
    assert rarity[3] > rarity[0]  # "b" is rarer than "a"
    assert (np.diff(x[:, 4]) > 0).all()  # hour of day, robust-scaled
    readable, categorical = prep.readable_values(prep.validate(frame))
    np.testing.assert_allclose(readable[:, 4], [1, 5, 9, 13, 17, 21])
    assert categorical[2].to_list() == ["a", "a", "a", "b", "null", "a"]


def test_expressions_made_once_per_fit_follow_a_new_fit() -> None:
    """The feature and readable-value expressions are made once per fit (a stream's batches reuse them); fitting
    the same preparer again makes them again from the new state."""
    frame = _frame()
    prep = FeaturePreparer(id_column="id", drop=("label",)).fit(frame)
    first = prep.transform(prep.validate(frame))
    np.testing.assert_array_equal(prep.transform(prep.validate(frame)), first)  # made once, the same result
    other = frame.with_columns(pl.col("amount") * 100, pl.Series("kind", ["b", "b", "b", "a", None, "b"]))
    prep.fit(other)
    fresh = FeaturePreparer(id_column="id", drop=("label",)).fit(other)
    again = prep.transform(prep.validate(frame))
    np.testing.assert_array_equal(again, fresh.transform(fresh.validate(frame)))
    assert not np.array_equal(again, first)
    readable, categorical = prep.readable_values(prep.validate(other))
    np.testing.assert_array_equal(readable, fresh.readable_values(fresh.validate(other))[0])
    assert categorical[2].to_list() == ["b", "b", "b", "a", "null", "b"]


def test_unseen_category_is_rarer_than_any_seen() -> None:
    frame = _frame()
    prep = FeaturePreparer(id_column="id", drop=("label",)).fit(frame)
    new = frame.head(1).with_columns(pl.lit("zzz").alias("kind"))
    seen = prep.transform(prep.validate(frame))[:, 2].max()
    assert prep.transform(prep.validate(new))[0, 2] > seen


def test_huge_values_are_clipped_not_overflowing() -> None:
    frame = _frame()
    prep = FeaturePreparer(id_column="id", drop=("label",)).fit(frame)
    huge = frame.head(1).with_columns(pl.lit(1e300).alias("amount"))
    x = prep.transform(prep.validate(huge))
    assert np.isfinite(x).all()
    assert x[0, 0] == prep.clip


def test_missing_column_at_score_time_is_refused() -> None:
    prep = FeaturePreparer(id_column="id", drop=("label",)).fit(_frame())
    with pytest.raises(SchemaError, match=r"column\(s\) \['kind'\] are missing"):
        prep.validate(_frame().drop("kind"))


def test_wrong_type_at_score_time_names_the_value() -> None:
    prep = FeaturePreparer(id_column="id", drop=("label",)).fit(_frame())
    bad = _frame().with_columns(pl.Series("amount", ["1", "2", "x7", "4", "5", "6"]))
    with pytest.raises(SchemaError, match=r"column 'amount' must be numeric .* row 2 holds 'x7'"):
        prep.validate(bad)


def test_numeric_strings_are_cast() -> None:
    prep = FeaturePreparer(id_column="id", drop=("label",)).fit(_frame())
    as_text = _frame().with_columns(pl.col("amount").cast(pl.String))
    np.testing.assert_array_equal(prep.transform(prep.validate(as_text)), prep.transform(prep.validate(_frame())))


def test_infinite_values_are_refused() -> None:
    with pytest.raises(DataError, match="column 'amount' has an infinite value at row 1"):
        FeaturePreparer().fit(_frame().with_columns(pl.Series("amount", [1.0, float("inf"), 3, 4, 5, 6])))


@pytest.mark.parametrize("bad", [float("inf"), float("-inf")])
def test_infinite_values_are_refused_at_score_among_nan_and_nulls(bad: float) -> None:
    prep = FeaturePreparer(id_column="id", drop=("label",)).fit(_frame())
    values = [float("nan"), None, bad, 4.0, float("nan"), 6.0]
    with pytest.raises(DataError, match="column 'amount' has an infinite value at row 2"):
        prep.validate(_frame().with_columns(pl.Series("amount", values, dtype=pl.Float64)))
    prep.validate(_frame().with_columns(pl.Series("amount", [float("nan"), None, 1.0, 4.0, float("nan"), 6.0])))


def test_numbers_with_garbage_are_refused_at_fit() -> None:
    values = [str(i) for i in range(99)] + ["n/a?"]
    frame = pl.DataFrame({"x": values, "y": list(range(100))})
    with pytest.raises(DataError, match="column 'x' looks numeric .* such as 'n/a\\?'"):
        FeaturePreparer().fit(frame)


def test_duplicate_ids_are_refused() -> None:
    frame = _frame().with_columns(pl.Series("id", [1, 2, 2, 4, 5, 6]))
    with pytest.raises(DataError, match="duplicate values .* 2 appears 2 times"):
        FeaturePreparer(id_column="id").fit(frame)


def test_no_usable_columns() -> None:
    with pytest.raises(DataError, match="no usable feature columns"):
        FeaturePreparer().fit(pl.DataFrame({"a": [1, 1, 1], "b": [None, None, None]}))


def test_a_drop_column_the_data_lacks_is_left_out_and_the_bundle_state_loads() -> None:
    frame = _frame()
    prep = FeaturePreparer(drop=("nope", "label")).fit(frame)
    assert "nope" not in prep.schema_.features and "label" not in prep.schema_.features
    copy = FeaturePreparer.from_state(prep.to_state())  # features.json's strict check still passes
    assert copy.drop == ("nope", "label")
    np.testing.assert_array_equal(copy.transform(copy.validate(frame)), prep.transform(prep.validate(frame)))
    with pytest.raises(SchemaError, match="id column 'nope' .* is not in the data"):
        FeaturePreparer(id_column="nope").fit(frame)


def test_identifier_like_strings_are_dropped() -> None:
    frame = pl.DataFrame({"ref": [f"r{i}" for i in range(50)], "v": np.arange(50.0)})
    prep = FeaturePreparer(max_categories=10).fit(frame)
    assert "ref" in prep.dropped_
    assert prep.schema_.features == ("v",)


def test_state_round_trip() -> None:
    frame = _frame()
    prep = FeaturePreparer(id_column="id", drop=("label",)).fit(frame)
    copy = FeaturePreparer.from_state(prep.to_state())
    assert copy.schema_.hash == prep.schema_.hash
    np.testing.assert_array_equal(copy.transform(copy.validate(frame)), prep.transform(prep.validate(frame)))


def test_not_fitted() -> None:
    with pytest.raises(NotFittedError):
        FeaturePreparer().validate(_frame())
