"""Traffic routes end to end, with real clients (``requests``, ``tritonclient`` HTTP and gRPC):

- a 90/10 split lands within 1.5 points of its weights over 20,000 requests, and every answer
  names its target (``x-inferd-target``, ``parameters.target``, gRPC ``target``) and matches
  onnxruntime for that version;
- sticky keys (header, KServe parameter, gRPC metadata) keep one arm, also across two
  separately started servers; ``/versions/N/`` bypasses a route named after its model;
- a bad routes file stops startup naming the file, the route and the field; bad ``PUT``s are
  400 and change nothing;
- the admin API needs its token on every mutating call (401 without, 403 wrong), over HTTP and
  gRPC, and writes who did what to the audit log; routes and their state survive a restart;
- blue-green switches back and forth under HTTP and gRPC load with zero failed requests, each
  answer wholly from one environment; a switch to an unready side is 409;
- canaries: a failing and a slow candidate are rolled back within an interval of the breach,
  a healthy one is promoted, and a restart mid-rollout keeps its step.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from inferd_testlib import TritonClient, copy_models, example_model_path, mlp_input, wait_until

ADMIN = "alice:s3cret"
FEEDBACK = "app:fb-secret"
AUTH = {"Authorization": "Bearer s3cret"}

SPLIT_ROUTES = """
[routes.ranker]
kind = "split"
targets = [ { model = "simple_mlp", version = 1, weight = 90 }, { model = "simple_mlp", version = 2, weight = 10 } ]
sticky_header = "x-user-id"
"""


def mlp_variant(repo: Path, name: str, batching: str) -> None:
    """A copy of simple_mlp version 1 under ``name`` with its own dynamic batching settings."""
    (repo / name / "1").mkdir(parents=True)
    shutil.copy(example_model_path("simple_mlp", 1), repo / name / "1" / "model.onnx")
    (repo / name / "config.pbtxt").write_text(
        f"""name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: 64
