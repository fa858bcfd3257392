"""The metrics listener (--metrics-port) as Prometheus sees it: a real Prometheus server scrapes
inferd while load is applied, and the queue-depth and in-flight series come back non-zero from
its query API; `promtool check metrics` finds nothing to say about the page; failures are
counted by reason.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time

import pytest
import requests

from inferd_testlib import example_model_path

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")


def need(tool: str | None, name: str) -> str:
    if tool is None:
        pytest.fail(f"{name} is not installed (Debian package 'prometheus'; .ci/run installs it)", pytrace=False)
    return tool


@pytest.fixture(scope="module")
def server(inferd_server_factory, tmp_path_factory):
    """`slow`: simple_mlp behind a batcher that holds requests 300 ms, so load queues."""
    root = tmp_path_factory.mktemp("metrics") / "models"
    model = root / "slow"
    (model / "1").mkdir(parents=True)
    shutil.copy(example_model_path("simple_mlp", 2), model / "1" / "model.onnx")
    (model / "config.pbtxt").write_text(
        'name: "slow"\nbackend: "onnxruntime"\nmax_batch_size: 64\n'
        "dynamic_batching { max_queue_delay_microseconds: 300000 preferred_batch_size: [ 64 ] }\n"
    )
    srv = inferd_server_factory(root)
    assert srv.metrics_url, "no 'Metrics listening on' line"
    return srv


def body(rows: int = 1) -> dict:
    return {"inputs": [{"name": "input", "shape": [rows, 64], "datatype": "FP32", "data": [0.5] * (64 * rows)}]}


def page(server) -> str:
    r = requests.get(f"{server.metrics_url}/metrics", timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return r.text


def sample(text: str, prefix: str) -> float:
    lines = [l for l in text.splitlines() if l.startswith(prefix)]
    assert len(lines) == 1, (prefix, lines)
    return float(lines[0].rsplit(" ", 1)[1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_promtool_finds_nothing_to_say_about_the_page(server):
    requests.post(f"{server.http_base}/v2/models/slow/infer", json=body(), timeout=10).raise_for_status()
    text = page(server)
    out = subprocess.run([need(PROMTOOL, "promtool"), "check", "metrics"], input=text, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and not out.stdout.strip() and not out.stderr.strip(), out.stdout + out.stderr
    # The same page on the HTTP port.
    http_page = requests.get(f"{server.http_base}/metrics", timeout=10).text
    strip = lambda t: [l for l in t.splitlines() if "uptime" not in l and not l.startswith(("process_", "# HELP process", "# TYPE process"))]
    assert strip(http_page) == strip(text)
    for family in ("inferd_request_duration_seconds_bucket", "inferd_queue_duration_seconds_bucket",
                   "inferd_compute_duration_seconds_bucket", "inferd_model_state", "inferd_model_load_duration_seconds",
                   "inferd_build_info", "process_resident_memory_bytes", "process_cpu_seconds_total"):
        assert family in text, family


def test_failures_are_counted_by_reason(server):
    label = 'inferd_request_failure_total{model="slow",version="1",reason="client_error"}'
    before = sample(page(server), label)
    bad = {"inputs": [{"name": "input", "shape": [1, 63], "datatype": "FP32", "data": [0.0] * 63}]}
    r = requests.post(f"{server.http_base}/v2/models/slow/infer", json=bad, timeout=10)
    assert r.status_code == 400
    after = page(server)
    assert sample(after, label) == before + 1
    assert sample(after, 'inferd_model_state{model="slow",version="1",state="READY"}') == 1
    assert sample(after, 'inferd_model_state{model="slow",version="1",state="LOADING"}') == 0


def test_histograms_are_cumulative_and_end_at_their_count(server):
    for _ in range(3):
        requests.post(f"{server.http_base}/v2/models/slow/infer", json=body(), timeout=10).raise_for_status()
    text = page(server)
    for name in ("inferd_request_duration_seconds", "inferd_queue_duration_seconds",
                 "inferd_compute_duration_seconds", "inferd_batch_size"):
        buckets = [float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
                   if l.startswith(f'{name}_bucket{{model="slow",version="1",')]
        count = sample(text, f'{name}_count{{model="slow",version="1"}}')
        assert count >= 3, (name, count)
        assert buckets == sorted(buckets), (name, buckets)
        assert buckets[-1] == count, (name, buckets, count)
        assert buckets[0] < count or name == "inferd_batch_size", (name, buckets)


def test_a_real_prometheus_scrapes_queue_depth_and_inflight_under_load(server, tmp_path):
    prom_port = free_port()
    target = server.metrics_url.removeprefix("http://").replace("0.0.0.0", "127.0.0.1")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"scrape_configs:\n  - job_name: inferd\n    static_configs:\n      - targets: ['{target}']\n"
    )
    prom = subprocess.Popen(
        [need(PROMETHEUS, "prometheus"), f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{prom_port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    api = f"http://127.0.0.1:{prom_port}"
    stop = threading.Event()
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(f"{api}/-/ready", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "prometheus did not become ready"
            time.sleep(0.2)

        def load():
            s = requests.Session()
            while not stop.is_set():
                s.post(f"{server.http_base}/v2/models/slow/infer", json=body(), timeout=30)

        threads = [threading.Thread(target=load) for _ in range(8)]
        for t in threads:
            t.start()
        want = {"inferd_queue_depth": None, "inferd_inflight_requests": None}
        deadline = time.monotonic() + 30
        while any(v is None for v in want.values()) and time.monotonic() < deadline:
            for name in want:
                if want[name] is not None:
                    continue
                q = f'max_over_time({name}{{model="slow",version="1"}}[30s])'
                res = requests.get(f"{api}/api/v1/query", params={"query": q}, timeout=5).json()
                values = [float(r["value"][1]) for r in res["data"]["result"]]
                if values and max(values) > 0:
                    want[name] = max(values)
            time.sleep(0.5)
        assert all(v for v in want.values()), f"Prometheus never saw load: {want}"
        up = requests.get(f"{api}/api/v1/query", params={"query": 'up{job="inferd"}'}, timeout=5).json()
        assert [r["value"][1] for r in up["data"]["result"]] == ["1"], up
    finally:
        stop.set()
        for t in threads if "threads" in locals() else []:
            t.join(timeout=30)
        prom.terminate()
        prom.wait(timeout=20)
