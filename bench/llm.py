#!/usr/bin/env python3
"""LLM serving side by side, in one run, with the real ``openai`` client: inferd and (when its
binary is given) llama.cpp's ``llama-server`` on the same GGUF, same thread count.

Workloads: N concurrent streams (default 1, 8 and 32), each a short prompt and ``--tokens`` new
tokens, greedy, end-of-sequence ignored so every stream generates the same count. Reported per
server and concurrency: aggregate tokens/s, time to first token (p50, p99), inter-token latency
(p50). A results table goes to stdout and, with ``--out``, to a Markdown file.

    python bench/llm.py --inferd target/release/inferd --gguf SmolLM2-135M-Instruct.Q4_1.gguf \
        [--llama-server ~/.cache/inferd/llama/build/bin/llama-server] [--streams 1,8] [--tokens 128]
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


def start_inferd(binary: str, gguf: str, tmp: Path):
    repo = tmp / "models"
    (repo / "llm" / "1").mkdir(parents=True)
    shutil.copy(gguf, repo / "llm" / "1" / "model.gguf")
    port = free_port()
    proc = subprocess.Popen([binary, "serve", "--model-repository", str(repo), "--http-port", str(port),
                             "--grpc-port", "0", "--metrics-port", "0"],
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


def run(base: str, model: str, streams: int, tokens: int) -> dict:
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
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ttft.sort()
    return {
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


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--inferd", required=True)
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--llama-server")
    ap.add_argument("--streams", default="1,8,32")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--out")
    a = ap.parse_args()
    streams = [int(s) for s in a.streams.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        servers = [("inferd", lambda n: start_inferd(a.inferd, a.gguf, Path(tmp) / f"i{n}"))]
        if a.llama_server:
            servers.append(("llama-server", lambda n: start_llama(a.llama_server, a.gguf, n)))
        for name, start in servers:
            for n in streams:
                proc, base, model, ready = start(n)
                try:
                    r = run(base, model, n, a.tokens)
                    r.update(server=name, start_s=ready)
                    if n == streams[0]:
                        r["prefix_ttft_ms"] = 1e3 * prefix_ttft(base, model, True)
                        r["unique_ttft_ms"] = 1e3 * prefix_ttft(base, model, False)
                    rows.append(r)
                    print(r, file=sys.stderr)
                finally:
                    proc.terminate()
                    proc.wait(timeout=60)
    lines = ["| server | streams | tokens/s | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | start to ready s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['server']} | {r['streams']} | {r['tokens_per_s']:.1f} | {r['ttft_p50_ms']:.0f} | "
                     f"{r['ttft_p99_ms']:.0f} | {r['itl_p50_ms']:.1f} | {r['start_s']:.2f} |")
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