input [ {{ name: "input" data_type: TYPE_FP32 dims: [ 64 ] }} ]
output [ {{ name: "output" data_type: TYPE_FP32 dims: [ 10 ] }} ]
{batching}
"""
    )


@pytest.fixture
def repo(tmp_path) -> Path:
    r = copy_models(tmp_path / "models", ["simple_mlp"])
    # Too slow: every request waits for a batch that never fills.
    mlp_variant(r, "slow_mlp", "dynamic_batching { max_queue_delay_microseconds: 300000 preferred_batch_size: [ 64 ] }")
    # Failing: requests time out in the queue before the batch is formed. The timeout is short
    # so the rejections are no slower than the primary's answers: at 2 ms they ran ~3x the
    # primary's p99, and the p99 check failed beside the error-rate check about one run in four.
    mlp_variant(
        r,
        "flaky_mlp",
        "dynamic_batching { max_queue_delay_microseconds: 200000 preferred_batch_size: [ 64 ] "
        "default_queue_policy { timeout_action: REJECT default_timeout_microseconds: 300 } }",
    )
    return r


@pytest.fixture(scope="module")
def reference(onnx_reference):
    cache: dict[int, np.ndarray] = {}
    x = mlp_input(1)

    def out(version: int) -> np.ndarray:
        if version not in cache:
            cache[version] = onnx_reference.run(example_model_path("simple_mlp", version), {"input": x})["output"]
        return cache[version]

    return out


def body(x: np.ndarray, parameters: dict | None = None) -> dict:
    b = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.flatten().tolist()}]}
    if parameters:
        b["parameters"] = parameters
    return b


def infer(session, server, name, x, headers=None, version=None, parameters=None):
    path = f"/v2/models/{name}" + (f"/versions/{version}" if version else "") + "/infer"
    return session.post(server.http_base + path, json=body(x, parameters), headers=headers or {}, timeout=30)


def target_of(r) -> str:
    assert r.status_code == 200, r.text
    target = r.headers["x-inferd-target"]
    assert r.json()["parameters"]["target"] == target
    return target


def start_with_routes(inferd_server_factory, repo, routes: str, *args, **kw):
    (repo / "routes.toml").write_text(routes)
    return inferd_server_factory(repo, *args, **kw)


def test_split_90_10_lands_within_1_5_points_and_answers_name_their_target(inferd_server_factory, repo, reference):
    server = start_with_routes(inferd_server_factory, repo, SPLIT_ROUTES)
    x = mlp_input(1)
    counts: dict[str, int] = {}
    lock = threading.Lock()
    errors: list[str] = []

    def client(n: int) -> None:
        s = requests.Session()
        for i in range(n):
            r = infer(s, server, "ranker", x)
            if r.status_code != 200:
                errors.append(r.text)
                continue
            t = target_of(r)
            if i % 500 == 0:
                version = int(t.split("/")[1])
                out = np.asarray(r.json()["outputs"][0]["data"], dtype=np.float32).reshape(1, 10)
                assert np.allclose(out, reference(version), atol=1e-5), f"{t} answered wrongly"
            with lock:
                counts[t] = counts.get(t, 0) + 1

    threads = [threading.Thread(target=client, args=(5000,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    total = sum(counts.values())
    assert total == 20_000
    share = counts.get("simple_mlp/1", 0) / total
    assert abs(share - 0.9) <= 0.015, counts
    assert set(counts) == {"simple_mlp/1", "simple_mlp/2"}

    # gRPC answers carry the target as a response parameter.
    g = TritonClient("grpc", server)
    try:
        inp = g.module.InferInput("input", [1, 64], "FP32")
        inp.set_data_from_numpy(x)
        res = g.client.infer("ranker", [inp]).get_response()
        assert res.parameters["target"].string_param == f"simple_mlp/{res.model_version}"
    finally:
        g.close()

    # The route and its weights, as the API shows them; an unknown route is 404.
    routes = requests.get(server.http_base + "/v2/routes", timeout=10).json()
    assert [r["name"] for r in routes] == ["ranker"]
    got = requests.get(server.http_base + "/v2/routes/ranker", timeout=10).json()
    assert got["kind"] == "split" and got["state"] == "steady"
    assert got["weights"] == [{"target": "simple_mlp/1", "weight": 90}, {"target": "simple_mlp/2", "weight": 10}]
    assert requests.get(server.http_base + "/v2/routes/nope", timeout=10).status_code == 404

    # A metrics page with per-route series.
    page = requests.get(server.http_base + "/metrics", timeout=10).text
    assert 'inferd_route_requests_total{route="ranker",target="simple_mlp/1",outcome="success"}' in page


def test_sticky_keys_keep_one_arm_across_two_separately_started_servers(inferd_server_factory, repo):
    a = start_with_routes(inferd_server_factory, repo, SPLIT_ROUTES.replace("90", "50").replace("10", "50"))
    b = inferd_server_factory(repo)
    x = mlp_input(1)
    s = requests.Session()
    keys = [f"user-{i}" for i in range(60)]
    arms_a = {k: target_of(infer(s, a, "ranker", x, {"x-user-id": k})) for k in keys}
    arms_b = {k: target_of(infer(s, b, "ranker", x, {"x-user-id": k})) for k in keys}
    assert arms_a == arms_b
    assert set(arms_a.values()) == {"simple_mlp/1", "simple_mlp/2"}, "keys should spread over both arms"
    for k in keys[:10]:
        for _ in range(5):
            assert target_of(infer(s, a, "ranker", x, {"x-user-id": k})) == arms_a[k]
        # The same key as a KServe request parameter lands on the same arm.
        assert target_of(infer(s, b, "ranker", x, parameters={"x-user-id": k})) == arms_a[k]
    # ... and as gRPC metadata.
    g = TritonClient("grpc", b)
    try:
        inp = g.module.InferInput("input", [1, 64], "FP32")
        inp.set_data_from_numpy(x)
        for k in keys[:10]:
            res = g.client.infer("ranker", [inp], headers={"x-user-id": k}).get_response()
            assert res.parameters["target"].string_param == arms_a[k]
    finally:
        g.close()


def test_explicit_version_bypasses_a_route_named_after_its_model(inferd_server_factory, repo):
    routes = """
