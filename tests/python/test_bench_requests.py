"""The benchmark harness builds its gRPC request by hand (bench/run.py, `grpc_infer_body`) for
h2load, which sends a file's bytes and reads no answer. These tests pin that those bytes are a
KServe v2 ModelInferRequest as the protocol's own generated code reads it, and that a real server
answers them with the model's output: otherwise the h2load rows would time error answers."""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
from tritonclient.grpc import service_pb2

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH / "models"))
from generate import build_mlp  # noqa: E402  (the benchmark's MLP builder)
from run import grpc_infer_body  # noqa: E402

MODEL = "bench_mlp"
CONFIG = f"""\
name: "{MODEL}"
platform: "onnxruntime_onnx"
max_batch_size: 64
input [ {{ name: "input" data_type: TYPE_FP32 dims: [ 64 ] }} ]
output [ {{ name: "output" data_type: TYPE_FP32 dims: [ 10 ] }} ]
dynamic_batching {{ max_queue_delay_microseconds: 100 }}
"""


def unframe(body: bytes) -> bytes:
    """The message inside one gRPC frame (flag byte 0: not compressed; 4-byte big-endian length)."""
    assert body[0] == 0, "the frame says compressed"
    (length,) = struct.unpack(">I", body[1:5])
    assert length == len(body) - 5, "the frame's length does not match its message"
    return body[5:]


@pytest.mark.parametrize("rows", [1, 64])
def test_grpc_infer_body_parses_as_a_model_infer_request(rows):
    req = service_pb2.ModelInferRequest.FromString(unframe(grpc_infer_body(MODEL, 64, rows)))
    assert req.model_name == MODEL
    assert len(req.inputs) == 1
    tensor = req.inputs[0]
    assert (tensor.name, tensor.datatype, list(tensor.shape)) == ("input", "FP32", [rows, 64])
    assert len(req.raw_input_contents) == 1
    np.testing.assert_array_equal(np.frombuffer(req.raw_input_contents[0], dtype="<f4"), np.full(rows * 64, 0.25))


@pytest.fixture(scope="module")
def server(inferd_server_factory, tmp_path_factory):
    repo = tmp_path_factory.mktemp("bench_requests") / "models"
    (repo / MODEL / "1").mkdir(parents=True)
    (repo / MODEL / "config.pbtxt").write_text(CONFIG)
    onnx.save(build_mlp((64, 256, 256, 10), seed=3, name=MODEL), repo / MODEL / "1" / "model.onnx")
    return inferd_server_factory(repo)


@pytest.mark.parametrize("rows", [1, 64])
def test_grpc_infer_body_is_answered_with_the_models_output(server, onnx_reference, rows):
    with grpc.insecure_channel(server.grpc_url) as channel:
        # No serializers: grpcio sends the message bytes as they are and frames them itself.
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        answer = service_pb2.ModelInferResponse.FromString(call(unframe(grpc_infer_body(MODEL, 64, rows)), timeout=30))
    assert [(o.name, o.datatype, list(o.shape)) for o in answer.outputs] == [("output", "FP32", [rows, 10])]
    got = np.frombuffer(answer.raw_output_contents[0], dtype="<f4").reshape(rows, 10)
    model_path = server.repo / MODEL / "1" / "model.onnx"
    want = onnx_reference.run(model_path, {"input": np.full((rows, 64), 0.25, dtype=np.float32)})["output"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
