"""The PyTorch learner: pre-training, deviation-loss fine-tuning, determinism, safe persistence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import average_precision_score

from segscope import Model
from segscope.config import SegscopeConfig
from segscope.labels.parse import normalise_labels
from segscope.supervised.nn import TorchLearner
from segscope.testing.data import make_transactions
from segscope.tuning import finetune


@pytest.fixture(scope="module")
def setup() -> tuple[Model, pl.DataFrame, pl.DataFrame]:
    history = make_transactions(8000, seed=0)
    model = Model(SegscopeConfig().with_features(id_column="txn_id", drop=("is_fraud",))).fit(history)
    fraud = history.filter(pl.col("is_fraud") == 1).sample(40, seed=2)
    labels = normalise_labels(pl.DataFrame({"id": fraud["txn_id"], "label": ["anomaly"] * 40}))
    return model, history, labels


def test_torch_fine_tuning_improves_and_is_deterministic(setup) -> None:
    model, history, labels = setup
    seen: list[tuple[str, int, int]] = []
    first, report = finetune(model, history, labels, learner="torch", on_progress=lambda *a: seen.append(a))
    second, _ = finetune(model, history, labels, learner="torch")
    new = make_transactions(3000, seed=5)
    a, b = first.score(new)["score"].to_numpy(), second.score(new)["score"].to_numpy()
    np.testing.assert_array_equal(a, b)  # deterministic per seed: same process, same CPU: exact
    y = new["is_fraud"].to_numpy()
    assert average_precision_score(y, a) > average_precision_score(y, model.score(new)["score"].to_numpy())
    assert report["supervised"]["learner"] == "torch"
    assert {"pre-training", "fine-tuning"} <= {phase for phase, _, _ in seen}


def test_torch_bundle_is_safetensors_and_round_trips(setup, tmp_path: Path) -> None:
    model, history, labels = setup
    tuned, _ = finetune(model, history, labels, learner="torch")
    tuned.save(tmp_path / "b")
    blob = (tmp_path / "b" / "supervised" / "torch.safetensors").read_bytes()
    header_len = int.from_bytes(blob[:8], "little")
    assert blob[8 : 8 + header_len].lstrip().startswith(b"{")  # safetensors: a JSON header, no pickle
    new = make_transactions(1000, seed=6)
    assert Model.load(tmp_path / "b").score(new)["score"].equals(tuned.score(new)["score"])


def test_continued_training_starts_from_the_previous_weights(setup) -> None:
    model, history, labels = setup
    tuned, _ = finetune(model, history, labels, learner="torch")
    again, report = finetune(tuned, history, labels, learner="torch")
    assert report["continued_from"] == tuned.version
    assert again.parent_version == tuned.version


def test_pretraining_is_label_free_and_shared() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 6))
    learner = TorchLearner(pretrain_epochs=2, finetune_steps=20)
    shared = learner.pretrain(x)
    y = np.zeros(500, dtype=np.int64)
    y[:5] = 1
    a = TorchLearner(pretrain_epochs=2, finetune_steps=20).fit(x, y, np.ones(500), np.zeros(6), pretrained=shared)
    b = TorchLearner(pretrain_epochs=2, finetune_steps=20).fit(x, y, np.ones(500), np.zeros(6), pretrained=shared)
    np.testing.assert_array_equal(a.predict_raw(x), b.predict_raw(x))
