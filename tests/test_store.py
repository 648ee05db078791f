"""The label store against SQLite and a real PostgreSQL server: records, labels, history, concurrency, queue."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from segscope.exceptions import ConfigError
from segscope.labels import LabelIn, LabelStore, UnknownRecordError
from segscope.labels.queue import QueueMix, parse_mix, select_queue
from segscope.model import Model


@pytest.fixture
def store(store_url: str, model: Model, new_records: pl.DataFrame):
    with LabelStore.open(store_url) as opened:
        opened.add_records(model.for_review(model.score(new_records)), source="new.parquet")
        yield opened


def _ids(store: LabelStore, n: int) -> list[str]:
    return [item["id"] for item in store.queue(n, QueueMix(top=1, uncertain=0, coverage=0))]


def test_records_keep_what_labels_join_to(store: LabelStore, model: Model, new_records: pl.DataFrame) -> None:
    assert store.record_count() == new_records.height
    rid = new_records["txn_id"][0]
    record = store.records([rid])[rid]
    assert record["model_version"] == model.version
    assert record["values"]["amount"] == pytest.approx(new_records["amount"][0])
    assert record["values"]["ts"] == new_records["ts"][0].isoformat()
    assert len(record["vector"]) == model.n_features
    assert record["reasons"] and {"feature", "value", "expected", "contribution"} <= set(record["reasons"][0])
    assert record["segment"] == -1 and record["source"] == "new.parquet"
    # labels join back to the record's features through the id
    store.add_labels([LabelIn(rid, "anomaly", "ann", "card testing")], source="cli")
    joined = store.labels().join(new_records.with_columns(pl.col("txn_id").alias("id")), on="id")
    assert joined.height == 1 and joined["amount"][0] == new_records["amount"][0]


def test_relabelling_keeps_history_and_repeats_are_idempotent(store: LabelStore) -> None:
    rid = _ids(store, 1)[0]
    assert store.add_labels([LabelIn(rid, "anomaly", "ann", note="looks odd")], source="page").added == 1
    assert store.add_labels([LabelIn(rid, "anomaly", "ann", note="looks odd")], source="api").unchanged == 1
    assert store.add_labels([LabelIn(rid, "normal", "bob", "known merchant")], source="page").added == 1
    history = store.labels(history=True).filter(pl.col("id") == rid)
    assert history["label"].to_list() == ["normal", "anomaly"]  # newest first, nothing overwritten
    current = store.labels()
    assert current.filter(pl.col("id") == rid)["label"].to_list() == ["normal"]
    assert store.training_labels().filter(pl.col("id") == rid)["label"].to_list() == [0]


def test_unknown_ids_and_bad_labels_are_refused_whole(store: LabelStore) -> None:
    rid = _ids(store, 1)[0]
    with pytest.raises(UnknownRecordError, match="unknown record id.*'nope'.*nothing was stored"):
        store.add_labels([LabelIn(rid, "anomaly", "ann"), LabelIn("nope", "anomaly", "ann")], source="api")
    with pytest.raises(Exception, match="use 'anomaly' or 'normal'"):
        store.add_labels([LabelIn(rid, "maybe", "ann")], source="api")
    assert store.labels(history=True).height == 0


def test_eight_writers_lose_nothing(store: LabelStore) -> None:
    ids = _ids(store, 1000)
    errors: list[BaseException] = []

    def writer(w: int) -> None:
        try:
            for i in range(500):  # one transaction per label, as analysts post them
                rid = ids[(w * 125 + i) % (len(ids) - 1)]
                store.add_labels([LabelIn(rid, "anomaly" if i % 3 else "normal", f"analyst-{w}")], source="api")
                if i % 50 == 0:  # everyone also posts the same label for the same record
                    store.add_labels([LabelIn(ids[-1], "anomaly", "shared")], source="api")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    history = store.labels(history=True)
    assert history.filter(pl.col("analyst").str.starts_with("analyst-")).height == 8 * 500
    assert history.filter(pl.col("analyst") == "shared").height == 1  # idempotent under concurrency
    per_writer = history.group_by("analyst").len()
    assert sorted(per_writer.filter(pl.col("analyst") != "shared")["len"].to_list()) == [500] * 8


def test_migrations_bring_a_store_to_head(store_url: str) -> None:
    import sqlalchemy as sa

    from segscope.labels.store import store_url as full_url

    LabelStore.open(store_url).close()
    LabelStore.open(store_url).close()  # re-opening is a no-op
    engine = sa.create_engine(full_url(store_url))
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one() == "0001"
        assert {"records", "labels"} <= set(sa.inspect(conn).get_table_names())
    engine.dispose()


def test_queue_mixes_and_respects_the_daily_budget(store: LabelStore) -> None:
    mix = QueueMix(top=0.5, uncertain=0.3, coverage=0.2, daily_budget=12)
    items = store.queue(10, mix)
    assert len(items) == 10 and len({i["id"] for i in items}) == 10
    whys = [i["why"] for i in items]
    assert whys.count("top score") == 5 and sum(w.startswith("near the threshold") for w in whys) == 3
    top = store.queue(5, QueueMix(top=1, uncertain=0, coverage=0))
    assert [i["score"] for i in top] == sorted((i["score"] for i in top), reverse=True)
    store.add_labels([LabelIn(i["id"], "normal", "ann") for i in items[:9]], source="page")
    assert len(store.queue(10, mix, analyst="ann")) == 3  # 12 a day, 9 done
    assert len(store.queue(10, mix, analyst="bob")) == 10
    labelled = set(store.labels()["id"].to_list())
    assert not labelled & {i["id"] for i in store.queue(50, mix)}  # labelled records leave the queue
    assert store.queue(3, mix)[0]["nearest"]  # each item shows its nearest labelled records


def test_rescore_updates_records_to_the_current_model(store: LabelStore, history: pl.DataFrame, config) -> None:
    from segscope.pipeline import rescore_store

    newer = Model(config.model_copy(update={"seed": 7})).fit(history)
    assert rescore_store(store, newer) == store.record_count()
    versions = {r["model_version"] for r in store.records(_ids(store, 50)).values()}
    assert versions == {newer.version}
    assert rescore_store(store, newer) == 0


def test_two_rescorers_do_not_rescore_the_same_records(store: LabelStore, history: pl.DataFrame, config) -> None:
    """`serve --bundle` and `segscope learn` both re-score after a promotion: what one did, the other skips, and
    neither holds the store's records in memory (a batch is read when asked for)."""
    newer = Model(config.model_copy(update={"seed": 7})).fit(history)
    first = store.stale_records(newer.version, batch_size=10)
    ids, frame = next(first)
    assert len(ids) == frame.height == 10
    store.add_records(newer.for_review(newer.score(frame), ids=ids), source="rescore")
    done = 10
    for other_ids, other in store.stale_records(newer.version, batch_size=50):  # the other process: the rest
        assert not set(other_ids) & set(ids)
        done += store.add_records(newer.for_review(newer.score(other), ids=other_ids), source="rescore")
    assert done == store.record_count() and next(first, None) is None  # nothing left for the first one


