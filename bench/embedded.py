#!/usr/bin/env python3
"""Embedded serving from Python: the FastAPI fraud service (examples/python/fastapi_fraud.py)
with inferd in-process, against the same service with xgboost's and onnxruntime's Python APIs.

    maturin build --release -m crates/inferd-python/Cargo.toml --no-default-features \\
        --features trees --out /tmp/wheel && pip install --force-reinstall /tmp/wheel/inferd-*.whl
    .venv/bin/python bench/embedded.py            (needs `wrk`)

Each service is one uvicorn process (one worker, access log off) serving one XGBoost model
(200 trees, depth 6, 30 features, binary:logistic) behind ``POST /score`` with the same
pydantic body and answer. The peers are written as FastAPI users write them: a plain ``def``
endpoint (FastAPI runs it on its thread pool) calling ``booster.inplace_predict`` or
``session.run``, each with one thread per call (``nthread=1`` / ``intra_op_num_threads=1``:
with many calls at once, per-call thread pools only fight). inferd's endpoint awaits
``engine.infer_async`` and the engine batches the requests that arrive while the model is busy
(``dynamic_batching { }``: no extra wait).

wrk (C, keep-alive, 2 threads) drives 1, 8 and 32 connections for EMBEDDED_SECONDS (default 10)
each after a warm-up, the three services in turn for EMBEDDED_ROUNDS (default 3) rounds; each
service's best requests/s (with that run's p50/p99), and the ratio of every round's runs, made
side by side (this shared VM's speed drifts within seconds). Server and client share the
machine's cores. Prints a Markdown table and writes bench/results/embedded-DATE.json.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples" / "python"))
import make_fraud_model  # noqa: E402

SECONDS = int(os.environ.get("EMBEDDED_SECONDS", "10"))
ROUNDS = int(os.environ.get("EMBEDDED_ROUNDS", "3"))
CLIENTS = [1, 8, 32]

COMMON = textwrap.dedent('''
    import os
    import numpy as np
    from fastapi import FastAPI
    from pydantic import BaseModel, Field

    class Transaction(BaseModel):
        features: list[float] = Field(min_length=30, max_length=30)

    app = FastAPI()
    REPO = os.environ["FRAUD_MODELS"]
''')

PEERS = {
    "xgboost": COMMON + textwrap.dedent('''
        import xgboost
        booster = xgboost.Booster(model_file=f"{REPO}/fraud/1/model.json")
        booster.set_param({"nthread": 1})

        @app.post("/score")
        def score(t: Transaction) -> dict:
            p = booster.inplace_predict(np.asarray([t.features], dtype=np.float32))
            return {"fraud_probability": float(p[0])}
    '''),
    "onnxruntime": COMMON + textwrap.dedent('''
        import onnxruntime
        opts = onnxruntime.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(f"{REPO}/fraud.onnx", opts, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name

        @app.post("/score")
        def score(t: Transaction) -> dict:
            label, probs = session.run(None, {name: np.asarray([t.features], dtype=np.float32)})
            return {"fraud_probability": float(probs[0][1])}
    '''),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def to_onnx(repo: Path) -> None:
    import onnxmltools
    import xgboost
    from onnxmltools.convert.common.data_types import FloatTensorType

    booster = xgboost.Booster(model_file=str(repo / "fraud" / "1" / "model.json"))
    model = onnxmltools.convert_xgboost(booster, initial_types=[("features", FloatTensorType([None, 30]))],
                                        target_opset=15)
    (repo / "fraud.onnx").write_bytes(model.SerializeToString())


def serve(app_dir: Path, module: str, repo: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    p = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--app-dir", str(app_dir), f"{module}:app", "--host", "127.0.0.1",
         "--port", str(port), "--no-access-log", "--log-level", "warning"],
        env={**os.environ, "FRAUD_MODELS": str(repo)})
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{url}/docs", timeout=1)
            return p, url
        except OSError:
            time.sleep(0.2)
    p.kill()
    raise RuntimeError(f"{module} did not start")


def wrk(url: str, body: str, clients: int, seconds: int) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                f"wrk.body = {json.dumps(body)}\n")
    args = ["wrk", f"-t{min(clients, 2)}", f"-c{clients}", f"-d{seconds}s", "--latency", "-s", f.name, f"{url}/score"]
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    os.unlink(f.name)

    def ms(label: str) -> float:
        m = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        assert m, out
        return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    assert errors is None, out
    return {"rps": rps, "p50_ms": ms("50"), "p99_ms": ms("99")}


def main() -> None:
    import inferd

    work = Path(tempfile.mkdtemp(prefix="embedded-bench-"))
    repo = make_fraud_model.train(work / "models", rounds=200)
    to_onnx(repo)
    for name, code in PEERS.items():
        (work / f"app_{name}.py").write_text(code)
    x, _ = make_fraud_model.transactions(1, seed=99)
    body = json.dumps({"features": [float(v) for v in x[0]]})
    services = [("inferd (embedded)", ROOT / "examples" / "python", "fastapi_fraud"),
                ("xgboost", work, "app_xgboost"), ("onnxruntime", work, "app_onnxruntime")]
    results: dict[str, dict[int, dict]] = {}
    answers = {}
    # All three services stay up and are measured in turn, round after round: this shared VM's
    # speed drifts within seconds, so each round's ratio compares runs made side by side, and
    # each service keeps its best run.
    running = []
    try:
        for label, app_dir, module in services:
            proc, url = serve(app_dir, module, repo)
            running.append((label, proc, url))
            req = urllib.request.Request(f"{url}/score", body.encode(), {"Content-Type": "application/json"})
            answers[label] = json.loads(urllib.request.urlopen(req, timeout=5).read())["fraud_probability"]
            wrk(url, body, 8, 2)  # warm-up
        ratios: dict[int, list[float]] = {c: [] for c in CLIENTS}
        for _ in range(ROUNDS):
            for c in CLIENTS:
                this = {label: wrk(url, body, c, SECONDS) for label, _, url in running}
                for label, r in this.items():
                    if r["rps"] > results.setdefault(label, {}).get(c, {"rps": 0})["rps"]:
                        results[label][c] = r
                peer = max(this[p]["rps"] for p in ("xgboost", "onnxruntime"))
                ratios[c].append(this["inferd (embedded)"]["rps"] / peer)
    finally:
        for _, proc, _ in running:
            proc.terminate()
            proc.wait(30)
    spread = max(answers.values()) - min(answers.values())
    assert spread < 1e-5, f"the services disagree: {answers}"

    today = datetime.date.today().isoformat()
    print(f"FastAPI fraud service, 1-row requests, wrk, {SECONDS} s per point, {ROUNDS} interleaved rounds (best run "
          f"of each service), inferd {inferd.__version__}, {today}\n")
    print("| service | clients | req/s | p50 ms | p99 ms |")
    print("|---|---|---|---|---|")
    for label, rows in results.items():
        for c, r in rows.items():
            print(f"| {label} | {c} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} |")
    ours = results["inferd (embedded)"]
    best = {c: max(results[p][c]["rps"] for p in ("xgboost", "onnxruntime")) for c in CLIENTS}
    print()
    for c in CLIENTS:
        paired = sorted(ratios[c])
        print(f"c{c}: inferd / best peer = {ours[c]['rps'] / best[c]:.2f}x req/s (best runs); per round "
              f"{', '.join(f'{r:.2f}x' for r in ratios[c])}, median {paired[len(paired) // 2]:.2f}x")
    best_p50 = min(results[p][1]["p50_ms"] for p in ("xgboost", "onnxruntime"))
    print(f"c1 p50: inferd {ours[1]['p50_ms']:.2f} ms vs best peer {best_p50:.2f} ms")
    out = ROOT / "bench" / "results" / f"embedded-{today}.json"
    out.write_text(json.dumps({"date": today, "seconds": SECONDS, "rounds": ROUNDS, "results": results,
                               "ratios_per_round": ratios}, indent=1))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
