#!/usr/bin/env python3
"""inferd against its peers, side by side in one run, on this machine.

    bench/run.sh [--quick] [--scenario overhead|batching|batch64|inprocess ...]

Scenarios (each measured in the same run as the numbers it is compared with):
- inprocess: the model through the engine API and through the bare backend (inferd-bench),
  batch 1 and batch 64: the ceiling.
- overhead:  the 1-row 64-256-256-10 MLP (mlp_small). perf_analyzer concurrency sweep over HTTP
  and gRPC against inferd and NVIDIA Triton 2.51 (shared/testbed/triton-peer.sh); `hey` with the
  same KServe v2 JSON request against inferd, Triton and FastAPI + uvicorn + onnxruntime; `h2load`
  (nghttp2's lighter load generator) with that request over HTTP/1.1 against the same three, and
  with the same tensor as a gRPC ModelInfer over HTTP/2 against inferd and Triton.
- batching:  the compute-bound MLP (mlp_large, about 1 ms at batch 1) with dynamic batching and
  without (mlp_large_nobatch), gRPC, concurrency sweep up to 32; Triton on the same file.
- batch64:   client batch 64 over gRPC against inferd, concurrency sweep up to 16: rows/s next to
  the in-process ceiling (at the start of the run, and again just before each point).

Writes bench/results/latest.md (tables, ratios, the commands, machine facts), latest.json and
throughput_latency.png. Servers and load generators share this machine's cores.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
PA_VENV = Path(os.environ.get("PA_VENV", Path.home() / ".cache/inferd/pa-venv"))
TRITON_WORK = Path(os.environ.get("TRITON_WORK", Path.home() / ".cache/inferd/triton"))
TRITON_PEER = Path(os.environ.get("TRITON_PEER", ROOT.parent / "shared/testbed/triton-peer.sh"))
TRITON_PORTS = (18100, 18101, 18102)
FASTAPI_PORT = 18110

commands: list[str] = []


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    commands.append(" ".join(str(c) for c in cmd))
    return subprocess.run(cmd, check=False, text=True, capture_output=True, **kw)


def wait_http(url: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except Exception:  # noqa: BLE001
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout}s")


class Inferd:
    """The `--profile dist` `inferd` on ephemeral ports, ready; its log in `out/inferd.log`."""

    def __init__(self, repo: Path, out: Path, extra: list[str] | tuple[str, ...] = ()):
        self.log_path = out / "inferd.log"
        self.log = open(self.log_path, "w")
        cmd = [str(TARGET / "dist/inferd"), "serve", "--model-repository", str(repo),
               "--http-address", "127.0.0.1", "--grpc-address", "127.0.0.1", "--http-port", "0", "--grpc-port", "0",
               "--metrics-port", "0", *extra]
        commands.append(" ".join(cmd))
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log, text=True)
        addrs = {}
        while len(addrs) < 2:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("inferd exited early; see inferd.log")
            m = re.match(r"(HTTP|gRPC) listening on (\S+)", line)
            if m:
                addrs[m.group(1)] = m.group(2)
        self.http, self.grpc = addrs["HTTP"], addrs["gRPC"]
        wait_http(f"http://{self.http}/v2/health/ready")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Triton:
    """NVIDIA Triton 2.51 serving one ONNX file as model 'peer_onnx'."""

    def __init__(self, onnx: Path):
        self.pid = None
        cmd = ["bash", str(TRITON_PEER), str(TRITON_WORK), str(onnx), *map(str, TRITON_PORTS)]
        r = run(cmd)
        if r.returncode != 0:
            raise RuntimeError(f"triton peer failed: {r.stderr[-2000:]}")
        self.pid = int(r.stdout.strip().splitlines()[-1])
        self.http = f"127.0.0.1:{TRITON_PORTS[0]}"
        self.grpc = f"127.0.0.1:{TRITON_PORTS[1]}"

    def stop(self) -> None:
        if self.pid:
            try:
                os.kill(self.pid, signal.SIGTERM)
                for _ in range(100):
                    os.kill(self.pid, 0)
                    time.sleep(0.1)
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


class FastApi:
    def __init__(self, name: str, onnx: Path, out: Path):
        self.log = open(out / "fastapi.log", "w")
        cmd = [sys.executable, str(ROOT / "bench/peers/fastapi_peer.py"), name, str(onnx), str(FASTAPI_PORT)]
        commands.append(" ".join(cmd))
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=self.log)
        self.http = f"127.0.0.1:{FASTAPI_PORT}"
        wait_http(f"http://{self.http}/v2/health/ready")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def inferd_bench(repo: Path, model: str, batches: list[int], seconds: float, *extra: str) -> list[dict]:
    """The in-process rows (backend, engine, engine_blocking) of `inferd-bench`."""
    r = run([str(TARGET / "dist/inferd-bench"), "--repository", str(repo), "--model", model,
             "--batch", ",".join(map(str, batches)), "--seconds", str(seconds), *extra])
    return [json.loads(ln) for ln in r.stdout.splitlines() if ln.startswith("{")]


def backend_ceiling(repo: Path, model: str, batch: int, seconds: float) -> float | None:
    """Rows/s of the bare backend at one batch size."""
    rows = inferd_bench(repo, model, [batch], seconds, "--backend-only")
    return rows[0]["rows_per_s"] if rows else None


def model_stats(http: str, model: str) -> dict:
    """The model's entry in the statistics extension (inferd and Triton)."""
    with urllib.request.urlopen(f"http://{http}/v2/models/{model}/stats", timeout=10) as r:
        return json.load(r)["model_stats"][0]


