"""Values inside a handed-over bundle that its file checks let through (every checksum recomputed, as an attacker
does): drift references, feature statistics, the alert threshold, segment profiles and the fine-tuned learner.
Each is refused at load in one line, or made harmless; none may fail halfway through scoring with a traceback,
nor size an allocation (a red team's round: a 7 KB manifest asked for 8 GB)."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from segscope import BundleError, Model
from segscope.supervised.stored import no_nan
from segscope.supervised.xgb import check_booster_json
from segscope.unsupervised.profiles import expected_rows, expected_table
from tests.fuzz_bundle import edit_npz, rehash

ROOT = Path(__file__).resolve().parents[1]

Edit = Callable[[dict[str, Any]], None]


def _edited(source: Path, target: Path, name: str, edit: Edit) -> Path:
    """A copy of ``source`` with the JSON file ``name`` edited and every checksum recomputed."""
    shutil.copytree(source, target)
    data = json.loads((target / name).read_text())
    edit(data)
    (target / name).write_text(json.dumps(data))
    rehash(target)
    return target


def _score_one_line(bundle: Path, data: Path, out: Path, fragment: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "segscope.cli", "score", str(data), "--bundle", str(bundle), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    assert fragment in lines[0], lines[0]
    assert not out.exists()


def _refused(bundle: Path, fragment: str) -> None:
    """Refused at load, in one line (the CLI prints it as ``error: ...``, exit 2)."""
    with pytest.raises(BundleError) as refused:
        Model.load(bundle)
    assert "\n" not in str(refused.value) and fragment in str(refused.value), str(refused.value)


def _numeric(index: int, key: str, value: Any) -> Edit:
    def edit(drift: dict[str, Any]) -> None:
        drift["numeric"][index][key] = value

    return edit


def _short(section: str) -> Edit:
    def edit(drift: dict[str, Any]) -> None:
        drift[section][0]["shares"] = drift[section][0]["shares"][:-1]

    return edit


def _set(key: str, value: Any) -> Edit:
    def edit(drift: dict[str, Any]) -> None:
        drift[key] = value

    return edit


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (_numeric(0, "edges", ["0.5"]), "drift.json: numeric.0.edges.0"),
        (_numeric(0, "edges", [[0.1, 0.2]]), "drift.json: numeric.0.edges.0"),
        (_short("numeric"), "bins that do not fit its edges"),
        (_short("categorical"), "shares that do not fit its levels"),
        (_numeric(0, "column", "nope"), "['nope'] are not input columns"),
        (_set("alert_rate", "0.01"), "drift.json: alert_rate"),
        (_set("alert_rate", math.nan), "drift.json: alert_rate"),
    ],
    ids=[
        "edge-text",
        "edges-2d",
        "numeric-shares-short",
        "categorical-shares-short",
        "column",
        "rate-text",
        "rate-nan",
    ],
)
def test_a_crafted_drift_reference_is_refused_at_load(bundle: Path, tmp_path: Path, edit: Edit, fragment: str) -> None:
    _refused(_edited(bundle, tmp_path / "crafted", "drift.json", edit), fragment)


def test_score_refuses_a_crafted_drift_reference_in_one_line(bundle: Path, files: Path, tmp_path: Path) -> None:
    """As a user meets it: ``score`` failed with a traceback at the first batch's drift count."""
    crafted = _edited(bundle, tmp_path / "crafted", "drift.json", _short("numeric"))
    _score_one_line(crafted, files / "new.csv", tmp_path / "out.parquet", "bins that do not fit its edges")


def _first_numeric(key: str, value: float) -> Edit:
    def edit(features: dict[str, Any]) -> None:
        features["numeric"][next(iter(features["numeric"]))][key] = value

    return edit


def _feature_twice(features: dict[str, Any]) -> None:
    features["schema"]["features"].append(features["schema"]["features"][0])


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (_first_numeric("scale", 0.0), "scale: Input should be greater than 0"),
        (_first_numeric("center", math.inf), "center: Input should be a finite number"),
        (_feature_twice, "does not list each numeric and categorical feature once"),
    ],
    ids=["scale-0", "center-inf", "feature-twice"],
)
def test_crafted_feature_statistics_are_refused_at_load(
    bundle: Path, tmp_path: Path, edit: Edit, fragment: str
) -> None:
    _refused(_edited(bundle, tmp_path / "crafted", "features.json", edit), fragment)


