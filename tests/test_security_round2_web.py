"""Issue 25, the analyst page and API: names in any script, the analyst cookie set only by this site, the token
kept out of API URLs, empty record ids, deeply nested JSON."""

from __future__ import annotations

import html
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

from segscope.exceptions import ConfigError
from segscope.labels import LabelStore
from segscope.model import Model
from segscope.web import create_app
from tests.browser import chromium
from tests.kafka_helpers import free_port


@pytest.fixture
def store(tmp_path: Path, model: Model, new_records: pl.DataFrame) -> Iterator[LabelStore]:
    with LabelStore.open(tmp_path / "labels.db") as opened:
        opened.add_records(model.for_review(model.score(new_records.head(300))), source="new.parquet")
        yield opened


def _client(store: LabelStore, **kwargs: object) -> TestClient:
    return TestClient(create_app(store, **kwargs), base_url="http://127.0.0.1")  # type: ignore[arg-type]


def _form(page: str) -> dict[str, str]:
    """The first decision form of a queue page: the hidden fields a click posts."""
    form = page[page.index('<form method="post" action="/label"') :]
    form = form[: form.index("</form>")]
    return dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', form))


def _shown_analyst(page: str) -> str:
    return html.unescape(re.search(r'<input name="analyst" value="([^"]*)"', page).group(1))


@pytest.mark.parametrize("name", ["张伟", "Łukasz", "Zoë O'Brien-Ünal", "محمد", "ann%20x"])
def test_analyst_names_in_any_script(store: LabelStore, name: str) -> None:
    client = _client(store)
    first = client.get("/", params={"analyst": name})
    assert first.status_code == 200
    assert _shown_analyst(first.text) == name
    assert first.headers["set-cookie"].isascii()
    again = client.get("/")  # the cookie brings the name back, decoded
    assert again.status_code == 200 and _shown_analyst(again.text) == name
    form = _form(again.text)
    done = client.post("/label", data={**form, "analyst": "", "label": "anomaly"}, follow_redirects=False)
    assert done.status_code == 303, done.text
    assert store.labels()["analyst"].to_list() == [name]
    assert "199 of 200 reviews left today" in client.get("/").text  # the budget counts the name's labels
    assert name in html.unescape(client.get("/labels").text)


def test_the_analyst_cookie_is_only_set_by_this_site(store: LabelStore) -> None:
    client = _client(store)
    assert _shown_analyst(client.get("/", params={"analyst": "ann"}).text) == "ann"
    foreign = [
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},  # another port or subdomain: another origin
        {"Sec-Fetch-Site": "cross-site", "Referer": "http://127.0.0.1/"},
        {"Referer": "http://evil.example/page.html"},  # a browser without Sec-Fetch-*
    ]
    for headers in foreign:
        page = client.get("/", params={"analyst": "mallory"}, headers=headers)
        assert page.status_code == 200 and "set-cookie" not in page.headers, headers
        assert _shown_analyst(page.text) == "ann", headers  # the page and its forms keep the analyst's own name
        assert "mallory" not in json.dumps(_form(page.text))
        assert "came from another site" in page.text
    assert _shown_analyst(client.get("/").text) == "ann"
    own = [{"Sec-Fetch-Site": "same-origin"}, {"Sec-Fetch-Site": "none"}, {"Referer": "http://127.0.0.1/?x=1"}, {}]
    for i, headers in enumerate(own):
        page = client.get("/", params={"analyst": f"bob{i}"}, headers=headers)
        assert "segscope_analyst=" in page.headers.get("set-cookie", ""), headers
        assert _shown_analyst(client.get("/").text) == f"bob{i}"


def test_the_token_is_not_taken_from_api_urls(store: LabelStore) -> None:
    client = _client(store, token="s3cret")
    rid = store.queue(1)[0]["id"]
    refused = client.get("/api/queue", params={"token": "s3cret"})
    assert refused.status_code == 401 and "Authorization" in refused.json()["detail"]
    body = {"id": rid, "label": "anomaly", "analyst": "ann"}
    assert client.post("/api/labels?token=s3cret", json=body).status_code == 401
    assert client.get("/api/labels?token=s3cret").status_code == 401
    assert client.get("/api/openapi.json?token=s3cret").status_code == 401
    assert store.labels().height == 0
    bearer = {"Authorization": "Bearer s3cret"}
    assert client.get("/api/queue", headers=bearer).status_code == 200
    assert client.post("/api/labels", json=body, headers=bearer).status_code == 201
    # a link to a page logs a browser in (a cookie); the page's script takes the token out of the address bar
    assert client.post("/label?token=s3cret", data={"id": rid}).status_code == 401
    page = client.get("/?token=s3cret")
    assert page.status_code == 200 and "segscope_token=" in page.headers["set-cookie"]
    assert "history.replaceState" in page.text
    assert client.get("/api/queue").status_code == 200  # with the cookie
    assert _client(store, token="s3cret").get("/labels", params={"token": "wrong"}).status_code == 401


