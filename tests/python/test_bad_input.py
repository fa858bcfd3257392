"""Malformed and hostile requests get a clear client error (4xx / INVALID_ARGUMENT / NOT_FOUND),
never a 5xx or a crash, and the server keeps serving valid requests afterwards.

HTTP goes through ``requests`` (or ``http.client`` where a path must reach the server verbatim);
gRPC goes through the raw ``service_pb2`` stubs, so nothing is validated client-side.
"""

from __future__ import annotations

import http.client
import json
import shutil
import struct
from urllib.parse import quote

import grpc
import numpy as np
import pytest
import requests
from tritonclient.grpc import service_pb2, service_pb2_grpc

from inferd_testlib import EXAMPLE_MODEL_NAMES, TritonClient, example_model_path, ready_versions

SMALL_BODY_LIMIT = 65536


# --------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def repo(model_repo_factory):
    """Good models in ``<tmp>/models``, plus a decoy model *outside* it at ``<tmp>/outside/evil_model``."""
    repo = model_repo_factory()
    decoy = repo.parent / "outside" / "evil_model"
    shutil.copytree(repo / "add_sub", decoy)
    (decoy / "config.pbtxt").write_text('name: "evil_model"\nbackend: "onnxruntime"\nmax_batch_size: 8\n')
    return repo


@pytest.fixture(scope="module")
def server(inferd_server_factory, repo):
    """Explicit mode (so the load API is live) with every good model loaded."""
    return inferd_server_factory(repo, control_mode="explicit", load_models=EXAMPLE_MODEL_NAMES)


@pytest.fixture(autouse=True)
def server_survives(request):
    """Whatever a test sent, the server it talked to is still running afterwards."""
    yield
    for name in ("server", "small_limit_server", "server_with_broken_model", "loose_server"):
        srv = request.node.funcargs.get(name)
        if srv is not None:
            assert srv.is_running(), f"inferd ({name}) died during {request.node.name}"


@pytest.fixture(scope="module")
def base(server) -> str:
    return server.http_base


@pytest.fixture(scope="module")
def stub(server):
    channel = grpc.insecure_channel(server.grpc_url)
    yield service_pb2_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def assert_json_error(resp: requests.Response | "RawResponse", *mentions: str, statuses=None) -> str:
    """4xx (one of ``statuses`` if given) with body ``{"error": "<non-empty>"}`` mentioning any of ``mentions``."""
    status, text = resp.status_code, resp.text
    assert 400 <= status < 500, f"expected a 4xx, got {status}: {text[:500]!r}"
    if statuses is not None:
        assert status in statuses, f"expected one of {statuses}, got {status}: {text[:500]!r}"
    try:
        body = json.loads(text)
    except ValueError:
        pytest.fail(f"error body is not JSON (status {status}): {text[:500]!r}")
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"].strip(), body
    message = body["error"]
    if mentions:
        assert any(m.lower() in message.lower() for m in mentions), (
            f"error message should mention one of {mentions}: {message!r}"
        )
    return message


class RawResponse:
    def __init__(self, status_code: int, text: str):
        self.status_code, self.text = status_code, text


def raw_post(server, path: str, body: bytes = b"{}", headers: dict | None = None) -> RawResponse:
    """POST with the path sent byte-for-byte (no client-side normalisation of ``..`` or ``%2F``).

    A server may answer (e.g. 413) and close before reading the whole body; the resulting send
    error is ignored and the response read anyway.
    """
    conn = http.client.HTTPConnection(server.http_host, server.http_port, timeout=10)
    try:
        conn.putrequest("POST", path, skip_accept_encoding=True)
        for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
            conn.putheader(name, value)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders()
        try:
            for start in range(0, len(body), 16384):
                conn.send(body[start : start + 16384])
        except (BrokenPipeError, ConnectionResetError):
            pass
        resp = conn.getresponse()
        return RawResponse(resp.status, resp.read().decode("utf-8", "replace"))
    finally:
        conn.close()


