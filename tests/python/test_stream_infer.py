"""gRPC ModelStreamInfer with tritonclient's streaming API: many requests in flight on one
stream, each answered (by id) with its own result; a bad request gets an in-band error and
does not end the stream."""

from __future__ import annotations

import queue

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from inferd_testlib import example_model_path, mlp_input


@pytest.fixture(scope="module")
def server(inferd_server_factory, model_repo_factory):
    return inferd_server_factory(model_repo_factory(["simple_mlp"]))


def test_stream_answers_every_request_by_id(server, onnx_reference):
    results: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    inputs = {}
    try:
        for i in range(20):
            rows = 1 + i % 4
            x = mlp_input(rows, seed=500 + i)
            inputs[str(i)] = x
            inp = grpcclient.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            client.async_stream_infer("simple_mlp", [inp], request_id=str(i), model_version="1")
        bad = grpcclient.InferInput("input", [1, 3], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 3), dtype=np.float32))
        client.async_stream_infer("simple_mlp", [bad], request_id="bad", model_version="1")
        seen = {}
        errors = []
        for _ in range(21):
            result, error = results.get(timeout=30)
            if error is not None:
                errors.append(str(error))
            else:
                seen[result.get_response().id] = result.as_numpy("output")
    finally:
        client.stop_stream()
        client.close()
    assert len(errors) == 1 and "shape [1, 3]" in errors[0], errors
    assert sorted(seen, key=int) == [str(i) for i in range(20)]
    model = example_model_path("simple_mlp", 1)
    for rid, out in seen.items():
        want = onnx_reference.run(model, {"input": inputs[rid]})["output"]
        np.testing.assert_allclose(out, want, atol=1e-5, rtol=1e-5)