def served(http: str, model: str) -> int | None:
    """Requests the model has answered successfully."""
    try:
        return model_stats(http, model)["inference_stats"]["success"]["count"]
    except Exception:  # noqa: BLE001
        return None


def machine_busy_s() -> float:
    """CPU seconds all cores have spent busy since boot (user, nice, system, irq, softirq)."""
    with open("/proc/stat") as f:
        cpu = f.readline().split()
    return sum(int(cpu[i]) for i in (1, 2, 3, 6, 7)) / os.sysconf("SC_CLK_TCK")


class CpuSplit:
    """The machine's CPU per served request over a load run, split into the load generator's own
    (a child of this process: its rusage) and the rest, which is the server's: client and server
    share the cores, so a server's requests/s depends on both."""

    def __init__(self, http: str | None, model: str):
        self.http, self.model = http, model

    def __enter__(self) -> "CpuSplit":
        self.n0 = served(self.http, self.model) if self.http else None
        self.busy0, self.child0 = machine_busy_s(), self._children()
        return self

    @staticmethod
    def _children() -> float:
        t = os.times()
        return t.children_user + t.children_system

    def __exit__(self, *exc) -> None:
        self.busy, self.child = machine_busy_s() - self.busy0, self._children() - self.child0
        self.n = (served(self.http, self.model) or 0) - self.n0 if self.n0 is not None else 0

    def per_request(self) -> dict:
        if self.n <= 0:
            return {}
        return {"client_us": round(self.child * 1e6 / self.n, 1),
                "server_us": round((self.busy - self.child) * 1e6 / self.n, 1)}


def perf_analyzer(model: str, url: str, proto: str, conc: int, batch: int, out: Path, seconds: float,
                  stats_http: str | None = None) -> dict | None:
    """One perf_analyzer point; with `stats_http` (the server's HTTP address), also the CPU per
    served request of perf_analyzer and of the server (see CpuSplit)."""
    site = next((PA_VENV / "lib").glob("python3*/site-packages"))
    env = dict(os.environ, LD_LIBRARY_PATH=f"{site}/nvidia/cuda_runtime/lib")
    csv_path = out / f"pa-{model}-{proto}-{url.replace(':', '_')}-c{conc}-b{batch}.csv"
    # This VM's throughput drifts; when no run of windows is stable, try once more with windows
    # twice as long, and more of them, rather than leave the point out.
    for interval, trials in ((seconds, 6), (2 * seconds, 10)):
        csv_path.unlink(missing_ok=True)
        cmd = [str(PA_VENV / "bin/perf_analyzer"), "-m", model, "-x", "1", "-u", url, "-i", proto, "-b", str(batch),
               "--concurrency-range", str(conc), "--measurement-interval", str(int(interval * 1000)),
               "--stability-percentage", "25", "--max-trials", str(trials), "-f", str(csv_path)]
        with CpuSplit(stats_http, model) as cpu:
            r = run(cmd, env=env, timeout=600)
        if r.returncode == 0 and csv_path.exists():
            break
        log(f"perf_analyzer failed ({proto} {url} c{conc}, {interval:g} s windows): {(r.stdout + r.stderr)[-400:]}")
    else:
        return None
    row = list(csv.DictReader(open(csv_path)))[-1]
    ips = float(row["Inferences/Second"])
    return {"rps": ips / batch, "rows_per_s": ips, "p50_us": int(row["p50 latency"]), "p99_us": int(row["p99 latency"]),
            **cpu.per_request()}