def infer_url(base: str, model: str, version: str | None = None) -> str:
    return f"{base}/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"


def post_json(base: str, model: str, body, version: str | None = None) -> requests.Response:
    return requests.post(infer_url(base, model, version), json=body, timeout=10)


def post_binary(base: str, model: str, header: dict, payload: bytes, header_length: int | None = None):
    """Binary tensor extension: JSON header, then raw tensor bytes, length in a header."""
    head = json.dumps(header).encode()
    length = len(head) if header_length is None else header_length
    return requests.post(
        infer_url(base, model),
        data=head + payload,
        headers={"Inference-Header-Content-Length": str(length), "Content-Type": "application/octet-stream"},
        timeout=10,
    )


def mlp_json(batch: int = 1, **overrides) -> dict:
    tensor = {"name": "input", "shape": [batch, 64], "datatype": "FP32", "data": [0.25] * (64 * batch)}
    tensor.update(overrides)
    return {"inputs": [tensor]}


def add_sub_tensor(name: str, values=(1, 2, 3, 4), shape=None) -> dict:
    values = list(values)
    return {"name": name, "shape": shape or [1, len(values)], "datatype": "INT64", "data": values}


def add_sub_json() -> dict:
    return {"inputs": [add_sub_tensor("INPUT0"), add_sub_tensor("INPUT1")]}


def bytes_element(payload: bytes) -> bytes:
    return struct.pack("<I", len(payload)) + payload


def repository_index(server) -> list[dict]:
    client = TritonClient("http", server)
    try:
        return client.repository_index()
    finally:
        client.close()


def ready_model_names(server) -> set[str]:
    return {e["name"] for e in repository_index(server) if e["state"] == "READY"}


# --------------------------------------------------------------------------------------------
# HTTP: request body and routing
# --------------------------------------------------------------------------------------------


def test_malformed_json_is_400(base):
    resp = requests.post(
        infer_url(base, "simple_mlp"), data=b'{"inputs": [', headers={"Content-Type": "application/json"}, timeout=10
    )
    assert_json_error(resp, "json", "pars", statuses={400})


def test_json_that_is_not_an_infer_request_is_400(base):
    assert_json_error(post_json(base, "simple_mlp", {"inputs": "nope"}), "inputs", "invalid", "expected", statuses={400})


def test_unknown_model_is_4xx_naming_it(base):
    assert_json_error(post_json(base, "no_such_model", mlp_json()), "no_such_model")


@pytest.mark.parametrize("version", ["99", "abc"])
def test_unknown_version_is_4xx_naming_it(base, version):
    assert_json_error(post_json(base, "simple_mlp", mlp_json(), version=version), version)


def test_missing_input_is_400_naming_it(base):
    body = {"inputs": [add_sub_tensor("INPUT0")]}
    assert_json_error(post_json(base, "add_sub", body), "INPUT1", statuses={400})


def test_unknown_extra_input_is_400_naming_it(base):
    body = mlp_json()
    body["inputs"].append({"name": "bogus_input", "shape": [1, 1], "datatype": "FP32", "data": [1.0]})
    assert_json_error(post_json(base, "simple_mlp", body), "bogus_input", statuses={400})


def test_duplicate_input_is_400(base):
    body = {"inputs": [add_sub_tensor("INPUT0"), add_sub_tensor("INPUT0"), add_sub_tensor("INPUT1")]}
    assert_json_error(post_json(base, "add_sub", body), "INPUT0", statuses={400})


def test_unknown_requested_output_is_400_naming_it(base):
    body = {**add_sub_json(), "outputs": [{"name": "NO_SUCH_OUTPUT"}]}
    assert_json_error(post_json(base, "add_sub", body), "NO_SUCH_OUTPUT", statuses={400})