@pytest.mark.parametrize("threshold", [math.nan, math.inf, "0.5", True])
def test_a_threshold_that_is_no_finite_number_is_refused(bundle: Path, tmp_path: Path, threshold: Any) -> None:
    """A NaN threshold alerted on nothing, silently."""

    def edit(manifest: dict[str, Any]) -> None:
        manifest["policy"]["threshold"] = threshold

    _refused(_edited(bundle, tmp_path / "crafted", "manifest.json", edit), "not a finite number")


def test_a_segment_id_in_a_profile_sizes_nothing() -> None:
    """Segment ids are looked up: a card with the id 10**12 costs one row, and records of other segments (or
    noise) get the overall values."""
    names = ["a", "b"]
    cards = [
        {"segment": 10**12, "typical_values": {"a": "1", "b": "x"}},
        {"segment": 2, "typical_values": {"a": "2", "b": "y"}},
        {"segment": -1, "size": 3},
    ]
    table = expected_table(cards, names, ["0", "overall"])
    assert table is not None
    assert table[1].nbytes + table[2].nbytes <= 64
    values, rows = expected_rows(table, np.array([10**12, 2, 5, -1, 10**12 + 1], dtype=np.int64))
    assert [values[int(r) * 2 + 1] for r in rows] == ["x", "y", "overall", "overall", "overall"]


@pytest.mark.parametrize("segment", [1.5, True, "3"])
def test_a_segment_id_that_is_no_whole_number_is_refused(segment: Any) -> None:
    with pytest.raises(ValueError, match="not a whole number"):
        expected_table([{"segment": segment, "typical_values": {"a": "1"}}], ["a"], ["0"])


def test_two_profiles_with_one_id_are_refused() -> None:
    cards = [{"segment": 4, "typical_values": {"a": "1"}}, {"segment": 4, "typical_values": {"a": "2"}}]
    with pytest.raises(ValueError, match="the id 4"):
        expected_table(cards, ["a"], ["0"])


def test_a_huge_profile_id_in_a_bundle_scores(
    segments_model: Model, segments_history: pl.DataFrame, tmp_path: Path
) -> None:
    """A table as long as the largest id was 8 TB here: a MemoryError at load."""
    source = tmp_path / "segments"
    segments_model.save(source)

    def edit(manifest: dict[str, Any]) -> None:
        segmenter = next(c for c in manifest["components"] if c["role"] == "segmenter")
        segmenter["profiles"][0]["segment"] = 10**12

    model = Model.load(_edited(source, tmp_path / "crafted", "manifest.json", edit))
    scored = model.score(segments_history.head(200))
    assert scored.height == 200 and scored["reasons"].list.len().min() > 0


# ------------------------------------------------------------------ the fine-tuned learner
@pytest.fixture(scope="module")
def fine_tuned(tmp_path_factory: pytest.TempPathFactory, fine_tuned_transactions: tuple[Model, Any]) -> Path:
    folder = tmp_path_factory.mktemp("finetuned")
    candidate, _ = fine_tuned_transactions
    assert candidate.supervised is not None
    candidate.save(folder / "bundle")
    return folder / "bundle"


def _booster(n_features: int) -> bytes:
    import xgboost as xgb

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, n_features))
    booster = xgb.train({"max_depth": 2, "objective": "binary:logistic"}, xgb.DMatrix(x, (x[:, 0] > 0).astype(int)), 3)
    return bytes(booster.save_raw(raw_format="json"))


