"""The python worker's outbox (the file it writes response tensors into), run as the worker
runs it: a region held by a long decoupled stream does not make the file grow with the traffic
around it (regions are placed in the gaps given-back ones leave), and regions never overlap.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np

WORKER = Path(__file__).resolve().parents[2] / "crates" / "inferd-pybackend" / "python" / "inferd_python_worker.py"


def outbox(path: Path):
    # The worker installs the utilities module from the source the server passes it.
    os.environ["INFERD_PB_UTILS"] = (WORKER.parent / "triton_python_backend_utils.py").read_text()
    spec = importlib.util.spec_from_file_location("inferd_python_worker", WORKER)
    mod = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(mod)
    finally:
        os.environ.pop("INFERD_PB_UTILS", None)
        sys.modules.pop("triton_python_backend_utils", None)
    path.write_bytes(b"")
    return mod.Outbox(str(path))


def item(name: str, n: int):
    a = np.arange(n, dtype=np.float32)
    return (name, "FP32", a, a.tobytes())


def test_a_long_held_region_does_not_make_the_outbox_grow_with_traffic(tmp_path):
    box = outbox(tmp_path / "out")
    _, held = box.put([item("held", 10)])
    for _ in range(5000):
        _, r1 = box.put([item("big", 1000)])
        _, r2 = box.put([item("small", 10)])
        box.free(r1)
        box.free(r2)
    assert (tmp_path / "out").stat().st_size < 8192, (tmp_path / "out").stat().st_size
    box.free(held)
    assert box.extents == []


def test_outbox_regions_are_aligned_disjoint_and_hold_what_was_written(tmp_path):
    box = outbox(tmp_path / "out")
    live = {}
    rng = np.random.default_rng(3)
    for step in range(400):
        if live and rng.random() < 0.45:
            region = list(live)[int(rng.integers(len(live)))]
            box.free(region)
            del live[region]
            continue
        items = [item(f"t{k}", int(rng.integers(1, 300))) for k in range(int(rng.integers(1, 4)))]
        specs, region = box.put(items)
        live[region] = (specs, items)
    data = (tmp_path / "out").read_bytes()
    spans = []
    for specs, items in live.values():
        for s, it in zip(specs, items):
            assert s["offset"] % 64 == 0
            assert data[s["offset"]:s["offset"] + s["nbytes"]] == it[3]
            spans.append((s["offset"], s["offset"] + s["nbytes"]))
    spans.sort()
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), "regions overlap"