def test_wrong_datatype_is_400(base):
    body = mlp_json(datatype="INT32", data=[1] * 64)
    assert_json_error(post_json(base, "simple_mlp", body), "FP32", "INT32", "datatype", statuses={400})


def test_unknown_datatype_is_400(base):
    body = mlp_json(datatype="FLOAT128")
    assert_json_error(post_json(base, "simple_mlp", body), "FLOAT128", "datatype", statuses={400})


def test_json_data_of_the_wrong_type_is_400(base):
    body = {"inputs": [add_sub_tensor("INPUT0", values=["a", "b", "c", "d"]), add_sub_tensor("INPUT1")]}
    assert_json_error(post_json(base, "add_sub", body), "INPUT0", "INT64", statuses={400})


def test_shape_that_disagrees_with_data_count_is_400(base):
    body = {"inputs": [add_sub_tensor("INPUT0", values=(1, 2, 3), shape=[1, 4]), add_sub_tensor("INPUT1")]}
    assert_json_error(post_json(base, "add_sub", body), "INPUT0", statuses={400})


def test_shape_that_disagrees_with_model_is_400(base):
    body = {"inputs": [add_sub_tensor("INPUT0", values=(1, 2, 3)), add_sub_tensor("INPUT1")]}
    assert_json_error(post_json(base, "add_sub", body), "INPUT0", statuses={400})
    body = mlp_json(shape=[1, 63], data=[0.5] * 63)
    assert_json_error(post_json(base, "simple_mlp", body), "63", "64", "shape", statuses={400})


def test_input_without_batch_dimension_is_400(base):
    body = mlp_json(shape=[64])
    assert_json_error(post_json(base, "simple_mlp", body), "input", statuses={400})


def test_negative_shape_is_400(base):
    body = mlp_json(shape=[-1, 64])
    assert_json_error(post_json(base, "simple_mlp", body), "input", "shape", statuses={400})


def test_batch_larger_than_max_batch_size_is_400(base):
    assert_json_error(post_json(base, "simple_mlp", mlp_json(batch=65)), "batch", "65", "64", statuses={400})


# --------------------------------------------------------------------------------------------
# HTTP: binary tensor extension
# --------------------------------------------------------------------------------------------


def _add_sub_binary_header(size0: int = 32, size1: int = 32) -> dict:
    return {
        "inputs": [
            {"name": "INPUT0", "shape": [1, 4], "datatype": "INT64", "parameters": {"binary_data_size": size0}},
            {"name": "INPUT1", "shape": [1, 4], "datatype": "INT64", "parameters": {"binary_data_size": size1}},
        ]
    }


ONES = np.ones((1, 4), dtype=np.int64).tobytes()  # 32 bytes


def test_valid_binary_request_is_accepted(base):
    resp = post_binary(base, "add_sub", _add_sub_binary_header(), ONES + ONES)
    assert resp.status_code == 200, resp.text


def test_binary_data_size_past_end_of_body_is_400(base):
    resp = post_binary(base, "add_sub", _add_sub_binary_header(), ONES + ONES[:-1])
    assert_json_error(resp, "INPUT1", "binary", "size", statuses={400})


def test_binary_data_size_short_of_body_is_400(base):
    resp = post_binary(base, "add_sub", _add_sub_binary_header(), ONES + ONES + b"\x00" * 8)
    assert_json_error(resp, "binary", "size", "body", "byte", "length", "data", "INPUT", statuses={400})


def test_binary_data_size_that_disagrees_with_shape_is_400(base):
    resp = post_binary(base, "add_sub", _add_sub_binary_header(size0=24), ONES[:24] + ONES)
    assert_json_error(resp, "INPUT0", statuses={400})


def test_header_length_larger_than_body_is_400(base):
    head_len = len(json.dumps(_add_sub_binary_header()).encode())
    body = ONES + ONES
    resp = post_binary(base, "add_sub", _add_sub_binary_header(), body, header_length=head_len + len(body) + 100)
    assert_json_error(resp, "Inference-Header-Content-Length", "header", statuses={400})


