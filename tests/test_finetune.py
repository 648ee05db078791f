"""Fine-tuning on analyst labels, the registry, promotion and rollback."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import average_precision_score

from segscope import DataError, Model, SchemaError
from segscope import registry as reg
from segscope.config import SegscopeConfig
from segscope.labels.parse import load_labels, normalise_labels
from segscope.supervised.base import PRIOR_BELOW
from segscope.testing.data import make_transactions
from segscope.tuning import finetune


@pytest.fixture(scope="module")
def big_history() -> pl.DataFrame:
    return make_transactions(12_000, seed=0)


@pytest.fixture(scope="module")
def base(big_history: pl.DataFrame) -> Model:
    return Model(SegscopeConfig().with_features(id_column="txn_id", drop=("is_fraud",))).fit(big_history)


def _labels(frame: pl.DataFrame, n: int, seed: int = 1, normals: int = 0) -> pl.DataFrame:
    fraud = frame.filter(pl.col("is_fraud") == 1).sample(n, seed=seed)
    rows = {"id": fraud["txn_id"].to_list(), "label": ["anomaly"] * n}
    if normals:
        ok = frame.filter(pl.col("is_fraud") == 0).sample(normals, seed=seed)
        rows["id"] += ok["txn_id"].to_list()
        rows["label"] += ["normal"] * normals
    return normalise_labels(pl.DataFrame(rows))


def test_fine_tuning_improves_precision_on_new_data(base: Model, big_history: pl.DataFrame) -> None:
    candidate, report = finetune(base, big_history, _labels(big_history, 60, normals=30))
    new = make_transactions(4000, seed=7)
    y = new["is_fraud"].to_numpy()
    before = average_precision_score(y, base.score(new)["score"].to_numpy())
    scored = candidate.score(new)
    after = average_precision_score(y, scored["score"].to_numpy())
    assert after > before
    assert scored["supervised_score"].null_count() == 0
    assert scored["score"].equals(scored["supervised_score"])
    assert scored["anomaly_score"].equals(base.score(new)["anomaly_score"])  # the unsupervised layer is unchanged
    assert report["supervised"]["labelled_anomalies"] > 0
    assert candidate.parent_version == base.version
    assert candidate.version != base.version


def test_supervised_score_is_a_calibrated_probability(base: Model, big_history: pl.DataFrame) -> None:
    candidate, report = finetune(base, big_history, _labels(big_history, 80))
    assert report["calibration"]["ece"] < 0.02
    assert report["calibration"]["brier"] < 0.02
    scores = candidate.score(make_transactions(3000, seed=8))["supervised_score"]
    assert scores.is_between(0.0, 1.0).all()


def test_one_labelled_anomaly_never_makes_the_served_model_worse(
    base: Model, big_history: pl.DataFrame, tmp_path: Path
) -> None:
    """One labelled anomaly cannot be checked out of fold: a one-line refusal, nothing written; with two, the
    gate decides and the registry serves what it decided."""
    from segscope.pipeline import finetune_file

    history = tmp_path / "history.parquet"
    big_history.write_parquet(history)
    base.save(tmp_path / "reg")
    labels = tmp_path / "one.csv"
    _labels(big_history, 1).write_csv(labels)
    with pytest.raises(DataError, match="needs at least 2 labelled anomalies .* got 1: label another anomaly"):
        finetune_file(tmp_path / "reg", history, labels)
    assert Model.load(tmp_path / "reg").version == base.version
    assert not (tmp_path / "reg" / "versions").exists()  # not even turned into a registry
    for seed in range(2):
        labels = tmp_path / f"two-{seed}.csv"
        _labels(big_history, 2, seed=seed).write_csv(labels)
        served_before = Model.load(tmp_path / "reg")
        candidate, report, _ = finetune_file(tmp_path / "reg", history, labels)
        served_after = Model.load(tmp_path / "reg")
        assert report["held_out_labelled_anomalies"] >= 1
        if report["promote"]:
            assert served_after.version == candidate.version
            assert report["candidate"]["aucpr"] > report["current"]["aucpr"]
        else:
            assert served_after.version == served_before.version
            assert "not better" in report["reason"] or "not reliably better" in report["reason"]


def test_registry_promote_rollback_and_hot_path(base: Model, big_history: pl.DataFrame, tmp_path: Path) -> None:
    from segscope.pipeline import finetune_file

    history, labels = tmp_path / "h.parquet", tmp_path / "labels.csv"
    big_history.write_parquet(history)
    _labels(big_history, 80).write_csv(labels)
    base.save(tmp_path / "bundle")
    candidate, report, target = finetune_file(tmp_path / "bundle", history, labels)
    assert target == tmp_path / "bundle"
    assert reg.is_registry(target)
    assert reg.list_versions(target) == sorted([base.version, candidate.version])
    expected = candidate.version if report["promote"] else base.version
    assert reg.current_version(target) == expected
    assert Model.load(target).version == expected
    # a second round continues from the previous booster
    second, report2, _ = finetune_file(target, history, labels, out=tmp_path / "elsewhere")
    assert reg.is_registry(tmp_path / "elsewhere")
    if Model.load(target).supervised is not None:
        assert report2["continued_from"] == Model.load(target).version
    manifest = json.loads((tmp_path / "elsewhere" / "versions" / second.version / "manifest.json").read_text())
    sup = next(c for c in manifest["components"] if c["role"] == "supervised")
    assert sup["name"] == "xgboost"
    assert sup["artifact"] == "supervised/xgboost.json"
    assert manifest["label_snapshot"]["anomalies"] == 80
    assert manifest["promotion"]["metric"] == "aucpr"
    reg.set_current(target, base.version, action="rollback")
    assert Model.load(target).supervised is None


def test_cli_finetune_promote_rollback(run_cli, big_history: pl.DataFrame, base: Model, tmp_path: Path) -> None:
    history, labels = tmp_path / "h.parquet", tmp_path / "labels.parquet"
    big_history.write_parquet(history)
    _labels(big_history, 80).write_parquet(labels)
    base.save(tmp_path / "reg")
    result = run_cli("finetune", "--bundle", tmp_path / "reg", "--labels", labels, "--data", history)
    assert result.code == 0, result.err
    assert "fine-tuned" in result.err
    assert "promoted" in result.err or "not promoted" in result.err
    newest = reg.list_versions(tmp_path / "reg")[-1]
    assert run_cli("promote", tmp_path / "reg", "--version", newest).code == 0
    assert reg.current_version(tmp_path / "reg") == newest
    assert run_cli("rollback", tmp_path / "reg").code == 0
    first = reg.current_version(tmp_path / "reg")
    assert first != newest
    again = run_cli("rollback", tmp_path / "reg")  # walks back, never undoes the rollback (it put `newest` back)
    assert again.code == 2 and "no earlier current version" in again.err, again.err
    assert reg.current_version(tmp_path / "reg") == first
    refit = run_cli("fit", history, "--bundle", tmp_path / "reg", "--id-column", "txn_id", "--drop", "is_fraud")
    assert refit.code == 2 and "is a registry of model versions" in refit.err, refit.err
    assert reg.current_version(tmp_path / "reg") == first
    inspect = run_cli("inspect", tmp_path / "reg")
    assert "registry" in inspect.out
    assert "(current)" in inspect.out


def test_label_errors(base: Model, big_history: pl.DataFrame, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="label at row 1 is 'maybe'"):
        normalise_labels(pl.DataFrame({"id": ["a", "b"], "label": ["anomaly", "maybe"]}))
    with pytest.raises(SchemaError, match="labels need columns id,label"):
        normalise_labels(pl.DataFrame({"id": ["a"]}))
    unknown = normalise_labels(pl.DataFrame({"id": ["nope"], "label": [1]}))
    with pytest.raises(DataError, match="refer to ids not in the history"):
        finetune(base, big_history, unknown)
    normals = _labels(big_history, 0, normals=5)
    with pytest.raises(DataError, match="needs at least 2 labelled anomalies .* got 0: label at least two"):
        finetune(base, big_history, normals)
    path = tmp_path / "l.csv"
    pl.DataFrame({"id": ["x", "x"], "label": ["anomaly", "normal"], "category": ["card testing", None]}).write_csv(path)
    with pytest.raises(DataError, match="id 'x' has conflicting labels at rows \\[0, 1\\]"):
        load_labels(path)  # refused, not "last wins"
    pl.DataFrame({"id": ["x", "x"], "label": ["anomaly", "1"]}).write_csv(path)
    loaded = load_labels(path)  # the same label twice is one label
    assert loaded.height == 1
    assert loaded["label"][0] == 1


def test_bundle_without_id_column_cannot_be_fine_tuned(big_history: pl.DataFrame) -> None:
    model = Model(SegscopeConfig().with_features(id_column=None, drop=("is_fraud", "txn_id"))).fit(big_history)
    with pytest.raises(DataError, match="refit with --id-column"):
        finetune(model, big_history, _labels(big_history, 5))


def test_fine_tuned_scores_are_batch_independent(base: Model, big_history: pl.DataFrame) -> None:
    candidate, _ = finetune(base, big_history, _labels(big_history, 40))
    rows = make_transactions(600, seed=9)
    whole = candidate.score(rows)["score"].to_numpy()
    parts = np.concatenate([candidate.score(rows[i : i + 97])["score"].to_numpy() for i in range(0, 600, 97)])
    np.testing.assert_array_equal(whole, parts)


def _by_channel(n: int, seed: int) -> pl.DataFrame:
    """Transactions whose fraud is one sales channel among four equally common ones: rarity cannot tell the
    channels apart, only their identity can."""
    frame = make_transactions(n, seed=seed).drop("is_fraud")
    channel = pl.Series("channel", ["web", "app", "phone", "branch"] * (n // 4))
    fraud = (channel == "phone") & pl.Series(np.random.default_rng(seed).random(n) < 0.3)
    return frame.with_columns(channel, fraud.cast(pl.Int64).alias("is_fraud"))


def test_the_learner_sees_which_category(tmp_path: Path) -> None:
    history = _by_channel(8000, seed=0)
    model = Model(SegscopeConfig().with_features(id_column="txn_id", drop=("is_fraud",))).fit(history)
    assert len(set(model.preparer_.categorical_["channel"]["rarity"])) == 1  # white-box: four levels, one rarity
    candidate, report = finetune(model, history, _labels(history, 60, normals=200))
    assert report["supervised"]["categories"] == {"codes": 3, "target_encoded": 0}  # channel, merchant, country
    new = _by_channel(4000, seed=1)
    y = new["is_fraud"].to_numpy()
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(y, model.score(new)["score"].to_numpy()) < 0.6  # the unsupervised layer cannot see it
    assert roc_auc_score(y, candidate.score(new)["score"].to_numpy()) > 0.9
    assert report["promote"]
    candidate.save(tmp_path / "b")  # the codes round-trip with the bundle
    assert Model.load(tmp_path / "b").score(new)["score"].equals(candidate.score(new)["score"])


def test_high_cardinality_categories_are_target_encoded(tmp_path: Path) -> None:
    history = make_transactions(6000, seed=0)
    shops = pl.Series("shop", [f"s{i % 300}" for i in range(6000)])  # 300 shops, 20 rows each
    history = history.with_columns(shops)
    model = Model(SegscopeConfig().with_features(id_column="txn_id", drop=("is_fraud",))).fit(history)
    candidate, report = finetune(model, history, _labels(history, 50, normals=100))
    assert report["supervised"]["categories"] == {"codes": 2, "target_encoded": 1}
    new = make_transactions(500, seed=3).with_columns(pl.Series("shop", [f"s{i % 400}" for i in range(500)]))
    scored = candidate.score(new)  # shops never seen at fit get the overall share
    assert scored["supervised_score"].is_finite().all()
    candidate.save(tmp_path / "b")
    assert Model.load(tmp_path / "b").score(new)["score"].equals(scored["score"])


def test_the_gate_refuses_a_model_trained_on_wrong_labels(base: Model, big_history: pl.DataFrame) -> None:
    normal = big_history.filter(pl.col("is_fraud") == 0).sample(80, seed=3)  # "anomalies" that are not
    wrong = normalise_labels(pl.DataFrame({"id": normal["txn_id"].to_list(), "label": ["anomaly"] * 80}))
    _, report = finetune(base, big_history, wrong)
    assert not report["promote"]
    assert "not better" in report["reason"] or "not reliably better" in report["reason"]


def test_blend_is_chosen_out_of_fold_and_never_below_the_learner(base: Model, big_history: pl.DataFrame) -> None:
    _, report = finetune(base, big_history, _labels(big_history, 120, normals=30))
    chosen = report["supervised"]
    oof = chosen["out_of_fold_aucpr"]
    assert set(oof) == {"learner", "unsupervised", "stack", "prior"}
    assert chosen["labelled_anomalies"] >= PRIOR_BELOW  # enough for the out-of-fold choice
    assert chosen["blend"] in ("learner", "stack", "prior")
    assert oof[chosen["blend"]] >= oof["learner"]  # never below the learner out of fold
    assert min(chosen["blend_weights"].values()) >= 0


def test_few_anomalies_take_the_prior_blend(base: Model, big_history: pl.DataFrame) -> None:
    """Out-of-fold AUCPR on a handful of anomalies is noise: the prior blend (learner weight n / (n + 5), the
    unsupervised score, proximity to the labelled anomalies) is taken, and scores with its exemplars."""
    candidate, report = finetune(base, big_history, _labels(big_history, 8, normals=30))
    chosen = report["supervised"]
    assert chosen["labelled_anomalies"] < PRIOR_BELOW and chosen["blend"] == "prior"
    weights = chosen["blend_weights"]
    assert weights["proximity"] > 0 and weights["learner"] < weights["unsupervised"]  # leans on the unsupervised
    scores = candidate.score(big_history.head(500))["supervised_score"]
    assert scores.is_not_null().all() and scores.is_between(0, 1).all()


def _heavy_tailed(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """60 anomalies that share a corner of four features, a fifth normal feature, a sixth heavy-tailed one that
    says nothing (Cauchy, prepared values in the thousands), and a surprisal column that knows nothing."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6))
    x[:, 5] = rng.standard_cauchy(n) * 20
    y = np.zeros(n, dtype=np.int64)
    y[:60] = 1
    x[:60, :4] = rng.normal(2.5, 0.5, size=(60, 4))
    return np.hstack([x, rng.random((n, 1))]), y


