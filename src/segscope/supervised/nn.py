"""PyTorch learner: an encoder pre-trained without labels, then fine-tuned with a deviation loss.

* **pre-training** (no labels): a denoising autoencoder on the whole (unlabelled) history learns an encoder of
  the supervision matrix (prepared features plus the unsupervised layer's outputs);
* **fine-tuning**: a scoring head on the encoder is trained with DevNet's deviation loss (Pang et al., KDD
  2019), which fits "a few labelled anomalies, the rest unlabelled": unlabelled scores are pulled towards a
  N(0, 1) reference, labelled anomalies pushed at least ``margin`` standard deviations above it, in batches
  that are half labelled anomalies;
* categories: the trailing ``categories`` columns hold level codes, each looked up in an embedding learnt with
  the encoder (index ``levels`` = a value never seen at fit), so the network sees which category, not a number;
* CPU, deterministic for a seed; weights stored as safetensors (no pickle).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Self

import numpy as np

from segscope._deps import require
from segscope._params import Constraint, Interval, Sizes, StoresParams
from segscope.exceptions import NotFittedError

__all__ = ["TorchLearner"]


class TorchLearner(StoresParams):
    """``pretrain(x)`` (optional, shared across folds), ``fit(x, y, weight, monotone)``, ``predict_raw(x)``."""

    name = "torch"
    _not_params = ("progress",)  # a display hook, not part of the model
    _constraints: ClassVar[dict[str, Constraint]] = {
        "hidden": Interval(int, 1, 100_000),
        "latent": Interval(int, 1, 100_000),
        "pretrain_epochs": Interval(int, 0, 10_000),
        "finetune_steps": Interval(int, 1, 10_000_000),
        "batch_size": Interval(int, 2, 1_000_000),
        "learning_rate": Interval(float, 0.0, 1.0, closed="right"),
        "margin": Interval(float, 0.0, 1000.0, closed="right"),
        "seed": Interval(int, 0, 2**32 - 1),
        "categories": Sizes(low=1),
    }

    def __init__(
        self,
        *,
        hidden: int = 64,
        latent: int = 16,
        pretrain_epochs: int = 8,
        finetune_steps: int = 300,
        batch_size: int = 256,
        learning_rate: float = 1e-3,
        margin: float = 5.0,
        seed: int = 0,
        categories: list[int] | tuple[int, ...] = (),
        progress: Callable[[str, int, int], None] | None = None,
    ) -> None:
        self.hidden = hidden
        self.latent = latent
        self.pretrain_epochs = pretrain_epochs
        self.finetune_steps = finetune_steps
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.margin = margin
        self.seed = seed
        self.categories = categories
        self.progress = progress

    # ------------------------------------------------------------------ model
    def _torch(self) -> Any:
        torch = require("torch", extra="torch", feature="the PyTorch learner")
        torch.manual_seed(self.seed)
        torch.set_num_threads(2)
        torch.use_deterministic_algorithms(True)
        return torch

    def _build(self, n_numeric: int) -> tuple[Any, Any, Any, Any]:
        """(embeddings, encoder, decoder, head): the encoder reads the numeric columns and one embedding per
        category column; the decoder rebuilds the numeric columns."""
        torch = self._torch()
        nn = torch.nn
        embeddings = nn.ModuleList([nn.Embedding(n + 1, _embedding_size(n)) for n in self.categories])
        n_in = n_numeric + sum(_embedding_size(n) for n in self.categories)
        encoder = nn.Sequential(nn.Linear(n_in, self.hidden), nn.ReLU(), nn.Linear(self.hidden, self.latent), nn.ReLU())
        decoder = nn.Sequential(nn.Linear(self.latent, self.hidden), nn.ReLU(), nn.Linear(self.hidden, n_numeric))
        head = nn.Linear(self.latent, 1)
        return embeddings, encoder, decoder, head

    def _split(self, x: np.ndarray, dtype: type = np.float32) -> tuple[Any, Any]:
        """(standardised numeric columns, category indices) as tensors."""
        torch = self._torch()
        n_codes = len(self.categories)
        numeric = x[:, : x.shape[1] - n_codes]
        codes = x[:, x.shape[1] - n_codes :]
        levels = np.asarray(self.categories, dtype=np.float64)
        index = np.where(np.isnan(codes) | (codes < 0) | (codes >= levels), levels, codes).astype(np.int64)
        return torch.from_numpy(self._standardise(numeric, dtype)), torch.from_numpy(index)

    @staticmethod
    def _encode(embeddings: Any, encoder: Any, numeric: Any, index: Any) -> Any:
        torch = require("torch", extra="torch", feature="the PyTorch learner")
        parts = [numeric, *(e(index[:, j]) for j, e in enumerate(embeddings))]
        return encoder(torch.cat(parts, dim=1) if len(parts) > 1 else numeric)

    def _standardise(self, x: np.ndarray, dtype: type = np.float32) -> np.ndarray:
        return np.asarray(np.clip((x - self.mean_) / self.std_, -10.0, 10.0), dtype=dtype)

    def _freeze(self) -> None:
        """A float64 copy of the fitted network for scoring: float32 matrix products are summed in an order that
        depends on the batch's size, so a record's score would move in the 7th digit with its batch-mates."""
        import copy

        self.scorer_ = tuple(copy.deepcopy(m).double().eval() for m in (self.embeddings_, self.encoder_, self.head_))

    def _report(self, phase: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(phase, done, total)

    def alternatives(self) -> list[dict[str, Any]]:
        """No parameters are compared out of fold."""
        return []

    def pretrain(self, x: np.ndarray) -> dict[str, Any]:
        """Denoising-autoencoder pre-training on all rows (no labels); returns the encoder state to share."""
        self.check_params()
        torch = self._torch()
        numeric = x[:, : x.shape[1] - len(self.categories)]
        self.mean_ = numeric.mean(axis=0)
        self.std_ = np.where(numeric.std(axis=0) > 0, numeric.std(axis=0), 1.0)
        data, index = self._split(x)
        embeddings, encoder, decoder, _ = self._build(data.shape[1])
        optimiser = torch.optim.Adam(
            [*embeddings.parameters(), *encoder.parameters(), *decoder.parameters()], lr=self.learning_rate
        )
        generator = torch.Generator().manual_seed(self.seed)
        for epoch in range(self.pretrain_epochs):
            order = torch.randperm(data.shape[0], generator=generator)
            for start in range(0, data.shape[0], self.batch_size):
                rows = order[start : start + self.batch_size]
                batch = data[rows]
                noisy = batch + 0.1 * torch.randn(batch.shape, generator=generator)
                loss = torch.mean((decoder(self._encode(embeddings, encoder, noisy, index[rows])) - batch) ** 2)
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
            self._report("pre-training", epoch + 1, self.pretrain_epochs)
        return {
            "embeddings": {k: v.clone() for k, v in embeddings.state_dict().items()},
            "encoder": {k: v.clone() for k, v in encoder.state_dict().items()},
            "mean": self.mean_,
            "std": self.std_,
        }

    def fit(
        self,
        x: np.ndarray,
        y: np.ndarray,
        weight: np.ndarray,
        monotone: np.ndarray,
        *,
        init: bytes | None = None,
        pretrained: dict[str, Any] | None = None,
    ) -> Self:
        self.check_params()
        torch = self._torch()
        if init is not None:  # continue from the previous version's weights
            self._load_bytes(init)
        else:
            shared = pretrained if pretrained is not None else self.pretrain(x)
            self.mean_, self.std_ = shared["mean"], shared["std"]
            self.embeddings_, self.encoder_, _, self.head_ = self._build(self.mean_.shape[0])
            self.embeddings_.load_state_dict(shared["embeddings"])
            self.encoder_.load_state_dict(shared["encoder"])
        data, index = self._split(x)
        pos = torch.from_numpy(np.flatnonzero(y == 1))
        rest = torch.from_numpy(np.flatnonzero(y != 1))
        parameters = [*self.embeddings_.parameters(), *self.encoder_.parameters(), *self.head_.parameters()]
        optimiser = torch.optim.Adam(parameters, lr=self.learning_rate)
        generator = torch.Generator().manual_seed(self.seed + 1)
        reference = torch.randn(5000, generator=generator)
        mu, sigma = reference.mean(), reference.std()
        half = self.batch_size // 2
        for step in range(self.finetune_steps):
            p = pos[torch.randint(len(pos), (half,), generator=generator)]
            u = rest[torch.randint(len(rest), (half,), generator=generator)] if len(rest) else p
            rows = torch.cat([p, u])
            target = torch.cat([torch.ones(half), torch.zeros(len(u))])
            encoded = self._encode(self.embeddings_, self.encoder_, data[rows], index[rows])
            dev = (self.head_(encoded).squeeze(1) - mu) / sigma
            loss = torch.mean((1 - target) * dev.abs() + target * torch.clamp(self.margin - dev, min=0))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            if (step + 1) % 50 == 0 or step + 1 == self.finetune_steps:
                self._report("fine-tuning", step + 1, self.finetune_steps)
        self.sigma_ = float(sigma)
        self.mu_ = float(mu)
        self._freeze()
        return self

    def predict_raw(self, x: np.ndarray) -> np.ndarray:
        if not hasattr(self, "head_"):
            raise NotFittedError("TorchLearner is not fitted; call fit first")
        torch = self._torch()
        embeddings, encoder, head = self.scorer_
        with torch.no_grad():
            data, index = self._split(x, np.float64)
            dev = (head(self._encode(embeddings, encoder, data, index)).squeeze(1) - self.mu_) / self.sigma_
        # the deviation is a logit: FineTuned takes logit(predict_raw) back to it
        return np.asarray(torch.sigmoid(dev).numpy())

    # ------------------------------------------------------------ persist
    def artifact(self) -> tuple[str, bytes]:
        safetensors = require("safetensors.torch", extra="torch", feature="saving the PyTorch learner")
        torch = self._torch()
        tensors = {f"encoder.{k}": v.contiguous() for k, v in self.encoder_.state_dict().items()}
        tensors |= {f"head.{k}": v.contiguous() for k, v in self.head_.state_dict().items()}
        tensors |= {f"embeddings.{k}": v.contiguous() for k, v in self.embeddings_.state_dict().items()}
        tensors["mean"] = torch.from_numpy(np.asarray(self.mean_, dtype=np.float64))
        tensors["std"] = torch.from_numpy(np.asarray(self.std_, dtype=np.float64))
        tensors["mu_sigma"] = torch.tensor([self.mu_, self.sigma_], dtype=torch.float64)
        return "torch.safetensors", bytes(safetensors.save(tensors))

    def _load_bytes(self, blob: bytes) -> None:
        safetensors = require("safetensors.torch", extra="torch", feature="loading the PyTorch learner")
        tensors = safetensors.load(blob)
        self.mean_ = tensors["mean"].numpy()
        self.std_ = tensors["std"].numpy()
        self.mu_, self.sigma_ = (float(v) for v in tensors["mu_sigma"])
        self.embeddings_, self.encoder_, _, self.head_ = self._build(self.mean_.shape[0])
        self.embeddings_.load_state_dict({k[11:]: v for k, v in tensors.items() if k.startswith("embeddings.")})
        self.encoder_.load_state_dict({k[8:]: v for k, v in tensors.items() if k.startswith("encoder.")})
        self.head_.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("head.")})

    def load_artifact(self, blob: bytes) -> None:
        self._load_bytes(blob)
        self._freeze()

    def n_inputs(self) -> int:
        """Columns the fitted model reads: its numeric inputs, then one code per category."""
        return int(self.mean_.shape[0]) + len(self.categories)


def _embedding_size(levels: int) -> int:
    """Embedding width for a category with ``levels`` levels (fast.ai's rule of thumb, at most 16)."""
    return int(min(16, round(1.6 * (levels + 1) ** 0.56)))
