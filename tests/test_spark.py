"""Batch scoring on Apache Spark: the same scores as local scoring, row for row, on `local[2]` and on a real
standalone cluster (a master and two workers on loopback); a killed task is retried without duplicates; bad rows
give the same one-line errors; fit samples on the cluster."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from segscope.config import SegscopeConfig
from segscope.exceptions import SegscopeError
from segscope.model import Model
from segscope.pipeline import score_file
from tests.spark_helpers import standalone_cluster


@pytest.fixture(scope="module")
def spark() -> Any:
    from segscope.spark import session

    active = session("local[2,3]")  # up to 3 attempts per task, as a cluster retries
    yield active
    active.stop()


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory, files: Path) -> Path:
    """The new records as a folder of three Parquet files, as a day's drop of a data platform looks."""
    folder = tmp_path_factory.mktemp("drop") / "day=2026-11-30"
    folder.mkdir()
    new = pl.read_parquet(files / "new.parquet")
    for i, part in enumerate(new.iter_slices(new.height // 3 + 1)):
        part.write_parquet(folder / f"part-{i}.parquet")
    return folder


def _local(bundle: Path, data: Path, tmp: Path) -> pl.DataFrame:
    out = tmp / "local.parquet"
    score_file(Model.load(bundle), data, out)
    return pl.read_parquet(out).sort("txn_id")


def _spark_out(out: Path) -> pl.DataFrame:
    return pl.read_parquet(out / "*.parquet").sort("txn_id")


def test_local_spark_scores_equal_local_scores(spark: Any, bundle: Path, files: Path, tmp_path: Path) -> None:
    from segscope.spark import score_path

    for data in (files / "new.parquet", _as_csv(files / "new.parquet", tmp_path)):
        out = tmp_path / f"scored-{data.suffix[1:]}"
        summary = score_path(bundle, data, out, partitions=4)
        spark_scored, local = _spark_out(out), _local(bundle, data, tmp_path)
        assert summary["rows"] == local.height and summary["alerts"] == int(local["is_alert"].sum())
        # same columns, types and values, exactly: Spark's Python workers run Model.score on this machine's CPU
        # with the same libraries (nothing compared across machines)
        assert_frame_equal(spark_scored, local, check_exact=True)


def _as_csv(parquet: Path, tmp: Path) -> Path:
    path = tmp / "new.csv"
    pl.read_parquet(parquet).write_csv(path)
    return path


def test_a_killed_task_is_retried_without_duplicates(spark: Any, bundle: Path, parts: Path, tmp_path: Path) -> None:
    """The first attempt of one task kills its Python worker (as an OOM killer or a lost executor would); Spark
    retries it and the committed output has every record once, scored as locally."""
    from segscope.spark import score, write_parquet

    def die_once(batches: Any) -> Any:
        from pyspark import TaskContext

        context = TaskContext.get()
        if context is not None and context.partitionId() == 0 and context.attemptNumber() == 0:
            os._exit(1)
        yield from batches

    df = spark.read.parquet(str(parts))
    flaky = df.mapInArrow(die_once, df.schema)
    out = tmp_path / "scored"
    rows = write_parquet(score(flaky, bundle), out)
    scored = _spark_out(out)
    assert rows == scored.height == pl.read_parquet(parts / "*.parquet").height
    assert scored["txn_id"].n_unique() == scored.height
    local = _local(bundle, _concat(parts, tmp_path), tmp_path)
    assert_frame_equal(scored, local, check_exact=True)


def _concat(folder: Path, tmp: Path) -> Path:
    path = tmp / "all.parquet"
    pl.read_parquet(folder / "*.parquet").write_parquet(path)
    return path


def test_bad_rows_give_the_same_error_as_local_scoring(spark: Any, bundle: Path, files: Path, tmp_path: Path) -> None:
    from segscope.spark import score_path

    bad = pl.read_parquet(files / "new.parquet").head(200).with_columns(pl.col("amount").cast(pl.String))
    typo = pl.when(pl.int_range(pl.len()) == 17).then(pl.lit("12,50")).otherwise("amount")
    bad = bad.with_columns(typo.alias("amount"))
    path = tmp_path / "bad.csv"
    bad.write_csv(path)
    with pytest.raises(SegscopeError) as local:
        score_file(Model.load(bundle), path, tmp_path / "local-bad.parquet")
    with pytest.raises(SegscopeError) as remote:
        score_path(bundle, path, tmp_path / "spark-bad")
    assert type(remote.value) is type(local.value) and str(remote.value) == str(local.value)
    assert "12,50" in str(remote.value)
    assert not (tmp_path / "spark-bad").exists() and not list(tmp_path.glob(".spark-bad*"))  # nothing half-written


def test_fit_samples_on_spark_and_records_it(spark: Any, parts: Path, files: Path, tmp_path: Path) -> None:
    from segscope.spark import fit_path

    config = SegscopeConfig(max_fit_rows=600, seed=7).with_features(id_column="txn_id", drop=("is_fraud",))
    model = fit_path(parts, config)
    total = pl.read_parquet(parts / "*.parquet").height
    assert model.training["rows"] == total and 0 < model.training["fit_rows"] <= 600
    assert model.training["sampled_on"] == "spark" and model.config.seed == 7
    model.save(tmp_path / "b")
    manifest = (tmp_path / "b" / "manifest.json").read_text()
    assert '"sampled_on": "spark"' in manifest and '"fit_rows": ' in manifest
    scored = Model.load(tmp_path / "b").score(pl.read_parquet(files / "new.parquet"))
    assert scored["score"].is_between(0, 1).all()


def _spark_score(data: Path, bundle: Path, out: Path, master: str) -> list[str]:
    """``segscope score`` on Spark as a user types it, in its own process."""
    cmd = ["score", str(data), "--bundle", str(bundle), "--out", str(out), "--engine", "spark", "--master", master]
    return [sys.executable, "-m", "segscope.cli", *cmd]


def test_standalone_cluster_scores_a_folder_like_local(bundle: Path, parts: Path, tmp_path: Path) -> None:
    """A master and two workers started from pyspark's own launcher; the CLI as a user runs it, in its own
    process (its own driver), against the cluster."""
    with standalone_cluster(tmp_path / "cluster") as master:
        out = tmp_path / "scored"
        cmd = [*_spark_score(parts, bundle, out, master), "--partitions", "4"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "scored" in done.stderr and "on Spark" in done.stderr and "tasks done" in done.stderr
    assert_frame_equal(_spark_out(out), _local(bundle, _concat(parts, tmp_path), tmp_path), check_exact=True)


def test_entity_bundles_and_configs_are_refused(spark: Any, files: Path, tmp_path: Path) -> None:
    """Per-entity features need each entity's records in order through one state: not Spark's partitions."""
    from segscope.config import load_config
    from segscope.exceptions import ConfigError
    from segscope.spark import fit_path, score_path
    from segscope.testing.data import make_card_stream

    payments = make_card_stream(100, days=5, seed=4)
    payments.write_parquet(tmp_path / "payments.parquet")
    Model(load_config("fraud")).fit(payments).save(tmp_path / "pack")
    with pytest.raises(ConfigError, match="per-entity features"):
        score_path(tmp_path / "pack", tmp_path / "payments.parquet", tmp_path / "out")
    with pytest.raises(ConfigError, match="per-entity features"):
        fit_path(tmp_path / "payments.parquet", load_config("fraud"))
    assert not (tmp_path / "out").exists()


def test_a_header_only_csv_is_refused_as_locally(
    spark: Any, run_cli: Any, bundle: Path, files: Path, tmp_path: Path
) -> None:
    """Local scoring refuses a file with a header and no rows; Spark said 'scored 0 rows' and wrote a folder."""
    path = tmp_path / "header.csv"
    path.write_text((files / "new.csv").read_text().splitlines()[0] + "\n")
    local = run_cli("score", path, "--bundle", bundle, "--out", tmp_path / "local.parquet")
    remote = run_cli("score", path, "--bundle", bundle, "--out", tmp_path / "scored", "--engine", "spark")
    assert local.code == remote.code == 2, remote.err
    lines = [line for line in remote.err.splitlines() if line.strip()]
    assert lines == [line for line in local.err.splitlines() if line.strip()], remote.err  # the same one line
    assert len(lines) == 1 and lines[0].startswith("error: ") and "header but no rows" in lines[0]
    folder = tmp_path / "drop"
    folder.mkdir()
    for name in ("a.csv", "b.csv"):
        (folder / name).write_bytes(path.read_bytes())
    remote = run_cli("score", folder, "--bundle", bundle, "--out", tmp_path / "scored", "--engine", "spark")
    assert remote.code == 2 and "header but no rows" in remote.err, remote.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["drop", "header.csv"]  # nothing written


@pytest.mark.parametrize("level", [None, "ERROR"])
def test_a_bad_row_is_one_line_without_java_logs(bundle: Path, files: Path, tmp_path: Path, level: str | None) -> None:
    """The CLI in its own process (its own driver JVM, local mode): a bad value is the one-line error, with no
    Java stack traces, log lines or JVM warnings around it; SEGSCOPE_SPARK_LOG_LEVEL brings Spark's logs back."""
    bad = pl.read_parquet(files / "new.parquet").head(300).with_columns(pl.col("amount").cast(pl.String))
    typo = pl.when(pl.int_range(pl.len()) == 17).then(pl.lit("12,50")).otherwise("amount")
    bad = bad.with_columns(typo.alias("amount"))
    path = tmp_path / "bad.csv"
    bad.write_csv(path)
    env = {k: v for k, v in os.environ.items() if k not in ("SEGSCOPE_SPARK_LOG_LEVEL", "SPARK_SUBMIT_OPTS")}
    env.update({"COLUMNS": "3000"} | ({"SEGSCOPE_SPARK_LOG_LEVEL": level} if level else {}))
    out = tmp_path / "scored"
    cmd = _spark_score(path, bundle, out, "local[1]")
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=False)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stderr[-3000:]
    assert lines and lines[-1].startswith("error: ") and "row 17 holds '12,50'" in lines[-1], done.stderr[-3000:]
    if level is None:
        assert len(lines) == 1, done.stderr[-3000:]
    else:
        assert any("ERROR Executor" in line for line in lines) and "PythonException" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv"]  # nothing written


def test_a_ragged_csv_row_on_spark_says_why(
    spark: Any, run_cli: Any, files: Path, bundle: Path, tmp_path: Path
) -> None:
    """Spark's CSV reader (FAILFAST) refuses a short row or a quoted newline; the one line says so (it said 'An
    error occurred while calling o53.getResult.')."""
    lines = (files / "new.csv").read_text().splitlines()
    short, multi = list(lines), list(lines)
    short[100] = ",".join(short[100].split(",")[:7])
    multi[5] = multi[5].replace(",US,", ',"U\nS",', 1)
    for name, rows in (("short.csv", short), ("multi.csv", multi)):
        path = tmp_path / name
        path.write_text("\n".join(rows) + "\n")
        result = run_cli("score", path, "--bundle", bundle, "--out", tmp_path / "scored", "--engine", "spark")
        lines_out = [line for line in result.err.splitlines() if line.strip()]
        assert result.code == 2 and len(lines_out) == 1, result.err
        assert "Malformed CSV record" in lines_out[0] and "too few or too many fields" in lines_out[0], result.err
        assert "t01-0000099" in lines_out[0] if name == "short.csv" else "t01-0000004" in lines_out[0]
    assert not (tmp_path / "scored").exists()
