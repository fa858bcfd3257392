"""Loading holds about the model, and unloading returns it (a Triton pain point, server#5841):
after a warm-up load and unload (one-time initialisation), the resident memory
rises by the size of a 128 MiB model (not the 3x its load's temporaries once held) while it is
loaded, and falls back to within 10% of where it was once it is unloaded. Read from the server's
own process_resident_memory_bytes.
"""

from __future__ import annotations

import shutil
import time

import numpy as np
import onnx
import requests
from onnx import TensorProto, helper, numpy_helper

from inferd_testlib import example_model_path

MODEL_BYTES = 4096 * 8192 * 4  # 128 MiB of weights


def big_model(path):
    w = np.random.default_rng(0).standard_normal((4096, 8192)).astype(np.float32)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "big",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4096])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8192])],
                          initializer=[numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), str(path))


def rss(server) -> float:
    page = requests.get(f"{server.metrics_url}/metrics", timeout=10).text
    line = next(l for l in page.splitlines() if l.startswith("process_resident_memory_bytes "))
    return float(line.split()[1])


def settle(server, seconds: float = 1.5) -> float:
    time.sleep(seconds)
    return rss(server)


def test_unloading_a_model_returns_its_memory(inferd_server_factory, tmp_path):
    repo = tmp_path / "models"
    (repo / "big" / "1").mkdir(parents=True)
    big_model(repo / "big" / "1" / "model.onnx")
    (repo / "small" / "1").mkdir(parents=True)
    shutil.copy(example_model_path("simple_mlp", 2), repo / "small" / "1" / "model.onnx")
    srv = inferd_server_factory(repo, control_mode="explicit")
    base = srv.http_base
    # One load and unload first: the first ONNX load initialises process-wide state (tract's
    # tables, ONNX Runtime's environment for the cross-check on that build) that stays.
    for name in ("small", "big"):
        assert requests.post(f"{base}/v2/repository/models/{name}/load", json={}, timeout=120).status_code == 200
        assert requests.post(f"{base}/v2/repository/models/{name}/unload", json={}, timeout=120).status_code == 200
    before = settle(srv)
    assert requests.post(f"{base}/v2/repository/models/big/load", json={}, timeout=300).status_code == 200
    loaded = settle(srv, 0.5)
    assert requests.post(f"{base}/v2/repository/models/big/unload", json={}, timeout=120).status_code == 200
    deadline = time.monotonic() + 3  # promptly: not when some idle thread happens to exit
    after = settle(srv)
    while after > before * 1.10 and time.monotonic() < deadline:
        after = settle(srv, 0.5)
    mib = lambda b: f"{b / 2**20:.0f} MiB"
    assert loaded - before >= 0.9 * MODEL_BYTES, f"the model did not take memory: {mib(before)} -> {mib(loaded)}"
    # The load's temporaries (file bytes, protobuf, graph copies) go back once it is loaded:
    # without that, mimalloc held 3.3x the model (see crates/inferd/src/alloc.rs).
    assert loaded - before <= 1.5 * MODEL_BYTES, f"loading held {mib(loaded - before)} for a {mib(MODEL_BYTES)} model"
    assert after <= before * 1.10, f"before {mib(before)}, loaded {mib(loaded)}, after unload {mib(after)}"
