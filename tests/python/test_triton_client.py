"""inferd speaks KServe v2 well enough for the stock Triton clients (tritonclient.http/.grpc).

One server (model control mode "none", all example models) serves every test in this module;
each test runs once per protocol.
"""

from __future__ import annotations

import numpy as np
import pytest

from inferd_testlib import TritonClient, mlp_input

PROTOCOLS = ("http", "grpc")
ATOL = RTOL = 1e-5

# Extensions (Triton's names) that this suite exercises, so the server should advertise them.
EXERCISED_EXTENSIONS = {"binary_tensor_data", "model_repository", "model_configuration", "statistics"}


@pytest.fixture(scope="module")
def server(inferd_server_factory, model_repo_factory):
    return inferd_server_factory(model_repo_factory())


@pytest.fixture(scope="module", params=PROTOCOLS)
def triton(request, server) -> TritonClient:
    client = TritonClient(request.param, server)
    yield client
    client.close()


@pytest.fixture(scope="module")
def clients(server) -> dict[str, TritonClient]:
    """Both clients at once, for tests parametrized over ENCODINGS."""
    by_protocol = {protocol: TritonClient(protocol, server) for protocol in PROTOCOLS}
    yield by_protocol
    for client in by_protocol.values():
        client.close()


# (protocol, binary): HTTP with the binary tensor extension (tritonclient's default) and with
# JSON tensors; gRPC has a single encoding (raw contents).
ENCODINGS = [
    pytest.param("http", True, id="http-binary"),
    pytest.param("http", False, id="http-json"),
    pytest.param("grpc", True, id="grpc"),
]


def mlp_reference(onnx_reference, server, version: int, x: np.ndarray) -> np.ndarray:
    """onnxruntime output of the very file the server serves."""
    path = server.repo / "simple_mlp" / str(version) / "model.onnx"
    return onnx_reference.run(path, {"input": x})["output"]


# --------------------------------------------------------------------------------------------
# health and metadata
# --------------------------------------------------------------------------------------------


def test_server_is_live_and_ready(triton):
    assert triton.client.is_server_live()
    assert triton.client.is_server_ready()


def test_server_metadata_has_name_version_and_extensions(triton):
    md = triton.server_metadata()
    assert isinstance(md.get("name"), str) and md["name"], md
    assert isinstance(md.get("version"), str) and md["version"], md
    extensions = md.get("extensions", [])
    assert isinstance(extensions, list) and all(isinstance(e, str) for e in extensions), md


def test_server_metadata_advertises_the_extensions_it_implements(triton):
    extensions = set(triton.server_metadata().get("extensions", []))
    assert EXERCISED_EXTENSIONS <= extensions, f"missing: {sorted(EXERCISED_EXTENSIONS - extensions)}"


@pytest.mark.parametrize("model", ["simple_mlp", "add_sub", "string_identity"])
def test_example_model_is_ready(triton, model):
    assert triton.client.is_model_ready(model)


def test_every_simple_mlp_version_is_ready_under_version_policy_all(triton):
    assert triton.client.is_model_ready("simple_mlp", "1")
    assert triton.client.is_model_ready("simple_mlp", "2")
    assert not triton.is_model_ready("simple_mlp", "3")


def test_simple_mlp_metadata_has_batch_dim_minus_one(triton):
    md = triton.model_metadata("simple_mlp")
    assert md["name"] == "simple_mlp"
    assert sorted(md["versions"]) == ["1", "2"]
    assert md["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert md["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, 10]}]


def test_simple_mlp_metadata_for_one_version(triton):
    md = triton.model_metadata("simple_mlp", version="1")
    assert md["name"] == "simple_mlp"
    assert md["inputs"][0]["shape"] == [-1, 64]


def test_simple_mlp_config_round_trips_config_pbtxt(triton):
    cfg = triton.model_config("simple_mlp")
    assert cfg["name"] == "simple_mlp"
    assert cfg["max_batch_size"] == 64
    assert [(t["name"], t["data_type"], t["dims"]) for t in cfg["input"]] == [("input", "TYPE_FP32", [64])]
    assert [(t["name"], t["data_type"], t["dims"]) for t in cfg["output"]] == [("output", "TYPE_FP32", [10])]


# --------------------------------------------------------------------------------------------
# inference: simple_mlp (FP32)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("protocol, binary", ENCODINGS)
def test_infer_simple_mlp_matches_onnxruntime(clients, protocol, binary, server, onnx_reference, batch):
    x = mlp_input(batch, seed=batch)
    _, out = clients[protocol].infer("simple_mlp", {"input": x}, ["output"], version="1", binary=binary)
    assert out["output"].shape == (batch, 10) and out["output"].dtype == np.float32
    np.testing.assert_allclose(out["output"], mlp_reference(onnx_reference, server, 1, x), atol=ATOL, rtol=RTOL)