def test_header_length_that_is_not_a_number_is_400(base):
    head = json.dumps(_add_sub_binary_header()).encode()
    resp = requests.post(
        infer_url(base, "add_sub"),
        data=head + ONES + ONES,
        headers={"Inference-Header-Content-Length": "abc"},
        timeout=10,
    )
    assert_json_error(resp, "Inference-Header-Content-Length", "header", statuses={400})


def _string_binary_header(size: int) -> dict:
    return {
        "inputs": [{"name": "INPUT0", "shape": [1, 1], "datatype": "BYTES", "parameters": {"binary_data_size": size}}]
    }


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(struct.pack("<I", 100) + b"short", id="prefix-claims-more-than-present"),
        pytest.param(b"\x05\x00", id="truncated-prefix"),
        pytest.param(bytes_element(b"one") + bytes_element(b"two"), id="more-elements-than-shape"),
    ],
)
def test_bytes_with_broken_length_prefixes_is_400(base, payload):
    resp = post_binary(base, "string_identity", _string_binary_header(len(payload)), payload)
    assert_json_error(resp, "INPUT0", "BYTES", "length", "prefix", "element", statuses={400})


def test_json_bytes_element_that_is_not_a_string_is_400(base):
    body = {"inputs": [{"name": "INPUT0", "shape": [1, 1], "datatype": "BYTES", "data": [5]}]}
    assert_json_error(post_json(base, "string_identity", body), "INPUT0", "BYTES", "string", statuses={400})


# --------------------------------------------------------------------------------------------
# HTTP: body size limit (separate server with a small --http-max-body-bytes)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_limit_server(inferd_server_factory, model_repo_factory):
    repo = model_repo_factory(["simple_mlp"])
    return inferd_server_factory(repo, "--http-max-body-bytes", str(SMALL_BODY_LIMIT), name="small-body-limit")


def test_body_over_http_max_body_bytes_is_413(small_limit_server):
    base = small_limit_server.http_base
    body = (json.dumps(mlp_json()) + " " * (2 * SMALL_BODY_LIMIT)).encode()  # valid JSON, just too big
    resp = raw_post(small_limit_server, "/v2/models/simple_mlp/infer", body)
    assert_json_error(resp, statuses={413})

    # A request under the limit is still served (binary batch 64 = 16 KiB of tensor data).
    x = np.zeros((64, 64), dtype=np.float32)
    header = {
        "inputs": [{"name": "input", "shape": [64, 64], "datatype": "FP32", "parameters": {"binary_data_size": x.nbytes}}]
    }
    resp = post_binary(base, "simple_mlp", header, x.tobytes())
    assert resp.status_code == 200, resp.text
    assert small_limit_server.is_running()


# --------------------------------------------------------------------------------------------
# HTTP: repository load API path tricks (explicit mode)
# --------------------------------------------------------------------------------------------


def _traversal_paths(repo) -> list[tuple[str, bool]]:
    """(request path, whether the server must answer with a JSON error body)."""
    decoy = repo.parent / "outside" / "evil_model"
    return [
        ("/v2/repository/models/..%2F..%2Fetc/load", True),
        ("/v2/repository/models/..%2Foutside%2Fevil_model/load", True),
        ("/v2/repository/models/%2E%2E/load", True),
        ("/v2/repository/models/%2E/load", True),
        ("/v2/repository/models/..%5Coutside%5Cevil_model/load", True),
        (f"/v2/repository/models/{quote(str(decoy), safe='')}/load", True),
        ("/v2/repository/models/%2Fetc%2Fpasswd/load", True),
        ("/v2/repository/models/simple_mlp%2F1/load", True),
        ("/v2/repository/models/add_sub%00/load", True),
        # Unencoded: may not even match a route, so any 400/404 will do.
        ("/v2/repository/models/../load", False),
        ("/v2/repository/models/../outside/evil_model/load", False),
        ("/v2/repository/models/simple_mlp/1/load", False),
    ]


