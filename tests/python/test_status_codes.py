"""Honest status codes: a request the model cannot run is the client's 400 (INVALID_ARGUMENT) with
the backend's reason, a model that fails to load is the client's to fix (400 on the load API),
and no answer reveals where the repository lives on the server's disk.
"""

from __future__ import annotations

import grpc
import numpy as np
import onnx
import pytest
import requests
from onnx import TensorProto, helper
from tritonclient.grpc import service_pb2, service_pb2_grpc


def gather_model() -> onnx.ModelProto:
    """out = table[idx]: any idx passes validation, one past the table's 5 rows cannot run."""
    table = helper.make_tensor("table", TensorProto.FLOAT, [5], [10.0, 11.0, 12.0, 13.0, 14.0])
    node = helper.make_node("Gather", ["table", "idx"], ["out"], axis=0)
    graph = helper.make_graph(
        [node],
        "gather",
        [helper.make_tensor_value_info("idx", TensorProto.INT64, ["n"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n"])],
        initializer=[table],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def broken_model() -> onnx.ModelProto:
    """An operator no backend of the default build has."""
    node = helper.make_node("NoSuchOperator", ["x"], ["y"], domain="com.example")
    graph = helper.make_graph(
        [node],
        "broken",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.example", 1)]
    )


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("status_codes") / "models"
    for name, model in (("gather", gather_model()), ("broken", broken_model())):
        (root / name / "1").mkdir(parents=True)
        onnx.save(model, str(root / name / "1" / "model.onnx"))
    (root / "gather" / "config.pbtxt").write_text(
        'name: "gather"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 0\n'
        'input [ { name: "idx" data_type: TYPE_INT64 dims: [ -1 ] } ]\n'
        'output [ { name: "out" data_type: TYPE_FP32 dims: [ -1 ] } ]\n'
        'parameters { key: "onnx_backend" value: { string_value: "tract" } }\n'
    )
    return root


@pytest.fixture(scope="module")
def server(inferd_server_factory, repo):
    return inferd_server_factory(repo, control_mode="explicit", load_models=["gather"])


def gather(base: str, idx: list[int]) -> requests.Response:
    body = {"inputs": [{"name": "idx", "shape": [len(idx)], "datatype": "INT64", "data": idx}]}
    return requests.post(f"{base}/v2/models/gather/infer", json=body, timeout=10)


def test_an_input_the_model_cannot_run_is_400_with_the_backends_reason(server):
    r = gather(server.http_base, [1, 7])
    assert r.status_code == 400, r.text
    msg = r.json()["error"]
    assert "cannot run on this input" in msg, msg
    assert "Gather" in msg or "index" in msg.lower(), msg
    ok = gather(server.http_base, [1, 4])
    assert ok.status_code == 200, ok.text
    assert ok.json()["outputs"][0]["data"] == [11.0, 14.0]


def test_the_same_input_over_grpc_is_invalid_argument(server):
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(server.grpc_url))
    req = service_pb2.ModelInferRequest(model_name="gather")
    t = req.inputs.add(name="idx", datatype="INT64", shape=[1])
    t.contents.int64_contents.extend([9])
    with pytest.raises(grpc.RpcError) as e:
        stub.ModelInfer(req, timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
    assert "cannot run on this input" in e.value.details()


def test_a_model_that_fails_to_load_is_400_naming_it_and_no_absolute_path_leaks(server, repo):
    r = requests.post(f"{server.http_base}/v2/repository/models/broken/load", json={}, timeout=60)
    assert r.status_code == 400, r.text
    msg = r.json()["error"]
    assert "NoSuchOperator" in msg and "broken/1/model.onnx" in msg, msg
    assert str(repo) not in msg and str(repo.resolve()) not in msg, msg
    index = requests.post(f"{server.http_base}/v2/repository/index", json={}, timeout=10).json()
    reasons = " ".join(e.get("reason", "") for e in index)
    assert "NoSuchOperator" in reasons, index
    assert str(repo) not in reasons and str(repo.resolve()) not in reasons, index
    # Still serving the good model.
    assert gather(server.http_base, [0]).status_code == 200


def test_server_faults_are_5xx_only(server):
    """None of this module's client mistakes was answered 5xx (the server's log agrees)."""
    assert "status=500" not in server.log_tail(400)
