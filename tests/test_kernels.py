"""The compiled kernels against plain NumPy brute force, including ties and values outside the reference."""

from __future__ import annotations

import numba as nb
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from segscope.unsupervised import _ecdf


def _brute(x: np.ndarray, ref: np.ndarray, skew: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ECOD scores and per-cell contributions, computed directly from counts."""
    m = ref.shape[0]
    le = (ref[None, :, :] <= x[:, None, :]).sum(axis=1)
    ge = (ref[None, :, :] >= x[:, None, :]).sum(axis=1)
    lo, hi = ref.min(axis=0), ref.max(axis=0)
    table = _ecdf.build_ecdf(ref)
    with np.errstate(all="ignore"):  # np.where evaluates both branches
        beyond = np.where(
            x > hi,
            np.log1p((x - hi) / table.tail_width[:, 1]),
            np.where(x < lo, np.log1p((lo - x) / table.tail_width[:, 0]), 0),
        )
    ul = np.log(m + 1) - np.log(le + 1) + np.where(le == 0, beyond, 0)
    ur = np.log(m + 1) - np.log(ge + 1) + np.where(ge == 0, beyond, 0)
    uskew = np.where(skew < 0, ul, np.where(skew > 0, ur, ul + ur))
    ecod = np.maximum(np.maximum(ul, ur), uskew).sum(axis=1)
    contrib = np.maximum(np.maximum(ul, ur) - np.log(2), 0)
    return ecod, contrib


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), levels=st.sampled_from([0, 3, 40]), m=st.integers(2, 400))
def test_fused_ecdf_kernel_matches_brute_force(seed: int, levels: int, m: int) -> None:
    rng = np.random.default_rng(seed)
    ref = rng.normal(size=(m, 4)) * [1, 100, 1e-3, 1]
    if levels:  # discrete columns: many ties
        ref[:, 0] = rng.integers(0, levels, size=m)
    ref[:, 3] = 5.0 if seed % 3 == 0 else ref[:, 3]  # sometimes a constant column
    x = np.concatenate([ref[: m // 2], rng.normal(size=(60, 4)) * [3, 300, 3e-3, 3]])
    skew = np.array([-1.0, 0.0, 1.0, 0.0])
    table = _ecdf.build_ecdf(ref)
    _, val, total, ecod = _ecdf.top_contributions(x, table, 2, skew, True)
    want_ecod, want_contrib = _brute(x, ref, skew)
    np.testing.assert_allclose(ecod, want_ecod, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(total, want_contrib.sum(axis=1), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(val, -np.sort(-want_contrib, axis=1)[:, :2], rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(_ecdf.ecdf_outlier_scores(x, table, skew, False), want_ecod, rtol=1e-10, atol=1e-10)


def test_ecdf_index_is_exact_where_values_crowd_and_spread() -> None:
    """Heavy tails crowd most values into a few uniform buckets, a tight cluster puts many distinct values into one
    cell, and a range of subnormal width overflows the buckets per unit: the look-ups stay exact (the brute force's
    counts) for values in the reference, between its values, at its edges and beyond."""
    rng = np.random.default_rng(7)
    m = 3000
    ref = np.column_stack(
        [
            rng.standard_cauchy(m),  # heavy tails: the bulk in a few of the uniform buckets
            np.concatenate([1.0 + rng.random(m - 3) * 1e-12, [0.0, 5e5, 1e6]]),  # a cluster far narrower than a cell
            rng.integers(0, 3, m) * 5e-324,  # a subnormal span
            np.abs(rng.normal(size=m)) ** 1.5,
        ]
    )
    x = np.concatenate(
        [ref[:500], ref[:500] + 1e-13, rng.standard_cauchy((300, 4)), ref.min(0)[None], ref.max(0)[None]]
    )
    skew = np.array([1.0, -1.0, 0.0, 1.0])
    table = _ecdf.build_ecdf(ref)
    assert table.steps[0] <= 3 and table.steps[3] <= 3  # about one value a cell despite the skew
    _, val, total, ecod = _ecdf.top_contributions(x, table, 2, skew, True)
    want_ecod, want_contrib = _brute(x, ref, skew)
    np.testing.assert_allclose(ecod, want_ecod, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(total, want_contrib.sum(axis=1), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(val, -np.sort(-want_contrib, axis=1)[:, :2], rtol=1e-10, atol=1e-10)


@nb.njit
def _compiled_cells(values: np.ndarray, low: float, inv_width: float, sub_start: np.ndarray) -> np.ndarray:
    out = np.empty(values.shape[0], dtype=np.int64)
    for i in range(values.shape[0]):
        out[i] = _ecdf._cell(values[i], low, inv_width, sub_start)
    return out


def test_tables_are_built_with_the_cells_the_kernels_look_up() -> None:
    """A table is built in NumPy (no Numba at a bundle's load) and read by the compiled look-ups: both put every
    value in the same cell, for heavy tails, a crowded cluster, a subnormal span, the widest floats and ties."""
    rng = np.random.default_rng(11)
    columns = [
        rng.standard_cauchy(4000),
        np.concatenate([1.0 + rng.random(997) * 1e-12, [0.0, 5e5, 1e6]]),
        rng.integers(0, 3, 500) * 5e-324,
        np.concatenate([rng.normal(size=300), [-1e307, 1e307]]),
        np.round(rng.normal(size=2000), 1),
        np.full(10, 3.0),
    ]
    for column in columns:
        table = _ecdf.build_ecdf(column[:, None])
        values = np.unique(column)
        probes = np.clip(np.concatenate([values, values + np.abs(values) * 1e-9]), table.low[0], table.high[0])
        for sub_start in (table.sub_start[0], np.arange(_ecdf.BUCKETS + 1)):
            want = _compiled_cells(probes, table.low[0], table.inv_width[0], sub_start)
            np.testing.assert_array_equal(_ecdf._cells_of(probes, table.low[0], table.inv_width[0], sub_start), want)


def test_ecdf_results_do_not_depend_on_the_blocks() -> None:
    """Rows are split into blocks by the number of threads; a row's result is the same in any block."""
    rng = np.random.default_rng(3)
    ref = rng.normal(size=(500, 3))
    x = rng.normal(size=(20_000, 3)) * 2
    table = _ecdf.build_ecdf(ref)
    skew = np.array([1.0, 0.0, -1.0])
    whole = _ecdf.ecdf_outlier_scores(x, table, skew, False)
    parts = np.concatenate(
        [_ecdf.ecdf_outlier_scores(x[i : i + 777], table, skew, False) for i in range(0, 20_000, 777)]
    )
    np.testing.assert_array_equal(whole, parts)
    assert np.isnan(_ecdf.ecdf_outlier_scores(np.full((1, 3), np.nan), table, skew, True)).all()


@pytest.mark.parametrize("depth_samples", [2, 17, 256, 1000])
def test_forest_matches_scikit_learn_for_any_depth(depth_samples: int) -> None:
    from sklearn.ensemble import IsolationForest

    from segscope.unsupervised.detect import IForestDetector

    rng = np.random.default_rng(depth_samples)
    x = np.round(rng.normal(size=(1200, 3)), 1)  # ties make shallow leaves
    det = IForestDetector(n_estimators=20, max_samples=depth_samples).fit_matrix(x)
    ref = IsolationForest(n_estimators=20, max_samples=depth_samples, random_state=0).fit(x)
    test = rng.normal(size=(517, 3)) * 2
    # exact: scikit-learn's scorer and the compiled copy run in this process, on this CPU (nothing compared across
    # machines); the claim is bit-for-bit equality with scikit-learn here
    np.testing.assert_array_equal(det.score_matrix(test), -ref.score_samples(test))


# the forms reasons print, each with a value it must print so (six significant digits, correctly rounded)
_NUMBER_FORMS = {
    0.778712345: "0.778712",
    -2.331924: "-2.33192",
    123456.7: "123457.0",  # rounded to whole: the decimal's '.0'
    14310994836.46293: "14311000000.0",  # no float noise from scaling back
    0.000123456789: "0.000123457",
    1.5e-4: "0.00015",
    9.999996e-5: "0.0001",  # %g: rounded up out of the exponent form
    1.23456789e-5: "1.23457e-05",
    -2.5e-300: "-2.5e-300",
    1e15: "1e+15",
    3.0: "3",
    -7.0: "-7",
    -0.0: "0",
    999999999999999.0: "999999999999999",
    float("nan"): "null",
    float("inf"): "inf",
    float("-inf"): "-inf",
    5e-324: "4.94066e-324",
}


def test_numbers_print_in_their_documented_form() -> None:
    from segscope.unsupervised.explain import _format_numbers, format_number

    values = list(_NUMBER_FORMS)
    assert [format_number(v) for v in values] == list(_NUMBER_FORMS.values())
    assert _format_numbers(np.array(values)).to_list() == list(_NUMBER_FORMS.values())


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=1, max_size=50))
def test_compiled_number_forms_equal_the_python_definition(values: list[float]) -> None:
    from segscope.unsupervised.explain import _format_numbers, format_number

    assert _format_numbers(np.array(values)).to_list() == [format_number(v) for v in values]


def test_compiled_number_forms_on_a_million_values_of_every_scale() -> None:
    from segscope.unsupervised.explain import _format_numbers, format_number

    rng = np.random.default_rng(0)
    values = rng.normal(size=200_000) * np.exp(rng.normal(0, 8, 200_000))
    values[::7] = np.round(values[::7])
    assert _format_numbers(values).to_list() == [format_number(float(v)) for v in values]


def test_number_forms_of_a_column_longer_than_one_kernel_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past ``_FORMAT_CHUNK`` values the strings are made in pieces (a view's offset is an int32): the same
    strings, in order, long forms (kept outside the views) included."""
    from segscope.unsupervised import explain

    values = np.array([-999999000000000.5, 0.000123457, 1.5, float("nan"), 12345678.9, -0.00011, 7.0] * 3)
    whole = explain._format_numbers(values).to_list()
    monkeypatch.setattr(explain, "_FORMAT_CHUNK", 4)
    assert explain._format_numbers(values).to_list() == whole == [explain.format_number(float(v)) for v in values]