def test_repository_load_rejects_path_tricks_and_loads_nothing(server, repo):
    before = ready_model_names(server)
    failures = []
    for path, wants_json in _traversal_paths(repo):
        resp = raw_post(server, path)
        try:
            if wants_json:
                assert_json_error(resp, statuses={400, 404})
            else:
                assert resp.status_code in {400, 404}, f"got {resp.status_code}: {resp.text[:300]!r}"
        except AssertionError as exc:
            failures.append(f"{path}: {exc}")
    assert not failures, "\n".join(failures)

    assert ready_model_names(server) == before
    index = repository_index(server)
    assert not [e for e in index if e["name"] not in EXAMPLE_MODEL_NAMES], index
    resp = requests.get(f"{server.http_base}/v2/models/evil_model/ready", timeout=10)
    assert_json_error(resp, "evil_model", statuses={404})


def test_repository_load_of_unknown_model_is_4xx_naming_it(server):
    resp = raw_post(server, "/v2/repository/models/no_such_model/load")
    assert_json_error(resp, "no_such_model", statuses={400, 404})


# --------------------------------------------------------------------------------------------
# gRPC
# --------------------------------------------------------------------------------------------


def grpc_error(call, *mentions: str, codes: set) -> str:
    with pytest.raises(grpc.RpcError) as excinfo:
        call()
    err = excinfo.value
    assert err.code() in codes, f"expected one of {codes}, got {err.code()}: {err.details()!r}"
    details = err.details() or ""
    assert details.strip(), "gRPC error without details"
    if mentions:
        assert any(m.lower() in details.lower() for m in mentions), (
            f"error details should mention one of {mentions}: {details!r}"
        )
    return details


def grpc_tensor(name: str, datatype: str, shape) -> service_pb2.ModelInferRequest.InferInputTensor:
    return service_pb2.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=list(shape))


def grpc_add_sub_request(raw0: bytes = ONES, raw1: bytes = ONES, **kwargs) -> service_pb2.ModelInferRequest:
    return service_pb2.ModelInferRequest(
        model_name="add_sub",
        inputs=[grpc_tensor("INPUT0", "INT64", [1, 4]), grpc_tensor("INPUT1", "INT64", [1, 4])],
        raw_input_contents=[raw0, raw1],
        **kwargs,
    )


INVALID = {grpc.StatusCode.INVALID_ARGUMENT}
NOT_FOUND = {grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE}


def test_grpc_raw_input_size_mismatch_is_invalid_argument(stub):
    request = grpc_add_sub_request(raw1=ONES[:-1])
    grpc_error(lambda: stub.ModelInfer(request, timeout=10), "INPUT1", codes=INVALID)


def test_grpc_raw_contents_count_mismatch_is_invalid_argument(stub):
    request = grpc_add_sub_request()
    request.raw_input_contents.append(ONES)
    grpc_error(lambda: stub.ModelInfer(request, timeout=10), "raw_input_contents", "input", codes=INVALID)


def test_grpc_unknown_model_is_not_found_naming_it(stub):
    request = grpc_add_sub_request()
    request.model_name = "no_such_model"
    grpc_error(lambda: stub.ModelInfer(request, timeout=10), "no_such_model", codes=NOT_FOUND)


def test_grpc_unknown_version_is_rejected_naming_it(stub):
    request = grpc_add_sub_request(model_version="99")
    grpc_error(lambda: stub.ModelInfer(request, timeout=10), "99", codes=NOT_FOUND | INVALID)


def test_grpc_missing_input_is_invalid_argument_naming_it(stub):
    request = service_pb2.ModelInferRequest(
        model_name="add_sub", inputs=[grpc_tensor("INPUT0", "INT64", [1, 4])], raw_input_contents=[ONES]
    )
    grpc_error(lambda: stub.ModelInfer(request, timeout=10), "INPUT1", codes=INVALID)


