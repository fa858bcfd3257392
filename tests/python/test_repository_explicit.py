"""Model control mode "explicit": the repository API (index / load / unload) over HTTP and gRPC."""

from __future__ import annotations

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from inferd_testlib import EXAMPLE_MODEL_NAMES, TritonClient, mlp_input, ready_versions, wait_until

PROTOCOLS = ("http", "grpc")
NOT_LOADED_STATES = ("", "UNAVAILABLE")


@pytest.fixture(scope="module")
def repo(model_repo_factory):
    # Servers only read the repository here, so one copy serves the whole module.
    return model_repo_factory()


@pytest.fixture(params=PROTOCOLS)
def explicit_client(request, inferd_server_factory, repo) -> TritonClient:
    """A fresh explicit-mode server with nothing loaded, and a client of the given protocol."""
    server = inferd_server_factory(repo, control_mode="explicit")
    client = TritonClient(request.param, server)
    yield client
    client.close()
    server.stop()


def assert_error_status_is_client_side(exc: InferenceServerException, protocol: str) -> None:
    status = str(exc.status())
    if protocol == "http":
        assert status.startswith("4"), f"expected a 4xx status, got {status}: {exc.message()}"
    else:
        assert status in {"StatusCode.NOT_FOUND", "StatusCode.UNAVAILABLE", "StatusCode.INVALID_ARGUMENT"}, (
            f"unexpected gRPC status {status}: {exc.message()}"
        )


def test_index_lists_every_model_and_none_is_loaded_at_start(explicit_client):
    index = explicit_client.repository_index()
    assert set(EXAMPLE_MODEL_NAMES) <= {e["name"] for e in index}, index
    for entry in index:
        assert entry["state"] in NOT_LOADED_STATES, entry
    for model in EXAMPLE_MODEL_NAMES:
        assert not explicit_client.is_model_ready(model)


def test_load_makes_model_ready_and_unload_makes_it_unavailable(explicit_client, repo, onnx_reference):
    client = explicit_client

    client.client.load_model("simple_mlp")
    assert client.is_model_ready("simple_mlp"), "load_model returned before the model was ready"

    x = mlp_input(2)
    for version in ("1", "2"):
        served, out = client.infer("simple_mlp", {"input": x}, ["output"], version=version)
        assert served == version
        expected = onnx_reference.run(repo / "simple_mlp" / version / "model.onnx", {"input": x})["output"]
        np.testing.assert_allclose(out["output"], expected, atol=1e-5, rtol=1e-5)

    index = client.repository_index()
    assert ready_versions(index, "simple_mlp") == {"1", "2"}, index
    for other in ("add_sub", "string_identity"):
        assert ready_versions(index, other) == set(), index

    client.client.unload_model("simple_mlp")
    # Unloading may wait for in-flight requests; allow it a moment, but no more.
    wait_until(lambda: not client.is_model_ready("simple_mlp"), timeout=5, what="simple_mlp to unload")

    with pytest.raises(InferenceServerException) as excinfo:
        client.infer("simple_mlp", {"input": x}, ["output"])
    assert "simple_mlp" in excinfo.value.message(), excinfo.value.message()
    assert_error_status_is_client_side(excinfo.value, client.protocol)

    index = client.repository_index()
    assert ready_versions(index, "simple_mlp") == set(), index
    assert "simple_mlp" in {e["name"] for e in index}, "unloaded model vanished from the index"


def test_load_of_unknown_model_fails_naming_it(explicit_client):
    with pytest.raises(InferenceServerException) as excinfo:
        explicit_client.client.load_model("no_such_model")
    assert "no_such_model" in excinfo.value.message(), excinfo.value.message()
    assert_error_status_is_client_side(excinfo.value, explicit_client.protocol)
    assert all(e["state"] in NOT_LOADED_STATES for e in explicit_client.repository_index())


def test_load_model_flag_loads_just_that_model_at_startup(inferd_server_factory, repo):
    server = inferd_server_factory(repo, control_mode="explicit", load_models=["add_sub"])
    try:
        for protocol in PROTOCOLS:
            client = TritonClient(protocol, server)
            try:
                assert client.is_model_ready("add_sub")
                assert not client.is_model_ready("simple_mlp")
                assert not client.is_model_ready("string_identity")
                index = client.repository_index()
                assert ready_versions(index, "add_sub") == {"1"}, index
                assert ready_versions(index, "simple_mlp") == set(), index
                assert ready_versions(index, "string_identity") == set(), index
                a = np.arange(4, dtype=np.int64).reshape(1, 4)
                _, out = client.infer("add_sub", {"INPUT0": a, "INPUT1": a}, ["OUTPUT0", "OUTPUT1"])
                np.testing.assert_array_equal(out["OUTPUT0"], a + a)
            finally:
                client.close()
    finally:
        server.stop()
