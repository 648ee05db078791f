"""The promotion gate's decision: a clearly better candidate promoted on three labelled anomalies, labels on random
records refused, at the rate the gate states; the permutation test it decides by (segscope.supervised.promotion,
segscope.tuning.finetune)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import average_precision_score

from segscope import Model
from segscope.config import SegscopeConfig
from segscope.labels.parse import normalise_labels
from segscope.supervised.promotion import compare, gate_folds, permutation_p
from segscope.supervised.selection import Candidates
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
    """Three labelled frauds and 60 confirmed normals, in three folds chained both ways: in either chain, each of
    the two frauds it judges, predicted by a candidate taught on the folds before it only (one fraud, then two),
    ranks far above where the unsupervised model puts it, and the gate promotes; the served candidate ranks the
    frauds of new records far better. Positives only (the same three, no normal) promote too, judged against the
    unlabelled background."""
    history, model = centre
    frauds = history.filter(pl.col("is_fraud") == 1)["id"].to_list()[:3]
    normals = history.filter(pl.col("is_fraud") == 0).sample(60, seed=0)["id"].to_list()
    candidate, report = finetune(model, history, _labels(frauds + normals, 3))
    assert report["promote"], report["reason"]
    assert (
        "on 2 labelled anomalies against" in report["reason"] and "confirmed normals (each fold's" in report["reason"]
    )
    assert report["reason"].startswith("folds chained ") and set(report["chains"]) == {"forward", "backward"}
    new = _centre(3000, seed=1)
    y = new["is_fraud"].to_numpy()
    before = average_precision_score(y, model.score(new)["score"].to_numpy())
    after = average_precision_score(y, candidate.score(new)["score"].to_numpy())
    assert before < 0.01 and after > 0.2  # 0.002 -> 0.25
    _, positives_only = finetune(model, history, _labels(frauds, 3))
    assert positives_only["promote"], positives_only["reason"]
    assert "on 2 labelled anomalies against" in positives_only["reason"]
    assert "other records (0 confirmed normals, the rest unlabelled)" in positives_only["reason"]


def test_labels_the_current_version_already_ranks_perfectly_are_judged_against_the_background() -> None:
    """Twelve frauds just outside the usual range of f0 and f1, and 300 harmless records farther out in every
    direction: the unsupervised model ranks the frauds above 99% of ordinary records but below the harmless
    outliers. Three
    labelled frauds and 60 confirmed normals: against those normals the current version is already perfect and no
    candidate could be better, so the gate ranks the frauds against every other record, where the candidate that
    learnt f0 lifts them above the harmless outliers, and promotes it."""
    rng = np.random.default_rng(3)
    n = 3000
    x = rng.random((n, 4))
    x[:12] = np.array([1.3, 1.3, 0.5, 0.5]) + rng.normal(0.0, 0.01, size=(12, 4))
    far = rng.normal(0.0, 1.0, size=(300, 4))
    x[12:312] = 0.5 + 2.5 * far / np.linalg.norm(far, axis=1, keepdims=True)
    history = pl.DataFrame(
        {"id": [f"r{i}" for i in range(n)], **{f"f{j}": x[:, j] for j in range(4)}, "is_fraud": np.arange(n) < 12}
    ).with_columns(pl.col("is_fraud").cast(pl.Int64))
    model = Model(SegscopeConfig().with_features(id_column="id", drop=("is_fraud",))).fit(history)
    scores = model.score(history)["score"].to_numpy()
    picked = rng.choice(np.arange(312, n), 60, replace=False)
    assert scores[:3].min() > scores[picked].max() and np.median(scores[12:312]) > scores[:12].max()
    _, report = finetune(model, history, _labels([f"r{i}" for i in [0, 1, 2, *picked]], 3))
    assert "already ranks each labelled anomaly above the" in report["reason"], report["reason"]
    assert report["promote"], report["reason"]


@pytest.mark.parametrize("seed", [0, 1])
def test_the_same_labels_on_random_records_are_refused_in_one_line(
    centre: tuple[pl.DataFrame, Model], seed: int
) -> None:
    history, model = centre
    ids = history.sample(63, seed=seed + 10)["id"].to_list()
    _, report = finetune(model, history, _labels(ids, 3))
    assert not report["promote"]
    assert "\n" not in report["reason"]
    assert report["reason"].endswith(("label more anomalies (2 checked) to strengthen the evidence", "version"))


@pytest.mark.parametrize("anomalies", [3, 7])
def test_chained_folds_never_let_two_labelled_anomalies_teach_each_other(anomalies: int) -> None:
    """Random folds are judged chained both ways: in each chain a fold is predicted by a candidate taught on the
    folds before it only, so of any two folds one teaches the other and never the reverse (the cycle that lifted
    two close labelled anomalies together); between them the two chains predict every fold."""
    y = np.zeros(500, dtype=np.int64)
    y[np.random.default_rng(0).choice(500, anomalies, replace=False)] = 1
    gate = gate_folds(y, times=None, column=None, folds=5, rng=np.random.default_rng(1))
    chains = gate.chains()
    assert [chain.kind for chain in chains] == ["forward", "backward"]
    predicted = set()
    for chain in chains:
        taught_by: dict[int, set[int]] = {}
        for k in np.unique(chain.fold[chain.evaluated()]):
            taught_by[int(k)] = set(gate.fold[chain.training(int(k))].tolist())
            assert int(gate.fold[chain.fold == k][0]) not in taught_by[int(k)]
            predicted.add(int(gate.fold[chain.fold == k][0]))
        original = {int(k): int(gate.fold[chain.fold == k][0]) for k in taught_by}
        for a, b in ((a, b) for a in taught_by for b in taught_by if a != b):
            assert not (original[a] in taught_by[b] and original[b] in taught_by[a])
    assert predicted == set(range(gate.n_folds))


def test_labels_that_carry_nothing_pass_about_one_time_in_twenty() -> None:
    """Scores unrelated to the labels, three labelled anomalies among 300 records, 200 draws: the gate promotes
    about 1% (the permutation test's level, plus sampling noise), where the bootstrap alone passed whenever each
    of the three happened to rank higher (26 of 200) and the bootstrap with the paired t-test (the second rule
    the gate once had) in about 5%."""
    rng = np.random.default_rng(0)
    promoted = bootstrap_alone = old_rule = 0
    for draw in range(200):
        y = np.zeros(300, dtype=np.int64)
        y[rng.choice(300, 3, replace=False)] = 1
        report = compare(y, rng.random(300), rng.random(300), "aucpr", resamples=200, seed=draw)
        promoted += report["promote"]
        bootstrap_alone += (
            report["share_of_resamples_better"] >= 0.95 and report["candidate"]["aucpr"] > report["current"]["aucpr"]
        )
        old_rule += report["share_of_resamples_better"] >= 0.95 and report["paired_t_p_value"] <= 0.05
    assert promoted <= 6  # 1% of 200 is 2; 6 is above it by almost three standard deviations
    assert bootstrap_alone > 3 * max(promoted, 1) and old_rule > promoted


def _lifted(n: int, current_ranks: list[int], candidate_ranks: list[int], seed: int) -> tuple[np.ndarray, ...]:
    """``n`` records, the first ones labelled anomalies at ``current_ranks`` (1 = top) in the current version's
    order and at ``candidate_ranks`` in the candidate's; the other records in the same order in both, but for a
    little noise."""
    rng = np.random.default_rng(seed)
    k = len(current_ranks)
    y = np.zeros(n, dtype=np.int64)
    y[:k] = 1
    base = np.sort(rng.random(n - k))[::-1] * 0.98
    current, candidate = np.empty(n), np.empty(n)
    current[k:] = base
    candidate[k:] = base + rng.normal(0.0, 0.01, n - k)
    for i, (r_cur, r_new) in enumerate(zip(current_ranks, candidate_ranks, strict=True)):
        current[i] = base[r_cur - 1] + 1e-6  # just above the record now at that rank
        candidate[i] = np.sort(candidate[k:])[::-1][r_new - 1] + 1e-6
    return y, current, candidate


def test_three_anomalies_lifted_to_the_top_promote_though_the_t_test_alone_would_refuse() -> None:
    """Three labelled anomalies among 3,000 records, at ranks 5, 40 and 300 under the current version and 1, 2
    and 250 under the candidate: their AUCPR terms move by 0.8, 0.95 and 0.002, too uneven for a t-test on three
    (p about 0.1), while records drawn at random never gain that much: promoted."""
    y, current, candidate = _lifted(3000, [5, 40, 300], [1, 2, 250], seed=0)
    report = compare(y, current, candidate, "aucpr")
    assert report["paired_t_p_value"] > 0.05
    assert report["permutation_p_value"] < 0.01
    assert report["promote"], report["reason"]
    # the same three anomalies, the candidate lifting one and dropping two: refused, and the line says why
    y, current, candidate = _lifted(3000, [5, 40, 300], [1, 90, 900], seed=0)
    report = compare(y, current, candidate, "aucpr")
    assert not report["promote"]
    assert "\n" not in report["reason"] and "label more anomalies (3 checked)" in report["reason"]


def test_a_gain_shared_by_every_record_of_the_anomalies_fold_is_not_credited() -> None:
    """The labelled anomalies all sit in one fold, and the candidate of that fold ranks every record of it higher
    (a fold taught something about the fold, not about anomalies): drawn from that fold, random records gain as
    much, and the permutation test does not pass it; drawn from every record (no folds given) they would not."""
    rng = np.random.default_rng(1)
    n = 3000
    folds = np.arange(n) % 5
    y = np.zeros(n, dtype=np.int64)
    y[rng.choice(np.flatnonzero(folds == 0), 4, replace=False)] = 1
    current = rng.random(n)
    candidate = current + np.where(folds == 0, 0.5, 0.0) + rng.normal(0.0, 0.05, n)
    assert permutation_p(y, current, candidate, "aucroc", folds=folds) > 0.05
    assert permutation_p(y, current, candidate, "aucroc") < 0.01


@pytest.mark.parametrize("metric", ["aucpr", "aucroc"])
def test_the_permutation_test_passes_labels_that_carry_nothing_one_time_in_twenty(metric: str) -> None:
    """Scores unrelated to the labels (three labelled anomalies among 300 records in three folds): p <= 0.05 in
    about 5% of 300 draws (the test is exact: random records are what such labelled anomalies are)."""
    rng = np.random.default_rng(2)
    folds = np.arange(300) % 3
    passed = 0
    for draw in range(300):
        y = np.zeros(300, dtype=np.int64)
        y[rng.choice(300, 3, replace=False)] = 1
        p = permutation_p(y, rng.random(300), rng.random(300), metric, folds=folds, permutations=400, seed=draw)
        passed += p <= 0.05
    assert 3 <= passed <= 25  # 15 expected; two standard deviations (3.8) either side and more


def _candidates(y: np.ndarray, fold: np.ndarray, values: dict[str, np.ndarray]) -> Candidates:
    n = y.size
    return Candidates(
        configs=[{}],
        rows=np.arange(n),
        fold=fold,
        ordered=False,
        y=y,
        learner=[np.zeros(n)],
        surprisal=np.zeros(n),
        proximity=np.zeros(n),
        values=values,
    )


def test_a_fold_s_gate_scores_do_not_depend_on_that_fold_s_own_labels() -> None:
    """The gate scores each fold with the candidate chosen on the other folds, and the permutation test compares
    the fold's labelled anomalies with random records of the same fold; so nothing in a fold's scores may come from
    its own labels. Moving the labelled anomalies of fold 0 to other records of fold 0 leaves fold 0's scores as
    they were (a Platt scale fitted on every fold's labels moved them, and placed the fold's anomalies among the
    other folds' records by where they are: p <= 0.05 on 2 of 6 random label sets)."""
    rng = np.random.default_rng(3)
    n = 900
    fold = np.arange(n) % 3
    signal = rng.random(n)
    values = {"simple": rng.normal(size=n), "better": signal + rng.normal(0.0, 0.3, n)}
    y = np.zeros(n, dtype=np.int64)
    y[np.argsort(-signal)[:12]] = 1  # the better candidate is chosen: its anomalies rank high
    before, taken = _candidates(y, fold, values).gate_scores(100)
    moved = y.copy()
    in_fold_0 = np.flatnonzero(fold == 0)
    moved[in_fold_0] = 0
    moved[rng.choice(in_fold_0, int(y[in_fold_0].sum()), replace=False)] = 1  # as many, on random records
    after, taken_after = _candidates(moved, fold, values).gate_scores(100)
    assert taken[0] == taken_after[0]
    np.testing.assert_allclose(after[fold == 0], before[fold == 0])
    assert not np.allclose(after[fold == 1], before[fold == 1])  # fold 1's scale learnt from fold 0's labels
