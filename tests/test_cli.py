"""The CLI end to end, and every kind of bad input: one-line error, exit code != 0, no traceback, no output."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

from segscope import SCORED_COLUMNS
from segscope.bundle import FORMAT_VERSION
from segscope.testing.data import make_transactions

Run = Callable[..., "object"]


def _one_line_error(result, *fragments: str) -> None:
    assert result.code != 0
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1, result.err
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def _no_files_like(folder: Path, name: str) -> None:
    assert not [p for p in folder.iterdir() if p.name.startswith(name) or p.name.startswith(f".{name}")]


def test_fit_score_evaluate_inspect(run_cli, files: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    fit = run_cli("fit", files / "history.parquet", "--bundle", bundle, "--id-column", "txn_id", "--drop", "is_fraud")
    assert fit.code == 0, fit.err
    assert (bundle / "manifest.json").is_file()
    out = tmp_path / "scored.parquet"
    score = run_cli("score", files / "new.parquet", "--bundle", bundle, "--out", out)
    assert score.code == 0, score.err
    scored = pl.read_parquet(out)
    assert scored.columns == [*pl.read_parquet(files / "new.parquet").columns, *SCORED_COLUMNS]
    evaluate = run_cli("evaluate", files / "new.parquet", "--bundle", bundle, "--label-column", "is_fraud", "--json")
    assert evaluate.code == 0, evaluate.err
    metrics = json.loads(evaluate.out)
    assert metrics["aucroc"] > 0.9
    assert 0 <= metrics["aucpr"] <= 1
    assert {"precision_at_10", "alert_precision", "alert_recall"} <= set(metrics)
    inspect = run_cli("inspect", bundle)
    assert inspect.code == 0
    assert "checksums OK" in inspect.out
    assert "iforest" in inspect.out


def test_a_mistyped_drop_is_refused_not_fitted_as_a_feature(run_cli, files: Path, tmp_path: Path) -> None:
    """`--drop lable` went through and the label was fitted as a feature."""
    bundle = tmp_path / "bundle"
    fit = run_cli("fit", files / "history.parquet", "--bundle", bundle, "--id-column", "txn_id", "--drop", "is_frad")
    assert fit.code == 2 and not bundle.exists()
    assert fit.err.strip() == (
        f"error: --drop is_frad: {files / 'history.parquet'} has no column of that name; did you mean --drop is_fraud?"
    )


def test_help_shows_extras_in_brackets(run_cli) -> None:
    """Rich read `[spark]` in a help text as markup and printed "pip install 'segscope'"."""
    shown = run_cli("score", "--help")
    assert "segscope[spark]" in "".join(shown.out.split())


@pytest.mark.parametrize("name", ["out.csv", "out.ndjson", "out.parquet"])
def test_output_format_by_extension(run_cli, files: Path, bundle: Path, tmp_path: Path, name: str) -> None:
    out = tmp_path / name
    assert run_cli("score", files / "new.csv", "--bundle", bundle, "--out", out).code == 0
    reader = {".csv": pl.read_csv, ".ndjson": pl.read_ndjson, ".parquet": pl.read_parquet}[out.suffix]
    frame = reader(out)
    assert frame.height == 1500
    assert "reasons" in frame.columns
    if out.suffix == ".csv":
        assert json.loads(frame["reasons"][0])[0].keys() == {"feature", "value", "expected", "contribution"}


def test_stdout_is_ndjson(run_cli, files: Path, bundle: Path) -> None:
    result = run_cli("score", files / "new.ndjson", "--bundle", bundle, "--out", "-")
    assert result.code == 0
    records = [json.loads(line) for line in result.out.splitlines()]
    assert len(records) == 1500
    assert set(SCORED_COLUMNS) <= set(records[0])


def test_input_formats_give_the_same_scores(model, files: Path) -> None:
    from segscope.pipeline import iter_scored

    scores = {ext: pl.concat(iter_scored(model, files / f"new.{ext}"))["score"] for ext in ("parquet", "csv", "ndjson")}
    assert scores["csv"].equals(scores["parquet"])  # same process, same CPU: exact
    assert scores["ndjson"].equals(scores["parquet"])


def test_real_process_exit_code_and_no_traceback(files: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    proc = subprocess.run(
        [sys.executable, "-m", "segscope.cli", "fit", str(empty), "--bundle", str(tmp_path / "b")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error:")
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "b").exists()


# ------------------------------------------------------------------------------------------- bad input
def test_empty_file(run_cli, tmp_path: Path, bundle: Path) -> None:
    empty = tmp_path / "empty.parquet"
    empty.write_bytes(b"")
    _one_line_error(run_cli("fit", empty, "--bundle", tmp_path / "b"), "the file is empty")
    _one_line_error(run_cli("score", empty, "--bundle", bundle, "--out", tmp_path / "o.parquet"), "empty")
    assert not (tmp_path / "b").exists()
    assert not (tmp_path / "o.parquet").exists()


def test_header_only_csv(run_cli, tmp_path: Path) -> None:
    path = tmp_path / "header.csv"
    path.write_text("a,b\n")
    _one_line_error(run_cli("fit", path, "--bundle", tmp_path / "b"), "no rows")


def test_wrong_extension(run_cli, tmp_path: Path, bundle: Path, files: Path) -> None:
    path = tmp_path / "data.txt"
    path.write_text("a,b\n1,2\n")
    _one_line_error(run_cli("fit", path, "--bundle", tmp_path / "b"), "unknown file extension '.txt'", ".parquet")
    _one_line_error(
        run_cli("score", files / "new.parquet", "--bundle", bundle, "--out", tmp_path / "out.xlsx"), "'.xlsx'"
    )
    assert not (tmp_path / "out.xlsx").exists()


def test_corrupt_parquet(run_cli, tmp_path: Path) -> None:
    path = tmp_path / "bad.parquet"
    path.write_bytes(b"PAR1" + b"\x00garbage" * 100)
    _one_line_error(run_cli("fit", path, "--bundle", tmp_path / "b"), "bad.parquet", "cannot read it as parquet")


def test_missing_file(run_cli, tmp_path: Path) -> None:
    _one_line_error(run_cli("fit", tmp_path / "nope.csv", "--bundle", tmp_path / "b"), "file not found")


def test_columns_missing_at_score_time(run_cli, files: Path, bundle: Path, tmp_path: Path) -> None:
    path = tmp_path / "fewer.parquet"
    pl.read_parquet(files / "new.parquet").drop("amount", "country").write_parquet(path)
    out = tmp_path / "out.parquet"
    _one_line_error(run_cli("score", path, "--bundle", bundle, "--out", out), "['amount', 'country']", "refit")
    assert not out.exists()


def test_all_null_and_constant_columns_are_dropped_with_a_note(run_cli, files: Path, tmp_path: Path) -> None:
    path = tmp_path / "extra.parquet"
    frame = pl.read_parquet(files / "history.parquet").with_columns(
        pl.lit(None, dtype=pl.Float64).alias("all_null"), pl.lit(3).alias("always_three")
    )
    frame.write_parquet(path)
    result = run_cli("fit", path, "--bundle", tmp_path / "b", "--id-column", "txn_id", "--drop", "is_fraud")
    assert result.code == 0
    assert "dropped all_null: all values are null" in result.err
    assert "dropped always_three: constant" in result.err


def test_only_constant_columns(run_cli, tmp_path: Path) -> None:
    path = tmp_path / "const.csv"
    path.write_text("a,b\n1,\n1,\n1,\n")
    _one_line_error(run_cli("fit", path, "--bundle", tmp_path / "b"), "no usable feature columns")
    assert not (tmp_path / "b").exists()


def test_garbage_in_numeric_column_at_score_time(run_cli, files: Path, bundle: Path, tmp_path: Path) -> None:
    frame = pl.read_csv(files / "new.csv", infer_schema_length=0)  # all strings
    frame = frame.with_columns(
        pl.when(pl.int_range(pl.len()) == 1234).then(pl.lit("12,50 EUR")).otherwise(pl.col("amount")).alias("amount")
    )
    path = tmp_path / "garbage.csv"
    frame.write_csv(path)
    out = tmp_path / "out.parquet"
    result = run_cli("score", path, "--bundle", bundle, "--out", out, "--batch-size", "500")
    _one_line_error(result, "column 'amount' must be numeric", "row 1234", "'12,50 EUR'")
    assert not out.exists()
    _no_files_like(tmp_path, "out.parquet")  # no temporary leftovers either


def test_garbage_in_numeric_column_at_fit(run_cli, tmp_path: Path) -> None:
    path = tmp_path / "garbage.csv"
    rows = "\n".join(f"{i},{i * 1.5}" for i in range(200))
    path.write_text(f"a,b\n{rows}\n7,oops\n")
    _one_line_error(run_cli("fit", path, "--bundle", tmp_path / "b"), "column 'b' looks numeric", "'oops'")


def test_nan_is_missing_but_inf_is_refused(run_cli, files: Path, bundle: Path, tmp_path: Path) -> None:
    frame = pl.read_parquet(files / "new.parquet")
    nan = tmp_path / "nan.parquet"
    frame.with_columns(
        pl.when(pl.int_range(pl.len()) < 5).then(float("nan")).otherwise(pl.col("amount")).alias("amount")
    ).write_parquet(nan)
    assert run_cli("score", nan, "--bundle", bundle, "--out", tmp_path / "ok.parquet").code == 0
    inf = tmp_path / "inf.parquet"
    frame.with_columns(
        pl.when(pl.int_range(pl.len()) == 7).then(float("inf")).otherwise(pl.col("amount")).alias("amount")
    ).write_parquet(inf)
    out = tmp_path / "o.parquet"
    _one_line_error(run_cli("score", inf, "--bundle", bundle, "--out", out), "infinite value at row 7")
    assert not out.exists()
    _one_line_error(
        run_cli("fit", inf, "--bundle", tmp_path / "b2", "--id-column", "txn_id"), "'amount' has an infinite value"
    )


def test_huge_values_are_scored_as_extreme(run_cli, files: Path, bundle: Path, tmp_path: Path) -> None:
    frame = pl.read_parquet(files / "new.parquet").head(20)
    path = tmp_path / "huge.parquet"
    frame.with_columns(
        pl.when(pl.int_range(pl.len()) == 3).then(1e300).otherwise(pl.col("amount")).alias("amount")
    ).write_parquet(path)
    out = tmp_path / "o.parquet"
    assert run_cli("score", path, "--bundle", bundle, "--out", out).code == 0
    scored = pl.read_parquet(out)
    assert scored["score"][3] == scored["score"].max()
    assert scored["reasons"][3][0]["feature"] == "amount"
    assert scored["reasons"][3][0]["value"] == "1e+300"


def test_duplicate_ids(run_cli, files: Path, bundle: Path, tmp_path: Path) -> None:
    frame = pl.read_parquet(files / "new.parquet")
    path = tmp_path / "dups.parquet"
    pl.concat([frame, frame.slice(10, 1)]).write_parquet(path)
    out = tmp_path / "o.parquet"
    _one_line_error(run_cli("score", path, "--bundle", bundle, "--out", out), "duplicate values", "t01-0000010")
    assert not out.exists()  # a file appears only whole: checked as the batches go, refused after the last
    streamed = run_cli("score", path, "--bundle", bundle, "--out", "-", "--batch-size", "100")
    _one_line_error(streamed, "duplicate values", "t01-0000010")
    assert streamed.out == ""  # stdout streams: checked before the first batch
    _one_line_error(run_cli("fit", path, "--bundle", tmp_path / "b", "--id-column", "txn_id"), "duplicate values")


def test_bundle_from_a_newer_format(run_cli, files: Path, bundle: Path, tmp_path: Path) -> None:
    import shutil

    newer = tmp_path / "newer"
    shutil.copytree(bundle, newer)
    manifest = json.loads((newer / "manifest.json").read_text())
    manifest["format_version"] = FORMAT_VERSION + 1
    (newer / "manifest.json").write_text(json.dumps(manifest))
    result = run_cli("score", files / "new.parquet", "--bundle", newer, "--out", tmp_path / "o.parquet")
    _one_line_error(result, f"format version {FORMAT_VERSION + 1}", "upgrade segscope")


def test_missing_bundle_and_bad_config(run_cli, files: Path, tmp_path: Path) -> None:
    _one_line_error(
        run_cli("score", files / "new.parquet", "--bundle", tmp_path / "none", "--out", tmp_path / "o.csv"),
        "does not exist",
        "segscope fit",
    )
    cfg = tmp_path / "c.toml"
    cfg.write_text('[[detectors]]\nname = "nope"\n')
    _one_line_error(
        run_cli("fit", files / "history.parquet", "--bundle", tmp_path / "b", "--config", cfg), "detectors.0.name"
    )


def test_label_column_checks(run_cli, files: Path, bundle: Path) -> None:
    _one_line_error(
        run_cli("evaluate", files / "new.parquet", "--bundle", bundle, "--label-column", "nope"), "not found"
    )


def test_demo_runs(run_cli, tmp_path: Path) -> None:
    result = run_cli("demo", "--out-dir", tmp_path / "demo", "--rows", "5000")
    assert result.code == 0, result.err
    assert "top" in result.out
    assert "AUCROC" in result.out
    assert (tmp_path / "demo" / "scored.parquet").is_file()
    assert (tmp_path / "demo" / "bundle" / "CURRENT").is_file()  # the fine-tuning step made it a registry
    assert "fine-tuned" in result.out


def test_make_transactions_is_deterministic() -> None:
    assert make_transactions(500, seed=3).equals(make_transactions(500, seed=3))


def test_main_called_in_process_freezes_nothing(run_cli) -> None:  # type: ignore[no-untyped-def]
    """Only the `segscope` command's own process (cli.command) freezes its objects out of the final garbage
    collection; a process that calls main() and goes on (these tests) keeps collecting them."""
    import gc

    before = gc.get_freeze_count()
    assert run_cli("--help").code == 0
    assert gc.get_freeze_count() == before
