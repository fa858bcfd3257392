"""Routes shared by replicas through a real etcd server (Debian's ``etcd-server``), two real
inferd processes on one ``--state-store`` prefix, checked with ``requests`` and ``etcdctl``:

- a route put through one replica is served by the other within a second, and a blue-green
  switch through the second reaches the first as fast;
- a failing canary driven through both replicas is rolled back by exactly one decision (one
  audit entry in etcd), which both replicas then follow; when the decider stops, the other
  replica takes the lease over and decides the next rollout;
- an A/B report through either replica counts both replicas' exposures.

Needs ``etcd`` on PATH and an inferd built with ``--features etcd`` (scripts/test.sh builds it).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time

import pytest
import requests

from inferd_testlib import mlp_input, wait_until
from test_routes import canary_spec, infer, target_of
from test_routes import repo  # noqa: F401  (fixture)

ADMIN = "alice:s3cret"
AUTH = {"Authorization": "Bearer s3cret"}
PREFIX = "/inferd/test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def etcd(tmp_path):
    exe = shutil.which("etcd")
    assert exe, "etcd is not installed: apt-get install etcd-server etcd-client (.ci/run does)"
    client, peer = free_port(), free_port()
    log = open(tmp_path / "etcd.log", "wb")
    proc = subprocess.Popen(
        [exe, "--data-dir", str(tmp_path / "etcd"), "--name", "t",
         "--listen-client-urls", f"http://127.0.0.1:{client}",
         "--advertise-client-urls", f"http://127.0.0.1:{client}",
         "--listen-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-cluster", f"t=http://127.0.0.1:{peer}"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    endpoint = f"127.0.0.1:{client}"
    try:
        wait_until(lambda: etcdctl(endpoint, "endpoint", "health").returncode == 0, timeout=30, interval=0.2,
                   what="etcd to answer")
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def etcdctl(endpoint: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["etcdctl", "--endpoints", endpoint, *args], capture_output=True, text=True,
                          timeout=30, env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"})


def audit(endpoint: str) -> list[dict]:
    r = etcdctl(endpoint, "get", "--prefix", f"{PREFIX}/audit/", "--print-value-only")
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


def replicas(factory, repo, endpoint, n=2):  # noqa: F811
    return [factory(repo, "--admin-token", ADMIN, "--state-store", f"etcd://{endpoint}{PREFIX}") for _ in range(n)]


def decider_of(servers) -> list:
    return [s for s in servers if s.process.poll() is None
            and "decider=true" in s.stdout_path.read_text(errors="replace") + s.stderr_path.read_text(errors="replace")]


def test_a_change_through_one_replica_is_served_by_the_other_within_a_second(inferd_server_factory, repo, etcd):  # noqa: F811
    a, b = replicas(inferd_server_factory, repo, etcd)
    spec = {"kind": "bluegreen", "blue": {"model": "simple_mlp", "version": 1},
            "green": {"model": "simple_mlp", "version": 2}, "active": "blue"}
    put_at = time.monotonic()
    assert requests.put(a.http_base + "/v2/routes/embed", json=spec, headers=AUTH, timeout=10).status_code == 200
    s = requests.Session()

    def served_by(server, target):
        r = infer(s, server, "embed", mlp_input(1))
        return r.status_code == 200 and target_of(r) == target

    wait_until(lambda: served_by(b, "simple_mlp/1"), timeout=1.0, interval=0.02, what="b to serve the new route")
    assert time.monotonic() - put_at < 1.0
    switched_at = time.monotonic()
    r = requests.post(b.http_base + "/v2/routes/embed/switch", headers=AUTH, json={"reason": "green verified"}, timeout=10)
    assert r.status_code == 200 and r.json()["active"] == "green", r.text
    wait_until(lambda: served_by(a, "simple_mlp/2"), timeout=1.0, interval=0.02, what="a to follow the switch")
    assert time.monotonic() - switched_at < 1.0
    assert requests.get(a.http_base + "/v2/routes/embed", timeout=10).json()["active"] == "green"
    entries = audit(etcd)
    assert [(e["who"], e["action"], e["route"]) for e in entries] == [("alice", "put", "embed"), ("alice", "switch", "embed")]
    assert entries[1]["why"] == "green verified"
    # A third replica starting later finds the route with its state.
    (c,) = replicas(inferd_server_factory, repo, etcd, n=1)
    assert target_of(infer(s, c, "embed", mlp_input(1))) == "simple_mlp/2"


def drive_both(servers, route, until, timeout):
    x = mlp_input(1)
    stop = threading.Event()

    def loop(server):
        s = requests.Session()
        while not stop.is_set():
            infer(s, server, route, x)

    threads = [threading.Thread(target=loop, args=(srv,)) for srv in servers]
    for t in threads:
        t.start()
    try:
        wait_until(until, timeout=timeout, interval=0.2, what=f"route {route} to reach its state")
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)


def test_a_canary_decision_is_made_once_and_the_lease_moves_when_the_decider_stops(inferd_server_factory, repo, etcd):  # noqa: F811
    servers = replicas(inferd_server_factory, repo, etcd)
    wait_until(lambda: len(decider_of(servers)) == 1, timeout=10, interval=0.2, what="one replica to hold the decider lease")
    bad = canary_spec("flaky_mlp", [{"weight": 30, "duration_secs": 600}])
    assert requests.put(servers[1].http_base + "/v2/routes/fraud", json=bad, headers=AUTH, timeout=10).ok

    def state(server, route):
        return requests.get(server.http_base + f"/v2/routes/{route}", timeout=10).json()["state"]

    drive_both(servers, "fraud", lambda: all(state(s, "fraud") == "rolled_back" for s in servers), timeout=20)
    time.sleep(2)  # two more controller ticks: nobody decides again
    decisions = [e for e in audit(etcd) if e["who"] == "controller" and e["route"] == "fraud"]
    assert [e["state"] for e in decisions] == ["rolled_back"], decisions
    assert "error_rate" in decisions[0]["why"]

    # The decider stops; the other takes the lease over and promotes a healthy canary.
    [leader] = decider_of(servers)
    leader.stop()
    [other] = [s for s in servers if s is not leader]
    wait_until(lambda: decider_of([other]) == [other], timeout=10, interval=0.2, what="the lease to move")
    good = canary_spec("simple_mlp", [{"weight": 50, "duration_secs": 1}])
    good["canary"] = {"model": "simple_mlp", "version": 2}
    good["guardrails"] = {"max_error_rate": 0.05}
    assert requests.put(other.http_base + "/v2/routes/good", json=good, headers=AUTH, timeout=10).ok
    drive_both([other], "good", lambda: state(other, "good") == "promoted", timeout=20)
    promoted = [e for e in audit(etcd) if e["who"] == "controller" and e["route"] == "good" and e["state"] == "promoted"]
    assert len(promoted) == 1, promoted


def test_an_ab_report_counts_every_replicas_exposures(inferd_server_factory, repo, etcd):  # noqa: F811
    a, b = replicas(inferd_server_factory, repo, etcd)
    ab = {"kind": "ab", "targets": [{"model": "simple_mlp", "version": 1, "weight": 50},
                                    {"model": "simple_mlp", "version": 2, "weight": 50}],
          "experiment": {"metric": "conversion"}}
    assert requests.put(a.http_base + "/v2/routes/checkout", json=ab, headers=AUTH, timeout=10).ok
    wait_until(lambda: requests.get(b.http_base + "/v2/routes/checkout", timeout=10).status_code == 200,
               timeout=2, interval=0.05, what="b to see the route")
    s = requests.Session()
    sent = {"simple_mlp/1": 0, "simple_mlp/2": 0}
    for i, server in enumerate([a] * 60 + [b] * 90):
        sent[target_of(infer(s, server, "checkout", mlp_input(1), headers={"x-user-id": f"u{i}"}))] += 1

    def counted(server):
        rep = requests.get(server.http_base + "/v2/routes/checkout/report", timeout=10).json()
        return {e["target"]: e["exposures"] for e in rep["experiment"]["exposures"]}

    # Each replica saves its counts within a second; either one reports the sum.
    wait_until(lambda: counted(a) == sent and counted(b) == sent, timeout=5, interval=0.2,
               what="both replicas to report all 150 exposures")
