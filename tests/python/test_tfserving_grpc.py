"""TF Serving's gRPC API (--tfserving-grpc-port) with the real tensorflow-serving-api client:
Predict on the example repository's ONNX model (same answers as KServe v2 on the HTTP port,
tensors built with tf.make_tensor_proto and read with tf.make_ndarray), GetModelMetadata (the
SignatureDefMap packed in Any), ModelService.GetModelStatus, the client's mistakes as
INVALID_ARGUMENT / NOT_FOUND; and our .proto files checked field by field against the
client's own descriptors.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import tensorflow as tf  # noqa: E402
from google.protobuf import descriptor_pb2  # noqa: E402
from tensorflow_serving.apis import (  # noqa: E402
    get_model_metadata_pb2, get_model_status_pb2, model_service_pb2_grpc, predict_pb2,
    prediction_service_pb2_grpc)

ROOT = Path(__file__).resolve().parents[2]
PROTO = ROOT / "crates" / "inferd-server" / "proto"


@pytest.fixture(scope="module")
def server(inferd_server_factory, tmp_path_factory):
    repo = tmp_path_factory.mktemp("tfsg") / "models"
    shutil.copytree(ROOT / "examples" / "models", repo)
    s = inferd_server_factory(repo, "--tfserving-grpc-port", "0")
    assert s.tfserving_grpc, "no 'TF Serving gRPC listening on' line"
    return s


@pytest.fixture(scope="module")
def stubs(server):
    channel = grpc.insecure_channel(server.tfserving_grpc)
    yield prediction_service_pb2_grpc.PredictionServiceStub(channel), model_service_pb2_grpc.ModelServiceStub(channel)
    channel.close()


def predict_request(model: str, x: np.ndarray, version: int | None = None, name: str = "input"):
    req = predict_pb2.PredictRequest()
    req.model_spec.name = model
    req.model_spec.signature_name = "serving_default"
    if version is not None:
        req.model_spec.version.value = version
    req.inputs[name].CopyFrom(tf.make_tensor_proto(x))
    return req


def test_predict_answers_as_kserve_does(server, stubs):
    predict, _ = stubs
    x = np.random.default_rng(5).random((2, 64), dtype=np.float32)
    r = predict.Predict(predict_request("simple_mlp", x, version=1), timeout=10)
    got = tf.make_ndarray(r.outputs["output"])
    want = requests.post(f"{server.http_base}/v2/models/simple_mlp/versions/1/infer", json={"inputs": [
        {"name": "input", "shape": [2, 64], "datatype": "FP32", "data": x.reshape(-1).tolist()}]}, timeout=10).json()
    np.testing.assert_allclose(got.reshape(-1), np.array(want["outputs"][0]["data"], dtype=np.float32), rtol=1e-6)
    assert r.model_spec.name == "simple_mlp" and r.model_spec.version.value == 1


def test_predict_with_typed_values_and_strings(server, stubs):
    predict, _ = stubs
    req = predict_pb2.PredictRequest()
    req.model_spec.name = "string_identity"
    req.inputs["INPUT0"].CopyFrom(tf.make_tensor_proto(np.array([[b"abc"], [b"d\xc3\xa9f"]], dtype=object)))
    r = predict.Predict(req, timeout=10)
    assert tf.make_ndarray(r.outputs["OUTPUT0"]).tolist() == [[b"abc"], [b"d\xc3\xa9f"]]


def test_metadata_and_status(stubs):
    predict, models = stubs
    req = get_model_metadata_pb2.GetModelMetadataRequest()
    req.model_spec.name = "simple_mlp"
    req.metadata_field.append("signature_def")
    r = predict.GetModelMetadata(req, timeout=10)
    sigs = get_model_metadata_pb2.SignatureDefMap()
    assert r.metadata["signature_def"].Unpack(sigs)
    sig = sigs.signature_def["serving_default"]
    assert sig.inputs["input"].dtype == tf.float32.as_datatype_enum
    assert [d.size for d in sig.inputs["input"].tensor_shape.dim] == [-1, 64]
    assert sig.method_name == "tensorflow/serving/predict"
    st = get_model_status_pb2.GetModelStatusRequest()
    st.model_spec.name = "simple_mlp"
    rows = models.GetModelStatus(st, timeout=10).model_version_status
    assert sorted(r.version for r in rows) == [1, 2]
    assert all(r.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE for r in rows)


def test_mistakes_are_invalid_argument_or_not_found(stubs):
    predict, models = stubs
    with pytest.raises(grpc.RpcError) as e:
        predict.Predict(predict_request("simple_mlp", np.zeros((1, 3), np.float32)), timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "shape" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        predict.Predict(predict_request("nope", np.zeros((1, 64), np.float32)), timeout=10)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND and "nope" in e.value.details()
    bad_sig = predict_request("simple_mlp", np.zeros((1, 64), np.float32))
    bad_sig.model_spec.signature_name = "classify"
    with pytest.raises(grpc.RpcError) as e:
        predict.Predict(bad_sig, timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "classify" in e.value.details()
    st = get_model_status_pb2.GetModelStatusRequest()
    st.model_spec.name = "simple_mlp"
    st.model_spec.version.value = 9
    with pytest.raises(grpc.RpcError) as e:
        models.GetModelStatus(st, timeout=10)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_our_protos_match_the_clients_descriptors():
    """Every field of every message in our .proto files has the number, type and arity the
    tensorflow-serving-api package's own descriptors give it."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "fds.pb"
        subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO}",
                        f"--descriptor_set_out={out}", "--include_imports",
                        "tensorflow_serving/apis.proto"], check=True)
        fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    from google.protobuf import descriptor_pool
    from tensorflow.core.framework import tensor_pb2  # noqa: F401 - registers the messages
    from tensorflow.core.protobuf import meta_graph_pb2  # noqa: F401
    pool = descriptor_pool.Default()
    checked = 0

    def walk(prefix: str, msgs):
        nonlocal checked
        for m in msgs:
            full = f"{prefix}.{m.name}"
            theirs = pool.FindMessageTypeByName(full)
            for f in m.field:
                t = theirs.fields_by_name.get(f.name)
                assert t is not None, f"{full}.{f.name} is not in the client's {full}"
                repeated = f.label == descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
                assert (t.number, t.type, t.is_repeated) == (f.number, f.type, repeated), (full, f.name)
                checked += 1
            walk(full, m.nested_type)

    for f in fds.file:
        if f.package.startswith("tensorflow"):
            walk(f.package, f.message_type)
    assert checked > 40