[routes.simple_mlp]
kind = "split"
targets = [ { model = "simple_mlp", version = 1, weight = 1 } ]
"""
    server = start_with_routes(inferd_server_factory, repo, routes)
    s = requests.Session()
    x = mlp_input(1)
    assert {target_of(infer(s, server, "simple_mlp", x)) for _ in range(20)} == {"simple_mlp/1"}
    assert target_of(infer(s, server, "simple_mlp", x, version=2)) == "simple_mlp/2"


@pytest.mark.parametrize(
    "routes, words",
    [
        (SPLIT_ROUTES.replace('model = "simple_mlp", version = 2', 'model = "nosuch", version = 2'), ["ranker", "targets", "nosuch"]),
        (SPLIT_ROUTES.replace("weight = 90", "weight = -1"), ["ranker", "weight"]),
        (SPLIT_ROUTES.replace('kind = "split"', 'kind = "split"\nbogus = 1'), ["ranker", "bogus"]),
        ('[routes.simple_mlp]\nkind = "split"\ntargets = [ { model = "slow_mlp", weight = 1 } ]\n', ["simple_mlp", "model"]),
    ],
    ids=["unknown-model", "negative-weight", "unknown-field", "route-shadows-model"],
)
def test_bad_routes_file_stops_startup_naming_file_route_and_field(inferd_bin, repo, routes, words):
    f = repo / "routes.toml"
    f.write_text(routes)
    p = subprocess.run(
        [str(inferd_bin), "serve", "--model-repository", str(repo), "--http-port", "0", "--grpc-port", "0",
         "--allow-metrics", "false"],
        capture_output=True, text=True, timeout=60,
    )
    assert p.returncode != 0
    err = p.stderr
    assert "routes.toml" in err, err
    for w in words:
        assert w in err, f"{w!r} missing from: {err}"


def test_admin_api_needs_its_token_and_audits_who_changed_what(inferd_server_factory, repo, tmp_path):
    state = tmp_path / "state"
    server = inferd_server_factory(
        repo, "--admin-token", ADMIN, "--feedback-token", FEEDBACK, "--state-dir", str(state),
        control_mode="explicit", load_models=["simple_mlp"],
    )
    base = server.http_base
    spec = {"kind": "split", "targets": [{"model": "simple_mlp", "version": 2, "weight": 1}]}
    calls = [
        ("PUT", "/v2/routes/r1", spec),
        ("DELETE", "/v2/routes/r1", None),
        ("POST", "/v2/routes/r1/promote", None),
        ("POST", "/v2/routes/r1/switch", None),
        ("POST", "/v2/repository/models/simple_mlp/load", {}),
        ("POST", "/v2/repository/models/simple_mlp/unload", {}),
    ]
    for method, path, payload in calls:
        r = requests.request(method, base + path, json=payload, timeout=10)
        assert r.status_code == 401, (method, path, r.status_code, r.text)
        r = requests.request(method, base + path, json=payload, headers={"Authorization": "Bearer wrong"}, timeout=10)
        assert r.status_code == 403, (method, path, r.status_code, r.text)
        r = requests.request(method, base + path, json=payload, headers={"Authorization": "Bearer fb-secret"}, timeout=10)
        assert r.status_code == 403, f"a feedback token must not change routes: {method} {path}"
    # gRPC repository calls too.
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    g = grpcclient.InferenceServerClient(server.grpc_url)
    for headers, code in ((None, "UNAUTHENTICATED"), ({"authorization": "Bearer wrong"}, "PERMISSION_DENIED")):
        with pytest.raises(InferenceServerException) as e:
            g.unload_model("simple_mlp", headers=headers)
        assert code in str(e.value.status()), e.value
    g.load_model("simple_mlp", headers={"authorization": "Bearer s3cret"})
    g.close()
    assert requests.get(base + "/v2/models/simple_mlp/ready", timeout=10).status_code == 200

    # With the token: a PUT, a refused PUT that changes nothing, a delete.
    r = requests.put(base + "/v2/routes/r1?reason=first+try", json=spec, headers=AUTH, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["weights"] == [{"target": "simple_mlp/2", "weight": 1}]
    for bad, words in (
        ({"kind": "split", "targets": [{"model": "nosuch", "weight": 1}]}, ["r1", "nosuch"]),
        ({"kind": "split", "targets": [{"model": "simple_mlp", "weight": 0}]}, ["r1", "weight"]),
        ({"kind": "split", "targets": [{"model": "r2", "weight": 1}]}, ["r1", "r2"]),
        ({"kind": "nope"}, ["r1"]),
    ):
        r = requests.put(base + "/v2/routes/r1", json=bad, headers=AUTH, timeout=10)
        assert r.status_code == 400, r.text
        for w in words:
            assert w in r.json()["error"], r.text
    r = requests.put(base + "/v2/routes/simple_mlp", json={"kind": "split", "targets": [{"model": "slow_mlp", "weight": 1}]}, headers=AUTH, timeout=10)
    assert r.status_code == 400 and "simple_mlp" in r.json()["error"], r.text
    got = requests.get(base + "/v2/routes/r1", timeout=10).json()
    assert got["weights"] == [{"target": "simple_mlp/2", "weight": 1}], "a refused PUT changed the route"
    r = requests.post(base + "/v2/routes/r1/promote", headers=AUTH, timeout=10)
    assert r.status_code == 409, r.text
    r = requests.post(base + "/v2/routes/r1/frobnicate", headers=AUTH, timeout=10)
    assert r.status_code == 404, r.text
    assert requests.delete(base + "/v2/routes/nope", headers=AUTH, timeout=10).status_code == 404
    r = requests.put(base + "/v2/routes/r2", json=spec, headers=AUTH, timeout=10)
    assert r.status_code == 200
    assert requests.delete(base + "/v2/routes/r2?reason=done", headers=AUTH, timeout=10).status_code == 200
    assert requests.get(base + "/v2/routes/r2", timeout=10).status_code == 404

    lines = [json.loads(line) for line in (state / "audit.log").read_text().splitlines()]
    assert [(e["who"], e["action"], e["route"]) for e in lines] == [
        ("alice", "put", "r1"), ("alice", "put", "r2"), ("alice", "delete", "r2"),
    ]
    assert lines[0]["why"] == "first try" and lines[2]["why"] == "done"

    # A restart keeps r1.
    server.stop()
    again = inferd_server_factory(repo, "--admin-token", ADMIN, "--state-dir", str(state))
    assert target_of(infer(requests.Session(), again, "r1", mlp_input(1))) == "simple_mlp/2"


def test_admin_port_takes_the_admin_api_off_the_http_port(inferd_server_factory, repo):
    server = inferd_server_factory(repo, "--admin-token", ADMIN, "--admin-port", "0")
    assert server.admin_base.startswith("http://127.0.0.1:"), "the admin listener binds loopback by default"
    spec = {"kind": "split", "targets": [{"model": "simple_mlp", "version": 2, "weight": 1}]}
    for method, path in (("PUT", "/v2/routes/r1"), ("GET", "/v2/routes"), ("POST", "/v2/routes/r1/promote"),
                         ("POST", "/v2/repository/models/simple_mlp/unload")):
        r = requests.request(method, server.http_base + path, json=spec, headers=AUTH, timeout=10)
        assert r.status_code == 404 and "--admin-port" in r.json()["error"], (method, path, r.text)
    assert requests.put(server.admin_base + "/v2/routes/r1", json=spec, timeout=10).status_code == 401
    r = requests.put(server.admin_base + "/v2/routes/r1", json=spec, headers=AUTH, timeout=10)
    assert r.status_code == 200, r.text
    assert [x["name"] for x in requests.get(server.admin_base + "/v2/routes", timeout=10).json()] == ["r1"]
    # Clients still call the route (and report feedback) on the HTTP port.
    assert target_of(infer(requests.Session(), server, "r1", mlp_input(1))) == "simple_mlp/2"
    r = requests.post(server.http_base + "/v2/feedback", json={"route": "r1", "key": "k", "value": 1}, headers=AUTH, timeout=10)
    assert r.status_code == 409 and "not an A/B test" in r.json()["error"], r.text
    # Inference is not served on the admin port.
    r = requests.post(server.admin_base + "/v2/models/simple_mlp/infer", json=body(mlp_input(1)), timeout=10)
    assert r.status_code == 404


def test_the_route_cli_drives_the_admin_api(inferd_server_factory, inferd_bin, repo, tmp_path):
    state = tmp_path / "state"
    server = inferd_server_factory(repo, "--admin-token", ADMIN, "--admin-port", "0", "--state-dir", str(state))
    at = ["--url", server.admin_base, "--token", ADMIN]

    def cli(*args, at=at):
        return subprocess.run([str(inferd_bin), *args, *at], capture_output=True, text=True, timeout=60)

    routes = tmp_path / "routes.toml"
    routes.write_text(SPLIT_ROUTES + """
