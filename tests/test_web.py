"""The analyst page and JSON API: FastAPI's test client, and the real page in headless Chromium (Playwright)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import polars as pl
import pytest
from fastapi.testclient import TestClient

from segscope.labels import LabelStore
from segscope.model import Model
from segscope.web import create_app
from tests.browser import ARTIFACTS, chromium
from tests.kafka_helpers import free_port

HOSTILE = "<script>document.title='pwned'</script>"


def _client(app) -> TestClient:
    """A test client that addresses the app as a browser on this machine would (Host: 127.0.0.1)."""
    return TestClient(app, base_url="http://127.0.0.1")


def _csrf(client: TestClient) -> str:
    """The form token a page carries (its cookie is set on the client by the same request)."""
    page = client.get("/", params={"analyst": "bob"}).text
    return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)


@pytest.fixture
def store(tmp_path: Path, model: Model, new_records: pl.DataFrame):
    records = new_records.head(300).with_columns(
        pl.when(pl.col("txn_id") == new_records["txn_id"][0])
        .then(pl.lit(HOSTILE))
        .otherwise(pl.col("merchant_category"))
        .alias("merchant_category")
    )
    with LabelStore.open(tmp_path / "labels.db") as opened:
        opened.add_records(model.for_review(model.score(records)), source="new.parquet")
        yield opened


def test_api_queue_labels_and_errors(store: LabelStore) -> None:
    client = _client(create_app(store))
    queue = client.get("/api/queue", params={"limit": 5}).json()
    assert len(queue) == 5
    assert {"id", "score", "segment", "reasons", "why", "nearest", "values", "model_version"} <= set(queue[0])
    rid = queue[0]["id"]
    body = {"id": rid, "label": "anomaly", "analyst": "ann", "category": "card testing"}
    assert client.post("/api/labels", json=body).status_code == 201
    again = client.post("/api/labels", json=body)
    assert again.status_code == 200 and again.json() == {"added": 0, "unchanged": 1}  # idempotent
    unknown = client.post("/api/labels", json={**body, "id": "no-such-id"})
    assert unknown.status_code == 404 and "unknown record id" in unknown.json()["detail"]
    assert client.post("/api/labels", json={**body, "label": "maybe"}).status_code == 422
    assert client.post("/api/labels", json={"id": rid}).status_code == 422  # label and analyst missing
    labels = client.get("/api/labels").json()
    assert [(x["id"], x["label"], x["category"], x["analyst"], x["source"]) for x in labels] == [
        (rid, "anomaly", "card testing", "ann", "api")
    ]
    assert rid not in {x["id"] for x in client.get("/api/queue", params={"limit": 50}).json()}


def test_token_required_when_given(store: LabelStore) -> None:
    client = _client(create_app(store, token="s3cret"))
    assert client.get("/api/queue").status_code == 401
    assert client.get("/", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/api/queue", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    first = client.get("/?token=s3cret")  # a link with the token logs the browser in with a cookie
    assert first.status_code == 200
    assert client.get("/labels").status_code == 200
    assert client.get("/healthz").status_code == 200


def test_page_escapes_record_values(store: LabelStore, new_records: pl.DataFrame) -> None:
    client = _client(create_app(store))
    page = client.get("/", params={"analyst": "ann", "limit": 300}).text
    assert new_records["txn_id"][0] in page
    assert HOSTILE not in page
    assert "&lt;script&gt;document.title=&#39;pwned&#39;&lt;/script&gt;" in page


def test_page_forms_label_and_bulk(store: LabelStore) -> None:
    client = _client(create_app(store))
    rid = store.queue(1)[0]["id"]
    token = _csrf(client)
    done = client.post(
        "/label",
        data={"id": rid, "label": "normal", "analyst": "bob", "category": "", "back": "/", "csrf_token": token},
        follow_redirects=False,
    )
    assert done.status_code == 303 and done.headers["location"].startswith("/?")
    assert store.labels()["id"].to_list() == [rid]
    form = {"label": "normal", "csrf_token": token}
    assert client.post("/label", data={**form, "id": "nope", "analyst": "bob"}).status_code == 404
    client.cookies.delete("segscope_analyst")
    assert client.post("/label", data={**form, "id": rid}).status_code == 400  # who?
    page = client.get("/labels").text
    assert rid in page and "bob" in page


def test_serve_refuses_to_bind_beyond_loopback_without_a_token(tmp_path: Path, run_cli, monkeypatch) -> None:
    monkeypatch.delenv("SEGSCOPE_TOKEN", raising=False)
    done = run_cli("serve", "--store", tmp_path / "labels.db", "--host", "0.0.0.0")
    assert done.code == 2 and "pass --token" in done.err and "Traceback" not in done.err


def test_label_three_records_in_chromium(store: LabelStore, tmp_path: Path) -> None:
    """The real page in headless Chromium: click to confirm three records, dismiss one with the keyboard."""
    from playwright.sync_api import sync_playwright

    url = str(store.engine.url)
    store.close()  # the server opens the same file
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("w") as sink:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "segscope.cli",
                "serve",
                "--store",
                url.removeprefix("sqlite:///"),
                "--port",
                str(port),
            ],
            stderr=sink,
            env={**os.environ, "SEGSCOPE_TOKEN": ""},
        )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(base + "/healthz", timeout=1)
                break
            except OSError:
                assert server.poll() is None, log.read_text()
                time.sleep(0.2)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(base + "/?analyst=ann&limit=10")
            clicked = []
            for _ in range(3):
                row = page.locator("tr.item").first
                clicked.append(row.get_attribute("data-id"))
                row.locator("button.anomaly").click()
                page.wait_for_load_state()
                assert page.locator(".flash").inner_text() == f"labelled {clicked[-1]}"
            keyed = page.locator("tr.item").first.get_attribute("data-id")
            page.keyboard.press("n")  # dismiss the highlighted (first) record
            page.wait_for_selector(f".flash:text('labelled {keyed}')")
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "analyst-page.png"), full_page=True)
            page.goto(base + "/labels")
            assert all(rid in page.content() for rid in clicked)
            browser.close()
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=30)
    with LabelStore.open(url.removeprefix("sqlite:///")) as reopened:
        labels = reopened.labels()
    got = {r["id"]: (r["label"], r["analyst"], r["source"]) for r in labels.iter_rows(named=True)}
    assert got == {**{rid: ("anomaly", "ann", "page") for rid in clicked}, keyed: ("normal", "ann", "page")}
