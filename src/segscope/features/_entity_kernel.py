"""The per-entity kernel: one pass over records in arrival order, each record reading its entity's state as it
was before the record and then updating it. Batch and stream run this same function, so a record's features
depend only on its entity's earlier records, never on how they were cut into batches."""

from __future__ import annotations

import math

import numba as nb
import numpy as np
from numba import types
from numba.typed import Dict

# feature kinds, as the plan's first column
(COUNT, SUM, MEAN, STD, ZSCORE, RATIO, SINCE_LAST, LAG, DELTA, FIRST_SEEN, RARE, DISTINCT, NEW_LEVEL, STUCK, STATE,
 SEASONAL_DROP) = range(16)  # fmt: skip
#: SEASONAL_DROP's slots: per hour of day its level, spread and readings; the series' own; the smoothed deviation
_HOURS = 24
#: accumulator slots each kind keeps per entity (STATE: :func:`state_slots`, which depend on its columns)
SLOTS = (1, 1, 3, 3, 3, 3, 0, 1, 1, 0, 0, 1, 0, 3, 0, 3 * _HOURS + 4)
#: SEASONAL_DROP: an hour's level and spread follow its readings with this weight each (about its last ten days
#: at one reading an hour), the series' with this one; it watches a series whose hours' spread is at most this share
#: of its own (its hour of day explains at least half its variance)
HOUR_WEIGHT, SERIES_WEIGHT, SEASONAL_SHARE = 0.1, 0.01, 0.5

#: NEW_LEVEL with a ladder: its slots (:func:`_ladder`), and how many levels beyond the range it knew when it last
#: alarmed a new level alarms whatever the ladder (benchmarks/nab_designs.py: 6 to 12 change nothing on NAB's
#: tuning categories, 2 to 4 lose)
LADDER_SLOTS, CREEP_LEVELS = 6, 6.0
#: STATE's slots before its per-sensor ones: readings learnt, phase, smoothed distance, readings in a row above
#: the limit, the limit
_STATE_HEAD = 5
#: STATE's phases: learning the machine's normal state, watching it, too few usable sensors to watch
LEARNING, WATCHING, UNWATCHED = 0.0, 1.0, 2.0
#: a sensor joins the machine's state when its learnt readings are mostly noise, not a slow drift: the standard
#: deviation of its first differences over its own, over sqrt(2) (1 for white noise, near 0 for a trend), at least
#: this (benchmarks/skab_designs.py)
NOISE_RATIO = 0.5
#: the limit is this quantile of the smoothed distances over the learnt readings
STATE_QUANTILE = 0.99
#: readings a machine needs at the end of its fit history to be watched from there (else it learns on, live)
STATE_MIN_READINGS = 100


def state_phase_slot(o: int) -> int:
    """The slot of a STATE feature (its slots from ``o``) that holds its phase (:data:`LEARNING`, ...)."""
    return o + 1


def state_kept_slots(o: int, sensors: int) -> slice:
    """The slots of a STATE feature over ``sensors`` columns that flag the sensors it watches (1: kept)."""
    return slice(o + _STATE_HEAD + 2 * sensors, o + _STATE_HEAD + 3 * sensors)


def state_slots(sensors: int, learn: int) -> int:
    """Slots of a STATE feature over ``sensors`` columns learning from ``learn`` readings: the head, each sensor's
    mean, scale and kept flag, the inverse covariance, and the learnt readings themselves."""
    return _STATE_HEAD + 3 * sensors + sensors * sensors + learn * sensors


PAIR_KEY = types.UniTuple(types.int64, 2)  # type: ignore[no-untyped-call]
_COUNT_BITS = 40  # pair value: generation << 40 | count


def new_pairs() -> Dict[tuple[int, int], int]:
    return Dict.empty(key_type=PAIR_KEY, value_type=types.int64)


