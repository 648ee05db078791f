"""Issue 25, CSV files: a valid multi-line quoted field (RFC 4180) no longer turns the ragged-row check off for the
whole file. A row with too few or too many fields is one line naming its line (and record) and what was expected,
exit code 2 and nothing written, for fit and score alike; the check reads the file in fixed-size chunks and is
compared here with Python's csv module on random files, with records and quotes split across chunk boundaries."""

from __future__ import annotations

import csv
import io
import random
from pathlib import Path

import polars as pl
import pytest

from segscope.exceptions import SourceError
from segscope.sources import files as source_files


def _one_line_error(result, *fragments: str) -> str:
    assert result.code == 2, (result.code, result.err)
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1, result.err
    assert lines[0].startswith("error: ") and "Traceback" not in result.err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def _with_quoted_newlines(lines: list[str]) -> list[str]:
    """Rows 3 and 40 get a merchant category holding a newline (and a comma), quoted as RFC 4180 allows."""
    out = list(lines)
    for row in (3, 40):
        fields = out[row].split(",")
        fields[3] = f'"{fields[3]}\nsecond line, with a comma"'
        out[row] = ",".join(fields)
    return out


@pytest.mark.parametrize(("kind", "fields"), [("short", 7), ("long", 10)])
def test_a_quoted_newline_does_not_turn_the_check_off(
    run_cli, bundle: Path, files: Path, tmp_path: Path, kind: str, fields: int
) -> None:
    lines = _with_quoted_newlines((files / "new.csv").read_text().splitlines())
    row = lines[100].split(",")
    lines[100] = ",".join(row[:7] if kind == "short" else [*row, "extra"])
    path = tmp_path / f"{kind}.csv"
    path.write_text("\n".join(lines) + "\n")
    # two records above it span two lines each: record 100 starts on line 103
    expected = (f"line 103 (record 100) has {fields} fields", "header has 9")
    _one_line_error(run_cli("score", path, "--bundle", bundle, "--out", tmp_path / "o.parquet"), *expected)
    assert not (tmp_path / "o.parquet").exists()
    _one_line_error(run_cli("fit", path, "--bundle", tmp_path / "b", "--id-column", "txn_id"), *expected)
    assert not (tmp_path / "b").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary files left either


def test_a_ragged_record_that_spans_lines_names_them(run_cli, bundle: Path, files: Path, tmp_path: Path) -> None:
    lines = (files / "new.csv").read_text().splitlines()
    fields = lines[20].split(",")
    lines[20] = ",".join([*fields[:3], f'"{fields[3]}\nmore"', *fields[4:7]])  # a field short, over two lines
    path = tmp_path / "spans.csv"
    path.write_text("\n".join(lines) + "\n")
    _one_line_error(
        run_cli("score", path, "--bundle", bundle, "--out", tmp_path / "o.parquet"),
        "lines 21-22 (record 20, a quoted field spans lines) have 7 fields",
        "header has 9",
    )
    assert not (tmp_path / "o.parquet").exists()


def test_an_unclosed_quote_names_its_record(run_cli, bundle: Path, files: Path, tmp_path: Path) -> None:
    lines = (files / "new.csv").read_text().splitlines()
    lines[-5] = lines[-5].replace(",US,", ',"US,', 1)
    path = tmp_path / "unclosed.csv"
    path.write_text("\n".join(lines) + "\n")
    assert '"US,' in lines[-5]
    _one_line_error(
        run_cli("score", path, "--bundle", bundle, "--out", tmp_path / "o.parquet"),
        f"line {len(lines) - 4}",
        "never closed",
    )
    assert not (tmp_path / "o.parquet").exists()


def test_valid_quoted_newlines_are_read_and_scored(run_cli, bundle: Path, files: Path, tmp_path: Path) -> None:
    """Multi-line fields, escaped quotes, CRLF line ends and no newline at the end: all valid."""
    lines = _with_quoted_newlines((files / "new.csv").read_text().splitlines())
    lines[60] = lines[60].replace(",US,", ',"U""S, ""x""\r\n\r\nend",', 1)
    path = tmp_path / "valid.csv"
    path.write_bytes("\r\n".join(lines).encode())
    out = tmp_path / "o.parquet"
    result = run_cli("score", path, "--bundle", bundle, "--out", out)
    assert result.code == 0, result.err
    scored = pl.read_parquet(out)
    assert scored.height == pl.read_parquet(files / "new.parquet").height
    assert scored["merchant_category"][2].endswith("\nsecond line, with a comma")
    assert scored["country"][59] == 'U"S, "x"\r\n\r\nend'