@settings(max_examples=60, deadline=None)
@given(
    n_candidates=st.integers(0, 80),
    n=st.integers(0, 40),
    shares=st.tuples(st.integers(0, 10), st.integers(0, 10), st.integers(0, 10)).filter(lambda s: sum(s) > 0),
    with_vectors=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_select_queue_picks_distinct_candidates(n_candidates, n, shares, with_vectors, seed) -> None:
    rng = np.random.default_rng(seed)
    total = sum(shares)
    mix = QueueMix(top=shares[0] / total, uncertain=shares[1] / total, coverage=1 - (shares[0] + shares[1]) / total)
    score = rng.random(n_candidates)
    pick = select_queue(
        score,
        n,
        mix,
        segment=rng.integers(-1, 4, n_candidates),
        vectors=rng.normal(size=(n_candidates, 3)) if with_vectors else None,
        labelled_vectors=rng.normal(size=(5, 3)) if with_vectors else None,
    )
    assert len(pick.index) == min(n, n_candidates) == len(pick.why)
    assert len(set(pick.index.tolist())) == len(pick.index)
    assert all(0 <= i < n_candidates for i in pick.index)


def test_coverage_visits_the_least_labelled_segments_first() -> None:
    score = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    segment = np.array([0, 0, 1, 1, 2, 2])
    pick = select_queue(
        score, 3, QueueMix(top=0, uncertain=0, coverage=1), segment=segment, labelled_segment=np.array([0, 0, 1])
    )
    assert pick.index.tolist() == [4, 2, 0]  # segment 2 (no labels), then 1 (one), then 0 (two)


def test_mix_errors_are_one_line() -> None:
    with pytest.raises(ConfigError, match="top=0.5,uncertain=0.3,coverage=0.2"):
        parse_mix("top:1")
    with pytest.raises(ConfigError, match="must be 1"):
        parse_mix("top=0.5,uncertain=0.1,coverage=0.1")
    assert parse_mix("top=1,uncertain=0,coverage=0", 7).daily_budget == 7


def test_bad_store_urls(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        LabelStore.open(tmp_path / "missing" / "labels.db")
    with pytest.raises(ConfigError, match="use a file path"):
        LabelStore.open("mysql://x@y/z")
    with pytest.raises(ConfigError, match="cannot open the label store"):
        LabelStore.open("postgresql://nobody@127.0.0.1:1/none")


def test_top_share_skips_near_duplicates() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(30, 4)) * 5
    vectors[1] = vectors[0] + 1e-3  # the runner-up is a copy of the top record
    score = np.linspace(1.0, 0.1, 30)
    top = QueueMix(top=1, uncertain=0, coverage=0)
    assert select_queue(score, 2, top, vectors=vectors, distinct_top=False).index.tolist() == [0, 1]
    assert select_queue(score, 2, top, vectors=vectors).index.tolist() == [0, 2]
    # a copy of an already-labelled record is skipped too
    labelled = vectors[[0]] + 1e-3
    assert select_queue(score, 2, top, vectors=vectors, labelled_vectors=labelled).index.tolist() == [2, 3]
