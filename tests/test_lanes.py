"""The markers that split the fast lane from the full run (tests/conftest.py) follow what a test uses: a broker,
Spark, a PostgreSQL server or Chromium, whether through a fixture or a helper it calls; the `slow` list names
tests that exist."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import SLOW, marks_from_code

ROOT = Path(__file__).resolve().parent.parent


def test_every_slow_entry_names_a_test() -> None:
    stale = []
    for entry in SLOW:
        path, name = entry.split("[")[0].split("::")
        tree = ast.parse((ROOT / path).read_text())
        if name not in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}:
            stale.append(entry)
    assert not stale, f"tests/conftest.py SLOW names tests that are gone: {stale}"


def test_helpers_mark_what_they_need() -> None:
    from tests import test_report, test_spark, test_stream, test_web

    # a broker started by the test itself, a Spark job through the CLI only, Chromium through a helper
    assert marks_from_code([test_stream.test_broker_restart_mid_stream]) == {"kafka"}
    assert marks_from_code([test_spark.test_a_bad_row_is_one_line_without_java_logs]) == {"spark"}
    assert marks_from_code([test_report.test_report_renders_in_chromium]) == {"browser"}
    assert marks_from_code([test_web.test_label_three_records_in_chromium]) == {"browser"}
    # free_port from tests/kafka_helpers needs no broker
    assert marks_from_code([test_web.test_serve_refuses_to_bind_beyond_loopback_without_a_token]) == set()
