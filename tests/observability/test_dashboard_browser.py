"""The dashboard in a real browser (Debian's Chromium driven by Playwright) on real gunicorn."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.tokens import add_token
from tests.conftest import unavailable
from tests.support import ROOT, Service

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
# Chromium as root in a container: no sandbox, and nothing that reaches for the network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Set to 1 to refresh the README's screenshot from this test.
UPDATE_SCREENSHOT = os.environ.get("LOCKSTEP_UPDATE_SCREENSHOT") == "1"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One Chromium for the module; each test's page opens in a fresh context of its own."""
    if not Path(CHROMIUM).exists():
        unavailable(f"no browser: {CHROMIUM} missing (scripts/system-deps.sh installs chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def _auth(token: str | None) -> dict[str, str]:
    return {} if token is None else {"Authorization": f"Bearer {token}"}


def post(url: str, body: dict[str, Any] | None = None, token: str | None = None) -> dict[str, Any]:
    data = json.dumps(body).encode() if body is not None else b""
    request = urllib.request.Request(url, data=data, method="POST", headers=_auth(token))
    with urllib.request.urlopen(request, timeout=10) as r:
        result: dict[str, Any] = json.load(r)
        return result


def put(url: str, body: dict[str, Any], token: str | None = None) -> None:
    data = json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="PUT", headers=_auth(token))
    with urllib.request.urlopen(request, timeout=10):
        pass


def get_text(url: str, token: str) -> str:
    request = urllib.request.Request(url, headers=_auth(token))
    with urllib.request.urlopen(request, timeout=10) as r:
        text: str = r.read().decode()
        return text


def test_dashboard_increments_and_follows_outside_changes(browser: Any, tmp_path: Path) -> None:
    """Clicking +1 changes the value shown, and a change made with an outside HTTP request
    appears without a reload."""
    from playwright.sync_api import expect

    with Service(tmp_path / "data", workers=2) as service:
        post(service.url + "/counters/visits/increment")
        post(service.url + "/counters/downloads/increment", {"by": 41})
        put(service.url + "/items/settings", {"value": {"theme": "light", "size": 3}})
        page = browser.new_page(viewport={"width": 1000, "height": 900})
        try:
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(service.url + "/")
            value = page.locator('#counters tr[data-name="visits"] td.num')
            expect(value).to_have_text("1")
            expect(page.locator('#items tr[data-id="settings"]')).to_contain_text('"theme"')

            page.get_by_role("button", name="Increment visits").click()
            expect(value).to_have_text("2")

            # Right after a periodic list refresh, so only the event stream can bring the
            # outside change within the next few seconds.
            page.evaluate("window.notReloaded = true")
            with page.expect_response(lambda r: "/counters?limit" in r.url, timeout=15_000):
                pass
            lists: list[str] = []
            page.on("request", lambda r: lists.append(r.url) if "/counters?" in r.url else None)
            post(service.url + "/counters/visits/increment", {"by": 5})
            expect(value).to_have_text("7", timeout=3_000)
            assert lists == []
            assert page.evaluate("window.notReloaded") is True

            page.get_by_role("button", name="Edit settings").click()
            page.get_by_label("Value (JSON)").fill('{"theme": "dark"}')
            page.get_by_role("button", name="Save record").click()
            row = page.locator('#items tr[data-id="settings"]')
            expect(row).to_contain_text('"dark"')
            expect(row.locator("td.num")).to_have_text("2")
            expect(page.locator("#fig-rps")).to_have_text(re.compile(r"^\d+\.\d$"), timeout=10_000)
            assert errors == []

            shot = tmp_path / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            if UPDATE_SCREENSHOT:
                shutil.copyfile(shot, ROOT / "docs" / "dashboard.png")
        finally:
            page.close()