def test_proximity_is_not_decided_by_one_heavy_tailed_column() -> None:
    """With five labelled anomalies the prior blend leans on the distance to them; measured on clipped features,
    a noise column's extreme values no longer hide the anomalies' shared corner. The clip is kept with the model,
    and a state without it (fine-tuned before the clip) scores unclipped, as it always did."""
    from segscope.supervised.base import FineTuned, Layout
    from segscope.supervised.xgb import XGBoostLearner

    layout = Layout(6, 6, (0.0,) * 6 + (1.0,))
    (x_train, _), (x_test, y_test) = _heavy_tailed(4000, 0), _heavy_tailed(4000, 1)
    labels = np.zeros(4000, dtype=np.int64)
    labels[:5] = 1
    aucpr = {}
    for clip in (5.0, 1e9):
        tuned = FineTuned(XGBoostLearner(seed=0), n_features=6, seed=0, proximity_clip=clip)
        tuned.fit(x_train, labels, labels == 1, layout)
        assert tuned.blend_kind_ == "prior"
        aucpr[clip] = average_precision_score(y_test, tuned.predict_proba(x_test))
    assert aucpr[5.0] > 0.8 and aucpr[5.0] > aucpr[1e9] + 0.3
    assert tuned.describe()["proximity_clip"] == 1e9
    clipped = FineTuned(XGBoostLearner(seed=0), n_features=6, seed=0).fit(x_train, labels, labels == 1, layout)
    state = clipped.to_state()
    restored = FineTuned(XGBoostLearner(), n_features=6)
    restored.load_state(state, clipped.learner.artifact()[1])
    assert np.array_equal(restored.predict_proba(x_test), clipped.predict_proba(x_test))
    older = FineTuned(XGBoostLearner(), n_features=6)
    older.load_state({k: v for k, v in state.items() if k != "proximity_clip"}, clipped.learner.artifact()[1])
    assert average_precision_score(y_test, older.predict_proba(x_test)) < aucpr[5.0] - 0.3