def test_a_booster_of_another_width_is_refused(fine_tuned: Path, tmp_path: Path) -> None:
    """A valid XGBoost model that reads fewer columns than the layout gives: XGBoost's C++ check failed with a
    backtrace at the first batch."""
    source = fine_tuned
    crafted = tmp_path / "crafted"
    shutil.copytree(source, crafted)
    (crafted / "supervised" / "xgboost.json").write_bytes(_booster(5))
    rehash(crafted)
    _refused(crafted, "its xgboost model reads 5 columns but its layout gives")


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (lambda lp, obj: obj.update(name="multi:softprob"), "its objective is 'multi:softprob'"),
        (lambda lp, obj: lp.update(num_class="3"), "with 3 output(s)"),
        (lambda lp, obj: lp.update(base_score="[1E400]"), "base_score is not one probability"),
        (lambda lp, obj: lp.update(base_score="[2E0]"), "base_score is not one probability"),
    ],
    ids=["objective", "num-class", "base-score-inf", "base-score-2"],
)
def test_a_booster_that_is_no_binary_logistic_model_is_refused(
    edit: Callable[[dict[str, Any], dict[str, Any]], None], fragment: str
) -> None:
    model = json.loads(_booster(4))
    edit(model["learner"]["learner_model_param"], model["learner"]["objective"])
    with pytest.raises(BundleError, match=fragment.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        check_booster_json(json.dumps(model).encode())


def test_a_booster_xgboost_wrote_passes_the_new_checks() -> None:
    check_booster_json(_booster(4))


def test_legacy_exemplars_of_the_wrong_shape_are_refused(fine_tuned: Path, tmp_path: Path) -> None:
    """State of a bundle fine-tuned before layouts (no 'blend'): its exemplars are checked as the current ones."""
    source = fine_tuned
    crafted = tmp_path / "crafted"
    shutil.copytree(source, crafted)
    legacy = {"platt": np.array([1.0, 0.0]), "exemplars": np.ones((5, 3)), "meta": np.array([1.0, 40.0, 80.0])}
    with (crafted / "arrays" / "supervised.npz").open("wb") as fh:
        np.savez(fh, **legacy)
    rehash(crafted)
    _refused(crafted, "'exemplars' has shape (5, 3)")


def test_a_label_file_with_list_labels_is_one_line(run_cli: Any, tmp_path: Path) -> None:
    labels = tmp_path / "labels.parquet"
    pl.DataFrame({"id": ["t1"], "label": [[1]]}).write_parquet(labels)
    result = run_cli("label", "import", "--store", tmp_path / "labels.db", labels, "--analyst", "ops")
    assert result.code == 2
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1 and "['label'] hold lists or structs" in lines[0], result.err


def _edited_supervised(source: Path, target: Path, edit: Callable[[dict[str, np.ndarray]], None]) -> Path:
    shutil.copytree(source, target)
    edit_npz(target, "supervised", edit)
    return target


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (lambda a: a.update(exemplars=np.full_like(a["exemplars"], np.nan)), "'exemplars' holds values that are not"),
        (lambda a: a.update(exemplars=np.zeros((513, a["exemplars"].shape[1]))), "513 exemplars, at most 512"),
        (lambda a: a.update(blend=np.full_like(a["blend"], 1e308)), "'blend' holds weights past +-1e+06"),
        (lambda a: a.update(proximity_clip=np.array([np.nan])), "'proximity_clip' is not a number"),
    ],
    ids=["exemplars-nan", "exemplars-many", "blend-huge", "clip-nan"],
)
def test_crafted_fine_tuned_state_is_refused_at_load(
    fine_tuned: Path, tmp_path: Path, edit: Callable[[dict[str, np.ndarray]], None], fragment: str
) -> None:
    """NaN exemplars failed every batch in scikit-learn's KD-tree; weights of 1e308 wrote NaN scores with exit 0;
    20 million exemplars took 4 GB and 94 s to load."""
    _refused(_edited_supervised(fine_tuned, tmp_path / "crafted", edit), fragment)


@pytest.mark.parametrize("leaf", [math.nan, 1e308, -1e7])
def test_a_booster_leaf_past_any_learnt_value_is_refused(leaf: float) -> None:
    """Leaves of NaN or 1e308 passed every check: every score NaN, no alert, exit 0."""
    model = json.loads(_booster(4))
    tree = model["learner"]["gradient_booster"]["model"]["trees"][0]
    at = tree["left_children"].index(-1)
    tree["split_conditions"][at] = leaf
    with pytest.raises(BundleError, match="a leaf's value is not a number within"):
        check_booster_json(json.dumps(model).encode())


