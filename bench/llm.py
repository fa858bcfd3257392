#!/usr/bin/env python3
"""LLM serving side by side, in one run, with the real ``openai`` client: inferd and (when its
binary is given) llama.cpp's ``llama-server`` on the same GGUF, same thread count.

Workloads: N concurrent streams (default 1, 8 and 32), each a short prompt and ``--tokens`` new
tokens, greedy, end-of-sequence ignored so every stream generates the same count. Reported per
server and concurrency: aggregate tokens/s, time to first token (p50, p99), inter-token latency
(p50), and the share of the machine's roofline reached: decode reads every weight once per step
for all running streams, so a step cannot beat (weight bytes / memory bandwidth) nor (FLOPs /
peak FLOP/s); both the bandwidth and the peak are measured by this harness (numpy copies and a
matrix product on all cores) and the weight bytes are what each server reads per step (inferd:
the file's 4-bit blocks kept, other tensors in 8-bit blocks; llama-server: the file's own tensors). Prefill is reported
apart: the unique-prefix TTFT of ~500 prompt tokens as FLOP/s against the measured peak.

inferd only: KV-cache waste (``inferd_llm_kv_cache_waste_ratio`` sampled while streams run) and
capacity against a contiguous allocation: at a KV budget that holds ``--contiguous-seqs``
sequences of ``--max-model-len`` tokens laid out contiguously, how many sequences run at once.
A results table goes to stdout and, with ``--out``, to a Markdown file.

    python bench/llm.py --inferd target/release/inferd --gguf SmolLM2-135M-Instruct.Q4_1.gguf \
        [--llama-server ~/.cache/inferd/llama/build/bin/llama-server] [--streams 1,8] [--tokens 128] \
        [--vllm-python ~/.cache/inferd/vllm/venv/bin/python --hf-dir ~/.cache/inferd/models/smollm2-hf]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import openai
import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 300) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with {proc.returncode}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return time.monotonic() - start
        except requests.RequestException:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} not ready after {timeout} s")


def start_inferd(binary: str, gguf: str, tmp: Path, *extra: str, block_size: int | None = None,
                 activations: str | None = None, weights: str | None = None):
    repo = tmp / "models"
    (repo / "llm" / "1").mkdir(parents=True)
    shutil.copy(gguf, repo / "llm" / "1" / "model.gguf")
    params = {"block_size": block_size, "activations": activations, "weights": weights}
    entries = [f'{{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in params.items() if v]
    if entries:
        (repo / "llm" / "config.pbtxt").write_text(f'backend: "llm"\nparameters [ {", ".join(entries)} ]\n')
    port = free_port()
    proc = subprocess.Popen([binary, "serve", "--model-repository", str(repo), "--http-port", str(port),
                             "--grpc-port", "0", "--metrics-port", "0", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ready = wait_ready(f"http://127.0.0.1:{port}/v2/health/ready", proc)
    return proc, f"http://127.0.0.1:{port}/v1", "llm", ready


def start_llama(binary: str, gguf: str, streams: int):
    port = free_port()
    threads = str(os.cpu_count() or 2)
    proc = subprocess.Popen([binary, "-m", gguf, "--host", "127.0.0.1", "--port", str(port), "-c", "16384",
                             "--parallel", str(max(streams, 1)), "-t", threads],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ready = wait_ready(f"http://127.0.0.1:{port}/health", proc)
    return proc, f"http://127.0.0.1:{port}/v1", "llm", ready


class Gauges(threading.Thread):
    """Samples inferd's LLM gauges every 50 ms while a workload runs."""

    NAMES = ("inferd_llm_requests_running", "inferd_llm_kv_cache_waste_ratio", "inferd_llm_kv_cache_blocks_used")

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.samples, self.done = url, [], threading.Event()

    def run(self):
        while not self.done.is_set():
            try:
                page = requests.get(self.url, timeout=5).text
            except requests.RequestException:
                continue
            got = {}
            for line in page.splitlines():
                for n in self.NAMES:
                    if line.startswith(n + "{"):
                        got[n] = float(line.rsplit(" ", 1)[1])
            if len(got) == len(self.NAMES):
                self.samples.append(got)
            time.sleep(0.05)

    def stop(self) -> list[dict]:
        self.done.set()
        self.join()
        return self.samples


