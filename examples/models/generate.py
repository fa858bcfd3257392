#!/usr/bin/env python3
"""(Re)generate the example model repository used by inferd's docs and tests.

Layout follows Triton's model repository convention:

    examples/models/<model>/config.pbtxt
    examples/models/<model>/<version>/model.onnx

Every model is built with ``onnx.helper`` (no torch), opset 13, IR version 8,
from fixed numpy seeds, so running this script twice yields byte-identical
files. Run it from the repository root:

    .venv/bin/python examples/models/generate.py

Pass ``--check`` to also run every generated model once with onnxruntime.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 13
IR_VERSION = 8
PRODUCER = "inferd-examples"
MODELS_DIR = Path(__file__).resolve().parent

# simple_mlp: 64 -> 256 -> 256 -> 10
MLP_LAYERS = (64, 256, 256, 10)
MLP_VERSION_SEEDS = {1: 1, 2: 2}

SIMPLE_MLP_CONFIG = """\
name: "simple_mlp"
platform: "onnxruntime_onnx"
max_batch_size: 64
version_policy: { all {} }
input [
  {
    name: "input"
    data_type: TYPE_FP32
    dims: [ 64 ]
  }
]
output [
  {
    name: "output"
    data_type: TYPE_FP32
    dims: [ 10 ]
  }
]
instance_group [ { count: 1 kind: KIND_CPU } ]
"""

# Deliberately minimal: inputs/outputs are auto-completed by the server from the model.
ADD_SUB_CONFIG = """\
name: "add_sub"
backend: "onnxruntime"
max_batch_size: 8
"""

STRING_IDENTITY_CONFIG = """\
name: "string_identity"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  {
    name: "INPUT0"
    data_type: TYPE_STRING
    dims: [ 1 ]
  }
]
output [
  {
    name: "OUTPUT0"
    data_type: TYPE_STRING
    dims: [ 1 ]
  }
]
"""


def _finish(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name=PRODUCER,
        producer_version="1",
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def build_simple_mlp(seed: int) -> onnx.ModelProto:
    """Gemm+Relu MLP; weights ~ N(0, 1/fan_in) so activations stay O(1)."""
    rng = np.random.default_rng(seed)
    initializers = []
    nodes = []
    current = "input"
    n_layers = len(MLP_LAYERS) - 1
    for i, (fan_in, fan_out) in enumerate(zip(MLP_LAYERS, MLP_LAYERS[1:])):
        w = (rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)
        b = (0.1 * rng.standard_normal(fan_out)).astype(np.float32)
        initializers += [numpy_helper.from_array(w, f"fc{i}.weight"), numpy_helper.from_array(b, f"fc{i}.bias")]
        is_last = i == n_layers - 1
        gemm_out = "output" if is_last else f"fc{i}.out"
        nodes.append(
            helper.make_node("Gemm", [current, f"fc{i}.weight", f"fc{i}.bias"], [gemm_out], name=f"fc{i}")
        )
        if not is_last:
            nodes.append(helper.make_node("Relu", [gemm_out], [f"relu{i}.out"], name=f"relu{i}"))
            current = f"relu{i}.out"
    graph = helper.make_graph(
        nodes,
        "simple_mlp",
        inputs=[helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", MLP_LAYERS[0]])],
        outputs=[helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", MLP_LAYERS[-1]])],
        initializer=initializers,
    )
    return _finish(graph)


def build_add_sub() -> onnx.ModelProto:
    shape = ["batch", 4]
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"], name="add"),
            helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"], name="sub"),
        ],
        "add_sub",
        inputs=[
            helper.make_tensor_value_info("INPUT0", TensorProto.INT64, shape),
            helper.make_tensor_value_info("INPUT1", TensorProto.INT64, shape),
        ],
        outputs=[
            helper.make_tensor_value_info("OUTPUT0", TensorProto.INT64, shape),
            helper.make_tensor_value_info("OUTPUT1", TensorProto.INT64, shape),
        ],
    )
    return _finish(graph)


def build_string_identity() -> onnx.ModelProto:
    shape = ["batch", 1]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"], name="identity")],
        "string_identity",
        inputs=[helper.make_tensor_value_info("INPUT0", TensorProto.STRING, shape)],
        outputs=[helper.make_tensor_value_info("OUTPUT0", TensorProto.STRING, shape)],
    )
    return _finish(graph)


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    path.write_bytes(data)
    print(f"wrote {_display(path)} ({len(data)} bytes)")


def generate(out_dir: Path) -> list[Path]:
    """Write every model and config under ``out_dir``; return the .onnx paths."""
    models: dict[str, tuple[str, dict[int, onnx.ModelProto]]] = {
        "simple_mlp": (
            SIMPLE_MLP_CONFIG,
            {v: build_simple_mlp(seed) for v, seed in MLP_VERSION_SEEDS.items()},
        ),
        "add_sub": (ADD_SUB_CONFIG, {1: build_add_sub()}),
        "string_identity": (STRING_IDENTITY_CONFIG, {1: build_string_identity()}),
    }
    written = []
    for name, (config, versions) in models.items():
        _write(out_dir / name / "config.pbtxt", config)
        for version, model in versions.items():
            path = out_dir / name / str(version) / "model.onnx"
            _write(path, model.SerializeToString(deterministic=True))
            written.append(path)
    return written


def check_with_onnxruntime(paths: list[Path]) -> None:
    """Run each model once with onnxruntime and sanity-check the outputs."""
    import onnxruntime as ort

    for path in paths:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        model_name = path.parent.parent.name
        if model_name == "simple_mlp":
            x = np.random.default_rng(0).uniform(-1, 1, (3, 64)).astype(np.float32)
            (y,) = sess.run(None, {"input": x})
            assert y.shape == (3, 10) and y.dtype == np.float32 and np.isfinite(y).all(), y
        elif model_name == "add_sub":
            a = np.arange(8, dtype=np.int64).reshape(2, 4) + 2**40
            b = np.arange(8, dtype=np.int64).reshape(2, 4) * 3
            s, d = sess.run(None, {"INPUT0": a, "INPUT1": b})
            assert (s == a + b).all() and (d == a - b).all()
        elif model_name == "string_identity":
            x = np.array([["héllo"], [""], ["plain"]], dtype=object)
            (y,) = sess.run(None, {"INPUT0": x})
            assert y.tolist() == x.tolist(), y
        else:
            raise AssertionError(f"no check for {model_name}")
        print(f"onnxruntime ok: {_display(path)}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=MODELS_DIR, help="repository directory (default: %(default)s)")
    parser.add_argument("--check", action="store_true", help="run each model once with onnxruntime")
    args = parser.parse_args(argv)
    paths = generate(args.out)
    if args.check:
        check_with_onnxruntime(paths)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
