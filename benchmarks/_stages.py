"""Where scoring time goes: exclusive wall time per stage of scoring a file, run serially, by wrapping the
functions each stage is made of. Shared by the speed benchmarks."""

from __future__ import annotations

import functools
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

#: stage -> (object, attribute) pairs timed as that stage; nested calls count for the innermost stage only
STAGE_FUNCTIONS: dict[str, list[tuple[str, str]]] = {
    "read": [("segscope.sources.files:FileSource", "iter_batches")],
    "prepare": [
        ("segscope.features.prepare:FeaturePreparer", "validate"),
        ("segscope.features.prepare:FeaturePreparer", "transform"),
        ("segscope.features.prepare:FeaturePreparer", "readable_values"),
    ],
    "detectors": [
        ("segscope.unsupervised.ensemble:AnomalyEnsemble", "detector_surprisal"),
        ("segscope.unsupervised.explain:FeatureExplainer", "top_contributions"),
    ],
    "calibrate": [("segscope.unsupervised.calibrate:ReferenceCalibrator", "surprisal")],
    "segments": [("segscope.unsupervised.segment:Segmenter", "assign")],
    "reasons": [("segscope.unsupervised.explain:FeatureExplainer", "explain")],
    "drift": [
        ("segscope.unsupervised.drift:DriftTracker", "add"),
    ],
}


class _Clock:
    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self.stack: list[list[Any]] = []  # [stage, start, time spent in nested stages]

    def wrap(self, stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            self.stack.append([stage, time.perf_counter(), 0.0])
            try:
                return fn(*args, **kwargs)
            finally:
                self._pop()

        return timed

    def wrap_generator(self, stage: str, fn: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Iterator[Any]:
            items = fn(*args, **kwargs)
            while True:
                self.stack.append([stage, time.perf_counter(), 0.0])
                try:
                    item = next(items)
                except StopIteration:
                    return
                finally:
                    self._pop()
                yield item

        return timed

    def _pop(self) -> None:
        stage, start, nested = self.stack.pop()
        spent = time.perf_counter() - start
        self.totals[stage] += spent - nested
        if self.stack:
            self.stack[-1][2] += spent


@contextmanager
def timed_stages() -> Iterator[dict[str, float]]:
    """Inside: every stage function is timed; the dict yielded fills with exclusive seconds per stage."""
    import importlib
    import inspect

    clock = _Clock()
    undo = []
    for stage, targets in STAGE_FUNCTIONS.items():
        for where, attr in targets:
            module, cls_name = where.split(":")
            cls = getattr(importlib.import_module(module), cls_name)
            original = cls.__dict__[attr]
            wrap = clock.wrap_generator if inspect.isgeneratorfunction(original) else clock.wrap
            setattr(cls, attr, wrap(stage, original))
            undo.append((cls, attr, original))
    try:
        yield clock.totals
    finally:
        for cls, attr, original in undo:
            setattr(cls, attr, original)


def stage_seconds(bundle: Path, data: Path, out: Path) -> dict[str, float]:
    """Exclusive seconds per stage of scoring ``data`` serially: the batches scored one after another (stages
    timed as above, "other" being the rest of `Model.score`: the policy, the output columns), then all of them
    written by the file sink on its own ("write"), and the total. `score_file` overlaps the writing with the
    next batch's scoring, so its wall time is below this total."""
    from segscope.model import Model
    from segscope.pipeline import iter_scored
    from segscope.sinks.files import FileSink

    model = Model.load(bundle)
    with timed_stages() as totals:
        start = time.perf_counter()
        scored = list(iter_scored(model, data, ids_first=False))
        scoring = time.perf_counter() - start
    result = {stage: totals.get(stage, 0.0) for stage in STAGE_FUNCTIONS if stage != "write"}
    result["other"] = scoring - sum(result.values())
    start = time.perf_counter()
    with FileSink(out) as sink:
        for frame in scored:
            sink.write(frame)
    result["write"] = time.perf_counter() - start
    result["total"] = sum(result.values())
    return result
