"""`segscope report`: one self-contained HTML file, checked by rendering it in headless Chromium."""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl
import pytest

from segscope.model import Model
from segscope.testing.data import make_transactions
from tests.browser import render

HOSTILE = "<script>document.title='pwned'</script>"


@pytest.fixture(scope="module")
def report_files(tmp_path_factory: pytest.TempPathFactory, segments_model: Model) -> Path:
    root = tmp_path_factory.mktemp("report")
    segments_model.save(root / "bundle")
    new = make_transactions(2000, seed=4)
    # a hostile value in a record that will be among the top alerts: it must show as text
    new = new.with_columns(
        pl.when(pl.arange(0, new.height) == 7)
        .then(pl.lit(HOSTILE))
        .otherwise(pl.col("merchant_category"))
        .alias("merchant_category"),
        pl.when(pl.arange(0, new.height) == 7).then(pl.lit(250_000.0)).otherwise(pl.col("amount")).alias("amount"),
    )
    new.write_parquet(root / "new.parquet")
    return root


def _plots(dom: str) -> dict[str, str]:
    """Each plot's rendered markup by div id (plotly draws into the div after the page's scripts run)."""
    parts = re.split(r'(?=<div id="plot-)', dom)
    return {m.group(1): part for part in parts if (m := re.match(r'<div id="plot-(\w+)"', part))}


def test_report_renders_in_chromium(report_files: Path, run_cli) -> None:
    out = report_files / "report.html"
    done = run_cli(
        "report",
        "--bundle",
        report_files / "bundle",
        report_files / "new.parquet",
        "--out",
        out,
        "--label-column",
        "is_fraud",
        "--map-rows",
        "800",
    )
    assert done.code == 0, done.err
    text = out.read_text()
    assert "<script src=" not in text  # self-contained: plotly.js is inlined, nothing is fetched
    assert out.stat().st_mode & 0o044  # readable like any file the user creates, not private like a temp file

    dom = render(out.as_uri(), screenshot="report.png")
    plots = _plots(dom)
    assert set(plots) == {"map", "scores", "pr"}
    for name, markup in plots.items():
        assert "js-plotly-plot" in markup and "main-svg" in markup, f"{name} was not drawn"
    # the map draws a marker per record: every segment's trace plus the ringed alerts
    assert plots["map"].count('class="point"') >= 800
    assert "alerts" in plots["map"] and "segment " in plots["map"]
    assert plots["scores"].count('class="point"') + plots["scores"].count("<path") > 20  # bars and boxes
    assert re.search(r"score \(AP 0\.\d{3}\)", plots["pr"])  # a PR curve with its average precision
    assert "Segment profiles" in dom and dom.count('class="card"') == len(
        [c for c in Model.load(report_files / "bundle").segment_profiles]
    )
    # the hostile value is shown as text and never runs
    assert "pwned" not in re.search(r"<title>(.*?)</title>", dom).group(1)
    assert "&lt;script&gt;document.title" in dom
    assert HOSTILE not in dom


def test_report_without_data_shows_the_fit_map(report_files: Path, run_cli) -> None:
    out = report_files / "fit-only.html"
    done = run_cli("report", "--bundle", report_files / "bundle", "--out", out)
    assert done.code == 0, done.err
    plots = _plots(render(out.as_uri()))
    assert set(plots) == {"map"}
    assert plots["map"].count('class="point"') == 2000  # the whole fit sample


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--out", "{root}/r.txt"], "give --out a name ending in .html"),
        (["--out", "{root}/nowhere/r.html"], "folder does not exist"),
        (["{root}/new.parquet", "--out", "{root}/r.html", "--label-column", "nope"], "no column 'nope'"),
        (["{root}/new.parquet", "--out", "{root}/r.html", "--label-column", "merchant_category"], "use anomaly/normal"),
        (["--out", "{root}/r.html", "--label-column", "is_fraud"], "labels need DATA"),
    ],
)
def test_report_bad_input(report_files: Path, run_cli, args: list[str], message: str) -> None:
    done = run_cli("report", "--bundle", report_files / "bundle", *[a.format(root=report_files) for a in args])
    assert done.code == 2
    assert message in done.err and "Traceback" not in done.err
    assert not (report_files / "r.html").exists() and not (report_files / "r.txt").exists()