def batch_stats(http: str, model: str) -> dict[int, tuple[int, int]]:
    """Per executed batch size: (executions, compute ns), from the statistics extension."""
    stats = model_stats(http, model)["batch_stats"]
    return {b["batch_size"]: (b["compute_infer"]["count"], b["compute_infer"]["ns"]) for b in stats}


def executed_batches(before: dict, after: dict) -> dict:
    """Executions, mean batch size and mean compute time per batch between two snapshots."""
    runs = rows = ns = 0
    for size, (count, total) in after.items():
        c0, n0 = before.get(size, (0, 0))
        runs += count - c0
        rows += size * (count - c0)
        ns += total - n0
    if not runs:
        return {}
    return {"batches": runs, "mean_batch": round(rows / runs, 1), "batch_compute_us": round(ns / runs / 1000)}


def hey(url: str, body: Path, conc: int, seconds: float, stats: tuple[str, str] | None = None) -> dict | None:
    """One `hey` point; with `stats` (the server's HTTP address and model), the CPU split too."""
    cmd = ["hey", "-z", f"{seconds}s", "-c", str(conc), "-m", "POST", "-T", "application/json", "-D", str(body), url]
    with CpuSplit(*(stats or (None, ""))) as cpu:
        r = run(cmd, timeout=seconds + 60)
    text = r.stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    p50 = re.search(r"50% in ([\d.]+) secs", text)
    p99 = re.search(r"99% in ([\d.]+) secs", text)
    codes = re.findall(r"\[(\d{3})\]\s+(\d+) responses", text)
    bad = sum(int(n) for code, n in codes if code != "200")
    if not m or not p50 or not p99:
        log(f"hey failed for {url}: {text[-400:]} {r.stderr[-400:]}")
        return None
    return {"rps": float(m.group(1)), "p50_us": int(float(p50.group(1)) * 1e6),
            "p99_us": int(float(p99.group(1)) * 1e6), "non_200": bad, **cpu.per_request()}


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(num: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(num << 3 | 2) + _varint(len(payload)) + payload


def grpc_infer_body(model: str, width: int, rows: int = 1) -> bytes:
    """One KServe v2 `ModelInferRequest` (FP32 input "input" of shape [rows, width], raw contents of
    0.25s) as a gRPC message frame: what a client puts in the HTTP/2 DATA frame. Field numbers
    from the protocol's grpc_service.proto: request model_name 1, inputs 5, raw_input_contents 7;
    tensor name 1, datatype 2, shape 3 (packed int64)."""
    shape = _varint(rows) + _varint(width)
    tensor = _field(1, b"input") + _field(2, b"FP32") + _field(3, shape)
    raw = struct.pack(f"<{rows * width}f", *([0.25] * (rows * width)))
    msg = _field(1, model.encode()) + _field(5, tensor) + _field(7, raw)
    return b"\0" + struct.pack(">I", len(msg)) + msg


def grpc_body_file(out: Path, model: str, width: int, rows: int = 1) -> Path:
    """`grpc_infer_body` written once to a file, for h2load's `-d`."""
    path = out / f"{model}-{rows}x{width}.grpc"
    path.write_bytes(grpc_infer_body(model, width, rows))
    return path


def model_infer_url(grpc: str) -> str:
    """The URL of the KServe v2 ModelInfer method at a gRPC address, as h2load posts to it."""
    return f"http://{grpc}/inference.GRPCInferenceService/ModelInfer"


def h2load(url: str, body: Path, conc: int, seconds: float, grpc: bool, out: Path,
           stats: tuple[str, str] | None = None) -> dict | None:
    """One `h2load` point (nghttp2's load generator, one C thread on an event loop: a lighter
    client than perf_analyzer or hey): `conc` connections with one request in flight on each,
    HTTP/1.1 for the REST endpoint, or HTTP/2 with gRPC's headers for ModelInfer. Percentiles
    come from its per-request log. gRPC answers errors with HTTP 200 and a grpc-status trailer,
    which h2load does not read, so with `stats` (the server's HTTP address and model) the
    requests h2load counts are checked against the model's success count."""
    log_path = out / "h2load.log"
    log_path.unlink(missing_ok=True)  # h2load appends to its log
    cmd = ["h2load", "-c", str(conc), "-m", "1", "-D", str(int(seconds)), "--log-file", str(log_path), "-d", str(body)]
    cmd += ["-H", "content-type: application/grpc", "-H", "te: trailers"] if grpc else \
        ["--h1", "-H", "content-type: application/json"]
    with CpuSplit(*(stats or (None, ""))) as cpu:
        r = run(cmd + [url], timeout=seconds + 60)
    rps = re.search(r"finished in [\d.]+s, ([\d.]+) req/s", r.stdout)
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", r.stdout)
    times = sorted(int(ln.split("\t")[2]) for ln in log_path.read_text().splitlines()) if log_path.exists() else []
    if r.returncode != 0 or not rps or not done or not times:
        log(f"h2load failed for {url}: {r.stdout[-400:]} {r.stderr[-400:]}")
        return None
    # Requests h2load saw answered without a 2xx status, plus (gRPC) those the server did not
    # count as successes: a served count at or above h2load's means every answer was a success.
    failed = int(done.group(1)) - int(done.group(2))
    if grpc and stats:
        failed += max(0, int(done.group(2)) - cpu.n)
    return {"rps": float(rps.group(1)), "p50_us": times[len(times) // 2], "p99_us": times[int(len(times) * 0.99)],
            "non_200": failed, **cpu.per_request()}


def machine() -> str:
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    mem = next((ln.split()[1] for ln in open("/proc/meminfo") if ln.startswith("MemTotal")), "0")
    return f"{os.cpu_count()} cores ({cpu}), {int(mem) // 1024 // 1024} GiB, {platform.system()} {platform.release()}"


def table(rows: list[dict], cols: list[str]) -> str:
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="shorter windows, fewer concurrencies")
    ap.add_argument("--scenario", action="append", choices=["inprocess", "overhead", "batching", "batch64"])
    ap.add_argument("--no-triton", action="store_true")
    args = ap.parse_args()
    scenarios = args.scenario or ["inprocess", "overhead", "batching", "batch64"]
    seconds = 2.0 if args.quick else 4.0
    sweep = [1, 4, 8] if args.quick else [1, 2, 4, 8, 16]
    big_sweep = [1, 8, 32] if args.quick else [1, 4, 8, 16, 32]
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = Path(tempfile.mkdtemp(prefix="inferd-bench-"))
    repo = ROOT / "bench/models/repo"
    r = run([sys.executable, str(ROOT / "bench/models/generate.py"), str(repo)])
    if r.returncode != 0:
        raise RuntimeError(r.stderr)
    small, large = repo / "mlp_small/1/model.onnx", repo / "mlp_large/1/model.onnx"
    res: dict = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M:%S"), "args": sys.argv[1:]}

    if "inprocess" in scenarios:
        log("in-process ceiling")
        rows = []
        for model in ("mlp_small", "mlp_large"):
            rows += inferd_bench(repo, model, [1, 64], seconds)
        res["inprocess"] = rows

    if "overhead" in scenarios or "batch64" in scenarios or "batching" in scenarios:
        inferd = Inferd(repo, out)
    else:
        inferd = None
    try:
        if "overhead" in scenarios:
            log("overhead-bound MLP: perf_analyzer sweeps")
            rows = []
            triton = None if args.no_triton else Triton(small)
            fastapi = FastApi("mlp_small", small, out)
            try:
                servers = [("inferd", "mlp_small", inferd)] + ([("triton", "peer_onnx", triton)] if triton else [])
                # Servers take turns at each point, so a ratio compares measurements a few
                # seconds apart: this VM drifts by tens of percent over a run's minutes.
                for proto in ("http", "grpc"):
                    for c in sweep:
                        for name, model, srv in servers:
                            url = srv.http if proto == "http" else srv.grpc
                            m = perf_analyzer(model, url, proto, c, 1, out, seconds, srv.http)
                            if m:
                                rows.append({"server": name, "tool": "perf_analyzer", "protocol": proto, "concurrency": c, **m})
                body = out / "small.json"
                body.write_text(json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                                                        "data": [0.25] * 64}]}))
                hey_targets = [("inferd", f"http://{inferd.http}/v2/models/mlp_small/infer", (inferd.http, "mlp_small"))]
                if triton:
                    hey_targets.append(("triton", f"http://{triton.http}/v2/models/peer_onnx/infer",
                                        (triton.http, "peer_onnx")))
                # The FastAPI peer has no statistics endpoint: no CPU split for it.
                hey_targets.append(("fastapi", f"http://{fastapi.http}/v2/models/mlp_small/infer", None))
                for c in sweep:
                    for name, url, stats in hey_targets:
                        m = hey(url, body, c, seconds, stats)
                        if m:
                            rows.append({"server": name, "tool": "hey", "protocol": "http", "concurrency": c, **m})
                # h2load, the lighter client, over HTTP/1.1 (the same JSON request) and gRPC.
                grpc_targets = [(name, model_infer_url(srv.grpc), (srv.http, model)) for name, model, srv in servers]
                bodies = {name: grpc_body_file(out, model, 64) for name, model, _ in servers}
                for c in sweep:
                    for name, url, stats in hey_targets:
                        m = h2load(url, body, c, seconds, False, out, stats)
                        if m:
                            rows.append({"server": name, "tool": "h2load", "protocol": "http", "concurrency": c, **m})
                    for name, url, stats in grpc_targets:
                        m = h2load(url, bodies[name], c, seconds, True, out, stats)
                        if m:
                            rows.append({"server": name, "tool": "h2load", "protocol": "grpc", "concurrency": c, **m})
            finally:
                fastapi.stop()
                if triton:
                    triton.stop()
            res["overhead"] = rows

        if "batching" in scenarios:
            log("compute-bound MLP: batching on and off")
            rows = []
            triton = None if args.no_triton else Triton(large)
            try:
                # Batching on, off and Triton take turns at each concurrency (see above).
                for c in big_sweep:
                    for model in ("mlp_large", "mlp_large_nobatch"):
                        before = batch_stats(inferd.http, model)
                        m = perf_analyzer(model, inferd.grpc, "grpc", c, 1, out, seconds)
                        if m:
                            # The batches this point executed (server statistics, diffed): the
                            # target's "two batch compute times" is measured, not assumed.
                            m.update(executed_batches(before, batch_stats(inferd.http, model)))
                            rows.append({"server": "inferd", "tool": "perf_analyzer", "model": model, "protocol": "grpc",
                                         "concurrency": c, **m})
                    if triton:
                        m = perf_analyzer("peer_onnx", triton.grpc, "grpc", c, 1, out, seconds)
                        if m:
                            rows.append({"server": "triton", "tool": "perf_analyzer", "model": "mlp_large", "protocol": "grpc",
                                         "concurrency": c, **m})
                # The same sweep under h2load, whose requests come back within microseconds of
                # an answer, so a batch's rows arrive together rather than spread over the
                # client's CPU time.
                models = ("mlp_large", "mlp_large_nobatch")
                bodies = {model: grpc_body_file(out, model, 1024) for model in models + ("peer_onnx",)}
                for c in big_sweep:
                    for model in models:
                        before = batch_stats(inferd.http, model)
                        m = h2load(model_infer_url(inferd.grpc), bodies[model], c, seconds, True, out,
                                   (inferd.http, model))
                        if m:
                            m.update(executed_batches(before, batch_stats(inferd.http, model)))
                            rows.append({"server": "inferd", "tool": "h2load", "model": model, "protocol": "grpc",
                                         "concurrency": c, **m})
                    if triton:
                        m = h2load(model_infer_url(triton.grpc), bodies["peer_onnx"], c, seconds, True, out,
                                   (triton.http, "peer_onnx"))
                        if m:
                            rows.append({"server": "triton", "tool": "h2load", "model": "mlp_large", "protocol": "grpc",
                                         "concurrency": c, **m})
            finally:
                if triton:
                    triton.stop()
            res["batching"] = rows

        if "batch64" in scenarios:
            log("client batch 64 over gRPC")
            rows = []
            body = grpc_body_file(out, "mlp_small", 64, 64)
            for c in sweep:
                # The ceiling again, just before each point (the served server idle): the VM's
                # speed drifts over a run's minutes, so the start-of-run ceiling alone can be
                # measured on a quicker or slower machine than the point it is compared with.
                ceiling = backend_ceiling(repo, "mlp_small", 64, seconds / 2)
                m = perf_analyzer("mlp_small", inferd.grpc, "grpc", c, 64, out, seconds, inferd.http)
                if m:
                    rows.append({"server": "inferd", "tool": "perf_analyzer", "protocol": "grpc", "batch": 64,
                                 "concurrency": c, **m, "ceiling_rows_per_s": ceiling})
                m = h2load(model_infer_url(inferd.grpc), body, c, seconds, True, out, (inferd.http, "mlp_small"))
                if m:
                    rows.append({"server": "inferd", "tool": "h2load", "protocol": "grpc", "batch": 64, "concurrency": c,
                                 **m, "rows_per_s": m["rps"] * 64, "ceiling_rows_per_s": ceiling})
            res["batch64"] = rows
    finally:
        if inferd:
            inferd.stop()

    res["commands"] = commands
    (RESULTS / "latest.json").write_text(json.dumps(res, indent=1))
    report(res)
    shutil.rmtree(out, ignore_errors=True)
    return 0