def _interaction(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Anomalies that no sum of one-feature effects can rank: an extreme first feature is anomalous only with
    the second on the *opposite* side (4 prepared features, then a surprisal column that knows nothing)."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, 4))
    y = ((x[:, 0] > 0.9) & (x[:, 1] < 0.5)) | ((x[:, 0] < 0.1) & (x[:, 1] > 0.5))
    noise = rng.random((n, 1))
    return np.hstack([x, noise]), y.astype(np.int64)


@pytest.mark.parametrize(("labelled", "depth"), [(10, 1), (400, 4)])
def test_tree_depth_is_chosen_out_of_fold_only_when_labels_show_it(labelled: int, depth: int) -> None:
    """Stumps by default; depth 4 when enough labelled anomalies show, out of fold, that the anomalies are a
    combination of features."""
    from segscope.supervised.base import FineTuned, Layout
    from segscope.supervised.xgb import XGBoostLearner

    x, truth = _interaction(6000, seed=0)
    y = np.zeros_like(truth)
    y[np.flatnonzero(truth)[:labelled]] = 1
    layout = Layout(n_features=4, surprisal=4, monotone=(0.0, 0.0, 0.0, 0.0, 1.0))
    tuned = FineTuned(XGBoostLearner(seed=0), n_features=4, seed=0).fit(x, y, y == 1, layout)
    assert tuned.learner.get_params()["max_depth"] == depth
    assert tuned.describe()["learner_params"]["max_depth"] == depth  # what the bundle records
    fixed = FineTuned(XGBoostLearner(seed=0, max_depth=2), n_features=4, seed=0).fit(x, y, y == 1, layout)
    assert fixed.learner.get_params()["max_depth"] == 2  # a depth the user set is kept


def test_one_of_the_out_of_fold_choices_is_the_plain_xgboost_a_user_would_fit() -> None:
    """Among the configurations compared on the gate's folds is XGBoost as ``XGBClassifier()`` fits it (its
    defaults, every record weighted alike, unlabelled as normal): on the same matrix its predictions are the
    classifier's, to the last bit, whatever weights and monotone constraints the fine-tuning passes."""
    import xgboost as xgb

    from segscope.supervised.xgb import XGBoostLearner

    x, truth = _interaction(3000, seed=1)
    plain = [p for p in XGBoostLearner().alternatives() if p.get("plain")]
    assert plain == [{"max_depth": 6, "n_estimators": 100, "learning_rate": 0.3, "plain": True}]
    weight = np.where(truth == 1, 25.0, 0.2)  # the positive-unlabelled weights the other candidates get
    ours = XGBoostLearner(seed=3, **plain[0]).fit(x, truth, weight, np.array([0.0, 0.0, 0.0, 0.0, 1.0]))
    reference = xgb.XGBClassifier(n_jobs=2, random_state=3).fit(x, truth)
    np.testing.assert_allclose(ours.predict_raw(x), reference.predict_proba(x)[:, 1], rtol=0, atol=1e-7)


def test_the_blend_is_compared_out_of_fold_only_from_prior_below_labelled_anomalies() -> None:
    """From 30 labelled anomalies the learner's own parameters are compared out of fold, but the blend only from
    ``prior_below`` (75): with 50, the prior blend is taken even where the learner alone looks better out of fold
    (the comparison kept the learner where the prior blend was better on new data)."""
    from segscope.supervised.base import FineTuned, Layout
    from segscope.supervised.xgb import XGBoostLearner

    x, truth = _interaction(6000, seed=0)
    y = np.zeros_like(truth)
    y[np.flatnonzero(truth)[:50]] = 1
    layout = Layout(n_features=4, surprisal=4, monotone=(0.0, 0.0, 0.0, 0.0, 1.0))
    kinds = {}
    for prior_below in (PRIOR_BELOW, 30):
        tuned = FineTuned(XGBoostLearner(seed=0), n_features=4, seed=0, prior_below=prior_below)
        tuned.fit(x, y, y == 1, layout)
        assert tuned.learner.get_params()["max_depth"] == 4  # the learner's depth chosen out of fold either way
        kinds[prior_below] = tuned.blend_kind_
        oof = tuned.oof_aucpr_
    assert oof["learner"] > oof["prior"]
    assert kinds == {PRIOR_BELOW: "prior", 30: "learner"}


def test_a_few_positive_labels_promote_when_the_evidence_is_there() -> None:
    """Twenty labelled anomalies and no normal: the gate predicts the later ones from candidates taught on earlier
    records, ranks them against the unlabelled records (hundreds of frauds nobody labelled among them), and
    promotes a fine-tuning that finds the channel the unsupervised layer cannot see (permutation p about 0.002;
    ten of them give p about 0.021 however many permutations, not enough at the gate's 1%); the same labels on
    random records are refused."""
    history = _by_channel(6000, seed=0)
    model = Model(SegscopeConfig().with_features(id_column="txn_id", drop=("is_fraud",))).fit(history)
    phone = history.filter(pl.col("is_fraud") == 1).sample(20, seed=2)["txn_id"].to_list()
    _, report = finetune(model, history, normalise_labels(pl.DataFrame({"id": phone, "label": ["anomaly"] * 20})))
    assert report["split"].startswith("time-ordered on 'ts'")
    assert 0 < report["held_out_labelled_anomalies"] < 20  # the earliest block only teaches
    assert report["permutation_p_value"] <= 0.01
    assert report["promote"], report["reason"]
    noise = history.sample(10, seed=5)["txn_id"].to_list()
    _, refused = finetune(model, history, normalise_labels(pl.DataFrame({"id": noise, "label": ["anomaly"] * 10})))
    assert not refused["promote"]
    assert "label more anomalies" in refused["reason"] or "not better" in refused["reason"]


def test_the_gate_is_time_ordered_on_an_entity_event_time() -> None:
    """An entity's epoch-seconds time orders the gate: each block is predicted by a candidate taught on the blocks
    before it, so the earliest block's anomalies only teach."""
    history = make_transactions(5000, seed=0)
    history = history.with_columns((pl.col("ts").dt.epoch("s")).alias("event_s")).drop("ts")
    cfg = SegscopeConfig.model_validate(
        {
            "features": {"id_column": "txn_id", "drop": ["is_fraud", "event_s"]},
            "entities": [{"key": "merchant_category", "time": "event_s", "features": [{"kind": "since_last"}]}],
        }
    )
    model = Model(cfg).fit(history)
    labels = _labels(history, 30, normals=30)
    _, report = finetune(model, history, labels)
    assert report["split"].startswith("time-ordered on 'event_s'")
    assert 0 < report["held_out_labelled_anomalies"] < 30  # the first block only teaches


def test_event_times_order_records_whatever_their_type() -> None:
    """Datetimes, epoch numbers, and text holding either order the gate's blocks; unreadable values come first."""
    from segscope.tuning import _event_times

    iso = _event_times(pl.Series(["2025-01-02 10:00:00", "2025-01-01 09:00:00", None]))
    assert list(np.argsort(iso)) == [2, 1, 0]
    digits = _event_times(pl.Series(["1700000100", "1700000000", "x"]))
    assert list(np.argsort(digits)) == [2, 1, 0]
    stamps = _event_times(pl.Series([3, 1, 2]).cast(pl.Datetime("ms")))
    assert list(np.argsort(stamps)) == [1, 2, 0]
