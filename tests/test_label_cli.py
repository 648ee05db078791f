"""The loop from the command line: score --store, label queue|add|import|export, finetune --store."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from segscope import registry as reg
from segscope.labels import LabelStore


def test_the_loop_through_the_store(run_cli, bundle: Path, files: Path, tmp_path: Path) -> None:
    store = tmp_path / "labels.db"
    scored = run_cli(
        "score", files / "new.parquet", "--bundle", bundle, "--out", tmp_path / "s.parquet", "--store", store
    )
    assert scored.code == 0, scored.err
    assert "kept in the label store" in scored.err
    with LabelStore.open(store) as opened:
        kept = opened.record_count()
    alerts = pl.read_parquet(tmp_path / "s.parquet").filter("is_alert")
    assert kept >= alerts.height > 0  # every alert is kept (plus queue candidates)

    queue = run_cli("label", "queue", "--store", store, "-n", "5", "--json")
    assert queue.code == 0, queue.err
    items = [json.loads(line) for line in queue.out.strip().splitlines()]
    assert len(items) == 5 and {"id", "score", "why", "reasons"} <= set(items[0])

    added = run_cli(
        "label", "add", "--store", store, items[0]["id"], "anomaly", "--category", "card testing", "--analyst", "ann"
    )
    assert added.code == 0 and "labelled" in added.err
    unknown = run_cli("label", "add", "--store", store, "no-such-id", "anomaly")
    assert unknown.code == 2 and "unknown record id" in unknown.err and "Traceback" not in unknown.err
    bad = run_cli("label", "add", "--store", store, items[1]["id"], "perhaps")
    assert bad.code == 2 and "use 'anomaly' or 'normal'" in bad.err

    # import the truth for the alerts (a chargeback file), export, and fine-tune from the store
    truth = pl.read_parquet(files / "new.parquet").select(
        pl.col("txn_id").alias("id"), pl.col("is_fraud").alias("label")
    )
    with LabelStore.open(store) as opened:
        known = set(opened.records(truth["id"].to_list()))
    to_import = truth.filter(pl.col("id").is_in(sorted(known)))
    to_import.write_csv(tmp_path / "chargebacks.csv")
    imported = run_cli("label", "import", "--store", store, tmp_path / "chargebacks.csv", "--analyst", "ops")
    assert imported.code == 0, imported.err
    assert f"imported {to_import.height:,} labels" in imported.err
    refused = pl.DataFrame({"id": ["nope"], "label": ["anomaly"]})
    refused.write_csv(tmp_path / "refused.csv")
    assert run_cli("label", "import", "--store", store, tmp_path / "refused.csv").code == 2

    assert run_cli("label", "export", "--store", store, "--out", tmp_path / "labels.parquet").code == 0
    exported = pl.read_parquet(tmp_path / "labels.parquet")
    assert exported.height == to_import.height  # current label per record
    assert {"id", "label", "category", "analyst", "note", "source", "created_at"} == set(exported.columns)
    assert run_cli("label", "export", "--store", store, "--out", tmp_path / "h.csv", "--history").code == 0
    assert pl.read_csv(tmp_path / "h.csv").height == to_import.height + 1  # ann's label stays in the history

    registry = tmp_path / "registry"
    run_cli("fit", files / "history.parquet", "--bundle", registry, "--id-column", "txn_id", "--drop", "is_fraud")
    history = tmp_path / "all.parquet"
    pl.concat([pl.read_parquet(files / "history.parquet"), pl.read_parquet(files / "new.parquet")]).write_parquet(
        history
    )
    tuned = run_cli("finetune", "--bundle", registry, "--store", store, "--data", history)
    assert tuned.code == 0, tuned.err
    manifests = [
        json.loads((registry / "versions" / v / "manifest.json").read_text()) for v in reg.list_versions(registry)
    ]
    tuned_versions = [m for m in manifests if m.get("label_snapshot")]  # names sort by second: find it by content
    assert len(tuned_versions) == 1
    assert "label store" in json.dumps(tuned_versions[0]["label_snapshot"])
    both = run_cli(
        "finetune", "--bundle", registry, "--store", store, "--labels", tmp_path / "labels.parquet", "--data", history
    )
    assert both.code == 2 and "one of them" in both.err
