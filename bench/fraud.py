#!/usr/bin/env python3
"""Served latency of one-row fraud scoring: an XGBoost model (100 trees, depth 6, 30 features,
binary:logistic) behind the release `inferd`, one client at a time, over HTTP (JSON body).

    .venv/bin/python bench/fraud.py      (after `cargo build --release -p inferd`; needs `wrk`)

Measured with wrk (C, event loop, keep-alive; -t1 -c1) so the client adds little. In the same
run, the server's own floor: GET /v2/health/live (no model, no body) through the same stack.
Server settings are compared in the same run (defaults; both spin windows off; longer windows),
interleaved over FRAUD_ROUNDS rounds (default 3) of FRAUD_SECONDS (default 5) each, reporting
medians. Prints a Markdown table.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
import urllib.request
from pathlib import Path

import numpy as np
import xgboost
from run import Inferd

ROOT = Path(__file__).resolve().parents[1]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
SECONDS = int(os.environ.get("FRAUD_SECONDS", "5"))
ROUNDS = int(os.environ.get("FRAUD_ROUNDS", "3"))


def wrk(url: str, body: str | None, seconds: int = SECONDS) -> dict:
    script = None
    args = ["wrk", "-t1", "-c1", f"-d{seconds}s", "--latency"]
    if body is not None:
        script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
        script.write(
            'wrk.method = "POST"\n'
            'wrk.headers["Content-Type"] = "application/json"\n'
            f"wrk.body = {json.dumps(body)}\n"
        )
        script.close()
        args += ["-s", script.name]
    out = subprocess.run(args + [url], check=True, capture_output=True, text=True).stdout
    if script:
        os.unlink(script.name)

    def us(label: str) -> float:
        m = re.search(rf"{label}\s+([\d.]+)(us|ms|s)\b", out)
        if not m:
            raise RuntimeError(f"no {label} in wrk output:\n{out}")
        v, unit = float(m.group(1)), m.group(2)
        return v * {"us": 1, "ms": 1e3, "s": 1e6}[unit]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if non2xx:
        raise RuntimeError(f"{non2xx.group(1)} failed requests:\n{out}")
    return {"p50": us("50%"), "p90": us("90%"), "p99": us("99%"), "rps": rps}


# Server settings compared in one run: the defaults, and with both spin windows off (every
# thread parks as soon as it is idle).
CONFIGS = [
    ("defaults (spins 100 us)", []),
    ("spins off", ["--network-spin-us", "0", "--executor-spin-us", "0"]),
    ("spins 200 us", ["--network-spin-us", "200", "--executor-spin-us", "200"]),
]


def measure(repo: Path, extra: list[str], body: str, want: float):
    server = Inferd(repo, repo.parent, extra)
    try:
        base = f"http://{server.http}"
        got = json.load(urllib.request.urlopen(urllib.request.Request(
            f"{base}/v2/models/fraud/infer", data=body.encode())))
        assert abs(got["outputs"][0]["data"][0] - want) < 1e-6, (got, want)
        return wrk(f"{base}/v2/health/live", None), wrk(f"{base}/v2/models/fraud/infer", body)
    finally:
        server.stop()


def main():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5000, 30)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] * x[:, 2] > 0).astype(int)
    booster = xgboost.train({"objective": "binary:logistic", "max_depth": 6, "nthread": 1},
                            xgboost.DMatrix(x, label=y), 100)
    repo = Path(tempfile.mkdtemp()) / "models"
    (repo / "fraud" / "1").mkdir(parents=True)
    booster.save_model(str(repo / "fraud" / "1" / "model.json"))
    (repo / "fraud" / "config.pbtxt").write_text('backend: "xgboost"\nmax_batch_size: 1024\n')

    row = [round(float(v), 6) for v in x[17]]
    body = json.dumps({"inputs": [{"name": "input__0", "shape": [1, 30], "datatype": "FP32", "data": row}]})
    want = float(booster.inplace_predict(np.asarray([row], dtype=np.float32))[0])
    # Configurations interleaved, ROUNDS times; the table shows each metric's median over rounds
    # (this machine's noise moves single runs by tens of microseconds).
    runs = {label: [] for label, _ in CONFIGS}
    for _ in range(ROUNDS):
        for label, extra in CONFIGS:
            runs[label].append(measure(repo, extra, body, want))

    def median(rs, key):
        return float(np.median([r[key] for r in rs]))

    results = []
    for label, pairs in runs.items():
        floor = {k: median([p[0] for p in pairs], k) for k in ("p50", "p90", "p99", "rps")}
        infer = {k: median([p[1] for p in pairs], k) for k in ("p50", "p90", "p99", "rps")}
        results.append((label, floor, infer))
    print("| server settings | request (wrk -t1 -c1, keep-alive) | p50 us | p90 us | p99 us | requests/s |")
    print("|---|---|---|---|---|---|")
    for label, floor, infer in results:
        for name, r in (("GET /v2/health/live (server floor)", floor),
                        ("POST /v2/models/fraud/infer, 1 row JSON", infer)):
            print(f"| {label} | {name} | {r['p50']:.0f} | {r['p90']:.0f} | {r['p99']:.0f} | {r['rps']:.0f} |")


if __name__ == "__main__":
    main()
