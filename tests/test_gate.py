"""The promotion gate's decision: a clearly better candidate promoted on three labelled anomalies, labels on random
records refused, at the rate the gate states (segscope.supervised.promotion, segscope.tuning.finetune)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import average_precision_score

from segscope import Model
from segscope.config import SegscopeConfig
from segscope.labels.parse import normalise_labels
from segscope.supervised.promotion import compare
from segscope.tuning import finetune


def _centre(n: int, seed: int) -> pl.DataFrame:
    """Four uniform features; twelve frauds packed at the centre, where the unsupervised layer sees nothing odd."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, 4))
    x[:12] = 0.5 + rng.normal(0.0, 0.01, size=(12, 4))
    fraud = (np.arange(n) < 12).astype(np.int64)
    order = rng.permutation(n)
    columns = {f"f{j}": x[order, j] for j in range(4)}
    return pl.DataFrame({"id": [f"r{i}" for i in range(n)], **columns, "is_fraud": fraud[order]})


@pytest.fixture(scope="module")
def centre() -> tuple[pl.DataFrame, Model]:
    history = _centre(3000, seed=0)
    return history, Model(SegscopeConfig().with_features(id_column="id", drop=("is_fraud",))).fit(history)


def _labels(ids: list[str], anomalies: int) -> pl.DataFrame:
    kinds = ["anomaly"] * anomalies + ["normal"] * (len(ids) - anomalies)
    return normalise_labels(pl.DataFrame({"id": ids, "label": kinds}))


def test_three_labelled_anomalies_promote_a_clearly_better_candidate(centre: tuple[pl.DataFrame, Model]) -> None:
    """Three labelled frauds and 60 confirmed normals: each fraud, predicted by a candidate taught on the other
    two, ranks far above where the unsupervised model puts it, and the gate promotes; the served candidate ranks
    the frauds of new records far better. Positives only (the same three, no normal) promote too, judged
    against the unlabelled background."""
    history, model = centre
    frauds = history.filter(pl.col("is_fraud") == 1)["id"].to_list()[:3]
    normals = history.filter(pl.col("is_fraud") == 0).sample(60, seed=0)["id"].to_list()
    candidate, report = finetune(model, history, _labels(frauds + normals, 3))
    assert report["promote"], report["reason"]
    assert "on 3 labelled anomalies against 60 confirmed normals" in report["reason"]
    new = _centre(3000, seed=1)
    y = new["is_fraud"].to_numpy()
    before = average_precision_score(y, model.score(new)["score"].to_numpy())
    after = average_precision_score(y, candidate.score(new)["score"].to_numpy())
    assert before < 0.01 and after > 0.2  # 0.002 -> 0.25
    _, positives_only = finetune(model, history, _labels(frauds, 3))
    assert positives_only["promote"], positives_only["reason"]
    assert "against 2,997 other records (0 confirmed normals, the rest unlabelled)" in positives_only["reason"]


@pytest.mark.parametrize("seed", [0, 1])
def test_the_same_labels_on_random_records_are_refused_in_one_line(
    centre: tuple[pl.DataFrame, Model], seed: int
) -> None:
    history, model = centre
    ids = history.sample(63, seed=seed + 10)["id"].to_list()
    _, report = finetune(model, history, _labels(ids, 3))
    assert not report["promote"]
    assert "\n" not in report["reason"]
    assert report["reason"].endswith(("label more anomalies (3 checked) to strengthen the evidence", "version"))


def test_labels_that_carry_nothing_pass_about_one_time_in_twenty() -> None:
    """Scores unrelated to the labels, three labelled anomalies among 300 records, 200 draws: the gate promotes
    at most the one-sided test's 5% (plus sampling noise: 10 of 200 here), where the bootstrap alone passed whenever
    each of the three happened to rank higher (26 of 200)."""
    rng = np.random.default_rng(0)
    promoted = bootstrap_alone = 0
    for draw in range(200):
        y = np.zeros(300, dtype=np.int64)
        y[rng.choice(300, 3, replace=False)] = 1
        report = compare(y, rng.random(300), rng.random(300), "aucpr", resamples=200, seed=draw)
        promoted += report["promote"]
        bootstrap_alone += (
            report["share_of_resamples_better"] >= 0.95 and report["candidate"]["aucpr"] > report["current"]["aucpr"]
        )
    assert promoted <= 16  # 5% of 200 is 10; 16 is above it by two standard deviations
    assert bootstrap_alone > 2 * promoted
