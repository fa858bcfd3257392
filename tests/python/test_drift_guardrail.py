"""The case drift monitoring exists for: a canary that answers fast and without errors but with
shifted outputs (simple_mlp version 2 against version 1: different weights, the same speed) is
rolled back by the route's `max_output_psi` guardrail, with the reason in the route's state and
in the audit log; its error-rate guardrail alone would have promoted it.
"""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import requests

from inferd_testlib import copy_models


def infer(session: requests.Session, server, route: str, x: np.ndarray) -> requests.Response:
    body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.reshape(-1).tolist()}]}
    return session.post(f"{server.http_base}/v2/models/{route}/infer", json=body, timeout=10)


def monitored_server(inferd_server_factory, tmp_path, seed: int):
    """simple_mlp v1 and v2, every request sampled; v1's reference made of its first 100
    requests. Returns the server, its state dir and the random generator."""
    repo = copy_models(tmp_path / "models", ["simple_mlp"])
    cfg = repo / "simple_mlp" / "config.pbtxt"
    cfg.write_text(cfg.read_text() + "\n" + "".join(
        f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}\n'
        for k, v in [("drift_sample_rate", "1"), ("drift_reference_requests", "100"), ("drift_min_current", "40")]))
    state = tmp_path / "state"
    server = inferd_server_factory(repo, "--state-dir", str(state))
    rng = np.random.default_rng(seed)
    s = requests.Session()
    for _ in range(100):
        r = s.post(f"{server.http_base}/v2/models/simple_mlp/versions/1/infer", json={"inputs": [
            {"name": "input", "shape": [1, 64], "datatype": "FP32",
             "data": rng.standard_normal(64).astype(np.float32).tolist()}]}, timeout=10)
        assert r.status_code == 200, r.text
    return server, state, rng


def test_a_canary_with_shifted_outputs_is_rolled_back_by_the_drift_guardrail(inferd_server_factory, tmp_path):
    server, state, rng = monitored_server(inferd_server_factory, tmp_path, 21)
    spec = {
        "kind": "canary",
        "primary": {"model": "simple_mlp", "version": 1},
        "canary": {"model": "simple_mlp", "version": 2},
        "steps": [{"weight": 50, "duration_secs": 600}],
        "interval_secs": 1,
        "threshold": 1,
        "guardrails": {"max_error_rate": 0.05, "max_output_psi": 0.2},
    }
    assert requests.put(f"{server.http_base}/v2/routes/fraud", json=spec, timeout=10).status_code == 200
    stop = threading.Event()
    failures = []

    def loop() -> None:
        sess = requests.Session()
        local = np.random.default_rng(threading.get_ident() % 1000)
        while not stop.is_set():
            r = infer(sess, server, "fraud", local.standard_normal((1, 64)).astype(np.float32))
            if r.status_code != 200:
                failures.append(r.text)

    threads = [threading.Thread(target=loop) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        deadline = time.time() + 45
        route = {}
        while time.time() < deadline:
            route = requests.get(f"{server.http_base}/v2/routes/fraud", timeout=10).json()
            if route.get("state") in ("rolled_back", "promoted"):
                break
            time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert failures == [], failures[:3]
    assert route["state"] == "rolled_back", route
    assert "output_psi" in route["reason"], route
    failed = [a for a in route["analyses"] if not a["passed"]]
    assert [a["name"] for a in failed] == ["output_psi"] and failed[0]["value"] > 0.2, route["analyses"]
    lines = [json.loads(line) for line in (state / "audit.log").read_text().splitlines()]
    decisions = [e for e in lines if e["who"] == "controller"]
    assert decisions and decisions[-1]["state"] == "rolled_back" and "output_psi" in decisions[-1]["why"], lines


def test_an_ab_arm_with_shifted_outputs_is_halted_by_the_drift_guardrail(inferd_server_factory, tmp_path):
    server, state, rng = monitored_server(inferd_server_factory, tmp_path, 22)
    s = requests.Session()
    spec = {
        "kind": "ab",
        "targets": [{"model": "simple_mlp", "version": 1, "weight": 50},
                    {"model": "simple_mlp", "version": 2, "weight": 50}],
        "experiment": {"metric": "conversion"},
        "guardrails": {"max_output_psi": 0.2, "interval_secs": 1},
    }
    r = requests.put(f"{server.http_base}/v2/routes/rank", json=spec, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "steady"
    route = {}
    deadline = time.time() + 45
    i = 0
    while time.time() < deadline:
        for _ in range(20):
            i += 1
            x = rng.standard_normal((1, 64)).astype(np.float32)
            body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": x.reshape(-1).tolist()}]}
            r = s.post(f"{server.http_base}/v2/models/rank/infer", json=body, headers={"x-user-id": f"u{i}"},
                       timeout=10)
            assert r.status_code == 200, r.text
        route = requests.get(f"{server.http_base}/v2/routes/rank", timeout=10).json()
        if route["state"] == "halted":
            break
    assert route["state"] == "halted", route
    assert route["weights"] == [{"target": "simple_mlp/1", "weight": 100}, {"target": "simple_mlp/2", "weight": 0}], route
    assert "simple_mlp/2 halted: output_psi" in route["reason"] and "against simple_mlp/1" in route["reason"], route
    # Every request now goes to the control.
    for k in range(20):
        r = s.post(f"{server.http_base}/v2/models/rank/infer", json=body, headers={"x-user-id": f"after{k}"}, timeout=10)
        assert r.headers["x-inferd-target"] == "simple_mlp/1"
    lines = [json.loads(line) for line in (state / "audit.log").read_text().splitlines()]
    halts = [e for e in lines if e["who"] == "controller" and e["action"] == "halt"]
    assert len(halts) == 1 and "output_psi" in halts[0]["why"] and halts[0]["state"] == "halted", lines