def start_vllm(python: str, hf_dir: str, streams: int):
    """vLLM's CPU build (its own venv: see ../shared/TESTBED.md) on HF-format weights in bf16."""
    port = free_port()
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="2", VLLM_CPU_NUM_OF_RESERVED_CPU="0", HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([python, "-m", "vllm.entrypoints.openai.api_server", "--model", hf_dir,
                             "--served-model-name", "llm", "--dtype", "bfloat16", "--max-model-len", "2048",
                             "--max-num-seqs", str(max(streams, 8)), "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    ready = wait_ready(f"http://127.0.0.1:{port}/health", proc, timeout=900)
    return proc, f"http://127.0.0.1:{port}/v1", "llm", ready


def run(base: str, model: str, streams: int, tokens: int, metrics: str | None = None) -> dict:
    client = openai.OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=600)
    ttft, itl, counts = [], [], []
    lock = threading.Lock()

    def one(i: int):
        t0 = time.perf_counter()
        first, last, n, gaps = None, None, 0, []
        for chunk in client.completions.create(model=model, prompt=f"Story {i}: once upon a time,", max_tokens=tokens,
                                               temperature=0, stream=True, extra_body={"ignore_eos": True}):
            if chunk.choices and chunk.choices[0].text:
                now = time.perf_counter()
                if first is None:
                    first = now - t0
                else:
                    gaps.append(now - last)
                last = now
                n += 1
        with lock:
            ttft.append(first or 0.0)
            itl.extend(gaps)
            counts.append(n)

    # One warm-up request, then the measured run.
    one(-1)
    ttft.clear(), itl.clear(), counts.clear()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(streams)]
    gauges = Gauges(metrics) if metrics else None
    if gauges:
        gauges.start()
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    samples = gauges.stop() if gauges else []
    ttft.sort()
    busy = [g for g in samples if g["inferd_llm_requests_running"] > 0]
    return {
        "kv_waste_mean": statistics.mean(g["inferd_llm_kv_cache_waste_ratio"] for g in busy) if busy else None,
        "kv_waste_max": max(g["inferd_llm_kv_cache_waste_ratio"] for g in busy) if busy else None,
        "running_max": max(g["inferd_llm_requests_running"] for g in busy) if busy else None,
        "streams": streams,
        # Text chunks, about one per token for both servers on this model.
        "tokens_per_s": sum(counts) / wall,
        "ttft_p50_ms": 1e3 * statistics.median(ttft),
        "ttft_p99_ms": 1e3 * ttft[min(len(ttft) - 1, int(0.99 * len(ttft)))],
        "itl_p50_ms": 1e3 * statistics.median(itl) if itl else float("nan"),
    }


