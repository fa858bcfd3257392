#!/usr/bin/env bash
# The benchmark harness: builds the shipping binaries (`--profile dist`: release with LTO),
# prepares the Python side (venv with the peers' packages; perf_analyzer from the tritonclient 2.51
# wheel; hey and h2load), then runs bench/run.py.
#   bench/run.sh [--quick] [--scenario inprocess|overhead|batching|batch64 ...] [--no-triton]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
venv=${INFERD_VENV:-$PWD/.venv}
pa_venv=${PA_VENV:-$HOME/.cache/inferd/pa-venv}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q -r bench/requirements.txt
if [ ! -x "$pa_venv/bin/perf_analyzer" ]; then
  python3 -m venv "$pa_venv"
  "$pa_venv/bin/pip" install -q 'tritonclient[all]==2.51.0' nvidia-cuda-runtime-cu12
fi
if ! command -v hey >/dev/null || ! command -v h2load >/dev/null || ! dpkg -s libb64-0d >/dev/null 2>&1; then
  apt-get install -y -qq hey nghttp2-client libb64-0d
fi
cargo build --profile dist -p inferd -p inferd-bench >&2
exec "$venv/bin/python" bench/run.py "$@"