def test_grpc_wrong_datatype_is_invalid_argument(stub):
    request = grpc_add_sub_request(raw0=np.ones((1, 4), dtype=np.int32).tobytes())
    request.inputs[0].datatype = "INT32"
    grpc_error(lambda: stub.ModelInfer(request, timeout=10), "INPUT0", "INT32", "INT64", codes=INVALID)


def test_grpc_batch_larger_than_max_batch_size_is_invalid_argument(stub):
    big = np.ones((9, 4), dtype=np.int64).tobytes()
    request = service_pb2.ModelInferRequest(
        model_name="add_sub",
        inputs=[grpc_tensor("INPUT0", "INT64", [9, 4]), grpc_tensor("INPUT1", "INT64", [9, 4])],
        raw_input_contents=[big, big],
    )
    grpc_error(lambda: stub.ModelInfer(request, timeout=10), "batch", "9", "8", codes=INVALID)


def test_grpc_raw_and_typed_contents_together_are_invalid_argument(stub):
    request = grpc_add_sub_request()
    request.inputs[0].contents.int64_contents.extend([1, 1, 1, 1])
    grpc_error(lambda: stub.ModelInfer(request, timeout=10), "INPUT0", "contents", codes=INVALID)


def test_grpc_bytes_with_broken_length_prefix_is_invalid_argument(stub):
    request = service_pb2.ModelInferRequest(
        model_name="string_identity",
        inputs=[grpc_tensor("INPUT0", "BYTES", [1, 1])],
        raw_input_contents=[struct.pack("<I", 100) + b"short"],
    )
    grpc_error(lambda: stub.ModelInfer(request, timeout=10), "INPUT0", "BYTES", "length", codes=INVALID)


@pytest.mark.parametrize("name", ["../outside/evil_model", "/etc/passwd", "..", "simple_mlp/1"])
def test_grpc_repository_load_rejects_path_tricks(stub, server, name):
    before = ready_model_names(server)
    with pytest.raises(grpc.RpcError) as excinfo:
        stub.RepositoryModelLoad(service_pb2.RepositoryModelLoadRequest(model_name=name), timeout=30)
    assert excinfo.value.code() in INVALID | {grpc.StatusCode.NOT_FOUND}, excinfo.value
    details = excinfo.value.details() or ""
    assert "model name" in details.lower() or "not in the repository" in details, details
    assert ready_model_names(server) == before


# --------------------------------------------------------------------------------------------
# a config looser than its model file: the model's own shape still decides (separate server)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def loose_server(inferd_server_factory, tmp_path_factory):
    """`loose_mlp`: simple_mlp's file (which takes [-1, 64]) under a config that says dims [-1]."""
    repo = tmp_path_factory.mktemp("loose") / "models"
    (repo / "loose_mlp" / "1").mkdir(parents=True)
    shutil.copyfile(example_model_path("simple_mlp", 1), repo / "loose_mlp" / "1" / "model.onnx")
    (repo / "loose_mlp" / "config.pbtxt").write_text(
        'name: "loose_mlp"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 8\n'
        'input [ { name: "input" data_type: TYPE_FP32 dims: [ -1 ] } ]\n'
        'output [ { name: "output" data_type: TYPE_FP32 dims: [ 10 ] } ]\n'
    )
    return inferd_server_factory(repo, name="loose-config")


def test_shape_the_config_allows_but_the_model_file_does_not_is_400(loose_server):
    base = loose_server.http_base
    body = mlp_json(shape=[2, 32], data=[0.5] * 64)
    assert_json_error(post_json(base, "loose_mlp", body), "input", "[2, 32]", "[-1, 64]", statuses={400})
    ok = post_json(base, "loose_mlp", mlp_json(batch=2))
    assert ok.status_code == 200, ok.text
    assert ok.json()["outputs"][0]["shape"] == [2, 10]


