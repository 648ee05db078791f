"""Commands of the loop: ``finetune``, ``promote``, ``rollback`` and ``stream``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.text import Text

from segscope.cli._app import (
    BundleOpt,
    StoreOpt,
    TrustOpt,
    app,
    err,
    say,
    steps,
    text_column,
)
from segscope.exceptions import BundleError
from segscope.supervised.promotion import GATE_FOLDS


@app.command()
def finetune(
    bundle: BundleOpt,
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            help="History holding the labelled (and unlabelled) records; with --store as well, added to the store's "
            "records (the file's values win for the same id).",
        ),
    ] = None,
    labels: Annotated[
        Path | None, typer.Option("--labels", help="Labels file: id,label[,category] (.parquet or .csv).")
    ] = None,
    store: Annotated[
        str | None,
        typer.Option(
            "--store",
            help="Label store: its current labels, and its records (stored input values) as training data.",
        ),
    ] = None,
    learner: Annotated[str, typer.Option("--learner", help="xgboost or torch.")] = "xgboost",
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Registry for the new version (default: the bundle, as a registry).")
    ] = None,
    folds: Annotated[
        int,
        typer.Option(
            help="Folds of the promotion gate: each labelled record is predicted by a candidate that did not see it "
            "(blocks of time when the data has an event time).",
        ),
    ] = GATE_FOLDS,
    metric: Annotated[str, typer.Option(help="Promotion metric: aucpr or aucroc.")] = "aucpr",
    trust_bundle: TrustOpt = False,
) -> None:
    """Fine-tune a new version on analyst labels; promote it only if it beats the current one on held-out labels."""
    from segscope.pipeline import finetune_file
    from segscope.registry import current_version
    from segscope.supervised.learners import LEARNERS

    if learner not in LEARNERS:
        raise typer.BadParameter(f"--learner must be one of {list(LEARNERS)}; got {learner!r}")
    if metric not in ("aucpr", "aucroc"):
        raise typer.BadParameter(f"--metric must be aucpr or aucroc; got {metric!r}")
    if (labels is None) == (store is None):
        raise typer.BadParameter("give the labels as --labels FILE or --store URL (one of them)")
    if data is None and store is None:
        raise typer.BadParameter("--labels needs --data, the history holding the labelled records")
    with (
        steps() as step,
        Progress(
            text_column(),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
            transient=True,
            disable=not err.is_interactive,  # a log gets no bars (and no blank line where they stopped)
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
            labels,
            store=store,
            learner=learner,
            out=out_dir,
            folds=folds,
            metric=metric,
            trusted=trust_bundle,
            on_step=step,
            on_progress=epoch,
        )
    sup = report["supervised"]
    oof = sup.get("out_of_fold_aucpr", {})
    chosen = f"scores with {sup['mode']}" + (f", {sup['blend_by']}" if "blend_by" in sup else "")
    if oof:
        chosen += " (out-of-fold AUCPR " + ", ".join(f"{k} {v:.3f}" for k, v in oof.items()) + ")"
    if "companion" in sup:  # averaged in log-odds with a plain XGBoost (what the gate judges)
        companion = sup["companion"]
        chosen += f", averaged with a plain XGBoost at weight {companion['weight']:g}"
        if "out_of_fold_aucpr" in companion:
            chosen += f" (its out-of-fold AUCPR {companion['out_of_fold_aucpr']:.3f})"
    err.print(
        say(
            "green",
            "fine-tuned",
            f" {candidate.version} ({sup['learner']}, {sup['labelled_anomalies']} labelled anomalies) from "
            f"{candidate.parent_version}; {chosen}",
        )
    )
    err.print(Text(f"  trained on {_training_data(report.get('training_data') or {})}"))
    if "alert_policy" in report:  # a rate's threshold keeps the current version's alert count
        err.print(Text(f"  alert policy {report['alert_policy']}"))
    err.print(
        f"  gate: {report['split']}; {report['held_out_labelled_anomalies']} labelled anomalies predicted out of fold"
    )
    if "candidate" in report:
        cur, new = report["current"], report["candidate"]
        err.print(f"  current   AUCPR {cur['aucpr']:.4f}  AUCROC {cur['aucroc']:.4f}")
        err.print(
            f"  candidate AUCPR {new['aucpr']:.4f}  AUCROC {new['aucroc']:.4f}  "
            f"(Brier {report['calibration']['brier']:.4f}, ECE {report['calibration']['ece']:.4f})"
        )
    verdict = ("promoted", "green") if report["promote"] else ("not promoted", "yellow")
    err.print(
        Text.assemble(
            verdict,
            f": {report['reason']} -> registry ",
            (str(target), "bold"),
            f" (current: {current_version(target)})",
        )
    )


def _training_data(described: dict[str, Any]) -> str:
    parts = []
    if "file" in described:
        parts.append(f"{described['file']} ({described['file_records']:,} records)")
    if "store_records" in described:
        both, read = described.get("in_both", 0), described["store_records"]
        held = described.get("store_held", read)
        sampled = f"{read:,} of {held:,} label store records (the labelled ones, a sample of the rest)"
        parts.append(
            (sampled if held > read else f"{read:,} label store records")
            + (f" ({both:,} also in the file: its values used)" if both else "")
        )
    return " + ".join(parts) or "?"


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
    err.print(say("green", "current", f" version of {registry_dir} is now {target}"))


@app.command()
def rollback(registry_dir: Annotated[Path, typer.Argument(help="Registry folder.")]) -> None:
    """Go back to the version that was current before the last promotion."""
    from segscope import registry

    _require_registry(registry_dir)
    now, earlier = registry.rollback(registry_dir)
    err.print(say("green", "rolled back", f" {registry_dir} from {now} to {earlier}"))


def _require_registry(path: Path) -> None:
    from segscope import registry

    if not registry.is_registry(path):
        raise BundleError(f"{path} is not a registry (no CURRENT file); `segscope finetune` creates one")


@app.command()
def stream(
    bundle: BundleOpt,
    in_topic: Annotated[str, typer.Option("--in-topic", help="Topic of records to score (JSON, or see --format).")],
    out_topic: Annotated[str, typer.Option("--out-topic", help="Topic for every scored record.")],
    bootstrap: Annotated[
        str | None,
        typer.Option("--bootstrap", help="Kafka bootstrap address(es), HOST:PORT[,HOST:PORT] (or bootstrap.servers)."),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="A config file (or pack) whose kafka section the clients use (TLS, SASL and client properties) and "
            "whose messages section says how messages are written (Avro/Protobuf, the schema registry); the model's "
            "settings come from the bundle.",
        ),
    ] = None,
    kafka_option: Annotated[
        list[str] | None,
        typer.Option(
            "--kafka-option",
            help="A Kafka client property KEY=VALUE (repeatable; consumer.KEY or producer.KEY for one client), over "
            "the config's; a secret as ${env:NAME} or ${file:PATH}, never the value itself.",
        ),
    ] = None,
    connect_timeout: Annotated[
        float | None,
        typer.Option(
            "--connect-timeout", help="Seconds to wait for the cluster at start before one error line (default 30)."
        ),
    ] = None,
    alerts_topic: Annotated[str | None, typer.Option("--alerts-topic", help="Topic for alerts too.")] = None,
    dlq_topic: Annotated[
        str | None, typer.Option("--dlq-topic", help="Dead-letter topic (default: <in-topic>.dlq).")
    ] = None,
    group: Annotated[str, typer.Option("--group", help="Consumer group; run more processes to share partitions.")] = (
        "segscope"
    ),
    batch_size: Annotated[int, typer.Option(help="Records per micro-batch.", min=1)] = 20_000,
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
    exactly_once: Annotated[
        bool,
        typer.Option(
            "--exactly-once",
            help="Outputs and consumer offsets in one Kafka transaction per batch (read outputs with read_committed).",
        ),
    ] = False,
    transactional_id: Annotated[
        str | None,
        typer.Option("--transactional-id", help="With --exactly-once (default: group, topic, host and a free slot)."),
    ] = None,
    isolation: Annotated[
        str,
        typer.Option(
            "--isolation-level", help="read_committed (skip aborted and open transactions) or read_uncommitted."
        ),
    ] = "read_committed",
    client: Annotated[
        str, typer.Option("--client", help="confluent (librdkafka) or kafka-python (pure Python).")
    ] = "confluent",
    compression: Annotated[
        str, typer.Option("--compression", help="Codec of the outputs: none, gzip, snappy, lz4 or zstd.")
    ] = "lz4",
    state_dir: Annotated[
        Path | None,
        typer.Option(
            "--state-dir",
            help="Where per-entity state is checkpointed with the offsets (bundles with entities:); a restart, "
            "SIGKILL or rebalance resumes from it. Shared by the group's processes.",
        ),
    ] = None,
    message_format: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="How --in-topic's messages are written: json (default), avro or protobuf (the schema registry's "
            "wire format: give --schema-registry).",
        ),
    ] = None,
    out_format: Annotated[
        str | None,
        typer.Option(
            "--out-format",
            help="Scored records as json (default) or avro (Avro input: its schema plus the scored fields, "
            "registered under <out-topic>-value).",
        ),
    ] = None,
    schema_registry: Annotated[
        str | None, typer.Option("--schema-registry", help="Schema registry URL (Confluent's REST API).")
    ] = None,
    schema_registry_auth: Annotated[
        str | None,
        typer.Option(
            "--schema-registry-auth",
            help="The registry's basic auth, user:password, read from env:NAME or file:PATH (never the secret).",
        ),
    ] = None,
    trust_bundle: TrustOpt = False,
) -> None:
    """Score a Kafka topic continuously (at-least-once, or --exactly-once; SIGTERM drains, commits and exits 0)."""
    import logging

    from segscope._kafka_setup import KafkaSettings, QuietKafkaLogs
    from segscope._wire import wire_settings
    from segscope.config import load_config
    from segscope.stream import StreamOptions, run_stream

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("kafka").setLevel(logging.WARNING)  # the client's connection chatter
    for name in ("httpx", "httpx2"):  # each schema registry request, logged at INFO (confluent-kafka's HTTP client)
        logging.getLogger(name).setLevel(logging.WARNING)
    for handler in logging.getLogger().handlers:  # an outage's repeated lines once per 30 s; secrets masked
        if not any(isinstance(f, QuietKafkaLogs) for f in handler.filters):
            handler.addFilter(QuietKafkaLogs())
    loaded = load_config(config) if config is not None else None
    section = loaded.kafka.model_dump() if loaded is not None else None
    settings = KafkaSettings.build(section, kafka_option or [], connect_timeout)
    for name, value, allowed in (
        ("--isolation-level", isolation, ("read_committed", "read_uncommitted")),
        ("--client", client, ("confluent", "kafka-python")),
        ("--compression", compression, ("none", "gzip", "snappy", "lz4", "zstd")),
    ):
        if value not in allowed:
            raise typer.BadParameter(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
    options = StreamOptions(
        bundle=bundle,
        bootstrap=settings.bootstrap(bootstrap),
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
        exactly_once=exactly_once,
        transactional_id=transactional_id,
        read_committed=isolation == "read_committed",
        client=client,  # type: ignore[arg-type]
        compression=compression,
        state_dir=state_dir,
        wire=wire_settings(
            fmt=message_format,
            output=out_format,
            url=schema_registry,
            auth=schema_registry_auth,
            section=loaded.messages.model_dump() if loaded is not None else None,
        ),
        kafka=settings,
    )
    stats = run_stream(options, on_stats=lambda line: err.print(Text(line), highlight=False))
    lost = stats.recovered - stats.aborted  # times back to the last commit after outputs lost in an outage
    err.print(
        say(
            "green",
            "stream stopped",
            f": {stats.records_in:,} in, {stats.records_out:,} scored, {stats.alerts:,} alerts, "
            f"{stats.dead_letters:,} dead letters"
            + (f", {stats.refused:,} refused outputs (dead-lettered)" if stats.refused else "")
            + f", model versions {', '.join(stats.model_versions)}"
            + (f", {stats.aborted:,} transactions aborted and retried" if stats.aborted else "")
            + (f", {lost:,} times back to the last commit after lost outputs" if lost else "")
            + (f"; {stats.stored:,} kept in the label store, {stats.labels_in:,} labels consumed" if store else ""),
        )
    )
