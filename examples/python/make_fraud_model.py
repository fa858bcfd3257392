"""Trains the fraud scorer the FastAPI example serves: an XGBoost binary classifier on synthetic
card transactions (30 features, about 2% fraud), written as a model repository that both
inferd embedded (``inferd.Engine``) and the inferd server load.

    python examples/python/make_fraud_model.py [REPOSITORY]   # default: examples/python/models
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import xgboost

N_FEATURES = 30

CONFIG = """name: "fraud"
backend: "xgboost"
max_batch_size: 256
# Tree models take Triton FIL's names: one row of features in, the probability out.
input [ { name: "input__0" data_type: TYPE_FP32 dims: [ 30 ] } ]
output [ { name: "output__0" data_type: TYPE_FP32 dims: [ 1 ] } ]
# Requests that arrive while the model is busy run together as one batch: the in-process
# batching a thread pool of xgboost.predict calls cannot do. No extra wait (a delay window
# would add its length to a lone request's latency; bench/embedded.py measured 0.5 ms p50
# more at one client for 8% more requests/s at 32).
dynamic_batching { }
"""


def transactions(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic transactions and their labels: fraud is likelier for large amounts at odd
    hours from new devices, with noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, N_FEATURES)).astype(np.float32)
    risk = 1.5 * x[:, 0] + x[:, 1] * x[:, 2] - 0.8 * x[:, 3] + 0.3 * rng.normal(size=n)
    y = (risk > np.quantile(risk, 0.98)).astype(np.int32)
    return x, y


def train(repo: Path, rounds: int = 200) -> Path:
    x, y = transactions(20_000, seed=7)
    booster = xgboost.train(
        {"objective": "binary:logistic", "max_depth": 6, "eta": 0.1, "eval_metric": "auc"},
        xgboost.DMatrix(x, label=y),
        num_boost_round=rounds,
    )
    version = repo / "fraud" / "1"
    version.mkdir(parents=True, exist_ok=True)
    booster.save_model(str(version / "model.json"))
    (repo / "fraud" / "config.pbtxt").write_text(CONFIG)
    return repo


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "models"
    print(f"wrote {train(target)}")