def prefix_ttft(base: str, model: str, shared: bool, n: int = 6) -> float:
    """Median time to first token over `n` sequential chat-style requests whose prompts start
    with one 500-token system prompt (`shared`) or each with its own (a different first word)."""
    client = openai.OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=600)
    system = " ".join(f"rule{i % 50} applies to case {i}." for i in range(70))  # ~500 tokens
    times = []
    for i in range(n + 1):
        head = "" if shared else f"Variant {i}. "
        prompt = f"{head}{system}\nQuestion {i}: what applies?"
        t0 = time.perf_counter()
        for chunk in client.completions.create(model=model, prompt=prompt, max_tokens=2, temperature=0, stream=True):
            if chunk.choices and chunk.choices[0].text:
                break
        if i > 0:  # the first request fills the cache
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def machine_peaks() -> tuple[float, float]:
    """(memory bandwidth bytes/s, f32 FLOP/s) of this machine, best of a few tries on all cores:
    copies of 256 MiB arrays split over one thread per core (numpy releases the GIL; a copy reads
    and writes every byte), and numpy's BLAS on a 2048 x 2048 product."""
    import numpy as np

    cores = os.cpu_count() or 2
    n = (256 << 20) // 4
    src, dst = np.ones(n, dtype=np.float32), np.zeros(n, dtype=np.float32)
    parts = [slice(i * n // cores, (i + 1) * n // cores) for i in range(cores)]
    bw = 0.0
    for _ in range(5):
        threads = [threading.Thread(target=np.copyto, args=(dst[p], src[p])) for p in parts]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        bw = max(bw, 2 * 4 * n / (time.perf_counter() - t0))
    a = np.random.default_rng(0).random((2048, 2048), dtype=np.float32)
    peak = 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        a @ a
        peak = max(peak, 2 * 2048**3 / (time.perf_counter() - t0))
    return bw, peak


def weight_bytes(gguf_path: str) -> dict:
    """What one decode step reads: every 2-D layer tensor and the output projection (the token
    embeddings when tied). `params`: their values; `inferd`: as inferd stores them (the file's
    Q4_0/Q4_1 blocks of 32 values kept in 24 bytes, f32 scale and offset; everything else in
    8-bit blocks of 32 in 36 bytes); `inferd-q8`: all in 8-bit blocks; `llama-server`: the
    file's own bytes."""
    import gguf

    r = gguf.GGUFReader(gguf_path)
    t = {x.name: x for x in r.tensors}
    names = [n for n, x in t.items() if n.startswith("blk.") and len(x.shape) == 2]
    names.append("output.weight" if "output.weight" in t else "token_embd.weight")
    params = sum(int(t[n].n_elements) for n in names)
    four = sum(int(t[n].n_elements) for n in names if t[n].tensor_type.name in ("Q4_0", "Q4_1"))
    return {"params": params, "inferd": four * 24 // 32 + (params - four) * 36 // 32,
            "inferd-q8": params * 36 // 32, "llama-server": sum(int(t[n].n_bytes) for n in names),
            "vllm": params * 2}


def kv_bytes_per_token(gguf_path: str) -> int:
    """f32 keys and values of one token over every layer."""
    import gguf

    r = gguf.GGUFReader(gguf_path)
    arch = bytes(r.fields["general.architecture"].parts[-1]).decode()

    def num(key):
        f = r.fields[f"{arch}.{key}"]
        return int(f.parts[f.data[0]][0])

    d, heads, kv_heads, layers = (num(k) for k in ("embedding_length", "attention.head_count",
                                                   "attention.head_count_kv", "block_count"))
    return 2 * layers * (d // heads) * kv_heads * 4


def capacity(binary: str, gguf_path: str, tmp: Path, seqs: int, max_len: int, streams: int, tokens: int) -> dict:
    """Sequences running at once in a KV budget that holds `seqs` contiguous `max_len` allocations."""
    budget = seqs * max_len * kv_bytes_per_token(gguf_path)
    proc, base, model, _ = start_inferd(binary, gguf_path, tmp, "--llm-kv-cache-bytes", str(budget),
                                        "--llm-max-num-seqs", str(streams))
    try:
        r = run(base, model, streams, tokens, metrics=base.removesuffix("/v1") + "/metrics")
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return {"budget": budget, "contiguous": seqs, "max_len": max_len, "streams": streams, **r}


def prompt_tokens(base: str, model: str) -> int:
    """The prompt length of prefix_ttft's unique-prefix requests, as the server counts it."""
    client = openai.OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=600)
    system = " ".join(f"rule{i % 50} applies to case {i}." for i in range(70))
    r = client.completions.create(model=model, prompt=f"Variant 0. {system}\nQuestion 0: what applies?", max_tokens=1,
                                  temperature=0)
    return r.usage.prompt_tokens


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--inferd", required=True)
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--llama-server")
    ap.add_argument("--int8", action="store_true",
                    help="also inferd with activations: int8 (8-bit activations in decode, opt-in)")
    ap.add_argument("--q8", action="store_true",
                    help="also inferd with weights: q8 (4-bit tensors requantized to 8 bits, as before 2026-12-07)")
    ap.add_argument("--vllm-python", help="a Python with vLLM's CPU build installed")
    ap.add_argument("--hf-dir", help="the same model in HF format (bf16 safetensors), for vLLM")
    ap.add_argument("--streams", default="1,8,32")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--out")
    ap.add_argument("--contiguous-seqs", type=int, default=4,
                    help="capacity scenario: the KV budget holds this many contiguous sequences")
    ap.add_argument("--max-model-len", type=int, default=2048, help="capacity scenario: their length")
    ap.add_argument("--capacity-streams", type=int, default=48)
    ap.add_argument("--idle-starts", type=int, default=3,
                    help="starts of each server after --idle-secs with nothing running (median reported)")
    ap.add_argument("--idle-secs", type=float, default=20.0,
                    help="idle time before each of those starts: on this machine memory first written after "
                         "a few idle seconds costs ~2 ms a MB, so a start straight after another one flatters")
    ap.add_argument("--waste-block-sizes", default="16,4",
                    help="KV waste at 8 streams with each of these block sizes (config block_size)")
    a = ap.parse_args()
    bw, peak = machine_peaks()
    wb = weight_bytes(a.gguf)
    print(f"machine: {bw / 1e9:.1f} GB/s, {peak / 1e9:.1f} GFLOP/s; weights per step: {wb}", file=sys.stderr)
    streams = [int(s) for s in a.streams.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        servers = [("inferd", lambda n: start_inferd(a.inferd, a.gguf, Path(tempfile.mkdtemp(dir=tmp))))]
        if a.int8:
            servers.append(("inferd-int8", lambda n: start_inferd(a.inferd, a.gguf, Path(tempfile.mkdtemp(dir=tmp)),
                                                                  activations="int8")))
        if a.q8:
            servers.append(("inferd-q8", lambda n: start_inferd(a.inferd, a.gguf, Path(tempfile.mkdtemp(dir=tmp)),
                                                                weights="q8")))
        if a.llama_server:
            servers.append(("llama-server", lambda n: start_llama(a.llama_server, a.gguf, n)))
        if a.vllm_python and a.hf_dir:
            servers.append(("vllm", lambda n: start_vllm(a.vllm_python, a.hf_dir, n)))
        for name, start in servers:
            for n in streams:
                proc, base, model, ready = start(n)
                try:
                    metrics = base.removesuffix("/v1") + "/metrics" if name.startswith("inferd") else None
                    r = run(base, model, n, a.tokens, metrics)
                    roof = min(n * bw / wb[name.removesuffix("-int8")], peak / (2 * wb["params"]))
                    r["roofline"] = r["tokens_per_s"] / roof
                    r.update(server=name, start_s=ready)
                    if n == streams[0]:
                        r["prefix_ttft_ms"] = 1e3 * prefix_ttft(base, model, True)
                        r["unique_ttft_ms"] = 1e3 * prefix_ttft(base, model, False)
                        r["prefill_tokens"] = prompt_tokens(base, model)
                    rows.append(r)
                    print(r, file=sys.stderr)
                finally:
                    proc.terminate()
                    proc.wait(timeout=60)
        idle = {}
        for name, start in servers:
            for _ in range(a.idle_starts):
                time.sleep(a.idle_secs)
                proc, _, _, ready = start(1)
                proc.terminate()
                proc.wait(timeout=60)
                idle.setdefault(name, []).append(ready)
            print(name, "after idle", idle.get(name), file=sys.stderr)
        cap = capacity(a.inferd, a.gguf, Path(tmp) / "cap", a.contiguous_seqs, a.max_model_len,
                       a.capacity_streams, a.tokens)
        print(cap, file=sys.stderr)
        wastes = []
        for b in [int(x) for x in a.waste_block_sizes.split(",") if x]:
            proc, base, model, _ = start_inferd(a.inferd, a.gguf, Path(tmp) / f"b{b}", block_size=b)
            try:
                r = run(base, model, 8, a.tokens, metrics=base.removesuffix("/v1") + "/metrics")
                wastes.append((b, r))
                print(b, r, file=sys.stderr)
            finally:
                proc.terminate()
                proc.wait(timeout=60)
    lines = [f"Machine (measured by this run): memory bandwidth {bw / 1e9:.1f} GB/s, f32 peak {peak / 1e9:.1f} GFLOP/s; "
             f"a decode step reads {wb['inferd'] / 1e6:.0f} MB of weights in inferd, {wb['llama-server'] / 1e6:.0f} MB in "
             f"llama-server, {wb['vllm'] / 1e6:.0f} MB in vLLM (bf16) ({wb['params'] / 1e6:.0f} M values).", "",
             "| server | streams | tokens/s | of roofline | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | KV waste mean / max |"
             " start to ready s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        waste = (f"{100 * r['kv_waste_mean']:.1f}% / {100 * r['kv_waste_max']:.1f}%"
                 if r.get("kv_waste_mean") is not None else "")
        lines.append(f"| {r['server']} | {r['streams']} | {r['tokens_per_s']:.1f} | {100 * r['roofline']:.0f}% | "
                     f"{r['ttft_p50_ms']:.0f} | {r['ttft_p99_ms']:.0f} | {r['itl_p50_ms']:.1f} | {waste} | "
                     f"{r['start_s']:.2f} |")
    if idle:
        lines += ["", f"| server | start to ready after {a.idle_secs:.0f} s idle, median s | each s |", "|---|---|---|"]
        for name, ts in idle.items():
            lines.append(f"| {name} | {statistics.median(ts):.2f} | {', '.join(f'{t:.2f}' for t in ts)} |")
    lines += ["", "| server | prefill tokens | TTFT (unique prefix) ms | prefill GFLOP/s | of f32 peak |", "|---|---|---|---|---|"]
    for r in rows:
        if "prefill_tokens" in r:
            flops = 2 * wb["params"] * r["prefill_tokens"] / (r["unique_ttft_ms"] / 1e3)
            lines.append(f"| {r['server']} | {r['prefill_tokens']} | {r['unique_ttft_ms']:.0f} | {flops / 1e9:.1f} | "
                         f"{100 * flops / peak:.0f}% |")
    lines += ["", "| KV budget | contiguous sequences of max_model_len | streams | running at once (peak) | ratio |"
              " KV waste mean / max |", "|---|---|---|---|---|---|",
              f"| {cap['budget'] / 2**20:.0f} MiB | {cap['contiguous']} x {cap['max_len']} tokens | {cap['streams']} | "
              f"{cap['running_max']:.0f} | {cap['running_max'] / cap['contiguous']:.1f}x | "
              f"{100 * cap['kv_waste_mean']:.1f}% / {100 * cap['kv_waste_max']:.1f}% |"]
    lines += ["", "| block size (tokens) | streams | tokens/s | KV waste mean / max |", "|---|---|---|---|"]
    for b, r in wastes:
        lines.append(f"| {b} | 8 | {r['tokens_per_s']:.1f} | {100 * r['kv_waste_mean']:.1f}% / "
                     f"{100 * r['kv_waste_max']:.1f}% |")
    lines += ["", "| server | TTFT, shared 500-token prefix, ms | TTFT, unique prefixes, ms | ratio |", "|---|---|---|---|"]
    for r in rows:
        if "prefix_ttft_ms" in r:
            lines.append(f"| {r['server']} | {r['prefix_ttft_ms']:.0f} | {r['unique_ttft_ms']:.0f} | "
                         f"{r['prefix_ttft_ms'] / r['unique_ttft_ms']:.2f} |")
    table = "\n".join(lines)
    print(table)
    if a.out:
        Path(a.out).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
