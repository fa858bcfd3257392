#!/usr/bin/env python3
"""Build the benchmark model repository (not committed: the large model is tens of MB).

    .venv/bin/python bench/models/generate.py [OUT_DIR]      (default: bench/models/repo)

Models (FP32 MLPs, Gemm+Relu, fixed seeds):
- mlp_small:          64-256-256-10, the overhead-bound example MLP (same weights as
                      examples/models/simple_mlp version 1), dynamic batching with a 100 us delay
                      (as the Triton peer in shared/testbed/triton-peer.sh is configured).
- mlp_large:          1024-2048-2048-1024-10, compute-bound (about 1 ms at batch 1 here),
                      dynamic batching with a 2 ms delay.
- mlp_large_nobatch:  the same file without dynamic batching, to measure what batching buys.
The ONNX files for the peers are the same files.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[2]
LARGE = (1024, 2048, 2048, 1024, 10)


def build_mlp(layers: tuple[int, ...], seed: int, name: str) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    inits, nodes, current = [], [], "input"
    for i, (fan_in, fan_out) in enumerate(zip(layers, layers[1:])):
        w = (rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)
        b = (0.1 * rng.standard_normal(fan_out)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"fc{i}.weight"), numpy_helper.from_array(b, f"fc{i}.bias")]
        last = i == len(layers) - 2
        out = "output" if last else f"fc{i}.out"
        nodes.append(helper.make_node("Gemm", [current, f"fc{i}.weight", f"fc{i}.bias"], [out], name=f"fc{i}"))
        if not last:
            nodes.append(helper.make_node("Relu", [out], [f"relu{i}.out"], name=f"relu{i}"))
            current = f"relu{i}.out"
    graph = helper.make_graph(
        nodes,
        name,
        inputs=[helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", layers[0]])],
        outputs=[helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", layers[-1]])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="inferd-bench")
    model.ir_version = 8
    return model


def config(name: str, dims_in: int, dims_out: int, scheduling: str) -> str:
    return f"""name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: 64
input [ {{ name: "input" data_type: TYPE_FP32 dims: [ {dims_in} ] }} ]
output [ {{ name: "output" data_type: TYPE_FP32 dims: [ {dims_out} ] }} ]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
{scheduling}
"""


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "bench/models/repo"
    small = out / "mlp_small"
    (small / "1").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ROOT / "examples/models/simple_mlp/1/model.onnx", small / "1/model.onnx")
    (small / "config.pbtxt").write_text(
        config("mlp_small", 64, 10, "dynamic_batching { max_queue_delay_microseconds: 100 }")
    )
    large_file = out / "mlp_large/1/model.onnx"
    large_file.parent.mkdir(parents=True, exist_ok=True)
    if not large_file.exists():
        onnx.save(build_mlp(LARGE, 7, "mlp_large"), large_file)
    (out / "mlp_large/config.pbtxt").write_text(
        config("mlp_large", LARGE[0], LARGE[-1], "dynamic_batching { max_queue_delay_microseconds: 2000 }")
    )
    nob = out / "mlp_large_nobatch"
    (nob / "1").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(large_file, nob / "1/model.onnx")
    (nob / "config.pbtxt").write_text(config("mlp_large_nobatch", LARGE[0], LARGE[-1], ""))
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
