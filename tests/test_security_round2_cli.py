"""Issue 25, the command line: data is printed as data (no Rich markup, emoji codes or links read from it), bad
segment ids, another application's SQLite file, spreadsheet formulas in exported labels, passwords in store URLs,
empty record ids."""

from __future__ import annotations

import io
import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from rich.console import Console

from segscope.labels import LabelStore
from segscope.testing.data import make_transactions

#: markup that crashes Rich (a closing tag nothing opened), a link, and an emoji code
EVIL = "[/x][link=http://evil.example/]click[/link]:skull:"
COLUMN = "cat[/x];[link=http://evil.example/]click[/link]:skull:"  # the ';' also makes fit warn (printed too)


def _segscope(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The installed command in a child process, on a wide terminal (table cells are not wrapped)."""
    env = {**os.environ, "COLUMNS": "3000", "TERM": "dumb", "SEGSCOPE_TOKEN": ""}
    return subprocess.run(
        [sys.executable, "-m", "segscope.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=600,
        check=False,
    )


def _hostile(frame: pl.DataFrame) -> pl.DataFrame:
    """The column name, some values and every record id carry markup."""
    frame = frame.rename({"merchant_category": COLUMN})
    every7 = pl.int_range(pl.len()) % 7 == 0
    return frame.with_columns(
        pl.when(every7).then(pl.lit("v" + EVIL)).otherwise(pl.col(COLUMN)).alias(COLUMN),
        (pl.lit(EVIL + "_") + pl.col("txn_id")).alias("txn_id"),
    )


def _literal(result: subprocess.CompletedProcess[str], *texts: str) -> None:
    both = result.stdout + result.stderr
    assert result.returncode == 0, both
    assert "Traceback" not in both and "MarkupError" not in both, both
    assert "\N{SKULL}" not in both, both  # :skull: stays a code
    for text in texts:
        assert text in both, (text, both)


def test_markup_in_data_names_paths_and_ids_is_printed_literally(tmp_path: Path) -> None:
    data = tmp_path / "data"  # (an input path with '[' is read as a glob pattern by the file source)
    data.mkdir()
    _hostile(make_transactions(2000, seed=0)).write_csv(data / "history.csv")
    _hostile(make_transactions(400, seed=1)).write_csv(data / "new.csv")
    folder = tmp_path / "out[" / "x]"  # the output paths hold '[/x]'
    folder.mkdir(parents=True)
    bundle, store = folder / "bundle", folder / "labels.db"
    shown = str(tmp_path / "out[/x]")

    fit = _segscope("fit", data / "history.csv", "--bundle", bundle, "--id-column", "txn_id", "--drop", "is_fraud")
    _literal(fit, f"-> {shown}/bundle", f"column {COLUMN!r} holds semicolons")
    scored = _segscope("score", data / "new.csv", "--bundle", bundle, "--out", folder / "out.csv", "--store", store)
    _literal(scored, f"-> {shown}/out.csv", f"label store {shown}/labels.db")
    inspect = _segscope("inspect", bundle)
    _literal(inspect, COLUMN, f"bundle {shown}/bundle")

    queue = _segscope("label", "queue", "--store", store, "-n", "200")
    _literal(queue, EVIL + "_t01-")
    with LabelStore.open(store, create=False) as opened:
        ids = [item["id"] for item in opened.queue(200)]
        hostile_reasons = [item for item in opened.queue(200) if COLUMN in json.dumps(item["reasons"])]
    assert all(i.startswith(EVIL) for i in ids)
    assert hostile_reasons  # the rare category is among the reasons: its name and value are shown as they are
    _literal(queue, f"{COLUMN}=v{EVIL}")

    added = _segscope("label", "add", "--store", store, ids[0], "anomaly", "--analyst", EVIL, "--note", EVIL)
    _literal(added, f"labelled {ids[0]}")
    again = _segscope("label", "add", "--store", store, ids[0], "anomaly", "--analyst", EVIL, "--note", EVIL)
    _literal(again, f"{ids[0]} already has that label")
    with LabelStore.open(store, create=False) as opened:
        assert opened.labels()["id"].to_list() == [ids[0]]

    # error messages carry the user's text too: one literal line, exit 2
    bad = _segscope("label", "add", "--store", store, ids[1], EVIL)
    assert bad.returncode == 2, bad.stderr
    assert bad.stderr.strip().splitlines() == [
        f"error: label for {ids[1]!r} is {EVIL[:40]!r}; use 'anomaly' or 'normal'"
    ]
    missing = _segscope("inspect", tmp_path / "out[/x]" / "nope")
    assert missing.returncode == 2 and "Traceback" not in missing.stderr, missing.stderr
    assert f"{shown}/nope" in missing.stderr

    exported = _segscope("label", "export", "--store", store, "--out", folder / "labels.ndjson")
    _literal(exported, f"-> {shown}/labels.ndjson")
    (data / "labels.ndjson").write_bytes((folder / "labels.ndjson").read_bytes())
    imported = _segscope("label", "import", "--store", store, data / "labels.ndjson", "--analyst", EVIL)
    _literal(imported, "imported 0 labels (1 unchanged)")


def test_control_characters_in_names_and_ids_reach_no_terminal(tmp_path: Path) -> None:
    """A column named with ESC sequences (clear the screen, red) printed them raw in `inspect`, and ids holding
    them did in `label queue`: each control character is shown as U+FFFD."""
    escape = "\x1b[2J\x1b[31mALL CLEAR"
    frame = make_transactions(1500, seed=0).rename({"merchant_category": "cat" + escape})
    frame = frame.with_columns((pl.lit(escape + "_") + pl.col("txn_id")).alias("txn_id"))
    frame.head(1000).write_parquet(tmp_path / "history.parquet")
    frame.tail(500).write_parquet(tmp_path / "new.parquet")
    bundle, store = tmp_path / "bundle", tmp_path / "labels.db"
    fit = _segscope(
        "fit", tmp_path / "history.parquet", "--bundle", bundle, "--id-column", "txn_id", "--drop", "is_fraud"
    )
    scored = _segscope(
        "score", tmp_path / "new.parquet", "--bundle", bundle, "--out", tmp_path / "o.csv", "--store", store
    )
    inspect = _segscope("inspect", bundle)
    queue = _segscope("label", "queue", "--store", store, "-n", "5")
    for done in (fit, scored, inspect, queue):
        assert done.returncode == 0, done.stderr
        assert "\x1b" not in done.stdout + done.stderr
    assert "cat\ufffd[2J\ufffd[31mALL CLEAR" in inspect.stdout
    assert "\ufffd[2J\ufffd[31mALL CLEAR_t" in queue.stdout


def test_printed_lines_from_callbacks_are_literal(capsys: pytest.CaptureFixture[str]) -> None:
    """Lines built elsewhere (a stream's stats, Spark's progress, fit's steps) reach the consoles as text."""
    from segscope.cli import _app

    for console in (_app.err, _app.out):
        console.print(EVIL)
        console.print(_app.say("green", "fitted", f" {EVIL}"))
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [EVIL, f"fitted {EVIL}"]
    assert captured.err.splitlines()[:2] == [EVIL, f"fitted {EVIL}"]
    # bars are drawn on a terminal only (a log gets none): on one, their descriptions render through a column
    terminal = io.StringIO()
    err, _app.err = _app.err, Console(file=terminal, force_terminal=True, width=300, markup=False, emoji=False)
    try:
        with _app.steps() as step:
            step(f"writing bundle {EVIL}")
        with _app.row_progress(10, f"scoring {EVIL}{{task}}") as progress:
            progress.advance(progress.add_task("score", total=10), 10)
    finally:
        _app.err = err
    drawn = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", terminal.getvalue())
    assert f"writing bundle {EVIL}" in drawn and f"scoring {EVIL}{{task}}" in drawn


def test_the_consoles_cannot_read_markup() -> None:
    """The guard against a regression: every console of the command reads no markup and no emoji codes, and no
    message of the command is written as markup (it would now print as brackets)."""
    from segscope.cli import _app

    for console in (_app.err, _app.out):
        assert console._markup is False and console._emoji is False
    sources = Path(_app.__file__).parent
    for path in sources.glob("*.py"):
        text = path.read_text()
        assert "[/]" not in text and "[green]" not in text and "[bold]" not in text, path
        made = re.findall(r"(?<!class )\b(?:Console|_Plain)\(", text)  # consoles made (the command's own class too)
        assert len(made) == text.count("markup=False, emoji=False"), path
    assert isinstance(_app.err, _app._Plain) and isinstance(_app.out, _app._Plain)  # control characters shown


# ------------------------------------------------------------------------------------------ the label store
def _one_line_error(result, *fragments: str) -> str:
    assert result.code == 2, (result.code, result.err)
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.err
    assert "Traceback" not in result.err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def store_path(tmp_path: Path, model, new_records: pl.DataFrame) -> Path:
    """A SQLite store holding 20 records; three ids begin like a spreadsheet formula."""
    ids = ['=HYPERLINK("http://evil.example","x")', "-5", "@SUM(A1)"]
    records = new_records.head(20).with_columns(pl.Series("txn_id", ids + new_records["txn_id"].head(20).to_list()[3:]))
    path = tmp_path / "labels.db"
    with LabelStore.open(path) as store:
        store.add_records(model.for_review(model.score(records)), source="t")
    return path


@pytest.mark.parametrize("segment", ["99999999999999999999999", "-2", "2147483648"])
def test_a_segment_out_of_range_is_a_one_line_error(run_cli, store_path: Path, segment: str) -> None:
    _one_line_error(run_cli("label", "queue", "--store", store_path, "--segment", segment), "no such segment")
    assert run_cli("label", "queue", "--store", store_path, "--segment", "2147483647").code == 0


def test_empty_record_ids_are_refused(run_cli, store_path: Path, tmp_path: Path) -> None:
    for blank in ("", " "):
        _one_line_error(
            run_cli("label", "add", "--store", store_path, blank, "anomaly"), "record id of a label is empty"
        )
    csv = tmp_path / "blank.csv"
    csv.write_text('id,label\n"-5",anomaly\n"",normal\n')
    _one_line_error(run_cli("label", "import", "--store", store_path, csv), "id is empty at row 1")
    ndjson = tmp_path / "blank.ndjson"
    ndjson.write_text('{"id": "-5", "label": "anomaly"}\n{"id": " ", "label": "normal"}\n')
    _one_line_error(run_cli("label", "import", "--store", store_path, ndjson), "id is empty at row 1")
    with LabelStore.open(store_path) as store:
        assert store.labels().height == 0  # all or nothing
    from segscope.labels.parse import label_from_message

    with pytest.raises(Exception, match="record id of a label is empty"):
        label_from_message(b'{"id": "", "label": "anomaly", "analyst": "ann"}')


def test_csv_export_defuses_formulas(run_cli, store_path: Path, tmp_path: Path) -> None:
    import csv

    with LabelStore.open(store_path) as store:
        ids = [item["id"] for item in store.queue(20)]
    formulas = [i for i in ids if i[0] in "=-@"]
    plain = next(i for i in ids if i[0] not in "=-@")
    assert len(formulas) == 3
    for rid in formulas:
        assert run_cli("label", "add", "--store", store_path, "--analyst", "@mallory", "--", rid, "anomaly").code == 0
    added = run_cli(
        "label", "add", "--store", store_path, plain, "normal", "--category", "+cmd|' /C calc'!A0",
        "--note", "\t=1+1", "--analyst", "ann",
    )  # fmt: skip
    assert added.code == 0, added.err
    assert run_cli("label", "export", "--store", store_path, "--out", tmp_path / "labels.csv").code == 0
    with (tmp_path / "labels.csv").open(newline="") as handle:
        rows = {row["id"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {"'" + i for i in formulas} | {plain}
    assert {rows["'" + i]["analyst"] for i in formulas} == {"'@mallory"}
    assert rows[plain]["category"] == "'+cmd|' /C calc'!A0" and rows[plain]["note"] == "'\t=1+1"
    assert rows[plain]["analyst"] == "ann" and rows[plain]["label"] == "normal"  # plain text stays as it is
    assert not rows[plain]["created_at"].startswith("'")
    # Parquet and NDJSON keep the labels exactly
    for name in ("labels.parquet", "labels.ndjson"):
        assert run_cli("label", "export", "--store", store_path, "--out", tmp_path / name).code == 0
    exact = pl.read_parquet(tmp_path / "labels.parquet")
    assert set(exact["id"]) == {*formulas, plain} and "\t=1+1" in exact["note"].to_list()
    assert set(pl.read_ndjson(tmp_path / "labels.ndjson")["analyst"]) == {"@mallory", "ann"}
    assert "OWASP" in run_cli("label", "export", "--help").out


def test_another_applications_sqlite_file_is_left_alone(run_cli, tmp_path: Path, files: Path, bundle: Path) -> None:
    app_db = tmp_path / "app.db"
    with sqlite3.connect(app_db) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO customers (name) VALUES ('ann')")
    before = app_db.read_bytes()
    for args in (
        ("label", "queue", "--store", app_db),
        ("score", files / "new.parquet", "--bundle", bundle, "--out", tmp_path / "o.parquet", "--store", app_db),
        ("serve", "--store", app_db),
    ):
        _one_line_error(run_cli(*args), "another application's tables (customers)", "give --store a new file")
    assert app_db.read_bytes() == before
    assert not (tmp_path / "o.parquet").exists()
    # a table that only shares a name with segscope's, without segscope's version table, is not a store either
    records_only = tmp_path / "records.db"
    with sqlite3.connect(records_only) as conn:
        conn.execute("CREATE TABLE records (x INTEGER)")
    _one_line_error(run_cli("label", "queue", "--store", records_only), "another application's tables (records)")
    # a new or empty file is still created and migrated; a segscope store with a table added beside it opens
    empty = tmp_path / "empty.db"
    empty.touch()
    assert run_cli("label", "queue", "--store", empty).code == 0
    with sqlite3.connect(empty) as conn:
        conn.execute("CREATE TABLE notes (x TEXT)")
    assert run_cli("label", "queue", "--store", empty).code == 0
    assert run_cli("label", "queue", "--store", tmp_path / "new.db").code == 2  # (queue does not create one)
    assert run_cli("score", files / "new.parquet", "--bundle", bundle, "--out", tmp_path / "o.parquet",
                   "--store", tmp_path / "new.db").code == 0  # fmt: skip
    # a store of a later segscope (a schema revision this one does not know) says so
    with sqlite3.connect(empty) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999'")
    _one_line_error(run_cli("label", "queue", "--store", empty), "newer segscope", "9999")


def test_store_passwords_are_never_printed(
    run_cli, postgres_url: str, files: Path, bundle: Path, tmp_path: Path
) -> None:
    import uuid

    import psycopg

    secret = "Top-Secret-pw"
    server = postgres_url.split("://", 1)[1]  # USER@127.0.0.1:PORT/segscope
    user, rest = server.split("@", 1)
    host = rest.rsplit("/", 1)[0]
    missing = f"postgresql://{user}:{secret}@{host}/no_such_database"
    line = _one_line_error(run_cli("label", "queue", "--store", missing), "cannot open the label store")
    assert secret not in line and f"{user}:***@{host}/no_such_database" in line
    # an '@' left in the password would split it (half of it read as the host): refused, none of it shown
    split = f"postgresql://{user}:Top@Secret@{host}/segscope"
    line = _one_line_error(run_cli("label", "queue", "--store", split), "more than one '@'", "%40")
    assert "Top" not in line and "Secret" not in line
    line = _one_line_error(run_cli("label", "queue", "--store", f"mysql://{user}:{secret}@{host}/x"), "file path")
    assert secret not in line
    line = _one_line_error(run_cli("label", "queue", "--store", f"postgresql://{user}:{secret}@{host}x/db"))
    assert secret not in line
    # a store that works: what the commands print and what a fine-tuned bundle records hide the password
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    url = f"postgresql://{user}:{secret}@{host}/{name}"
    scored = run_cli(
        "score", files / "new.parquet", "--bundle", bundle, "--out", tmp_path / "s.parquet", "--store", url
    )
    assert scored.code == 0, scored.err
    assert secret not in scored.err and f"label store postgresql://{user}:***@{host}/{name}" in scored.err
    truth = pl.read_parquet(files / "new.parquet").select(
        pl.col("txn_id").alias("id"), pl.col("is_fraud").alias("label")
    )
    with LabelStore.open(url) as store:
        known = set(store.records(truth["id"].to_list()))
    truth.filter(pl.col("id").is_in(sorted(known))).write_csv(tmp_path / "truth.csv")
    assert run_cli("label", "import", "--store", url, tmp_path / "truth.csv", "--analyst", "ops").code == 0
    registry = tmp_path / "registry"
    run_cli("fit", files / "history.parquet", "--bundle", registry, "--id-column", "txn_id", "--drop", "is_fraud")
    everything = tmp_path / "all.parquet"
    pl.concat([pl.read_parquet(files / "history.parquet"), pl.read_parquet(files / "new.parquet")]).write_parquet(
        everything
    )
    tuned = run_cli("finetune", "--bundle", registry, "--store", url, "--data", everything)
    assert tuned.code == 0, tuned.err
    assert secret not in tuned.err + tuned.out
    manifests = "".join(p.read_text() for p in registry.glob("versions/*/manifest.json"))
    assert secret not in manifests and f"{user}:***@" in manifests


def test_passwords_are_masked_in_driver_messages() -> None:
    from segscope.labels._open import hide_password, mask_password

    url = "postgresql://ann:p%40ss%3Aw0rd@db.internal:5432/labels?sslmode=require&password=other-Secret"
    assert hide_password(url) == "postgresql://ann:***@db.internal:5432/labels?sslmode=require&password=***"
    message = 'FATAL: password "p@ss:w0rd" rejected (p%40ss%3Aw0rd, other-Secret)'
    assert mask_password(message, url) == 'FATAL: password "***" rejected (***, ***)'
    assert (
        hide_password("labels.db") == "labels.db" and hide_password("postgresql://ann@h/db") == "postgresql://ann@h/db"
    )
