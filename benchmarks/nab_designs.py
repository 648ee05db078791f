"""Alarm designs for the maintenance pack on the whole NAB corpus, measured before any goes into the pack.

    python benchmarks/nab_designs.py --nab PATH/TO/NAB [--out nab_designs]

The pack as shipped alarms when a reading falls on a level its machine never had, or when a sensor holds one value
longer than it ever did, at most once per 12 hours (benchmarks/nab_corpus.py). This script runs the pack once per
series (fit on the probationary rows, the rest scored in order, as nab_corpus.py does), keeps each row's entity
features, levels and score, and then re-decides the alarms under other designs, so that each costs seconds:

* where the points go: windows missed, alarms outside any window (each costs the profile's false-positive weight);
* the level grid: 16, 24, 48 levels instead of 32; a new level only when it is two or more levels from every known
  one; only a level beyond the known range;
* a new level only where the reading is also at least 1, 1.5 or 2 deviations from its trailing hour's or day's
  mean (the pack's ``zscore`` features);
* new levels plus a drop below the hour of day's usual level (the rule of the pack's ``seasonal_drop``, its
  settings varied one at a time; above the hour's level, or either side, instead of below);
* the shipped alarms with a cooldown an escalation gets through (a new level far further out than the one that
  opened it);
* fewer alarms from series that keep reaching new levels: after a series' first 5, 8, 10 or 20 new levels only a
  new level two or more levels from every known one alarms, and after its first 30 one three or more (a ladder;
  with and without the escalation; with a creep: a new level 2-12 levels past the range known when a new level
  last alarmed alarms whatever the ladder; with ``stuck`` only once a hold has lasted 0-48 hours, and under 5
  hours the ladder's counts and the cooldown again); a new level only
  when 2 or 3 of the last 2-5 readings lie on levels unknown before them (a move that lasts); a cooldown that
  grows with the series' alarms of the last days;
* adapted detectors (``--no-adapted`` skips them): the pack's detectors (iforest + ecod) refitted every day on the
  trailing 7 days of the machine's entity features (the rows that alarmed left out), each row's score ranked
  against the refit rows' own scores (p in [0, 1]); a new level alarms only when its p is at least 0.95, 0.98 or
  0.99 (rows before the first refit keep the plain rule).

Every design is scored with NAB's rules at corpus level (standard, low-FP, low-FN profiles and per category), and
on the two categories the pack's defaults are chosen on (realKnownCause, realAWSCloudwatch). Writes
benchmarks/results/<out>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from nab_corpus import CONFIGS, TUNED_ON, corpus_windows, load_series, score_file, table

from segscope.config import load_config
from segscope.features._entity_kernel import cool_down
from segscope.features.levels import codes, grids, ranges
from segscope.model import Model
from segscope.unsupervised.detect import make_detector
from segscope.unsupervised.ensemble import AnomalyEnsemble

RESULTS = Path(__file__).parent / "results"
HOUR = 3600.0


class Series:
    """One series as the pack scored it: the scored rows' times, features, alarms and levels."""

    def __init__(self, nab: Path, name: str, model_config: Any) -> None:
        frame = load_series(nab, name)
        self.name = name
        self.stamps = frame["timestamp"].to_list()
        self.probation = int(min(np.floor(0.15 * frame.height), 750))
        model = Model(model_config).fit(frame[: self.probation])
        rest = frame[self.probation :]
        features = model.with_entities(rest, model.new_state())
        self.feature_names = list(model.entity_features)
        self.x = np.clip(np.nan_to_num(features.select(self.feature_names).to_numpy(), nan=0.0), -1e6, 1e6)
        self.t = rest["timestamp"].cast(pl.Int64).to_numpy() / 1e6
        (stuck,) = [n for n in self.feature_names if n.endswith("_stuck")]
        self.stuck = features[stuck].to_numpy() == 1
        self.values = frame["value"].to_numpy().astype(float)

    def level_codes(self, levels: int) -> np.ndarray:
        """Every row's level on the pack's own grid (the probationary rows' range cut into ``levels``)."""
        grid = grids({"value": ranges(self.values[: self.probation], None)}, {"value": levels})["value"]
        return np.asarray(codes(self.values, None, grid).to_numpy())

    def new_levels(self, levels: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each scored row: on a new level, its distance in levels to the nearest known one, beyond the known range."""
        code = self.level_codes(levels)
        known = set(code[: self.probation].tolist())
        rest = code[self.probation :]
        new, dist, beyond = np.zeros(rest.size, bool), np.zeros(rest.size), np.zeros(rest.size, bool)
        lo, hi = min(known), max(known)
        for i, c in enumerate(rest.tolist()):
            if c not in known:
                new[i], dist[i], beyond[i] = True, min(abs(c - k) for k in known), c < lo or c > hi
                known.add(c)
                lo, hi = min(lo, c), max(hi, c)
        return new, dist, beyond

    def adapted(self, every: float, window: float, left_out: np.ndarray, detectors: list[str]) -> np.ndarray:
        """Each row's rank against the rows of its refit (NaN before the first refit)."""
        p = np.full(self.t.size, np.nan)
        for edge in np.arange(self.t[0] + every, self.t[-1] + every, every):
            train = (self.t >= edge - window) & (self.t < edge) & ~left_out
            nxt = (self.t >= edge) & (self.t < edge + every)
            if train.sum() < 50 or not nxt.any():
                continue
            ensemble = AnomalyEnsemble([make_detector(d) for d in detectors]).fit(self.x[train])
            own = np.sort(ensemble.score(self.x[train]))
            p[nxt] = np.searchsorted(own, ensemble.score(self.x[nxt]), side="right") / (own.size + 1)
        return p

    def deviations(self) -> np.ndarray:
        """Each scored row's larger absolute z-score against its trailing hour and day (the pack's features)."""
        at = [self.feature_names.index(n) for n in self.feature_names if "_zscore_" in n]
        return np.abs(self.x[:, at]).max(axis=1)

    def below_hour(
        self, deviations: float, span: int, weight: float, share: float | None, sign: int = -1
    ) -> np.ndarray:
        """Each scored row: its smoothed deviation from its hour of day's level (an exponentially weighted mean and
        spread per hour, ``weight`` a reading; the deviation smoothed over ``span`` readings) at least
        ``deviations`` below it (``sign`` -1; +1: above; 0: either way), where the hours' mean spread is at most
        ``share`` of the series' own (weight 0.01; None: any series). The probationary rows teach it too."""
        stamps = np.array(self.stamps, dtype="datetime64[s]").astype(np.int64)
        hours = (stamps % 86400) // 3600
        level, spread, count = np.zeros(24), np.zeros(24), np.zeros(24)
        series, smooth, alpha = [0.0, 0.0, 0.0], np.nan, 2.0 / (span + 1)
        out = np.zeros(stamps.size, bool)
        for i, (x, h) in enumerate(zip(self.values, hours, strict=True)):
            if count[h] >= 3 and series[2] >= 2:
                z = (x - level[h]) / (np.sqrt(spread[h]) + 1e-9 * (1 + abs(level[h])))
                smooth = z if np.isnan(smooth) else alpha * z + (1 - alpha) * smooth
                periodic = share is None or spread[count >= 3].mean() <= share * series[1]
                out[i] = periodic and (smooth * sign >= deviations if sign else abs(smooth) >= deviations)
            if count[h] == 0:
                level[h] = x
            else:
                d = x - level[h]
                level[h] += weight * d
                spread[h] = (1 - weight) * (spread[h] + weight * d * d)
            count[h] += 1
            if series[2] == 0:
                series[0] = x
            else:
                d = x - series[0]
                series[0] += 0.01 * d
                series[1] = 0.99 * (series[1] + 0.01 * d * d)
            series[2] += 1
        return out[self.probation :]

    def cooled(self, alarms: np.ndarray, gap_hours: float = 12.0) -> np.ndarray:
        out, never = alarms.copy(), np.array([-np.inf])
        cool_down(out, np.zeros(out.size, np.int64), self.t, never, never.copy(), gap_hours * HOUR, 0.0)
        return out

    def escalating(self, alarms: np.ndarray, severity: np.ndarray, times: float, floor: float) -> np.ndarray:
        """:meth:`cooled`, except that an alarm within the cooldown stands when its ``severity`` is at least
        ``floor`` and ``times`` that of the alarm that opened the cooldown (which it then opens again)."""
        out, last, opened = np.zeros(alarms.size, bool), -np.inf, 0.0
        for i in np.flatnonzero(alarms):
            if self.t[i] - last >= 12 * HOUR or severity[i] >= max(floor, times * opened):
                out[i], last, opened = True, self.t[i], severity[i]
        return out

    def persistent(self, within: int, at_least: int, levels: int = 32) -> np.ndarray:
        """Each scored row: a new level among the last ``within`` readings, and at least ``at_least`` of them on
        levels unknown before the first of them (a move that lasts, not a single reading)."""
        code = self.level_codes(levels)
        seen: dict[int, int] = {}
        first = np.empty(code.size)
        for i, c in enumerate(code.tolist()):
            first[i] = seen.setdefault(c, i if i >= self.probation else -1)
        first = first[self.probation :] - self.probation
        new = self.new_levels(levels)[0]
        out = np.zeros(first.size, bool)
        for i in range(first.size):
            start = max(0, i - within + 1)
            out[i] = new[start : i + 1].any() and int((first[start : i + 1] >= start).sum()) >= at_least
        return out

    def creeping(self, creep: float, two: int = 8, three: int = 30, levels: int = 32) -> np.ndarray:
        """The ladder (after the first ``two`` new levels only one 2+ levels from every known one, after ``three``
        3+), except that a new level ``creep`` or more levels beyond the range known when a new level last alarmed
        alarms too (a slow creep cannot stay quiet)."""
        code = self.level_codes(levels)
        known = set(code[: self.probation].tolist())
        low, high = min(known), max(known)
        out, count = np.zeros(code.size - self.probation, bool), 0
        for i, c in enumerate(code[self.probation :].tolist()):
            if c not in known:
                far = 1 + (count >= two) + (count >= three)
                out[i] = min(abs(c - k) for k in known) >= far or not low - creep < c < high + creep
                known.add(c)
                count += 1
                if out[i]:
                    low, high = min(known), max(known)
        return out

    def held(self, min_hours: float, factor: float = 1.0) -> np.ndarray:
        """Each scored row: a hold (one value repeated) that has outlasted ``factor`` x the longest hold before it
        and ``min_hours`` as well, once per hold (the pack's ``stuck`` at factor 1 and 0 hours)."""
        t = np.array(self.stamps, dtype="datetime64[s]").astype(np.int64).astype(float)
        out, start, longest, fired = np.zeros(self.values.size, bool), 0, 0.0, False
        for i in range(1, self.values.size):
            if self.values[i] != self.values[i - 1] or np.isnan(self.values[i]):
                longest, start, fired = max(longest, t[i - 1] - t[start]), i, False
            elif not fired and t[i] - t[start] > max(factor * longest, min_hours * HOUR):
                out[i] = fired = True
        return out[self.probation :]

    def growing(self, alarms: np.ndarray, base_hours: float, days: float, growth: float) -> np.ndarray:
        """A cooldown of ``base_hours`` x ``growth`` ** (alarms in the last ``days``): a series that keeps alarming
        is heard less often."""
        out, times, last = np.zeros(alarms.size, bool), [], -np.inf
        for i in np.flatnonzero(alarms):
            recent = sum(1 for t in times if self.t[i] - t < days * 24 * HOUR)
            if self.t[i] - last >= base_hours * HOUR * growth**recent:
                out[i], last = True, self.t[i]
                times.append(self.t[i])
        return out

    def full(self, alarms: np.ndarray) -> np.ndarray:
        return np.concatenate([np.zeros(self.probation, bool), alarms])


def where_points_go(series: list[Series], alarms: dict[str, np.ndarray], windows: dict[str, Any]) -> dict[str, int]:
    missed = outside = 0
    for s in series:
        stamps = np.array(s.stamps, dtype="datetime64[us]")
        inside = np.zeros(len(stamps), bool)
        for start, end in windows[s.name]:
            span = (stamps >= np.datetime64(start)) & (stamps <= np.datetime64(end))
            inside |= span
            missed += not (alarms[s.name] & span).any()
        outside += int((alarms[s.name] & ~inside).sum())
    return {"windows_missed": missed, "alarms_outside_windows": outside}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nab", required=True, help="a copy of github.com/numenta/NAB (data/, labels/)")
    parser.add_argument("--out", default="nab_designs")
    parser.add_argument("--only", default=None, help="comma-separated categories (a quick look; the table is all)")
    parser.add_argument(
        "--no-adapted", dest="adapted", action="store_false", help="skip the adapted detectors (most of the time)"
    )
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    nab, cfg = Path(args.nab), load_config(CONFIGS / "maintenance.yaml")
    windows = corpus_windows(nab)
    series = []
    only = tuple(args.only.split(",")) if args.only else None
    for name in sorted(windows):
        if only and name.split("/")[0] not in only:
            continue
        series.append(Series(nab, name, cfg))
        print("fitted", name, flush=True)
    levels = {n: {s.name: s.new_levels(n) for s in series} for n in (16, 24, 32, 48)}
    detectors = [d.name for d in cfg.detectors]

    def design(rule: Callable[[Series], np.ndarray]) -> dict[str, np.ndarray]:
        return {s.name: s.full(s.cooled(rule(s) | s.stuck)) for s in series}

    designs: dict[str, dict[str, np.ndarray]] = {
        "new levels and stuck (32 levels; the pack before seasonal_drop)": design(lambda s: levels[32][s.name][0])
    }
    for n in (16, 24, 48):
        designs[f"{n} levels"] = design(lambda s, n=n: levels[n][s.name][0])
    designs["a new level two or more levels from every known one"] = design(
        lambda s: levels[32][s.name][0] & (levels[32][s.name][1] >= 2)
    )
    designs["a new level beyond the known range only"] = design(lambda s: levels[32][s.name][0] & levels[32][s.name][2])
    for t in (1.0, 1.5, 2.0):  # the reading also far from the trailing hour's or day's mean (the pack's zscores)
        designs[f"a new level at least {t:g} trailing-hour or trailing-day deviations away"] = design(
            lambda s, t=t: levels[32][s.name][0] & (s.deviations() >= t)
        )
    # a drop below the hour of day's usual level (seasonal_drop; shipped: 3 deviations, span 6, weight 0.1, 0.5)
    seasonal = [(3.0, 6, 0.1, 0.5, -1), (2.5, 6, 0.1, 0.5, -1), (3.5, 6, 0.1, 0.5, -1), (3.0, 4, 0.1, 0.5, -1)]
    seasonal += [(3.0, 10, 0.1, 0.5, -1), (3.0, 6, 0.05, 0.5, -1), (3.0, 6, 0.2, 0.5, -1), (3.0, 6, 0.1, None, -1)]
    seasonal += [(3.0, 6, 0.1, 0.25, -1), (3.0, 6, 0.1, 0.5, 1), (3.0, 6, 0.1, 0.5, 0)]
    for deviations, span, weight, share, sign in seasonal:
        way = {-1: "below", 1: "above", 0: "either side of"}[sign]
        label = f"new levels and stuck, plus {deviations:g} deviations {way} the hour's level (span {span}, weight"
        label += f" {weight:g}, " + (f"hours' spread <= {share:g} of the series')" if share else "any series)")
        designs[label] = design(
            lambda s, a=(deviations, span, weight, share, sign): levels[32][s.name][0] | s.below_hour(*a)
        )
    # the shipped alarms with a cooldown that lets an escalation through: a new level farther (in levels) from every
    # known one than k times the alarm that opened the cooldown, and at least 3 levels away
    for k in (2.0, 3.0, 5.0):
        label = f"as shipped, a new level {k:g} times as far out as the cooldown's first alarm (>= 3 levels) stands"
        designs[label] = {
            s.name: s.full(
                s.escalating(
                    levels[32][s.name][0] | s.below_hour(3.0, 6, 0.1, 0.5, -1) | s.stuck,
                    np.where(levels[32][s.name][0], levels[32][s.name][1], 0.0),
                    k,
                    3.0,
                )
            )
            for s in series
        }

    # fewer false alarms from series that keep reaching new levels (bursty counts): after the series' first P new
    # levels only one two or more levels from every known one alarms; a new level only when the move lasts; a
    # cooldown that grows with the series' recent alarms (each with the shipped seasonal_drop and stuck)
    def shipped_with(s: Series, new_level: np.ndarray) -> np.ndarray:
        return new_level | s.below_hour(3.0, 6, 0.1, 0.5, -1) | s.stuck

    ladders = [(5, None, None), (10, None, None), (10, None, 5.0), (20, None, None), (8, None, None)]
    ladders += [(8, 30, None), (8, 30, 8.0)]
    for two, three, k in ladders:
        label = f"as shipped, after the series' first {two} new levels one alarms only 2+ levels out"
        label += f", after {three} only 3+" if three else ""
        label += f", escalation k = {k:g}" if k else ""
        chosen = {}
        for s in series:
            new, dist, _ = levels[32][s.name]
            before = np.cumsum(new) - new
            far = ((dist >= 2) | (before < two)) & ((dist >= 3) | (before < (three or np.inf)))
            alarms = shipped_with(s, new & far)
            chosen[s.name] = s.full(s.escalating(alarms, np.where(new, dist, 0.0), k, 3.0) if k else s.cooled(alarms))
        designs[label] = chosen
    for creep in (2, 3, 4, 6, 8, 12):  # the ladder, and a creep of that many levels past the last alarm's range
        designs[f"as shipped, the ladder (8, 30), and a new level {creep} levels past the range of the last alarm"] = {
            s.name: s.full(s.cooled(shipped_with(s, s.creeping(creep)))) for s in series
        }
    # a frozen sensor for hours: stuck only once a hold has also lasted min_hold (or outlasted the longest by a
    # factor), on top of the ladder with its creep; then the ladder's counts and the cooldown again under 5h
    ladder = {s.name: s.creeping(6) for s in series}
    for hours, factor in [(h, 1.0) for h in (0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 24, 48)] + [(0, 1.5), (0, 2.0)]:
        label = f"the ladder and its creep, stuck once a hold lasts {hours}h" + (
            f" and {factor:g}x" if factor > 1 else ""
        )
        designs[label] = {
            s.name: s.full(s.cooled(ladder[s.name] | s.below_hour(3.0, 6, 0.1, 0.5, -1) | s.held(hours, factor)))
            for s in series
        }
    for two, three in ((7, 30), (9, 30), (10, 30), (12, 30), (8, 16), (8, 20), (8, 25), (8, 40)):
        designs[f"the ladder ({two}, {three}) and its creep, stuck 5h"] = {
            s.name: s.full(s.cooled(s.creeping(6, two, three) | s.below_hour(3.0, 6, 0.1, 0.5, -1) | s.held(5)))
            for s in series
        }
    for gap in (6.0, 9.0, 15.0, 18.0):
        designs[f"the ladder and its creep, stuck 5h, cooldown {gap:g}h"] = {
            s.name: s.full(s.cooled(ladder[s.name] | s.below_hour(3.0, 6, 0.1, 0.5, -1) | s.held(5), gap))
            for s in series
        }
    for within, at_least in ((2, 2), (3, 2), (5, 2), (5, 3)):
        designs[f"as shipped, a new level only when {at_least} of {within} readings are on unknown levels"] = {
            s.name: s.full(s.cooled(shipped_with(s, s.persistent(within, at_least)))) for s in series
        }
    for base, days, growth in ((6.0, 4.0, 1.5), (12.0, 2.0, 1.5), (12.0, 4.0, 2.0)):
        designs[f"as shipped, cooldown {base:g}h x {growth:g} ** (alarms in the last {days:g} days)"] = {
            s.name: s.full(s.growing(shipped_with(s, levels[32][s.name][0]), base, days, growth)) for s in series
        }
    shipped = designs["new levels and stuck (32 levels; the pack before seasonal_drop)"]
    ranks = {}
    for s in series if args.adapted else ():
        ranks[s.name] = s.adapted(24 * HOUR, 7 * 24 * HOUR, shipped[s.name][s.probation :], detectors)
        print("adapted", s.name, flush=True)
    for q in (0.95, 0.98, 0.99) if args.adapted else ():
        designs[f"adapted detectors (1d, 7d) gate new levels at p >= {q}"] = design(
            lambda s, q=q: levels[32][s.name][0] & (np.isnan(ranks[s.name]) | (ranks[s.name] >= q))
        )
    results: dict[str, Any] = {}
    for label, alarms in designs.items():
        per_file = {s.name: score_file(s.stamps, alarms[s.name], windows[s.name]) for s in series}
        tuned = {k: v for k, v in per_file.items() if k.split("/")[0] in TUNED_ON}
        results[label] = {
            "scores": table(per_file, windows),
            "tuning_categories_standard": table(tuned, windows)["corpus"]["standard"] if tuned else None,
            **where_points_go(series, alarms, windows),
        }
        print(f"{label:60s} {results[label]['scores']['corpus']['standard']:6.1f}", flush=True)
    lines = [
        "| design | standard | low FP | low FN | tuning categories | windows missed | alarms outside windows |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, r in results.items():
        c = r["scores"]["corpus"]
        lines.append(
            f"| {label} | {c['standard']:.1f} | {c['reward_low_FP_rate']:.1f} | {c['reward_low_FN_rate']:.1f} "
            f"| {r['tuning_categories_standard'] or float('nan'):.1f} | {r['windows_missed']} "
            f"| {r['alarms_outside_windows']} |"
        )
    (RESULTS / f"{args.out}.json").write_text(json.dumps(results, indent=1))
    (RESULTS / f"{args.out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