def test_infer_explicit_versions_use_their_own_weights(triton, server, onnx_reference):
    x = mlp_input(3, seed=7)
    outputs = {}
    for version in ("1", "2"):
        served_version, out = triton.infer("simple_mlp", {"input": x}, ["output"], version=version)
        assert served_version == version
        expected = mlp_reference(onnx_reference, server, int(version), x)
        np.testing.assert_allclose(out["output"], expected, atol=ATOL, rtol=RTOL)
        outputs[version] = out["output"]
    assert np.abs(outputs["1"] - outputs["2"]).max() > 1e-2, "versions 1 and 2 gave the same output"


def test_infer_without_version_is_served_by_latest_version(triton, server, onnx_reference):
    x = mlp_input(2, seed=8)
    served_version, out = triton.infer("simple_mlp", {"input": x}, ["output"])
    assert served_version == "2"
    np.testing.assert_allclose(out["output"], mlp_reference(onnx_reference, server, 2, x), atol=ATOL, rtol=RTOL)


# --------------------------------------------------------------------------------------------
# add_sub (INT64, config auto-completed from the model)
# --------------------------------------------------------------------------------------------


def test_add_sub_metadata_is_autocompleted_from_model(triton):
    md = triton.model_metadata("add_sub")
    assert md["inputs"] == [
        {"name": "INPUT0", "datatype": "INT64", "shape": [-1, 4]},
        {"name": "INPUT1", "datatype": "INT64", "shape": [-1, 4]},
    ]
    assert md["outputs"] == [
        {"name": "OUTPUT0", "datatype": "INT64", "shape": [-1, 4]},
        {"name": "OUTPUT1", "datatype": "INT64", "shape": [-1, 4]},
    ]


def test_add_sub_config_is_autocompleted_from_model(triton):
    cfg = triton.model_config("add_sub")
    assert cfg["name"] == "add_sub"
    assert cfg["max_batch_size"] == 8
    assert sorted((t["name"], t["data_type"], t["dims"]) for t in cfg["input"]) == [
        ("INPUT0", "TYPE_INT64", [4]),
        ("INPUT1", "TYPE_INT64", [4]),
    ]
    assert sorted((t["name"], t["data_type"], t["dims"]) for t in cfg["output"]) == [
        ("OUTPUT0", "TYPE_INT64", [4]),
        ("OUTPUT1", "TYPE_INT64", [4]),
    ]


@pytest.mark.parametrize("protocol, binary", ENCODINGS)
def test_infer_add_sub_int64_is_exact(clients, protocol, binary):
    a = np.array([[1, -2, 3, 2**40], [2**53 + 1, 0, -(2**62), 7]], dtype=np.int64)
    b = np.array([[10, 20, -30, 1], [1, 0, 2**61, -7]], dtype=np.int64)
    _, out = clients[protocol].infer("add_sub", {"INPUT0": a, "INPUT1": b}, ["OUTPUT0", "OUTPUT1"], binary=binary)
    assert out["OUTPUT0"].dtype == np.int64 and out["OUTPUT1"].dtype == np.int64
    np.testing.assert_array_equal(out["OUTPUT0"], a + b)
    np.testing.assert_array_equal(out["OUTPUT1"], a - b)


# --------------------------------------------------------------------------------------------
# string_identity (BYTES)
# --------------------------------------------------------------------------------------------

STRINGS = [b"hello", b"", "h\u00e9llo w\u00f6rld \u2713 \U0001f600".encode("utf-8"), b"", "\u65e5\u672c\u8a9e".encode("utf-8")]


def test_string_identity_metadata_is_bytes(triton):
    md = triton.model_metadata("string_identity")
    assert md["inputs"] == [{"name": "INPUT0", "datatype": "BYTES", "shape": [-1, 1]}]
    assert md["outputs"] == [{"name": "OUTPUT0", "datatype": "BYTES", "shape": [-1, 1]}]


@pytest.mark.parametrize("protocol, binary", ENCODINGS)
def test_infer_string_identity_round_trips_bytes_exactly(clients, protocol, binary):
    x = np.array([[s] for s in STRINGS], dtype=np.object_)
    _, out = clients[protocol].infer("string_identity", {"INPUT0": x}, ["OUTPUT0"], binary=binary)
    assert out["OUTPUT0"].shape == (len(STRINGS), 1)
    assert out["OUTPUT0"].tolist() == x.tolist()


# --------------------------------------------------------------------------------------------
# statistics
# --------------------------------------------------------------------------------------------


def _success(stats: list[dict], model: str) -> tuple[int, int]:
    count = ns = 0
    for entry in stats:
        if entry.get("name") == model:
            success = entry.get("inference_stats", {}).get("success", {})
            count += int(success.get("count", 0))
            ns += int(success.get("ns", 0))
    return count, ns


def test_inference_statistics_count_successful_requests(triton):
    n = 4
    before, _ = _success(triton.model_stats("add_sub"), "add_sub")
    a = np.ones((2, 4), dtype=np.int64)
    for _ in range(n):
        triton.infer("add_sub", {"INPUT0": a, "INPUT1": a}, ["OUTPUT0", "OUTPUT1"])
    stats = triton.model_stats("add_sub")
    after, ns = _success(stats, "add_sub")
    assert after == before + n, stats
    assert ns > 0, stats
