"""Promotion rules re-decided on the draws ``benchmarks/served_model.py`` recorded: the candidate does not depend on
the rule, so what each rule would have promoted, and what the registry would then serve, follows from the gate's
evidence each draw kept (its ``evidence`` fields, or, in older results, the figures its one-line reason states).

    python benchmarks/gate_rules.py [served_model_gate2]

Older results state the carry check (no single labelled anomaly carries the gain) only where the permutation
p-value was <= 0.01, so their figures at higher levels are upper bounds. Prints the two error rates per rule and
every set and share where the served model is below the plain XGBoost on AUCROC or AUCPR.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).parent / "results"


def _permutation(level: float) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e["p"] <= level and not (e["least"] is not None and e["least"] < 0)


def _old(e: dict[str, Any]) -> bool:
    return e["share"] >= 0.95 and e["t"] <= 0.05


RULES: dict[str, Callable[[dict[str, Any]], bool]] = {
    "permutation p <= 0.01 or bootstrap 95% + paired t p <= 0.05": lambda e: _permutation(0.01)(e) or _old(e),
    "bootstrap 95% + paired t p <= 0.05 alone": _old,
    "permutation p <= 0.01 alone": _permutation(0.01),
    "permutation p <= 0.025 alone": _permutation(0.025),
    "permutation p <= 0.05 alone": _permutation(0.05),
}


def parse(reason: str) -> dict[str, Any] | None:
    """The evidence an older one-line reason states (None when no fold was judged)."""
    if "reach with p=" not in reason:
        return None
    found = re.search(r"better in (\d+)% of", reason)
    t = re.search(r"paired t p=([0-9.]+)", reason)
    return {
        "better": "not better than the current version" not in reason,
        "p": float(re.search(r"reach with p=([0-9.]+)", reason).group(1)),  # type: ignore[union-attr]
        "least": -1.0 if "hangs on one" in reason else None,
        "share": float(found.group(1)) / 100 if found else 0.0,
        "t": float(t.group(1)) if t else 1.0,
    }


def evidence(run: dict[str, Any], shuffled: bool) -> dict[str, Any] | None:
    key = "shuffled evidence" if shuffled else "evidence"
    if key in run:
        found = run[key]
        return None if found["p"] is None else found
    return parse(run["shuffled reason" if shuffled else "reason"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", nargs="?", default="served_model_gate2")
    args = parser.parse_args()
    results = json.loads((RESULTS / f"{args.results}.json").read_text())["results"]
    counts = {rule: [0, 0, 0, 0] for rule in RULES}  # truly better promoted, truly better, shuffled promoted, draws
    served: dict[tuple[str, str, str], list[tuple[float, ...]]] = {}
    for name, result in results.items():
        current = result["current"]
        for share, runs in result["shares"].items():
            for run in runs:
                real, noise = evidence(run, False), evidence(run, True)
                truly = run["candidate"]["aucpr"] > current["aucpr"]
                plain = run["plain xgboost"]
                for rule, passes in RULES.items():
                    promoted = bool(real and real["better"] and passes(real))
                    counts[rule][0] += promoted and truly
                    counts[rule][1] += truly
                    counts[rule][2] += bool(noise and noise["better"] and passes(noise))
                    counts[rule][3] += 1
                    figures = run["candidate"] if promoted else current
                    row = (figures["aucroc"], figures["aucpr"], plain["aucroc"], plain["aucpr"])
                    served.setdefault((name, share, rule), []).append(row)
    print("| rule | truly better promoted | shuffled labels promoted |\n|---|---|---|")
    for rule, (hit, better, false, draws) in counts.items():
        print(f"| {rule} | {hit}/{better} | {false}/{draws} |")
    print("\nserved below the plain XGBoost (AUCROC / AUCPR, means over the draws):")
    for (name, share, rule), rows in served.items():
        mean = np.mean(rows, axis=0)
        if mean[0] < mean[2] or mean[1] < mean[3]:
            print(f"  {name} {share} [{rule}]: {mean[0]:.3f} / {mean[1]:.3f} vs {mean[2]:.3f} / {mean[3]:.3f}")


if __name__ == "__main__":
    main()