[routes.embed]
kind = "bluegreen"
blue = { model = "simple_mlp", version = 1 }
green = { model = "simple_mlp", version = 2 }
active = "blue"

[routes.checkout]
kind = "ab"
targets = [ { model = "simple_mlp", version = 1, weight = 50 }, { model = "simple_mlp", version = 2, weight = 50 } ]
experiment = { metric = "conversion" }
""")
    r = cli("route", "apply", str(routes), "--reason", "first rollout")
    assert r.returncode == 0, r.stderr
    assert [x["name"] for x in json.loads(r.stdout)] == ["checkout", "embed", "ranker"]
    r = cli("route", "list")
    assert r.returncode == 0 and {x["name"] for x in json.loads(r.stdout)} == {"checkout", "embed", "ranker"}
    r = cli("route", "get", "ranker")
    assert json.loads(r.stdout)["weights"] == [{"target": "simple_mlp/1", "weight": 90}, {"target": "simple_mlp/2", "weight": 10}]
    r = cli("route", "switch", "embed", "--reason", "v2 verified")
    assert r.returncode == 0 and json.loads(r.stdout)["active"] == "green", r.stderr
    assert target_of(infer(requests.Session(), server, "embed", mlp_input(1))) == "simple_mlp/2"
    r = cli("report", "checkout")
    assert r.returncode == 0 and json.loads(r.stdout)["experiment"]["metrics"][0]["metric"] == "conversion"
    # Refusals exit 1 with the server's status and message; a dead URL exits 2.
    r = cli("route", "promote", "embed")
    assert r.returncode == 1 and "409" in r.stderr, r.stderr
    r = cli("route", "delete", "ranker", at=["--url", server.admin_base])
    assert r.returncode == 1 and "401" in r.stderr, r.stderr
    r = cli("route", "delete", "ranker", at=["--url", server.admin_base, "--token", "wrong"])
    assert r.returncode == 1 and "403" in r.stderr, r.stderr
    r = cli("route", "get", "nosuch")
    assert r.returncode == 1 and "404" in r.stderr and "nosuch" in r.stderr
    r = cli("route", "list", at=["--url", "http://127.0.0.1:9"])
    assert r.returncode == 2, r.stderr
    assert cli("route", "delete", "ranker").returncode == 0
    audit = [json.loads(line) for line in (state / "audit.log").read_text().splitlines()]
    assert [(e["who"], e["action"], e["route"], e["why"]) for e in audit] == [
        ("alice", "put", "checkout", "first rollout"), ("alice", "put", "embed", "first rollout"),
        ("alice", "put", "ranker", "first rollout"), ("alice", "switch", "embed", "v2 verified"),
        ("alice", "delete", "ranker", ""),
    ]


BLUEGREEN = """
[routes.embed]
kind = "bluegreen"
blue = { model = "simple_mlp", version = 1 }
green = { model = "simple_mlp", version = 2 }
active = "blue"

