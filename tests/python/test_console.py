"""The operator's console at /ui, in a real headless browser (Debian's Chromium driven by
Playwright): every page loads with no console error and no failed request, axe-core finds no
serious or critical violation, the overview's chart moves under load, a canary in progress shows
its step, weights and analyses, abort is refused without the admin token and rolls the canary
back with it (checked through the API), a hostile model name renders as text, the page works
from the keyboard and on a phone-sized screen. A screenshot of each page is written under
INFERD_CONSOLE_SHOTS (default /tmp/inferd-console-screenshots).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Page, sync_playwright

from inferd_testlib import copy_models

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
SHOTS = Path(os.environ.get("INFERD_CONSOLE_SHOTS", "/tmp/inferd-console-screenshots"))
HOSTILE = "<img src=x onerror=alert(1)>"
TOKEN = "console-admin-secret-7f3a"
LLM = os.environ.get("INFERD_SMOLLM2_GGUF", "")


@pytest.fixture(scope="module")
def server(inferd_server_factory, tmp_path_factory):
    assert Path(CHROMIUM).is_file(), "install Debian's chromium (scripts/test.sh does)"
    assert LLM and Path(LLM).is_file(), "set INFERD_SMOLLM2_GGUF (scripts/test.sh fetches it)"
    repo = copy_models(tmp_path_factory.mktemp("console") / "models", ["add_sub", "simple_mlp", "string_identity"])
    cfg = repo / "simple_mlp" / "config.pbtxt"
    cfg.write_text(cfg.read_text() + "\n" + "".join(
        f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}\n'
        for k, v in [("drift_sample_rate", "1"), ("drift_reference_requests", "30"), ("drift_min_current", "10")]))
    hostile = repo / HOSTILE
    shutil.copytree(repo / "add_sub", hostile)
    (hostile / "config.pbtxt").write_text(
        "\n".join(line for line in (hostile / "config.pbtxt").read_text().splitlines() if not line.startswith("name:")))
    (repo / "smollm2" / "1").mkdir(parents=True)
    shutil.copy(LLM, repo / "smollm2" / "1" / "model.gguf")
    (repo / "smollm2" / "config.pbtxt").write_text(
        'backend: "llm"\nparameters [ { key: "kv_cache_bytes" value: { string_value: "33554432" } } ]\n')
    state = tmp_path_factory.mktemp("console-state")
    srv = inferd_server_factory(repo, "--admin-port", "0", "--admin-token", TOKEN, "--state-dir", str(state))
    assert srv.admin_base, "the admin listener's address"
    s = requests.Session()
    rng = np.random.default_rng(5)
    for _ in range(60):
        r = s.post(f"{srv.http_base}/v2/models/simple_mlp/versions/1/infer", json={"inputs": [
            {"name": "input", "shape": [1, 64], "datatype": "FP32",
             "data": rng.standard_normal(64).astype(np.float32).tolist()}]}, timeout=10)
        assert r.status_code == 200, r.text
    r = s.post(f"{srv.http_base}/v1/completions", json={"model": "smollm2", "prompt": "Hello", "max_tokens": 4},
               timeout=120)
    assert r.status_code == 200, r.text
    return srv


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


class Watched:
    """A page with every console error, page error, failed request and alert recorded."""

    def __init__(self, browser, **context) -> None:
        self.context = browser.new_context(**context)
        self.page: Page = self.context.new_page()
        self.problems: list[str] = []
        self.dialogs: list[str] = []
        p = self.page
        p.on("console", lambda m: self.problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        p.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        p.on("requestfailed", lambda r: self.problems.append(f"failed request: {r.url} {r.failure}"))
        p.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))

    def close(self) -> None:
        self.context.close()


def wait_for_text(page: Page, selector: str, text: str, timeout: float = 15.0) -> str:
    deadline = time.time() + timeout
    seen = ""
    while time.time() < deadline:
        loc = page.locator(selector)
        if loc.count():
            seen = loc.first.inner_text()
            if text in seen:
                return seen
        page.wait_for_timeout(200)
    raise AssertionError(f"{selector!r} never showed {text!r}; last: {seen!r}")


def serious(page: Page) -> list:
    result = Axe().run(page)
    return [(v["id"], v["impact"], [n["target"] for n in v["nodes"]][:3])
            for v in result.response["violations"] if v["impact"] in ("serious", "critical")]


def put_canary(server) -> None:
    spec = {
        "kind": "canary",
        "primary": {"model": "simple_mlp", "version": 1},
        "canary": {"model": "simple_mlp", "version": 2},
        "steps": [{"weight": 20, "duration_secs": 3600}, {"weight": 60, "duration_secs": 3600}],
        "interval_secs": 1,
        "threshold": 3,
        "guardrails": {"max_error_rate": 0.05},
    }
    r = requests.put(f"{server.admin_base}/v2/routes/fraud", json=spec,
                     headers={"authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert r.status_code == 200, r.text


def put_ab_and_shadow(server) -> None:
    auth = {"authorization": f"Bearer {TOKEN}"}
    ab = {"kind": "ab", "targets": [{"model": "simple_mlp", "version": 1, "weight": 50},
                                    {"model": "simple_mlp", "version": 2, "weight": 50}],
          "experiment": {"metric": "conversion", "min_detectable_effect": 0.05}}
    shadow = {"kind": "shadow", "primary": {"model": "simple_mlp", "version": 1},
              "shadow": {"model": "simple_mlp", "version": 2}}
    for name, spec in [("rank", ab), ("mirror", shadow)]:
        r = requests.put(f"{server.admin_base}/v2/routes/{name}", json=spec, headers=auth, timeout=10)
        assert r.status_code == 200, r.text
    s = requests.Session()
    x = np.linspace(-1, 1, 64).astype(np.float32).tolist()
    body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": x}]}
    for i in range(30):
        for route in ("rank", "mirror"):
            r = s.post(f"{server.http_base}/v2/models/{route}/infer", json=body, headers={"x-user-id": f"u{i}"},
                       timeout=10)
            assert r.status_code == 200, r.text
        r = s.post(f"{server.admin_base}/v2/feedback", json={"route": "rank", "key": f"u{i}", "value": i % 3 == 0},
                   headers=auth, timeout=10)
        assert r.status_code == 200, r.text


def test_every_console_page_loads_clean_passes_axe_and_is_screenshotted(server, browser):
    put_canary(server)
    put_ab_and_shadow(server)
    SHOTS.mkdir(parents=True, exist_ok=True)
    w = Watched(browser, viewport={"width": 1280, "height": 900})
    pages = {
        "overview": ("", "h1", "Overview"),
        "model": ("#/model/simple_mlp", "#model-live", "Drift of version 1"),
        "routes": ("#/routes", "main", "fraud"),
        "autoscaling": ("#/autoscaling", "main", "simple_mlp"),
        "llm": ("#/llm", "main", "smollm2"),
    }
    try:
        for name, (fragment, selector, text) in pages.items():
            w.page.goto(f"{server.admin_base}/ui{fragment}")
            wait_for_text(w.page, selector, text)
            assert serious(w.page) == [], name
            w.page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
            assert (SHOTS / f"{name}.png").stat().st_size > 10_000
        # The A/B arms with their intervals and test, the shadow's comparison.
        w.page.goto(f"{server.admin_base}/ui#/routes")
        ab = wait_for_text(w.page, 'section[data-route="rank"]', "p_value")
        assert "confidence interval" in ab and "samples still needed per arm" in ab and "simple_mlp/2" in ab, ab
        shadow = wait_for_text(w.page, 'section[data-route="mirror"]', "agreement")
        assert "\n30\t" in shadow and "PSI" in shadow, shadow  # 30 compared; v2 disagrees with v1
        # The drift view draws the reference against the current window.
        w.page.goto(f"{server.admin_base}/ui#/model/simple_mlp")
        wait_for_text(w.page, "#model-live", "reference 30/30 requests")
        assert w.page.locator("#model-live svg.bars rect.ref").count() > 0
        assert w.page.locator("#model-live svg.bars path.cur").count() > 0
        # The LLM page's latencies come from the completion the fixture sent.
        w.page.goto(f"{server.admin_base}/ui#/llm")
        row = wait_for_text(w.page, "main tbody tr", "smollm2")
        cells = row.split("\t")
        assert cells[6] not in ("", "\u2013"), row  # TTFT ms
    finally:
        w.close()
    assert w.problems == [], w.problems


def test_the_console_sends_a_strict_csp_and_has_no_inline_code(server):
    r = requests.get(f"{server.admin_base}/ui", timeout=10)
    assert r.status_code == 200
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "<script>" not in r.text and "style=" not in r.text and "http://" not in r.text and "https://" not in r.text
    for asset in ("app.js", "app.css", "icon.svg"):
        a = requests.get(f"{server.admin_base}/ui/{asset}", timeout=10)
        assert a.status_code == 200 and a.headers["content-security-policy"] == csp, asset
        assert "http://" not in a.text.replace("http://www.w3.org/2000/svg", ""), asset
    # With an admin listener the console lives there; the HTTP port says where.
    r = requests.get(f"{server.http_base}/ui", timeout=10)
    assert r.status_code == 404 and "admin listener" in r.json()["error"]


def test_the_overview_chart_moves_under_load(server, browser):
    w = Watched(browser)
    stop = threading.Event()

    def load() -> None:
        s = requests.Session()
        body = {"inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "INT64", "data": [1, 2, 3, 4]},
                           {"name": "INPUT1", "shape": [1, 4], "datatype": "INT64", "data": [1, 1, 1, 1]}]}
        while not stop.is_set():
            assert s.post(f"{server.http_base}/v2/models/add_sub/infer", json=body, timeout=10).status_code == 200

    try:
        w.page.goto(f"{server.admin_base}/ui")
        wait_for_text(w.page, "h1", "Overview")
        chart = w.page.locator('path[data-series="requests/s"]')
        chart.first.wait_for()
        before = chart.first.get_attribute("d")
        t = threading.Thread(target=load)
        t.start()
        try:
            deadline = time.time() + 20
            peak = 0.0
            while time.time() < deadline and peak < 5:
                w.page.wait_for_timeout(500)
                row = w.page.locator("main tbody tr", has_text="add_sub").first.inner_text().split("\t")
                peak = max(peak, float(row[2]) if row[2] not in ("", "\u2013") else 0.0)
        finally:
            stop.set()
            t.join(timeout=30)
        after = chart.first.get_attribute("d")
        assert peak >= 5, f"add_sub's requests/s never rose: {peak}"
        assert after != before
        # The line left the zero axis: some point sits above the bottom of the plot.
        ys = [float(p.split()[1]) for p in after.replace("M", "L").split("L") if p.strip()]
        assert min(ys) < max(ys), after
    finally:
        w.close()
    assert w.problems == [], w.problems


def test_a_canary_shows_its_step_and_abort_needs_the_token(server, browser):
    put_canary(server)
    w = Watched(browser)
    auth = {"authorization": f"Bearer {TOKEN}"}
    try:
        w.page.goto(f"{server.admin_base}/ui#/routes")
        card = 'section[data-route="fraud"]'
        text = wait_for_text(w.page, card, "Step 1")
        assert "simple_mlp/2 20%" in text and "simple_mlp/1 80%" in text, text
        wait_for_text(w.page, card, "Analyses")  # one analysis a second is on the timeline

        def abort(expect: str) -> str:
            w.page.locator(f'{card} button[data-action="abort"]').click()
            w.page.locator("#confirm-reason").fill("console test")
            w.page.locator("#confirm-ok").click()
            return wait_for_text(w.page, f"{card} .route-out", expect)

        abort("refused (401)")
        assert requests.get(f"{server.admin_base}/v2/routes/fraud", timeout=10).json()["state"] == "progressing"
        w.page.locator("#token").fill("not-the-token")
        w.page.locator("#token-form button").click()
        abort("refused (403)")
        assert requests.get(f"{server.admin_base}/v2/routes/fraud", timeout=10).json()["state"] == "progressing"
        w.page.locator("#token").fill(TOKEN)
        w.page.locator("#token-form button").click()
        # The token is never shown back.
        assert w.page.locator("#token").input_value() == ""
        assert TOKEN not in w.page.content()
        abort("done (state rolled_back)")
        route = requests.get(f"{server.admin_base}/v2/routes/fraud", headers=auth, timeout=10).json()
        assert route["state"] == "rolled_back" and route["weights"][0]["weight"] == 100, route
        wait_for_text(w.page, card, "rolled_back")
    finally:
        w.close()
    # The browser logs the two refusals the test asked for; nothing else.
    refused = [p for p in w.problems if "status of 401" in p or "status of 403" in p]
    assert len(refused) == 2 and [p for p in w.problems if p not in refused] == [], w.problems


def test_a_hostile_model_name_renders_as_text(server, browser):
    w = Watched(browser)
    try:
        w.page.goto(f"{server.admin_base}/ui")
        wait_for_text(w.page, "main", HOSTILE)
        assert w.page.locator("main img").count() == 0
        link = w.page.get_by_role("link", name=HOSTILE)
        assert link.count() == 1
        link.click()
        assert wait_for_text(w.page, "h1", HOSTILE).endswith(HOSTILE)
        wait_for_text(w.page, "#model-live", "READY")
        assert w.page.locator("img").count() == 0
        w.page.wait_for_timeout(2500)  # a refresh or two
    finally:
        w.close()
    assert w.dialogs == [], "a script from the model's name ran"
    assert w.problems == [], w.problems


def test_the_console_is_usable_by_keyboard_and_on_a_phone(server, browser):
    w = Watched(browser, viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    try:
        w.page.goto(f"{server.admin_base}/ui")
        wait_for_text(w.page, "h1", "Overview")
        overflow = w.page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, f"the page is {overflow}px wider than a phone's screen"
        w.page.screenshot(path=str(SHOTS / "overview-phone.png"), full_page=True)
        # Tab to the Routes link and follow it with Enter.
        for _ in range(10):
            w.page.keyboard.press("Tab")
            if w.page.evaluate("document.activeElement.textContent") == "Routes":
                break
        else:
            raise AssertionError("the Routes link is not reachable with Tab")
        w.page.keyboard.press("Enter")
        wait_for_text(w.page, "h1", "Routes")
        assert w.page.evaluate("location.hash") == "#/routes"
        assert w.page.locator('nav a[aria-current="page"]').inner_text() == "Routes"
    finally:
        w.close()
    assert w.problems == [], w.problems
