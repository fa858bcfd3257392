"""``--onnx-backend auto|tract|onnxruntime`` and the per-model ``onnx_backend`` parameter.

On the default build only tract is built in: ``auto`` is tract, and asking for onnxruntime
(flag or parameter) is refused, saying how to get it. On the ONNX Runtime build (scripts/test.sh
runs this file on both) ``auto`` serves on ONNX Runtime what tract refuses, cross-checks what
tract loads on the warm-up rows, and moves a model whose answers differ to ONNX Runtime with a
warning naming the output.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

from inferd_testlib import TritonClient

ORT_BUILD = "onnxruntime" in os.environ.get("INFERD_BUILD_FEATURES", "")
NEEDS_ORT = pytest.mark.skipif(not ORT_BUILD, reason="needs the ONNX Runtime build, which scripts/test.sh also runs")


def _write(repo: Path, name: str, model, config: str | None = None) -> Path:
    d = repo / name / "1"
    d.mkdir(parents=True)
    (d / "model.onnx").write_bytes(model.SerializeToString())
    if config is not None:
        (repo / name / "config.pbtxt").write_text(config)
    return repo / name


def _bitshift():
    """BitShift: tract shifts wrongly, so its backend refuses the operator by name."""
    node = helper.make_node("BitShift", ["x", "s"], ["y"], direction="LEFT")
    g = helper.make_graph(
        [node], "shift",
        [helper.make_tensor_value_info("x", TensorProto.UINT32, [3]),
         helper.make_tensor_value_info("s", TensorProto.UINT32, [3])],
        [helper.make_tensor_value_info("y", TensorProto.UINT32, [3])],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def _cast_to_int():
    """Cast float -> int64. Out of range the ONNX spec leaves the result open: tract saturates
    (Rust's `as`), ONNX Runtime gives what the CPU's conversion gives (INT64_MIN on x86)."""
    node = helper.make_node("Cast", ["x"], ["y"], to=TensorProto.INT64)
    g = helper.make_graph(
        [node], "cast",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, [3])],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


CAST_CONFIG = """
max_batch_size: 0
input [ { name: "x" data_type: TYPE_FP32 dims: [ 3 ] } ]
output [ { name: "y" data_type: TYPE_INT64 dims: [ 3 ] } ]
model_warmup [ { name: "edges" batch_size: 1 inputs { key: "x" value: { data_type: TYPE_FP32 dims: [ 3 ] input_data_file: "edges" } } } ]
"""
EDGES = np.array([1.5, 1e30, -7.0], dtype=np.float32)


def _state(client: TritonClient, name: str, timeout: float = 60) -> tuple[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        for e in client.repository_index():
            if e["name"] == name and e["state"] in ("READY", "UNAVAILABLE"):
                return e["state"], e.get("reason", "")
        if time.monotonic() > deadline:
            return "TIMEOUT", ""
        time.sleep(0.2)


@pytest.fixture
def repo(tmp_path) -> Path:
    r = tmp_path / "models"
    r.mkdir()
    _write(r, "shift", _bitshift())
    cast = _write(r, "cast", _cast_to_int(), CAST_CONFIG)
    (cast / "warmup").mkdir()
    (cast / "warmup" / "edges").write_bytes(EDGES.tobytes())
    return r


def _shift_feeds():
    return {"x": np.array([1, 2, 3], dtype=np.uint32), "s": np.array([1, 2, 3], dtype=np.uint32)}


def test_onnx_backend_onnxruntime_needs_the_onnxruntime_build(inferd_bin, repo):
    args = [str(inferd_bin), "serve", "--model-repository", str(repo), "--http-port", "0",
            "--grpc-port", "0", "--onnx-backend", "onnxruntime"]
    if ORT_BUILD:
        # Accepted, and the flag's check runs through `repo check` the same way.
        out = subprocess.run([str(inferd_bin), "repo", "check", str(repo), "--onnx-backend", "onnxruntime"],
                             capture_output=True, text=True, timeout=120)
        assert "ok: shift" in out.stdout and "ok: cast" in out.stdout, out.stdout + out.stderr
        return
    out = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "--onnx-backend: onnxruntime is not built in" in out.stderr, out.stderr
    assert "--features onnxruntime" in out.stderr, out.stderr
    env = {**os.environ, "INFERD_ONNX_BACKEND": "onnxruntime"}
    out = subprocess.run(args[:-2], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode != 0 and "INFERD_ONNX_BACKEND: onnxruntime is not built in" in out.stderr, out.stderr


def test_a_model_tract_refuses_is_refused_by_name_under_tract(inferd_server_factory, repo):
    server = inferd_server_factory(repo, "--onnx-backend", "tract", wait_ready=False)
    client = TritonClient("http", server)
    state, reason = _state(client, "shift")
    client.close()
    assert state == "UNAVAILABLE", (state, reason)
    assert "BitShift" in reason and "--features onnxruntime" in reason, reason


def test_a_model_asking_for_onnxruntime_by_parameter(inferd_server_factory, tmp_path):
    repo = tmp_path / "models"
    pin = 'parameters { key: "onnx_backend" value: { string_value: "onnxruntime" } }\n'
    _write(repo, "pinned", _bitshift(), pin)
    _write(repo, "typo", _bitshift(), pin.replace('"onnxruntime"', '"ort"'))
    server = inferd_server_factory(repo, "--onnx-backend", "tract", wait_ready=False)
    client = TritonClient("http", server)
    typo = _state(client, "typo")
    pinned = _state(client, "pinned")
    if ORT_BUILD:
        # The model's own choice beats the server's.
        assert pinned[0] == "READY", pinned
        _, out = client.infer("pinned", _shift_feeds(), ["y"])
        np.testing.assert_array_equal(out["y"], [2, 8, 24])
    else:
        assert pinned[0] == "UNAVAILABLE" and "asks for onnxruntime" in pinned[1], pinned
    client.close()
    assert typo[0] == "UNAVAILABLE", typo
    assert "'onnx_backend'" in typo[1] and "'ort' is not an ONNX backend" in typo[1], typo


@NEEDS_ORT
def test_auto_serves_on_onnxruntime_what_tract_refuses(inferd_server_factory, repo):
    server = inferd_server_factory(repo, "--onnx-backend", "auto")
    client = TritonClient("http", server)
    _, out = client.infer("shift", _shift_feeds(), ["y"])
    client.close()
    np.testing.assert_array_equal(out["y"], [2, 8, 24])
    log = server.stderr_path.read_text(errors="replace")
    assert "model 'shift' version 1: served on ONNX Runtime, because tract refuses it" in log, log
    assert "BitShift" in log


@NEEDS_ORT
def test_auto_cross_check_serves_a_model_that_disagrees_on_onnxruntime(inferd_server_factory, repo, onnx_reference):
    ref = onnx_reference.run(repo / "cast" / "1" / "model.onnx", {"x": EDGES})["y"]
    auto = inferd_server_factory(repo, "--onnx-backend", "auto", name="auto")
    # Not ready as a whole under tract: it refuses the BitShift model.
    tract = inferd_server_factory(repo, "--onnx-backend", "tract", name="tract", wait_ready=False)
    answers = {}
    for label, server in (("auto", auto), ("tract", tract)):
        client = TritonClient("http", server)
        assert _state(client, "cast")[0] == "READY"
        _, out = client.infer("cast", {"x": EDGES}, ["y"])
        client.close()
        answers[label] = out["y"]
    # The premise: the two engines answer the warm-up row differently.
    assert answers["tract"][1] != ref[1], (answers["tract"], ref)
    np.testing.assert_array_equal(answers["auto"], ref)
    log = auto.stderr_path.read_text(errors="replace")
    assert (
        "model 'cast' version 1: served on ONNX Runtime, because tract disagrees with it on the "
        "warm-up rows: output 'y' (element 1:" in log
    ), log
