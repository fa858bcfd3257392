"""Decoupled models (``model_transaction_policy { decoupled: true }``) over gRPC ModelStreamInfer
with the real tritonclient, as Triton's ``simple_grpc_custom_repeat.py`` uses ``repeat_int32``:
one response per element, in order, each as it is ready; zero responses for an empty request;
the empty final response when asked for; errors in-band; and a clear refusal on paths that
answer once.
"""

from __future__ import annotations

import queue
import time

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient

import triton_models


@pytest.fixture(scope="module")
def server(inferd_server_factory, tmp_path_factory):
    repo = triton_models.make_repo(tmp_path_factory.mktemp("decoupled") / "models")
    return inferd_server_factory(repo)


def _inputs(values, delay_ms, wait_ms=0):
    n = len(values)
    ins = [
        grpcclient.InferInput("IN", [n], "INT32"),
        grpcclient.InferInput("DELAY", [n], "UINT32"),
        grpcclient.InferInput("WAIT", [1], "UINT32"),
    ]
    ins[0].set_data_from_numpy(np.array(values, dtype=np.int32))
    ins[1].set_data_from_numpy(np.full(n, delay_ms, dtype=np.uint32))
    ins[2].set_data_from_numpy(np.array([wait_ms], dtype=np.uint32))
    return ins


def _stream(server):
    q: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=lambda result, error: q.put((result, error, time.monotonic())))
    return client, q


def test_repeat_answers_each_element_in_order_as_it_is_ready(server):
    client, q = _stream(server)
    values = list(range(100, 110))
    sent = time.monotonic()
    client.async_stream_infer(
        "repeat_int32", _inputs(values, 40), outputs=[grpcclient.InferRequestedOutput("OUT")]
    )
    got, times = [], []
    for _ in values:
        result, error, at = q.get(timeout=30)
        assert error is None, error
        out = result.as_numpy("OUT")
        assert out.shape == (1,)
        got.append(int(out[0]))
        times.append(at - sent)
        params = result.get_response().parameters
        assert params["triton_final_response"].bool_param is False
    client.stop_stream()
    assert got == values
    # Streamed, not gathered: the first answer came long before the last (10 x 40 ms apart).
    assert times[0] < times[-1] / 2, times


def test_empty_requests_give_no_responses_and_the_final_flag_when_asked(server):
    client, q = _stream(server)
    client.async_stream_infer("repeat_int32", _inputs([], 0), request_id="empty")
    client.async_stream_infer(
        "repeat_int32", _inputs([7, 8], 0), request_id="flagged", enable_empty_final_response=True
    )
    seen = []
    for _ in range(3):
        result, error, _ = q.get(timeout=30)
        assert error is None, error
        resp = result.get_response()
        seen.append((resp.id, resp.parameters["triton_final_response"].bool_param, len(resp.outputs)))
    client.stop_stream()
    assert q.empty()
    assert [s for s in seen if s[0] == "empty"] == []
    assert seen == [("flagged", False, 2), ("flagged", False, 2), ("flagged", True, 0)]


def test_errors_travel_in_band_and_answer_once_paths_refuse(server):
    client, q = _stream(server)
    ins = _inputs([1, 2, 3], 0)
    ins[1] = grpcclient.InferInput("DELAY", [1], "UINT32")
    ins[1].set_data_from_numpy(np.array([0], dtype=np.uint32))
    client.async_stream_infer("repeat_int32", ins)
    result, error, _ = q.get(timeout=30)
    client.stop_stream()
    assert result is None and "one delay per element" in str(error)
    body = {"inputs": [
        {"name": "IN", "shape": [1], "datatype": "INT32", "data": [1]},
        {"name": "DELAY", "shape": [1], "datatype": "UINT32", "data": [0]},
        {"name": "WAIT", "shape": [1], "datatype": "UINT32", "data": [0]},
    ]}
    r = requests.post(f"{server.http_base}/v2/models/repeat_int32/infer", json=body, timeout=10)
    assert r.status_code == 400 and "decoupled" in r.json()["error"] and "ModelStreamInfer" in r.json()["error"]
    cfg = grpcclient.InferenceServerClient(server.grpc_url).get_model_config("repeat_int32").config
    assert cfg.model_transaction_policy.decoupled is True


def test_generate_stream_sends_each_response_as_an_event(server):
    import json

    url = f"{server.http_base}/v2/models/repeat_int32/generate_stream"
    r = requests.post(url, json={"IN": [5, 6, 7], "DELAY": [0, 0, 0], "WAIT": 0}, stream=True, timeout=30)
    assert r.status_code == 200 and r.headers["content-type"] == "text/event-stream"
    events = [json.loads(line[len("data: "):]) for line in r.iter_lines(decode_unicode=True) if line.startswith("data: ")]
    assert [(e["OUT"], e["IDX"]) for e in events] == [(5, 0), (6, 1), (7, 2)]
    assert all(e["model_name"] == "repeat_int32" for e in events)
    r = requests.post(url, json={"IN": [1], "DELAY": [0], "WAIT": 0, "NOPE": 1}, timeout=10)
    assert r.status_code == 400 and "'NOPE' is not an input" in r.json()["error"]
    r = requests.post(url.replace("generate_stream", "generate"), json={"IN": [1], "DELAY": [0], "WAIT": 0}, timeout=10)
    assert r.status_code == 400 and "generate_stream" in r.json()["error"]
