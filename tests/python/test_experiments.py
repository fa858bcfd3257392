"""A/B tests and shadow routes end to end, with ``requests`` against a real server:

- A/B feedback attributed by request id and by sticky key; the report's z-test and Welch
  t-test agree with scipy on the same counts and detect a planted effect; feedback needs its
  token (401/403), malformed feedback is 400 naming the field, an unknown request id is 404,
  feedback for a non-A/B route is 409; outcomes survive a restart;
- shadow routes: the caller gets the primary's answer at the primary's speed while a slow or
  failing shadow is only counted; the comparison's numbers match onnxruntime's outputs of the
  two versions; the prediction log holds one line per mirrored request, joined by request id.
"""

from __future__ import annotations

import json
import random
import time

import numpy as np
import pytest
import requests
from scipy import stats

from inferd_testlib import example_model_path, mlp_input, wait_until
from test_routes import infer, target_of
from test_routes import repo  # noqa: F401  (fixture)

FEEDBACK = "app:fb-secret"
ADMIN = "alice:s3cret"
ADMIN_AUTH = {"Authorization": "Bearer s3cret"}
FB_AUTH = {"Authorization": "Bearer fb-secret"}

AB = {
    "kind": "ab",
    "targets": [
        {"model": "simple_mlp", "version": 1, "weight": 50},
        {"model": "simple_mlp", "version": 2, "weight": 50},
    ],
    "sticky_header": "x-user-id",
    "experiment": {"metric": "conversion", "alpha": 0.05, "min_detectable_effect": 0.05},
}


def feedback(server, body, headers=FB_AUTH):
    return requests.post(server.http_base + "/v2/feedback", json=body, headers=headers, timeout=10)


