"""Misconfigured and disconnected streams, against a real broker with TLS and SASL listeners (certificates made for
the run, tests/kafka_helpers.start_secure_broker):

    python benchmarks/stream_misconfig.py [--outage 80] [--only misconfig,sigterm,outage] [--src DIR]

1. misconfig: for each misconfiguration of tests/kafka_helpers.MISCONFIGURATIONS, the time from launching
   `segscope stream` to its exit, its exit code, the lines it printed and its last line.
2. sigterm: a stream waiting for an unreachable bootstrap (the default 30 s wait) gets SIGTERM: seconds to exit.
3. outage: a running stream (at-least-once, idle, confluent-kafka) while the broker is stopped for --outage
   seconds: the lines it printed meanwhile, then whether it scored the records produced after the restart.

``--src`` runs the streams with another checkout's ``src`` (an earlier commit: the "before" figures; give
``--only outage`` there, the misconfigurations use options it may not have). Writes
benchmarks/results/stream_misconfig.json (stream_misconfig-LABEL.json with ``--label LABEL``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from segscope import Model  # noqa: E402
from segscope.config import SegscopeConfig  # noqa: E402
from segscope.testing.data import make_transactions  # noqa: E402
from tests.kafka_helpers import (  # noqa: E402
    MISCONFIGURATIONS,
    WRONG_PASSWORD,
    broker,
    create_topic,
    free_port,
    group_caught_up,
    make_certificates,
    misconfiguration,
    produce,
    records,
    start_secure_broker,
)


def stream(src: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "segscope.cli", "stream", *args]
    full = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(src), **(env or {})}
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=full)


def collect(proc: subprocess.Popen[str]) -> tuple[list[tuple[float, str]], threading.Thread]:
    lines: list[tuple[float, str]] = []
    assert proc.stderr is not None
    pipe = proc.stderr
    thread = threading.Thread(target=lambda: [lines.append((time.monotonic(), x.rstrip("\n"))) for x in pipe])
    thread.start()
    return lines, thread


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--outage", type=float, default=80.0, help="seconds the broker is down")
    parser.add_argument("--only", default="misconfig,sigterm,outage")
    parser.add_argument("--src", type=Path, default=ROOT / "src", help="the segscope source the streams run")
    parser.add_argument("--label", default="", help="results in stream_misconfig-LABEL.json (e.g. before)")
    args = parser.parse_args()
    parts = set(args.only.split(","))
    result: dict[str, object] = {"src": str(args.src)}
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        secure = {**start_secure_broker(tmp / "data", make_certificates(tmp / "certs")), "certs": tmp / "certs"}
        try:
            bundle = tmp / "bundle"
            config = SegscopeConfig().with_features(id_column="txn_id", drop=("is_fraud",))
            Model(config).fit(make_transactions(4000, seed=0)).save(bundle)
            base = ["--bundle", str(bundle), "--out-topic", "orders.out"]
            if "misconfig" in parts:
                create_topic(secure["PLAINTEXT"], "orders.in", partitions=1)
                cases = {}
                for name in MISCONFIGURATIONS:
                    given, env, _ = misconfiguration(secure, name, tmp)
                    started = time.monotonic()
                    proc = stream(args.src, *base, *given, env=env)
                    _, err = proc.communicate(timeout=120)
                    took = time.monotonic() - started
                    lines = [line for line in err.splitlines() if line.strip()]
                    cases[name] = {
                        "seconds": round(took, 1),
                        "exit": proc.returncode,
                        "lines": len(lines),
                        "last": lines[-1] if lines else "",
                        "password_shown": WRONG_PASSWORD in err,
                    }
                    print(f"{name}: exit {proc.returncode} after {took:.1f} s, {len(lines)} line(s)", flush=True)
                result["misconfig"] = cases
            if "sigterm" in parts:
                dead = f"127.0.0.1:{free_port()}"
                proc = stream(args.src, *base, "--bootstrap", dead, "--in-topic", "orders.in")
                lines, thread = collect(proc)
                time.sleep(8)  # started, and waiting for the cluster
                sent = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=120)
                thread.join(timeout=30)
                took = time.monotonic() - sent
                result["sigterm"] = {"seconds": round(took, 2), "exit": proc.returncode, "lines": len(lines)}
                print(f"SIGTERM while waiting: exit {proc.returncode} after {took:.2f} s", flush=True)
            if "outage" in parts:
                plain = secure["PLAINTEXT"]
                create_topic(plain, "outage.in", partitions=3)
                produce(plain, "outage.in", records(make_transactions(1000, seed=32).drop("is_fraud")))
                given = ["--bootstrap", plain, "--in-topic", "outage.in", "--group", "g-outage"]
                proc = stream(args.src, *base[:2], "--out-topic", "outage.out", *given, "--stats-interval", "3600")
                lines, thread = collect(proc)
                while not group_caught_up(plain, "g-outage", "outage.in"):
                    time.sleep(0.5)
                stopped = time.monotonic()
                broker("stop", tmp / "data")
                time.sleep(max(0.0, args.outage - (time.monotonic() - stopped)))
                restarting = time.monotonic()
                broker("start", tmp / "data")
                during = [line for at, line in lines if stopped <= at <= restarting]
                produce(plain, "outage.in", records(make_transactions(1000, seed=33).drop("is_fraud")))
                deadline = time.monotonic() + 300
                while not group_caught_up(plain, "g-outage", "outage.in") and time.monotonic() < deadline:
                    time.sleep(0.5)
                recovered = group_caught_up(plain, "g-outage", "outage.in")
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=120)
                thread.join(timeout=30)
                result["outage"] = {
                    "seconds": round(restarting - stopped, 1),
                    "lines": len(during),
                    "distinct": len({line.split(" (")[0] for line in during}),
                    "recovered": recovered,
                    "exit": proc.returncode,
                    "first_lines": during[:8],
                }
                print(f"{restarting - stopped:.0f} s outage: {len(during)} lines; recovered: {recovered}", flush=True)
        finally:
            broker("stop", tmp / "data")
    out = ROOT / "benchmarks" / "results" / f"stream_misconfig{'-' + args.label if args.label else ''}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
