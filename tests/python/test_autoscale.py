"""Autoscaling: ``inferd autoscale simulate`` and the signals on the metrics page.

- The simulator replays every shipped trace against the five policies and prints one JSON
  object per policy with the fixed fields; on the predictable daily spike the forecast policy
  has far fewer SLO violations than CPU- and queue-depth HPA at no more replica-hours, and the
  plot is a PNG with a panel per policy.
- A user's CSV trace replays; its mistakes name the line (the header is line 1); impossible
  policy settings and profile figures name the field; exit code 2 for all of them.
- A running server exports demand, capacity, utilisation, the forecast (saying it has too
  little history, and equal to the demand meanwhile) and each model's start phases; the
  forecaster's state lands in the state dir when the server stops.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests

from inferd_testlib import copy_models

FIELDS = {"policy", "slo_violations", "dropped", "requests", "replica_hours", "cold_starts"}


def simulate(inferd_bin, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([inferd_bin, "autoscale", "simulate", *args], capture_output=True, text=True,
                          timeout=600)


def test_the_forecast_policy_wins_on_a_predictable_spike_and_the_plot_is_drawn(inferd_bin, tmp_path):
    plot = tmp_path / "daily.png"
    policies = ["cpu-hpa", "queue-hpa", "keda", "kpa", "forecast"]
    r = simulate(inferd_bin, "--trace", "daily-spike", *[a for p in policies for a in ("--policy", p)],
                 "--slo-ms", "500", "--format", "json", "--plot", str(plot))
    assert r.returncode == 0, r.stderr
    out = {o["policy"]: o for o in json.loads(r.stdout)}
    assert set(out) == set(policies)
    assert all(FIELDS <= set(o) for o in out.values())
    assert len({o["requests"] for o in out.values()}) == 1, "every policy replays the same requests"
    f, cpu, queue = out["forecast"], out["cpu-hpa"], out["queue-hpa"]
    assert f["slo_violations"] * 10 <= cpu["slo_violations"], (f, cpu)
    assert f["slo_violations"] * 2 <= queue["slo_violations"], (f, queue)
    assert f["replica_hours"] <= 1.2 * min(cpu["replica_hours"], queue["replica_hours"])
    png = plot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(png[20:24], "big") == 360 * len(policies)


def test_the_forecast_policy_meets_its_targets_on_the_diurnal_trace(inferd_bin):
    r = simulate(inferd_bin, "--trace", "diurnal", "--policy", "cpu-hpa", "--policy", "queue-hpa",
                 "--policy", "forecast", "--slo-ms", "500", "--format", "json")
    assert r.returncode == 0, r.stderr
    out = {o["policy"]: o for o in json.loads(r.stdout)}
    f, cpu, queue = out["forecast"], out["cpu-hpa"], out["queue-hpa"]
    # >= 10x fewer violations than CPU-HPA (which buys its few with far more replicas) and
    # >= 2x fewer than queue-HPA, at <= 1.2x their replica-hours.
    assert f["slo_violations"] * 10 <= cpu["slo_violations"] or f["slo_violations"] == 0, (f, cpu)
    assert f["slo_violations"] * 2 <= queue["slo_violations"], (f, queue)
    assert f["replica_hours"] <= 1.2 * min(cpu["replica_hours"], queue["replica_hours"]), (f, cpu, queue)


@pytest.mark.parametrize("trace", ["diurnal", "spike", "bursty"])
def test_every_shipped_trace_replays_in_both_formats(inferd_bin, trace):
    r = simulate(inferd_bin, "--trace", trace, "--policy", "queue-hpa", "--policy", "forecast", "--format", "json")
    assert r.returncode == 0, r.stderr
    for o in json.loads(r.stdout):
        assert o["requests"] > 100_000 and o["replica_hours"] > 0 and o["slo_violations"] >= o["dropped"] >= 0
    human = simulate(inferd_bin, "--trace", trace, "--policy", "kpa")
    assert human.returncode == 0 and "replica-hours" in human.stdout and "kpa" in human.stdout


def test_a_csv_trace_replays_and_its_mistakes_name_the_line(inferd_bin, tmp_path):
    good = tmp_path / "good.csv"
    good.write_text("timestamp,count\n" + "".join(f"{t},{20 if t < 300 else 120}\n" for t in range(900)))
    r = simulate(inferd_bin, "--trace", str(good), "--policy", "queue-hpa", "--format", "json")
    assert r.returncode == 0, r.stderr
    o = json.loads(r.stdout)[0]
    assert o["requests"] == 300 * 20 + 600 * 120
    assert o["cold_starts"] > 0, "the step up needed new replicas"
    for text, line, words in [
        ("timestamp,count\n5,1\n3,1\n", 3, "sorted"),
        ("timestamp,count\n-2,1\n", 2, "negative"),
        ("time,n\n1,1\n", 1, "header"),
        ("timestamp,count\n1,1\n2,many\n", 3, "count"),
    ]:
        bad = tmp_path / "bad.csv"
        bad.write_text(text)
        r = simulate(inferd_bin, "--trace", str(bad), "--policy", "kpa")
        assert r.returncode == 2, r.stdout
        assert f"line {line}:" in r.stderr and words in r.stderr, r.stderr


@pytest.mark.parametrize("args, words", [
    (["--min-replicas", "5", "--max-replicas", "2"], "min_replicas"),
    (["--target-utilisation", "0"], "target_utilisation"),
    (["--min-replicas", "0"], "min_replicas"),
    (["--policy", "magic"], "'magic' is not a policy"),
    (["--slo-ms=-1"], "--slo-ms"),
])
def test_impossible_settings_name_the_field(inferd_bin, args, words):
    r = simulate(inferd_bin, "--trace", "spike", "--policy", "cpu-hpa", *args)
    assert r.returncode == 2 and words in r.stderr, r.stderr


def test_a_service_profile_is_read_and_checked(inferd_bin, tmp_path):
    fast = tmp_path / "fast.json"
    fast.write_text(json.dumps({"base_secs": 0.01, "per_item_secs": 0.002, "max_batch": 8,
                                "start_phases": [["load", 2.0], ["warmup", 0.5]]}))
    slow = simulate(inferd_bin, "--trace", "spike", "--policy", "queue-hpa", "--format", "json")
    quick = simulate(inferd_bin, "--trace", "spike", "--policy", "queue-hpa", "--format", "json",
                     "--service-profile", str(fast))
    assert quick.returncode == 0, quick.stderr
    # A replica ten times faster needs far fewer replica-hours for the same trace (one replica
    # for the whole day is the floor).
    assert 24 <= json.loads(quick.stdout)[0]["replica_hours"] < json.loads(slow.stdout)[0]["replica_hours"] * 0.6
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"max_batch": 0}))
    r = simulate(inferd_bin, "--trace", "spike", "--policy", "kpa", "--service-profile", str(bad))
    assert r.returncode == 2 and "max_batch" in r.stderr, r.stderr


def metric(page: str, name: str, **labels: str) -> float | None:
    for line in page.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_the_server_exports_demand_capacity_forecast_and_start_phases(inferd_server_factory, tmp_path):
    repo = copy_models(tmp_path / "models", ["simple_mlp"])
    state = tmp_path / "state"
    srv = inferd_server_factory(repo, "--state-dir", str(state), "--forecast-horizon-secs", "120")
    body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}]}
    url = f"{srv.http_base}/v2/models/simple_mlp/infer"
    started = time.monotonic()
    sent = 0
    while time.monotonic() - started < 3.0:
        requests.post(url, json=body, timeout=10).raise_for_status()
        sent += 1
    time.sleep(1.2)
    page = requests.get(f"{srv.metrics_url}/metrics", timeout=10).text
    demand = metric(page, "inferd_demand_requests_per_second", model="simple_mlp")
    # Averaged over the seconds seen so far: about what was sent per second.
    assert demand is not None and 0.3 * sent / 4.2 < demand <= sent, (demand, sent)
    capacity = metric(page, "inferd_capacity_requests_per_second", model="simple_mlp")
    assert capacity is not None and capacity > demand, "a tiny MLP sustains far more than one client sends"
    util = metric(page, "inferd_utilisation_ratio", model="simple_mlp")
    assert util == pytest.approx(demand / capacity, rel=1e-6)
    assert metric(page, "inferd_demand_forecast_ready", model="simple_mlp") == 0
    forecast = metric(page, "inferd_demand_forecast_requests_per_second", model="simple_mlp", horizon_seconds="120")
    assert forecast == pytest.approx(demand), "too little history: the current demand stands in"
    phases = {p: metric(page, "inferd_model_start_seconds", model="simple_mlp", phase=p)
              for p in ("checks", "load", "warmup")}
    assert all(v is not None and v >= 0 for v in phases.values()), phases
    srv.stop()
    saved = json.loads((state / "forecast.json").read_text())
    assert "simple_mlp" in saved


def load_order(log: str) -> list[tuple[str, str]]:
    """(event, model) for each version's "loading" and "start phases" log line, in order."""
    out = []
    for line in log.splitlines():
        for event in ("loading", "start phases"):
            if line.rstrip().endswith(f" {event}") or f" {event} " in line or line.rstrip().endswith(event):
                m = re.search(r"model=(\S+)", line)
                if m and ("version=" in line):
                    out.append((event, m.group(1)))
    return out


