"""The long-running services: ``serve`` (the analyst page and its JSON API), ``learn`` (fine-tunes when analysts
have given enough new labels, :mod:`segscope.stream.learn`) and ``watch`` (a folder's new files scored once each,
:mod:`segscope.watch`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from segscope.cli._app import (
    BudgetOpt,
    BundleOpt,
    MixOpt,
    StoreOpt,
    StoreReq,
    TrustOpt,
    app,
    err,
    load_model,
    open_store,
    say,
    shown_store,
)


@app.command()
def serve(
    store: StoreReq,
    bundle: Annotated[
        Path | None, typer.Option("--bundle", "-b", help="Re-score stored records with this bundle's current version.")
    ] = None,
    host: Annotated[str, typer.Option("--host", help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port.", min=1, max=65535)] = 8000,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar="SEGSCOPE_TOKEN",
            help="Required when not on loopback. Scripts send Authorization: Bearer TOKEN; a browser opens "
            "/?token=TOKEN once (a cookie). The API never reads it from the URL.",
        ),
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
    from segscope.labels.queue import parse_mix

    uvicorn = require("uvicorn", extra="web", feature="segscope serve")
    from segscope.web import LOOPBACK_HOSTS, check_token, create_app

    check_token(token)
    if host not in LOOPBACK_HOSTS and not token:
        raise typer.BadParameter(f"binding to {host} exposes the labels: pass --token (or set SEGSCOPE_TOKEN)")
    hosts = [*(allowed_host or [])]
    if host in ("0.0.0.0", "::"):  # every interface: the names this machine is reached by
        hosts += [socket.gethostname(), socket.getfqdn()]
    elif host not in LOOPBACK_HOSTS:
        hosts.append(host)
    queue_mix = parse_mix(mix, daily_budget)
    label_store = open_store(store)
    if bundle is not None:
        model = load_model(bundle, trust_bundle)
        from segscope.pipeline import rescore_store

        updated = rescore_store(label_store, model)
        err.print(f"model {model.version}: {updated:,} stored records re-scored")
    err.print(say("green", "serving", f" http://{host}:{port}/  (label store {shown_store(store)}; Ctrl-C stops)"))
    app_ = create_app(label_store, token=token, mix=queue_mix, allowed_hosts=hosts)
    uvicorn.run(app_, host=host, port=port, log_level="warning")


@app.command()
def learn(
    bundle: Annotated[
        Path, typer.Option("--bundle", "-b", help="The registry a stream scores from (segscope stream --bundle).")
    ],
    store: StoreReq,
    min_labels: Annotated[int, typer.Option("--min-labels", help="New labels that start a fine-tune.", min=1)] = 50,
    every: Annotated[float, typer.Option("--every", help="Seconds between two looks at the label store.", min=0.1)] = (
        30.0
    ),
    max_wait: Annotated[
        float | None,
        typer.Option(
            "--max-wait",
            help="Fine-tune on fewer than --min-labels new labels once the first has waited this many seconds "
            "(e.g. 86400: at least daily while labels trickle in; default: wait for --min-labels).",
        ),
    ] = None,
    idle_exit: Annotated[
        float | None,
        typer.Option("--idle-exit", help="Exit after this many seconds without a new label (default: run on)."),
    ] = None,
    learner: Annotated[str, typer.Option("--learner", help="xgboost or torch.")] = "xgboost",
    folds: Annotated[
        int | None, typer.Option(help="Folds of the promotion gate (default: as `segscope finetune`).", min=2)
    ] = None,
    init: Annotated[
        bool, typer.Option("--init", help="Make a plain bundle a registry in place (its version the first).")
    ] = False,
    rescore: Annotated[
        bool,
        typer.Option(help="After a promotion, re-score the stored records with the new version (the queue's order)."),
    ] = True,
    trust_bundle: TrustOpt = False,
) -> None:
    """Fine-tune when analysts have given --min-labels new labels (page, API, `label add`, labels topic), on the
    store's records; the gate promotes or refuses (one line each) and a stream on the registry hot-swaps.
    SIGTERM exits 0 (a fine-tune in progress is abandoned before anything is written). A separate process, not a
    thread of `stream`: a fine-tune's CPU, memory or crash never touches the scoring."""
    from segscope import registry
    from segscope.pipeline import finetune_file
    from segscope.stream.learn import LearnLoop, LearnOptions

    if init and not registry.is_registry(bundle) and bundle.is_dir():
        open_store(store).close()  # a store that is not there: refused before the bundle is changed
        registry.ensure_registry(bundle)
        err.print(say("green", "registry", f" {bundle}: version {registry.current_version(bundle)} is current"))
    options = LearnOptions(
        registry=bundle,
        store=store,
        min_labels=min_labels,
        every=every,
        max_wait=max_wait,
        idle_exit=idle_exit,
        learner=learner,
        folds=folds,
        trusted=trust_bundle,
        rescore=rescore,
    )
    loop = LearnLoop(options, finetune_file, on_line=lambda line: err.print(Text(line), highlight=False))
    loop.stop_on_signals()
    stats = loop.run()
    promoted = f": {', '.join(stats.promoted)}" if stats.promoted else ""
    err.print(
        say(
            "green",
            "learn stopped",
            f": {stats.finetunes + stats.failed:,} fine-tunes, {len(stats.promoted):,} promoted{promoted}, "
            f"{stats.refused:,} refused, {stats.failed:,} failed",
        )
    )


