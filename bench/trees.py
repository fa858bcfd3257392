#!/usr/bin/env python3
"""Tree-ensemble inference: inferd's evaluator against the reference libraries, in one run.

    .venv/bin/python bench/trees.py      (after `cargo build --release -p inferd-bench`)

Model: 100 trees, depth 6, 30 features (XGBoost binary:logistic; LightGBM binary with 64
leaves), the fraud-scoring shape from issue 4. Measured on one thread: batch 1 latency and
batch 1000 cost per row for xgboost inplace_predict, lightgbm predict, onnxruntime
TreeEnsemble (the XGBoost model converted by onnxmltools, when installed), and inferd's evaluator (inferd-bench --trees).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import lightgbm
import numpy as np
import xgboost

ROOT = Path(__file__).resolve().parents[1]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))


def timeit(fn, seconds=2.0):
    fn()
    n, t0 = 0, time.perf_counter()
    lat = []
    while time.perf_counter() - t0 < seconds:
        s = time.perf_counter()
        fn()
        lat.append(time.perf_counter() - s)
        n += 1
    lat.sort()
    return lat[len(lat) // 2]


def main():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5000, 30)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] * x[:, 2] > 0).astype(int)
    tmp = Path(tempfile.mkdtemp())
    xb = xgboost.train({"objective": "binary:logistic", "max_depth": 6, "nthread": 1}, xgboost.DMatrix(x, label=y), 100)
    xb.save_model(str(tmp / "model.json"))
    lb = lightgbm.train({"objective": "binary", "num_leaves": 64, "max_depth": 6, "verbose": -1, "num_threads": 1},
                        lightgbm.Dataset(x, label=y), 100)
    lb.save_model(str(tmp / "model.txt"))
    thousand = x[:1000]
    singles = iter(np.tile(np.arange(5000), 1000))  # a different row on every call
    rows = []
    rows.append(("xgboost inplace_predict", timeit(lambda: xb.inplace_predict(x[next(singles)][None, :])),
                 timeit(lambda: xb.inplace_predict(thousand)) / 1000))
    rows.append(("lightgbm predict", timeit(lambda: lb.predict(x[next(singles)][None, :], num_threads=1)),
                 timeit(lambda: lb.predict(thousand, num_threads=1)) / 1000))
    try:
        import onnxmltools
        import onnxruntime as ort
        from onnxmltools.convert.common.data_types import FloatTensorType

        onx = onnxmltools.convert_xgboost(xb, initial_types=[("input", FloatTensorType([None, 30]))],
                                          target_opset=15)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(onx.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        rows.append(("onnxruntime TreeEnsemble (xgboost model)",
                     timeit(lambda: sess.run(None, {"input": x[next(singles)][None, :]})),
                     timeit(lambda: sess.run(None, {"input": thousand})) / 1000))
    except ImportError:
        print("(onnxmltools not installed: onnxruntime TreeEnsemble skipped)")
    for name, f in (("xgboost", tmp / "model.json"), ("lightgbm", tmp / "model.txt")):
        out = subprocess.run([str(TARGET / "release/inferd-bench"), "--trees", str(f), "--batch", "1,1000", "--seconds", "2"],
                             check=True, capture_output=True, text=True).stdout
        res = [json.loads(ln) for ln in out.splitlines() if ln.startswith("{")]
        for walk in ("compiled", "reference"):
            mine = [r for r in res if walk in r["model"]]
            b1 = next(r for r in mine if r["batch"] == 1 and "p50_us" in r)["p50_us"] * 1e-6
            per_row = next(r for r in mine if r["batch"] == 1000 and "ns_per_row" in r)["ns_per_row"] * 1e-9
            rows.append((f"inferd, {walk} walk ({name} model)", b1, per_row))
    print("| engine | batch 1 p50 (us) | batch 1000 (us per row) |")
    print("|---|---|---|")
    for name, b1, per in rows:
        print(f"| {name} | {b1 * 1e6:.2f} | {per * 1e6:.3f} |")


if __name__ == "__main__":
    main()