@nb.njit(cache=True)
def advance(
    slots: np.ndarray,  # (rows,) entity slot, -1: no entity (null key)
    times: np.ndarray,  # (rows,) event time in seconds (NaN: unknown); ignored when not use_time
    values: np.ndarray,  # (rows, value columns) numbers
    codes: np.ndarray,  # (rows, pair columns) value codes, -1 null
    last_t: np.ndarray,  # (entities,) state: time of the latest event
    n_events: np.ndarray,  # (entities,) state: events since the last reset
    gen: np.ndarray,  # (entities,) state: reset generation (pairs of older generations are forgotten)
    acc: np.ndarray,  # (entities, accumulators) state
    pairs: Dict[tuple[int, int], int],  # state: (entity * pair columns + column, code) -> generation/count
    plan: np.ndarray,  # (features, 4): kind, value column, pair column, first accumulator
    taus: np.ndarray,  # (features,) window time constants
    shares: np.ndarray,  # (features,) rare share
    params: np.ndarray,  # (features, 3) STATE: readings to learn, smoothing span, readings in a row to alarm;
    # SEASONAL_DROP: deviations, smoothing span; STUCK: the least a hold lasts to alarm; NEW_LEVEL: its ladder's
    # counts (inf: none), its column of near
    near: np.ndarray,  # (rows, ladders, 5) NEW_LEVEL with a ladder: codes of the levels 1 below, above, 2 below,
    # above, and the level itself
    ttl: float,  # reset after this idle time (0: never)
    use_time: bool,
    out: np.ndarray,  # (rows, features)
    when: np.ndarray,  # (rows,) out: each record's time as counted (late ones at their entity's latest)
) -> float:
    """Fill ``out`` and update the state; returns the newest event time seen (for eviction)."""
    n_pairs = codes.shape[1]
    prior = np.zeros(max(n_pairs, 1), dtype=np.int64)
    newest = -np.inf
    mask = (np.int64(1) << _COUNT_BITS) - 1
    for i in range(slots.shape[0]):
        s = slots[i]
        if s < 0:
            for f in range(plan.shape[0]):
                out[i, f] = np.nan
            when[i] = np.nan
            continue
        first = n_events[s] == 0
        if use_time:
            t = times[i]
            if math.isnan(t):
                t = 0.0 if first else last_t[s]
        else:
            t = float(n_events[s]) if first else last_t[s] + 1.0
        if not first and ttl > 0.0 and t - last_t[s] > ttl:  # idle past the ttl: a new start
            n_events[s] = 0
            gen[s] += 1
            acc[s, :] = 0.0
            first = True
        if not first and t < last_t[s]:  # late: counts at the entity's latest time
            t = last_t[s]
        newest = max(newest, t)
        when[i] = t
        dt = 0.0 if first else t - last_t[s]
        n_prior = n_events[s]
        for p in range(n_pairs):
            c = codes[i, p]
            prior[p] = -1
            if c >= 0:
                v = pairs.get((s * n_pairs + p, c), 0)
                prior[p] = (v & mask) if (v >> _COUNT_BITS) == gen[s] else 0
        for f in range(plan.shape[0]):
            kind, col, pc, o = plan[f, 0], plan[f, 1], plan[f, 2], plan[f, 3]
            decay = 0.0 if first else math.exp(-dt / taus[f]) if taus[f] > 0 else 1.0
            x = values[i, col] if col >= 0 else np.nan
            result = np.nan
            if kind == COUNT:
                acc[s, o] = acc[s, o] * decay + 1.0
                result = acc[s, o]
            elif kind == SUM:
                acc[s, o] = acc[s, o] * decay + (0.0 if math.isnan(x) else x)
                result = acc[s, o]
            elif kind in (MEAN, STD, ZSCORE, RATIO):
                w, m, ss = acc[s, o] * decay, acc[s, o + 1], acc[s, o + 2] * decay
                if kind == ZSCORE and n_prior >= 2 and w > 0.0 and not math.isnan(x):
                    sd = math.sqrt(max(ss / w, 0.0))
                    result = (x - m) / (sd + 1e-9 * (1.0 + abs(m)))
                    result = min(max(result, -1e6), 1e6)
                elif kind == RATIO and n_prior >= 1 and w > 0.0 and not math.isnan(x) and abs(m) > 1e-12:
                    result = x / m
                if not math.isnan(x):
                    w += 1.0
                    d = x - m
                    m += d / w
                    ss += d * (x - m)
                acc[s, o], acc[s, o + 1], acc[s, o + 2] = w, m, ss
                if kind == MEAN and w > 0.0:
                    result = m
                elif kind == STD and w > 0.0:
                    result = math.sqrt(max(ss / w, 0.0))
            elif kind == SINCE_LAST:
                result = np.nan if first else dt
            elif kind in (LAG, DELTA):
                if not first and n_prior > 0:
                    previous = acc[s, o]
                    result = previous if kind == LAG else x - previous
                if not math.isnan(x):
                    acc[s, o] = x
                elif first:
                    acc[s, o] = np.nan
            elif kind in (FIRST_SEEN, NEW_LEVEL):  # a new level: its code never seen for the entity
                result = np.nan if prior[pc] < 0 else (1.0 if prior[pc] == 0 else 0.0)
                if kind == NEW_LEVEL and prior[pc] >= 0 and math.isfinite(params[f, 0]):
                    result = _ladder(acc[s], o, result, near[i, int(params[f, 2])], params[f], pairs, s * n_pairs + pc,
                                     gen[s])  # fmt: skip
            elif kind == RARE:
                if prior[pc] >= 0:
                    result = 1.0 if n_prior == 0 or prior[pc] < shares[f] * n_prior else 0.0
            elif kind == STUCK:  # slots: the value held (NaN: none yet), since when, the longest hold before;
                # that longest is stored as -longest - 1 once the current hold has outlasted it (alarmed once)
                if first:
                    acc[s, o], acc[s, o + 1], acc[s, o + 2] = x, t, 0.0
                    result = np.nan if math.isnan(x) else 0.0
                elif not math.isnan(x):
                    longest = acc[s, o + 2] if acc[s, o + 2] >= 0.0 else -acc[s, o + 2] - 1.0
                    if math.isnan(acc[s, o]) or x != acc[s, o]:
                        if not math.isnan(acc[s, o]):
                            acc[s, o + 2] = max(longest, last_t[s] - acc[s, o + 1])
                        acc[s, o], acc[s, o + 1] = x, t
                        result = 0.0
                    elif acc[s, o + 2] >= 0.0 and t - acc[s, o + 1] > max(longest, params[f, 0]):  # the hold
                        acc[s, o + 2] = -longest - 1.0  # outlasts every one before it (and the least it must last):
                        # a stuck sensor, alarmed at this reading only
                        result = 1.0
                    else:
                        result = 0.0
            elif kind == DISTINCT:
                acc[s, o] = acc[s, o] * decay + (1.0 if prior[pc] == 0 else 0.0)
                result = acc[s, o]
            elif kind == SEASONAL_DROP:
                result = _seasonal_drop(acc[s], o, x, t, params[f, 0], params[f, 1])
            elif kind == STATE:  # pc: the number of sensors, read from value columns col .. col + pc - 1
                result = _state(acc[s], o, values[i, col : col + pc], params[f, 0], params[f, 1], params[f, 2])
            out[i, f] = result
        for p in range(n_pairs):
            if prior[p] >= 0:
                pairs[(s * n_pairs + p, codes[i, p])] = (gen[s] << _COUNT_BITS) | (prior[p] + 1)
        last_t[s] = t
        n_events[s] = n_prior + 1
    return newest


