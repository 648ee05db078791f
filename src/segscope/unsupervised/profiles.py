"""Segment profile cards: what each segment is, for people (``segscope inspect``, the report, the page) and for
reasons (a member's values are compared with its own segment's typical values).

A card holds the segment's size and share of the history, its alert rate at fit, the features that set it
apart (mean difference against the rest, in units of the feature's spread over the history) and every
feature's typical value there.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from segscope.unsupervised.explain import readable_typical

__all__ = ["CardView", "ExpectedTable", "card_view", "expected_rows", "expected_table", "profile_cards"]


def profile_cards(
    segments: np.ndarray,
    labels: np.ndarray,
    x: np.ndarray,
    names: list[str],
    expected_overall: dict[str, str],
    readable: np.ndarray,
    categorical: dict[int, pl.Series],
    alerts: np.ndarray | None,
) -> list[dict[str, Any]]:
    """One card per segment id in ``segments`` (then noise, -1), from the fit rows' assignments ``labels``,
    prepared matrix ``x``, readable values (see ``FeaturePreparer.readable_values``) and alert decisions."""
    cards = []
    spread = x.std(axis=0)
    for seg in [*segments.tolist(), -1]:
        members = labels == seg
        if not members.any():
            continue
        rest = ~members
        mean_in, mean_out = x[members].mean(axis=0), x[rest].mean(axis=0) if rest.any() else x.mean(axis=0)
        # in units of the feature's spread over the whole history: a within-group spread (Cohen's d) is 0 for a
        # flag that is 1 in exactly this segment, and the effect came out in the billions
        effect = (mean_in - mean_out) / (spread + 1e-9)
        top = np.argsort(-np.abs(effect))[:5]
        with warnings.catch_warnings():  # categorical columns are all-NaN here: their typical value is the mode
            warnings.simplefilter("ignore", RuntimeWarning)
            medians = np.nanmedian(readable[members], axis=0)
        typical: list[Any] = [None if np.isnan(v) else round(float(v), 4) for v in medians]
        typical_text = readable_typical(medians, names)
        for j, strings in categorical.items():
            typical[j] = typical_text[j] = strings.filter(pl.Series(members)).mode().sort()[0]
        cards.append(
            {
                "segment": int(seg),
                "size": int(members.sum()),
                "share": float(members.mean()),
                "anomaly_rate": float(alerts[members].mean()) if alerts is not None else None,
                "distinguishing": [
                    {
                        "feature": names[j],
                        "effect_size": round(float(effect[j]), 3),
                        "typical": typical[j],
                        "expected_overall": expected_overall[names[j]],
                    }
                    for j in top
                ],
                # every feature's typical value in the segment: what reasons compare a member's values with
                "typical_values": dict(zip(names, typical_text, strict=True)),
            }
        )
    return cards


#: Per-segment typical values: (values, flattened rows x features; segment ids with a card, ascending; their
#: rows). The last row holds the overall values.
ExpectedTable = tuple[pl.Series, np.ndarray, np.ndarray]


def expected_table(cards: list[dict[str, Any]], names: list[str], overall: list[str]) -> ExpectedTable | None:
    """Per-segment typical values for reasons; the last row holds the overall values, for noise and segments
    without a card. Segment ids are looked up, not used as positions: a card's id (from a bundle) sizes nothing."""
    if any(type(c["segment"]) is not int for c in cards):
        raise ValueError("a segment profile's id is not a whole number")
    cards = sorted((c for c in cards if c["segment"] >= 0 and "typical_values" in c), key=lambda c: c["segment"])
    if not cards:
        return None
    rows = [*([c["typical_values"][f] for f in names] for c in cards), overall]
    table = pl.Series("expected", [v for row in rows for v in row], dtype=pl.String)
    ids = np.array([c["segment"] for c in cards], dtype=np.int64)
    if np.any(ids[1:] == ids[:-1]):
        raise ValueError(f"two segment profiles have the id {int(ids[1:][ids[1:] == ids[:-1]][0])}")
    return table, ids, np.arange(len(cards), dtype=np.int64)


def expected_rows(table: ExpectedTable, segments: np.ndarray) -> tuple[pl.Series, np.ndarray]:
    """(values, each record's row of them) for records assigned to ``segments``."""
    values, ids, rows = table
    at = np.minimum(np.searchsorted(ids, segments), ids.size - 1)
    return values, np.where(ids[at] == segments, rows[at], rows.size)


@dataclass(frozen=True)
class CardView:
    """A card as people read it (shared by ``segscope inspect`` and the report)."""

    segment: int
    name: str
    size: int
    share: float
    anomaly_rate: float | None
    #: (feature, effect size, typical value here, overall value), strongest first
    distinguishing: list[tuple[str, float, str, str]]


def card_view(card: dict[str, Any]) -> CardView:
    typical = card.get("typical_values", {})
    return CardView(
        segment=int(card["segment"]),
        name="noise" if card["segment"] < 0 else f"segment {card['segment']}",
        size=int(card["size"]),
        share=float(card["share"]),
        anomaly_rate=card["anomaly_rate"],
        distinguishing=[
            (
                d["feature"],
                float(d["effect_size"]),
                str(typical.get(d["feature"], d["typical"])),
                str(d["expected_overall"]),
            )
            for d in card["distinguishing"]
        ],
    )
