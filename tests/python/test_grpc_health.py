"""The standard gRPC health service (grpc.health.v1), through the real health client
(``grpcio-health-checking``): SERVING once ready, NOT_SERVING from the moment SIGTERM arrives
(while ``--drain-delay-secs`` keeps the listeners open), NOT_FOUND for a service it does not have.
"""

from __future__ import annotations

import signal
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVICES = ("", "inference.GRPCInferenceService")


@pytest.fixture
def server(inferd_server_factory, model_repo_factory):
    return inferd_server_factory(model_repo_factory(["add_sub"]), "--drain-delay-secs", "3")


def check(stub, service: str):
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def settle(stub, want, within: float = 1.0) -> dict:
    """Every service's status once all are `want`, or as they were after `within` seconds
    (health follows readiness within 50 ms)."""
    deadline = time.monotonic() + within
    while True:
        statuses = {s: check(stub, s) for s in SERVICES}
        if all(v == want for v in statuses.values()) or time.monotonic() > deadline:
            return statuses
        time.sleep(0.02)


def test_ready_server_is_serving_and_unknown_services_are_not_found(server):
    stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(server.grpc_url))
    serving = health_pb2.HealthCheckResponse.SERVING
    statuses = settle(stub, serving)
    assert all(v == serving for v in statuses.values()), statuses
    with pytest.raises(grpc.RpcError) as e:
        check(stub, "no.such.Service")
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_sigterm_turns_health_to_not_serving_while_the_listeners_drain(server):
    stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(server.grpc_url))
    serving = health_pb2.HealthCheckResponse.SERVING
    assert set(settle(stub, serving).values()) == {serving}
    server.process.send_signal(signal.SIGTERM)
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    statuses = settle(stub, not_serving)
    assert set(statuses.values()) == {not_serving}, statuses
    assert server.process.poll() is None, "the server exited before its drain delay"
    assert server.process.wait(timeout=15) == 0
