#!/usr/bin/env python3
"""Cold start: time from process start to ready, inferd next to Triton 2.51 on the same ONNX
repository, and inferd on the example repository, a tree model, the embedding model and the LLM.

    python bench/start.py --inferd target/release/inferd [--triton-work DIR] [--runs 5]

Each run spawns the server and polls GET /v2/health/ready every millisecond until it answers
200; the figure is the median of the runs (the page cache is warm after the first, as it is for
a restarted pod on the same node). inferd's own split by phase (artifact checks, load,
warm-up; `inferd_model_start_seconds`) is read from its metrics page after each run.
Triton is set up by shared/testbed/triton-peer.sh (its ONNX model runs in the Python backend
with onnxruntime, as there is no ONNX Runtime backend for it on PyPI), then started directly so
the same millisecond poll times it.
Needs the models the test suite fetches: INFERD_SMOLLM2_GGUF and INFERD_MINILM_DIR (set by
scripts/test.sh; default paths under ~/.cache/inferd/models).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
MODELS = Path(os.environ.get("INFERD_MODELS_CACHE", Path.home() / ".cache/inferd/models"))
GGUF = Path(os.environ.get("INFERD_SMOLLM2_GGUF", MODELS / "SmolLM2-135M-Instruct.Q4_1.gguf"))
MINILM = Path(os.environ.get("INFERD_MINILM_DIR", MODELS / "all-MiniLM-L6-v2"))
TRITON_PEER = ROOT.parent / "shared" / "testbed" / "triton-peer.sh"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def time_to_ready(cmd: list[str], port: int, env: dict | None = None, model: str | None = None,
                  log: Path | None = None) -> tuple[float, subprocess.Popen]:
    """Spawns `cmd` and returns (seconds until ready answers 200, the process)."""
    url = f"http://127.0.0.1:{port}/v2/" + (f"models/{model}/ready" if model else "health/ready")
    out = open(log, "wb") if log else subprocess.DEVNULL
    session = requests.Session()
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    while True:
        try:
            if session.get(url, timeout=1).status_code == 200:
                return time.perf_counter() - t0, p
        except requests.ConnectionError:
            pass
        if p.poll() is not None:
            raise RuntimeError(f"{cmd[0]} exited with {p.returncode} before ready (log: {log})")
        if time.perf_counter() - t0 > 120:
            p.kill()
            tail = log.read_text(errors="replace")[-2000:] if log else ""
            raise RuntimeError(f"{cmd[0]} not ready in 120 s\n{tail}")
        time.sleep(0.001)


def stop(p: subprocess.Popen) -> None:
    try:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def first_answer(inferd: Path, repo: Path, log: Path) -> tuple[float, dict[str, float]]:
    """Scale from zero: the first request is sent as soon as the port takes connections and
    waits for the model (--cold-start-wait-secs); seconds from spawn to its answer."""
    port, metrics = free_port(), free_port()
    body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}]}
    session = requests.Session()
    t0 = time.perf_counter()
    p = subprocess.Popen([str(inferd), "serve", "--model-repository", str(repo), "--http-port", str(port),
                          "--grpc-port", "0", "--metrics-port", str(metrics), "--http-address", "127.0.0.1",
                          "--grpc-address", "127.0.0.1", "--cold-start-wait-secs", "30"],
                         stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        while True:
            try:
                r = session.post(f"http://127.0.0.1:{port}/v2/models/simple_mlp/infer", json=body, timeout=30)
                break
            except requests.ConnectionError:
                time.sleep(0.001)
        secs = time.perf_counter() - t0
        assert r.status_code == 200, r.text
        return secs, phases(f"http://127.0.0.1:{metrics}/metrics")
    finally:
        stop(p)


def phases(metrics_url: str) -> dict[str, float]:
    page = requests.get(metrics_url, timeout=5).text
    out: dict[str, float] = {}
    for m in re.finditer(r'^inferd_model_start_seconds\{[^}]*phase="(\w+)"[^}]*\} (\S+)', page, re.M):
        out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(2))
    return out


def repos(work: Path) -> dict[str, Path]:
    """The repositories timed: name -> folder."""
    out = {}
    ex = work / "examples"
    shutil.copytree(ROOT / "examples" / "models", ex, ignore=shutil.ignore_patterns("*.py", "*.md"))
    out["example repository (3 models)"] = ex
    onnx = work / "onnx"
    shutil.copytree(ROOT / "examples" / "models" / "simple_mlp", onnx / "simple_mlp")
    shutil.rmtree(onnx / "simple_mlp" / "2")
    out["ONNX MLP (simple_mlp v1)"] = onnx
    import numpy as np
    import xgboost

    rng = np.random.default_rng(0)
    x = rng.standard_normal((5000, 30)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] * x[:, 2] > 0).astype(np.float32)
    booster = xgboost.train({"objective": "binary:logistic", "max_depth": 6}, xgboost.DMatrix(x, y), 100)
    tree = work / "tree" / "forest" / "1"
    tree.mkdir(parents=True)
    booster.save_model(str(tree / "model.json"))
    (work / "tree" / "forest" / "config.pbtxt").write_text('backend: "xgboost"\nmax_batch_size: 1024\n')
    out["XGBoost forest (100 trees, depth 6)"] = work / "tree"
    if MINILM.is_dir():
        emb = work / "embedding" / "minilm" / "1"
        emb.mkdir(parents=True)
        # Copies, not links: links that leave the repository are refused by the safety checks.
        for f in MINILM.iterdir():
            if f.is_file():
                shutil.copy(f, emb / f.name)
        (work / "embedding" / "minilm" / "config.pbtxt").write_text('backend: "candle"\nmax_batch_size: 16\n')
        out["embedding (all-MiniLM-L6-v2, candle)"] = work / "embedding"
    if GGUF.is_file():
        llm = work / "llm" / "smollm2" / "1"
        llm.mkdir(parents=True)
        shutil.copy(GGUF, llm / "model.gguf")
        out["LLM (SmolLM2-135M Q4_1 GGUF)"] = work / "llm"
    return out


def triton_command(work: Path, port: int) -> tuple[list[str], dict]:
    """tritonserver's command line as triton-peer.sh builds it, on `work`'s set-up folders."""
    py = work / "venv" / "bin" / "python"
    q = lambda expr: subprocess.run([str(py), "-c", expr], capture_output=True, text=True, check=True).stdout.strip()
    site = q("import site; print(site.getsitepackages()[0])")
    libdir = q('import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')
    ts = Path(site) / "pytriton" / "tritonserver"
    env = dict(os.environ, LD_LIBRARY_PATH=f"{libdir}:{site}/nvidia_pytriton.libs")
    cmd = [str(ts / "bin" / "tritonserver"), f"--model-repository={work / 'models'}",
           f"--backend-directory={work / 'backends'}", "--http-address=127.0.0.1", "--grpc-address=127.0.0.1",
           "--metrics-address=127.0.0.1", f"--http-port={port}", f"--grpc-port={free_port()}",
           f"--metrics-port={free_port()}"]
    return cmd, env


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inferd", required=True, type=Path)
    ap.add_argument("--triton-work", type=Path, help="triton-peer.sh's folder (set up on first use)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    a = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        repos_made = repos(work)
        for name, repo in repos_made.items():
            times, split = [], {}
            for i in range(a.runs):
                port, metrics = free_port(), free_port()
                secs, p = time_to_ready(
                    [str(a.inferd), "serve", "--model-repository", str(repo), "--http-port", str(port),
                     "--grpc-port", "0", "--metrics-port", str(metrics), "--http-address", "127.0.0.1",
                     "--grpc-address", "127.0.0.1"], port, log=work / f"inferd-{i}.log")
                split = phases(f"http://127.0.0.1:{metrics}/metrics")
                stop(p)
                times.append(secs)
            results.append({"server": "inferd", "repository": name, "median_secs": statistics.median(times),
                            "runs": times, "phases_secs": split})
            print(f"inferd  {name:40s} {statistics.median(times) * 1e3:8.1f} ms  "
                  + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in split.items()), flush=True)
        onnx_repo = repos_made["ONNX MLP (simple_mlp v1)"]
        runs = [first_answer(a.inferd, onnx_repo, work / f"zero-{i}.log") for i in range(a.runs)]
        secs = statistics.median(r[0] for r in runs)
        model = statistics.median(sum(r[1].values()) for r in runs)
        results.append({"server": "inferd", "repository": "scale from zero, first answer (simple_mlp)",
                        "median_secs": secs, "model_start_secs": model, "runs": [r[0] for r in runs]})
        print(f"inferd  {'from zero: spawn -> first answer':40s} {secs * 1e3:8.1f} ms  "
              f"(model start {model * 1e3:.1f} ms; target: model start + 100 ms)", flush=True)
        if a.triton_work:
            onnx = ROOT / "examples" / "models" / "simple_mlp" / "1" / "model.onnx"
            setup = subprocess.run(["bash", str(TRITON_PEER), str(a.triton_work), str(onnx),
                                    str(free_port()), str(free_port()), str(free_port())],
                                   capture_output=True, text=True, timeout=1800)
            if setup.returncode != 0:
                print(setup.stdout + setup.stderr, file=sys.stderr)
                return 1
            os.kill(int(setup.stdout.strip().splitlines()[-1]), signal.SIGTERM)
            time.sleep(3)
            times = []
            for i in range(a.runs):
                port = free_port()
                cmd, env = triton_command(a.triton_work.resolve(), port)
                secs, p = time_to_ready(cmd, port, env=env, model="peer_onnx", log=work / f"triton-{i}.log")
                stop(p)
                times.append(secs)
            results.append({"server": "triton 2.51", "repository": "ONNX MLP (simple_mlp v1)",
                            "median_secs": statistics.median(times), "runs": times})
            print(f"triton  {'ONNX MLP (simple_mlp v1)':40s} {statistics.median(times) * 1e3:8.1f} ms", flush=True)
            ours = next(r for r in results if r["server"] == "inferd" and r["repository"].startswith("ONNX"))
            print(f"ratio inferd / triton on the same ONNX model: {ours['median_secs'] / statistics.median(times):.3f}")
    if a.out:
        a.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
