"""The python backend against Triton's own (2.51, shared/testbed/triton-peer.sh): the same
model.py files, served by both, driven by wrk over HTTP/JSON at 8 connections.

    .venv/bin/python bench/python_backend.py --inferd target/release/inferd \
        [--triton-work ~/.cache/inferd/triton] [--seconds 10] [--out bench/results/X.json]

Models (the python_backend repository's add_sub, as its README lays it out, written here from
Triton's documented API): `add_sub` (FP32[4] in, sum and difference out, no batching) and
`add_sub_batched` (the same with max_batch_size 64 and dynamic batching, so execute gets the
batch's requests in one list). Both servers run the workers with the interpreter of Triton's
venv (numpy 1.26: Triton 2.51's stub needs numpy 1.x, symlinked into its backend folder as
TESTBED.md describes). Each model is measured on each server twice, alternating, after a 2 s
warm-up; the table gives the better of the two runs of each.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from start import TRITON_PEER, free_port, triton_command  # noqa: E402

ADD_SUB = '''
import json
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.dtype = pb_utils.triton_string_to_numpy(pb_utils.get_output_config_by_name(config, "OUTPUT0")["data_type"])

    def execute(self, requests):
        responses = []
        for request in requests:
            a = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            b = pb_utils.get_input_tensor_by_name(request, "INPUT1").as_numpy()
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("OUTPUT0", (a + b).astype(self.dtype)),
                pb_utils.Tensor("OUTPUT1", (a - b).astype(self.dtype))]))
        return responses
'''

CONFIG = '''name: "{name}"
backend: "python"
max_batch_size: {mbs}
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] }}, {{ name: "INPUT1" data_type: TYPE_FP32 dims: [ 4 ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] }}, {{ name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 4 ] }} ]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
{extra}
'''

MODELS = {"add_sub": (0, ""), "add_sub_batched": (64, "dynamic_batching { max_queue_delay_microseconds: 100 }")}


def repository(root: Path) -> Path:
    for name, (mbs, extra) in MODELS.items():
        (root / name / "1").mkdir(parents=True)
        (root / name / "1" / "model.py").write_text(ADD_SUB)
        (root / name / "config.pbtxt").write_text(CONFIG.format(name=name, mbs=mbs, extra=extra))
    return root


def body(name: str) -> str:
    shape = [4] if MODELS[name][0] == 0 else [1, 4]
    return json.dumps({"inputs": [
        {"name": "INPUT0", "shape": shape, "datatype": "FP32", "data": [0.1, 0.2, 0.3, 0.4]},
        {"name": "INPUT1", "shape": shape, "datatype": "FP32", "data": [0.4, 0.3, 0.2, 0.1]}]})


def wrk(url: str, payload: str, connections: int, seconds: int) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                f"wrk.body = {json.dumps(payload)}\n")
    out = subprocess.run(["wrk", f"-t{min(2, connections)}", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", f.name, url],
                         check=True, capture_output=True, text=True).stdout
    os.unlink(f.name)

    def ms(label: str) -> float:
        m = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        assert m, out
        return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"{url}: {errors.group(1)} failed requests\n{out}")
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), "p50_ms": ms("50"),
            "p99_ms": ms("99")}


def wait_ready(base: str, proc: subprocess.Popen, log: Path, models=tuple(MODELS)) -> None:
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited:\n{log.read_text()[-3000:]}")
        try:
            if all(requests.get(f"{base}/v2/models/{m}/ready", timeout=1).status_code == 200 for m in models):
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"not ready:\n{log.read_text()[-3000:]}")


def start(cmd: list[str], env: dict, base: str, log: Path, models=tuple(MODELS)) -> subprocess.Popen:
    with log.open("w") as f:
        p = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    wait_ready(base, p, log, models)
    return p


def stop(p: subprocess.Popen) -> None:
    os.killpg(p.pid, signal.SIGTERM)
    try:
        p.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)


def triton_setup(work: Path) -> Path:
    """triton-peer.sh's venv and backend folder, with numpy linked where the stub imports it."""
    onnx = ROOT / "examples" / "models" / "simple_mlp" / "1" / "model.onnx"
    setup = subprocess.run(["bash", str(TRITON_PEER), str(work), str(onnx), str(free_port()), str(free_port()),
                            str(free_port())], capture_output=True, text=True, timeout=1800)
    if setup.returncode != 0:
        raise RuntimeError(setup.stdout + setup.stderr)
    os.kill(int(setup.stdout.strip().splitlines()[-1]), signal.SIGTERM)
    py = work / "venv" / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import site; print(site.getsitepackages()[0])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    backend = work / "backends" / "python"
    for item in [site / "numpy", site / "numpy.libs", *site.glob("numpy-*.dist-info")]:
        link = backend / item.name
        if not link.exists():
            link.symlink_to(item)
    time.sleep(2)
    return py


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inferd", required=True, type=Path)
    ap.add_argument("--triton-work", type=Path, default=Path.home() / ".cache/inferd/triton")
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    work = a.triton_work.resolve()
    py = triton_setup(work)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        repo = repository(tmp / "models")
        runs: dict[tuple[str, str], list[dict]] = {}
        for round_ in range(2):
            for server in ("inferd", "triton"):
                port = free_port()
                base = f"http://127.0.0.1:{port}"
                log = tmp / f"{server}-{round_}.log"
                if server == "inferd":
                    cmd = [str(a.inferd), "serve", "--model-repository", str(repo), "--http-address", "127.0.0.1",
                           "--http-port", str(port), "--grpc-port", "0", "--metrics-port", "0",
                           "--python-executable", str(py)]
                    env = dict(os.environ)
                else:
                    cmd, env = triton_command(work, port)
                    cmd = [c if not c.startswith("--model-repository=") else f"--model-repository={repo}" for c in cmd]
                p = start(cmd, env, base, log)
                try:
                    for model in MODELS:
                        url = f"{base}/v2/models/{model}/infer"
                        wrk(url, body(model), a.connections, 2)
                        r = wrk(url, body(model), a.connections, a.seconds)
                        runs.setdefault((server, model), []).append(r)
                        print(f"{server:7s} {model:16s} {r['rps']:8.0f} req/s  p50 {r['p50_ms']:.2f} ms  "
                              f"p99 {r['p99_ms']:.2f} ms", flush=True)
                finally:
                    stop(p)
    best = {k: max(v, key=lambda r: r["rps"]) for k, v in runs.items()}
    print(f"\nPython backend, add_sub model.py, wrk -t2 -c{a.connections}, HTTP/JSON, {a.seconds} s, "
          f"{date.today()}\n")
    print("| model | Triton req/s | inferd req/s | ratio | Triton p99 ms | inferd p99 ms | p99 ratio |")
    print("|---|---|---|---|---|---|---|")
    for model in MODELS:
        t, i = best[("triton", model)], best[("inferd", model)]
        print(f"| {model} | {t['rps']:.0f} | {i['rps']:.0f} | {i['rps'] / t['rps']:.2f}x | {t['p99_ms']:.2f} | "
              f"{i['p99_ms']:.2f} | {i['p99_ms'] / t['p99_ms']:.2f} |")
    if a.out:
        a.out.write_text(json.dumps({f"{s}/{m}": v for (s, m), v in runs.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
