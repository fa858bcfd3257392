#!/usr/bin/env python3
"""One dynamic-batching point, explained: serves REPO with the `--profile dist` inferd, drives
MODEL with perf_analyzer over gRPC at one concurrency, and prints the client's req/s, p50 and p99
next to what the server's statistics say about the batches it ran in that window (rows and
compute per batch) and the issue-3 bound, max_queue_delay + 2 x mean batch compute. HIST=1 adds
the executed batch sizes. Server, perf_analyzer and statistics are bench/run.py's.

    python3 bench/batch_point.py REPO MODEL CONCURRENCY DELAY_US
    python3 bench/batch_point.py bench/models/repo mlp_large 32 2000   (the harness's point)
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from run import Inferd, batch_stats, executed_batches, perf_analyzer


def main() -> int:
    repo, model, conc, delay_us = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    with tempfile.TemporaryDirectory() as tmp:
        server = Inferd(repo, Path(tmp))
        try:
            before = batch_stats(server.http, model)
            pa = perf_analyzer(model, server.grpc, "grpc", conc, 1, Path(tmp), 4)
            after = batch_stats(server.http, model)
        finally:
            server.stop()
    if pa is None:
        print("perf_analyzer found no stable measurement", file=sys.stderr)
        return 1
    ran = executed_batches(before, after)
    if os.environ.get("HIST"):
        for size, (count, ns) in sorted(after.items()):
            c0, n0 = before.get(size, (0, 0))
            if count > c0:
                print(f"batch {size:3d}: {count - c0:6d} runs ({100 * (count - c0) / ran['batches']:4.1f}%), "
                      f"{(ns - n0) / (count - c0) / 1000:7.0f} us each")
    bound = delay_us + 2 * ran["batch_compute_us"]
    print(f"{pa['rps']:.0f} req/s, p50 {pa['p50_us']} us, p99 {pa['p99_us']} us; "
          f"{ran['mean_batch']} rows per batch, {ran['batch_compute_us']} us compute per batch; "
          f"bound {bound} us, p99 {pa['p99_us'] / bound:.2f}x the bound")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
