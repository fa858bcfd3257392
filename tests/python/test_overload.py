"""Overload: far more concurrent clients than a small queue holds. The server answers the excess
at once with 503 + Retry-After (never another error), keeps memory bounded, stays ready, and
serves normally again as soon as the load drops."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench" / "models"))
from generate import build_mlp  # noqa: E402  (the benchmark's MLP builder)

MODEL = "tight_queue"
CLIENTS = 48
DURATION_S = 4.0
CONFIG = f"""\
name: "{MODEL}"
platform: "onnxruntime_onnx"
max_batch_size: 64
input [ {{ name: "input" data_type: TYPE_FP32 dims: [ 64 ] }} ]
output [ {{ name: "output" data_type: TYPE_FP32 dims: [ 10 ] }} ]
dynamic_batching {{ max_queue_delay_microseconds: 500 default_queue_policy {{ max_queue_size: 4 }} }}
"""


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


@pytest.fixture(scope="module")
def server(inferd_server_factory, tmp_path_factory):
    repo = tmp_path_factory.mktemp("overload") / "models"
    (repo / MODEL / "1").mkdir(parents=True)
    (repo / MODEL / "config.pbtxt").write_text(CONFIG)
    # 64-4096-4096-10: a 32-row batch costs milliseconds, so the model, not the Python clients,
    # is the bottleneck however fast the server's own path is. (The example MLP let the clients
    # lose the race once the server got faster, and no request was refused.)
    onnx.save(build_mlp((64, 4096, 4096, 10), seed=7, name=MODEL), repo / MODEL / "1" / "model.onnx")
    return inferd_server_factory(repo)


def test_overload_is_refused_quickly_and_the_server_recovers(server):
    url = f"{server.http_base}/v2/models/{MODEL}/infer"
    # 32 rows per request: the model is the bottleneck, not the clients.
    body = {"inputs": [{"name": "input", "shape": [32, 64], "datatype": "FP32", "data": np.full(32 * 64, 0.5).tolist()}]}
    pid = server.process.pid
    rss_before = rss_kib(pid)
    codes: dict[int, int] = {}
    reject_latency: list[float] = []
    other: list[str] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + DURATION_S

    def client() -> None:
        s = requests.Session()
        while time.monotonic() < stop_at:
            t0 = time.monotonic()
            try:
                r = s.post(url, json=body, timeout=10)
            except requests.RequestException as exc:
                with lock:
                    other.append(repr(exc))
                continue
            dt = time.monotonic() - t0
            with lock:
                codes[r.status_code] = codes.get(r.status_code, 0) + 1
                if r.status_code == 503:
                    reject_latency.append(dt)
                    if r.headers.get("Retry-After") != "1" or MODEL not in r.json().get("error", ""):
                        other.append(f"bad 503: {r.headers} {r.text[:200]}")
                elif r.status_code != 200:
                    other.append(f"{r.status_code}: {r.text[:200]}")

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    peak_rss = rss_before
    while any(t.is_alive() for t in threads):
        peak_rss = max(peak_rss, rss_kib(pid))
        time.sleep(0.1)
    for t in threads:
        t.join()

    assert not other, other[:5]
    assert codes.get(200, 0) > 0 and codes.get(503, 0) > 0, codes
    reject_latency.sort()
    p50_reject = reject_latency[len(reject_latency) // 2]
    assert p50_reject < 0.25, f"rejects should be quick, p50 {p50_reject * 1000:.0f} ms"
    assert peak_rss - rss_before < 200 * 1024, f"memory grew from {rss_before} to {peak_rss} KiB"

    # Load drops: normal service, no manual action.
    assert requests.get(f"{server.http_base}/v2/health/ready", timeout=5).status_code == 200
    r = requests.post(url, json=body, timeout=10)
    assert r.status_code == 200, r.text
