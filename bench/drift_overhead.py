"""What drift sampling costs: one server, two copies of simple_mlp (64 FP32 in, 1-row requests)
that differ only in `drift_sample_rate` (0: off; the default 0.05; and 1.0, every request, as
the upper bound), driven by wrk over HTTP/JSON at 8 connections. Rounds alternate the models so
drift of the machine hits both; the table gives the median of the rounds.

    .venv/bin/python bench/drift_overhead.py --inferd target/release/inferd [--seconds 10] [--rounds 5]

Target (issue 27): at the default rate, throughput within 2% of sampling off.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from python_backend import start, stop, wrk  # noqa: E402
from start import free_port  # noqa: E402

RATES = {"mlp_off": "0", "mlp_default": None, "mlp_all": "1"}


def repository(root: Path) -> Path:
    src = ROOT / "examples" / "models" / "simple_mlp"
    for name, rate in RATES.items():
        (root / name / "1").mkdir(parents=True)
        shutil.copy(src / "1" / "model.onnx", root / name / "1" / "model.onnx")
        cfg = "\n".join(line for line in (src / "config.pbtxt").read_text().splitlines() if not line.startswith("name:"))
        if rate is not None:
            cfg += f'\nparameters {{ key: "drift_sample_rate" value: {{ string_value: "{rate}" }} }}\n'
        (root / name / "config.pbtxt").write_text(cfg)
    return root


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--inferd", default=str(ROOT / "target" / "release" / "inferd"))
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--out")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="inferd-drift-bench-"))
    repo = repository(work / "models")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [a.inferd, "serve", "--model-repository", str(repo), "--http-port", str(port), "--grpc-port",
           str(free_port()), "--metrics-port", str(free_port())]
    proc = start(cmd, {**os.environ, "RUST_LOG": "warn"}, base, work / "inferd.log", models=tuple(RATES))
    x = [round(0.01 * i, 2) for i in range(64)]
    payload = json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": x}]})
    runs: dict[str, list[dict]] = {m: [] for m in RATES}
    try:
        for m in RATES:  # warm-up
            wrk(f"{base}/v2/models/{m}/infer", payload, a.connections, 2)
        for r in range(a.rounds):
            order = list(RATES) if r % 2 == 0 else list(reversed(RATES))  # no model always first
            for m in order:
                runs[m].append(wrk(f"{base}/v2/models/{m}/infer", payload, a.connections, a.seconds))
    finally:
        stop(proc)
    med = {m: {k: statistics.median(x[k] for x in v) for k in ("rps", "p50_ms", "p99_ms")} for m, v in runs.items()}
    # Paired: each round's ratio to the same round's run with sampling off (the machine's
    # drift between rounds cancels), then the median over rounds.
    ratios = {m: sorted(a["rps"] / b["rps"] for a, b in zip(v, runs["mlp_off"])) for m, v in runs.items()}
    rows = [
        "| sampling | req/s (median) | vs off, paired median (range) | p50 ms | p99 ms |",
        "|---|---|---|---|---|",
    ]
    for m, rate in RATES.items():
        label = {"mlp_off": "off (0)", "mlp_default": "default (0.05)", "mlp_all": "every request (1.0)"}[m]
        r = ratios[m]
        rows.append(f"| {label} | {med[m]['rps']:.0f} | {statistics.median(r):.3f}x ({r[0]:.2f}-{r[-1]:.2f}) | "
                    f"{med[m]['p50_ms']:.3f} | {med[m]['p99_ms']:.3f} |")
    print(f"drift sampling cost, simple_mlp 1-row HTTP/JSON, wrk c{a.connections}, {a.rounds} rounds of "
          f"{a.seconds}s, {date.today()}")
    print("\n".join(rows))
    if a.out:
        Path(a.out).write_text(json.dumps({"date": str(date.today()), "runs": runs, "median": med}, indent=1))


if __name__ == "__main__":
    main()