def report(server, route):
    r = requests.get(server.http_base + f"/v2/routes/{route}/report", timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def metric(rep, name):
    [m] = [m for m in rep["experiment"]["metrics"] if m["metric"] == name]
    return m


def test_ab_feedback_by_request_id_and_key_gives_scipy_statistics_and_survives_restart(
    inferd_server_factory, repo, tmp_path  # noqa: F811
):
    state = tmp_path / "state"
    args = ("--state-dir", str(state), "--admin-token", ADMIN, "--feedback-token", FEEDBACK)
    server = inferd_server_factory(repo, *args)
    r = requests.put(server.http_base + "/v2/routes/checkout", json=AB, headers=ADMIN_AUTH, timeout=10)
    assert r.status_code == 200, r.text

    # Conversions planted at 10% on version 1 and 20% on version 2, reported by request id.
    rng = random.Random(7)
    plant = {"simple_mlp/1": 0.10, "simple_mlp/2": 0.20}
    s = requests.Session()
    x = mlp_input(1)
    exposures = {"simple_mlp/1": 0, "simple_mlp/2": 0}
    conversions = {"simple_mlp/1": 0, "simple_mlp/2": 0}
    arm_of_user = {}
    for i in range(1200):
        user = f"user-{i}"
        resp = infer(s, server, "checkout", x, headers={"x-user-id": user})
        arm = target_of(resp)
        arm_of_user[user] = arm
        exposures[arm] += 1
        if rng.random() < plant[arm]:
            conversions[arm] += 1
            fb = s.post(server.http_base + "/v2/feedback", headers=FB_AUTH, timeout=10,
                        json={"request_id": resp.headers["x-request-id"], "value": True})
            assert fb.status_code == 200 and fb.json()["target"] == arm, fb.text
    assert min(exposures.values()) > 450, exposures

    rep = report(server, "checkout")
    assert rep["experiment"]["exposures"] == [
        {"target": t, "exposures": exposures[t]} for t in ("simple_mlp/1", "simple_mlp/2")
    ]
    conv = metric(rep, "conversion")
    assert conv["kind"] == "conversion"
    assert [(a["trials"], a["conversions"]) for a in conv["arms"]] == [
        (exposures[t], conversions[t]) for t in ("simple_mlp/1", "simple_mlp/2")
    ]
    [cmp] = conv["comparisons"]
    # scipy's pooled two-proportion z-test on the same counts.
    (xa, na), (xb, nb) = [(conversions[t], exposures[t]) for t in ("simple_mlp/1", "simple_mlp/2")]
    pooled = (xa + xb) / (na + nb)
    z = (xb / nb - xa / na) / np.sqrt(pooled * (1 - pooled) * (1 / na + 1 / nb))
    assert cmp["result"]["statistic"] == pytest.approx(z, rel=1e-9)
    assert cmp["result"]["p_value"] == pytest.approx(2 * stats.norm.sf(abs(z)), rel=1e-6, abs=1e-12)
    assert cmp["result"]["significant"] is True, cmp
    assert cmp["samples_needed_per_arm"] > 0

    # A numeric metric by route and sticky key: revenue means 10 vs 12.
    revenue = {"simple_mlp/1": [], "simple_mlp/2": []}
    for user, arm in list(arm_of_user.items())[:400]:
        v = round(rng.gauss(10.0 if arm == "simple_mlp/1" else 12.0, 3.0), 3)
        revenue[arm].append(v)
        fb = s.post(server.http_base + "/v2/feedback", headers=FB_AUTH, timeout=10,
                    json={"route": "checkout", "key": user, "value": v, "metric": "revenue"})
        assert fb.status_code == 200 and fb.json()["target"] == arm, fb.text
    rev = metric(report(server, "checkout"), "revenue")
    assert rev["kind"] == "mean"
    [wt] = rev["comparisons"]
    want = stats.ttest_ind(revenue["simple_mlp/2"], revenue["simple_mlp/1"], equal_var=False)
    assert wt["result"]["statistic"] == pytest.approx(want.statistic, rel=1e-6)
    assert wt["result"]["p_value"] == pytest.approx(want.pvalue, rel=1e-4, abs=1e-12)
    assert wt["result"]["significant"] is True

    # Counts are saved within a tick and come back after a restart.
    def saved() -> bool:
        f = state / "experiments.json"
        if not f.exists():
            return False
        arms = json.loads(f.read_text())["checkout"]["arms"]
        return arms["simple_mlp/2"]["metrics"].get("revenue", {}).get("n") == len(revenue["simple_mlp/2"])

    wait_until(saved, timeout=10, interval=0.2, what="A/B outcomes saved in the state dir")
    server.stop()
    again = inferd_server_factory(repo, *args)
    after = report(again, "checkout")
    assert metric(after, "conversion") == conv
    assert metric(after, "revenue") == rev


def test_feedback_needs_its_token_and_names_what_is_wrong(inferd_server_factory, repo):  # noqa: F811
    server = inferd_server_factory(repo, "--admin-token", ADMIN, "--feedback-token", FEEDBACK)
    assert requests.put(server.http_base + "/v2/routes/checkout", json=AB, headers=ADMIN_AUTH, timeout=10).ok
    split = {"kind": "split", "targets": [{"model": "simple_mlp", "version": 1, "weight": 100}]}
    assert requests.put(server.http_base + "/v2/routes/plain", json=split, headers=ADMIN_AUTH, timeout=10).ok
    good = {"route": "checkout", "key": "u1", "value": 1}
    assert feedback(server, good, headers={}).status_code == 401
    assert feedback(server, good, headers={"Authorization": "Bearer nope"}).status_code == 403
    # The admin token may send feedback too.
    assert feedback(server, good, headers=ADMIN_AUTH).status_code == 200
    for body, status, words in [
        ({"route": "checkout", "key": "u1"}, 400, "'value'"),
        ({"route": "checkout", "key": "u1", "value": "yes"}, 400, "'value'"),
        ({"route": "checkout", "value": 1}, 400, "'route' and 'key'"),
        ({"route": "checkout", "key": "u1", "value": 1, "colour": "red"}, 400, "'colour'"),
        ({"request_id": "never-seen", "value": 1}, 404, "never-seen"),
        ({"route": "nowhere", "key": "u1", "value": 1}, 404, "nowhere"),
        ({"route": "plain", "key": "u1", "value": 1}, 409, "not an A/B test"),
    ]:
        r = feedback(server, body)
        assert r.status_code == status and words in r.json()["error"], (body, r.status_code, r.text)
    r = requests.post(server.http_base + "/v2/feedback", data=b"{not json", headers=FB_AUTH, timeout=10)
    assert r.status_code == 400 and "not JSON" in r.json()["error"]
    # None of that changed the counts: only the one good feedback is there.
    conv = metric(report(server, "checkout"), "conversion")
    assert sum(a["conversions"] for a in conv["arms"]) == 1


def shadow_spec(shadow: str, version: int = 1) -> dict:
    return {
        "kind": "shadow",
        "primary": {"model": "simple_mlp", "version": 1},
        "shadow": {"model": shadow, "version": version},
    }


def test_shadow_compares_versions_like_onnxruntime_and_logs_each_request(
    inferd_server_factory, repo, tmp_path, onnx_reference  # noqa: F811
):
    state = tmp_path / "state"
    server = inferd_server_factory(repo, "--state-dir", str(state))
    assert requests.put(server.http_base + "/v2/routes/mirror", json=shadow_spec("simple_mlp", 2), timeout=10).ok
    s = requests.Session()
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal((1, 64)).astype(np.float32) for _ in range(40)]
    ids = []
    for x in xs:
        r = infer(s, server, "mirror", x)
        assert target_of(r) == "simple_mlp/1"
        ids.append(r.headers["x-request-id"])
    wait_until(lambda: report(server, "mirror")["shadow"]["compared"] == len(xs), timeout=10, interval=0.1,
               what="every shadow copy compared")
    rep = report(server, "mirror")["shadow"]
    v1 = [onnx_reference.run(example_model_path("simple_mlp", 1), {"input": x})["output"] for x in xs]
    v2 = [onnx_reference.run(example_model_path("simple_mlp", 2), {"input": x})["output"] for x in xs]
    diffs = np.abs(np.concatenate(v1) - np.concatenate(v2))
    assert rep["mean_abs_diff"] == pytest.approx(float(diffs.mean()), rel=1e-4)
    assert rep["max_abs_diff"] == pytest.approx(float(diffs.max()), rel=1e-4)
    agree = np.mean([a.argmax() == b.argmax() for a, b in zip(v1, v2)])
    assert rep["agreement"] == pytest.approx(agree)
    assert rep["primary"]["errors"] == 0 and rep["shadow"]["errors"] == 0
    assert rep["psi"] is not None

    log = state / "predictions" / "mirror.jsonl"
    wait_until(lambda: log.exists() and len(log.read_text().splitlines()) == len(xs), timeout=10,
               interval=0.1, what="one prediction log line per mirrored request")
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert sorted(line["request_id"] for line in lines) == sorted(ids)
    first = next(line for line in lines if line["request_id"] == ids[0])
    assert first["primary"]["target"] == "simple_mlp/1" and first["shadow"]["target"] == "simple_mlp/2"
    np.testing.assert_allclose(first["shadow"]["values"], v2[0].flatten(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("shadow", ["slow_mlp", "flaky_mlp"])
def test_a_slow_or_failing_shadow_never_reaches_the_caller(inferd_server_factory, repo, shadow):  # noqa: F811
    server = inferd_server_factory(repo)
    plain = {"kind": "split", "targets": [{"model": "simple_mlp", "version": 1, "weight": 100}]}
    assert requests.put(server.http_base + "/v2/routes/plain", json=plain, timeout=10).ok
    assert requests.put(server.http_base + "/v2/routes/mirror", json=shadow_spec(shadow), timeout=10).ok
    s = requests.Session()
    x = mlp_input(1)
    took = {"plain": [], "mirror": []}
    for _ in range(10):  # warm both paths
        infer(s, server, "plain", x)
    n = 150
    for _ in range(n):  # interleaved, so both see the same machine
        for route in ("plain", "mirror"):
            started = time.perf_counter()
            r = infer(s, server, route, x)
            took[route].append(time.perf_counter() - started)
            assert target_of(r) == "simple_mlp/1"
    wait_until(lambda: report(server, "mirror")["shadow"]["shadow"]["requests"] + report(server, "mirror")["shadow"]["shed"] == n,
               timeout=15, interval=0.2, what="every shadow copy answered or shed")
    rep = report(server, "mirror")["shadow"]
    assert rep["primary"]["errors"] == 0
    base, with_shadow = (np.percentile(took[r], [50, 99]) for r in ("plain", "mirror"))
    # Within noise of the run without a shadow (slow_mlp holds a request up to 300 ms).
    assert with_shadow[0] <= 1.5 * base[0] + 0.003, (base, with_shadow)
    assert with_shadow[1] <= 2.0 * base[1] + 0.015, (base, with_shadow)
    if shadow == "slow_mlp":
        # The copies wait for slow_mlp's batch (up to 300 ms; sooner when 64 have arrived):
        # an order of magnitude slower than the primary, whose callers never waited for them.
        assert rep["shadow"]["p50_secs"] > max(0.03, 10 * rep["primary"]["p50_secs"]), rep
        assert rep["compared"] == rep["shadow"]["requests"]
    else:
        assert rep["shadow"]["errors"] > 0, rep
        assert rep["shadow"]["error_rate"] > 0
