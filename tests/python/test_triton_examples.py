"""What Triton's example clients (``src/python/examples/`` of triton-inference-server/client) do,
as our own tests: the same calls with the real ``tritonclient`` and the same checks, against a
repository of models with the names, datatypes and shapes those clients expect
(``triton_models.py``). Sequences, shared memory and model control have files of their own.

The examples' one check left out on purpose is the server's name ("triton"): inferd says
inferd.
"""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException
import grpc

import triton_models


@pytest.fixture(scope="module")
def server(inferd_server_factory, tmp_path_factory):
    repo = triton_models.make_repo(tmp_path_factory.mktemp("triton") / "models")
    return inferd_server_factory(repo)


def _client(server, protocol):
    if protocol == "http":
        return httpclient, httpclient.InferenceServerClient(server.http_url)
    return grpcclient, grpcclient.InferenceServerClient(server.grpc_url)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_simple_adds_and_subtracts_and_names_unknown_models_as_triton_does(server, protocol):
    mod, client = _client(server, protocol)
    in0 = np.arange(16, dtype=np.int32).reshape(1, 16)
    in1 = np.full((1, 16), -1, dtype=np.int32)
    inputs = [mod.InferInput("INPUT0", [1, 16], "INT32"), mod.InferInput("INPUT1", [1, 16], "INT32")]
    if protocol == "http":
        inputs[0].set_data_from_numpy(in0, binary_data=False)
        inputs[1].set_data_from_numpy(in1, binary_data=True)
        outputs = [
            mod.InferRequestedOutput("OUTPUT0", binary_data=True),
            mod.InferRequestedOutput("OUTPUT1", binary_data=False),
        ]
        result = client.infer("simple", inputs, outputs=outputs, query_params={"test_1": 1, "test_2": 2})
        stats = client.get_inference_statistics(model_name="simple")
        assert len(stats["model_stats"]) == 1
    else:
        inputs[0].set_data_from_numpy(in0)
        inputs[1].set_data_from_numpy(in1)
        outputs = [mod.InferRequestedOutput("OUTPUT0"), mod.InferRequestedOutput("OUTPUT1")]
        result = client.infer("simple", inputs, outputs=outputs, headers={"test": "1"})
        assert len(client.get_inference_statistics(model_name="simple").model_stats) == 1
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), in0 + in1)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), in0 - in1)
    # No outputs named: all of them come back.
    result = client.infer("simple", inputs, outputs=None)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), in0 + in1)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), in0 - in1)
    with pytest.raises(InferenceServerException) as e:
        client.infer("wrong_model_name", inputs, outputs=outputs)
    assert e.value.message().startswith("Request for unknown model"), e.value.message()
    with pytest.raises(InferenceServerException) as e:
        client.get_model_metadata("wrong_model_name")
    assert "Request for unknown model" in e.value.message()
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("simple")
    meta = client.get_model_metadata("simple")
    assert (meta["name"] if protocol == "http" else meta.name) == "simple"
    if protocol == "grpc":
        assert client.get_model_config("simple").config.name == "simple"


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_string_arithmetic_and_identity_keep_every_byte(server, protocol):
    mod, client = _client(server, protocol)
    in0 = np.array([[str(i).encode() for i in range(16)]], dtype=np.object_)
    in1 = np.array([[b"1"] * 16], dtype=np.object_)
    inputs = [mod.InferInput("INPUT0", [1, 16], "BYTES"), mod.InferInput("INPUT1", [1, 16], "BYTES")]
    if protocol == "http":
        inputs[0].set_data_from_numpy(in0, binary_data=True)
        inputs[1].set_data_from_numpy(in1, binary_data=False)
        outputs = [
            mod.InferRequestedOutput("OUTPUT0", binary_data=True),
            mod.InferRequestedOutput("OUTPUT1", binary_data=False),
        ]
    else:
        inputs[0].set_data_from_numpy(in0)
        inputs[1].set_data_from_numpy(in1)
        outputs = [mod.InferRequestedOutput("OUTPUT0"), mod.InferRequestedOutput("OUTPUT1")]
    result = client.infer("simple_string", inputs, outputs=outputs)
    out0, out1 = result.as_numpy("OUTPUT0"), result.as_numpy("OUTPUT1")
    for i in range(16):
        assert int(out0[0][i]) == i + 1
        assert int(out1[0][i]) == i - 1
    # Embedded NULs and control bytes survive, binary and (over HTTP) JSON.
    for data in (
        np.array([[b"he\x00llo"] * 16], dtype=np.object_),
        np.array([[b"\x00\x01\x02\x03"] * 16], dtype=np.bytes_),
    ):
        for binary in ([True, False] if protocol == "http" else [None]):
            inp = mod.InferInput("INPUT0", list(data.shape), "BYTES")
            if binary is None:
                inp.set_data_from_numpy(data)
                out = mod.InferRequestedOutput("OUTPUT0")
            else:
                inp.set_data_from_numpy(data, binary_data=binary)
                out = mod.InferRequestedOutput("OUTPUT0", binary_data=binary)
            got = client.infer("simple_identity", [inp], outputs=[out]).as_numpy("OUTPUT0")
            want = data.astype(np.object_)
            if binary is False:
                # Strings that went through JSON come back as str; compare their bytes.
                got = np.vectorize(lambda s: s if isinstance(s, bytes) else s.encode())(got)
            assert got.shape == want.shape
            assert [bytes(x) for x in got.flatten()] == [bytes(x) for x in want.flatten()]


