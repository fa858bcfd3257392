"""Model control mode "poll": new versions roll in under load without a single failed request.

``reload_mlp`` starts as a copy of simple_mlp version 1 with ``latest { num_versions: 1 }``.
Each round the test copies version N+1 into the repository *slowly* (so a poll may observe a
half-written model.onnx), then removes version N, and waits until the server reports only N+1.
Meanwhile an HTTP client thread and a gRPC client thread send requests non-stop.
"""

from __future__ import annotations

import os
import shutil
import time

import numpy as np
import pytest

from client_loops import assert_served_cleanly, clients_running, wait_for_only_version
from inferd_testlib import TritonClient, example_model_path, mlp_input, wait_until

MODEL = "reload_mlp"
ROUNDS = 4
POLL_SECS = 0.5
ROUND_TIMEOUT_S = 15.0  # for the server to swap versions after a copy
CLIENT_CAP_S = 60.0  # hard stop for the client threads
COPY_CHUNKS = 4
COPY_CHUNK_PAUSE_S = 0.2

RELOAD_CONFIG = f"""\
name: "{MODEL}"
platform: "onnxruntime_onnx"
max_batch_size: 64
version_policy: {{ latest {{ num_versions: 1 }} }}
input [
  {{
    name: "input"
    data_type: TYPE_FP32
    dims: [ 64 ]
  }}
]
output [
  {{
    name: "output"
    data_type: TYPE_FP32
    dims: [ 10 ]
  }}
]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
"""


def weights_of(version: int) -> int:
    """Which simple_mlp version's file reload_mlp/<version> is a copy of (alternating)."""
    return 1 if version % 2 else 2


def copy_slowly(src, dest_dir) -> None:
    """Write ``src`` as ``dest_dir/model.onnx`` in chunks with pauses: a half-written copy."""
    dest_dir.mkdir()
    data = src.read_bytes()
    chunk = -(-len(data) // COPY_CHUNKS)
    with open(dest_dir / "model.onnx", "wb") as f:
        for start in range(0, len(data), chunk):
            f.write(data[start : start + chunk])
            f.flush()
            os.fsync(f.fileno())
            time.sleep(COPY_CHUNK_PAUSE_S)


@pytest.fixture
def reload_repo(tmp_path):
    repo = tmp_path / "models"
    model_dir = repo / MODEL
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text(RELOAD_CONFIG)
    shutil.copyfile(example_model_path("simple_mlp", weights_of(1)), model_dir / "1" / "model.onnx")
    return repo


def test_versions_roll_forward_under_load_without_failed_requests(
    inferd_server_factory, reload_repo, onnx_reference
):
    model_dir = reload_repo / MODEL
    server = inferd_server_factory(reload_repo, control_mode="poll", poll_secs=POLL_SECS)

    x = mlp_input(1, seed=2024)
    expected = {w: onnx_reference.run(example_model_path("simple_mlp", w), {"input": x})["output"] for w in (1, 2)}
    assert np.abs(expected[1] - expected[2]).max() > 1e-2, "the two weight sets must be distinguishable"

    final_version = 1 + ROUNDS
    control = TritonClient("http", server)
    try:
        wait_for_only_version(control, MODEL, 1, timeout=ROUND_TIMEOUT_S)
        with clients_running(server, MODEL, x, CLIENT_CAP_S) as loops:
            for new in range(2, final_version + 1):
                copy_slowly(example_model_path("simple_mlp", weights_of(new)), model_dir / str(new))
                shutil.rmtree(model_dir / str(new - 1))
                wait_for_only_version(control, MODEL, new, timeout=ROUND_TIMEOUT_S)
                # Once the old version is gone, every client's next response comes from the new one.
                wait_until(
                    lambda: all(loop.last_version() == str(new) or loop.observations[-1].error for loop in loops),
                    timeout=10,
                    what=f"both clients to be served by version {new} (client threads stop after {CLIENT_CAP_S:.0f}s)",
                )
    finally:
        control.close()

    assert_served_cleanly(loops, set(range(1, final_version + 1)), lambda v: expected[weights_of(v)])
