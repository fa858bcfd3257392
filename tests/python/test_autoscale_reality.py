"""The autoscaling simulator checked against a real replica.

A compute-heavy ONNX model (one 1024-wide weight applied again and again, MatMul + Relu, one
request at a time, as many layers as take ~80 ms on this machine, found by a probe) is served by the real binary, so the model and not the HTTP path or the
load generator sets the pace. Its service figures are measured the way a user would: the
compute time from the server's own statistics endpoint, the fixed per-request overhead (HTTP,
parsing) as the sequential latency minus the compute, and the spread of the latencies.
Then an open-loop Poisson load (arrival times drawn up front; each request timed from its
scheduled send, so a slow server cannot slow the client) runs at three rates, and
``inferd autoscale simulate`` replays the same arrivals with one replica built from the
measured profile, its compute time the one the server reported for that run (the load
generator shares this machine's two cores with the server and slows the model under load: a
CI run measured a p50 of 130 ms at the highest rate where a replay with the idle machine's
compute time said 79; the simulator is checked on queueing, not on how the host shares its
cores). Its p50 must be within 25% of the
measured one, and its p99 within 60% or two service times, whichever is larger (the tail is
what that sharing moves most).
"""

from __future__ import annotations

import concurrent.futures
import json
import math
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from inferd_testlib import heavy_model, post_json_body

D = 1024
PROBE_LAYERS = 50
# The service time the model is sized for: long enough that the model, not the HTTP path or the
# Python load generator (which share the two cores), sets the pace. The same layer count ran
# 24 ms on one machine and over 60 ms on another, so it is sized by a probe on the machine.
TARGET_SECS = 0.08


BODY = json.dumps({"inputs": [{"name": "input", "shape": [1, D], "datatype": "FP32", "data": [0.01] * D}]})


def post(url: str) -> float:
    t = time.perf_counter()
    r = post_json_body(url, BODY)
    r.raise_for_status()
    return time.perf_counter() - t


def compute_totals(base: str) -> dict[int, tuple[int, int]]:
    """Per batch size: (executions, compute nanoseconds) so far, from the statistics endpoint."""
    stats = requests.get(f"{base}/v2/models/heavy/stats", timeout=10).json()["model_stats"]
    out = {}
    for s in stats:
        for b in s.get("batch_stats", []):
            c = b["compute_infer"]
            if int(c["count"]):
                out[int(b["batch_size"])] = (int(c["count"]), int(c["ns"]))
    return out


def compute_mean_since(base: str, before: dict[int, tuple[int, int]]) -> float:
    """Mean compute seconds of the batch-1 executions since `before`."""
    n1, ns1 = compute_totals(base)[1]
    n0, ns0 = before.get(1, (0, 0))
    return (ns1 - ns0) / (n1 - n0) / 1e9