def test_model_load_threads_bounds_how_many_versions_load_at_once(inferd_server_factory, tmp_path):
    repo = copy_models(tmp_path / "models", ["simple_mlp", "add_sub", "string_identity"])
    for copy in ("mlp_b", "mlp_c"):
        shutil.copytree(repo / "simple_mlp", repo / copy)
        cfg = repo / copy / "config.pbtxt"
        cfg.write_text(cfg.read_text().replace('name: "simple_mlp"', f'name: "{copy}"'))
    names = ["simple_mlp", "add_sub", "string_identity", "mlp_b", "mlp_c"]
    srv = inferd_server_factory(repo, "--model-load-threads", "1")
    order = load_order(srv.stderr_path.read_text())
    loads = [m for e, m in order if e == "loading"]
    assert set(loads) == set(names), order
    # One at a time: every load finishes before the next begins.
    for i in range(0, len(order), 2):
        assert order[i][0] == "loading" and order[i + 1] == ("start phases", order[i][1]), order


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def first_answers(inferd_bin, repo, *flags: str) -> list[int]:
    """Starts inferd on `repo` and, as soon as its HTTP port accepts connections (the startup
    loads still running), sends four completions side by side: their status codes."""
    import concurrent.futures
    import socket

    port = free_port()
    proc = subprocess.Popen([inferd_bin, "serve", "--model-repository", str(repo), "--http-port", str(port),
                             "--grpc-port", "0", "--metrics-port", "0", *flags],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.01)
        ready = requests.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=5).status_code
        assert ready != 200, "the model must still be loading when the requests arrive"
        body = {"model": "smollm2", "prompt": "Hello", "max_tokens": 2, "temperature": 0}

        def one(_):
            return requests.post(f"http://127.0.0.1:{port}/v1/completions", json=body, timeout=60).status_code

        with concurrent.futures.ThreadPoolExecutor(4) as ex:
            return list(ex.map(one, range(4)))
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_requests_during_a_cold_start_wait_for_the_model_instead_of_failing(inferd_bin, tmp_path):
    model = os.environ.get("INFERD_SMOLLM2_GGUF", "")
    assert model and Path(model).is_file(), "set INFERD_SMOLLM2_GGUF (scripts/test.sh fetches it)"
    repo = tmp_path / "models"
    (repo / "smollm2" / "1").mkdir(parents=True)
    shutil.copy(model, repo / "smollm2" / "1" / "model.gguf")
    assert first_answers(inferd_bin, repo, "--cold-start-wait-secs", "30") == [200] * 4
    # Without the wait they fail at once (the model is not there yet, or still loading).
    failed = first_answers(inferd_bin, repo)
    assert all(code in (404, 503) for code in failed), failed


