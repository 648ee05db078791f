"""Bad input as careless users and real files bring it: each is one line on stderr, exit code 2, no traceback and
nothing written (or a one-line warning where the input is usable but suspicious)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import polars as pl
import pytest

from segscope.labels import LabelStore
from tests.unprivileged import run_cli_unprivileged


def _one_line_error(result, *fragments: str) -> str:
    assert result.code == 2, (result.code, result.err)
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1, result.err
    assert lines[0].startswith("error: ") and "Traceback" not in result.err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def _nothing_written(folder: Path, name: str) -> None:
    assert not [p for p in folder.iterdir() if p.name in (name, f".{name}") or p.name.startswith(f".{name}.")]


def _score(run_cli, data: Path, bundle: Path, out: Path | str, *extra: str):
    return run_cli("score", data, "--bundle", bundle, "--out", out, *extra)


# ------------------------------------------------------------------------------------------ usage
@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (("score", "x.csv", "--bundle", "b", "--batch-size", "0"), ("'--batch-size'", "'segscope score --help'")),
        (("score", "--bundle", "b"), ("Missing argument 'data'", "'segscope score --help'")),
        (("scor", "x.csv"), ("No such command 'scor'", "'score'", "'segscope --help'")),
        (("score", "x.csv", "--bundle", "b", "--format", "xml"), ("No such option: --format",)),
        (("serve", "--host", "0.0.0.0", "--store", "s.db"), ("pass --token", "'segscope serve --help'")),
    ],
)
def test_usage_errors_are_one_line(run_cli, args: tuple[str, ...], fragments: tuple[str, ...]) -> None:
    _one_line_error(run_cli(*args), *fragments)


def test_no_command_prints_the_help(run_cli) -> None:
    result = run_cli()
    assert result.code == 2 and "Usage: segscope" in result.err + result.out and "score" in result.err + result.out


def test_help_exits_zero(run_cli) -> None:
    result = run_cli("score", "--help")
    assert result.code == 0 and "--bundle" in result.out


# ------------------------------------------------------------------------------------------ files
def test_latin1_csv(run_cli, bundle: Path, files: Path, tmp_path: Path) -> None:
    text = (files / "new.csv").read_text().replace("grocery", "épicerie", 3)
    path = tmp_path / "latin.csv"
    path.write_bytes(text.encode("latin-1"))
    _one_line_error(_score(run_cli, path, bundle, tmp_path / "o.parquet"), "not UTF-8", "iconv")
    _nothing_written(tmp_path, "o.parquet")


def test_csv_rows_with_too_few_or_too_many_fields(run_cli, bundle: Path, files: Path, tmp_path: Path) -> None:
    lines = (files / "new.csv").read_text().splitlines()
    short = tmp_path / "short.csv"
    short.write_text("\n".join([*lines[:101], "t01-9999999,2026-01-02 10:00:00,12.5", *lines[101:]]) + "\n")
    _one_line_error(_score(run_cli, short, bundle, tmp_path / "o.parquet"), "line 102 has 3 fields", "header has 9")
    long = tmp_path / "long.csv"
    long.write_text("\n".join([*lines[:51], lines[51] + ",extra", *lines[52:]]) + "\n")
    _one_line_error(_score(run_cli, long, bundle, tmp_path / "o.parquet"), "line 52 has 10 fields")
    _nothing_written(tmp_path, "o.parquet")
    quoted = tmp_path / "quoted.csv"  # commas inside quotes are not separators
    quoted.write_text("\n".join([lines[0], *[ln.replace(",grocery,", ',"grocery, fresh",') for ln in lines[1:]]]))
    assert _score(run_cli, quoted, bundle, tmp_path / "q.parquet").code == 0


def test_duplicate_column_names(run_cli, bundle: Path, files: Path, tmp_path: Path) -> None:
    lines = (files / "new.csv").read_text().splitlines()
    path = tmp_path / "dup.csv"
    path.write_text("\n".join([lines[0] + ",amount", *[ln + ",1" for ln in lines[1:]]]) + "\n")
    _one_line_error(_score(run_cli, path, bundle, tmp_path / "o.parquet"), "['amount'] appear twice")
    _one_line_error(run_cli("fit", path, "--bundle", tmp_path / "b"), "appear twice")
    assert not (tmp_path / "b").exists()


def test_header_only_file_at_score(run_cli, bundle: Path, files: Path, tmp_path: Path) -> None:
    path = tmp_path / "header.csv"
    path.write_text((files / "new.csv").read_text().splitlines()[0] + "\n")
    _one_line_error(_score(run_cli, path, bundle, tmp_path / "o.parquet"), "header but no rows")
    _nothing_written(tmp_path, "o.parquet")
    empty = tmp_path / "empty.parquet"
    pl.read_parquet(files / "new.parquet").head(0).write_parquet(empty)
    _one_line_error(_score(run_cli, empty, bundle, tmp_path / "o.csv"), "header but no rows")


def test_out_equal_to_the_input_is_refused(run_cli, bundle: Path, files: Path, tmp_path: Path) -> None:
    path = tmp_path / "same.csv"
    path.write_bytes((files / "new.csv").read_bytes())
    before = path.read_bytes()
    _one_line_error(_score(run_cli, path, bundle, path), "is the input file")
    _one_line_error(_score(run_cli, path, bundle, tmp_path / "." / "same.csv"), "is the input file")
    assert path.read_bytes() == before


def test_unwritable_output_folder(run_cli, bundle: Path, files: Path, tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    done = run_cli_unprivileged(
        "score", files / "new.parquet", "--bundle", bundle, "--out", locked / "o.parquet", cwd=tmp_path
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "cannot write in" in done.stderr and "Permission denied" in done.stderr
    assert list(locked.iterdir()) == []
    folder = tmp_path / "out.parquet"
    folder.mkdir()
    _one_line_error(_score(run_cli, files / "new.parquet", bundle, folder), "is a folder")


def test_stdout_error_mid_file_says_what_was_sent(run_cli, bundle: Path, files: Path, tmp_path: Path) -> None:
    frame = pl.read_parquet(files / "new.parquet").with_columns(pl.col("amount").cast(pl.String))
    frame = frame.with_columns(
        pl.when(pl.int_range(pl.len()) == 700).then(pl.lit("12,50 EUR")).otherwise("amount").alias("amount")
    )
    path = tmp_path / "late.parquet"
    frame.write_parquet(path)
    result = _score(run_cli, path, bundle, "-", "--batch-size", "500")
    _one_line_error(result, "row 700", "500 scored rows were already written to stdout")
    assert len(result.out.splitlines()) == 500


# ------------------------------------------------------------------------------------------ types
def test_date_where_a_datetime_was_fitted(run_cli, bundle: Path, files: Path, tmp_path: Path) -> None:
    path = tmp_path / "dates.parquet"
    pl.read_parquet(files / "new.parquet").with_columns(pl.col("ts").dt.date()).write_parquet(path)
    _one_line_error(_score(run_cli, path, bundle, tmp_path / "o.parquet"), "column 'ts' holds dates", "midnight")


def test_bool_where_a_number_was_fitted(run_cli, bundle: Path, files: Path, tmp_path: Path) -> None:
    path = tmp_path / "bools.parquet"
    frame = pl.read_parquet(files / "new.parquet")
    frame.with_columns((pl.col("n_txn_24h") > 3).alias("n_txn_24h")).write_parquet(path)
    _one_line_error(_score(run_cli, path, bundle, tmp_path / "o.parquet"), "'n_txn_24h' is Boolean", "numeric")


def test_struct_where_a_number_was_fitted(run_cli, bundle: Path, files: Path, tmp_path: Path) -> None:
    path = tmp_path / "struct.parquet"
    frame = pl.read_parquet(files / "new.parquet")
    frame.with_columns(pl.struct(value=pl.col("amount")).alias("amount")).write_parquet(path)
    _one_line_error(_score(run_cli, path, bundle, tmp_path / "o.parquet"), "'amount' is Struct")


def test_an_int_beyond_int64_keeps_its_column(run_cli, tmp_path: Path) -> None:
    rows = [f"r{i},{i % 7},{i * 1.5}" for i in range(400)]
    rows[200] = "r200,99999999999999999999,300.0"
    path = tmp_path / "big.csv"
    path.write_text("id,count,value\n" + "\n".join(rows) + "\n")
    result = run_cli("fit", path, "--bundle", tmp_path / "b", "--id-column", "id")
    assert result.code == 0 and "dropped count" not in result.err, result.err
    out = tmp_path / "o.parquet"
    assert _score(run_cli, path, tmp_path / "b", out).code == 0
    scored = pl.read_parquet(out)
    assert scored["score"][200] == scored["score"].max()
    assert scored["reasons"][200][0]["feature"] == "count"


def test_null_id_is_reported_at_its_row(run_cli, bundle: Path, files: Path, tmp_path: Path) -> None:
    path = tmp_path / "nullid.parquet"
    frame = pl.read_parquet(files / "new.parquet")
    frame.with_columns(
        pl.when(pl.int_range(pl.len()) == 1234).then(None).otherwise(pl.col("txn_id")).alias("txn_id")
    ).write_parquet(path)
    _one_line_error(_score(run_cli, path, bundle, tmp_path / "o.parquet"), "null at row 1234")
    dups = tmp_path / "dups.parquet"
    pl.concat([frame, frame.slice(900, 1)]).write_parquet(dups)
    _one_line_error(_score(run_cli, dups, bundle, tmp_path / "o.parquet"), "'t01-0000900' appears 2 times", "row 900")


@pytest.mark.parametrize("kind", ["list", "struct", "binary"])
def test_ids_that_are_not_single_values_are_refused(
    run_cli, bundle: Path, files: Path, tmp_path: Path, kind: str
) -> None:
    """A list, struct or binary id column was a traceback ("does not have eq operator", a SchemaError)."""
    ids = pl.col("txn_id")
    as_kind = {"list": pl.concat_list(ids), "struct": pl.struct(ids), "binary": ids.cast(pl.Binary)}[kind]
    path = tmp_path / f"{kind}.parquet"
    pl.read_parquet(files / "new.parquet").head(500).with_columns(as_kind.alias("txn_id")).write_parquet(path)
    _one_line_error(_score(run_cli, path, bundle, tmp_path / "o.parquet"), "id column 'txn_id' holds", "ids must be")
    assert not (tmp_path / "o.parquet").exists()
    fitted = run_cli("fit", path, "--bundle", tmp_path / "b", "--id-column", "txn_id", "--drop", "is_fraud")
    _one_line_error(fitted, "id column 'txn_id' holds")


# ------------------------------------------------------------------------------------------ warnings
def test_all_null_numeric_column_warns(run_cli, bundle: Path, files: Path, tmp_path: Path) -> None:
    path = tmp_path / "noamount.parquet"
    pl.read_parquet(files / "new.parquet").with_columns(pl.lit(None, dtype=pl.Float64).alias("amount")).write_parquet(
        path
    )
    result = _score(run_cli, path, bundle, tmp_path / "o.parquet")
    assert result.code == 0
    warnings = [line for line in result.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2 and "['amount'] are null in every row" in warnings[1]
    assert warnings[0].startswith("warning: drift in 1 column(s): amount: 100% of rows missing vs 0% at fit (PSI ")
    assert warnings[0].endswith("amount arrive(s) missing more often than at fit: check the input")  # the drift guard


def test_semicolon_csv_at_fit_warns(run_cli, files: Path, tmp_path: Path) -> None:
    frame = pl.read_parquet(files / "history.parquet").drop("ts")
    path = tmp_path / "semi.csv"
    frame.write_csv(path, separator=";")
    result = run_cli("fit", path, "--bundle", tmp_path / "b")
    warnings = [line for line in result.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "looks semicolon-separated" in warnings[0], result.err


# ------------------------------------------------------------------------------------------ label store
def test_a_mistyped_store_is_not_created(run_cli, tmp_path: Path) -> None:
    typo = tmp_path / "typo.db"
    _one_line_error(run_cli("label", "queue", "--store", typo), "no label store there")
    _one_line_error(run_cli("label", "export", "--store", typo, "--out", tmp_path / "l.csv"), "no label store")
    _one_line_error(run_cli("serve", "--store", typo), "no label store")
    assert not typo.exists()


def test_a_file_that_is_not_a_store(run_cli, tmp_path: Path, model, new_records: pl.DataFrame) -> None:
    text = tmp_path / "notes.db"
    text.write_text("just some notes\n" * 100)
    _one_line_error(run_cli("label", "queue", "--store", text), "cannot open the label store")
    real = tmp_path / "labels.db"
    with LabelStore.open(real) as store:
        store.add_records(model.for_review(model.score(new_records.head(50))), source="t")
    with sqlite3.connect(real) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    truncated = tmp_path / "truncated.db"
    truncated.write_bytes(real.read_bytes()[: real.stat().st_size // 3])
    _one_line_error(run_cli("label", "queue", "--store", truncated), "cannot open the label store")


def test_label_export_to_a_folder(run_cli, tmp_path: Path, model, new_records: pl.DataFrame) -> None:
    store_path = tmp_path / "labels.db"
    with LabelStore.open(store_path) as store:
        store.add_records(model.for_review(model.score(new_records.head(20))), source="t")
    folder = tmp_path / "labels.csv"
    folder.mkdir()
    _one_line_error(run_cli("label", "export", "--store", store_path, "--out", folder), "is a folder")


def test_conflicting_labels_in_one_import(run_cli, tmp_path: Path, model, new_records: pl.DataFrame) -> None:
    store_path = tmp_path / "labels.db"
    with LabelStore.open(store_path) as store:
        store.add_records(model.for_review(model.score(new_records.head(20))), source="t")
    ids = new_records["txn_id"].head(3).to_list()
    path = tmp_path / "l.csv"
    pl.DataFrame({"id": [ids[0], ids[1], ids[0]], "label": ["anomaly", "normal", "normal"]}).write_csv(path)
    _one_line_error(run_cli("label", "import", "--store", store_path, path), f"id '{ids[0]}' has conflicting labels")
    with LabelStore.open(store_path) as store:
        assert store.labels().height == 0  # all or nothing


@pytest.mark.parametrize("analyst", ["ann\x00", "ann\u202egnp.exe", "a\u2067b"])
def test_hostile_analyst_names_on_the_command_line(run_cli, tmp_path: Path, model, new_records, analyst: str) -> None:
    store_path = tmp_path / "labels.db"
    with LabelStore.open(store_path) as store:
        store.add_records(model.for_review(model.score(new_records.head(5))), source="t")
    rid = new_records["txn_id"][0]
    _one_line_error(run_cli("label", "add", "--store", store_path, rid, "anomaly", "--analyst", analyst), "U+")


def test_score_store_creates_a_store(run_cli, bundle: Path, files: Path, tmp_path: Path) -> None:
    store = tmp_path / "new.db"
    assert _score(run_cli, files / "new.parquet", bundle, tmp_path / "o.parquet", "--store", store).code == 0
    result = run_cli("label", "queue", "--store", store, "--json", "--limit", "3")
    assert result.code == 0 and len([json.loads(line) for line in result.out.splitlines()]) == 3
