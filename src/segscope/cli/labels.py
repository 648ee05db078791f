"""``segscope label``: the label store from the command line (queue, add, import, export)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table
from rich.text import Text

from segscope.cli._app import BudgetOpt, MixOpt, StoreReq, app, cells, err, open_store, out, reason_text, say

if TYPE_CHECKING:
    import polars as pl

label_app = typer.Typer(help="The label store from the command line: queue, add, import, export.", no_args_is_help=True)
app.add_typer(label_app, name="label")


def _default_analyst() -> str:
    import getpass

    return getpass.getuser()


@label_app.command("queue")
def label_queue(
    store: StoreReq,
    limit: Annotated[int, typer.Option("--limit", "-n", help="How many records.", min=1)] = 20,
    analyst: Annotated[str | None, typer.Option("--analyst", help="Respect this analyst's daily budget.")] = None,
    segment: Annotated[int | None, typer.Option("--segment", help="Only this segment.")] = None,
    mix: MixOpt = None,
    daily_budget: BudgetOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
) -> None:
    """Show the next records to review (highest scores, uncertain ones, segment coverage)."""
    from segscope.labels.queue import parse_mix

    with open_store(store) as label_store:
        items = label_store.queue(limit, parse_mix(mix, daily_budget), analyst=analyst, segment=segment)
    if as_json:
        for item in items:  # JSON Lines: one record per line, for scripts
            sys.stdout.write(json.dumps({k: v for k, v in item.items() if k != "vector"}, default=str) + "\n")
        return
    table = Table(title=Text(f"review queue ({len(items)} records)"))
    for col in ("id", "score", "segment", "why picked", "why unusual"):
        table.add_column(col)
    for item in items:
        table.add_row(
            *cells(item["id"], f"{item['score']:.4f}", item["segment"], item["why"], reason_text(item["reasons"]))
        )
    out.print(table)


@label_app.command("add")
def label_add(
    store: StoreReq,
    record_id: Annotated[str, typer.Argument(help="The record's id.")],
    label: Annotated[str, typer.Argument(help="anomaly or normal.")],
    category: Annotated[str | None, typer.Option("--category", help="e.g. 'card testing'.")] = None,
    analyst: Annotated[str | None, typer.Option("--analyst", help="Who labels (default: $USER).")] = None,
    note: Annotated[str | None, typer.Option("--note", help="Free text.")] = None,
) -> None:
    """Label one record."""
    from segscope.labels import LabelIn

    with open_store(store) as label_store:
        added = label_store.add_labels(
            [LabelIn(record_id, label, analyst or _default_analyst(), category, note)], source="cli"
        )
    err.print(say("green", "labelled", f" {record_id}") if added.added else Text(f"{record_id} already has that label"))


@label_app.command("import")
def label_import(
    store: StoreReq,
    path: Annotated[Path, typer.Argument(help="Labels file: id,label[,category] (.parquet, .csv or .ndjson).")],
    analyst: Annotated[str | None, typer.Option("--analyst", help="Who labels (default: $USER).")] = None,
) -> None:
    """Import labels from a file (all or nothing)."""
    from segscope.labels.parse import labels_from_frame
    from segscope.sources.files import read_file

    items = labels_from_frame(read_file(path), analyst=analyst or _default_analyst(), source=str(path))
    with open_store(store) as label_store:
        added = label_store.add_labels(items, source="import")
    err.print(say("green", "imported", f" {added.added:,} labels ({added.unchanged:,} unchanged) from {path}"))


@label_app.command("export")
def label_export(
    store: StoreReq,
    out_path: Annotated[Path, typer.Option("--out", "-o", help="Output file (.parquet, .csv or .ndjson).")],
    history: Annotated[bool, typer.Option("--history", help="Every label, not only the current one.")] = False,
) -> None:
    """Export labels: id,label,category,analyst,note,source,created_at (current label per record by default).

    In CSV output a text cell that begins with =, +, -, @, a tab or a carriage return gets a leading ' so that a
    spreadsheet shows it instead of running it as a formula (OWASP's advice against CSV injection); Parquet and
    NDJSON hold the labels exactly (use them to import labels again)."""
    from segscope._io import detect_format
    from segscope.sinks.files import write_frame

    with open_store(store) as label_store:
        frame = label_store.labels(history=history).drop("label_id")
    if detect_format(out_path) == "csv":
        frame = defuse_formulas(frame)
    write_frame(frame, out_path)
    err.print(say("green", "exported", f" {frame.height:,} labels -> {out_path}"))


#: What a spreadsheet reads as the start of a formula (OWASP, CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def defuse_formulas(frame: pl.DataFrame) -> pl.DataFrame:
    """Text cells that a spreadsheet would run as a formula, prefixed with ``'``; other columns as they are."""
    import polars as pl

    def defused(name: str) -> pl.Expr:
        text = pl.col(name)
        formula = pl.any_horizontal(text.str.starts_with(start) for start in FORMULA_STARTS)
        return pl.when(formula).then(pl.lit("'") + text).otherwise(text).alias(name)

    return frame.with_columns(defused(name) for name, dtype in frame.schema.items() if dtype == pl.String)
