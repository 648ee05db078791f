"""Bundles written before the architecture moves (commit 9435906, by ``tests/golden/make_golden.py``) must load
and score exactly as they did: a bundle with segments and segment-aware scoring, and a registry whose current
version is fine-tuned (XGBoost). Users keep their bundles across upgrades."""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from segscope import Model
from segscope import registry as reg

GOLDEN = Path(__file__).parent / "golden"


@pytest.mark.parametrize("name", ["bundle", "registry"])
def test_golden_bundles_load_and_score_identically(name: str, tmp_path: Path) -> None:
    copy = tmp_path / name  # loading must not touch the checked-in files
    shutil.copytree(GOLDEN / name, copy)
    model = Model.load(copy)
    expected = pl.read_parquet(GOLDEN / f"{name}-scores.parquet")
    scored = model.score(pl.read_parquet(GOLDEN / "input.parquet"))
    # every column the bundle scored when it was made, exactly (columns added since are extra)
    assert_frame_equal(scored.select(expected.columns), expected, check_exact=True)
    if name == "registry":
        assert reg.is_registry(copy) and model.supervised_ is not None
        assert scored["supervised_score"].is_not_null().all()
    else:
        assert model.segmenter_ is not None and (scored["segment"] >= 0).any()
        # a bundle from before nearest segments still declines below its min_confidence (0.5), now with the figure
        declined = scored.filter(pl.col("segment") == -1)["segment_confidence"]
        assert declined.len() and (declined < 0.5).all()


def test_golden_bundle_round_trips_through_save(tmp_path: Path) -> None:
    """Loaded and saved again by today's code, the bundle still scores the same."""
    model = Model.load(GOLDEN / "bundle")
    model.save(tmp_path / "again")
    inputs = pl.read_parquet(GOLDEN / "input.parquet")
    again = Model.load(tmp_path / "again").score(inputs)
    expected = pl.read_parquet(GOLDEN / "bundle-scores.parquet")
    assert_frame_equal(again.select(expected.columns), expected, check_exact=True)
    assert_frame_equal(again, model.score(inputs), check_exact=True)
