#!/usr/bin/env bash
# What perf_analyzer alone can reach on this machine: it drives a KServe v2 responder that does
# no work (bench/peers/canned_kserve.c, canned answers), so every core it does not use itself is
# idle. The requests/s it reaches bound any server measured with it here. Every window
# perf_analyzer reports is listed; against constant statistics it may stop reporting after a few
# windows, so each concurrency is cut off after 60 s.
#   bench/client_bound.sh [CONCURRENCY ...]     (default 1 4 16; needs gcc and bench/run.sh's pa-venv)
set -euo pipefail
cd "$(dirname "$0")/.."
pa_venv=${PA_VENV:-$HOME/.cache/inferd/pa-venv}
work=$(mktemp -d)
trap 'kill $srv 2>/dev/null || true; rm -rf "$work"' EXIT
gcc -O2 -o "$work/canned" bench/peers/canned_kserve.c
port=${PORT:-18650}
"$work/canned" "$port" &
srv=$!
sleep 0.3
export LD_LIBRARY_PATH
LD_LIBRARY_PATH=$(ls -d "$pa_venv"/lib/python3*/site-packages)/nvidia/cuda_runtime/lib
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
echo "| concurrency | requests/s (each 2 s window) | perf_analyzer CPU (cores) | responder CPU (cores) |"
echo "|---|---|---|---|"
concurrencies=("$@")
[ ${#concurrencies[@]} -gt 0 ] || concurrencies=(1 4 16)
for conc in "${concurrencies[@]}"; do
  s0=$(ticks $srv); t0=$(date +%s.%N)
  out=$(/usr/bin/time -f "cpu %U %S" timeout 60 "$pa_venv/bin/perf_analyzer" -m mlp_small -x 1 \
    -u "127.0.0.1:$port" -i http --concurrency-range "$conc" --measurement-interval 2000 \
    --max-trials 4 -v 2>&1 || true)
  s1=$(ticks $srv); t1=$(date +%s.%N)
  passes=$(grep -o "throughput: [0-9.]*" <<<"$out" | awk '{printf "%.0f ", $2}')
  pa=$(grep -o "^cpu [0-9.]* [0-9.]*" <<<"$out" | awk -v d="$(echo "$t1 - $t0" | bc)" '{printf "%.2f", ($2 + $3) / d}')
  resp=$(echo "($s1 - $s0) / 100 / ($t1 - $t0)" | bc -l | xargs printf "%.2f")
  echo "| $conc | $passes | ${pa:-?} | $resp |"
done
