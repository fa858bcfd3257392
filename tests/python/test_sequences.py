"""Sequence batching (``sequence_batching``) with the real tritonclient, as Triton's sequence
example clients use it: correlation ids (integer and string), start/end flags over HTTP and
gRPC (sync and streaming), control inputs (START, READY, END, CORRID), implicit state kept by
the server between requests, the idle timeout and the bound on live sequences.
"""

from __future__ import annotations

import queue
import time
import uuid
from functools import partial

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

import triton_models

VALUES = [11, 7, 5, 3, 2, 0, 1]


@pytest.fixture(scope="module")
def server(inferd_server_factory, tmp_path_factory):
    repo = triton_models.make_repo(tmp_path_factory.mktemp("seq") / "models", accumulator_limit=2)
    return inferd_server_factory(repo)


def _client(server, protocol):
    if protocol == "http":
        return httpclient, httpclient.InferenceServerClient(server.http_url)
    return grpcclient, grpcclient.InferenceServerClient(server.grpc_url)


def _one(mod, value):
    inp = mod.InferInput("INPUT", [1, 1], "INT32")
    inp.set_data_from_numpy(np.array([[value]], dtype=np.int32))
    return [inp]


def _expected(sent: list[int], dyna: bool, corrid: int, accumulate: bool) -> list[int]:
    """What the example clients expect: without dyna OUTPUT = INPUT + START; with dyna the
    last request adds the correlation id; the string accumulator keeps a running sum."""
    out, acc = [], 0
    for i, v in enumerate(sent):
        start, end = i == 0, i == len(sent) - 1
        if accumulate:
            acc = v if start else acc + v
            acc += corrid if end else 0
            out.append(acc)
        else:
            out.append(v + int(start) + (corrid if (dyna and end) else 0))
    return out


def _run_sync(mod, client, model, seq_id, sent):
    got = []
    for i, v in enumerate(sent):
        r = client.infer(
            model,
            _one(mod, v),
            outputs=[mod.InferRequestedOutput("OUTPUT")],
            sequence_id=seq_id,
            sequence_start=i == 0,
            sequence_end=i == len(sent) - 1,
        )
        got.append(int(r.as_numpy("OUTPUT")[0][0]))
    return got


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("dyna", [False, True])
def test_interleaved_sequences_keep_their_state_apart(server, protocol, dyna):
    mod, client = _client(server, protocol)
    model = "simple_dyna_sequence" if dyna else "simple_sequence"
    a, b = [0] + VALUES, [100] + [-v for v in VALUES]
    id_a, id_b = 1000, 1001
    # Interleave: one request of A, one of B, ...
    got_a, got_b = [], []
    for i in range(len(a)):
        for seq_id, sent, got in ((id_a, a, got_a), (id_b, b, got_b)):
            r = client.infer(
                model,
                _one(mod, sent[i]),
                outputs=[mod.InferRequestedOutput("OUTPUT")],
                sequence_id=seq_id,
                sequence_start=i == 0,
                sequence_end=i == len(sent) - 1,
            )
            got.append(int(r.as_numpy("OUTPUT")[0][0]))
    assert got_a == _expected(a, dyna, id_a, False)
    assert got_b == _expected(b, dyna, id_b, False)
    # The string sequence: a UUID on simple_sequence, a numeric string on the accumulator.
    s = [20] + [-v for v in VALUES]
    if dyna:
        got = _run_sync(mod, client, "simple_string_dyna_sequence", "1002", s)
        assert got == _expected(s, True, 1002, True) == [20, 9, 2, -3, -6, -8, -8, 993]
    else:
        got = _run_sync(mod, client, "simple_sequence", str(uuid.uuid4()), s)
        assert got == _expected(s, False, 0, False)


def test_a_stream_of_three_sequences_answers_each_in_order(server):
    results: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=partial(lambda q, result, error: q.put((result, error)), results))
    a, b, s = [0] + VALUES, [100] + [-v for v in VALUES], [20] + [-v for v in VALUES]
    plan = [("simple_dyna_sequence", 1000, a), ("simple_dyna_sequence", 1001, b), ("simple_string_dyna_sequence", "1002", s)]
    # Everything sent at once, sequence after sequence, without waiting.
    for model, seq_id, sent in plan:
        for i, v in enumerate(sent):
            client.async_stream_infer(
                model,
                _one(grpcclient, v),
                request_id=f"{seq_id}_{i}",
                outputs=[grpcclient.InferRequestedOutput("OUTPUT")],
                sequence_id=seq_id,
                sequence_start=i == 0,
                sequence_end=i == len(sent) - 1,
            )
    by_seq: dict[str, list[int]] = {}
    for _ in range(sum(len(p[2]) for p in plan)):
        r, e = results.get(timeout=30)
        assert e is None, e
        seq, _, idx = r.get_response().id.partition("_")
        by_seq.setdefault(seq, []).append((int(idx), int(r.as_numpy("OUTPUT")[0][0])))
    client.stop_stream()
    for model, seq_id, sent in plan:
        got = by_seq[str(seq_id)]
        assert [i for i, _ in got] == list(range(len(sent))), "responses of a sequence left out of order"
        assert [v for _, v in got] == _expected(sent, True, int(seq_id), model.startswith("simple_string"))


