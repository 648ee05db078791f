"""The use-case packs on the real sets of their families, each against the plain pipeline on the raw columns,
in one run.

    python benchmarks/packs.py [--data ../shared/data] [--only fraud|cyber|maintenance]

Every set is split in arrival order (file order; a time series in time order): the model is fitted on the first
part and scores the rest as a stream would, the per-entity state carried from the end of the fitting history.
The plain pipeline is fitted and scored on the same rows with the default config (raw columns, ids and labels
dropped). The real sets rarely hold the entity a pack is written for (a card, a host): each set's block below
says which column plays the entity and which features of the pack apply; the packs' own column names are used
as they are on the synthetic card stream.

* fraud: synthetic card stream (``make_card_stream``: frauds that are ordinary payments one by one), vehicle
  insurance claims (1994-95 fitted, 1996 scored; entity: the claims rep), Ethereum accounts (shuffled once, seed
  0, since the file lists the flagged accounts last; first 70% fitted; entity: the account's most-sent token
  type). AUCROC / AUCPR of ``anomaly_score``.
* cyber: kdd99 http and smtp, UNSW-NB15 backdoor (first 50% fitted; one entity: the whole stream, windows in
  connections), NSL-KDD (train20 fitted, test scored; entity: the service). AUCROC / AUCPR.
* maintenance: NAB machine_temperature and the seven realKnownCause series (fitted on each series' probationary
  rows, 15% up to 750; alerts as detections, the pack's one alarm per day; NAB standard / low-FP / low-FN,
  normalised per file), SKAB (the pack as shipped, each experiment a machine fitted on its first 400 rows, its
  test rows scored; point-wise F1, false-alarm and missed-alarm rates of the alerts over all test rows).

Writes benchmarks/results/packs.json and .md.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from sklearn.metrics import average_precision_score, roc_auc_score

from segscope.config import SegscopeConfig, config_from_dict, load_config
from segscope.metrics import NAB_PROFILES, nab_score, point_metrics
from segscope.model import Model
from segscope.testing.data import make_card_stream

from _adbench import data_dir

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _pack(name: str, *, drop: list[str], entities: list[dict[str, Any]], **extra: Any) -> SegscopeConfig:
    """The pack's settings with this set's entity block and dropped columns."""
    base = load_config(CONFIGS / f"{name}.yaml").model_dump(mode="json")
    base["features"]["drop"] = drop
    base["features"]["id_column"] = extra.pop("id_column", None)
    base["entities"] = entities
    base.update(extra)
    return config_from_dict(base)


def _plain(drop: list[str], id_column: str | None = None) -> SegscopeConfig:
    return SegscopeConfig().with_features(id_column=id_column, drop=tuple(drop))


def _ranking(history: pl.DataFrame, new: pl.DataFrame, y: np.ndarray, cfg: SegscopeConfig) -> dict[str, float]:
    model = Model(cfg).fit(history)
    scores = model.score(new, state=model.new_state())["anomaly_score"].to_numpy()
    return {"aucroc": float(roc_auc_score(y, scores)), "aucpr": float(average_precision_score(y, scores))}


def _compare(
    history: pl.DataFrame, new: pl.DataFrame, pack: SegscopeConfig, plain: SegscopeConfig, label: str = "label"
) -> dict[str, Any]:
    y = new[label].to_numpy()
    return {"pack": _ranking(history, new, y, pack), "plain": _ranking(history, new, y, plain), "rows": new.height}


# ------------------------------------------------------------------------------------------------ fraud
def fraud(data: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    cards = make_card_stream(2000, days=30, seed=1)
    cut = cards.height // 2
    plain = _plain(["is_fraud", "card_id"], "txn_id")
    pack = load_config(CONFIGS / "fraud.yaml")
    out["synthetic card stream"] = _compare(cards[:cut], cards[cut:], pack, plain, "is_fraud")

    claims = pl.read_parquet(data / "fraud_vehicle_insurance.parquet").sort("PolicyNumber")
    history, new = claims.filter(pl.col("Year") < 1996), claims.filter(pl.col("Year") == 1996)
    rep = [
        {"kind": "rare", "of": "Make"}, {"kind": "rare", "of": "PolicyType"}, {"kind": "rare", "of": "AgentType"},
        {"kind": "zscore", "of": "Deductible", "window": 200}, {"kind": "first_seen", "of": "VehiclePrice"},
    ]  # fmt: skip
    drop = ["label", "Year", "RepNumber"]
    pack = _pack("fraud", drop=drop, entities=[{"key": "RepNumber", "features": rep}], id_column="PolicyNumber")
    out["fraud_vehicle_insurance"] = _compare(history, new, pack, _plain(drop, "PolicyNumber"))

    # no time order (the file lists the flagged accounts last): shuffled once, then taken in that order
    eth = pl.read_parquet(data / "fraud_ethereum_accounts.parquet").sample(fraction=1.0, shuffle=True, seed=0)
    cut = int(eth.height * 0.7)
    token = [
        {"kind": "zscore", "of": 'ln("total Ether sent" + 1)', "window": 300, "name": "token_sent_zscore"},
        {"kind": "zscore", "of": 'ln("total ether received" + 1)', "window": 300, "name": "token_received_zscore"},
        {"kind": "zscore", "of": 'ln("Sent tnx" + 1)', "window": 300, "name": "token_sent_tnx_zscore"},
        {"kind": "rare", "of": "ERC20_most_rec_token_type", "name": "token_rare_received_type"},
    ]  # fmt: skip
    drop = ["label", "Index"]
    pack = _pack("fraud", drop=drop, entities=[{"key": "ERC20 most sent token type", "features": token}])
    out["fraud_ethereum_accounts"] = _compare(eth[:cut], eth[cut:], pack, _plain(drop))
    return out


# ------------------------------------------------------------------------------------------------ cyber
def cyber(data: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, cols in (
        ("kdd99_http", ("src_bytes_log", "dst_bytes_log", "duration_log")),
        ("kdd99_smtp", ("src_bytes_log", "dst_bytes_log", "duration_log")),
        ("unsw_nb15_backdoor", ("sbytes", "dbytes", "dur", "rate")),
    ):
        frame = pl.read_parquet(data / f"{name}.parquet")
        cut = frame.height // 2
        feats = [{"kind": "zscore", "of": c, "window": 1000} for c in cols]
        feats += [{"kind": "mean", "of": cols[0], "window": 20}, {"kind": "count", "window": 50}]
        feats[-1] = {"kind": "delta", "of": cols[1]}
        pack = _pack("cyber", drop=["label"], entities=[{"features": feats}])
        out[name] = _compare(frame[:cut], frame[cut:], pack, _plain(["label"]))
    nsl = pl.read_parquet(data / "nslkdd.parquet")
    meta = ["label", "attack_type", "attack_category", "difficulty", "split"]
    service = [
        {"kind": "zscore", "of": 'ln("src_bytes" + 1)', "window": 500, "name": "service_src_bytes_zscore"},
        {"kind": "zscore", "of": 'ln("dst_bytes" + 1)', "window": 500, "name": "service_dst_bytes_zscore"},
        {"kind": "rare", "of": "flag", "name": "service_rare_flag"},
        {"kind": "rare", "of": "protocol_type", "name": "service_rare_protocol"},
        {"kind": "mean", "of": "serror_rate", "window": 50, "name": "service_serror_mean"},
    ]
    pack = _pack("cyber", drop=meta, entities=[{"key": "service", "features": service}])
    history, new = nsl.filter(pl.col("split") == "train20"), nsl.filter(pl.col("split") == "test")
    out["nslkdd"] = _compare(history, new, pack, _plain(meta))
    return out


# ------------------------------------------------------------------------------------------ maintenance
def _windows(frame: pl.DataFrame) -> list[tuple[Any, Any]]:
    lab, ts = frame["label"].to_numpy(), frame["timestamp"].to_list()
    starts = np.flatnonzero(np.diff(np.concatenate([[0], lab])) == 1)
    ends = np.flatnonzero(np.diff(np.concatenate([lab, [0]])) == -1)
    return [(ts[int(a)], ts[int(b)]) for a, b in zip(starts, ends, strict=True)]


def _nab_series(frame: pl.DataFrame, pack: SegscopeConfig, plain: SegscopeConfig) -> dict[str, Any]:
    """NAB scores of the pack, of the pack without its alarm cooldown (same 0.1% threshold), and of plain."""
    n = frame.height
    probation = int(min(np.floor(0.15 * n), 750))
    windows = _windows(frame)
    result: dict[str, Any] = {}
    loud = pack.model_copy(update={"policy": pack.policy.model_copy(update={"cooldown": None})})
    for label, cfg in (("pack", pack), ("pack without cooldown", loud), ("plain", plain)):
        model = Model(cfg).fit(frame[:probation])
        scored = model.score(frame[probation:], state=model.new_state())
        alerts = np.concatenate([np.zeros(probation, dtype=bool), scored["is_alert"].to_numpy()])
        stamps = frame["timestamp"].to_list()
        result[label] = {p: nab_score(stamps, alerts, windows, p)["score"] for p in NAB_PROFILES}
        result[label]["alerts"] = int(alerts.sum())
    return result


def maintenance(data: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    meta = ["timestamp", "label", "label_point"]
    # the pack as shipped on a file of one machine (no machine column); its one sensor: value
    pack = load_config("maintenance", columns={"machine_id": ""}).with_features(id_column=None, drop=("label_point",))
    temp = pl.read_parquet(data / "nab_machine_temperature.parquet")
    out["nab_machine_temperature"] = _nab_series(temp, pack, _plain(meta))
    known = pl.read_parquet(data / "nab_realknowncause.parquet")
    per_series = {}
    for (series,), frame in known.group_by("series", maintain_order=True):
        per_series[str(series)] = _nab_series(frame.drop("series"), pack, _plain(meta))
    out["nab_realknowncause"] = {
        label: {p: float(np.mean([s[label][p] for s in per_series.values()])) for p in NAB_PROFILES}
        for label in ("pack", "pack without cooldown", "plain")
    }
    out["nab_realknowncause"]["series"] = per_series
    skab = pl.read_parquet(data / "skab.parquet").filter(pl.col("split") != "anomaly_free")
    # the pack as shipped, on SKAB's eight sensors as they come: each experiment a machine
    shipped = load_config("maintenance", columns={"machine_id": "experiment"})
    pack = shipped.with_features(id_column=None, drop=("changepoint", "split"))
    plain = _plain(["experiment", "timestamp", "label", "changepoint", "split"])
    labels, alerts = [], {"pack": [], "plain": []}
    for _, frame in skab.group_by("experiment", maintain_order=True):
        train, test = frame.filter(pl.col("split") == "train"), frame.filter(pl.col("split") == "test")
        labels.append(test["label"].to_numpy())
        for label, cfg in (("pack", pack), ("plain", plain)):
            model = Model(cfg).fit(train)
            alerts[label].append(model.score(test, state=model.new_state())["is_alert"].to_numpy())
    y = np.concatenate(labels)
    out["skab"] = {label: point_metrics(y, np.concatenate(a)) for label, a in alerts.items()}
    return out


def _markdown(results: dict[str, Any]) -> str:
    lines = ["| family | set | pack | plain | pack without cooldown |", "|---|---|---:|---:|---:|"]
    for family, sets in results.items():
        if family == "seconds":
            continue
        for name, r in sets.items():
            if "aucroc" in r.get("pack", {}):
                fmt = lambda m: f"{m['aucroc']:.3f} / {m['aucpr']:.3f}"  # noqa: E731
            elif "f1" in r.get("pack", {}):
                fmt = lambda m: f"F1 {m['f1']:.3f}, FAR {100 * m['far']:.1f}%, MAR {100 * m['mar']:.1f}%"  # noqa: E731
            else:
                fmt = lambda m: " / ".join(f"{m[p]:.1f}" for p in NAB_PROFILES)  # noqa: E731
            quiet = fmt(r["pack without cooldown"]) if "pack without cooldown" in r else ""
            lines.append(f"| {family} | {name} | {fmt(r['pack'])} | {fmt(r['plain'])} | {quiet} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None)
    parser.add_argument("--only", choices=("fraud", "cyber", "maintenance"), default=None)
    args = parser.parse_args()
    data = data_dir(args.data)
    warnings.simplefilter("ignore")
    results: dict[str, Any] = {}
    started = time.perf_counter()
    for family, run in (("fraud", fraud), ("cyber", cyber), ("maintenance", maintenance)):
        if args.only in (None, family):
            results[family] = run(data)
            print(_markdown({family: results[family]}), flush=True)
    results["seconds"] = time.perf_counter() - started
    out = Path(__file__).parent / "results"
    suffix = f"-{args.only}" if args.only else ""
    (out / f"packs{suffix}.json").write_text(json.dumps(results, indent=1, default=float))
    (out / f"packs{suffix}.md").write_text(_markdown(results))


if __name__ == "__main__":
    main()
