"""`segscope learn`: the stream learns from analysts. Labels reach the label store (the page's JSON API here), the
learner fine-tunes on the store's records when enough are new, the gate promotes, and a stream scoring from the
registry hot-swaps: tested in-process (the loop's decisions, failures, lock and stop) and end to end through a
real Kafka broker, `segscope serve` and `segscope learn` in child processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from segscope import registry as reg
from segscope.config import SegscopeConfig
from segscope.exceptions import ConfigError
from segscope.labels import LabelStore, hide_password
from segscope.labels.parse import LabelIn
from segscope.metrics import evaluate_scores
from segscope.model import Model
from segscope.pipeline import finetune_file, score_file
from segscope.stream.learn import STATE, LearnLoop, LearnOptions, _learning_lock
from segscope.testing.data import make_transactions
from tests.kafka_helpers import (
    consume_all,
    count,
    create_topic,
    free_port,
    group_caught_up,
    produce,
    records,
    start_stream,
    terminate,
    wait_until,
)

CONFIG = SegscopeConfig().with_features(id_column="txn_id", drop=("is_fraud",))


def _by_channel(n: int, seed: int) -> pl.DataFrame:
    """Transactions whose fraud is one sales channel among four equally common ones: the unsupervised model
    cannot tell the channels apart (one rarity), labels can (as in test_finetune)."""
    frame = make_transactions(n, seed=seed).drop("is_fraud")
    channel = pl.Series("channel", ["web", "app", "phone", "branch"] * (n // 4))
    fraud = (channel == "phone") & pl.Series(np.random.default_rng(seed).random(n) < 0.3)
    return frame.with_columns(channel, fraud.cast(pl.Int64).alias("is_fraud"))


def _analysts(frame: pl.DataFrame, anomalies: int, normals: int, seed: int) -> list[dict[str, str]]:
    """Labels analysts give: ``anomalies`` confirmed frauds and ``normals`` cleared records of ``frame``."""
    fraud = frame.filter(pl.col("is_fraud") == 1).sample(anomalies, seed=seed)["txn_id"].to_list()
    fine = frame.filter(pl.col("is_fraud") == 0).sample(normals, seed=seed)["txn_id"].to_list()
    return [{"id": i, "label": "anomaly", "analyst": "ann"} for i in fraud] + [
        {"id": i, "label": "normal", "analyst": "bob"} for i in fine
    ]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Model, pl.DataFrame, Path]:
    """A model fitted on channel-fraud history, and a store holding 1,500 later records it scored."""
    root = tmp_path_factory.mktemp("learn")
    model = Model(CONFIG).fit(_by_channel(3000, seed=0))
    later = _by_channel(1500, seed=1)
    later.drop("is_fraud").write_parquet(root / "later.parquet")
    store = root / "labels.db"
    with LabelStore.open(store) as opened:
        score_file(model, root / "later.parquet", root / "scored.parquet", store=opened)
    return model, later, store


def _registry(model: Model, path: Path) -> Path:
    model.save(path)
    reg.ensure_registry(path)
    return path


def _copy_store(store: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "labels.db"
    copy.write_bytes(store.read_bytes())
    return copy


def _add(store: Path, labels: list[dict[str, str]]) -> None:
    with LabelStore.open(store) as opened:
        opened.add_labels([LabelIn(x["id"], x["label"], x["analyst"]) for x in labels], source="cli")


def test_fails_on_data_then_promotes_and_remembers_where_it_left_off(
    fitted: tuple[Model, pl.DataFrame, Path], tmp_path: Path
) -> None:
    model, later, stored = fitted
    path, store = _registry(model, tmp_path / "reg"), _copy_store(stored, tmp_path)
    _add(store, _analysts(later, 0, 30, seed=1))  # cleared records only: nothing to learn a fraud from
    lines: list[str] = []
    options = LearnOptions(registry=path, store=str(store), min_labels=20, every=0.1, idle_exit=1.0)
    stats = LearnLoop(options, finetune_file, on_line=lines.append).run()
    assert stats.failed == 1 and not stats.promoted and reg.current_version(path) == model.version
    failed = [line for line in lines if "failed" in line]
    assert len(failed) == 1 and "none is 'anomaly'" in failed[0] and "waiting for 20 more labels" in failed[0], lines
    assert "30 labels (0 anomalies, 30 normal)" in failed[0]
    assert json.loads((path / STATE).read_text())["failed"]

    lines.clear()  # a new learner on the same registry: the 30 labels above are not new any more
    _add(store, _analysts(later, 40, 10, seed=2))
    stats = LearnLoop(options, finetune_file, on_line=lines.append).run()
    assert len(stats.promoted) == 1, lines
    assert reg.current_version(path) == stats.promoted[0] != model.version
    promoted = [line for line in lines if "promoted version" in line]
    assert len(promoted) == 1 and "50 new" in promoted[0] and "80 labels (40 anomalies, 40 normal)" in promoted[0]
    assert f"(was {model.version})" in promoted[0] and "aucpr" in promoted[0].lower()
    assert "1,500 stored records re-scored with version" in lines[-2]  # the queue ranks by the new version
    with LabelStore.open(store) as opened:
        assert not list(opened.stale_records(stats.promoted[0]))
    assert lines[0].endswith("(50 so far), checking every 0.1 s")
    again = LearnLoop(options, finetune_file, on_line=lines.append).run()  # nothing new: no fine-tune
    assert again.finetunes == again.failed == 0


def test_the_loop_on_sqlite_and_postgresql(
    store_url: str, fitted: tuple[Model, pl.DataFrame, Path], tmp_path: Path
) -> None:
    """The whole turn against each store: records scored into it, labels, a fine-tune on its records, the
    promotion, every stored record re-scored by the new version, and where it left off."""
    model, later, _ = fitted
    path = _registry(model, tmp_path / "reg")
    later.drop("is_fraud").write_parquet(tmp_path / "later.parquet")
    with LabelStore.open(store_url) as opened:
        score_file(model, tmp_path / "later.parquet", tmp_path / "scored.parquet", store=opened)
        labels = _analysts(later, 40, 40, seed=3)
        opened.add_labels([LabelIn(x["id"], x["label"], x["analyst"]) for x in labels], source="api")
    lines: list[str] = []
    options = LearnOptions(registry=path, store=store_url, min_labels=50, every=0.1, idle_exit=1.0)
    stats = LearnLoop(options, finetune_file, on_line=lines.append).run()
    assert len(stats.promoted) == 1 and reg.current_version(path) == stats.promoted[0], lines
    assert any("80 labels (40 anomalies, 40 normal)" in line for line in lines), lines
    with LabelStore.open(store_url) as opened:
        assert not list(opened.stale_records(stats.promoted[0]))  # the queue ranks by the version that serves
        newest = opened.labels_after(0)[1]
    state = json.loads((path / STATE).read_text())
    assert state["label_id"] == newest and state["store"] == hide_password(store_url) and state["promoted"]


def test_a_trickle_of_labels_is_fine_tuned_on_after_max_wait(
    fitted: tuple[Model, pl.DataFrame, Path], tmp_path: Path
) -> None:
    """Fewer labels than --min-labels: without --max-wait the learner waits for more; with it, it fine-tunes on
    them once the first has waited that long, and says why."""
    model, later, stored = fitted
    path, store = _registry(model, tmp_path / "reg"), _copy_store(stored, tmp_path)
    _add(store, _analysts(later, 10, 30, seed=4))
    lines: list[str] = []
    options = LearnOptions(registry=path, store=str(store), min_labels=1000, every=0.1, idle_exit=2.0)
    assert LearnLoop(options, finetune_file, on_line=lines.append).run().finetunes == 0  # waits for 1,000
    assert not (path / STATE).exists()
    lines.clear()
    waiting = LearnOptions(registry=path, store=str(store), min_labels=1000, every=0.1, idle_exit=3.0, max_wait=1.0)
    started = time.monotonic()
    stats = LearnLoop(waiting, finetune_file, on_line=lines.append).run()
    assert stats.finetunes + stats.failed == 1, lines
    assert lines[0].endswith("after 1,000 new labels or 1 s after the first of fewer (40 so far), checking every 0.1 s")
    (turn,) = [line for line in lines if "fine-tuning version" in line]
    assert turn.startswith("learn: 40 new labels (the first waited 1 s), 40 labels (10 anomalies, 30 normal)")
    assert time.monotonic() - started > 1.0 and json.loads((path / STATE).read_text())["label_id"] > 0
    with pytest.raises(ConfigError, match="--max-wait must be a positive"):
        LearnLoop(LearnOptions(registry=path, store=str(store), max_wait=0), finetune_file)


def test_one_fine_tune_at_a_time_and_a_stop_writes_nothing(
    fitted: tuple[Model, pl.DataFrame, Path], tmp_path: Path
) -> None:
    model, later, stored = fitted
    path, store = _registry(model, tmp_path / "reg"), _copy_store(stored, tmp_path)
    _add(store, _analysts(later, 30, 30, seed=3))
    options = LearnOptions(registry=path, store=str(store), min_labels=10, every=0.1)
    lines: list[str] = []
    loop = LearnLoop(options, finetune_file, on_line=lines.append)
    with _learning_lock(path) as held:  # another learner is fine-tuning this registry
        assert held is None
        worker = threading.Thread(target=loop.run)
        worker.start()
        wait_until(lambda: any("another learner" in line for line in lines), timeout=30)
        time.sleep(0.5)
        with LabelStore.open(store) as opened:  # ... on every label there is: it says so when it is done
            newest = opened.labels_after(0)[1]
        (path / STATE).write_text(json.dumps({"store": hide_password(str(store)), "label_id": newest}))
    time.sleep(1)  # the lock is free: this learner looks again, and finds nothing new to fine-tune on
    loop.stop()
    worker.join(timeout=30)
    assert not worker.is_alive()
    assert sum("another learner" in line for line in lines) == 1  # said once, not at every look
    assert f"pid {os.getpid()}" in lines[-1]  # and nothing after it: no second fine-tune on the same labels
    assert loop.stats.finetunes == loop.stats.failed == 0
    (path / STATE).unlink()

    lines.clear()  # stopped while fine-tuning: abandoned at its next step, nothing written

    def stop_when_started(line: str) -> None:
        lines.append(line)
        if "fine-tuning version" in line:
            loop.stop()

    loop = LearnLoop(options, finetune_file, on_line=stop_when_started)
    assert loop.run().finetunes == 0
    assert lines[-1].startswith("learn: stopped while fine-tuning") and "nothing was written" in lines[-1]
    assert reg.list_versions(path) == [model.version] and not (path / STATE).exists()


def test_labels_after_counts_every_decision(store_url: str, fitted: tuple[Model, pl.DataFrame, Path]) -> None:
    model, later, _ = fitted
    with LabelStore.open(store_url) as store:
        store.add_records(model.for_review(model.score(later.head(20).drop("is_fraud"))), source="test")
        assert store.labels_after(0) == (0, 0)
        ids = later["txn_id"].head(3).to_list()
        store.add_labels([LabelIn(i, "normal", "bob") for i in ids], source="api")
        after, newest = store.labels_after(0)
        assert after == 3 and store.labels_after(newest) == (0, newest)
        store.add_labels([LabelIn(ids[0], "anomaly", "bob"), LabelIn(ids[1], "normal", "bob")], source="page")
        after, latest = store.labels_after(newest)
        assert after == 1 and latest > newest  # a changed label counts; the same label again is not stored


def test_bad_input_is_one_line(run_cli, bundle: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    copy = tmp_path / "plain"
    Model.load(bundle).save(copy)
    cases = {
        "plain bundle": (["--bundle", copy, "--store", tmp_path / "s.db"], "add --init"),
        "no such folder": (["--bundle", tmp_path / "nope", "--store", tmp_path / "s.db"], "does not exist"),
        "no store": (["--bundle", copy, "--store", tmp_path / "missing.db", "--init"], "no label store there"),
        "bad learner": (["--bundle", copy, "--store", tmp_path / "s.db", "--learner", "svm"], "use one of"),
    }
    for name, (args, expected) in cases.items():
        done = run_cli("learn", *args)
        assert done.code == 2, (name, done.err)
        lines = [line for line in done.err.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and expected in lines[0] and "Traceback" not in done.err, (name, done.err)
    assert not reg.is_registry(copy)  # the missing store was refused before --init changed the bundle


# ---------------------------------------------------------------- end to end through Kafka
def _serve(store: Path, token: str, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    with log.open("w") as sink:
        server = subprocess.Popen(
            [sys.executable, "-m", "segscope.cli", "serve", "--store", str(store), "--port", str(port)],
            stderr=sink,
            env={**os.environ, "SEGSCOPE_TOKEN": token},
        )
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: _up(base), timeout=60, every=0.2)
    return server, base


def _up(base: str) -> bool:
    try:
        urllib.request.urlopen(base + "/healthz", timeout=1)
    except OSError:
        return False
    return True


def _post_labels(base: str, token: str, labels: list[dict[str, str]]) -> dict[str, int]:
    request = urllib.request.Request(
        base + "/api/labels",
        data=json.dumps(labels).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 201
        answer: dict[str, int] = json.loads(response.read())
        return answer


def _learn(path: Path, store: Path, log: Path) -> subprocess.Popen[bytes]:
    args = ["learn", "--bundle", str(path), "--store", str(store), "--min-labels", "50", "--every", "0.5"]
    with log.open("w") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "segscope.cli", *args],
            stderr=sink,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


def test_labels_posted_to_the_page_api_lead_to_a_new_version_serving(kafka_bootstrap: str, tmp_path: Path) -> None:
    """A stream scores 2,000 records into the store; analysts clear 60 records through the labels topic (the stream
    consumes it into the store): `segscope learn` fails on these normal-only labels (one line) and waits; they post
    40 confirmed frauds and 60 cleared records through `segscope serve`'s JSON API: it fine-tunes, the gate promotes,
    the stream hot-swaps; 2,000 more records are all scored by the new version, every record exactly once, and
    ranked better than the old version would rank them."""
    model = Model(CONFIG).fit(_by_channel(4000, seed=0))
    path, store, token = _registry(model, tmp_path / "reg"), tmp_path / "labels.db", "s3cret-token"
    first, second = _by_channel(2000, seed=1), _by_channel(2000, seed=2)
    topic_in, topic_out, topic_labels = "learn.in", "learn.out", "learn.labels"
    create_topic(kafka_bootstrap, topic_in)
    create_topic(kafka_bootstrap, topic_labels, partitions=1)
    stream = start_stream(
        path,
        kafka_bootstrap,
        *("--in-topic", topic_in, "--out-topic", topic_out, "--group", "g-learn", "--batch-size", "500"),
        *("--store", str(store), "--labels-topic", topic_labels, "--stats-interval", "5"),
    )
    servers: list[subprocess.Popen[bytes]] = []
    try:
        produce(kafka_bootstrap, topic_in, records(first.drop("is_fraud")))
        wait_until(lambda: group_caught_up(kafka_bootstrap, "g-learn", topic_in), proc=stream)
        with LabelStore.open(store) as opened:
            assert opened.record_count() == 2000  # batches of 500: the stream keeps every record

        server, base = _serve(store, token, tmp_path / "serve.log")
        servers.append(server)
        learner = _learn(path, store, tmp_path / "learn.log")
        servers.append(learner)
        log = tmp_path / "learn.log"
        wait_until(lambda: "checking every" in log.read_text(), timeout=60)
        cleared = [json.dumps(label).encode() for label in _analysts(first, 0, 60, seed=1)]
        produce(kafka_bootstrap, topic_labels, cleared)
        wait_until(lambda: "failed:" in log.read_text(), timeout=120)
        assert _post_labels(base, token, _analysts(first, 40, 60, seed=2))["added"] == 100
        wait_until(lambda: reg.current_version(path) != model.version, timeout=300, every=0.5)
        new = reg.current_version(path)
        time.sleep(3)  # the stream looks at CURRENT before every poll

        code, said = terminate(learner)  # type: ignore[arg-type]
        said = log.read_text()
        assert code == 0 and "Traceback" not in said, said
        decisions = [line for line in said.splitlines() if "failed:" in line or "promoted version" in line]
        assert len(decisions) == 2 and "(0 anomalies, " in decisions[0], said  # the topic's labels reached it
        assert f"promoted version {new} (was {model.version})" in decisions[1], said
        assert "160 labels (40 anomalies, 120 normal)" in decisions[1]
        with LabelStore.open(store) as opened:
            assert Counter(opened.labels()["source"]) == {"kafka": 60, "api": 100}

        produce(kafka_bootstrap, topic_in, records(second.drop("is_fraud")))
        wait_until(lambda: count(kafka_bootstrap, topic_out) >= 4000, proc=stream)
        code, err = terminate(stream)
        assert code == 0, err
    finally:
        for proc in [stream, *servers]:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=60)

    out = consume_all(kafka_bootstrap, topic_out)
    ids = Counter(r["id"] for r in out)
    assert len(ids) == 4000 and max(ids.values()) == 1  # nothing lost, nothing scored twice across the swap
    by_id = {r["id"]: r for r in out}
    assert {by_id[i]["model_version"] for i in first["txn_id"]} == {model.version}
    assert {by_id[i]["model_version"] for i in second["txn_id"]} == {new}  # every record after the swap
    assert f"switched to model version {new}" in err

    y = second["is_fraud"].to_numpy()
    served = np.array([by_id[i]["score"] for i in second["txn_id"]])
    old = model.score(second.drop("is_fraud"))["score"].to_numpy()
    before, after = evaluate_scores(y, old)["aucpr"], evaluate_scores(y, served)["aucpr"]
    print(f"AUCPR on the records after the swap: {before:.3f} by {model.version}, {after:.3f} by {new}")
    assert after > before + 0.3, (before, after)
