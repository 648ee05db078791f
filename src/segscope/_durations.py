"""Durations in configs: ``30s``, ``5m``, ``1h``, ``30d``, ``2w``, or a plain number (a count of events)."""

from __future__ import annotations

import re

__all__ = ["duration_seconds"]

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h|d|w)$")
_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def duration_seconds(text: str | int) -> float:
    """'30s', '5m', '1h', '30d', '2w' -> seconds; a plain number is a count of events."""
    if isinstance(text, int) or str(text).isdigit():
        return float(text)
    match = _DURATION.match(str(text).strip())
    if match is None:
        raise ValueError(
            f"'{text}' is not a duration: write a number and a unit (30s, 5m, 1h, 30d, 2w) or a count of events"
        )
    return float(match.group(1)) * _SECONDS[match.group(2)]
