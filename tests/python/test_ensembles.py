"""Ensembles (``platform: "ensemble"``) with the real tritonclient: a three-step pipeline over
``simple`` (two of its steps independent) gives what running the steps by hand gives, over HTTP
and gRPC; a missing member and mistyped edges are refused at load with the step named; a member
reloaded under traffic costs no request; a member unloaded makes the ensemble not ready with
the member named, and loading it back brings the ensemble back.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

import triton_models


@pytest.fixture(scope="module")
def server(inferd_server_factory, tmp_path_factory):
    repo = tmp_path_factory.mktemp("ens") / "models"
    triton_models.make_repo(repo)
    triton_models.make_ensembles(repo)
    return inferd_server_factory(repo, control_mode="explicit", load_models=["*"], strict_readiness=False)


def _inputs(mod, a, b):
    ins = [mod.InferInput("IN0", list(a.shape), "INT32"), mod.InferInput("IN1", list(b.shape), "INT32")]
    ins[0].set_data_from_numpy(a)
    ins[1].set_data_from_numpy(b)
    return ins


def _simple(client, mod, a, b):
    ins = [mod.InferInput("INPUT0", list(a.shape), "INT32"), mod.InferInput("INPUT1", list(b.shape), "INT32")]
    ins[0].set_data_from_numpy(a)
    ins[1].set_data_from_numpy(b)
    r = client.infer("simple", ins)
    return r.as_numpy("OUTPUT0"), r.as_numpy("OUTPUT1")


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_pipeline_equals_its_steps_run_by_hand(server, protocol):
    mod = httpclient if protocol == "http" else grpcclient
    client = (
        httpclient.InferenceServerClient(server.http_url)
        if protocol == "http"
        else grpcclient.InferenceServerClient(server.grpc_url)
    )
    rng = np.random.default_rng(3)
    a = rng.integers(-1000, 1000, size=(3, 16), dtype=np.int32)
    b = rng.integers(-1000, 1000, size=(3, 16), dtype=np.int32)
    s, d = _simple(client, mod, a, b)
    twice0, twice1 = _simple(client, mod, s, d)
    sum2, _ = _simple(client, mod, s, s)
    r = client.infer("pipeline", _inputs(mod, a, b))
    np.testing.assert_array_equal(r.as_numpy("TWICE0"), twice0)
    np.testing.assert_array_equal(r.as_numpy("TWICE1"), twice1)
    np.testing.assert_array_equal(r.as_numpy("SUM2"), sum2)
    np.testing.assert_array_equal(r.as_numpy("TWICE0"), 2 * a)
    assert client.is_model_ready("pipeline")


def test_broken_members_and_edges_are_refused_at_load_by_step(server):
    index = {m["name"]: m for m in requests.post(f"{server.http_base}/v2/repository/index", json={}, timeout=10).json()}
    assert index["missing_member"]["state"] == "UNAVAILABLE"
    assert "model 'no_such_model' is not in the repository" in index["missing_member"]["reason"]
    assert index["wrong_types"]["state"] == "UNAVAILABLE"
    reason = index["wrong_types"]["reason"]
    assert "model 'simple_int8'" in reason and "TYPE_INT8" in reason and "TYPE_INT32" in reason, reason
    assert index["pipeline"]["state"] == "READY"


def test_a_member_reloaded_under_traffic_costs_no_request(server):
    client = httpclient.InferenceServerClient(server.http_url, concurrency=4)
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.ones((1, 16), dtype=np.int32)
    failures: list[str] = []
    done = threading.Event()
    count = [0]

    def traffic():
        c = httpclient.InferenceServerClient(server.http_url)
        while not done.is_set():
            try:
                r = c.infer("pipeline", _inputs(httpclient, a, b))
                if not np.array_equal(r.as_numpy("TWICE0"), 2 * a):
                    failures.append("wrong answer")
                count[0] += 1
            except Exception as e:  # noqa: BLE001 - every failure counts
                failures.append(str(e))

    threads = [threading.Thread(target=traffic) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        # Reload the member three times: twice with a config override (a change), once back.
        for config in (
            '{"max_batch_size": 8, "dynamic_batching": {}}',
            '{"max_batch_size": 8, "dynamic_batching": {"max_queue_delay_microseconds": 200}}',
            None,
        ):
            if config is None:
                client.load_model("simple")
            else:
                client.load_model("simple", config=config)
    finally:
        done.set()
        for t in threads:
            t.join()
    assert failures == [], failures[:5]
    assert count[0] > 0


def test_an_unloaded_member_makes_the_ensemble_not_ready_with_its_name(server):
    client = httpclient.InferenceServerClient(server.http_url)
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    client.unload_model("simple")
    try:
        assert not client.is_model_ready("pipeline")
        r = requests.post(
            f"{server.http_base}/v2/models/pipeline/infer",
            json={"inputs": [
                {"name": "IN0", "shape": [1, 16], "datatype": "INT32", "data": a.flatten().tolist()},
                {"name": "IN1", "shape": [1, 16], "datatype": "INT32", "data": a.flatten().tolist()},
            ]},
            timeout=10,
        )
        assert r.status_code == 503, r.text
        assert "ensemble member 'simple' is not ready" in r.json()["error"]
    finally:
        client.load_model("simple")
    assert client.is_model_ready("pipeline")
    r = client.infer("pipeline", _inputs(httpclient, a, a))
    np.testing.assert_array_equal(r.as_numpy("TWICE1"), 2 * a)


def test_a_member_reloaded_into_a_config_that_no_longer_fits_blocks_the_ensemble(server):
    client = httpclient.InferenceServerClient(server.http_url)
    client.load_model("simple", config='{"max_batch_size": 2}')
    try:
        assert not client.is_model_ready("pipeline")
        a = np.arange(16, dtype=np.int32).reshape(1, 16)
        r = requests.post(
            f"{server.http_base}/v2/models/pipeline/infer",
            json={"inputs": [
                {"name": n, "shape": [1, 16], "datatype": "INT32", "data": a.flatten().tolist()}
                for n in ("IN0", "IN1")
            ]},
            timeout=10,
        )
        assert r.status_code == 503
        assert "no longer fits" in r.json()["error"] and "takes at most 2" in r.json()["error"]
    finally:
        client.load_model("simple")
    assert client.is_model_ready("pipeline")
