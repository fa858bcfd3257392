"""A python model's instance is fed by two executor threads: the next batch waits in the
worker's pipe while the current one runs, so the worker never idles through the round trip.
What Triton promises still holds: one instance runs one ``execute`` at a time, in one process,
and a batch that waited behind another is timed from when it could start, not from when it was
handed over.
"""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient

from test_python_backend import write as write_model
from test_python_backend_request_meta import SLOW, SLOW_CONFIG

# Answers X + 1, with the worker's pid and how many executes it saw running at once (itself
# included); a negative X makes execute take -X seconds.
COUNTING = '''
import os
import threading
import time
import numpy as np
import triton_python_backend_utils as pb_utils

LOCK = threading.Lock()


class TritonPythonModel:
    def initialize(self, args):
        self.running = 0
        self.most = 0

    def execute(self, requests):
        with LOCK:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            out = []
            for request in requests:
                x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
                time.sleep(-float(x[0]) if x[0] < 0 else 0.002)
                out.append(pb_utils.InferenceResponse([
                    pb_utils.Tensor("Y", (x + 1).astype(np.float32)),
                    pb_utils.Tensor("PID", np.array([os.getpid()], dtype=np.int64)),
                    pb_utils.Tensor("MOST", np.array([self.most], dtype=np.int64))]))
            return out
        finally:
            with LOCK:
                self.running -= 1
'''

CONFIG = '''name: "{name}"
backend: "python"
max_batch_size: 0
input [ {{ name: "X" data_type: TYPE_FP32 dims: [ 1 ] }} ]
output [ {{ name: "Y" data_type: TYPE_FP32 dims: [ 1 ] }}, {{ name: "PID" data_type: TYPE_INT64 dims: [ 1 ] }},
         {{ name: "MOST" data_type: TYPE_INT64 dims: [ 1 ] }} ]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
{extra}
'''


def write(repo: Path, name: str, extra: str = "") -> None:
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "1" / "model.py").write_text(COUNTING)
    (repo / name / "config.pbtxt").write_text(CONFIG.format(name=name, extra=extra))


@pytest.fixture(scope="module")
def server(inferd_server_factory, tmp_path_factory):
    repo = tmp_path_factory.mktemp("pipelining") / "models"
    write(repo, "counting")
    write(repo, "slow", 'parameters { key: "execute_timeout_secs" value: { string_value: "2" } }')
    # test_python_backend_request_meta's model: works up to 20 s, stopping when the client left.
    write_model(repo, "cancellable", SLOW, SLOW_CONFIG.replace('name: "slow"', 'name: "cancellable"')
                + "instance_group [ { count: 1 kind: KIND_CPU } ]\n")
    s = inferd_server_factory(repo, "--python-executable", sys.executable)
    yield s
    s.stop()


def call(url: str, model: str, x: float):
    client = httpclient.InferenceServerClient(url, network_timeout=60)
    inp = httpclient.InferInput("X", [1], "FP32")
    inp.set_data_from_numpy(np.array([x], dtype=np.float32))
    r = client.infer(model, [inp])
    return float(r.as_numpy("Y")[0]), int(r.as_numpy("PID")[0]), int(r.as_numpy("MOST")[0])


def test_one_instance_runs_one_execute_at_a_time_in_one_worker_under_concurrent_clients(server):
    xs = [float(i) for i in range(64)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda x: call(server.http_url, "counting", x), xs))
    assert [y for y, _, _ in answers] == [x + 1 for x in xs]
    assert len({pid for _, pid, _ in answers}) == 1, "one instance, one worker process"
    assert max(most for _, _, most in answers) == 1, "two executes of one instance overlapped"


def test_a_batch_waiting_behind_a_long_execute_is_timed_from_when_it_could_start(server):
    # Each execute takes 1.5 s of the model's 2 s timeout. The second request is handed to the
    # worker while the first runs, so it is answered ~3 s after it was handed over: it must
    # not be cut (nor the healthy worker killed) at 2 s.
    t0 = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(call, server.http_url, "slow", -1.5) for _ in range(2)]
        answers = [f.result() for f in futures]
    took = time.perf_counter() - t0
    assert [y for y, _, _ in answers] == [-0.5, -0.5]
    assert answers[0][1] == answers[1][1], "the worker was restarted between the two"
    assert took > 2.5, f"the two executes ran at once ({took:.2f} s)"


def test_a_client_that_leaves_while_its_batch_waits_behind_another_is_seen_cancelled(server):
    # Both clients leave after 1 s: the first while its execute runs, the second while its batch
    # waits in the worker behind the first. The second's cancel reaches the worker before its
    # execute starts; it was dropped then, and the second ran its full 20 s.
    url = f"{server.http_base}/v2/models/cancellable/infer"

    def body(x):
        return {"inputs": [{"name": "X", "shape": [1], "datatype": "FP32", "data": [x]}]}

    def leave_after_1s():
        try:
            requests.post(url, json=body(1.0), timeout=1.0)
        except requests.Timeout:
            return "left"
        return "answered"

    with ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(lambda _: leave_after_1s(), range(2)))
    assert outcomes == ["left", "left"]
    start = time.monotonic()
    r = requests.post(url, json=body(0.0), timeout=30)
    waited = time.monotonic() - start
    assert r.status_code == 200, r.text
    seen = json.loads(r.json()["outputs"][0]["data"][0])
    assert [s["cancelled"] for s in seen] == [True, True], seen
    assert all(s["after"] < 5 for s in seen) and waited < 8, (seen, waited)