def _stub(server):
    channel = grpc.insecure_channel(server.grpc_url)
    return channel, service_pb2_grpc.GRPCInferenceServiceStub(channel)


def _typed_request(model, dtype, field, a, b):
    req = service_pb2.ModelInferRequest(model_name=model, model_version="")
    for name, values in (("INPUT0", a), ("INPUT1", b)):
        t = service_pb2.ModelInferRequest().InferInputTensor(name=name, datatype=dtype, shape=[1, 16])
        getattr(t.contents, field)[:] = values
        req.inputs.extend([t])
    for name in ("OUTPUT0", "OUTPUT1"):
        req.outputs.extend([service_pb2.ModelInferRequest().InferRequestedOutputTensor(name=name)])
    return req


def test_explicit_typed_contents_and_triton_error_texts(server):
    channel, stub = _stub(server)
    a, b = list(range(16)), [1] * 16
    for model, dtype, np_type, field, x, y in (
        ("simple_int8", "INT8", np.int8, "int_contents", a, b),
        ("simple", "INT32", np.int32, "int_contents", a, b),
        ("simple_string", "BYTES", None, "bytes_contents", [str(i).encode() for i in a], [b"1"] * 16),
    ):
        resp = stub.ModelInfer(_typed_request(model, dtype, field, x, y))
        assert len(resp.outputs) == 2
        if np_type is None:
            from tritonclient.utils import deserialize_bytes_tensor

            out0 = [int(v) for v in deserialize_bytes_tensor(resp.raw_output_contents[0])]
            out1 = [int(v) for v in deserialize_bytes_tensor(resp.raw_output_contents[1])]
        else:
            out0 = np.frombuffer(resp.raw_output_contents[0], dtype=np_type).tolist()
            out1 = np.frombuffer(resp.raw_output_contents[1], dtype=np_type).tolist()
        assert out0 == [i + 1 for i in a] and out1 == [i - 1 for i in a], model
    bad = _typed_request("simple_int8", "INT8", "int_contents", a, b)
    bad.model_version = "wrong_specification"
    with pytest.raises(grpc.RpcError) as e:
        stub.ModelInfer(bad)
    assert "failed to get model version from specified version string 'wrong_specification'" in e.value.details()
    both = _typed_request("simple", "INT32", "int_contents", a, b)
    both.raw_input_contents.extend([np.array(a[0:8], dtype=np.int64).tobytes()])
    both.inputs[0].contents.int_contents[:] = a[8:]
    with pytest.raises(grpc.RpcError) as e:
        stub.ModelInfer(both)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        "contents field must not be specified when using raw_input_contents for 'INPUT0' for model 'simple'"
        in e.value.details()
    )
    channel.close()
