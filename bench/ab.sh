#!/usr/bin/env bash
# Interleaved A/B of inferd server settings under perf_analyzer: this VM drifts by tens of
# percent within minutes, so configurations are measured in turn, round after round, and every
# 2 s window perf_analyzer reports is printed with the server's CPU time for the run, in all and
# per served request, and perf_analyzer's CPU per served request.
#   bench/ab.sh ROUNDS http|grpc CONCURRENCY BATCH 'CONFIG A' 'CONFIG B' ...
# A config is shell assignments: BIN= (inferd binary; default the `--profile dist` build), ARGS=
# (extra serve flags), MODEL= (default mlp_small), REPO= (default bench/models/repo), PIN=1 (pin
# executors to core 1 and the network to core 0), or any INFERD_* variable. Example:
#   bench/ab.sh 3 grpc 4 64 'INFERD_NETWORK_THREADS=2' 'INFERD_NETWORK_THREADS=1'
set -uo pipefail
cd "$(dirname "$0")/.."
rounds=$1; proto=$2; conc=$3; batch=$4; shift 4
pa_venv=${PA_VENV:-$HOME/.cache/inferd/pa-venv}
target=${CARGO_TARGET_DIR:-$PWD/target}
export LD_LIBRARY_PATH
LD_LIBRARY_PATH=$(ls -d "$pa_venv"/lib/python3*/site-packages)/nvidia/cuda_runtime/lib
# Requests the model served so far (its statistics' success count).
served() {
  curl -s "localhost:18500/v2/models/$1/stats" | python3 -c \
    'import json, sys; print(json.load(sys.stdin)["model_stats"][0]["inference_stats"]["success"]["count"])'
}
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for _ in $(seq "$rounds"); do
  for cfg in "$@"; do
    (
      eval "export $cfg"
      # shellcheck disable=SC2086
      exec "${BIN:-$target/dist/inferd}" serve --model-repository "${REPO:-bench/models/repo}" \
        --http-port 18500 --grpc-port 18501 --http-address 127.0.0.1 --grpc-address 127.0.0.1 \
        ${ARGS:-} >"$log" 2>&1
    ) &
    pid=$!
    for _ in $(seq 100); do curl -sf localhost:18500/v2/health/ready >/dev/null && break; sleep 0.1; done
    model=$(eval "$cfg"; echo "${MODEL:-mlp_small}")
    if [ -n "$(eval "$cfg"; echo "${PIN:-}")" ]; then
      for t in /proc/$pid/task/*; do
        case $(cat "$t/comm") in
          tokio-rt-worker) taskset -p -c 0 "${t##*/}" >/dev/null ;;
          "$model"-*) taskset -p -c 1 "${t##*/}" >/dev/null ;;
        esac
      done
    fi
    if [ "$proto" = http ]; then url=127.0.0.1:18500; else url=127.0.0.1:18501; fi
    n0=$(served "$model")
    s0=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    out=$({ TIMEFORMAT="client-cpu %U %S"; time timeout 60 "$pa_venv/bin/perf_analyzer" -m "$model" \
      -x 1 -u "$url" -i "$proto" -b "$batch" --concurrency-range "$conc" --measurement-interval 2000 \
      --max-trials 3 -v; } 2>&1)
    s1=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    n1=$(served "$model")
    passes=$(grep -o "throughput: [0-9.]*" <<<"$out" | awk '{printf "%.0f ", $2}')
    p99=$(grep -o "p99 latency: [0-9]*" <<<"$out" | tail -1)
    # CPU per served request (the model's success count; a batch-64 request counts once).
    per=$(python3 -c "print(f'{($s1 - $s0) * 10000 / max($n1 - $n0, 1):.1f}')")
    # perf_analyzer's own CPU per served request (it shares the cores with the server).
    client=$(awk -v n=$((n1 - n0)) '/^client-cpu/ {printf "%.1f", ($2 + $3) * 1e6 / (n > 0 ? n : 1)}' <<<"$out")
    echo "[$cfg] windows/s: ${passes}server cpu: $(( (s1 - s0) * 10 )) ms, ${per} us per request," \
      "client ${client} us per request ${p99}"
    kill "$pid"; wait "$pid" 2>/dev/null; sleep 0.3
  done
done
