"""Canary analyses on more than this replica's request counts, end to end:

- business metrics from outcome feedback: a canary whose conversions (reported through
  ``POST /v2/feedback`` by request id) fall under the guardrail's ratio to the primary's is
  rolled back, and the reason names the metric;
- Prometheus: with the route's ``prometheus`` URL, a replica that serves none of the canary's
  requests still rolls it back, on the failures another replica served, as a real Prometheus
  scraped them from both.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import threading
import time

import requests

from inferd_testlib import mlp_input, wait_until
from test_routes import canary_spec, infer
from test_routes import repo  # noqa: F401  (fixture)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def route(server, name):
    return requests.get(server.http_base + f"/v2/routes/{name}", timeout=10).json()


def test_a_canary_losing_conversions_is_rolled_back_on_feedback(inferd_server_factory, repo):  # noqa: F811
    server = inferd_server_factory(repo)
    spec = canary_spec("simple_mlp", [{"weight": 50, "duration_secs": 600}])
    spec["canary"] = {"model": "simple_mlp", "version": 2}
    spec["interval_secs"] = 2
    spec["guardrails"] = {"max_error_rate": 0.05,
                          "metrics": [{"metric": "conversion", "min_ratio": 0.8, "min_samples": 20}]}
    assert requests.put(server.http_base + "/v2/routes/fraud", json=spec, timeout=10).ok
    rng = random.Random(11)
    rate = {"simple_mlp/1": 0.5, "simple_mlp/2": 0.1}
    s = requests.Session()
    deadline = time.monotonic() + 30
    while route(server, "fraud")["state"] != "rolled_back":
        assert time.monotonic() < deadline, route(server, "fraud")
        for _ in range(20):
            r = infer(s, server, "fraud", mlp_input(1))
            arm = r.headers["x-inferd-target"]
            fb = s.post(server.http_base + "/v2/feedback", timeout=10,
                        json={"request_id": r.headers["x-request-id"], "value": rng.random() < rate[arm]})
            assert fb.status_code == 200 and fb.json() == {"route": "fraud", "target": arm, "metric": "conversion"}, fb.text
    got = route(server, "fraud")
    assert "conversion_ratio" in got["reason"] and "< 0.8" in got["reason"], got
    [check] = [a for a in got["analyses"] if a["name"] == "conversion_ratio"]
    assert check["passed"] is False and check["value"] < 0.8
    # The request-rate checks passed: only the business metric failed.
    assert all(a["passed"] for a in got["analyses"] if a["name"] != "conversion_ratio"), got["analyses"]


def start_prometheus(tmp_path, port, targets):
    exe = shutil.which("prometheus")
    assert exe, "prometheus is not installed (Debian package 'prometheus'; .ci/run installs it)"
    config = tmp_path / "prometheus.yml"
    listed = ", ".join(f"'{t}'" for t in targets)
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"scrape_configs:\n  - job_name: inferd\n    static_configs:\n      - targets: [{listed}]\n"
    )
    proc = subprocess.Popen(
        [exe, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )

    def ready():
        try:
            return requests.get(f"http://127.0.0.1:{port}/-/ready", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    wait_until(ready, timeout=30, interval=0.2, what="prometheus to be ready")
    return proc


def test_with_prometheus_a_replica_without_canary_traffic_rolls_back_on_the_others_failures(
    inferd_server_factory, repo, tmp_path  # noqa: F811
):
    prom_port = free_port()
    spec = canary_spec("flaky_mlp", [{"weight": 50, "duration_secs": 600}])
    spec["interval_secs"] = 4
    spec["prometheus"] = f"http://127.0.0.1:{prom_port}"
    (repo / "routes.toml").write_text(
        "[routes.fraud]\n" + "\n".join(f"{k} = {toml_value(v)}" for k, v in spec.items()) + "\n"
    )
    quiet, busy = inferd_server_factory(repo), inferd_server_factory(repo)
    targets = [s.metrics_url.removeprefix("http://").replace("0.0.0.0", "127.0.0.1") for s in (quiet, busy)]
    prom = start_prometheus(tmp_path, prom_port, targets)
    stop = threading.Event()
    try:
        def load():
            s = requests.Session()
            while not stop.is_set():
                infer(s, busy, "fraud", mlp_input(1))

        t = threading.Thread(target=load)
        t.start()
        try:
            wait_until(lambda: route(quiet, "fraud")["state"] == "rolled_back", timeout=30, interval=0.5,
                       what="the quiet replica to roll the canary back on Prometheus's numbers")
        finally:
            stop.set()
            t.join(timeout=30)
        got = route(quiet, "fraud")
        assert "error_rate" in got["reason"], got
        [check] = [a for a in got["analyses"] if a["name"] == "error_rate"]
        assert check["value"] > 0.5, check
        # The quiet replica served no canary request itself.
        page = requests.get(quiet.metrics_url + "/metrics", timeout=10).text
        assert 'inferd_route_requests_total{route="fraud",target="flaky_mlp/1"' not in page
    finally:
        prom.terminate()
        prom.wait(timeout=30)


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(type(v))

