"""An exactly-once stream through repeated broker stops, to count how often it stalls (the intermittent failure of
tests/test_stream_outages.py[stop], issue 28):

    python benchmarks/stream_outage_loop.py [--runs 4] [--outages 3] [--stop 5] [--hog] [--src DIR]
        [--kafka-option debug=cgrp,topic,fetch]

Each run: a real broker, the fraud pack fitted on the card stream of the outage test, records arriving at a steady
rate (keyed by card), and one `segscope stream --exactly-once --state-dir` process. Then, --outages times: wait
until the group commits 200 more records, stop the broker (a controlled shutdown) for --stop seconds, start it
again on the same port and data, and wait up to 180 s for a commit past the mark. An outage "stalled" when no
commit came (after the broker was back, or before the next outage): the run ends there and its log is kept.
--hog runs a busy loop at nice 5 beside it (the full suite's load). --src runs the stream of another checkout's
src (an earlier commit: the "before" figures). Prints one line per outage and the counts; the streams' logs are in
the folder it prints.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from segscope.config import load_config  # noqa: E402
from segscope.model import Model  # noqa: E402
from segscope.testing.data import make_card_stream  # noqa: E402
from tests import test_stream_outages as outage_test  # noqa: E402
from tests.kafka_helpers import Feeder, broker, committed_offsets, create_topic, free_port, records, start_stream  # noqa: E402


def committed(bootstrap: str, group: str) -> int:
    try:
        return sum(committed_offsets(bootstrap, group).values())
    except Exception:  # the coordinator is not back yet
        return -1


def run(folder: Path, bundle: Path, live, outages: int, stop: float, extra: list[str]) -> list[bool]:  # type: ignore[no-untyped-def]
    """One stream through ``outages`` stops; True for each outage it came back from."""
    data = folder / "kafka"
    bootstrap = broker("start", data, free_port())
    proc = None
    results: list[bool] = []
    try:
        create_topic(bootstrap, "loop.in", partitions=3)
        keys = [c.encode() for c in live["card_id"]]
        feeder = Feeder(bootstrap, "loop.in", records(live), keys, seconds=40 * outages + 60)
        feeder.start()
        proc = start_stream(
            bundle, bootstrap, "--in-topic", "loop.in", "--out-topic", "loop.eos", "--group", "g-loop",
            "--batch-size", "500", "--state-dir", str(folder / "state"), "--stats-interval", "5", "--exactly-once",
            *extra, log=folder / "stream.log",
        )  # fmt: skip
        for i in range(outages):
            mark, waited = committed(bootstrap, "g-loop"), time.monotonic()
            while committed(bootstrap, "g-loop") <= mark + 200 and time.monotonic() - waited < 180:
                time.sleep(0.5)
            if committed(bootstrap, "g-loop") <= mark + 200:  # stalled after the previous outage
                results[-1:] = [False]
                break
            mark = committed(bootstrap, "g-loop")
            broker("stop", data)
            time.sleep(stop)
            broker("start", data)
            back = time.monotonic()
            while committed(bootstrap, "g-loop") <= mark and time.monotonic() - back < 180:
                time.sleep(0.5)
            results.append(committed(bootstrap, "g-loop") > mark)
            print(
                f"  outage {i + 1}: {'back' if results[-1] else 'STALLED'} {time.monotonic() - back:.1f} s", flush=True
            )
            if not results[-1]:
                break
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
        broker("stop", data)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--outages", type=int, default=3)
    parser.add_argument("--stop", type=float, default=5.0, help="seconds the broker stays stopped")
    parser.add_argument("--hog", action="store_true", help="a busy loop at nice 5 beside the stream")
    parser.add_argument("--src", type=Path, help="the stream runs this checkout's src")
    parser.add_argument("--kafka-option", action="append", default=[], help="passed to the stream")
    args = parser.parse_args()
    if args.src is not None:
        os.environ["PYTHONPATH"] = str(args.src.resolve())
    extra = [a for option in args.kafka_option for a in ("--kafka-option", option)]
    events = make_card_stream(400, days=20, seed=61)
    cut = int(events.height * 0.6)
    folder = Path(tempfile.mkdtemp(prefix="outage-loop-"))
    Model(load_config(outage_test.PACK)).fit(events[:cut]).save(folder / "bundle")
    hog = subprocess.Popen(["nice", "-n", "5", "sh", "-c", "while :; do :; done"]) if args.hog else None
    counts = {"back": 0, "stalled": 0}
    try:
        for r in range(args.runs):
            print(f"run {r + 1} ({folder / f'run{r + 1}'})", flush=True)
            (folder / f"run{r + 1}").mkdir()
            for ok in run(folder / f"run{r + 1}", folder / "bundle", events[cut:].drop("is_fraud"), args.outages,
                          args.stop, extra):  # fmt: skip
                counts["back" if ok else "stalled"] += 1
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    total = counts["back"] + counts["stalled"]
    print(f"{total} outages: {counts['back']} back, {counts['stalled']} stalled; logs in {folder}")


if __name__ == "__main__":
    main()