def test_grpc_shape_the_config_allows_but_the_model_file_does_not_is_invalid_argument(loose_server):
    channel = grpc.insecure_channel(loose_server.grpc_url)
    try:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(
            model_name="loose_mlp",
            inputs=[grpc_tensor("input", "FP32", [1, 32])],
            raw_input_contents=[np.zeros(32, dtype=np.float32).tobytes()],
        )
        grpc_error(lambda: stub.ModelInfer(request, timeout=10), "[-1, 64]", codes=INVALID)
    finally:
        channel.close()


# --------------------------------------------------------------------------------------------
# a model that cannot load does not take the server down (separate server)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server_with_broken_model(inferd_server_factory, model_repo_factory):
    repo = model_repo_factory()
    broken = repo / "broken"
    (broken / "1").mkdir(parents=True)
    (broken / "config.pbtxt").write_text('name: "broken"\nbackend: "onnxruntime"\nmax_batch_size: 8\n')
    (broken / "1" / "model.onnx").write_bytes(np.random.default_rng(0).bytes(4096))
    # With strict readiness one failed model would (rightly) keep /v2/health/ready at 503.
    return inferd_server_factory(repo, strict_readiness=False, name="with-broken-model")


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_broken_model_is_unavailable_while_good_models_serve(server_with_broken_model, protocol):
    srv = server_with_broken_model
    resp = requests.get(f"{srv.http_base}/v2/models/broken/ready", timeout=10)
    assert resp.status_code != 200

    client = TritonClient(protocol, srv)
    try:
        assert not client.is_model_ready("broken")
        for model in EXAMPLE_MODEL_NAMES:
            assert client.is_model_ready(model), f"{model} should load despite the broken model"
        a = np.arange(4, dtype=np.int64).reshape(1, 4)
        _, out = client.infer("add_sub", {"INPUT0": a, "INPUT1": a}, ["OUTPUT0", "OUTPUT1"])
        np.testing.assert_array_equal(out["OUTPUT1"], np.zeros_like(a))

        index = client.repository_index()
        entries = [e for e in index if e["name"] == "broken"]
        assert entries, f"broken model missing from the index: {index}"
        for entry in entries:
            assert entry["state"] == "UNAVAILABLE", entry
            assert entry["reason"].strip(), f"UNAVAILABLE without a reason: {entry}"
        assert ready_versions(index, "simple_mlp") == {"1", "2"}, index
    finally:
        client.close()


# --------------------------------------------------------------------------------------------
# and after all that, valid requests still work (keep these last in the module)
# --------------------------------------------------------------------------------------------


def test_valid_http_requests_still_succeed_after_bad_input(base):
    resp = post_json(base, "add_sub", add_sub_json())
    assert resp.status_code == 200, resp.text
    outputs = {o["name"]: o["data"] for o in resp.json()["outputs"]}
    assert outputs == {"OUTPUT0": [2, 4, 6, 8], "OUTPUT1": [0, 0, 0, 0]}

    resp = post_json(base, "simple_mlp", mlp_json(batch=2))
    assert resp.status_code == 200, resp.text
    (output,) = resp.json()["outputs"]
    assert output["name"] == "output" and output["shape"] == [2, 10] and len(output["data"]) == 20


def test_valid_grpc_request_still_succeeds_after_bad_input(stub):
    response = stub.ModelInfer(grpc_add_sub_request(), timeout=10)
    by_name = dict(zip([o.name for o in response.outputs], response.raw_output_contents))
    np.testing.assert_array_equal(np.frombuffer(by_name["OUTPUT0"], dtype=np.int64), [2, 2, 2, 2])
    np.testing.assert_array_equal(np.frombuffer(by_name["OUTPUT1"], dtype=np.int64), [0, 0, 0, 0])
