"""HTTP edge cases of Triton's binary extension and the Open Inference Protocol, over real
requests: raw binary bodies (``Inference-Header-Content-Length: 0``, chunked too, through the
same admission as the others), duplicate outputs, the limits Triton's own tests check (with its
words), health bodies the KServe SDK reads, and the KServe SDK's REST and gRPC clients.
"""

from __future__ import annotations

import concurrent.futures
import json

import numpy as np
import onnx
import pytest
import requests
from onnx import TensorProto, helper

from inferd_testlib import heavy_model

HEADER = "Inference-Header-Content-Length"


def _identity_2d(repo):
    """`wide`: FP32 [-1, -1] identity, no batching: a raw body's shape cannot be deduced."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "wide",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["a", "b"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["a", "b"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    (repo / "wide" / "1").mkdir(parents=True)
    onnx.save(model, str(repo / "wide" / "1" / "model.onnx"))
    (repo / "wide" / "config.pbtxt").write_text('name: "wide"\nmax_batch_size: 0\n')


@pytest.fixture(scope="module")
def server(inferd_server_factory, model_repo_factory):
    repo = model_repo_factory(["simple_mlp", "add_sub", "string_identity"])
    _identity_2d(repo)
    # ~50M multiply-adds a request (tens of ms on either ONNX backend), so eight requests at
    # once always overlap the one running and the one queued.
    heavy_model(repo, 512, 200)
    cfg = repo / "heavy" / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace("dynamic_batching { }", "dynamic_batching { default_queue_policy { max_queue_size: 1 } }"))
    return inferd_server_factory(repo, "--http-max-input-size", str(1 << 20))


def _json_infer(server, x):
    body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.flatten().tolist()}]}
    r = requests.post(f"{server.http_base}/v2/models/simple_mlp/infer", json=body, timeout=30)
    assert r.status_code == 200, r.text
    return np.array(r.json()["outputs"][0]["data"], dtype=np.float32)


def _binary_output(r):
    n = int(r.headers[HEADER])
    head = json.loads(r.content[:n])
    out = head["outputs"][0]
    return out, np.frombuffer(r.content[n : n + out["parameters"]["binary_data_size"]], dtype=np.float32)


def test_a_raw_body_is_the_single_input_and_the_answer_is_binary(server):
    x = np.random.default_rng(1).standard_normal((2, 64)).astype(np.float32)
    url = f"{server.http_base}/v2/models/simple_mlp/infer"
    r = requests.post(url, data=x.tobytes(), headers={HEADER: "0"}, timeout=30)
    assert r.status_code == 200, r.text
    out, got = _binary_output(r)
    assert out["shape"][0] == 2, out  # the batch was deduced from the body's size
    np.testing.assert_allclose(got, _json_infer(server, x), rtol=1e-5)
    # The same body sent chunked (no Content-Length).
    def chunks():
        raw = x.tobytes()
        for i in range(0, len(raw), 100):
            yield raw[i : i + 100]
    r = requests.post(url, data=chunks(), headers={HEADER: "0"}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.request.headers.get("Transfer-Encoding") == "chunked"
    np.testing.assert_allclose(_binary_output(r)[1], got)


def test_a_raw_string_body_is_one_element(server):
    r = requests.post(
        f"{server.http_base}/v2/models/string_identity/infer", data=b"hello raw", headers={HEADER: "0"}, timeout=30
    )
    assert r.status_code == 200, r.text
    n = int(r.headers[HEADER])
    head = json.loads(r.content[:n])
    assert head["outputs"][0]["shape"] == [1, 1]
    assert r.content[n + 4 :] == b"hello raw"


@pytest.mark.parametrize(
    "model,body,text",
    [
        ("add_sub", b"\0" * 32, "Raw request must only have 1 input (found 1) to be deduced but got 2 inputs in 'add_sub' model configuration"),
        ("wide", b"\0" * 16, "The shape of the raw input 'x' can not be deduced because there are more than one variable-sized dimension"),
        ("simple_mlp", b"\0" * 6, "not a whole number"),
    ],
)
def test_raw_bodies_that_cannot_be_deduced_are_400_in_tritons_words(server, model, body, text):
    r = requests.post(f"{server.http_base}/v2/models/{model}/infer", data=body, headers={HEADER: "0"}, timeout=30)
    assert r.status_code == 400 and text in r.json()["error"], r.text


def test_raw_requests_share_the_admission_of_the_others(server):
    """heavy: one request at a time, a queue of one: of many raw requests at once, the excess
    gets 503 (queue full), never anything else."""
    raw = np.ones(512, dtype=np.float32).tobytes()

    def one(_):
        return requests.post(
            f"{server.http_base}/v2/models/heavy/infer", data=raw, headers={HEADER: "0"}, timeout=60
        ).status_code

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(one, range(16)))
    assert set(codes) <= {200, 503}, codes
    assert 200 in codes and 503 in codes, codes


def test_duplicate_outputs_are_400_in_tritons_words(server):
    body = {
        "inputs": [
            {"name": n, "shape": [1, 4], "datatype": "INT64", "data": [1, 2, 3, 4]} for n in ("INPUT0", "INPUT1")
        ],
        "outputs": [{"name": "OUTPUT0"}, {"name": "OUTPUT0"}],
    }
    r = requests.post(f"{server.http_base}/v2/models/add_sub/infer", json=body, timeout=30)
    assert r.status_code == 400 and "output 'OUTPUT0' already exists in request" in r.json()["error"], r.text


def _infer_raw_json(server, body: bytes, headers=None):
    return requests.post(
        f"{server.http_base}/v2/models/add_sub/infer", data=body, headers=headers or {}, timeout=30
    )


@pytest.mark.parametrize(
    "shape,dtype,text",
    [
        ([1 << 40, 1 << 40], "INT64", "causes total element count to exceed maximum size of 9223372036854775807"),
        ([1 << 62], "INT64", "byte size overflow for input 'INPUT0': element count (4611686018427387904) * data type size (8) exceeds maximum allowed size (9223372036854775807)"),
        ([-1, 4], "INT64", "contains one or more invalid dimensions"),
    ],
)
def test_shapes_that_overflow_are_400_in_tritons_words(server, shape, dtype, text):
    body = {"inputs": [{"name": "INPUT0", "shape": shape, "datatype": dtype, "data": [1]}]}
    r = _infer_raw_json(server, json.dumps(body).encode())
    assert r.status_code == 400 and text in r.json()["error"], r.text


def test_json_depth_size_and_header_limits_in_tritons_words(server):
    deep = {"inputs": [{"name": "INPUT0", "shape": [1], "datatype": "INT64", "data": json.loads("[" * 101 + "1" + "]" * 101)}]}
    r = _infer_raw_json(server, json.dumps(deep).encode())
    assert r.status_code == 400 and "JSON nesting depth exceeds maximum allowed limit (100)" in r.json()["error"]
    big = {"inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "INT64", "data": [1, 2, 3, 4]}], "id": "x" * (1 << 20)}
    r = _infer_raw_json(server, json.dumps(big).encode())
    assert r.status_code == 400
    assert "exceeds the maximum allowed input size of 1048576 bytes. Use --http-max-input-size to increase the limit." in r.json()["error"]
    body = b'{"inputs": []}'
    for value, text in (
        ("abc", "Unable to parse Inference-Header-Content-Length, got: abc"),
        ("99999999999", "value is out of range [ -2147483648, 2147483647 ]"),
        ("-1", f"inference header size should be in range (0, {len(body)}), got: -1"),
        (str(len(body) + 1), f"inference header size should be in range (0, {len(body)}), got: {len(body) + 1}"),
    ):
        r = _infer_raw_json(server, body, {HEADER: value})
        assert r.status_code == 400 and text in r.json()["error"], (value, r.text)
    r = requests.post(f"{server.http_base}/v2/repository/index", json={"ready": "yes"}, timeout=10)
    assert r.status_code == 400 and "Invalid value for 'ready': expected a boolean" in r.json()["error"]
    # Unharmed.
    assert requests.get(f"{server.http_base}/v2/health/ready", timeout=10).status_code == 200


def test_health_bodies_are_the_protocols(server):
    base = server.http_base
    r = requests.get(f"{base}/v2/health/live", timeout=10)
    assert r.status_code == 200 and r.json() == {"live": True}
    r = requests.get(f"{base}/v2/health/ready", timeout=10)
    assert r.status_code == 200 and r.json() == {"ready": True}
    r = requests.get(f"{base}/v2/models/add_sub/ready", timeout=10)
    assert r.status_code == 200 and r.json() == {"name": "add_sub", "ready": True}
    r = requests.get(f"{base}/v2/models/add_sub/versions/1/ready", timeout=10)
    assert r.status_code == 200 and r.json() == {"name": "add_sub", "ready": True}
    r = requests.get(f"{base}/v2/models/add_sub/versions/9/ready", timeout=10)
    assert r.status_code == 503 and r.json() == {"name": "add_sub", "ready": False}


KSERVE_CHECK = r"""
import asyncio, sys
import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig

