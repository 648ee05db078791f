"""The shared parts of the ``segscope`` command: the Typer app, consoles, option types and small helpers."""

from __future__ import annotations

import difflib
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

# Typer carries its own copy of Click (0.29 on): its usage errors, caught to print them as one line
from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError

from segscope.exceptions import BundleError, ConfigError, SegscopeError

if TYPE_CHECKING:
    import polars as pl

    from segscope.config import SegscopeConfig
    from segscope.labels import LabelStore
    from segscope.model import Model

app = typer.Typer(
    name="segscope",
    help="Find segments and anomalies in tabular and streaming data, and learn from what analysts confirm.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Status and progress go to stderr so that `--out -` (NDJSON on stdout) stays clean.
# What is printed holds users' text (values, column names, ids, paths, manifests, error messages): neither console
# reads Rich markup or emoji codes from a string, so `[/x]`, `[link=...]` or `:skull:` print as they are. Style goes
# in as rich.text.Text (`say`, `Text.assemble`, table cells through `cells`), never as markup in a string.
# Control characters in that text (ESC above all) could clear the screen, recolour or rewrite what a user reads:
# both consoles print each as U+FFFD, one character for one, so the styles of a Text keep their places.
_CONTROLS = dict.fromkeys([*range(0x00, 0x09), *range(0x0B, 0x20), 0x7F, *range(0x80, 0xA0)], "\ufffd")


def printable(text: str) -> str:
    """``text`` with control characters (but newline and tab) shown as U+FFFD."""
    return text.translate(_CONTROLS)


def _printable(shown: Any) -> Any:
    if isinstance(shown, str):
        return printable(shown)
    if isinstance(shown, Text):
        safe = shown.copy()
        safe.plain = printable(shown.plain)
        return safe
    return shown  # tables: their cells come through `cells`


class _Plain(Console):
    def print(self, *objects: Any, **kwargs: Any) -> None:
        super().print(*map(_printable, objects), **kwargs)


err = _Plain(stderr=True, soft_wrap=True, markup=False, emoji=False)  # one line per message: logs are grepped
out = _Plain(markup=False, emoji=False)

BundleOpt = Annotated[Path, typer.Option("--bundle", "-b", help="Bundle folder.")]
StoreOpt = Annotated[
    str | None, typer.Option("--store", help="Label store: a SQLite file or a postgresql://user@host:port/db URL.")
]
StoreReq = Annotated[
    str, typer.Option("--store", help="Label store: a SQLite file or a postgresql://user@host:port/db URL.")
]
TrustOpt = Annotated[
    bool, typer.Option("--trust-bundle", help="Allow loading pickled components (only for bundles you trust).")
]
MapOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--map",
        help="NAME=COLUMN: the config's (or bundle's) column NAME is COLUMN in the data (repeatable); NAME= for a "
        "column the data does not have.",
    ),
]
MixOpt = Annotated[str | None, typer.Option("--mix", help="Queue shares, e.g. top=0.5,uncertain=0.3,coverage=0.2.")]
BudgetOpt = Annotated[int | None, typer.Option("--daily-budget", help="Labels per analyst per day.", min=1)]


def say(style: str, head: str, rest: object = "") -> Text:
    """``head`` in ``style``, then ``rest``: both literal text (no markup, no emoji codes)."""
    return Text.assemble((head, style), str(rest))


def print_whole(draw: Callable[[], None], where: str) -> None:
    """Print what ``draw`` prints once it has all rendered: a field of a manifest edited by hand that scoring never
    reads (``training`` null) is then one error line (``where`` names the file), with nothing printed before it."""
    try:
        with out.capture() as shown:
            draw()
    except (KeyError, TypeError, AttributeError, ValueError, IndexError) as exc:
        raise BundleError(
            f"{where} holds a field inspect cannot show ({type(exc).__name__}: {str(exc)[:80]}); restore the "
            "original bundle or refit"
        ) from None
    out.file.write(shown.get())


def cells(*values: object) -> list[Text]:
    """Table cells as literal text (control characters shown as U+FFFD)."""
    return [Text(printable(str(value))) for value in values]


def text_column() -> TextColumn:
    """A progress column showing the task's description as literal text."""
    return TextColumn("{task.description}", markup=False)


@contextmanager
def steps() -> Iterator[Any]:
    with Progress(
        SpinnerColumn(), text_column(), TimeElapsedColumn(), console=err, transient=True, disable=not err.is_interactive
    ) as progress:
        state: dict[str, Any] = {}

        def step(text: str) -> None:
            if "task" in state:
                progress.update(state["task"], completed=1, total=1)
            state["task"] = progress.add_task(text, total=None)

        yield step
        if "task" in state:
            progress.update(state["task"], completed=1, total=1)


class _Label(ProgressColumn):
    """A fixed label, as literal text."""

    def __init__(self, label: str) -> None:
        super().__init__()
        self.label = Text(label)

    def render(self, task: Task) -> Text:
        return self.label


