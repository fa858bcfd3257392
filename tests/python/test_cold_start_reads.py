"""Cold start reads each model file once: the artifact safety checks and the loader share one
read. Proven on the real binary under strace (every open and read syscall, with the path of
each descriptor): an ONNX model and an XGBoost model are opened exactly once each from the
start to ready, and a GGUF LLM's tensors are mapped by the loader, never read (the checks and
the loader read its header).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from inferd_testlib import InferdServer, example_model_path

GGUF = os.environ.get("INFERD_SMOLLM2_GGUF", "")


def traced_start(inferd_bin: Path, repo: Path, tmp_path: Path) -> tuple[InferdServer, Path]:
    strace = shutil.which("strace")
    if strace is None:
        pytest.fail("strace is not installed (.ci/run installs it: apt-get install strace)", pytrace=False)
    log = tmp_path / "strace"  # one file per thread (-ff): no interleaved, unfinished calls
    srv = InferdServer(inferd_bin, repo, [], tmp_path / "logs", "traced")
    srv.argv = [strace, "-f", "-qq", "-y", "-e", "trace=openat,open,read,pread64,readv,mmap", "-ff", "-o", str(log), *srv.argv]
    srv.start(timeout=300)
    return srv, log


def stop_traced(srv: InferdServer) -> None:
    # strace's child is inferd: stop it first, then strace exits with it.
    pid = srv.process.pid
    children = Path(f"/proc/{pid}/task/{pid}/children")
    for child in children.read_text().split() if children.exists() else []:
        try:
            os.kill(int(child), signal.SIGTERM)
        except ProcessLookupError:
            pass
    try:
        srv.process.wait(30)
    except Exception:
        pass
    srv.stop()


def trace_text(log: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in log.parent.glob(log.name + ".*"))


def opens_of(log: str, path: Path) -> int:
    name = re.escape(str(path))
    return len(re.findall(rf'open(?:at)?\([^\n]*"{name}"[^\n]*\) = \d+', log))


def bytes_read_from(log: str, path: Path) -> int:
    name = re.escape(str(path))
    return sum(int(m.group(1)) for m in re.finditer(rf'(?:read|pread64|readv)\(\d+<{name}>[^\n]*\) = (\d+)', log))


def xgboost_model(repo: Path) -> Path:
    import xgboost

    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 8)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.float32)
    booster = xgboost.train({"objective": "binary:logistic", "max_depth": 4}, xgboost.DMatrix(x, y), 20)
    d = repo / "forest" / "1"
    d.mkdir(parents=True)
    booster.save_model(str(d / "model.json"))
    (repo / "forest" / "config.pbtxt").write_text('backend: "xgboost"\nmax_batch_size: 64\n')
    return d / "model.json"


def test_onnx_and_tree_model_files_are_opened_once_from_start_to_ready(inferd_bin, tmp_path):
    repo = tmp_path / "models"
    shutil.copytree(example_model_path("simple_mlp").parent.parent, repo / "simple_mlp")
    shutil.rmtree(repo / "simple_mlp" / "2")
    # On tract in every build: the ONNX Runtime backend opens the file itself, once per
    # instance (its session API reads a path, and from memory it could not find external data).
    cfg = repo / "simple_mlp" / "config.pbtxt"
    cfg.write_text(cfg.read_text() + '\nparameters { key: "onnx_backend" value: { string_value: "tract" } }\n')
    onnx = (repo / "simple_mlp" / "1" / "model.onnx").resolve()
    forest = xgboost_model(repo).resolve()
    srv, log = traced_start(inferd_bin, repo, tmp_path)
    try:
        ready = srv.http_base
    finally:
        stop_traced(srv)
    text = trace_text(log)
    assert ready
    counts = {p.name: opens_of(text, p) for p in (onnx, forest)}
    assert counts == {"model.onnx": 1, "model.json": 1}, counts
    for p in (onnx, forest):
        got = bytes_read_from(text, p)
        assert got == p.stat().st_size, f"{p.name}: {got} bytes read, the file has {p.stat().st_size}"


def maps_of(log: str, path: Path) -> list[int]:
    """Lengths of the mappings of `path`'s descriptors."""
    name = re.escape(str(path))
    return [int(m.group(1)) for m in re.finditer(rf'mmap\([^,\n]*, (\d+), [^\n]*\d+<{name}>', log)]


def test_a_gguf_s_tensors_are_mapped_and_only_its_header_is_read(inferd_bin, tmp_path):
    assert GGUF and Path(GGUF).is_file(), "set INFERD_SMOLLM2_GGUF (scripts/test.sh fetches it)"
    repo = tmp_path / "models"
    (repo / "smollm2" / "1").mkdir(parents=True)
    shutil.copy(GGUF, repo / "smollm2" / "1" / "model.gguf")
    gguf = (repo / "smollm2" / "1" / "model.gguf").resolve()
    srv, log = traced_start(inferd_bin, repo, tmp_path)
    stop_traced(srv)
    text = trace_text(log)
    size = gguf.stat().st_size
    got = bytes_read_from(text, gguf)
    maps = maps_of(text, gguf)
    print(f"{got} bytes read of a {size}-byte GGUF; mapped {maps}")
    # The loader maps the whole file for the load: reading every tensor into a buffer wrote the
    # file's size in fresh memory, which after a few idle seconds costs ~2 ms a MB here
    # (bench/results/llm-2026-12-08-start.md).
    assert size in maps, f"no mapping of the whole {size}-byte GGUF: {maps}"
    # The header, read by the checks and by the loader: a few MB of the file's 98.
    assert got <= 16 * 2**20, f"{got} bytes read of a {size}-byte GGUF"


def test_safetensors_weights_are_mapped_and_only_their_header_is_read(inferd_bin, tmp_path):
    minilm = os.environ.get("INFERD_MINILM_DIR", "")
    assert minilm and Path(minilm).is_dir(), "set INFERD_MINILM_DIR (scripts/test.sh fetches it)"
    repo = tmp_path / "models"
    d = repo / "minilm" / "1"
    shutil.copytree(minilm, d)
    (repo / "minilm" / "config.pbtxt").write_text('backend: "candle"\nmax_batch_size: 16\n')
    weights = (d / "model.safetensors").resolve()
    srv, log = traced_start(inferd_bin, repo, tmp_path)
    stop_traced(srv)
    got = bytes_read_from(trace_text(log), weights)
    size = weights.stat().st_size
    print(f"{got} bytes read of a {size}-byte SafeTensors file")
    # The checks read its first 64 KiB and its last 64 KiB (a zip hidden at the end would be
    # read whole); the loader maps it.
    assert got <= 256 * 1024, f"{got} bytes read of a {size}-byte SafeTensors file"
