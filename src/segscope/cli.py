"""The ``segscope`` command: a thin shell over the library (parsing, progress, printing)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from segscope.exceptions import BundleError as BundleError_
from segscope.exceptions import SegscopeError

if TYPE_CHECKING:
    import polars as pl

    from segscope.config import SegscopeConfig
    from segscope.pipeline import Model
    from segscope.store import LabelStore

app = typer.Typer(
    name="segscope",
    help="Find segments and anomalies in tabular and streaming data, and learn from what analysts confirm.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Status and progress go to stderr so that `--out -` (NDJSON on stdout) stays clean.
err = Console(stderr=True)
out = Console()

BundleOpt = Annotated[Path, typer.Option("--bundle", "-b", help="Bundle folder.")]
StoreOpt = Annotated[
    str | None, typer.Option("--store", help="Label store: a SQLite file or a postgresql://user@host:port/db URL.")
]
TrustOpt = Annotated[
    bool, typer.Option("--trust-bundle", help="Allow loading pickled components (only for bundles you trust).")
]


@contextmanager
def _steps() -> Iterator[Any]:
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err, transient=True
    ) as progress:
        state: dict[str, Any] = {}

        def step(text: str) -> None:
            if "task" in state:
                progress.update(state["task"], completed=1, total=1)
            state["task"] = progress.add_task(text, total=None)

        yield step
        if "task" in state:
            progress.update(state["task"], completed=1, total=1)


def _row_progress(total: int, label: str) -> Progress:
    # transient: the bar disappears when done, so a failure leaves only the one-line error
    return Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("rows"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )


def _load_config(config: Path | None, id_column: str | None, drop: list[str]) -> SegscopeConfig:
    from segscope.config import SegscopeConfig, load_config

    cfg = load_config(config) if config is not None else SegscopeConfig()
    return cfg.with_features(id_column=id_column, drop=tuple(drop))


def _open_store(url: str, *, create: bool = False) -> LabelStore:
    """Open a label store; only commands that write records into it create a missing SQLite file."""
    from segscope.store import LabelStore

    return LabelStore.open(url, create=create)


def _load_model(bundle: Path, trusted: bool) -> Model:
    from segscope.pipeline import Model

    return Model.load(bundle, trusted=trusted)


@app.command()
def fit(
    data: Annotated[Path, typer.Argument(help="History file (.parquet, .csv, .ndjson).")],
    bundle: BundleOpt,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Config file (.toml or .yaml).")] = None,
    id_column: Annotated[str | None, typer.Option("--id-column", help="Column that identifies a record.")] = None,
    drop: Annotated[list[str] | None, typer.Option("--drop", help="Column to leave out (repeatable).")] = None,
    previous: Annotated[
        Path | None, typer.Option("--previous", help="Last bundle: segment ids keep their meaning across refits.")
    ] = None,
) -> None:
    """Fit the unsupervised layer on history and write a bundle."""
    from segscope.pipeline import Model, fit_file

    cfg = _load_config(config, id_column, drop or [])
    last = Model.load(previous) if previous is not None else None
    with _steps() as step:
        model = fit_file(data, cfg, on_step=step, previous=last)
        step(f"writing bundle {bundle}")
        model.save(bundle)
    dropped = model.preparer_.dropped_
    err.print(
        f"[green]fitted[/] {model.version} on {model.training_['fit_rows']:,} of {model.training_['rows']:,} rows, "
        f"{len(model.preparer_.schema_.features)} features -> [bold]{bundle}[/]"
    )
    for name, why in dropped.items():
        err.print(f"  [yellow]dropped[/] {name}: {why}")


@app.command()
def score(
    data: Annotated[Path, typer.Argument(help="File to score (.parquet, .csv, .ndjson).")],
    bundle: BundleOpt,
    out_path: Annotated[
        str, typer.Option("--out", "-o", help="Output file; format by extension; '-' = NDJSON on stdout.")
    ],
    batch_size: Annotated[int, typer.Option(help="Rows per batch (memory bound).", min=1)] = 200_000,
    store: StoreOpt = None,
    trust_bundle: TrustOpt = False,
) -> None:
    """Score a file: input columns + score, anomaly_score, supervised_score, is_alert, segment, reasons,
    model_version."""
    from segscope.pipeline import score_file
    from segscope.sources.files import count_rows

    model = _load_model(bundle, trust_bundle)
    label_store = _open_store(store, create=True) if store is not None else None
    total = count_rows(data)
    written = {"rows": 0}

    def advance(n: int) -> None:
        written["rows"] += n
        progress.advance(task, n)

    with _row_progress(total, f"scoring {data.name}") as progress:
        task = progress.add_task("score", total=total)
        try:
            summary = score_file(model, data, out_path, batch_size=batch_size, on_batch=advance, store=label_store)
        except SegscopeError as exc:
            if out_path == "-" and written["rows"]:  # stdout streams: say what a reader already received
                raise type(exc)(f"{exc} ({written['rows']:,} scored rows were already written to stdout)") from None
            raise
    rate = summary.rows / summary.seconds if summary.seconds else 0.0
    err.print(
        f"[green]scored[/] {summary.rows:,} rows ({rate:,.0f} rows/s), {summary.alerts:,} alerts, "
        f"model {model.version} -> [bold]{summary.out}[/]"
    )
    if label_store is not None:
        err.print(f"  {summary.stored:,} alerts and queue candidates kept in the label store {store}")


@app.command()
def evaluate(
    data: Annotated[Path, typer.Argument(help="Labelled file.")],
    bundle: BundleOpt,
    label_column: Annotated[str, typer.Option("--label-column", "-l", help="0/1 column, 1 = anomaly.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON.")] = False,
    trust_bundle: TrustOpt = False,
) -> None:
    """Compare scores with labels: AUCROC, AUCPR, precision@k, alert precision/recall."""
    from segscope.pipeline import evaluate_file

    model = _load_model(bundle, trust_bundle)
    metrics = evaluate_file(model, data, label_column)
    if as_json:
        out.print_json(json.dumps(metrics))
        return
    table = Table(title=f"{data.name} vs '{label_column}' (model {model.version})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else f"{value:,}")
    out.print(table)


@app.command()
def inspect(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole manifest as JSON.")] = False,
    trust_bundle: TrustOpt = False,
) -> None:
    """Show what a bundle holds (verifies its checksums)."""
    model = _load_model(bundle, trust_bundle)
    manifest = model.manifest_
    if as_json:
        out.print_json(json.dumps(manifest))
        return
    train = manifest["training"]
    from segscope import registry

    if registry.is_registry(bundle):
        current = registry.current_version(bundle)
        out.print(
            f"[bold]registry[/] {bundle}: versions "
            + ", ".join(f"[bold]{v}[/] (current)" if v == current else v for v in registry.list_versions(bundle))
        )
    out.print(f"[bold]bundle[/] {bundle}  (format {manifest['format_version']}, checksums OK)")
    out.print(f"model version  {manifest['model_version']}   created {manifest['created_at']}")
    out.print(
        f"segscope {manifest['versions']['segscope']}, python {manifest['versions']['python']}, "
        f"pyod {manifest['versions']['pyod']}, polars {manifest['versions']['polars']}"
    )
    out.print(
        f"training       {train['fit_rows']:,} of {train['rows']:,} rows, fingerprint {train['fingerprint'][:16]}…"
    )
    out.print(
        f"schema hash    {manifest['feature_schema_hash'][:16]}…  id column: "
        f"{manifest['feature_schema']['id_column'] or '(none)'}"
    )
    table = Table(title="input columns")
    for col in ("column", "kind", "dtype at fit", "features", "expected"):
        table.add_column(col)
    prep = model.preparer_
    for spec in prep.schema_.columns:
        feats = [f for f in prep.schema_.features if prep.source_column_[f] == spec.name]
        table.add_row(spec.name, spec.kind, spec.dtype, ", ".join(feats), ", ".join(prep.expected_[f] for f in feats))
    out.print(table)
    for name, why in manifest["dropped_columns"].items():
        out.print(f"  dropped {name}: {why}")
    out.print("components:")
    for comp in manifest["components"]:
        detail = comp.get("params") or comp.get("note") or ""
        out.print(f"  {comp['role']:<10} {comp['name'] or '-':<14} {detail}")
    out.print(f"alert policy   {manifest['policy']}")
    segmenter = next((c for c in manifest["components"] if c["role"] == "segmenter" and c.get("name")), None)
    if segmenter is not None:
        agreement = segmenter["agreement_with_fit_labels"]
        held = agreement["held_out"]
        cards = Table(
            title=f"{segmenter['segments']} segments (assignment agrees with the fit-time labels on "
            f"{agreement['fit_sample']:.1%} of the sample" + (f", {held:.1%} held out)" if held is not None else ")")
        )
        for col in ("segment", "size", "share", "anomaly rate", "what sets it apart (effect size: typical vs overall)"):
            cards.add_column(col)
        for card in segmenter["profiles"]:
            rate = card["anomaly_rate"]
            apart = "; ".join(
                f"{d['feature']} {d['effect_size']:+.1f} "
                f"({card.get('typical_values', {}).get(d['feature'], d['typical'])} vs {d['expected_overall']})"
                for d in card["distinguishing"][:3]
            )
            cards.add_row(
                "noise" if card["segment"] == -1 else str(card["segment"]),
                f"{card['size']:,}",
                f"{card['share']:.1%}",
                "-" if rate is None else f"{rate:.1%}",
                apart,
            )
        out.print(cards)
    if manifest.get("label_snapshot"):
        out.print(f"labels         {manifest['label_snapshot']}")
        out.print(f"tuned from     {manifest['parent_version']}; decision: {manifest['promotion']['reason']}")


@app.command()
def report(
    bundle: BundleOpt,
    data: Annotated[Path | None, typer.Argument(help="Data to score and show (optional).")] = None,
    out_path: Annotated[Path, typer.Option("--out", "-o", help="The HTML file to write.")] = Path("report.html"),
    label_column: Annotated[
        str | None, typer.Option("--label-column", "-l", help="0/1 column of DATA for PR curves.")
    ] = None,
    labels: Annotated[Path | None, typer.Option("--labels", help="Labels file (id,label) for PR curves.")] = None,
    max_rows: Annotated[int, typer.Option("--max-rows", help="Score a uniform sample of this many rows.")] = 200_000,
    map_rows: Annotated[int, typer.Option("--map-rows", help="Records drawn on the map.")] = 3000,
    trust_bundle: TrustOpt = False,
) -> None:
    """Write a self-contained HTML report: segment map, score distributions, profile cards, PR curves."""
    from segscope.report import load_report_data, write_report

    if label_column is not None and labels is not None:
        raise typer.BadParameter("give --label-column or --labels, not both")
    if data is None and (label_column is not None or labels is not None):
        raise typer.BadParameter("labels need DATA to join with; pass the data file too")
    model = _load_model(bundle, trust_bundle)
    with _steps() as step:
        report_data = None
        if data is not None:
            from segscope.supervised.labels import load_labels

            step(f"scoring {data.name}")
            label_frame = load_labels(labels) if labels is not None else None
            report_data = load_report_data(
                model, data, label_column=label_column, labels=label_frame, max_rows=max_rows
            )
        step("drawing the report")
        path = write_report(model, out_path, report_data, map_rows=map_rows)
    size = path.stat().st_size / 2**20
    err.print(f"[green]wrote[/] {path} ({size:.1f} MiB, self-contained: open it in any browser)")


@app.command()
def finetune(
    bundle: BundleOpt,
    data: Annotated[Path, typer.Option("--data", help="History holding the labelled (and unlabelled) records.")],
    labels: Annotated[
        Path | None, typer.Option("--labels", help="Labels file: id,label[,category] (.parquet or .csv).")
    ] = None,
    store: Annotated[str | None, typer.Option("--store", help="Take the current labels from this label store.")] = None,
    learner: Annotated[str, typer.Option("--learner", help="xgboost or torch.")] = "xgboost",
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Registry for the new version (default: the bundle, as a registry).")
    ] = None,
    holdout: Annotated[float, typer.Option(help="Share of records held out to compare versions.")] = 0.3,
    metric: Annotated[str, typer.Option(help="Promotion metric: aucpr or aucroc.")] = "aucpr",
    trust_bundle: TrustOpt = False,
) -> None:
    """Fine-tune a new version on analyst labels; promote it only if it beats the current one on held-out labels."""
    from segscope.pipeline import finetune_file
    from segscope.registry import current_version
    from segscope.supervised.finetune import LEARNERS

    if learner not in LEARNERS:
        raise typer.BadParameter(f"--learner must be one of {list(LEARNERS)}; got {learner!r}")
    if metric not in ("aucpr", "aucroc"):
        raise typer.BadParameter(f"--metric must be aucpr or aucroc; got {metric!r}")
    if (labels is None) == (store is None):
        raise typer.BadParameter("give the labels as --labels FILE or --store URL (one of them)")
    label_source: Path | pl.DataFrame
    if store is not None:
        with _open_store(store) as label_store:
            label_source = label_store.training_labels()
        if not label_source.height:
            raise typer.BadParameter(f"the label store {store} holds no labels yet; label records first")
    else:
        assert labels is not None
        label_source = labels
    with (
        _steps() as step,
        Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
            transient=True,
        ) as bars,
    ):
        tasks: dict[str, Any] = {}

        def epoch(phase: str, done: int, total: int) -> None:  # the torch learner's epochs and steps
            if phase not in tasks:
                tasks[phase] = bars.add_task(phase, total=total)
            bars.update(tasks[phase], completed=done, total=total)
            if done == total:  # each fold trains again: the bar starts over next time
                bars.remove_task(tasks.pop(phase))

        candidate, report, target = finetune_file(
            bundle,
            data,
            label_source,
            labels_source=f"label store {store}" if store is not None else None,
            learner=learner,
            out=out_dir,
            holdout=holdout,
            metric=metric,
            trusted=trust_bundle,
            on_step=step,
            on_progress=epoch,
        )
    sup = report["supervised"]
    err.print(
        f"[green]fine-tuned[/] {candidate.version} ({sup['learner']}, {sup['labelled_anomalies']} labelled "
        f"anomalies, {sup['mode']}, learner weight {sup['learner_weight']:.2f}) from {candidate.parent_version_}"
    )
    err.print(f"  held out: {report['split']}, {report['held_out_labelled_anomalies']} labelled anomalies")
    if "candidate" in report:
        cur, new = report["current"], report["candidate"]
        err.print(f"  current   AUCPR {cur['aucpr']:.4f}  AUCROC {cur['aucroc']:.4f}")
        err.print(
            f"  candidate AUCPR {new['aucpr']:.4f}  AUCROC {new['aucroc']:.4f}  "
            f"(Brier {report['calibration']['brier']:.4f}, ECE {report['calibration']['ece']:.4f})"
        )
    verdict = "[green]promoted[/]" if report["promote"] else "[yellow]not promoted[/]"
    err.print(f"{verdict}: {report['reason']} -> registry [bold]{target}[/] (current: {current_version(target)})")


@app.command()
def promote(
    registry_dir: Annotated[Path, typer.Argument(help="Registry folder.")],
    version: Annotated[str | None, typer.Option("--version", help="Version to make current (default: newest).")] = None,
) -> None:
    """Make a version current by hand."""
    from segscope import registry

    _require_registry(registry_dir)
    target = version or registry.list_versions(registry_dir)[-1]
    registry.set_current(registry_dir, target, action="promote", detail={"reason": "by hand"})
    err.print(f"[green]current[/] version of {registry_dir} is now {target}")


@app.command()
def rollback(registry_dir: Annotated[Path, typer.Argument(help="Registry folder.")]) -> None:
    """Go back to the version that was current before the last promotion."""
    from segscope import registry

    _require_registry(registry_dir)
    now, earlier = registry.rollback(registry_dir)
    err.print(f"[green]rolled back[/] {registry_dir} from {now} to {earlier}")


def _require_registry(path: Path) -> None:
    from segscope import registry

    if not registry.is_registry(path):
        raise BundleError_(f"{path} is not a registry (no CURRENT file); `segscope finetune` creates one")


@app.command()
def stream(
    bundle: BundleOpt,
    bootstrap: Annotated[str, typer.Option("--bootstrap", help="Kafka bootstrap address, HOST:PORT.")],
    in_topic: Annotated[str, typer.Option("--in-topic", help="Topic of JSON records to score.")],
    out_topic: Annotated[str, typer.Option("--out-topic", help="Topic for every scored record.")],
    alerts_topic: Annotated[str | None, typer.Option("--alerts-topic", help="Topic for alerts too.")] = None,
    dlq_topic: Annotated[
        str | None, typer.Option("--dlq-topic", help="Dead-letter topic (default: <in-topic>.dlq).")
    ] = None,
    group: Annotated[str, typer.Option("--group", help="Consumer group; run more processes to share partitions.")] = (
        "segscope"
    ),
    batch_size: Annotated[int, typer.Option(help="Records per micro-batch.", min=1)] = 5000,
    max_message_bytes: Annotated[int, typer.Option(help="Larger messages are dead-lettered.", min=1)] = 65_536,
    stats_interval: Annotated[float, typer.Option(help="Seconds between stats lines.")] = 10.0,
    metrics_port: Annotated[int | None, typer.Option(help="Serve Prometheus metrics on 127.0.0.1:PORT.")] = None,
    idle_exit: Annotated[
        float | None, typer.Option(help="Exit after this many seconds without messages (drain and stop).")
    ] = None,
    store: StoreOpt = None,
    labels_topic: Annotated[
        str | None,
        typer.Option("--labels-topic", help="Topic of analyst labels (JSON id,label,analyst) to consume into --store."),
    ] = None,
    trust_bundle: TrustOpt = False,
) -> None:
    """Score a Kafka topic continuously (at-least-once; SIGTERM drains, commits and exits 0)."""
    import logging

    from segscope.stream import StreamOptions, run_stream

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("kafka").setLevel(logging.WARNING)  # the client's connection chatter
    options = StreamOptions(
        bundle=bundle,
        bootstrap=bootstrap,
        in_topic=in_topic,
        out_topic=out_topic,
        alerts_topic=alerts_topic,
        dlq_topic=dlq_topic,
        group=group,
        batch_size=batch_size,
        max_message_bytes=max_message_bytes,
        stats_interval=stats_interval,
        metrics_port=metrics_port,
        idle_exit=idle_exit,
        trusted=trust_bundle,
        store=store,
        labels_topic=labels_topic,
    )
    stats = run_stream(options, on_stats=lambda line: err.print(line, highlight=False))
    err.print(
        f"[green]stream stopped[/]: {stats.records_in:,} in, {stats.records_out:,} scored, {stats.alerts:,} alerts, "
        f"{stats.dead_letters:,} dead letters, model versions {', '.join(stats.model_versions)}"
        + (f"; {stats.stored:,} kept in the label store, {stats.labels_in:,} labels consumed" if store else "")
    )


label_app = typer.Typer(help="The label store from the command line: queue, add, import, export.", no_args_is_help=True)
app.add_typer(label_app, name="label")
StoreReq = Annotated[
    str, typer.Option("--store", help="Label store: a SQLite file or a postgresql://user@host:port/db URL.")
]
AnalystOpt = Annotated[str, typer.Option("--analyst", help="Who labels (default: $USER).")]
MixOpt = Annotated[
    str | None, typer.Option("--mix", help="Queue shares, e.g. top=0.5,uncertain=0.3,coverage=0.2.")
]
BudgetOpt = Annotated[int | None, typer.Option("--daily-budget", help="Labels per analyst per day.", min=1)]


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
    from segscope.queue import parse_mix

    with _open_store(store) as label_store:
        items = label_store.queue(limit, parse_mix(mix, daily_budget), analyst=analyst, segment=segment)
    if as_json:
        for item in items:  # JSON Lines: one record per line, for scripts
            sys.stdout.write(json.dumps({k: v for k, v in item.items() if k != "vector"}, default=str) + "\n")
        return
    table = Table(title=f"review queue ({len(items)} records)")
    for col in ("id", "score", "segment", "why picked", "why unusual"):
        table.add_column(col)
    for item in items:
        table.add_row(
            item["id"], f"{item['score']:.4f}", str(item["segment"]), item["why"], _reason_text(item["reasons"])
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
    from segscope.store import LabelIn

    with _open_store(store) as label_store:
        added = label_store.add_labels(
            [LabelIn(record_id, label, analyst or _default_analyst(), category, note)], source="cli"
        )
    err.print(f"[green]labelled[/] {record_id}" if added.added else f"{record_id} already has that label")


@label_app.command("import")
def label_import(
    store: StoreReq,
    path: Annotated[Path, typer.Argument(help="Labels file: id,label[,category] (.parquet, .csv or .ndjson).")],
    analyst: Annotated[str | None, typer.Option("--analyst", help="Who labels (default: $USER).")] = None,
) -> None:
    """Import labels from a file (all or nothing)."""
    import polars as pl

    from segscope.sources.files import read_file
    from segscope.store import LabelIn
    from segscope.supervised.labels import normalise_labels

    frame = read_file(path)
    checked = normalise_labels(frame, source=str(path))
    who = analyst or _default_analyst()
    notes = frame.get_column("note").cast(pl.String) if "note" in frame.columns else None
    items = [
        LabelIn(i, "anomaly" if v == 1 else "normal", who, c, notes[n] if notes is not None else None)
        for n, (i, v, c) in enumerate(checked.iter_rows())
    ]
    with _open_store(store) as label_store:
        added = label_store.add_labels(items, source="import")
    err.print(f"[green]imported[/] {added.added:,} labels ({added.unchanged:,} unchanged) from {path}")


@label_app.command("export")
def label_export(
    store: StoreReq,
    out_path: Annotated[Path, typer.Option("--out", "-o", help="Output file (.parquet, .csv or .ndjson).")],
    history: Annotated[bool, typer.Option("--history", help="Every label, not only the current one.")] = False,
) -> None:
    """Export labels: id,label,category,analyst,note,source,created_at (current label per record by default)."""
    from segscope.sinks.files import write_batches

    with _open_store(store) as label_store:
        frame = label_store.labels(history=history).drop("label_id")
    write_batches(iter([frame]), frame.schema, out_path)
    err.print(f"[green]exported[/] {frame.height:,} labels -> {out_path}")


@app.command()
def serve(
    store: StoreReq,
    bundle: Annotated[
        Path | None, typer.Option("--bundle", "-b", help="Re-score stored records with this bundle's current version.")
    ] = None,
    host: Annotated[str, typer.Option("--host", help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port.", min=1, max=65535)] = 8000,
    token: Annotated[
        str | None, typer.Option("--token", envvar="SEGSCOPE_TOKEN", help="Required when not on loopback.")
    ] = None,
    mix: MixOpt = None,
    daily_budget: BudgetOpt = None,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(
            "--allowed-host",
            help="A host name the page is reached by, besides loopback and --host (repeatable; guards against "
            "DNS rebinding).",
        ),
    ] = None,
    trust_bundle: TrustOpt = False,
) -> None:
    """Serve the analyst page and its JSON API (GET /api/queue, POST /api/labels, GET /api/labels)."""
    import socket

    from segscope._deps import require
    from segscope.queue import parse_mix

    uvicorn = require("uvicorn", extra="web", feature="segscope serve")
    from segscope.web import LOOPBACK_HOSTS, create_app

    if host not in LOOPBACK_HOSTS and not token:
        raise typer.BadParameter(f"binding to {host} exposes the labels: pass --token (or set SEGSCOPE_TOKEN)")
    hosts = [*(allowed_host or [])]
    if host in ("0.0.0.0", "::"):  # every interface: the names this machine is reached by
        hosts += [socket.gethostname(), socket.getfqdn()]
    elif host not in LOOPBACK_HOSTS:
        hosts.append(host)
    queue_mix = parse_mix(mix, daily_budget)
    label_store = _open_store(store)
    if bundle is not None:
        model = _load_model(bundle, trust_bundle)
        updated = label_store.rescore(model)
        err.print(f"model {model.version}: {updated:,} stored records re-scored")
    err.print(f"[green]serving[/] http://{host}:{port}/  (label store {store}; Ctrl-C stops)")
    app_ = create_app(label_store, token=token, mix=queue_mix, allowed_hosts=hosts)
    uvicorn.run(app_, host=host, port=port, log_level="warning")


def _reason_text(reasons: list[dict[str, Any]]) -> str:
    return "; ".join(f"{r['feature']}={r['value']} (usual {r['expected']}, {r['contribution']:.0%})" for r in reasons)


def print_top_alerts(scored: pl.DataFrame, *, id_column: str | None, limit: int = 10) -> None:
    import polars as pl

    top = scored.filter(pl.col("is_alert")).sort("score", descending=True).head(limit)
    table = Table(title=f"top {top.height} alerts of {int(scored['is_alert'].sum())}")
    table.add_column("id" if id_column else "row")
    table.add_column("score", justify="right")
    table.add_column("top reasons (value, usual value, share of the anomaly)")
    for row in top.iter_rows(named=True):
        table.add_row(str(row[id_column]) if id_column else "-", f"{row['score']:.4f}", _reason_text(row["reasons"]))
    out.print(table)


@app.command()
def demo(
    out_dir: Annotated[Path, typer.Option("--out-dir", help="Where the demo writes its files.")] = Path(
        "segscope-demo"
    ),
    rows: Annotated[int, typer.Option(help="History rows to generate.", min=1000)] = 50_000,
    review: Annotated[int, typer.Option(help="How many top alerts the simulated analysts label.", min=1)] = 100,
) -> None:
    """Run the main job end to end on generated card transactions (no server, no external data)."""
    import shutil

    import polars as pl

    from segscope.config import SegscopeConfig
    from segscope.exceptions import MissingDependencyError
    from segscope.pipeline import Model, evaluate_file, finetune_file, fit_file, score_file
    from segscope.testing.data import make_transactions

    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out_dir / "bundle", ignore_errors=True)  # the demo's own bundle/registry from a last run
    history_path, new_path = out_dir / "history.parquet", out_dir / "new.parquet"
    scored_path, bundle = out_dir / "scored.parquet", out_dir / "bundle"
    with _steps() as step:
        step(f"generating {rows:,} historical and {rows // 5:,} new card transactions (1% planted fraud)")
        make_transactions(rows, seed=0).write_parquet(history_path)
        make_transactions(rows // 5, seed=1).write_parquet(new_path)
        cfg = SegscopeConfig().with_features(id_column="txn_id", drop=("is_fraud",))
        model = fit_file(history_path, cfg, on_step=step)
        step(f"writing bundle {bundle}")
        model.save(bundle)
    total = rows // 5
    with _row_progress(total, "scoring new.parquet") as progress:
        task = progress.add_task("score", total=total)
        summary = score_file(
            model, new_path, scored_path, batch_size=5_000, on_batch=lambda n: progress.advance(task, n)
        )
    scored = pl.read_parquet(scored_path)
    print_top_alerts(scored, id_column="txn_id")
    metrics = evaluate_file(model, new_path, "is_fraud")
    out.print(
        f"against the planted labels: AUCROC {metrics['aucroc']:.3f}, AUCPR {metrics['aucpr']:.3f}, "
        f"alert precision {metrics['alert_precision']:.2f}, recall {metrics['alert_recall']:.2f} "
        f"({metrics['alerts']} alerts)"
    )
    out.print("segments: none yet (segment = -1); UMAP + HDBSCAN segmentation is not part of this bundle")

    # the loop: analysts review the history's top alerts, chargebacks report fraud the alerts missed, and
    # those labels fine-tune a new version
    labels_path = out_dir / "labels.csv"
    history = pl.read_parquet(history_path).pipe(model.score).sort("score", descending=True)
    reviewed = history.head(review)
    missed = history.slice(review).filter(pl.col("is_fraud") == 1).sample(fraction=0.3, seed=0)
    labelled = pl.concat([reviewed, missed])
    pl.DataFrame(
        {
            "id": labelled["txn_id"],
            "label": labelled["is_fraud"].replace_strict({1: "anomaly", 0: "normal"}, return_dtype=pl.String),
            "category": ["alert review"] * reviewed.height + ["chargeback"] * missed.height,
        }
    ).write_csv(labels_path)
    confirmed = int(reviewed["is_fraud"].sum())
    out.print(
        f"analysts review the history's top {review} alerts ({confirmed} confirmed, {review - confirmed} dismissed) "
        f"and chargebacks report {missed.height} frauds the alerts missed -> {labels_path}"
    )
    try:
        with _steps() as step:
            tuned, report, registry_dir = finetune_file(bundle, history_path, labels_path, on_step=step)
    except MissingDependencyError as exc:
        out.print(f"fine-tuning skipped: {exc}")
    else:
        after = evaluate_file(Model.load(registry_dir), new_path, "is_fraud")
        verdict = "promoted" if report["promote"] else "not promoted"
        out.print(
            f"fine-tuned {tuned.version} ({report['supervised']['mode']}): {verdict} ({report['reason']}); "
            f"on the new records AUCPR {metrics['aucpr']:.3f} -> {after['aucpr']:.3f}, "
            f"alert precision {metrics['alert_precision']:.2f} -> {after['alert_precision']:.2f}"
        )
    out.print(
        f"outputs: registry [bold]{bundle}[/], scored records [bold]{scored_path}[/] "
        f"({summary.rows:,} rows), inputs {history_path}, {new_path}, {labels_path}"
    )
    out.print(
        f"next: segscope inspect {bundle}  |  segscope evaluate {new_path} --bundle {bundle} --label-column is_fraud"
    )


def _show_warning(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
    err.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)


def main() -> None:
    """Entry point: one-line errors, non-zero exit codes, no tracebacks for expected problems; segscope's
    warnings as one ``warning:`` line each."""
    import warnings

    from segscope.exceptions import SegscopeWarning

    with warnings.catch_warnings():
        warnings.simplefilter("always", SegscopeWarning)
        warnings.showwarning = _show_warning
        try:
            app()
        except SegscopeError as exc:
            err.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
            sys.exit(2)
        except KeyboardInterrupt:
            err.print("[yellow]interrupted[/]")
            sys.exit(130)


if __name__ == "__main__":
    main()