@nb.njit(cache=True)
def _ladder(
    row: np.ndarray,
    o: int,
    new: float,
    near: np.ndarray,
    steps: np.ndarray,
    pairs: Dict[tuple[int, int], int],
    key: int,
    generation: int,
) -> float:
    """A NEW_LEVEL feature with a ladder at one reading (``new``: 1 on a level its entity never had; ``near``: the
    codes of the levels 1 and 2 below and above it, then the level itself; ``steps``: the ladder's counts). Slots
    from ``o``: new levels since the fit, whether a range is known, the lowest and highest level known, and the
    range known when the feature was last 1. A new level is 0 when a known one lies nearer than the ladder asks,
    unless it lies :data:`CREEP_LEVELS` or more beyond that last range (a slow creep alarms, at that pace)."""
    level = float(near[4])
    if new == 1.0:
        far = 1 + int(row[o] >= steps[0]) + int(row[o] >= steps[1])  # levels out it must lie
        mask = (np.int64(1) << _COUNT_BITS) - 1
        for k in range(2 * (far - 1)):
            v = pairs.get((key, near[k]), 0)
            if (v >> _COUNT_BITS) == generation and (v & mask) > 0:
                new = 0.0
        if row[o + 1] == 1.0 and (level >= row[o + 5] + CREEP_LEVELS or level <= row[o + 4] - CREEP_LEVELS):
            new = 1.0
        row[o] += 1.0
    if row[o + 1] == 0.0:
        row[o + 1], row[o + 2], row[o + 3] = 1.0, level, level
    row[o + 2], row[o + 3] = min(row[o + 2], level), max(row[o + 3], level)
    if new == 1.0:
        row[o + 4], row[o + 5] = row[o + 2], row[o + 3]
    return new


