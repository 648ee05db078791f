"""Commands on files and bundles: ``fit``, ``score``, ``evaluate``, ``inspect``, ``report``, ``demo``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from segscope.cli._app import (
    BundleOpt,
    MapOpt,
    StoreOpt,
    TrustOpt,
    app,
    cells,
    check_drops,
    err,
    load_config,
    load_model,
    open_store,
    out,
    print_top_alerts,
    print_whole,
    row_progress,
    say,
    shown_store,
    steps,
)
from segscope.exceptions import ConfigError, SegscopeError

if TYPE_CHECKING:
    from segscope.model import Model

EngineOpt = Annotated[
    str,
    typer.Option(
        "--engine",
        help="local (Polars, this process) or spark (pip install 'segscope\\[spark]').",  # \[: not Rich markup
        case_sensitive=False,
    ),
]
MasterOpt = Annotated[
    str | None, typer.Option("--master", help="Spark master URL (default local[*], or what spark-submit set).")
]


@app.command()
def fit(
    data: Annotated[str, typer.Argument(help="History file (.parquet, .csv, .ndjson); with Spark, any path it reads.")],
    bundle: BundleOpt,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Config file (.toml or .yaml).")] = None,
    id_column: Annotated[str | None, typer.Option("--id-column", help="Column that identifies a record.")] = None,
    drop: Annotated[list[str] | None, typer.Option("--drop", help="Column to leave out (repeatable).")] = None,
    mapping: MapOpt = None,
    previous: Annotated[
        Path | None, typer.Option("--previous", help="Last bundle: segment ids keep their meaning across refits.")
    ] = None,
    engine: EngineOpt = "local",
    master: MasterOpt = None,
) -> None:
    """Fit the unsupervised layer on history and write a bundle."""
    from segscope.pipeline import Model, fit_file

    cfg = load_config(config, id_column, drop or [], mapping)
    check_drops(data, drop or [], set(cfg.columns))
    last = Model.load(previous) if previous is not None else None
    _check_engine(engine)
    with steps() as step:
        if engine == "spark":
            from segscope.spark import fit_path

            if previous is not None:
                raise ConfigError("--previous needs a local fit (--engine local) to keep segment ids across refits")
            model = fit_path(data, cfg, master=master, on_step=step)
        else:
            model = fit_file(data, cfg, on_step=step, previous=last)
        step(f"writing bundle {bundle}")
        model.save(bundle)
    dropped = model.dropped_columns
    err.print(
        Text.assemble(
            ("fitted", "green"),
            f" {model.version} on {model.training['fit_rows']:,} of {model.training['rows']:,} rows, "
            f"{model.n_features} features -> ",
            (str(bundle), "bold"),
        )
    )
    for name, why in dropped.items():
        err.print(Text.assemble("  ", ("dropped", "yellow"), f" {name}: {why}"))


@app.command()
def score(
    data: Annotated[str, typer.Argument(help="File to score (.parquet, .csv, .ndjson); Spark: any path it reads.")],
    bundle: BundleOpt,
    out_path: Annotated[
        str, typer.Option("--out", "-o", help="Output file; format by extension; '-' = NDJSON on stdout.")
    ],
    batch_size: Annotated[int, typer.Option(help="Rows per batch (memory bound).", min=1)] = 200_000,
    store: StoreOpt = None,
    trust_bundle: TrustOpt = False,
    engine: EngineOpt = "local",
    master: MasterOpt = None,
    partitions: Annotated[
        int | None, typer.Option("--partitions", help="Spark: repartition the input into N parts.", min=1)
    ] = None,
    state_dir: Annotated[
        Path | None,
        typer.Option(
            "--state-dir",
            help="Entities continue from the state the previous file left here, and leave "
            "theirs for the next (files scored one after another decide as one file).",
        ),
    ] = None,
) -> None:
    """Score a file: input columns + score, anomaly_score, supervised_score, is_alert, segment,
    segment_confidence, reasons, model_version. With --engine spark: a Parquet or CSV file or folder into a
    Parquet folder."""
    from segscope._io import detect_format
    from segscope.pipeline import score_file
    from segscope.sources.files import estimate_rows

    if _check_engine(engine) == "spark":
        if store is not None or state_dir is not None:
            raise ConfigError("--store and --state-dir are not supported with --engine spark; score locally")
        _score_on_spark(data, bundle, out_path, master, partitions, trust_bundle)
        return
    model = load_model(bundle, trust_bundle)
    label_store = open_store(store, create=True) if store is not None else None
    total = estimate_rows(data)  # a text file is read once, by the run: its size says roughly how many rows
    written = {"rows": 0}

    def advance(n: int) -> None:
        written["rows"] += n
        if total is not None and written["rows"] > total:
            progress.update(task, total=written["rows"])
        progress.advance(task, n)

    with row_progress(total, f"scoring {Path(data).name}", estimated=detect_format(data) != "parquet") as progress:
        task = progress.add_task("score", total=total)
        try:
            summary = score_file(
                model, data, out_path, batch_size=batch_size, on_batch=advance, store=label_store, state_dir=state_dir
            )
        except SegscopeError as exc:
            if out_path == "-" and written["rows"]:  # stdout streams: say what a reader already received
                raise type(exc)(f"{exc} ({written['rows']:,} scored rows were already written to stdout)") from None
            raise
        finally:
            if label_store is not None:
                label_store.close()
    rate = summary.rows / summary.seconds if summary.seconds else 0.0
    err.print(
        Text.assemble(
            ("scored", "green"),
            f" {summary.rows:,} rows ({rate:,.0f} rows/s), {summary.alerts:,} alerts, model {model.version} -> ",
            (str(summary.out), "bold"),
        )
    )
    if store is not None:
        err.print(f"  {summary.stored:,} alerts and queue candidates kept in the label store {shown_store(store)}")
    if summary.adapted is not None:
        err.print(f"  {summary.adapted}")
    if state_dir is not None:
        err.print(f"  the entities' state for the next file -> {state_dir}")


def _check_engine(engine: str) -> str:
    if engine not in ("local", "spark"):
        raise ConfigError(f"--engine must be local or spark; got {engine!r}")
    return engine


def _score_on_spark(
    data: str, bundle: Path, out_path: str, master: str | None, partitions: int | None, trusted: bool
) -> None:
    from segscope.spark import score_path

    if out_path == "-":
        raise ConfigError("--engine spark writes a Parquet folder; give --out a folder path, not '-'")
    summary = score_path(
        bundle, data, out_path, master=master, partitions=partitions, trusted=trusted, on_progress=_say_line
    )
    rate = summary["rows"] / summary["seconds"] if summary["seconds"] else 0.0
    err.print(
        Text.assemble(
            ("scored", "green"),
            f" {summary['rows']:,} rows on Spark ({rate:,.0f} rows/s), {summary['alerts']:,} alerts, "
            f"model {summary['version']} -> ",
            (out_path, "bold"),
            " (Parquet folder)",
        )
    )


def _say_line(line: str) -> None:
    """A progress line built elsewhere (Spark's stages), printed as it is."""
    err.print(Text(line), highlight=False)


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

    model = load_model(bundle, trust_bundle)
    metrics = evaluate_file(model, data, label_column)
    if as_json:
        out.print_json(json.dumps(metrics))
        return
    table = Table(title=Text(f"{data.name} vs '{label_column}' (model {model.version})"))
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        table.add_row(*cells(key, f"{value:.4f}" if isinstance(value, float) else f"{value:,}"))
    out.print(table)


@app.command()
def inspect(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole manifest as JSON.")] = False,
    state_dir: Annotated[
        Path | None,
        typer.Option("--state-dir", help="A stream's entity checkpoints: what its entities and adapt hold now."),
    ] = None,
    trust_bundle: TrustOpt = False,
) -> None:
    """Show what a bundle holds (verifies its checksums)."""
    model = load_model(bundle, trust_bundle)
    if state_dir is not None:
        from segscope.features.entity import ladder_lines
        from segscope.file_state import load_carried, state_sets
        from segscope.stream.checkpoint import newest_state
        from segscope.unsupervised.adapt import adapt_line

        sets = state_sets(state_dir)  # a score/watch --state-dir folder, else a stream's checkpoints
        carried = load_carried(state_dir, model) if sets else None
        entities = carried if carried is not None else newest_state(state_dir, model)
        where = f"in set {sets[-1].name}" if carried is not None else "at the newest checkpoints"
        out.print(f"state-dir {state_dir}: {entities.entities:,} entities {where}")
        for line in filter(None, [adapt_line(model.config, entities), *ladder_lines(model.config.entities, entities)]):
            out.print(f"  {line}")
        return
    manifest = model.bundle_manifest()
    if as_json:
        out.print_json(json.dumps(manifest))
        return
    print_whole(lambda: _describe(bundle, model, manifest), f"bundle {bundle}: manifest.json")


def _describe(bundle: Path, model: Model, manifest: dict[str, Any]) -> None:
    from segscope import registry

    train = manifest["training"]

    if registry.is_registry(bundle):
        current = registry.current_version(bundle)
        listed: list[str | tuple[str, str]] = []
        for i, version in enumerate(registry.list_versions(bundle)):
            listed += ([", "] if i else []) + ([(version, "bold"), " (current)"] if version == current else [version])
        out.print(Text.assemble(("registry", "bold"), f" {bundle}: versions ", *listed))
    out.print(Text.assemble(("bundle", "bold"), f" {bundle}  (format {manifest['format_version']}, checksums OK)"))
    out.print(f"model version  {manifest['model_version']}   created {manifest['created_at']}")
    out.print(", ".join(f"{k} {manifest['versions'][k]}" for k in ("segscope", "python", "pyod", "polars")))
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
    for column in model.describe_columns():
        table.add_row(*cells(*column))
    out.print(table)
    for name, why in manifest["dropped_columns"].items():
        out.print(f"  dropped {name}: {why}")
    out.print("components:")
    for comp in manifest["components"]:
        detail = comp.get("params") or comp.get("note") or comp.get("new_levels") or ""
        out.print(f"  {comp['role']:<10} {comp['name'] or '-':<14} {detail}")
        if comp.get("adapt"):
            out.print(f"  {'':<10} {'':<14} {comp['adapt']}")
        for name, learnt in (comp.get("machine_states") or {}).items():
            out.print(f"  {'':<10} {'':<14} {name}: {learnt}")
    out.print(f"alert policy   {manifest['policy']}")
    segmenter = next((c for c in manifest["components"] if c["role"] == "segmenter" and c.get("name")), None)
    if segmenter is not None:
        agreement = segmenter["agreement_with_fit_labels"]
        held = agreement["held_out"]
        cards = Table(
            title=Text(
                f"{segmenter['segments']} segments (assignment agrees with the fit-time labels on "
                f"{agreement['fit_sample']:.1%} of the sample"
                + (f", {held:.1%} held out)" if held is not None else ")")
            )
        )
        for col in ("segment", "size", "share", "anomaly rate", "what sets it apart (effect size: typical vs overall)"):
            cards.add_column(col)
        from segscope.unsupervised.profiles import card_view

        for view in map(card_view, segmenter["profiles"]):
            apart = "; ".join(f"{f} {e:+.1f} ({typ} vs {overall})" for f, e, typ, overall in view.distinguishing[:3])
            rate = "-" if view.anomaly_rate is None else f"{view.anomaly_rate:.1%}"
            cards.add_row(
                *cells(
                    "noise" if view.segment < 0 else view.segment, f"{view.size:,}", f"{view.share:.1%}", rate, apart
                )
            )
        out.print(cards)
    if manifest.get("label_snapshot"):
        out.print(f"labels         {shown_store(str(manifest['label_snapshot']))}")
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
    model = load_model(bundle, trust_bundle)
    with steps() as step:
        report_data = None
        if data is not None:
            from segscope.labels.parse import load_labels

            step(f"scoring {data.name}")
            label_frame = load_labels(labels) if labels is not None else None
            report_data = load_report_data(
                model, data, label_column=label_column, labels=label_frame, max_rows=max_rows
            )
        step("drawing the report")
        path = write_report(model, out_path, report_data, map_rows=map_rows)
    size = path.stat().st_size / 2**20
    err.print(say("green", "wrote", f" {path} ({size:.1f} MiB, self-contained: open it in any browser)"))


@app.command()
def demo(
    out_dir: Annotated[Path, typer.Option("--out-dir", help="Where the demo writes its files.")] = Path(
        "segscope-demo"
    ),
    rows: Annotated[int, typer.Option(help="About how many history payments to generate.", min=1000)] = 50_000,
    review: Annotated[int, typer.Option(help="How many queued records the simulated analysts label.", min=1)] = 100,
) -> None:
    """The whole loop on generated card payments with the fraud pack: fit, score a stream, queue, labels,
    fine-tune, promote, report (no server, no external data)."""
    import polars as pl

    from segscope.config import load_config
    from segscope.demo import HISTORY_DAYS, LATER_DAYS, NEW_DAYS, generate, simulate_analysts
    from segscope.exceptions import MissingDependencyError
    from segscope.labels.store import LabelStore
    from segscope.metrics import evaluate_scores
    from segscope.pipeline import Model, evaluate_file, finetune_file, fit_file, score_file
    from segscope.report import load_report_data, write_report

    with steps() as step:
        files = generate(out_dir, rows)
        history, new = pl.read_parquet(files.history), pl.read_parquet(files.new)
        step(
            f"generated {history.height:,} payments of {history['card_id'].n_unique():,} cards over {HISTORY_DAYS} "
            f"days and {new.height:,} in the {NEW_DAYS} days after ({int(new['is_fraud'].sum())} fraudulent: "
            "card-testing bursts, new countries, amounts off the card's habit)"
        )
        model = fit_file(files.history, load_config("fraud"), on_step=step)
        step(f"writing bundle {files.bundle} (fraud pack: {len(model.entity_features)} "
             "per-card features, and each card's state at the end of the history)")  # fmt: skip
        model.save(files.bundle)
    store = LabelStore.open(files.store)
    try:
        with row_progress(new.height, "scoring new.parquet as a stream of 2,000-record batches") as progress:
            task = progress.add_task("score", total=new.height)
            summary = score_file(
                model, files.new, files.scored, batch_size=2_000, store=store,
                on_batch=lambda n: progress.advance(task, n),
            )  # fmt: skip
        print_top_alerts(pl.read_parquet(files.scored), id_column="txn_id")
        metrics = evaluate_file(model, files.new, "is_fraud")
        out.print(
            f"against the planted labels: AUCROC {metrics['aucroc']:.3f}, AUCPR {metrics['aucpr']:.3f}, "
            f"alert precision {metrics['alert_precision']:.2f}, recall {metrics['alert_recall']:.2f} "
            f"({metrics['alerts']} alerts); {summary.stored:,} records kept in the label store {files.store}"
        )
        simulated = simulate_analysts(store, pl.read_parquet(files.scored), files.labels, review=review)
    finally:
        store.close()
    out.print(
        f"analysts review the queue's first {simulated.reviewed} records ({simulated.confirmed} confirmed, "
        f"{simulated.reviewed - simulated.confirmed} dismissed) and chargebacks report {simulated.chargebacks} "
        f"frauds nobody reviewed -> {files.labels}"
    )
    current = model
    try:
        with steps() as step:
            tuned, report, registry_dir = finetune_file(files.bundle, files.scored, files.labels, on_step=step)
    except MissingDependencyError as exc:
        out.print(f"fine-tuning skipped: {exc}")
    else:
        current = Model.load(registry_dir)
        later = pl.read_parquet(files.later)
        judged = []  # the week after, which nobody has labelled; scored after the new days, for the cards' state
        for version in (model, current):
            scored = version.score(pl.concat([new, later]), state=version.new_state()).tail(later.height)
            truth, score, alerts = (scored[c].to_numpy() for c in ("is_fraud", "score", "is_alert"))
            judged.append(evaluate_scores(truth, score, alerts))
        before, after = judged
        verdict = "promoted" if report["promote"] else "not promoted"
        out.print(
            f"fine-tuned {tuned.version} ({report['supervised']['mode']}): {verdict} ({report['reason']}); on the "
            f"{LATER_DAYS} days after ({before['rows']:,} records nobody labelled) AUCPR {before['aucpr']:.3f} -> "
            f"{after['aucpr']:.3f}, alert precision {before['alert_precision']:.2f} -> {after['alert_precision']:.2f}, "
            f"recall {before['alert_recall']:.2f} -> {after['alert_recall']:.2f} ({before['alerts']:,} -> "
            f"{after['alerts']:,} alerts: the new version alerts as often as the one before)"
        )
    with steps() as step:
        step("drawing the report")
        data = load_report_data(current, files.scored, label_column="is_fraud", max_rows=20_000)
        write_report(current, files.report, data, map_rows=5_000)
    out.print(
        Text.assemble(
            "outputs: registry ",
            (str(files.bundle), "bold"),
            ", scored records ",
            (str(files.scored), "bold"),
            f" ({summary.rows:,} rows), label store {files.store}, report ",
            (str(files.report), "bold"),
        )
    )
    out.print(
        f"next: segscope serve --store {files.store}  |  segscope inspect {files.bundle}  |  "
        f"segscope evaluate {files.new} --bundle {files.bundle} --label-column is_fraud"
    )
