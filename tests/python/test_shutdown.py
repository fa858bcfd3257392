"""SIGTERM in the middle of sustained concurrent load, over HTTP and gRPC: every request sent
before the signal succeeds, requests after the drain delay are refused with 503 / UNAVAILABLE
saying why (or find the listeners closed once nothing is left in flight), and the exit code is 0.
"""

from __future__ import annotations

import shutil
import signal
import threading
import time

import grpc
import numpy as np
import requests
from tritonclient.grpc import service_pb2, service_pb2_grpc

from inferd_testlib import example_model_path

DRAIN_DELAY_S = 0.5
CLIENTS_PER_PROTOCOL = 4


def two_model_repo(root):
    """`fast`: simple_mlp; `slow`: the same behind a batcher that holds a lone request 2 s, so a
    request sent just before the signal keeps the server draining while `fast` traffic goes on."""
    for name, scheduling in (
        ("fast", ""),
        ("slow", "dynamic_batching { max_queue_delay_microseconds: 2000000 preferred_batch_size: [ 64 ] }\n"),
    ):
        model = root / name
        (model / "1").mkdir(parents=True)
        shutil.copy(example_model_path("simple_mlp", 2), model / "1" / "model.onnx")
        (model / "config.pbtxt").write_text(
            f'name: "{name}"\nbackend: "onnxruntime"\nmax_batch_size: 64\n{scheduling}'
        )
    return root


def test_sigterm_under_load_finishes_what_was_sent_and_refuses_the_rest(inferd_server_factory, tmp_path):
    server = inferd_server_factory(
        two_model_repo(tmp_path / "models"),
        "--drain-delay-secs",
        str(DRAIN_DELAY_S),
        "--exit-timeout-secs",
        "20",
    )
    x = np.ones((1, 64), dtype=np.float32)
    body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": x.ravel().tolist()}]}
    results: list[tuple[str, float, str]] = []  # (protocol, sent at, outcome)
    lock = threading.Lock()
    stop = threading.Event()

    def http_client():
        session = requests.Session()
        while not stop.is_set():
            sent = time.monotonic()
            try:
                r = session.post(f"{server.http_base}/v2/models/fast/infer", json=body, timeout=30)
                outcome = str(r.status_code)
                if r.status_code == 503:
                    outcome += ":" + r.json()["error"]
            except requests.ConnectionError:
                outcome = "closed"
            with lock:
                results.append(("http", sent, outcome))
            if outcome == "closed":
                return
            time.sleep(0.01)

    def grpc_client():
        stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(server.grpc_url))
        req = service_pb2.ModelInferRequest(model_name="fast")
        req.inputs.add(name="input", datatype="FP32", shape=[1, 64])
        req.raw_input_contents.append(x.tobytes())
        while not stop.is_set():
            sent = time.monotonic()
            try:
                stub.ModelInfer(req, timeout=30)
                outcome = "200"
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in (e.details() or ""):
                    outcome = "503:" + e.details()
                else:
                    outcome = "closed" if e.code() == grpc.StatusCode.UNAVAILABLE else f"grpc {e.code()}"
            with lock:
                results.append(("grpc", sent, outcome))
            if outcome == "closed":
                return
            time.sleep(0.01)

    threads = [threading.Thread(target=f) for f in [http_client] * CLIENTS_PER_PROTOCOL + [grpc_client] * CLIENTS_PER_PROTOCOL]
    held = {}

    def hold():
        sent = time.monotonic()
        r = requests.post(f"{server.http_base}/v2/models/slow/infer", json=body, timeout=30)
        held["result"] = (sent, r.status_code)

    for t in threads:
        t.start()
    time.sleep(1.0)
    holder = threading.Thread(target=hold)
    holder.start()
    time.sleep(0.3)
    signalled = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    code = server.process.wait(timeout=30)
    stop.set()
    for t in threads + [holder]:
        t.join(timeout=30)
    assert code == 0
    assert held["result"][1] == 200, "the request held in the batcher across the signal was dropped"

    before = [r for r in results if r[1] < signalled]
    assert len(before) >= 2 * CLIENTS_PER_PROTOCOL, results
    assert all(outcome == "200" for _, _, outcome in before), [r for r in before if r[2] != "200"]
    late = [r for r in results if r[1] > signalled + DRAIN_DELAY_S + 0.1]
    assert all(o == "closed" or o.startswith("503:") for _, _, o in late), late
    for protocol in ("http", "grpc"):
        refused = [o for p, _, o in late if p == protocol and o.startswith("503:")]
        assert refused, f"no {protocol} request was refused during the drain: {late}"
        assert all("shutting down" in o for o in refused), refused