@app.command()
def watch(
    folder: Annotated[Path, typer.Argument(help="Folder to watch for files (.parquet, .csv, .ndjson).")],
    bundle: BundleOpt,
    out_dir: Annotated[Path, typer.Option("--out-dir", help="Folder for the outputs and the ledger.")],
    out_format: Annotated[str, typer.Option("--format", help="Output format: parquet, csv or ndjson.")] = "parquet",
    every: Annotated[float, typer.Option("--every", help="Seconds between looks at the folder.", min=0.05)] = 2.0,
    settle: Annotated[
        float, typer.Option("--settle", help="A file is taken once unchanged this many seconds.", min=0.0)
    ] = 2.0,
    once: Annotated[bool, typer.Option("--once", help="Score what is there now and exit (cron).")] = False,
    idle_exit: Annotated[
        float | None, typer.Option("--idle-exit", help="Exit after this many seconds without a new file.", min=0.0)
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Rows per batch (memory bound).", min=1)] = 200_000,
    store: StoreOpt = None,
    trust_bundle: TrustOpt = False,
    state_dir: Annotated[
        Path | None,
        typer.Option("--state-dir", help="Each file continues the entities' state the one before left here."),
    ] = None,
) -> None:
    """Score every file that lands in FOLDER, once, into --out-dir/<name>.scored.<format>; a ledger there
    (.segscope-watch.json) keeps what was done across restarts, and a file that changes is scored again."""
    import logging
    import signal

    from segscope.watch import FolderWatch, Outcome, ledger_summary

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a stop: the file being scored is abandoned cleanly
    label_store = open_store(store, create=True) if store is not None else None

    def said(name: str, outcome: Outcome) -> None:
        shown = name if name.isprintable() else ascii(name)  # a name cannot forge a log line
        if outcome.status == "scored":
            target = out_dir / (outcome.out or "")
            err.print(say("green", "scored", f" {shown}: {outcome.rows:,} rows, {outcome.alerts:,} alerts -> {target}"))
        else:
            err.print(say("red", "failed", f" {shown}: {outcome.error}"), highlight=False, soft_wrap=True)

    job = FolderWatch(
        folder, bundle, out_dir, trusted=trust_bundle, out_format=out_format, settle=settle,
        batch_size=batch_size, store=label_store, state_dir=state_dir,
    )  # fmt: skip
    try:
        did = job.run(every=every, once=once, idle_exit=idle_exit, on_file=said)
    finally:
        if label_store is not None:
            label_store.close()
    counts = ledger_summary(did)
    err.print(f"{counts['scored']} file(s) scored ({counts['rows']:,} rows, {counts['alerts']:,} alerts), "
              f"{counts['failed']} failed")  # fmt: skip
    if job.waiting:
        err.print(f"  {len(job.waiting)} file(s) changed in the last {settle:g} s, not taken yet: run again")
    if counts["failed"]:
        raise typer.Exit(1)
