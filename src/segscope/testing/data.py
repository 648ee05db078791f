"""Synthetic card transactions with planted fraud, generated (not shipped), so demo and tests need no data."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import polars as pl

__all__ = ["make_transactions"]

_CATEGORIES = {  # name: (share, log-mean amount, log-sd)
    "grocery": (0.34, 3.4, 0.5),
    "fuel": (0.18, 3.7, 0.3),
    "restaurants": (0.2, 3.2, 0.6),
    "online": (0.2, 3.9, 0.9),
    "travel": (0.08, 5.6, 0.7),
}
_COUNTRIES = ["US", "CA", "GB", "MX", "DE"]


def make_transactions(
    n: int = 20_000, *, seed: int = 0, anomaly_rate: float = 0.01, start: datetime | None = None
) -> pl.DataFrame:
    """Card transactions with an ``is_fraud`` label (1 = planted anomaly) and a unique ``txn_id``.

    Normal records: amounts depend on merchant category, most in the home country with the card present,
    daytime hours. Planted fraud mixes four known patterns: card testing (tiny online amounts, many recent
    transactions), account takeover (large amount abroad, card not present, at night), travel-category
    amount spikes, and very distant merchants.
    """
    rng = np.random.default_rng(seed)
    start = start or datetime(2026, 1, 1)
    names = list(_CATEGORIES)
    shares = np.array([_CATEGORIES[c][0] for c in names])
    cat_idx = rng.choice(len(names), size=n, p=shares / shares.sum())
    mu = np.array([_CATEGORIES[c][1] for c in names])[cat_idx]
    sd = np.array([_CATEGORIES[c][2] for c in names])[cat_idx]
    amount = np.round(np.exp(rng.normal(mu, sd)), 2)
    hour = np.clip(rng.normal(14, 3.5, n), 0, 23.99)
    day = np.sort(rng.uniform(0, 30, n).astype(int))
    ts = [start + timedelta(days=int(d), hours=float(h)) for d, h in zip(day, hour, strict=True)]
    country = np.where(rng.random(n) < 0.95, "US", rng.choice(_COUNTRIES[1:3], size=n))
    card_present = rng.random(n) < np.where(np.array(names)[cat_idx] == "online", 0.02, 0.9)
    n_txn_24h = rng.poisson(3, n)
    distance_km = np.round(rng.exponential(8, n), 1)
    label = np.zeros(n, dtype=np.int64)

    n_anom = round(n * anomaly_rate)
    idx = rng.choice(n, size=n_anom, replace=False)
    for k, i in enumerate(idx):
        pattern = k % 4
        label[i] = 1
        if pattern == 0:  # card testing
            cat_idx[i] = names.index("online")
            amount[i] = round(float(rng.uniform(0.5, 2.0)), 2)
            n_txn_24h[i] = int(rng.integers(25, 60))
            card_present[i] = False
        elif pattern == 1:  # account takeover abroad at night
            amount[i] = round(float(np.exp(rng.normal(6.5, 0.4))), 2)
            country[i] = str(rng.choice(["NG", "RU", "BR", "VN"]))
            card_present[i] = False
            ts[i] = ts[i].replace(hour=int(rng.integers(1, 5)))
        elif pattern == 2:  # travel spike
            cat_idx[i] = names.index("travel")
            amount[i] = round(float(np.exp(rng.normal(8.3, 0.3))), 2)
        else:  # distant merchant, card present
            distance_km[i] = round(float(rng.uniform(3000, 9000)), 1)
            n_txn_24h[i] = int(rng.integers(8, 15))
    return pl.DataFrame(
        {
            "txn_id": [f"t{seed:02d}-{i:07d}" for i in range(n)],
            "ts": pl.Series(ts, dtype=pl.Datetime("us")),
            "amount": amount,
            "merchant_category": np.array(names)[cat_idx],
            "country": country,
            "card_present": card_present,
            "n_txn_24h": n_txn_24h.astype(np.int64),
            "distance_km": distance_km,
            "is_fraud": label,
        }
    )