def test_nan_scores_leaving_the_fine_tuned_layer_are_an_error() -> None:
    with pytest.raises(BundleError, match="scored 1 of 3 records as NaN"):
        no_nan(np.array([0.2, np.nan, 0.9]))
    assert no_nan(np.array([0.0, 1.0])).tolist() == [0.0, 1.0]


# ------------------------------------------------------------------ the plain XGBoost companion
@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (lambda a: a.update(companion=np.array([2.0, 1.0, 0.0])), "the companion's weight 2 is not in (0, 1)"),
        (lambda a: a.update(companion=np.array([0.5, 1e308, 0.0])), "'companion' holds weights past +-1e+06"),
        (lambda a: a.update(companion=np.array([0.5, np.nan, 0.0])), "'companion' holds values that are not"),
        (lambda a: a.pop("companion"), "its companion's weights and model do not come together"),
        (lambda a: a.update(companion_columns=a["companion_columns"][:-1]), "the companion's columns do not match"),
    ],
    ids=["weight", "scale-huge", "scale-nan", "weights-missing", "columns"],
)
def test_crafted_companion_state_is_refused_at_load(
    fine_tuned: Path, tmp_path: Path, edit: Callable[[dict[str, np.ndarray]], None], fragment: str
) -> None:
    """The companion's weight and scale multiply every served log-odds: a huge or NaN one wrote NaN scores."""
    _refused(_edited_supervised(fine_tuned, tmp_path / "crafted", edit), fragment)


def test_a_companion_booster_of_another_width_is_refused(fine_tuned: Path, tmp_path: Path) -> None:
    crafted = tmp_path / "crafted"
    shutil.copytree(fine_tuned, crafted)
    (crafted / "supervised" / "companion-xgboost.json").write_bytes(_booster(2))
    rehash(crafted)
    _refused(crafted, "supervised/companion-xgboost.json: its model reads 2 columns, its layout gives")


def test_a_companion_booster_that_walks_out_of_its_tree_is_refused(fine_tuned: Path, tmp_path: Path) -> None:
    """The companion's model goes through the same checks as the learner's (XGBoost does not check its trees)."""
    crafted = tmp_path / "crafted"
    shutil.copytree(fine_tuned, crafted)
    model = json.loads((crafted / "supervised" / "companion-xgboost.json").read_bytes())
    tree = model["learner"]["gradient_booster"]["model"]["trees"][0]
    tree["left_children"][0] = tree["right_children"][0] = 10**6
    (crafted / "supervised" / "companion-xgboost.json").write_bytes(json.dumps(model).encode())
    rehash(crafted)
    _refused(crafted, "supervised/companion-xgboost.json: a node's child lies outside the tree")


def test_a_truncated_companion_names_its_own_file(fine_tuned: Path, tmp_path: Path) -> None:
    """The companion's checks once named the learner's file (supervised/xgboost.json) whatever was wrong."""
    crafted = tmp_path / "crafted"
    shutil.copytree(fine_tuned, crafted)
    path = crafted / "supervised" / "companion-xgboost.json"
    path.write_bytes(path.read_bytes()[:100])
    rehash(crafted)
    _refused(crafted, "supervised/companion-xgboost.json: it is not an XGBoost JSON model")


@pytest.mark.parametrize("artifact", ["a" * 100_000, ["supervised/xgboost.json"], 5], ids=["long", "list", "number"])
def test_a_companion_artifact_that_names_no_file_is_one_short_line(
    fine_tuned: Path, tmp_path: Path, artifact: Any
) -> None:
    """A manifest's value is any JSON: a list raised 'unhashable type', a long text was echoed whole."""

    def edit(manifest: dict[str, Any]) -> None:
        next(c for c in manifest["components"] if c["role"] == "supervised")["companion_artifact"] = artifact

    with pytest.raises(BundleError) as refused:
        Model.load(_edited(fine_tuned, tmp_path / "crafted", "manifest.json", edit))
    message = str(refused.value)
    assert "is not one of the files listed in manifest.json" in message and len(message) < 400, message[:500]
