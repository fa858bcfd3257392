"""TF Serving's gRPC API (--tfserving-grpc-port) with the real tensorflow-serving-api client
(run in a child process, tfserving_grpc_client.py: TensorFlow loaded into the test process
breaks torch's later imports there): Predict on the example repository's ONNX model (same
answers as KServe v2 on the HTTP port, tensors built with tf.make_tensor_proto and read with
tf.make_ndarray), strings, GetModelMetadata (the SignatureDefMap packed in Any),
ModelService.GetModelStatus, the client's mistakes as INVALID_ARGUMENT / NOT_FOUND; and our
.proto files checked field by field against the client's own descriptors.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def results(inferd_server_factory, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tfsg")
    repo = tmp / "models"
    shutil.copytree(ROOT / "examples" / "models", repo)
    s = inferd_server_factory(repo, "--tfserving-grpc-port", "0")
    assert s.tfserving_grpc, "no 'TF Serving gRPC listening on' line"
    x = np.random.default_rng(5).random((2, 64), dtype=np.float32)
    np.save(tmp / "x.npy", x)
    out = subprocess.run([sys.executable, str(HERE / "tfserving_grpc_client.py"), s.tfserving_grpc, str(tmp / "x.npy"),
                          str(ROOT / "crates" / "inferd-server" / "proto")], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return s, x, json.loads(out.stdout.strip().splitlines()[-1])


def test_predict_answers_as_kserve_does(results):
    server, x, r = results
    want = requests.post(f"{server.http_base}/v2/models/simple_mlp/versions/1/infer", json={"inputs": [
        {"name": "input", "shape": [2, 64], "datatype": "FP32", "data": x.reshape(-1).tolist()}]}, timeout=10).json()
    np.testing.assert_allclose(np.array(r["predict"]["output"], dtype=np.float32).reshape(-1),
                               np.array(want["outputs"][0]["data"], dtype=np.float32), rtol=1e-6)
    assert r["predict"]["name"] == "simple_mlp" and r["predict"]["version"] == 1


def test_predict_with_strings(results):
    assert results[2]["strings"] == [["abc"], ["d\u00e9f"]]


def test_metadata_and_status(results):
    r = results[2]
    assert r["metadata"] == {"unpacked": True, "dtype_is_float": True, "dims": [-1, 64],
                             "method": "tensorflow/serving/predict"}
    assert r["status"] == [[1, True], [2, True]]


def test_mistakes_are_invalid_argument_or_not_found(results):
    e = results[2]["errors"]
    assert e["bad_shape"]["code"] == "INVALID_ARGUMENT" and "shape" in e["bad_shape"]["details"]
    assert e["unknown_model"]["code"] == "NOT_FOUND" and "nope" in e["unknown_model"]["details"]
    assert e["bad_signature"]["code"] == "INVALID_ARGUMENT" and "classify" in e["bad_signature"]["details"]
    assert e["missing_version"]["code"] == "NOT_FOUND"


def test_our_protos_match_the_clients_descriptors(results):
    d = results[2]["descriptors"]
    assert d["mismatches"] == [] and d["checked"] > 40, d
