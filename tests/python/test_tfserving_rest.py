"""TF Serving's REST API (--tfserving-rest-port) for models inferd serves (the example
repository's ONNX models): model status and metadata as TF Serving words them, :predict in the
row form (instances -> predictions) and the columnar form (inputs -> outputs) with the same
answers as KServe v2 on the HTTP port, {"b64": ...} strings, and the client's mistakes as 4xx
{"error": ...}.
"""

from __future__ import annotations

import base64
import shutil
from pathlib import Path

import numpy as np
import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(inferd_server_factory, tmp_path_factory):
    repo = tmp_path_factory.mktemp("tfs") / "models"
    shutil.copytree(ROOT / "examples" / "models", repo)
    s = inferd_server_factory(repo, "--tfserving-rest-port", "0")
    assert s.tfserving_rest, "no 'TF Serving REST listening on' line"
    return s


def kserve(server, model: str, name: str, x: np.ndarray, out: str) -> np.ndarray:
    body = {"inputs": [{"name": name, "shape": list(x.shape), "datatype": "FP32", "data": x.reshape(-1).tolist()}]}
    r = requests.post(f"{server.http_base}/v2/models/{model}/infer", json=body, timeout=10).json()
    o = next(o for o in r["outputs"] if o["name"] == out)
    return np.array(o["data"], dtype=np.float32).reshape(o["shape"])


def test_model_status_names_the_version_available(server):
    r = requests.get(f"{server.tfserving_rest}/v1/models/simple_mlp", timeout=10)
    assert r.status_code == 200, r.text
    rows = r.json()["model_version_status"]
    assert {row["version"] for row in rows} == {"1", "2"}
    assert all(row["state"] == "AVAILABLE" and row["status"]["error_code"] == "OK" for row in rows), rows
    one = requests.get(f"{server.tfserving_rest}/v1/models/simple_mlp/versions/2", timeout=10).json()
    assert [r["version"] for r in one["model_version_status"]] == ["2"]
    missing = requests.get(f"{server.tfserving_rest}/v1/models/nope", timeout=10)
    assert missing.status_code == 404 and "nope" in missing.json()["error"]


def test_metadata_gives_the_serving_default_signature(server):
    r = requests.get(f"{server.tfserving_rest}/v1/models/simple_mlp/metadata", timeout=10).json()
    assert r["model_spec"]["name"] == "simple_mlp"
    sig = r["metadata"]["signature_def"]["signature_def"]["serving_default"]
    x = sig["inputs"]["input"]
    assert x["dtype"] == "DT_FLOAT" and [d["size"] for d in x["tensor_shape"]["dim"]] == ["-1", "64"]
    assert sig["outputs"]["output"]["dtype"] == "DT_FLOAT"
    assert sig["method_name"] == "tensorflow/serving/predict"


def test_row_and_columnar_predict_answer_as_kserve_does(server):
    x = np.random.default_rng(4).random((3, 64), dtype=np.float32)
    want = kserve(server, "simple_mlp", "input", x, "output")
    row = requests.post(f"{server.tfserving_rest}/v1/models/simple_mlp:predict",
                        json={"instances": x.tolist()}, timeout=10)
    assert row.status_code == 200, row.text
    np.testing.assert_allclose(np.array(row.json()["predictions"], dtype=np.float32), want, rtol=1e-6)
    col = requests.post(f"{server.tfserving_rest}/v1/models/simple_mlp/versions/1:predict",
                        json={"signature_name": "serving_default", "inputs": {"input": x.tolist()}}, timeout=10)
    assert col.status_code == 200, col.text
    want1 = requests.post(f"{server.http_base}/v2/models/simple_mlp/versions/1/infer", json={"inputs": [
        {"name": "input", "shape": [3, 64], "datatype": "FP32", "data": x.reshape(-1).tolist()}]}, timeout=10).json()
    np.testing.assert_allclose(np.array(col.json()["outputs"], dtype=np.float32).reshape(-1),
                               np.array(want1["outputs"][0]["data"], dtype=np.float32), rtol=1e-6)


def test_b64_strings_are_decoded_and_text_comes_back_as_text(server):
    raw = "h\u00e9llo".encode()
    r = requests.post(f"{server.tfserving_rest}/v1/models/string_identity:predict",
                      json={"instances": [[{"b64": base64.b64encode(raw).decode()}], ["text"]]}, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["predictions"] == [["h\u00e9llo"], ["text"]]
    # Not UTF-8: the ONNX string model refuses it as the client's mistake.
    bad = requests.post(f"{server.tfserving_rest}/v1/models/string_identity:predict",
                        json={"instances": [[{"b64": base64.b64encode(b"\xff").decode()}]]}, timeout=10)
    assert bad.status_code == 400 and "UTF-8" in bad.json()["error"], bad.text


@pytest.mark.parametrize("body,status,words", [
    ({"instances": [[1.0, 2.0]]}, 400, "shape"),
    ({"instances": [[1.0] * 64, [1.0] * 63]}, 400, "ragged"),
    ({"inputs": {"nope": [[1.0]]}}, 400, "no input 'nope'"),
    ({"instances": [[1.0] * 64], "inputs": [[1.0] * 64]}, 400, "not both"),
    ({"signature_name": "classify_x", "instances": [[1.0] * 64]}, 400, "no signature 'classify_x'"),
    ({}, 400, "neither"),
])
def test_client_mistakes_are_4xx_with_an_error_field(server, body, status, words):
    r = requests.post(f"{server.tfserving_rest}/v1/models/simple_mlp:predict", json=body, timeout=10)
    assert r.status_code == status and words in r.json()["error"], (r.status_code, r.text)


def test_classify_and_unknown_paths_are_refused_by_name(server):
    r = requests.post(f"{server.tfserving_rest}/v1/models/simple_mlp:classify", json={"examples": []}, timeout=10)
    assert r.status_code == 400 and "classify" in r.json()["error"]
    r = requests.post(f"{server.tfserving_rest}/v1/models/nope:predict", json={"instances": [1]}, timeout=10)
    assert r.status_code == 404 and "nope" in r.json()["error"]
    r = requests.post(f"{server.tfserving_rest}/v1/models/simple_mlp:predict", data=b"{not json", timeout=10)
    assert r.status_code == 400 and "not JSON" in r.json()["error"]
