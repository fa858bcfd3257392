"""Request ids: every HTTP and gRPC answer carries `x-request-id` (the client's, or a fresh one),
`traceparent` comes back as sent, and with `--log-format json` the log lines written while a
request is served are JSON objects naming its id.
"""

from __future__ import annotations

import json
import os
import re
import time

import grpc
import pytest
import requests
from tritonclient.grpc import service_pb2, service_pb2_grpc

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture(scope="module")
def server(inferd_server_factory, model_repo_factory):
    os.environ["INFERD_LOG"] = "info,inferd_server=debug"
    try:
        return inferd_server_factory(model_repo_factory(["add_sub"]), "--log-format", "json")
    finally:
        del os.environ["INFERD_LOG"]


def test_http_answers_carry_the_clients_id_or_a_fresh_one(server):
    r = requests.get(f"{server.http_base}/v2/health/ready", headers={"x-request-id": "order-42"}, timeout=10)
    assert r.headers["x-request-id"] == "order-42"
    a = requests.get(f"{server.http_base}/v2/health/ready", timeout=10).headers["x-request-id"]
    b = requests.get(f"{server.http_base}/v2/health/ready", timeout=10).headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", a) and a != b
    r = requests.get(f"{server.http_base}/v2", headers={"traceparent": TRACEPARENT}, timeout=10)
    assert r.headers["traceparent"] == TRACEPARENT
    bad = requests.get(f"{server.http_base}/v2", headers={"x-request-id": "x" * 300}, timeout=10)
    assert re.fullmatch(r"[0-9a-f]{32}", bad.headers["x-request-id"])


def test_grpc_answers_carry_the_id_in_their_metadata(server):
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(server.grpc_url))
    _, call = stub.ServerLive.with_call(service_pb2.ServerLiveRequest(), metadata=[("x-request-id", "grpc-7")],
                                        timeout=10)
    assert dict(call.initial_metadata())["x-request-id"] == "grpc-7"
    _, call = stub.ServerLive.with_call(service_pb2.ServerLiveRequest(), timeout=10)
    assert re.fullmatch(r"[0-9a-f]{32}", dict(call.initial_metadata())["x-request-id"])


def test_json_log_lines_about_a_request_name_its_id(server):
    r = requests.post(f"{server.http_base}/v2/models/add_sub/infer", data=b"{not json",
                      headers={"x-request-id": "bad-body-1"}, timeout=10)
    assert r.status_code == 400 and r.headers["x-request-id"] == "bad-body-1"
    deadline = time.monotonic() + 5
    while True:
        lines = [json.loads(l) for l in server.stderr_path.read_text().splitlines() if l.startswith("{")]
        mine = [l for l in lines if l.get("span", {}).get("id") == "bad-body-1"]
        if mine or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert mine, lines[-5:]
    assert "malformed inference request JSON" in mine[0]["fields"]["message"], mine
    assert all(isinstance(l, dict) and "timestamp" in l and "level" in l for l in lines)