[routes.nowhere]
kind = "bluegreen"
blue = { model = "simple_mlp", version = 1 }
green = { model = "simple_mlp", version = 7 }
active = "blue"
"""


def test_blue_green_switches_under_load_with_every_answer_from_one_side(inferd_server_factory, repo, reference, tmp_path):
    state = tmp_path / "state"
    server = start_with_routes(inferd_server_factory, repo, BLUEGREEN, "--state-dir", str(state))
    x = mlp_input(1)
    stop = threading.Event()
    seen: dict[str, list] = {"http": [], "grpc": []}

    def loop(protocol: str) -> None:
        c = TritonClient(protocol, server)
        try:
            while not stop.is_set():
                try:
                    version, out = c.infer("embed", {"input": x}, ["output"], timeout=10.0)
                    seen[protocol].append((version, out["output"]))
                except Exception as exc:  # noqa: BLE001 - every failure is a finding
                    seen[protocol].append((None, repr(exc)))
                time.sleep(0.002)
        finally:
            c.close()

    threads = [threading.Thread(target=loop, args=(p,)) for p in seen]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: all(seen.values()), timeout=10, what="first responses")
        for i in range(6):
            r = requests.post(server.http_base + "/v2/routes/embed/switch", json={"reason": f"switch {i}"}, timeout=10)
            assert r.status_code == 200, r.text
            want = "green" if i % 2 == 0 else "blue"
            assert r.json()["active"] == want
            time.sleep(0.7)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    for protocol, obs in seen.items():
        failed = [o for o in obs if o[0] is None]
        assert not failed, f"{protocol}: {len(failed)} failed, first {failed[:2]}"
        assert {o[0] for o in obs} == {"1", "2"}, protocol
        for version, out in obs:
            assert np.allclose(out, reference(int(version)), atol=1e-5), f"{protocol}: mixed answer for v{version}"
    # A side that is not ready is refused, and nothing changes.
    r = requests.post(server.http_base + "/v2/routes/nowhere/switch", timeout=10)
    assert r.status_code == 409, r.text
    assert requests.get(server.http_base + "/v2/routes/nowhere", timeout=10).json()["active"] == "blue"
    # The active side survives a restart (six switches: back on blue; switch once more).
    assert requests.post(server.http_base + "/v2/routes/embed/switch", timeout=10).json()["active"] == "green"
    server.stop()
    again = inferd_server_factory(repo, "--state-dir", str(state))
    assert requests.get(again.http_base + "/v2/routes/embed", timeout=10).json()["active"] == "green"
    assert target_of(infer(requests.Session(), again, "embed", x)) == "simple_mlp/2"


def canary_spec(candidate: str, steps: list[dict], threshold: int = 1) -> dict:
    return {
        "kind": "canary",
        "primary": {"model": "simple_mlp", "version": 1},
        "canary": {"model": candidate, "version": 1},
        "steps": steps,
        "interval_secs": 1,
        "threshold": threshold,
        "guardrails": {"max_error_rate": 0.05, "max_p99_ratio": 3.0},
    }


def drive(server, route: str, until, timeout: float) -> dict:
    """Sends requests to ``route`` from two threads until ``until(route_json)``; counts answers."""
    x = mlp_input(1)
    stop = threading.Event()
    tally = {"ok": {}, "failed": 0}
    lock = threading.Lock()

    def loop() -> None:
        s = requests.Session()
        while not stop.is_set():
            r = infer(s, server, route, x)
            with lock:
                if r.status_code == 200:
                    t = r.headers["x-inferd-target"]
                    tally["ok"][t] = tally["ok"].get(t, 0) + 1
                else:
                    assert r.status_code >= 500, r.text
                    tally["failed"] += 1

    threads = [threading.Thread(target=loop) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: until(requests.get(server.http_base + f"/v2/routes/{route}", timeout=10).json()),
                   timeout=timeout, interval=0.2, what=f"route {route} to reach its state")
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    return tally


@pytest.mark.parametrize("candidate, check", [("flaky_mlp", "error_rate"), ("slow_mlp", "p99_ratio")])
def test_a_bad_canary_is_rolled_back_within_an_interval_and_says_why(inferd_server_factory, repo, tmp_path, candidate, check):
    state = tmp_path / "state"
    server = inferd_server_factory(repo, "--state-dir", str(state))
    spec = canary_spec(candidate, [{"weight": 20, "duration_secs": 600}])
    assert requests.put(server.http_base + "/v2/routes/fraud", json=spec, timeout=10).status_code == 200
    started = time.monotonic()
    tally = drive(server, "fraud", lambda r: r["state"] == "rolled_back", timeout=20)
    assert time.monotonic() - started < 6, "rollback should come within about one interval"
    got = requests.get(server.http_base + "/v2/routes/fraud", timeout=10).json()
    assert check in got["reason"], got
    assert got["weights"] == [{"target": "simple_mlp/1", "weight": 100}, {"target": f"{candidate}/1", "weight": 0}]
    failed_checks = [a for a in got["analyses"] if not a["passed"]]
    assert [a["name"] for a in failed_checks] == [check], got["analyses"]
    if candidate == "flaky_mlp":
        total = tally["failed"] + sum(tally["ok"].values())
        assert tally["failed"] > 0
        assert tally["failed"] / total < 0.4, f"only the canary's share should fail: {tally}"
    else:
        assert tally["failed"] == 0
    # After the rollback every request goes to the primary.
    s = requests.Session()
    assert {target_of(infer(s, server, "fraud", mlp_input(1))) for _ in range(30)} == {"simple_mlp/1"}
    lines = [json.loads(line) for line in (state / "audit.log").read_text().splitlines()]
    decisions = [e for e in lines if e["who"] == "controller"]
    assert decisions and decisions[-1]["state"] == "rolled_back" and check in decisions[-1]["why"], lines


def test_a_healthy_canary_is_promoted_and_a_restart_keeps_its_step(inferd_server_factory, repo, tmp_path):
    state = tmp_path / "state"
    server = inferd_server_factory(repo, "--state-dir", str(state))
    healthy = canary_spec("simple_mlp", [{"weight": 20, "duration_secs": 2}, {"weight": 50, "duration_secs": 2}])
    healthy["canary"] = {"model": "simple_mlp", "version": 2}
    healthy["guardrails"] = {"max_error_rate": 0.05}
    assert requests.put(server.http_base + "/v2/routes/fraud", json=healthy, timeout=10).status_code == 200
    tally = drive(server, "fraud", lambda r: r["state"] == "promoted", timeout=30)
    assert tally["failed"] == 0 and set(tally["ok"]) == {"simple_mlp/1", "simple_mlp/2"}
    s = requests.Session()
    assert {target_of(infer(s, server, "fraud", mlp_input(1))) for _ in range(20)} == {"simple_mlp/2"}

    # A rollout in its second step, restarted, is still in its second step.
    long = dict(healthy, steps=[{"weight": 20, "duration_secs": 1}, {"weight": 50, "duration_secs": 600}])
    assert requests.put(server.http_base + "/v2/routes/slow", json=long, timeout=10).status_code == 200
    drive(server, "slow", lambda r: r.get("step") == 2, timeout=20)
    server.stop()
    again = inferd_server_factory(repo, "--state-dir", str(state))
    got = requests.get(again.http_base + "/v2/routes/slow", timeout=10).json()
    assert got["state"] == "progressing" and got["step"] == 2, got
    assert requests.get(again.http_base + "/v2/routes/fraud", timeout=10).json()["state"] == "promoted"
    # Operator actions: pause, resume, abort; a second abort conflicts.
    for action, state_after in (("pause", "paused"), ("resume", "progressing"), ("abort", "rolled_back")):
        r = requests.post(again.http_base + f"/v2/routes/slow/{action}", json={"reason": f"{action} test"}, timeout=10)
        assert r.status_code == 200 and r.json()["state"] == state_after, r.text
    assert requests.post(again.http_base + "/v2/routes/slow/abort", timeout=10).status_code == 409


def test_a_canary_from_the_routes_file_runs_its_first_step_in_full(inferd_server_factory, repo):
    """Regression: routes from the file started their steps at clock 0, so a healthy canary was
    promoted at its first analysis however long its step."""
    spec = canary_spec("simple_mlp", [{"weight": 50, "duration_secs": 600}])
    spec["canary"] = {"model": "simple_mlp", "version": 2}
    (repo / "routes.toml").write_text(
        "[routes.fraud]\nkind = \"canary\"\nprimary = { model = \"simple_mlp\", version = 1 }\n"
        "canary = { model = \"simple_mlp\", version = 2 }\nsteps = [ { weight = 50, duration_secs = 600 } ]\n"
        "interval_secs = 1\nguardrails = { max_error_rate = 0.05 }\n"
    )
    server = inferd_server_factory(repo)
    drive(server, "fraud", lambda r: len(r["analyses"]) > 0, timeout=10)
    time.sleep(2.5)  # two more analyses
    got = requests.get(server.http_base + "/v2/routes/fraud", timeout=10).json()
    assert got["state"] == "progressing" and got["step"] == 1, got
