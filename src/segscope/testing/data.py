"""Synthetic card transactions with planted fraud, generated (not shipped), so demo and tests need no data."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import polars as pl

__all__ = ["make_card_stream", "make_transactions"]

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


_CARD_COUNTRIES: tuple[str, ...] = ("FR", "DE", "GB", "ES", "IT", "NL", "US", "PL", "SE", "PT", "BE", "IE")


def make_card_stream(
    n_cards: int = 2_000, *, days: int = 30, seed: int = 0, fraud_rate: float = 0.005, start: datetime | None = None
) -> pl.DataFrame:
    """Card payments in time order whose frauds look ordinary one by one: card-testing bursts (8-20 small
    payments within five minutes), a payment from a country the card never used, and an amount far from the
    card's own habit (though common among other cards). Columns: txn_id, ts, card_id, merchant, country, amount,
    is_fraud (1 = fraud)."""
    rng = np.random.default_rng(seed)
    start = start or datetime(2025, 3, 1)
    span = days * 86400.0
    habit = rng.uniform(2.0, 6.0, n_cards)  # each card's log-mean amount
    home = rng.integers(0, 6, n_cards)
    per_card = rng.poisson(rng.uniform(20, 120, n_cards))
    card = np.repeat(np.arange(n_cards), per_card)
    n = card.size
    t = rng.uniform(0, span, n)
    amount = np.exp(habit[card] + rng.normal(0, 0.35, n))
    country = np.where(rng.random(n) < 0.98, home[card], rng.integers(0, 6, n))
    favourite = rng.integers(0, 300, (n_cards, 6))
    merchant = np.where(rng.random(n) < 0.9, favourite[card, rng.integers(0, 6, n)], rng.integers(0, 300, n))
    fraud = np.zeros(n, dtype=np.int64)
    extra: list[tuple[np.ndarray, ...]] = []
    n_frauds = max(3, int(n * fraud_rate))
    kinds = rng.integers(0, 3, n_frauds)
    victims = rng.integers(0, n_cards, n_frauds)
    when = rng.uniform(span * 0.3, span, n_frauds)
    for kind, c, at in zip(kinds, victims, when, strict=True):
        if kind == 0:  # card testing: a burst of small payments at many merchants
            k = int(rng.integers(8, 21))
            bt = at + np.sort(rng.uniform(0, 300, k))
            amt = np.exp(rng.uniform(1.5, 3.0, k))
            extra.append((np.full(k, c), bt, amt, np.full(k, home[c]), rng.integers(0, 300, k)))
        elif kind == 1:  # a country this card never used, an amount it often pays
            away = rng.integers(6, len(_CARD_COUNTRIES))
            extra.append((np.array([c]), np.array([at]), np.exp(habit[c] + rng.normal(0, 0.35, 1)),
                          np.array([away]), np.array([favourite[c, 0]])))  # fmt: skip
        else:  # far from this card's habit, ordinary for others
            other = habit[c] + (2.5 if habit[c] < 4.0 else -2.5)
            extra.append((np.array([c]), np.array([at]), np.exp(other + rng.normal(0, 0.2, 1)),
                          np.array([home[c]]), rng.integers(0, 300, 1)))  # fmt: skip
    for c_, t_, a_, co_, m_ in extra:
        card, t, amount = np.concatenate([card, c_]), np.concatenate([t, t_]), np.concatenate([amount, a_])
        country, merchant = np.concatenate([country, co_]), np.concatenate([merchant, m_])
        fraud = np.concatenate([fraud, np.ones(c_.size, dtype=np.int64)])
    order = np.argsort(t, kind="stable")
    ts = pl.Series("ts", (t[order] * 1e6).astype(np.int64)).cast(pl.Duration("us")) + start
    return pl.DataFrame(
        {
            "txn_id": [f"t{i:07d}" for i in range(order.size)],
            "ts": ts,
            "card_id": [f"c{x:05d}" for x in card[order]],
            "merchant": [f"m{x:03d}" for x in merchant[order]],
            "country": [_CARD_COUNTRIES[x] for x in country[order]],
            "amount": np.round(amount[order], 2),
            "is_fraud": fraud[order],
        }
    )