def best(rows: list[dict], **match) -> dict | None:
    cand = [r for r in rows if all(r.get(k) == v for k, v in match.items())]
    return max(cand, key=lambda r: r["rps"]) if cand else None


def cpu_comparison(i: dict, p: dict) -> str:
    """The CPU split behind a requests/s ratio, and the ratio a free server would reach."""
    if not all(k in r for r in (i, p) for k in ("client_us", "server_us")):
        return ""
    bound = (p["client_us"] + p["server_us"]) / i["client_us"]
    return (f"; server CPU per request {i['server_us']} us vs {p['server_us']} us (the peer's is "
            f"**{p['server_us'] / i['server_us']:.2f}x** inferd's), the load generator's own {i['client_us']} us vs "
            f"{p['client_us']} us, so a server that took no CPU at all would reach {bound:.2f}x")


def report(res: dict) -> None:
    md = [f"# Benchmark run {res['date']}", "", f"Machine: {res['machine']}. Servers and load generators share the cores.",
          f"Command: `bench/run.sh {' '.join(res['args'])}`", ""]
    if "inprocess" in res:
        md += ["## In-process ceiling (inferd-bench)", "",
               table(res["inprocess"], ["model", "path", "batch", "calls_per_s", "rows_per_s", "p50_us", "p99_us"]), ""]
    ratios = []
    if "overhead" in res:
        rows = sorted(res["overhead"], key=lambda r: (r["tool"], r["server"], r["protocol"], r["concurrency"]))
        for r in rows:
            r["rps"] = round(r["rps"])
        md += ["## Overhead-bound MLP (mlp_small, 1 row per request)", "",
               "client_us and server_us: the machine's CPU time per served request during the point, taken by "
               "the load generator and by everything else (the server); the two share the cores.", "",
               "non_200 (hey and h2load): answers that were not successes.", "",
               table(rows, ["tool", "server", "protocol", "concurrency", "rps", "p50_us", "p99_us", "client_us",
                            "server_us", "non_200"]), ""]
        for tool, proto in (("perf_analyzer", "http"), ("perf_analyzer", "grpc"), ("hey", "http"), ("h2load", "http"),
                            ("h2load", "grpc")):
            i = best(rows, tool=tool, server="inferd", protocol=proto)
            for peer in ("triton", "fastapi"):
                p = best(rows, tool=tool, server=peer, protocol=proto)
                if i and p:
                    ratios.append(f"- {tool} {proto}: inferd {i['rps']:.0f} req/s (c{i['concurrency']}) vs {peer} "
                                  f"{p['rps']:.0f} (c{p['concurrency']}): **{i['rps'] / p['rps']:.2f}x**; p99 at those points "
                                  f"{i['p99_us']} us vs {p['p99_us']} us ({i['p99_us'] / max(p['p99_us'], 1):.2f}x)"
                                  + cpu_comparison(i, p))
    if "batching" in res:
        rows = sorted(res["batching"], key=lambda r: (r.get("tool", "perf_analyzer"), r["server"], r["model"],
                                                      r["concurrency"]))
        for r in rows:
            r["rps"] = round(r["rps"])
        md += ["## Compute-bound MLP (mlp_large): dynamic batching on and off", "",
               table(rows, ["tool", "server", "model", "protocol", "concurrency", "rps", "p50_us", "p99_us",
                            "mean_batch", "batch_compute_us"]), ""]
        for tool in ("perf_analyzer", "h2load"):
            at32 = {r["model"]: r for r in rows if r.get("tool", "perf_analyzer") == tool and r["server"] == "inferd"
                    and r["concurrency"] == 32}
            on, off = at32.get("mlp_large"), at32.get("mlp_large_nobatch")
            if not (on and off):
                continue
            bound = ""
            if on.get("batch_compute_us"):
                limit = 2000 + 2 * on["batch_compute_us"]
                bound = (f"; bound max_queue_delay + 2 x mean batch compute = 2000 + 2 x {on['batch_compute_us']} = "
                         f"{limit} us (batches of {on['mean_batch']} rows on average): p99 is "
                         f"**{on['p99_us'] / limit:.2f}x** the bound")
            ratios.append(f"- {tool} batching at concurrency 32: {on['rps']} vs {off['rps']} req/s: "
                          f"**{on['rps'] / off['rps']:.2f}x**; p99 {on['p99_us']} us (max_queue_delay 2000 us){bound}")
    if "batch64" in res:
        rows = sorted(res["batch64"], key=lambda r: (r.get("tool", "perf_analyzer"), r["concurrency"]))
        for r in rows:
            r["rows_per_s"] = round(r["rows_per_s"])
        md += ["## Client batch 64 over gRPC (mlp_small)", "",
               "ceiling_rows_per_s: the in-process backend at batch 64, measured just before the point.", "",
               table(rows, ["tool", "server", "protocol", "batch", "concurrency", "rows_per_s", "p50_us", "p99_us",
                            "client_us", "server_us", "ceiling_rows_per_s"]), ""]
        ceiling = next((r for r in res.get("inprocess", []) if r["model"] == "mlp_small" and r["path"] == "backend" and r["batch"] == 64), None)
        for tool in ("perf_analyzer", "h2load"):
            cand = [r for r in rows if r.get("tool", "perf_analyzer") == tool]
            top = max(cand, key=lambda r: r["rows_per_s"]) if cand else None
            if not (ceiling and top):
                continue
            line = (f"- {tool} batch 64 over gRPC: {top['rows_per_s']} rows/s (c{top['concurrency']}) vs in-process "
                    f"backend ceiling {ceiling['rows_per_s']:.0f} (start of run): "
                    f"**{top['rows_per_s'] / ceiling['rows_per_s']:.0%}**")
            if top.get("ceiling_rows_per_s"):
                line += (f"; vs the ceiling measured just before that point, {top['ceiling_rows_per_s']:.0f}: "
                         f"**{top['rows_per_s'] / top['ceiling_rows_per_s']:.0%}**")
            ratios.append(line)
    if ratios:
        md += ["## Ratios (this run)", ""] + ratios + [""]
    md += ["## Commands", "", "```"] + res["commands"] + ["```", ""]
    (RESULTS / "latest.md").write_text("\n".join(md))
    plot(res)
    print("\n".join(md))


