#!/usr/bin/env python3
"""Tree-ensemble inference: inferd's evaluator against the reference libraries, in one run.

    .venv/bin/python bench/trees.py      (after `cargo build --release -p inferd-bench`)

Model: 100 trees, depth 6, 30 features (XGBoost binary:logistic; LightGBM binary with 64
leaves), the fraud-scoring shape from issue 4. Measured on one thread: batch 1 latency and
batch 1000 cost per row for xgboost inplace_predict, lightgbm predict, onnxruntime
TreeEnsemble (the XGBoost model converted by onnxmltools, and scikit-learn gradient boosting
of the same size converted by skl2onnx with its default options, when installed), and inferd's
evaluators (inferd-bench --trees): the AVX-512 kernel ("simd", where the CPU has it), the
portable compiled walk, the reference walk, and the forest served by the trees backend (an
instance's execute: request tensors in, tensors out), which is how the ONNX files are measured
on inferd's ONNX backend (inferd-bench --backend-only). Each engine's best median of ROUNDS (3)
interleaved rounds.
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
ROUNDS = int(os.environ.get("ROUNDS", "3"))


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
    engines = [
        ("xgboost inplace_predict", lambda: xb.inplace_predict(x[next(singles)][None, :]),
         lambda: xb.inplace_predict(thousand)),
        ("lightgbm predict", lambda: lb.predict(x[next(singles)][None, :], num_threads=1),
         lambda: lb.predict(thousand, num_threads=1)),
    ]
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
        engines.append(("onnxruntime TreeEnsemble (xgboost model)",
                        lambda: sess.run(None, {"input": x[next(singles)][None, :]}),
                        lambda: sess.run(None, {"input": thousand})))
        # The same ONNX file on inferd's ONNX backend (its tree ensemble on inferd-trees' kernel).
        onnx_repo = tmp / "onnx_repo"
        (onnx_repo / "xgb_onnx" / "1").mkdir(parents=True)
        (onnx_repo / "xgb_onnx" / "1" / "model.onnx").write_bytes(onx.SerializeToString())
        # scikit-learn's gradient boosting of the same size (100 trees, depth 6) through skl2onnx
        # with its default options (a ZipMap of probabilities, the label cast to int64).
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import FloatTensorType as SkFloat
        from sklearn.ensemble import GradientBoostingClassifier

        gbc = GradientBoostingClassifier(n_estimators=100, max_depth=6, random_state=0).fit(x, y)
        sk = convert_sklearn(gbc, initial_types=[("input", SkFloat([None, 30]))], target_opset=15)
        (onnx_repo / "skl_onnx" / "1").mkdir(parents=True)
        (onnx_repo / "skl_onnx" / "1" / "model.onnx").write_bytes(sk.SerializeToString())
        sk_sess = ort.InferenceSession(sk.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        engines.append(("onnxruntime TreeEnsemble (skl2onnx gradient boosting)",
                        lambda: sk_sess.run(None, {"input": x[next(singles)][None, :]}),
                        lambda: sk_sess.run(None, {"input": thousand})))
    except ImportError:
        print("(onnxmltools or skl2onnx not installed: the ONNX rows are skipped)")
    # This machine's speed drifts by up to ~1.7x within seconds (a shared VM), so every engine
    # is measured in each of ROUNDS interleaved rounds and keeps its best median.
    best: dict[str, tuple[float, float]] = {}

    def keep(name, b1, per_row):
        old = best.get(name, (float("inf"), float("inf")))
        best[name] = (min(old[0], b1), min(old[1], per_row))

    for _ in range(ROUNDS):
        for name, one, many in engines:
            keep(name, timeit(one, 1.0), timeit(many, 1.0) / 1000)
        for name, f in (("xgboost", tmp / "model.json"), ("lightgbm", tmp / "model.txt")):
            out = subprocess.run([str(TARGET / "release/inferd-bench"), "--trees", str(f), "--batch", "1,1000",
                                  "--seconds", "1"], check=True, capture_output=True, text=True).stdout
            res = [json.loads(ln) for ln in out.splitlines() if ln.startswith("{")]
            for walk in ("simd", "compiled", "reference", "served"):
                tag = "(served)" if walk == "served" else f"({walk} walk)"
                mine = [r for r in res if tag in r["model"]]
                if not mine:
                    continue  # no SIMD kernel on this CPU
                b1 = next(r for r in mine if r["batch"] == 1 and "p50_us" in r)["p50_us"] * 1e-6
                # Median call / 1000, as timeit() measures the Python peers.
                per_row = next(r for r in mine if r["batch"] == 1000 and "p50_us" in r)["p50_us"] * 1e-9
                label = "served by the trees backend" if walk == "served" else f"{walk} walk"
                keep(f"inferd, {label} ({name} model)", b1, per_row)
        for model, label in (("xgb_onnx", "the onnxmltools file"), ("skl_onnx", "the skl2onnx file")):
            if not (tmp / "onnx_repo" / model).is_dir():
                continue
            out = subprocess.run([str(TARGET / "release/inferd-bench"), "--repository", str(tmp / "onnx_repo"),
                                  "--model", model, "--batch", "1,1000", "--seconds", "1", "--backend-only"],
                                 check=True, capture_output=True, text=True).stdout
            res = [json.loads(ln) for ln in out.splitlines() if ln.startswith("{")]
            b1 = next(r for r in res if r["batch"] == 1)["p50_us"] * 1e-6
            per_row = next(r for r in res if r["batch"] == 1000)["p50_us"] * 1e-9
            keep(f"inferd, ONNX backend ({label})", b1, per_row)
    rows = [(name, b1, per) for name, (b1, per) in best.items()]
    print("| engine | batch 1 p50 (us) | batch 1000 (us per row) |")
    print("|---|---|---|")
    for name, b1, per in rows:
        print(f"| {name} | {b1 * 1e6:.2f} | {per * 1e6:.3f} |")


if __name__ == "__main__":
    main()