def test_dashboard_works_with_tokens_typed_in(browser: Any, tmp_path: Path) -> None:
    """With a tokens file, the page loads open but shows nothing until a write token is typed
    in; then lists, +1, live outside changes (the stream sends the token in a header, never
    in a URL) and the figures all work, and no log line or metric holds the token."""
    from playwright.sync_api import expect

    tokens = tmp_path / "tokens.json"
    token = add_token(tokens, "dashboard", "write")
    scraper = add_token(tokens, "scraper", "metrics")
    env = {"LOCKSTEP_TOKENS_FILE": str(tokens), "LOCKSTEP_LOG_LEVEL": "debug"}
    with Service(tmp_path / "data", workers=2, env=env) as service:
        post(service.url + "/counters/visits/increment", token=token)
        put(service.url + "/items/settings", {"value": {"theme": "light"}}, token=token)
        page = browser.new_page()
        try:
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(service.url + "/")
            expect(page.locator("#status")).to_contain_text("Could not list", timeout=10_000)
            expect(page.locator("#counters tr")).to_have_count(0)

            sent: list[tuple[str, str | None]] = []
            failed: list[str] = []
            page.on("request", lambda r: sent.append((r.url, r.headers.get("authorization"))))
            page.on("response", lambda r: failed.append(r.url) if r.status >= 400 else None)
            page.get_by_label("Bearer token").fill(token)
            page.get_by_label("Bearer token").press("Tab")
            value = page.locator('#counters tr[data-name="visits"] td.num')
            expect(value).to_have_text("1")
            expect(page.locator('#items tr[data-id="settings"]')).to_contain_text('"light"')
            expect(page.locator("#status")).to_contain_text("Live", timeout=10_000)

            page.get_by_role("button", name="Increment visits").click()
            expect(value).to_have_text("2")
            # Only the token-carrying stream can bring this in before the next re-list.
            with page.expect_response(lambda r: "/counters?limit" in r.url, timeout=15_000):
                pass
            post(service.url + "/counters/visits/increment", {"by": 5}, token=token)
            expect(value).to_have_text("7", timeout=3_000)
            expect(page.locator("#fig-rps")).to_have_text(re.compile(r"^\d+\.\d$"), timeout=10_000)
            expect(page.locator("#fig-batch")).to_have_text(re.compile(r"^\d+\.\d$"))
            assert errors == [] and failed == []
            streams = [auth for url, auth in sent if "/events?" in url]
            assert streams and all(auth == f"Bearer {token}" for auth in streams)
            assert all(token not in url for url, _ in sent)
        finally:
            page.close()
        metrics = get_text(service.url + "/metrics", scraper)
        log = service.log()
    assert "/stats" in log  # the request log did run
    assert token not in log and token not in metrics and scraper not in log


