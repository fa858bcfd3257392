"""Drift monitoring on a served model (the example repository's simple_mlp, 64 input features,
10 outputs): the first requests make the reference; a shift of 0.5 standard deviations in one
input feature afterwards is flagged for that feature and not for the other 63, in the JSON at
/v2/models/{m}/versions/{v}/drift and in inferd_drift_psi / inferd_drift_ks on the metrics page
(checked with Prometheus's own parser); a model with monitoring off says so (400).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
ROWS = 32


@pytest.fixture(scope="module")
def server(inferd_server_factory, tmp_path_factory):
    repo = tmp_path_factory.mktemp("drift") / "models"
    shutil.copytree(ROOT / "examples" / "models", repo)
    cfg = repo / "simple_mlp" / "config.pbtxt"
    cfg.write_text(cfg.read_text() + '\nparameters { key: "drift_reference_requests" value: { string_value: "150" } }\n'
                   'parameters { key: "drift_sample_rate" value: { string_value: "1" } }\n')
    add_sub = repo / "add_sub" / "config.pbtxt"
    add_sub.write_text(add_sub.read_text() + '\nparameters { key: "drift_sample_rate" value: { string_value: "0" } }\n')
    return inferd_server_factory(repo)


def send(server, x: np.ndarray) -> None:
    body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.reshape(-1).tolist()}]}
    r = requests.post(f"{server.http_base}/v2/models/simple_mlp/versions/1/infer", json=body, timeout=10)
    assert r.status_code == 200, r.text


def test_a_half_sigma_shift_in_one_feature_is_flagged_for_that_feature_only(server):
    rng = np.random.default_rng(11)
    session = requests.Session()
    for _ in range(150):
        send(server, rng.standard_normal((ROWS, 64)).astype(np.float32))
    early = requests.get(f"{server.http_base}/v2/models/simple_mlp/versions/1/drift", timeout=10).json()
    assert early["reference_complete"] and early["reference_requests"] == 150, early
    for _ in range(300):
        x = rng.standard_normal((ROWS, 64)).astype(np.float32)
        x[:, 3] += 0.5
        send(server, x)
    r = session.get(f"{server.http_base}/v2/models/simple_mlp/versions/1/drift", timeout=10).json()
    assert r["model"] == "simple_mlp" and r["version"] == "1" and r["sample_rate"] == 1.0
    inp = next(t for t in r["tensors"] if t["name"] == "input")
    assert inp["kind"] == "input"
    flagged = [f["index"] for f in inp["features"] if f["drifted"]]
    assert flagged == [3], [(f["index"], round(f["psi"], 3)) for f in inp["features"] if f["psi"] and f["psi"] > 0.05]
    f3 = inp["features"][3]
    assert f3["psi"] >= r["psi_drift"] and f3["ks"] > 0.1 and f3["ks_p_value"] < 1e-3, f3
    out = next(t for t in r["tensors"] if t["name"] == "output")
    assert out["kind"] == "output" and any(f["name"] == "argmax" for f in out["features"])
    page = requests.get(f"{server.http_base}/metrics", timeout=10).text
    fams = {f.name: f for f in text_string_to_metric_families(page)}
    psi = {(s.labels["tensor"], s.labels["feature"]): s.value for s in fams["inferd_drift_psi"].samples
           if s.labels["model"] == "simple_mlp" and s.labels["version"] == "1"}
    assert psi[("input", "3")] >= 0.2 and psi[("input", "4")] < 0.1, psi
    assert ("input", "3") in {(s.labels["tensor"], s.labels["feature"]) for s in fams["inferd_drift_ks"].samples}


def test_a_model_with_monitoring_off_says_so(server):
    r = requests.get(f"{server.http_base}/v2/models/add_sub/drift", timeout=10)
    assert r.status_code == 400 and "drift monitoring is off" in r.json()["error"], r.text
    r = requests.get(f"{server.http_base}/v2/models/nope/drift", timeout=10)
    assert r.status_code == 404


def test_a_saved_baseline_judges_a_new_server_from_its_first_window(server, inferd_bin, inferd_server_factory, tmp_path):
    # After the shift test above, simple_mlp version 1's reference is complete: save it.
    file = tmp_path / "drift_reference.json"
    out = subprocess.run([str(inferd_bin), "drift", "baseline", "simple_mlp", str(file), "--version", "1",
                          "--url", server.http_base], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(file.read_text())["requests"] == 150
    # A fresh server whose model folder holds it judges shifted traffic at once.
    repo = tmp_path / "models"
    shutil.copytree(ROOT / "examples" / "models" / "simple_mlp", repo / "simple_mlp")
    cfg = repo / "simple_mlp" / "config.pbtxt"
    cfg.write_text(cfg.read_text() + '\nparameters { key: "drift_sample_rate" value: { string_value: "1" } }\n')
    shutil.copy(file, repo / "simple_mlp" / "drift_reference.json")
    fresh = inferd_server_factory(repo)
    rng = np.random.default_rng(12)
    for _ in range(100):
        x = rng.standard_normal((ROWS, 64)).astype(np.float32)
        x[:, 7] -= 0.6
        send(fresh, x)
    r = requests.get(f"{fresh.http_base}/v2/models/simple_mlp/versions/1/drift", timeout=10).json()
    assert r["reference_complete"] and r["reference_requests"] == 150
    inp = next(t for t in r["tensors"] if t["name"] == "input")
    assert [f["index"] for f in inp["features"] if f["drifted"]] == [7]
    # Not done yet: refused with the reason.
    missing = subprocess.run([str(inferd_bin), "drift", "baseline", "nope", str(tmp_path / "x.json"),
                              "--url", server.http_base], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and "nope" in missing.stderr