http_url, grpc_url = sys.argv[1], sys.argv[2]
x = np.arange(8, dtype=np.int64).reshape(2, 4)

def request(binary):
    ins = [InferInput(n, [2, 4], "INT64") for n in ("INPUT0", "INPUT1")]
    ins[0].set_data_from_numpy(x, binary_data=binary)
    ins[1].set_data_from_numpy(np.ones_like(x), binary_data=binary)
    return InferRequest(model_name="add_sub", infer_inputs=ins)

async def rest():
    client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30))
    base = f"http://{http_url}"
    try:
        assert await client.is_server_live(base) is True
        assert await client.is_server_ready(base) is True
        assert await client.is_model_ready(base, "add_sub") is True
        assert await client.is_model_ready(base, "no_such_model") is False
        for binary in (False, True):
            resp = await client.infer(base, request(binary), model_name="add_sub")
            by_name = {o.name: o.as_numpy() for o in resp.outputs}
            np.testing.assert_array_equal(by_name["OUTPUT0"].reshape(2, 4), x + 1)
            np.testing.assert_array_equal(by_name["OUTPUT1"].reshape(2, 4), x - 1)
    finally:
        await client.close()

async def grpc():
    client = InferenceGRPCClient(grpc_url, timeout=30)
    try:
        assert await client.is_server_live() is True
        assert await client.is_server_ready() is True
        assert await client.is_model_ready("add_sub") is True
        resp = await client.infer(request(True))
        by_name = {o.name: o.as_numpy() for o in resp.outputs}
        np.testing.assert_array_equal(by_name["OUTPUT0"].reshape(2, 4), x + 1)
    finally:
        await client.close()

asyncio.run(rest())
asyncio.run(grpc())
print("kserve sdk: ok")
"""


def test_the_kserve_sdk_rest_and_grpc_clients(server):
    # Its own process: the SDK's protobuf descriptors clash with tritonclient's (same package
    # name, inference.*) in one interpreter.
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", KSERVE_CHECK, server.http_url, server.grpc_url],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0 and "kserve sdk: ok" in out.stdout, out.stdout + out.stderr