def get_bytes(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as r:
        body: bytes = r.read()
        return body


# A record whose numbers a JavaScript double cannot hold or whose spelling it would change,
# and whose member order a JavaScript object would change (integer-like keys go first).
BIG_RECORD = (
    '{"value":{"id":12345678901234567891,"label":"a","min":-9223372036854775808,'
    '"ratio":0.1,"10":[1.0,1e300,-0.0]}}'
)


def test_dashboard_shows_int64_exactly(browser: Any, tmp_path: Path) -> None:
    """Counters near the int64 limits show every digit, from the list, from a +1 click
    and from the event stream alike."""
    from playwright.sync_api import expect

    with Service(tmp_path / "data", workers=1) as service:
        put(service.url + "/counters/top", {"value": 2**63 - 2})
        put(service.url + "/counters/bottom", {"value": -(2**63) + 1})
        page = browser.new_page()
        try:
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(service.url + "/")
            top = page.locator('#counters tr[data-name="top"] td.num')
            bottom = page.locator('#counters tr[data-name="bottom"] td.num')
            expect(top).to_have_text("9223372036854775806")
            expect(bottom).to_have_text("-9223372036854775807")
            page.get_by_role("button", name="Increment top").click()
            expect(top).to_have_text("9223372036854775807")
            expect(page.locator("#status")).to_contain_text("9223372036854775807")
            post(service.url + "/counters/bottom/increment", {"by": -1})
            expect(bottom).to_have_text("-9223372036854775808", timeout=3_000)
            assert errors == []
        finally:
            page.close()


def test_dashboard_save_keeps_what_was_not_edited(browser: Any, tmp_path: Path) -> None:
    """Edit → Save of a record changes only what was edited: big integers, number spellings
    and member order of the rest are stored byte for byte as they were."""
    from playwright.sync_api import expect

    with Service(tmp_path / "data", workers=1) as service:
        request = urllib.request.Request(
            service.url + "/items/big", data=BIG_RECORD.encode(), method="PUT"
        )
        with urllib.request.urlopen(request, timeout=10):
            pass
        stored = get_bytes(service.url + "/items/big")
        page = browser.new_page()
        try:
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(service.url + "/")
            row = page.locator('#items tr[data-id="big"]')
            expect(row).to_contain_text("12345678901234567891")
            page.get_by_role("button", name="Edit big").click()
            editor = page.get_by_label("Value (JSON)")
            expect(editor).to_have_value(re.compile("12345678901234567891"))
            editor.fill(editor.input_value().replace('"a"', '"b"'))
            page.get_by_role("button", name="Save record").click()
            expect(row.locator("td.num")).to_have_text("2")
            expect(row).to_contain_text("12345678901234567891")
            assert errors == []
        finally:
            page.close()
        after = get_bytes(service.url + "/items/big")
    assert json.loads(after)["version"] == 2
    value = after[after.index(b'"value":') : after.index(b',"version":')]
    old = stored[stored.index(b'"value":') : stored.index(b',"version":')]
    assert value == old.replace(b'"label":"a"', b'"label":"b"')


def page_showing_visits(browser: Any, service: Service) -> tuple[Any, Any]:
    """A dashboard page showing counter ``visits`` at 1 (made here), and its value's cell."""
    from playwright.sync_api import expect

    post(service.url + "/counters/visits/increment")
    page = browser.new_page()
    try:
        page.goto(service.url + "/")
        value = page.locator('#counters tr[data-name="visits"] td.num')
        expect(value).to_have_text("1")
    except BaseException:
        page.close()
        raise
    return page, value


def test_dashboard_resumes_its_stream_after_a_restart(browser: Any, tmp_path: Path) -> None:
    """When the service restarts, the dashboard reconnects its stream with Last-Event-ID set to
    the last commit it was sent, and goes on showing changes."""
    from playwright.sync_api import expect

    service = Service(tmp_path / "data", workers=2).start()
    try:
        page, value = page_showing_visits(browser, service)
        try:
            post(service.url + "/counters/visits/increment")
            expect(value).to_have_text("2")
            with urllib.request.urlopen(service.url + "/changes?since=0", timeout=10) as r:
                last = json.load(r)["next"]
            with page.expect_request(lambda r: "/events?" in r.url, timeout=30_000) as again:
                service.quit()
                service.start()
            assert again.value.headers.get("last-event-id") == str(last)
            post(service.url + "/counters/visits/increment", {"by": 5})
            expect(value).to_have_text("7", timeout=10_000)
        finally:
            page.close()
    finally:
        service.quit()


def test_dashboard_keeps_a_streamed_change_over_an_older_list(browser: Any, tmp_path: Path) -> None:
    """A re-list still on its way when the stream brings a newer value does not undo it.

    The re-list's records list is held back; meanwhile a change comes in on the stream.
    When the list is let through, the page renders the counters again from the older list:
    the newer version must win.
    """
    from playwright.sync_api import expect

    with Service(tmp_path / "data", workers=2) as service:
        page, value = page_showing_visits(browser, service)
        try:
            expect(page.locator("#status")).to_contain_text("Live", timeout=10_000)
            held: list[Any] = []
            page.route("**/items?limit=*", lambda route: held.append(route))
            with page.expect_response(lambda r: "/counters?limit" in r.url, timeout=15_000):
                pass  # the next re-list: its counters list (value 1) is in, its records held
            deadline = time.monotonic() + 10
            while not held:
                assert time.monotonic() < deadline, "the records list was never requested"
                page.wait_for_timeout(20)
            post(service.url + "/counters/visits/increment", {"by": 5})
            expect(value).to_have_text("6", timeout=5_000)  # from the stream
            shown = value.element_handle()
            held[0].continue_()
            page.unroute("**/items?limit=*")
            # renderCounters replaces the row once the re-list is in.
            page.wait_for_function("(cell) => !cell.isConnected", arg=shown, timeout=10_000)
            expect(value).to_have_text("6")
        finally:
            page.close()
