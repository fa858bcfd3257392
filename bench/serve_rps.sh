#!/usr/bin/env bash
# Requests/s of the example MLP (simple_mlp, 1 row of 64 floats) served by the release `inferd`,
# driven by Triton's perf_analyzer over HTTP and gRPC at a few concurrencies.
#
#   bench/serve_rps.sh [CONCURRENCIES...]     (default: 1 4 8)
#
# Needs perf_analyzer: it ships inside the tritonclient 2.51.0 wheel (see shared/TESTBED.md);
# this script installs it into ~/.cache/inferd/pa-venv on first use. Writes a Markdown table
# to stdout and the raw CSVs under bench/results/tmp/.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
conc=("${@:-1 4 8}")
[ $# -eq 0 ] && conc=(1 4 8)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
pa_venv=${PA_VENV:-$HOME/.cache/inferd/pa-venv}
if [ ! -x "$pa_venv/bin/perf_analyzer" ]; then
  python3 -m venv "$pa_venv"
  "$pa_venv/bin/pip" install -q 'tritonclient[all]==2.51.0' nvidia-cuda-runtime-cu12
  command -v apt-get >/dev/null && { dpkg -s libb64-0d >/dev/null 2>&1 || apt-get install -y -qq libb64-0d; }
fi
site=$("$pa_venv/bin/python" -c 'import site; print(site.getsitepackages()[0])')
export LD_LIBRARY_PATH="$site/nvidia/cuda_runtime/lib:${LD_LIBRARY_PATH:-}"
pa="$pa_venv/bin/perf_analyzer"

cargo build --release -p inferd >&2
out=bench/results/tmp; mkdir -p "$out"
"$CARGO_TARGET_DIR/release/inferd" serve --model-repository examples/models \
  --http-address 127.0.0.1 --grpc-address 127.0.0.1 --http-port 0 --grpc-port 0 >"$out/ports.txt" 2>"$out/server.log" &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do grep -q gRPC "$out/ports.txt" 2>/dev/null && break; sleep 0.1; done
http=$(sed -n 's/^HTTP listening on //p' "$out/ports.txt"); grpc=$(sed -n 's/^gRPC listening on //p' "$out/ports.txt")
for _ in $(seq 100); do curl -sf "http://$http/v2/health/ready" >/dev/null && break; sleep 0.1; done

echo "| protocol | concurrency | requests/s | p50 us | p99 us |"
echo "|---|---|---|---|---|"
for proto in http grpc; do
  url=$http; [ "$proto" = grpc ] && url=$grpc
  for c in "${conc[@]}"; do
    csv="$out/$proto-c$c.csv"
    "$pa" -m simple_mlp -x 1 -u "$url" -i "$proto" -b 1 --concurrency-range "$c" \
      --measurement-interval 4000 --stability-percentage 20 -f "$csv" >"$out/$proto-c$c.log" 2>&1 || { echo "perf_analyzer failed, see $out/$proto-c$c.log" >&2; continue; }
    python3 - "$csv" "$proto" "$c" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
r = rows[-1]
print(f"| {sys.argv[2]} | {sys.argv[3]} | {float(r['Inferences/Second']):.0f} | {r['p50 latency']} | {r['p99 latency']} |")
PY
  done
done
echo
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); server and load generator share it"