@nb.njit(cache=True)
def _seasonal_drop(row: np.ndarray, o: int, x: float, t: float, deviations: float, span: float) -> float:
    """One reading of a SEASONAL_DROP feature (``row``: its entity's accumulators, the feature's from ``o``; ``t``
    the event time in seconds): 1 where the reading's deviation from its hour of day's level, in that hour's
    spreads and smoothed over ``span`` readings, is ``deviations`` or more below it, in a series whose hours
    explain at least half its variance; then the reading joins its hour and the series."""
    if not math.isfinite(x) or not math.isfinite(t):  # an infinite reading would stay in the hour's level for good,
        return 0.0  # an infinite time has no hour (and must not index one)
    hour = int(((t % 86400.0) + 86400.0) % 86400.0 // 3600.0) % _HOURS
    h, g = o + 3 * hour, o + 3 * _HOURS  # the hour's slots; the series' (level, spread, readings), then the smoothed
    result = 0.0
    if row[h + 2] >= 3.0 and row[g + 2] >= 2.0:
        z = (x - row[h]) / (math.sqrt(row[h + 1]) + 1e-9 * (1.0 + abs(row[h])))
        alpha = 2.0 / (span + 1.0)
        row[g + 3] = alpha * z + (1.0 - alpha) * row[g + 3] if row[g + 3] == row[g + 3] else z  # NaN: none yet
        spread, known = 0.0, 0
        for k in range(_HOURS):
            if row[o + 3 * k + 2] >= 3.0:
                spread += row[o + 3 * k + 1]
                known += 1
        if spread / known <= SEASONAL_SHARE * row[g + 1] and row[g + 3] <= -deviations:
            result = 1.0
    for at, weight in ((h, HOUR_WEIGHT), (g, SERIES_WEIGHT)):
        if row[at + 2] == 0.0:
            row[at], row[at + 1] = x, 0.0
            if at == g:
                row[g + 3] = np.nan
        else:
            d = x - row[at]
            row[at] += weight * d
            row[at + 1] = (1.0 - weight) * (row[at + 1] + weight * d * d)
        row[at + 2] += 1.0
    return result


@nb.njit(cache=True)
def _state(row: np.ndarray, o: int, x: np.ndarray, learn: float, span: float, hold: float) -> float:
    """One reading of a STATE feature (``row``: its entity's accumulators; the feature's from ``o``): learnt while
    learning (a reading with a missing sensor is skipped), else 1 while the machine has been away from its learnt
    state for ``hold`` readings in a row, 0 otherwise."""
    d = x.shape[0]
    if row[o + 1] == LEARNING:
        if not 0.0 <= row[o] < learn:  # a damaged state (a bundle or checkpoint): learn again, never write past it
            row[o] = 0.0
        if not np.isfinite(x).all():  # a missing or infinite sensor: not a reading to learn from
            return 0.0
        n = int(row[o])
        at = o + _STATE_HEAD + 3 * d + d * d + n * d
        row[at : at + d] = x
        row[o] = n + 1
        if n + 1 >= learn:
            freeze_state(row, o, d, span)
        return 0.0
    if row[o + 1] == UNWATCHED:
        return 0.0
    mean, scale, keep = row[o + 5 : o + 5 + d], row[o + 5 + d : o + 5 + 2 * d], row[o + 5 + 2 * d : o + 5 + 3 * d]
    inverse = row[o + 5 + 3 * d : o + 5 + 3 * d + d * d]
    distance = 0.0
    for j in range(d):
        if keep[j] == 0.0:
            continue
        zj = (x[j] - mean[j]) / scale[j]
        if not math.isfinite(zj):  # a kept sensor is missing or infinite: the state stands as it was
            return 1.0 if row[o + 3] >= hold else 0.0
        for k in range(d):
            if keep[k] != 0.0:
                distance += zj * inverse[j * d + k] * (x[k] - mean[k]) / scale[k]
    alpha = 2.0 / (span + 1.0)
    if not distance < 1e12:  # far out by 1e150 (inf, or inf - inf): the smoothed distance must not stay there for good
        distance = 1e12
    row[o + 2] = alpha * distance + (1.0 - alpha) * row[o + 2]
    row[o + 3] = row[o + 3] + 1.0 if row[o + 2] > row[o + 4] else 0.0
    return 1.0 if row[o + 3] >= hold else 0.0


@nb.njit(cache=True)
def freeze_state(row: np.ndarray, o: int, d: int, span: float) -> None:
    """From a STATE feature's learnt readings: each sensor's mean and scale, the sensors kept (noisy, not
    drifting: :data:`NOISE_RATIO`), the inverse covariance of the kept ones standardised, and the limit (the
    :data:`STATE_QUANTILE` of the squared Mahalanobis distances of the learnt readings, smoothed by an exponentially
    weighted mean of ``span``, which carries on from there as do the readings in a row above the limit)."""
    n = int(row[o])
    start = o + _STATE_HEAD + 3 * d + d * d
    readings = np.empty((n, d))
    for i in range(n):
        readings[i] = row[start + i * d : start + (i + 1) * d]
    kept = np.zeros(d, dtype=np.int64)
    k = 0
    for j in range(d):
        column = readings[:, j]
        std = column.std()
        steps = (column[1:] - column[:-1]).std() if n > 1 else 0.0
        row[o + 5 + j], row[o + 5 + d + j], row[o + 5 + 2 * d + j] = column.mean(), std + 1e-9, 0.0
        if std > 0.0 and steps / (std + 1e-12) / math.sqrt(2.0) >= NOISE_RATIO:
            row[o + 5 + 2 * d + j] = 1.0
            kept[k] = j
            k += 1
    row[o + 5 + 3 * d : start] = 0.0
    if k < 2 or n < 3:
        row[o + 1] = UNWATCHED
        return
    z = np.empty((n, k))
    for c in range(k):
        j = kept[c]
        z[:, c] = (readings[:, j] - row[o + 5 + j]) / row[o + 5 + d + j]
    centred = z - z.sum(axis=0) / n  # each column's mean (numba's mean takes no axis)
    inverse = np.linalg.pinv(centred.T @ centred / (n - 1))
    for a in range(k):
        for b in range(k):
            row[o + 5 + 3 * d + kept[a] * d + kept[b]] = inverse[a, b]
    distances = ((z @ inverse) * z).sum(axis=1)
    alpha, level, smooth = 2.0 / (span + 1.0), distances[0], np.empty(n)
    for i in range(n):
        level = alpha * distances[i] + (1.0 - alpha) * level
        smooth[i] = level
    limit = np.quantile(smooth, STATE_QUANTILE)
    above = 0.0
    for i in range(n):
        above = above + 1.0 if smooth[i] > limit else 0.0
    row[o + 1], row[o + 2], row[o + 3], row[o + 4] = WATCHING, level, above, limit


@nb.njit(cache=True)
def freeze_learnt(acc: np.ndarray, plan: np.ndarray, params: np.ndarray, entities: int) -> None:
    """At the end of a fit history: every entity still learning a STATE feature with at least
    :data:`STATE_MIN_READINGS` readings is watched from its readings so far; NEW_LEVEL ladders count from 0 (every
    level of the history was new)."""
    for f in range(plan.shape[0]):
        if plan[f, 0] == NEW_LEVEL and math.isfinite(params[f, 0]):  # the ladder's count; the range known is the
            o = plan[f, 3]  # last one alarmed on
            acc[:entities, o] = 0.0
            acc[:entities, o + 4], acc[:entities, o + 5] = acc[:entities, o + 2], acc[:entities, o + 3]
        if plan[f, 0] != STATE:
            continue
        o, d = plan[f, 3], plan[f, 2]
        for s in range(entities):
            if acc[s, o + 1] == LEARNING and STATE_MIN_READINGS <= acc[s, o] <= params[f, 0]:
                freeze_state(acc[s], o, d, params[f, 1])


@nb.njit(cache=True)
def dump_pairs(pairs: Dict[tuple[int, int], int], gen: np.ndarray, n_pairs: int) -> np.ndarray:
    """Live pairs as rows (entity, pair column, code, count): those of each entity's current generation."""
    rows = np.empty((len(pairs), 4), dtype=np.int64)
    mask = (np.int64(1) << _COUNT_BITS) - 1
    k = 0
    for key, v in pairs.items():
        s = key[0] // n_pairs
        if s < gen.shape[0] and (v >> _COUNT_BITS) == gen[s]:
            rows[k, 0], rows[k, 1], rows[k, 2], rows[k, 3] = s, key[0] % n_pairs, key[1], v & mask
            k += 1
    return rows[:k]


@nb.njit(cache=True)
def load_pairs(rows: np.ndarray, gen: np.ndarray, n_pairs: int) -> Dict[tuple[int, int], int]:
    """The inverse of :func:`dump_pairs` (rows whose entity is -1 are skipped)."""
    pairs = Dict.empty(key_type=PAIR_KEY, value_type=types.int64)
    for k in range(rows.shape[0]):
        s = rows[k, 0]
        if s >= 0:
            pairs[(s * n_pairs + rows[k, 1], rows[k, 2])] = (gen[s] << _COUNT_BITS) | rows[k, 3]
    return pairs


@nb.njit(cache=True)
def _outside_cooldown(
    when: float, slot: int, last_alert: np.ndarray, last_raw: np.ndarray, gap: float, rearm: float
) -> bool:
    """Whether an alert of entity ``slot`` at ``when`` is past ``gap`` after its previous one, or (``rearm`` > 0)
    comes after ``rearm`` without any alert of the entity, shown or held back (it went back to normal); then it
    becomes the entity's last alert."""
    quiet = rearm > 0.0 and when - last_raw[slot] >= rearm
    last_raw[slot] = when
    if when - last_alert[slot] < gap and not quiet:
        return False
    last_alert[slot] = when
    return True


@nb.njit(cache=True)
def cool_down(
    alerts: np.ndarray,
    slots: np.ndarray,
    when: np.ndarray,
    last_alert: np.ndarray,
    last_raw: np.ndarray,
    gap: float,
    rearm: float,
) -> None:
    """In order: an entity's alert within ``gap`` of its previous one is withdrawn, unless the entity has been
    ``rearm`` without one (``alerts``, ``last_alert`` and ``last_raw`` are updated in place)."""
    for i in range(alerts.shape[0]):
        s = slots[i]
        if alerts[i] and s >= 0 and not math.isnan(when[i]):
            alerts[i] = _outside_cooldown(when[i], s, last_alert, last_raw, gap, rearm)


#: time buckets of an entity's trailing score window (``policy.recalibrate``), and the number of an empty one
PEAK_BUCKETS = 24
NO_BUCKET = -(2**62)


@nb.njit(cache=True)
def recalibrate(
    alerts: np.ndarray,
    scores: np.ndarray,
    slots: np.ndarray,
    when: np.ndarray,
    peak: np.ndarray,
    peak_at: np.ndarray,
    peak_n: np.ndarray,
    span: float,
    min_scores: int,
    last_alert: np.ndarray,
    last_raw: np.ndarray,
    gap: float,
    rearm: float,
) -> None:
    """In order: once an entity holds ``min_scores`` of its own scores over the trailing ``span`` of event time,
    it alerts only above the highest of them; then, with ``gap`` > 0, an alert within ``gap`` of the entity's
    previous one is withdrawn (as :func:`cool_down`). ``alerts`` is updated in place. Scores join the window (per
    time bucket: the highest, its bucket number, the count); an alert joins at the level it beat."""
    buckets = peak.shape[1]
    width = span / buckets
    for i in range(alerts.shape[0]):
        s = slots[i]
        if s < 0 or math.isnan(when[i]) or math.isnan(scores[i]):
            continue
        b = np.int64(math.floor(when[i] / width))
        top = -np.inf
        held = 0
        for k in range(buckets):
            if b - buckets < peak_at[s, k] and peak_at[s, k] <= b:
                held += peak_n[s, k]
                top = max(top, peak[s, k])
        if held >= min_scores:
            alerts[i] = scores[i] > top
        if alerts[i] and gap > 0:
            alerts[i] = _outside_cooldown(when[i], s, last_alert, last_raw, gap, rearm)
        # an alert joins the window at the level it beat: it keeps that level in the window for another span
        # (a run of alerts does not wear the threshold down) and does not raise it (a failure does not teach it)
        joined = min(scores[i], top) if alerts[i] else scores[i]
        if not math.isinf(joined):
            k = b % buckets
            if peak_at[s, k] != b:
                peak_at[s, k], peak[s, k], peak_n[s, k] = b, joined, 1
            else:
                peak[s, k] = max(peak[s, k], joined)
                peak_n[s, k] += 1
