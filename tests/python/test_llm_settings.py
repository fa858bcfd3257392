"""The server-wide LLM flags: ``--llm-kv-cache-bytes`` sizes each LLM version's KV cache (the
metrics page shows the blocks it made) and ``--llm-max-num-seqs`` its running sequences; a
config's own parameters override them; nonsense values stop the start naming the flag."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import requests

MODEL = os.environ.get("INFERD_SMOLLM2_GGUF", "")
# SmolLM2-135M: 30 layers x 3 KV heads x 64 dims, keys and values, f32, 16-token blocks.
BLOCK_BYTES = 2 * 30 * 16 * 192 * 4
# The same with 8-bit keys and values: a byte per value and an f32 scale per 32 values.
Q8_BLOCK_BYTES = 2 * 30 * 16 * (192 + 192 // 32 * 4)


def gauge(server, name, model, page=None, kind=int):
    page = page or requests.get(server.http_base + "/metrics", timeout=10).text
    [line] = [x for x in page.splitlines() if x.startswith(name + "{") and f'model="{model}"' in x]
    return kind(float(line.rsplit(" ", 1)[1]))


def blocks(server, model):
    return gauge(server, "inferd_llm_kv_cache_blocks", model)


def test_the_kv_cache_flag_sizes_each_llm_and_a_config_overrides_it(inferd_server_factory, tmp_path):
    assert MODEL and Path(MODEL).is_file(), "set INFERD_SMOLLM2_GGUF (scripts/test.sh fetches it)"
    repo = tmp_path / "models"
    for name in ("flagged", "own"):
        (repo / name / "1").mkdir(parents=True)
        shutil.copy(MODEL, repo / name / "1" / "model.gguf")
    (repo / "own" / "config.pbtxt").write_text(
        f'backend: "llm"\nparameters [ {{ key: "kv_cache_bytes" value: {{ string_value: "{40 * BLOCK_BYTES}" }} }} ]\n')
    server = inferd_server_factory(repo, "--llm-kv-cache-bytes", str(20 * BLOCK_BYTES + 5), "--llm-max-num-seqs", "2")
    assert blocks(server, "flagged") == 20
    assert blocks(server, "own") == 40
    # Four requests at once: two run, two wait.
    import threading

    def one():
        requests.post(f"{server.http_base}/v1/completions", timeout=120, json={
            "model": "flagged", "prompt": "Count:", "max_tokens": 40, "ignore_eos": True}).raise_for_status()

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    seen, wasted = set(), []
    while any(t.is_alive() for t in threads):
        page = requests.get(server.http_base + "/metrics", timeout=10).text
        running, waiting, used = (gauge(server, n, "flagged", page) for n in (
            "inferd_llm_requests_running", "inferd_llm_requests_waiting", "inferd_llm_kv_cache_blocks_used"))
        seen.add((running, waiting))
        wasted.append((running, used, gauge(server, "inferd_llm_kv_cache_waste_ratio", "flagged", page, float)))
    for t in threads:
        t.join()
    assert max(r for r, _ in seen) == 2, seen
    assert max(w for _, w in seen) >= 1, seen
    # Paging wastes at most the unfilled part of each running sequence's last block (no prefix is shared here:
    # the prompts fill no whole block).
    assert any(r > 0 and w > 0 for r, _, w in wasted), wasted
    for running, used, waste in wasted:
        assert 0 <= waste < 1
        assert waste * used * 16 < 16 * running + 1e-6, (running, used, waste)


def test_a_q8_kv_cache_holds_more_blocks_in_the_same_bytes_and_serves_and_activations_are_checked(inferd_server_factory, tmp_path):
    assert MODEL and Path(MODEL).is_file(), "set INFERD_SMOLLM2_GGUF (scripts/test.sh fetches it)"
    repo = tmp_path / "models"
    for name in ("flagged", "exact", "bad", "int8", "badact"):
        (repo / name / "1").mkdir(parents=True)
        shutil.copy(MODEL, repo / name / "1" / "model.gguf")
    param = 'backend: "llm"\nparameters [ {{ key: "kv_cache_dtype" value: {{ string_value: "{}" }} }} ]\n'
    (repo / "exact" / "config.pbtxt").write_text(param.format("f32"))
    (repo / "bad" / "config.pbtxt").write_text(param.format("fp4"))
    act = 'backend: "llm"\nparameters [ {{ key: "activations" value: {{ string_value: "{}" }} }} ]\n'
    (repo / "int8" / "config.pbtxt").write_text(act.format("int8"))
    (repo / "badact" / "config.pbtxt").write_text(act.format("int4"))
    bytes_ = 20 * BLOCK_BYTES
    server = inferd_server_factory(repo, "--llm-kv-cache-bytes", str(bytes_), "--llm-kv-cache-dtype", "q8",
                                   strict_readiness=False)
    assert blocks(server, "exact") == 20
    assert blocks(server, "flagged") == bytes_ // Q8_BLOCK_BYTES == 71
    r = requests.post(f"{server.http_base}/v1/completions", timeout=120, json={
        "model": "flagged", "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0})
    r.raise_for_status()
    assert r.json()["usage"]["completion_tokens"] > 0
    r = requests.post(f"{server.http_base}/v1/completions", timeout=120, json={
        "model": "int8", "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0})
    r.raise_for_status()
    index = requests.post(server.http_base + "/v2/repository/index", json={}, timeout=10).json()
    [bad] = [m for m in index if m["name"] == "bad"]
    assert bad["state"] == "UNAVAILABLE"
    assert "kv_cache_dtype" in bad["reason"] and "fp4" in bad["reason"], bad
    [badact] = [m for m in index if m["name"] == "badact"]
    assert badact["state"] == "UNAVAILABLE"
    assert "activations" in badact["reason"] and "int4" in badact["reason"], badact


def test_nonsense_llm_flags_stop_the_start_naming_the_flag(inferd_bin, tmp_path):
    for args, flag in ((["--llm-max-num-seqs", "0"], "--llm-max-num-seqs"), (["--llm-kv-cache-bytes", "0"], "--llm-kv-cache-bytes"),
                       (["--llm-kv-cache-dtype", "fp4"], "--llm-kv-cache-dtype")):
        r = subprocess.run([str(inferd_bin), "serve", "--model-repository", str(tmp_path), "--http-port", "0",
                            "--grpc-port", "0", "--metrics-port", "0", *args], capture_output=True, text=True, timeout=60)
        assert r.returncode != 0 and flag in r.stderr, r.stderr


def test_an_llm_serves_from_a_relative_repository_path(inferd_server_factory, tmp_path):
    """Regression: the LLM backend joined the version folder to the model file's path, which
    already starts with it, so a relative ``--model-repository`` doubled the path and the model
    never loaded."""
    assert MODEL and Path(MODEL).is_file(), "set INFERD_SMOLLM2_GGUF (scripts/test.sh fetches it)"
    repo = tmp_path / "models"
    (repo / "llm" / "1").mkdir(parents=True)
    shutil.copy(MODEL, repo / "llm" / "1" / "model.gguf")
    relative = Path(os.path.relpath(repo))
    assert not relative.is_absolute()
    server = inferd_server_factory(relative)
    r = requests.post(f"{server.http_base}/v1/completions", timeout=120,
                      json={"model": "llm", "prompt": "Hello", "max_tokens": 3})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] >= 1
