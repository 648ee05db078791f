"""The analyst page under attack: cross-site forms (also from a real Chromium page on another origin), foreign
Host headers (DNS rebinding), framing, huge bodies, absurd query values, hostile names."""

from __future__ import annotations

import http.server
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
from fastapi.testclient import TestClient

from segscope.labels import LabelStore
from segscope.model import Model
from segscope.web import create_app
from tests.browser import chromium
from tests.kafka_helpers import free_port


@pytest.fixture
def store(tmp_path: Path, model: Model, new_records: pl.DataFrame) -> Iterator[LabelStore]:
    with LabelStore.open(tmp_path / "labels.db") as opened:
        opened.add_records(model.for_review(model.score(new_records.head(600))), source="new.parquet")
        yield opened


def _client(app, host: str = "127.0.0.1") -> TestClient:
    return TestClient(app, base_url=f"http://{host}")


def _csrf(client: TestClient) -> str:
    page = client.get("/", params={"analyst": "ann"}).text
    return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)


def test_cross_site_form_posts_are_refused(store: LabelStore) -> None:
    client = _client(create_app(store))
    token = _csrf(client)
    rid = store.queue(1)[0]["id"]
    evil = {"Origin": "http://evil.example"}
    # the attack: one cross-site POST to /bulk labels a whole segment
    bulk = {"segment": "-1", "label": "normal", "analyst": "mallory"}
    assert client.post("/bulk", data=bulk, headers=evil).status_code == 403
    assert client.post("/bulk", data={**bulk, "csrf_token": token}, headers=evil).status_code == 403
    assert client.post("/label", data={"id": rid, "label": "normal", "analyst": "m"}, headers=evil).status_code == 403
    referer = {"Referer": "http://evil.example/page.html"}
    assert client.post("/bulk", data={**bulk, "csrf_token": token}, headers=referer).status_code == 403
    assert client.post("/bulk", data={**bulk, "csrf_token": token}, headers={"Origin": "null"}).status_code == 403
    # same site but no token (a form on another port of this host, or a stale page): refused too
    assert client.post("/bulk", data=bulk).status_code == 403
    assert client.post("/bulk", data={**bulk, "csrf_token": "0" * 64}).status_code == 403
    assert store.labels().height == 0
    # the page's own form, with its token and same-origin headers, works
    own = {"Origin": "http://127.0.0.1"}
    done = client.post("/bulk", data={**bulk, "csrf_token": token}, headers=own, follow_redirects=False)
    assert done.status_code == 303 and store.labels().height > 0


def test_json_api_needs_json_and_same_origin(store: LabelStore) -> None:
    client = _client(create_app(store))
    rid = store.queue(1)[0]["id"]
    body = json.dumps({"id": rid, "label": "anomaly", "analyst": "ann"})
    # what a cross-site page can send without a CORS preflight: a "simple" text/plain or form body
    for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        assert client.post("/api/labels", content=body, headers={"Content-Type": kind}).status_code == 415
    json_headers = {"Content-Type": "application/json"}
    evil = {**json_headers, "Origin": "http://evil.example"}
    assert client.post("/api/labels", content=body, headers=evil).status_code == 403
    assert store.labels().height == 0
    assert client.post("/api/labels", content=body, headers=json_headers).status_code == 201  # scripts, curl


def test_foreign_host_headers_are_refused(store: LabelStore) -> None:
    """DNS rebinding: evil.example resolving to 127.0.0.1 reaches the server with Host: evil.example."""
    app = create_app(store, allowed_hosts=["analyst.internal"])
    for host in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example", "localhost.evil.example"):
        response = _client(app, host).get("/api/queue")
        assert response.status_code == 400, host
        assert "not served here" in response.json()["detail"]
    for host in ("127.0.0.1", "127.0.0.1:8000", "localhost:8000", "[::1]:8000", "analyst.internal:8000"):
        assert _client(app, host).get("/api/queue").status_code == 200, host


def test_security_headers(store: LabelStore) -> None:
    client = _client(create_app(store))
    for path in ("/", "/labels", "/api/queue", "/healthz"):
        headers = client.get(path).headers
        csp = headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp, path
        assert "unsafe-inline" not in csp
        assert headers["x-frame-options"] == "DENY"
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "same-origin"
    page = client.get("/")
    nonce = re.search(r"script-src 'nonce-([^']+)'", page.headers["content-security-policy"]).group(1)
    assert f'<script nonce="{nonce}">' in page.text
    assert 'style="' not in page.text  # inline style attributes would need 'unsafe-inline'
    cookie = _client(create_app(store)).get("/").headers["set-cookie"]
    assert "segscope_csrf=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie


def test_huge_bodies_get_413(store: LabelStore) -> None:
    client = _client(create_app(store, max_body_bytes=1 << 20, max_labels=100))
    rid = store.queue(1)[0]["id"]
    huge = json.dumps([{"id": rid, "label": "anomaly", "analyst": "x" * 200, "note": "n" * 9000}] * 6000)
    response = client.post("/api/labels", content=huge, headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and "larger than 1,048,576 bytes" in response.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield b"["
        for _ in range(3000):
            yield json.dumps({"id": rid, "label": "anomaly", "analyst": "a", "note": "n" * 500}).encode() + b","
        yield b"{}]"

    response = client.post("/api/labels", content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    many = json.dumps([{"id": rid, "label": "anomaly", "analyst": "a"}] * 101)
    response = client.post("/api/labels", content=many, headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and "at most 100" in response.json()["detail"]
    assert store.labels().height == 0


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/api/queue", {"segment": "99999999999999999999"}),
        ("/api/queue", {"segment": "-5"}),
        ("/api/queue", {"min_score": "nan"}),
        ("/api/queue", {"limit": "100000"}),
        ("/", {"segment": "99999999999999999999"}),
        ("/", {"analyst": "a" * 5000}),
    ],
)
def test_absurd_query_values_are_422_not_500(store: LabelStore, path: str, params: dict[str, str]) -> None:
    assert _client(create_app(store)).get(path, params=params).status_code == 422


@pytest.mark.parametrize("analyst", ["ann\x00", "\u202eeciла", "ann\u2066x", "a\nb", "x" * 300, "ann\u200fx"])
def test_hostile_analyst_names_are_refused(store: LabelStore, analyst: str) -> None:
    client = _client(create_app(store))
    rid = store.queue(1)[0]["id"]
    response = client.post("/api/labels", json={"id": rid, "label": "anomaly", "analyst": analyst})
    assert response.status_code == 422
    assert store.labels().height == 0


def test_names_in_other_scripts_are_kept(store: LabelStore) -> None:
    client = _client(create_app(store))
    rid = store.queue(1)[0]["id"]
    name = "مهدی\u200cزاده"  # a Persian name spelled with a zero-width non-joiner
    assert client.post("/api/labels", json={"id": rid, "label": "anomaly", "analyst": name}).status_code == 201
    assert store.labels()["analyst"].to_list() == [name]


class _EvilSite(http.server.BaseHTTPRequestHandler):
    """Another origin: a page that auto-submits the queue's bulk form to the analyst page."""

    target = ""

    def do_GET(self) -> None:
        page = f"""<!DOCTYPE html><html><body>
<form id="f" method="post" action="{self.target}/bulk">
<input name="segment" value="-1"><input name="label" value="normal"><input name="analyst" value="mallory">
<input name="csrf_token" value="guessed"></form>
<script>document.getElementById("f").submit();</script></body></html>"""
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(page.encode())

    def log_message(self, *args: object) -> None:
        pass


def test_cross_site_form_from_a_real_chromium_page_is_refused(store: LabelStore, tmp_path: Path) -> None:
    """An analyst who has the page open visits another site (another port of the same host: same site for
    cookies, another origin) that posts the bulk form: Chromium sends it, segscope refuses it."""
    from playwright.sync_api import sync_playwright

    url = str(store.engine.url).removeprefix("sqlite:///")
    store.close()
    port, evil_port = free_port(), free_port()
    log = tmp_path / "serve.log"
    with log.open("w") as sink:
        server = subprocess.Popen(
            [sys.executable, "-m", "segscope.cli", "serve", "--store", url, "--port", str(port)],
            stderr=sink,
            env={**os.environ, "SEGSCOPE_TOKEN": ""},
        )
    _EvilSite.target = f"http://127.0.0.1:{port}"
    evil = http.server.ThreadingHTTPServer(("127.0.0.1", evil_port), _EvilSite)
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except OSError:
                assert server.poll() is None, log.read_text()
                time.sleep(0.2)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/?analyst=ann")  # the analyst's session: cookies are set
            assert page.locator("tr.item").count() > 0
            statuses = []
            page.on("response", lambda r: statuses.append((r.url, r.status)))
            page.goto(f"http://127.0.0.1:{evil_port}/")
            page.wait_for_url(f"http://127.0.0.1:{port}/bulk", timeout=20_000)
            assert (f"http://127.0.0.1:{port}/bulk", 403) in statuses
            assert "another site was refused" in page.content()
            # and a foreign page cannot frame the queue: the frame stays empty
            framed = browser.new_page()
            framed.set_content(f'<iframe id="q" src="http://127.0.0.1:{port}/"></iframe>')
            time.sleep(1.5)
            frame = framed.frame_locator("#q")
            assert frame.locator("tr.item").count() == 0
            browser.close()
    finally:
        evil.shutdown()
        evil.server_close()
        server.send_signal(signal.SIGINT)
        server.wait(timeout=30)
    with LabelStore.open(url) as reopened:
        assert reopened.labels().height == 0