def row_progress(total: int | None, label: str, *, estimated: bool = False) -> Progress:
    """A bar of rows done out of ``total``; ``estimated``: the total is a guess (a text file's size over its first
    lines' length), so the bar shows the share done, the rows so far and the time left, not "n/total"."""
    # transient: the bar disappears when done, so a failure leaves only the one-line error
    counted: tuple[ProgressColumn, ...] = (
        (TaskProgressColumn(), TextColumn("{task.completed:,.0f} rows"), TimeRemainingColumn())
        if estimated
        else (MofNCompleteColumn(), TextColumn("rows"))
    )
    return Progress(
        _Label(label),
        BarColumn(),
        *counted,
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=not err.is_interactive,
    )


def load_config(
    config: Path | None, id_column: str | None, drop: list[str], mapping: list[str] | None = None
) -> SegscopeConfig:
    from segscope.columns import parse_mapping
    from segscope.config import config_from_dict, load_config

    columns = parse_mapping(mapping or [])
    if config is not None:
        cfg = load_config(config, columns=columns)
    else:
        cfg = config_from_dict({"columns": columns}, source="--map")
    return cfg.with_features(id_column=id_column, drop=tuple(drop))


def check_drops(data: str | Path, drop: list[str], mapped: set[str]) -> None:
    """A ``--drop`` that names no column of the file (nor a ``--map`` name) is a typo: refused, not ignored, since
    the column it meant would be fitted as a feature (a config's own ``drop`` may name columns a file lacks)."""
    if not drop:
        return
    from segscope.sources.files import FileSource

    try:
        names = list(FileSource(data).schema)
    except Exception:  # a folder (Spark) or a file the fit itself refuses, with its own message
        return
    unknown = [name for name in drop if name not in names and name not in mapped]
    if unknown:
        close = difflib.get_close_matches(unknown[0], names, n=1)
        hint = f"did you mean --drop {close[0]}?" if close else f"its columns are {names[:20]}"
        raise ConfigError(f"--drop {unknown[0]}: {data} has no column of that name; {hint}")


def open_store(url: str, *, create: bool = False) -> LabelStore:
    """Open a label store; only commands that write records into it create a missing SQLite file."""
    from segscope.labels import LabelStore

    return LabelStore.open(url, create=create)


def shown_store(url: str) -> str:
    """A --store value as it may be printed: a URL's password as ``***``."""
    from segscope.labels import hide_password

    return hide_password(url)


def load_model(bundle: Path, trusted: bool) -> Model:
    from segscope.pipeline import Model

    return Model.load(bundle, trusted=trusted)


def reason_text(reasons: list[dict[str, Any]]) -> str:
    return "; ".join(f"{r['feature']}={r['value']} (usual {r['expected']}, {r['contribution']:.0%})" for r in reasons)


def print_top_alerts(scored: pl.DataFrame, *, id_column: str | None, limit: int = 10) -> None:
    import polars as pl

    top = scored.filter(pl.col("is_alert")).sort("score", descending=True).head(limit)
    table = Table(title=f"top {top.height} alerts of {int(scored['is_alert'].sum())}")
    table.add_column("id" if id_column else "row")
    table.add_column("score", justify="right")
    table.add_column("top reasons (value, usual value, share of the anomaly)")
    for row in top.iter_rows(named=True):
        table.add_row(*cells(row[id_column] if id_column else "-", f"{row['score']:.4f}", reason_text(row["reasons"])))
    out.print(table)


def _show_warning(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
    err.print(say("yellow", "warning:", f" {message}"), highlight=False, soft_wrap=True)


def main() -> None:
    """Entry point: one-line errors, non-zero exit codes, no tracebacks for expected problems; segscope's
    warnings as one ``warning:`` line each."""
    import warnings

    from segscope.exceptions import SegscopeWarning

    with warnings.catch_warnings():
        warnings.simplefilter("always", SegscopeWarning)
        warnings.showwarning = _show_warning
        try:
            # not standalone: a usage error comes back here, to be one line like every other error
            code = app(standalone_mode=False)
        except NoArgsIsHelpError as exc:  # `segscope` or a group alone: its help, as before
            exc.show()
            sys.exit(exc.exit_code)
        except UsageError as exc:
            where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            _error(f"{exc.format_message().rstrip('.')}{where}", exc.exit_code)
        except ClickException as exc:
            _error(exc.format_message(), exc.exit_code)
        except SegscopeError as exc:
            _error(str(exc), 2)
        except (KeyboardInterrupt, typer.Abort):
            err.print(say("yellow", "interrupted"))
            sys.exit(130)
        if isinstance(code, int) and code:  # a command's typer.Exit(code), returned when not standalone
            sys.exit(code)


def _error(message: str, code: int) -> NoReturn:
    from segscope._kafka_setup import redact  # a Kafka secret resolved in this process is never shown

    err.print(say("red", "error:", f" {redact(message)}"), highlight=False, soft_wrap=True)
    sys.exit(code)


def command() -> None:
    """The ``segscope`` command (and ``python -m segscope.cli``): :func:`main` in a process that ends with it.
    Its work done (outputs closed and renamed, clients closed), the interpreter's shutdown would then collect
    garbage among every object Numba, LLVM and Polars made (160,000 after a `score`), to free memory the process
    is about to give back anyway: 0.2-0.4 s of every command. Frozen objects are left out of it (reference
    counting still frees the rest; atexit handlers still run). :func:`main` itself freezes nothing: a process
    that calls it and goes on (the tests) keeps its garbage collection whole."""
    import gc

    try:
        main()
    finally:
        gc.freeze()


if __name__ == "__main__":
    command()
