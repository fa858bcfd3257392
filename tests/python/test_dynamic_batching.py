"""Dynamic batching seen from real clients: many concurrent tritonclient requests of random
sizes are merged into larger batches, and every client gets exactly its own rows back."""

from __future__ import annotations

import random
import shutil
import threading

import numpy as np
import pytest

from inferd_testlib import TritonClient, example_model_path, mlp_input

MODEL = "batched_mlp"
CLIENTS_PER_PROTOCOL = 6
REQUESTS_PER_CLIENT = 25
MAX_ROWS_PER_REQUEST = 8

CONFIG = f"""\
name: "{MODEL}"
platform: "onnxruntime_onnx"
max_batch_size: 64
input [ {{ name: "input" data_type: TYPE_FP32 dims: [ 64 ] }} ]
output [ {{ name: "output" data_type: TYPE_FP32 dims: [ 10 ] }} ]
instance_group [ {{ count: 2 kind: KIND_CPU }} ]
dynamic_batching {{ max_queue_delay_microseconds: 3000 }}
"""


@pytest.fixture(scope="module")
def server(inferd_server_factory, tmp_path_factory):
    repo = tmp_path_factory.mktemp("batching") / "models"
    (repo / MODEL / "1").mkdir(parents=True)
    (repo / MODEL / "config.pbtxt").write_text(CONFIG)
    shutil.copyfile(example_model_path("simple_mlp", 1), repo / MODEL / "1" / "model.onnx")
    return inferd_server_factory(repo)


def test_concurrent_requests_are_batched_and_split_back_exactly(server, onnx_reference):
    model_file = example_model_path("simple_mlp", 1)
    failures: list[str] = []
    rows_sent = 0
    lock = threading.Lock()

    def client_loop(protocol: str, seed: int) -> None:
        nonlocal rows_sent
        rng = random.Random(seed)
        client = TritonClient(protocol, server)
        try:
            for i in range(REQUESTS_PER_CLIENT):
                rows = rng.randint(1, MAX_ROWS_PER_REQUEST)
                x = mlp_input(rows, seed=seed * 1000 + i)
                want = onnx_reference.run(model_file, {"input": x})["output"]
                _, out = client.infer(MODEL, {"input": x}, ["output"])
                got = out["output"]
                with lock:
                    rows_sent += rows
                    if got.shape != want.shape or not np.allclose(got, want, atol=1e-5, rtol=1e-5):
                        failures.append(f"{protocol} client {seed} request {i}: rows={rows} shape={got.shape}")
        except Exception as exc:  # noqa: BLE001 - every failure is a finding
            with lock:
                failures.append(f"{protocol} client {seed}: {exc!r}")
        finally:
            client.close()

    threads = [
        threading.Thread(target=client_loop, args=(protocol, n + 1 + 100 * k))
        for k, protocol in enumerate(("http", "grpc"))
        for n in range(CLIENTS_PER_PROTOCOL)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "client threads did not finish"
    assert not failures, failures[:5]

    stats = TritonClient("http", server).model_stats(MODEL)[0]
    batches = {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats["batch_stats"]}
    assert sum(size * count for size, count in batches.items()) == rows_sent, batches
    print("batch sizes executed:", dict(sorted(batches.items())), "executions:", stats["execution_count"])
    assert max(batches) > MAX_ROWS_PER_REQUEST, f"no batch merged several requests: {batches}"
    assert max(batches) <= 64, batches
    executions = int(stats["execution_count"])
    requests = int(stats["inference_stats"]["success"]["count"])
    assert requests == 2 * CLIENTS_PER_PROTOCOL * REQUESTS_PER_CLIENT
    assert executions < requests, f"{executions} executions for {requests} requests: nothing was batched"