def _post(server, model, value, params):
    body = {
        "inputs": [{"name": "INPUT", "shape": [1, 1], "datatype": "INT32", "data": [value]}],
        "parameters": params,
    }
    return requests.post(f"{server.http_base}/v2/models/{model}/infer", json=body, timeout=30)


def test_requests_without_a_sequence_or_its_start_are_refused_by_name(server):
    r = _post(server, "simple_sequence", 1, {})
    assert r.status_code == 400
    assert "must specify a non-zero or non-empty correlation ID" in r.json()["error"]
    r = _post(server, "accumulator", 1, {"sequence_id": 77})
    assert r.status_code == 400
    assert "sequence 77 of model 'accumulator' is not live" in r.json()["error"]
    r = _post(server, "accumulator", 1, {"sequence_start": True})
    assert r.status_code == 400 and "sequence_id" in r.json()["error"]
    # Batch size above 1 in one request of a sequence.
    body = {
        "inputs": [{"name": "INPUT", "shape": [2, 1], "datatype": "INT32", "data": [1, 2]}],
        "parameters": {"sequence_id": 5, "sequence_start": True},
    }
    r = requests.post(f"{server.http_base}/v2/models/accumulator/infer", json=body, timeout=30)
    assert r.status_code == 400 and "batch size 1" in r.json()["error"]


def test_more_live_sequences_than_allowed_get_503_until_one_ends(server):
    # accumulator: oldest { max_candidate_sequences: 2 }, idle timeout 300 ms.
    for seq in (1, 2):
        r = _post(server, "accumulator", seq * 10, {"sequence_id": seq, "sequence_start": True})
        assert r.status_code == 200, r.text
    r = _post(server, "accumulator", 5, {"sequence_id": 3, "sequence_start": True})
    assert r.status_code == 503
    assert "already has 2 live sequences" in r.json()["error"]
    r = _post(server, "accumulator", 1, {"sequence_id": 1, "sequence_end": True})
    assert r.status_code == 200 and r.json()["outputs"][0]["data"] == [10 + 1 + 1]
    r = _post(server, "accumulator", 5, {"sequence_id": 3, "sequence_start": True})
    assert r.status_code == 200
    for seq in (2, 3):
        assert _post(server, "accumulator", 0, {"sequence_id": seq, "sequence_end": True}).status_code == 200


def test_an_idle_sequence_is_released_and_later_requests_say_so(server):
    r = _post(server, "accumulator", 4, {"sequence_id": 9, "sequence_start": True})
    assert r.status_code == 200
    r = _post(server, "accumulator", 4, {"sequence_id": 9})
    assert r.json()["outputs"][0]["data"] == [8]
    time.sleep(0.6)  # past max_sequence_idle_microseconds: 300000
    r = _post(server, "accumulator", 4, {"sequence_id": 9})
    assert r.status_code == 400
    assert "was released after 300 ms without a request" in r.json()["error"]
    # A new start of the same id begins from the initial state.
    r = _post(server, "accumulator", 4, {"sequence_id": 9, "sequence_start": True, "sequence_end": True})
    assert r.json()["outputs"][0]["data"] == [4 + 9]


def test_the_state_outputs_never_reach_the_client(server):
    r = _post(server, "accumulator", 4, {"sequence_id": 12, "sequence_start": True, "sequence_end": True})
    assert [o["name"] for o in r.json()["outputs"]] == ["OUTPUT"]
    meta = requests.get(f"{server.http_base}/v2/models/accumulator", timeout=10).json()
    assert [i["name"] for i in meta["inputs"]] == ["INPUT"]
    assert [o["name"] for o in meta["outputs"]] == ["OUTPUT"]
    with pytest.raises(InferenceServerException):
        httpclient.InferenceServerClient(server.http_url).infer(
            "accumulator", _one(httpclient, 1), outputs=[httpclient.InferRequestedOutput("ACC_OUT")],
            sequence_id=13, sequence_start=True,
        )


def test_the_config_shows_the_sequence_batching_settings(server):
    cfg = grpcclient.InferenceServerClient(server.grpc_url).get_model_config("simple_dyna_sequence").config
    sb = cfg.sequence_batching
    assert sb.max_sequence_idle_microseconds == 10_000_000
    assert sb.oldest.max_candidate_sequences == 1024
    assert [c.name for c in sb.control_input] == ["START", "END", "READY", "CORRID"]
    http_cfg = requests.get(f"{server.http_base}/v2/models/accumulator/config", timeout=10).json()
    assert http_cfg["sequence_batching"]["state"][0]["input_name"] == "ACC_IN"