@pytest.mark.parametrize("token", ["pässwort", "张伟", "two words", "tab\there"])
def test_a_token_a_header_cannot_carry_is_refused_at_start(
    store: LabelStore, run_cli, tmp_path: Path, token: str
) -> None:
    """A token travels in a header and a cookie (Latin-1 at most; setting the cookie failed with a 500)."""
    with pytest.raises(ConfigError, match="ASCII letters, digits and punctuation"):
        create_app(store, token=token)
    served = run_cli("serve", "--store", tmp_path / "labels.db", "--token", token)
    assert served.code == 2 and served.err.startswith("error: --token: use ASCII") and "Traceback" not in served.err
    client = _client(store, token="Ab0-_.~!#$%&'*+^`|")
    assert client.get("/?token=Ab0-_.~!%23$%25%26'*%2B^`|").status_code == 200
    assert client.get("/labels").status_code == 200  # the cookie reads back


def test_empty_record_ids_are_refused(store: LabelStore) -> None:
    client = _client(store)
    for blank in ("", " ", "\u3000"):
        response = client.post("/api/labels", json={"id": blank, "label": "anomaly", "analyst": "ann"})
        assert response.status_code == 422, (blank, response.text)
    page = client.get("/", params={"analyst": "ann"})
    form = _form(page.text)
    for blank in ("", "  "):
        response = client.post("/label", data={**form, "id": blank, "label": "anomaly"}, follow_redirects=False)
        assert response.status_code == 422 and "record id" in response.text, (blank, response.text)
    assert store.labels().height == 0


@pytest.mark.parametrize("body", ["[" * 100_000 + "]" * 100_000, '{"a":' * 100_000 + "1" + "}" * 100_000])
def test_deeply_nested_json_is_a_400(store: LabelStore, body: str) -> None:
    response = _client(store).post("/api/labels", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and "nested too deeply" in response.json()["detail"]
    assert store.labels().height == 0


class _Linker(http.server.BaseHTTPRequestHandler):
    """Another site: a page that sends the browser to the analyst page with ``?analyst=mallory``."""

    target = ""

    def do_GET(self) -> None:
        page = f'<!DOCTYPE html><a id="go" href="{self.target}/?analyst=mallory">the queue</a>'
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(page.encode())

    def log_message(self, *args: object) -> None:
        pass


def _serve(store: LabelStore, log: Path, token: str) -> tuple[subprocess.Popen[bytes], str, str]:
    """`segscope serve` on the store's file in a child process: (process, base URL, store path)."""
    url = str(store.engine.url).removeprefix("sqlite:///")
    store.close()
    port = free_port()
    with log.open("w") as sink:
        server = subprocess.Popen(
            [sys.executable, "-m", "segscope.cli", "serve", "--store", url, "--port", str(port)],
            stderr=sink,
            env={**os.environ, "SEGSCOPE_TOKEN": token},
        )
    base = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(base + "/healthz", timeout=1)
            break
        except OSError:
            assert server.poll() is None, log.read_text()
            time.sleep(0.2)
    return server, base, url


def test_a_link_from_another_site_does_not_change_the_analyst(store: LabelStore, tmp_path: Path) -> None:
    """In a real Chromium: the analyst (a non-ASCII name) opens the page, follows a link on another site that
    names another analyst, and labels from the page it lands on: the label is theirs, and so is the cookie."""
    from playwright.sync_api import sync_playwright

    server, base, url = _serve(store, tmp_path / "serve.log", token="")
    other_port = free_port()
    _Linker.target = base
    other = http.server.ThreadingHTTPServer(("127.0.0.1", other_port), _Linker)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(base + "/?analyst=%C5%81ukasz")  # typed or bookmarked
            assert page.locator("input[name=analyst]").first.input_value() == "Łukasz"
            page.goto(f"http://127.0.0.1:{other_port}/")
            page.click("#go")
            page.wait_for_url(base + "/?analyst=mallory")
            assert "came from another site" in page.content()
            assert "mallory" not in page.locator("#queue").inner_html()  # no form carries the name in the link
            rid = page.locator("tr.item").first.get_attribute("data-id")
            page.locator("tr.item").first.locator("button.anomaly").click()
            page.wait_for_selector(".flash")
            page.goto(base + "/")
            assert page.locator("input[name=analyst]").first.input_value() == "Łukasz"
            browser.close()
    finally:
        other.shutdown()
        other.server_close()
        server.send_signal(signal.SIGINT)
        server.wait(timeout=30)
    with LabelStore.open(url) as reopened:
        labels = reopened.labels()
    assert list(zip(labels["id"], labels["analyst"], strict=True)) == [(rid, "Łukasz")]


def test_a_token_link_logs_in_and_leaves_the_address_bar(store: LabelStore, tmp_path: Path) -> None:
    """In a real Chromium: a link with ?token= opens the page (the token becomes a cookie) and the page takes the
    token out of its address (and so out of the history); the API does not take it from the URL."""
    from playwright.sync_api import sync_playwright

    server, base, _ = _serve(store, tmp_path / "serve.log", token="tok-en")
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(base + "/?token=tok-en&limit=7&analyst=ann")
            page.wait_for_function("!location.search.includes('token')")
            assert page.url == base + "/?limit=7&analyst=ann"
            assert page.locator("tr.item").count() == 7
            page.goto(base + "/labels")  # the cookie
            assert "Labels" in page.content()
            api = page.request.get(base + "/api/queue?token=tok-en", headers={"Cookie": ""})
            assert api.status == 401
            browser.close()
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=30)
