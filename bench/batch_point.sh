#!/usr/bin/env bash
# One dynamic-batching point, explained: serves a repository with the `--profile dist` inferd,
# drives one model with perf_analyzer over gRPC at one concurrency, and prints the client's
# req/s, p50 and p99 next to what the server's statistics say about the batches it ran in that
# time (mean rows per batch, mean compute per batch) and the issue-3 bound, max_queue_delay +
# 2 x mean batch compute. HIST=1 adds the executed batch sizes.
#   bench/batch_point.sh REPO MODEL CONCURRENCY DELAY_US
# Example (the harness's compute-bound point):
#   bench/batch_point.sh bench/models/repo mlp_large 32 2000
set -euo pipefail
repo=$1; model=$2; conc=$3; delay_us=$4
pa_venv=${PA_VENV:-$HOME/.cache/inferd/pa-venv}
target=${CARGO_TARGET_DIR:-$PWD/target}
bin=${BIN:-$target/dist/inferd}
export LD_LIBRARY_PATH
LD_LIBRARY_PATH=$(ls -d "$pa_venv"/lib/python3*/site-packages)/nvidia/cuda_runtime/lib
work=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT
"$bin" serve --model-repository "$repo" --http-port 18600 --grpc-port 18601 \
  --http-address 127.0.0.1 --grpc-address 127.0.0.1 >"$work/server.log" 2>&1 &
pid=$!
for _ in $(seq 100); do curl -sf localhost:18600/v2/health/ready >/dev/null && break; sleep 0.1; done
curl -sf "localhost:18600/v2/models/$model/stats" >"$work/before.json"
"$pa_venv/bin/perf_analyzer" -m "$model" -x 1 -u localhost:18601 -i grpc -b 1 \
  --concurrency-range "$conc" --measurement-interval 4000 --stability-percentage 25 \
  --max-trials 6 -f "$work/pa.csv" >"$work/pa.out" 2>&1 || { tail -5 "$work/pa.out"; exit 1; }
curl -sf "localhost:18600/v2/models/$model/stats" >"$work/after.json"
python3 - "$work" "$delay_us" <<'PY'
import csv, json, os, sys
work, delay_us = sys.argv[1], int(sys.argv[2])
def batches(name):
    stats = json.load(open(f"{work}/{name}"))["model_stats"][0]["batch_stats"]
    return {b["batch_size"]: (b["compute_infer"]["count"], b["compute_infer"]["ns"]) for b in stats}
before, after = batches("before.json"), batches("after.json")
sizes = []
for size, (count, ns) in sorted(after.items()):
    c0, n0 = before.get(size, (0, 0))
    if count > c0:
        sizes.append((size, count - c0, (ns - n0) / (count - c0) / 1000))
runs = sum(c for _, c, _ in sizes)
if os.environ.get("HIST"):
    for size, count, us in sizes:
        print(f"batch {size:3d}: {count:6d} runs ({100 * count / runs:4.1f}%), {us:7.0f} us each")
mean_rows = sum(s * c for s, c, _ in sizes) / runs
mean_us = sum(c * us for _, c, us in sizes) / runs
row = list(csv.DictReader(open(f"{work}/pa.csv")))[-1]
p99 = int(row["p99 latency"])
bound = delay_us + 2 * mean_us
print(f"{float(row['Inferences/Second']):.0f} req/s, p50 {row['p50 latency']} us, p99 {p99} us; "
      f"{mean_rows:.1f} rows per batch, {mean_us:.0f} us compute per batch; "
      f"bound {bound:.0f} us, p99 {p99 / bound:.2f}x the bound")
PY