def test_a_blank_line_is_refused(run_cli, bundle: Path, files: Path, tmp_path: Path) -> None:
    """Polars reads a blank line as a record of nulls; the check said blank lines were skipped."""
    lines = (files / "new.csv").read_text().splitlines()
    for name, at in (("middle.csv", 80), ("end.csv", len(lines))):
        path = tmp_path / name
        path.write_text("\n".join([*lines[:at], "", *lines[at:]]) + "\n")
        _one_line_error(
            run_cli("score", path, "--bundle", bundle, "--out", tmp_path / "o.parquet"),
            f"line {at + 1} is blank but the header has 9 fields",
        )
        _one_line_error(run_cli("fit", path, "--bundle", tmp_path / "b"), f"line {at + 1} is blank")
    assert not (tmp_path / "o.parquet").exists() and not (tmp_path / "b").exists()


# ------------------------------------------------------------------------------------------ the scan itself
def _random_csv(rng: random.Random, ncols: int, nrows: int) -> str:
    def field() -> str:
        kind = rng.random()
        if kind < 0.5:
            return rng.choice(["", "a", "12.5", "x y", "héllo", "€"])
        body = "".join(rng.choice(["a", ",", "\n", "\r\n", '""', " ", "é"]) for _ in range(rng.randint(0, 6)))
        return f'"{body}"'

    header = ",".join(f"c{i}" for i in range(ncols))
    rows = [",".join(field() for _ in range(ncols)) for _ in range(nrows)]
    end = rng.choice(["\n", "\r\n"])
    return header + end + end.join(rows) + rng.choice(["", end])


def _first_bad_by_csv_module(text: str, ncols: int) -> tuple[int, int, int] | None:
    """(line, record, fields) of the first record whose field count is not ``ncols``, by Python's csv module."""
    reader = csv.reader(io.StringIO(text, newline=""))
    next(reader)
    start = reader.line_num + 1
    for record, row in enumerate(reader, start=1):
        if max(len(row), 1) != ncols:  # a blank line is a record of one empty field, as Polars reads it
            return start, record, max(len(row), 1)
        start = reader.line_num + 1
    return None


@pytest.mark.parametrize("seed", range(60))
def test_the_field_count_agrees_with_the_csv_module(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    ncols = rng.randint(1, 5)
    text = _random_csv(rng, ncols, rng.randint(1, 30))
    ragged = ",".join(["z"] * rng.choice([ncols + 1, ncols + 2, *([ncols - 1] if ncols > 1 else [])]))
    if seed % 4 == 1:  # after some newline (inside a quoted field, it is part of that field)
        lines = text.split("\n")
        lines.insert(rng.randrange(1, len(lines)), ragged)
        text = "\n".join(lines)
    elif seed % 4 == 3:  # the last record, without a newline at the end
        text = text + ("" if text.endswith("\n") else "\n") + ragged
    path = tmp_path / "r.csv"
    path.write_bytes(text.encode())
    expected = _first_bad_by_csv_module(text, ncols)
    for chunk in (1, 2, 3, 7, 64, 1 << 20):  # records, quotes, CRLF and UTF-8 characters split across chunks
        found = source_files._first_ragged(path, ncols, chunk_size=chunk)
        if expected is None:
            assert found is None, (chunk, found, text)
        else:
            assert found is not None and (found.line, found.record, found.fields) == expected, (chunk, found, text)


def test_utf8_is_checked_across_chunk_boundaries(tmp_path: Path) -> None:
    path = tmp_path / "u.csv"
    path.write_bytes("a,b\n1,é€😀\n2,x\n".encode())
    for chunk in (1, 2, 3, 5):
        assert source_files._first_ragged(path, 2, chunk_size=chunk) is None
    path.write_bytes(b"a,b\n1,x\n" + "2,é\n".encode("latin-1") * 3)
    for chunk in (1, 4, 1 << 20):
        with pytest.raises(SourceError, match="not UTF-8"):
            source_files._first_ragged(path, 2, chunk_size=chunk)
    path.write_bytes(b"a,b\n1,x\n2," + "é".encode()[:1])  # cut in the middle of a character
    with pytest.raises(SourceError, match="not UTF-8"):
        source_files._first_ragged(path, 2, chunk_size=3)