def plot(res: dict) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib missing: no plot")
        return
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    # One colour per server and protocol (or model), one line style per load generator: with
    # three tools, the default colour cycle would give two series the same colour.
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    dashes = {"h2load": "-", "perf_analyzer": "--", "hey": ":"}

    def draw(row: int, key: str, rows_in: list[dict]) -> None:
        series: dict[tuple[str, str], list] = {}
        for r in rows_in:
            series.setdefault((f"{r['server']} {r[key]}", r.get("tool", "perf_analyzer")), []).append(r)
        colours = {name: palette[i % len(palette)] for i, name in enumerate(sorted({n for n, _ in series}))}
        for (name, tool), rows in sorted(series.items()):
            rows.sort(key=lambda r: r["concurrency"])
            xs = [r["concurrency"] for r in rows]
            style = {"marker": "o", "color": colours[name], "linestyle": dashes.get(tool, "-.")}
            axes[row][0].plot(xs, [r["rps"] for r in rows], label=f"{name} ({tool})", **style)
            axes[row][1].plot(xs, [r["p99_us"] / 1000 for r in rows], label=f"{name} ({tool})", **style)

    draw(0, "protocol", res.get("overhead", []))
    axes[0][0].set_title("mlp_small: requests/s")
    axes[0][1].set_title("mlp_small: p99 latency (ms)")
    draw(1, "model", res.get("batching", []))
    axes[1][0].set_title("mlp_large (gRPC): requests/s")
    axes[1][1].set_title("mlp_large (gRPC): p99 latency (ms)")
    for ax in axes.flat:
        ax.set_xlabel("concurrency")
        ax.set_xscale("log", base=2)
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.suptitle(f"inferd vs peers, {res['date']} — {res['machine']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(RESULTS / "throughput_latency.png", dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