def open_loop(url: str, rate: float, secs: float, seed: int) -> tuple[list[float], list[float]]:
    """Poisson arrivals at `rate` for `secs`: (scheduled offsets, latencies from them)."""
    rng = np.random.default_rng(seed)
    times = np.cumsum(rng.exponential(1.0 / rate, int(rate * secs * 1.2)))
    times = times[times < secs]
    start = time.perf_counter() + 0.2
    lat = [0.0] * len(times)

    def one(i: int) -> None:
        due = start + times[i]
        time.sleep(max(0.0, due - time.perf_counter()))
        post(url)
        lat[i] = time.perf_counter() - due

    with concurrent.futures.ThreadPoolExecutor(64) as ex:
        list(ex.map(one, range(len(times))))
    return list(times), lat


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def test_the_simulator_predicts_a_real_replica_under_poisson_load(inferd_bin, inferd_server_factory, tmp_path):
    repo = tmp_path / "models"
    heavy_model(tmp_path / "probe", D, PROBE_LAYERS)
    probe = inferd_server_factory(tmp_path / "probe", "--compute-threads", "1")
    probe_url = f"{probe.http_base}/v2/models/heavy/infer"
    for _ in range(10):
        post(probe_url)
    n, ns = compute_totals(probe.http_base)[1]
    per_layer = ns / n / 1e9 / PROBE_LAYERS
    probe.stop()
    heavy_model(repo, D, max(PROBE_LAYERS, round(TARGET_SECS / per_layer)))
    srv = inferd_server_factory(repo, "--compute-threads", "1")
    url = f"{srv.http_base}/v2/models/heavy/infer"
    # Calibration: sequential requests; the model runs one request at a time (max batch 1).
    seq = [post(url) for _ in range(40)][5:]
    c = compute_totals(srv.http_base)
    assert list(c) == [1], c
    base, per_item, k = c[1][1] / c[1][0] / 1e9, 0.0, 1
    overhead = max(0.0, statistics.median(seq) - base)
    # The spread from the interquartile range of the log latencies (IQR / 1.349 is sigma for a
    # normal): one stray slow request among 35 (the client shares the cores) would otherwise
    # inflate the standard deviation, and with it every simulated tail near saturation.
    q1, q3 = np.percentile(np.log(np.asarray(seq)), [25, 75])
    sigma = float((q3 - q1) / 1.349)
    profile = {"base_secs": base, "per_item_secs": per_item, "log_sigma": min(sigma, 1.0), "max_batch": 1,
               "batch_delay_secs": 0.0, "max_queue": 100000, "overhead_secs": overhead,
               "start_phases": [["load", 1.0]]}
    capacity = k / (base + per_item * (k - 1))
    results = []
    for i, load in enumerate([0.3, 0.55, 0.8]):
        rate = load * capacity
        before = compute_totals(srv.http_base)
        sched, lat = open_loop(url, rate, 20.0, seed=i)
        # The simulator predicts queueing from service times; on two shared cores the load
        # generator's own threads slow the model under load, so each run is simulated with the
        # compute time the server reported for that run (what a profile taken there would say).
        run_profile = dict(profile, base_secs=compute_mean_since(srv.http_base, before))
        (tmp_path / "profile.json").write_text(json.dumps(run_profile))
        csv = tmp_path / f"trace{i}.csv"
        csv.write_text("timestamp,count\n" + "".join(f"{t:.6f},1\n" for t in sched))
        # The simulated percentiles are the median over five seeds: one replay's p99 of ~300
        # requests is its third-slowest request, a draw as noisy as the measurement it is
        # checked against.
        sims = []
        for seed in range(5):
            sim = subprocess.run(
                [inferd_bin, "autoscale", "simulate", "--trace", str(csv), "--policy", "queue-hpa",
                 "--min-replicas", "1", "--max-replicas", "1", "--slo-ms", "10000",
                 "--service-profile", str(tmp_path / "profile.json"), "--format", "json",
                 "--seed", str(10 * i + seed)],
                capture_output=True, text=True, timeout=300)
            assert sim.returncode == 0, sim.stderr
            out = json.loads(sim.stdout)[0]
            sims.append((out["p50_ms"], out["p99_ms"]))
        simulated = (statistics.median(s[0] for s in sims), statistics.median(s[1] for s in sims))
        measured = (pct(lat, 50) * 1e3, pct(lat, 99) * 1e3)
        results.append((load, rate, run_profile["base_secs"], measured, simulated))
    report = "\n".join(
        f"load {l:.2f} ({r:.1f}/s, compute {b * 1e3:.1f} ms): measured p50 {m[0]:.1f} p99 {m[1]:.1f} ms, "
        f"simulated p50 {s[0]:.1f} p99 {s[1]:.1f} ms"
        for l, r, b, m, s in results)
    print(f"profile {profile}\n{report}")
    for load, rate, _, (m50, m99), (s50, s99) in results:
        assert abs(s50 - m50) <= 0.25 * m50, report
        assert abs(s99 - m99) <= max(0.6 * m99, 2.0 * base * 1e3), report