def test_a_route_fallback_answers_until_the_primary_is_ready_with_no_failed_request(inferd_server_factory, tmp_path):
    repo = copy_models(tmp_path / "models", ["simple_mlp"])
    shutil.copytree(repo / "simple_mlp", repo / "mlp_new")
    cfg = repo / "mlp_new" / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace('name: "simple_mlp"', 'name: "mlp_new"'))
    (repo / "routes.toml").write_text(
        '[routes.scorer]\nkind = "split"\ntargets = [{ model = "mlp_new", weight = 1 }]\n'
        'fallback = { model = "simple_mlp", version = 1 }\n'
    )
    # The primary is not loaded yet (a replica whose model is still to come up).
    srv = inferd_server_factory(repo, control_mode="explicit", load_models=["simple_mlp"])
    body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}]}
    url = f"{srv.http_base}/v2/models/scorer/infer"
    seen: list[tuple[int, str]] = []
    stop = False

    def client():
        with requests.Session() as s:
            while not stop:
                r = s.post(url, json=body, timeout=10)
                seen.append((r.status_code, r.headers.get("x-inferd-target", "")))

    import threading
    t = threading.Thread(target=client)
    t.start()
    try:
        time.sleep(0.5)
        before = len(seen)
        assert before > 0 and all(code == 200 and target == "simple_mlp/1" for code, target in seen), seen[:5]
        requests.post(f"{srv.http_base}/v2/repository/models/mlp_new/load", json={}, timeout=60).raise_for_status()
        time.sleep(0.5)
    finally:
        stop = True
        t.join(timeout=30)
    assert all(code == 200 for code, _ in seen), [s for s in seen if s[0] != 200][:5]
    targets = [target for _, target in seen[before:]]
    assert targets[-1].startswith("mlp_new"), targets[-5:]
    # Once the primary answered, the fallback did not again.
    first = next(i for i, t in enumerate(targets) if t.startswith("mlp_new"))
    assert all(t.startswith("mlp_new") for t in targets[first:])
