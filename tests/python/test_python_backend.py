"""Triton's python backend (`backend: "python"`, `<version>/model.py`) in worker processes,
checked with tritonclient over HTTP and gRPC. The models are laid out as the
triton-inference-server/python_backend examples' READMEs describe (add_sub, auto_complete),
written here from Triton's documented API, plus models that misbehave on purpose:

- add_sub answers sums and differences over HTTP and gRPC; a batching copy gives each of 16
  concurrent clients its own rows; BYTES in and out.
- A dynamic batch reaches execute as its list of requests, each answered on its own; an error
  response's TritonError code sets its status (INVALID_ARG 400, NOT_FOUND 404, UNAVAILABLE 503).
- auto_complete_config fills a config that names no tensors.
- initialize raising leaves the version UNAVAILABLE with the exception's type and message.
- execute raising fails that request (500, the message), a TritonError(INVALID_ARG) response is
  a 400, and the worker lives on.
- A model that kills its own worker fails that request fast with the exit status, the other
  model answers throughout, and the model turns ready again with a worker restarted in the
  background; one that crashes five times within a minute is given up on (UNAVAILABLE with the
  exit status, 503s) while the others answer; a hung
  execute is cut at execute_timeout_secs; no shared-memory file is left once the server stops.
- What model.py prints goes to the server's log, not into the protocol.
"""

from __future__ import annotations

import concurrent.futures
import glob
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

ADD_SUB = '''
import json
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.model_config = config = json.loads(args["model_config"])
        out0 = pb_utils.get_output_config_by_name(config, "OUTPUT0")
        out1 = pb_utils.get_output_config_by_name(config, "OUTPUT1")
        self.out0_dtype = pb_utils.triton_string_to_numpy(out0["data_type"])
        self.out1_dtype = pb_utils.triton_string_to_numpy(out1["data_type"])
        self.name = args["model_name"]

    def execute(self, requests):
        responses = []
        for request in requests:
            in0 = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            in1 = pb_utils.get_input_tensor_by_name(request, "INPUT1").as_numpy()
            if (in0 == -999).any():
                import os
                os._exit(3)
            if (in0 == -777).any():
                raise ValueError("INPUT0 holds -777, which this model refuses")
            if (in0 == -555).any():
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError("INPUT0 holds -555", pb_utils.TritonError.INVALID_ARG)))
                continue
            if (in0 == -333).any():
                import time
                time.sleep(30)
            if (in0 == -444).any():
                import os, time
                if os.fork() == 0:  # a child that keeps the worker's pipes open
                    time.sleep(60)
                    os._exit(0)
                time.sleep(30)
            print(f"{self.name} executes {in0.shape}")
            out0 = pb_utils.Tensor("OUTPUT0", (in0 + in1).astype(self.out0_dtype))
            out1 = pb_utils.Tensor("OUTPUT1", (in0 - in1).astype(self.out1_dtype))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out0, out1]))
        return responses

    def finalize(self):
        print("Cleaning up...")
'''

ADD_SUB_CONFIG = '''name: "{name}"
backend: "python"
max_batch_size: {mbs}
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] }}, {{ name: "INPUT1" data_type: TYPE_FP32 dims: [ 4 ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] }}, {{ name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 4 ] }} ]
instance_group [ {{ kind: KIND_CPU }} ]
{extra}
'''

AUTO_COMPLETE = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    @staticmethod
    def auto_complete_config(auto_complete_model_config):
        for spec in ({"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [4]},
                     {"name": "INPUT1", "data_type": "TYPE_FP32", "dims": [4]}):
            auto_complete_model_config.add_input(spec)
        auto_complete_model_config.add_output({"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [4]})
        return auto_complete_model_config

    def execute(self, requests):
        out = []
        for r in requests:
            a = pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy()
            b = pb_utils.get_input_tensor_by_name(r, "INPUT1").as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", a * b)]))
        return out
'''

UPPER = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            text = pb_utils.get_input_tensor_by_name(r, "TEXT").as_numpy()
            upper = np.array([t.upper() for t in text.reshape(-1)], dtype=object).reshape(text.shape)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("UPPER", upper)]))
        return out
'''

# Answers each request with how many requests its execute call held; codes chosen by INPUT0.
BATCH_SEEN = '''
import numpy as np
import triton_python_backend_utils as pb_utils

CODES = {-404: pb_utils.TritonError.NOT_FOUND, -503: pb_utils.TritonError.UNAVAILABLE,
         -400: pb_utils.TritonError.INVALID_ARG}


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "X").as_numpy()
            code = CODES.get(int(x.reshape(-1)[0]))
            if code is not None:
                out.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"X is {x.reshape(-1)[0]}", code)))
                continue
            seen = np.full((x.shape[0], 1), len(requests), dtype=np.int32)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("SEEN", seen), pb_utils.Tensor("Y", x * 2)]))
        return out
'''

BROKEN_INIT = '''
class TritonPythonModel:
    def initialize(self, args):
        raise RuntimeError("no licence file for this model")

    def execute(self, requests):
        return []
'''


def write(repo: Path, name: str, code: str, config: str) -> None:
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "1" / "model.py").write_text(code)
    (repo / name / "config.pbtxt").write_text(config)


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("pybackend") / "models"
    write(repo, "add_sub", ADD_SUB, ADD_SUB_CONFIG.format(name="add_sub", mbs=0, extra=""))
    (repo / "add_sub" / "config.pbtxt").write_text(
        (repo / "add_sub" / "config.pbtxt").read_text() + 'parameters { key: "execute_timeout_secs" value: { string_value: "2" } }\n')
    write(repo, "add_sub_batched", ADD_SUB,
          ADD_SUB_CONFIG.format(name="add_sub_batched", mbs=16, extra="dynamic_batching { max_queue_delay_microseconds: 20000 }"))
    write(repo, "auto_complete", AUTO_COMPLETE, 'name: "auto_complete"\nbackend: "python"\nmax_batch_size: 0\n')
    write(repo, "upper", UPPER, 'name: "upper"\nbackend: "python"\nmax_batch_size: 0\n'
          'input [ { name: "TEXT" data_type: TYPE_STRING dims: [ -1 ] } ]\n'
          'output [ { name: "UPPER" data_type: TYPE_STRING dims: [ -1 ] } ]\n')
    write(repo, "crashy", "import os\n\nclass TritonPythonModel:\n    def execute(self, requests):\n        os._exit(7)\n",
          ADD_SUB_CONFIG.format(name="crashy", mbs=0, extra=""))
    write(repo, "batch_seen", BATCH_SEEN, 'name: "batch_seen"\nbackend: "python"\nmax_batch_size: 8\n'
          'input [ { name: "X" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
          'output [ { name: "Y" data_type: TYPE_FP32 dims: [ 1 ] }, { name: "SEEN" data_type: TYPE_INT32 dims: [ 1 ] } ]\n'
          'dynamic_batching { max_queue_delay_microseconds: 50000 }\n')
    write(repo, "broken_init", BROKEN_INIT, 'name: "broken_init"\nbackend: "python"\nmax_batch_size: 0\n'
          'input [ { name: "X" data_type: TYPE_FP32 dims: [ 1 ] } ]\noutput [ { name: "Y" data_type: TYPE_FP32 dims: [ 1 ] } ]\n')
    return repo


def shm_files() -> set[str]:
    return set(glob.glob("/dev/shm/inferd-py-*"))


@pytest.fixture(scope="module")
def server(inferd_server_factory, repo):
    before = shm_files()
    s = inferd_server_factory(repo, "--python-executable", sys.executable, strict_readiness=False)
    yield s
    s.stop()
    assert shm_files() - before == set(), "shared-memory files left behind"


def add_sub(client_module, client, model: str, a: np.ndarray, b: np.ndarray):
    inputs = [client_module.InferInput("INPUT0", list(a.shape), "FP32"),
              client_module.InferInput("INPUT1", list(b.shape), "FP32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    r = client.infer(model, inputs)
    return r.as_numpy("OUTPUT0"), r.as_numpy("OUTPUT1")


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_add_sub_answers_sums_and_differences(server, protocol):
    module = httpclient if protocol == "http" else grpcclient
    client = module.InferenceServerClient(server.http_url if protocol == "http" else server.grpc_url)
    a = np.random.default_rng(1).random(4, dtype=np.float32)
    b = np.random.default_rng(2).random(4, dtype=np.float32)
    s, d = add_sub(module, client, "add_sub", a, b)
    np.testing.assert_allclose(s, a + b)
    np.testing.assert_allclose(d, a - b)


def test_a_batching_model_gives_each_client_its_own_rows(server):
    rng = np.random.default_rng(3)
    rows = [(rng.random((1, 4), dtype=np.float32), rng.random((1, 4), dtype=np.float32)) for _ in range(16)]

    def one(i):
        client = httpclient.InferenceServerClient(server.http_url)
        return add_sub(httpclient, client, "add_sub_batched", *rows[i])

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        got = list(pool.map(one, range(16)))
    for (a, b), (s, d) in zip(rows, got):
        np.testing.assert_allclose(s, a + b)
        np.testing.assert_allclose(d, a - b)


def batch_seen(client, x: float):
    inp = httpclient.InferInput("X", [1, 1], "FP32")
    inp.set_data_from_numpy(np.array([[x]], dtype=np.float32))
    r = client.infer("batch_seen", [inp])
    return float(r.as_numpy("Y")[0, 0]), int(r.as_numpy("SEEN")[0, 0])


def test_a_dynamic_batch_reaches_execute_as_its_requests_each_answered_on_its_own(server):
    # Eight clients at once into a 50 ms batching window: execute gets several requests in one
    # list (as in Triton), and a request the model refuses fails alone, with the status its
    # TritonError code names.
    xs = [1.0, 2.0, -400.0, 4.0, -404.0, 6.0, -503.0, 8.0]

    def one(x):
        client = httpclient.InferenceServerClient(server.http_url)
        try:
            return batch_seen(client, x)
        except InferenceServerException as e:
            return e

    for _ in range(5):
        with concurrent.futures.ThreadPoolExecutor(len(xs)) as pool:
            got = list(pool.map(one, xs))
        if max(g[1] for g in got if isinstance(g, tuple)) > 1:
            break
    assert max(g[1] for g in got if isinstance(g, tuple)) > 1, got
    for x, g in zip(xs, got):
        if x > 0:
            assert g[0] == 2 * x, (x, g)
        else:
            assert isinstance(g, InferenceServerException), (x, g)
            assert g.status() == {-400.0: "400", -404.0: "404", -503.0: "503"}[x], (x, g.status(), g.message())
            assert f"X is {x}" in g.message(), g.message()


def test_bytes_in_and_out(server):
    client = httpclient.InferenceServerClient(server.http_url)
    text = np.array([b"fraud", "caf\u00e9".encode()], dtype=object)
    inp = httpclient.InferInput("TEXT", [2], "BYTES")
    inp.set_data_from_numpy(text)
    out = client.infer("upper", [inp]).as_numpy("UPPER")
    # Bytes, not text: bytes.upper() changes ASCII letters only, so the UTF-8 "é" comes back as sent.
    assert [bytes(x) for x in out] == [b"FRAUD", "CAF\u00e9".encode()]


def test_auto_complete_config_fills_a_config_without_tensors(server):
    client = httpclient.InferenceServerClient(server.http_url)
    meta = client.get_model_metadata("auto_complete")
    assert [i["name"] for i in meta["inputs"]] == ["INPUT0", "INPUT1"]
    assert [o["name"] for o in meta["outputs"]] == ["OUTPUT0"]
    a = np.arange(4, dtype=np.float32)
    inputs = [httpclient.InferInput("INPUT0", [4], "FP32"), httpclient.InferInput("INPUT1", [4], "FP32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(a)
    assert client.infer("auto_complete", inputs).as_numpy("OUTPUT0").tolist() == (a * a).tolist()


def test_initialize_raising_leaves_the_version_unavailable_with_the_exception(server):
    index = requests.post(f"{server.http_base}/v2/repository/index", json={}, timeout=10).json()
    row = next(r for r in index if r["name"] == "broken_init")
    assert row["state"] == "UNAVAILABLE", row
    assert "RuntimeError" in row["reason"] and "no licence file for this model" in row["reason"], row


def test_execute_raising_or_returning_an_error_fails_that_request_and_the_worker_lives_on(server):
    client = httpclient.InferenceServerClient(server.http_url)
    ok = np.ones(4, dtype=np.float32)
    with pytest.raises(InferenceServerException) as e:
        add_sub(httpclient, client, "add_sub", np.full(4, -777, np.float32), ok)
    assert e.value.status() == "500" and "ValueError" in e.value.message() and "-777" in e.value.message()
    with pytest.raises(InferenceServerException) as e:
        add_sub(httpclient, client, "add_sub", np.full(4, -555, np.float32), ok)
    assert e.value.status() == "400" and "INPUT0 holds -555" in e.value.message(), e.value
    s, _ = add_sub(httpclient, client, "add_sub", ok, ok)
    assert s.tolist() == [2.0] * 4


def wait_ready(client, model: str, secs: float = 20.0) -> None:
    deadline = time.time() + secs
    while not client.is_model_ready(model):
        assert time.time() < deadline, f"{model} did not turn ready again"
        time.sleep(0.05)


def test_a_worker_that_dies_fails_its_request_fast_and_is_restarted(server):
    client = httpclient.InferenceServerClient(server.http_url)
    ok = np.ones(4, dtype=np.float32)
    t0 = time.perf_counter()
    with pytest.raises(InferenceServerException) as e:
        add_sub(httpclient, client, "add_sub", np.full(4, -999, np.float32), ok)
    assert time.perf_counter() - t0 < 3
    assert "exited" in e.value.message() and "exit status: 3" in e.value.message(), e.value.message()
    # The other model never noticed; this one is restarted in the background (not ready
    # meanwhile) and answers again from a new worker.
    s, _ = add_sub(httpclient, client, "add_sub_batched", ok.reshape(1, 4), ok.reshape(1, 4))
    assert s.tolist() == [[2.0] * 4]
    wait_ready(client, "add_sub")
    s, _ = add_sub(httpclient, client, "add_sub", ok, ok)
    assert s.tolist() == [2.0] * 4


def test_a_worker_that_keeps_crashing_is_given_up_on_with_its_exit_status(server):
    client = httpclient.InferenceServerClient(server.http_url)
    crashes = 0
    for _ in range(5):
        deadline = time.time() + 20
        while not client.is_model_ready("crashy"):
            row = next(r for r in client.get_model_repository_index() if r["name"] == "crashy")
            if row["state"] == "UNAVAILABLE":
                break
            assert time.time() < deadline
            time.sleep(0.05)
        else:
            with pytest.raises(InferenceServerException) as e:
                add_sub(httpclient, client, "crashy", np.ones(4, np.float32), np.ones(4, np.float32))
            assert "exit status: 7" in e.value.message(), e.value.message()
            crashes += 1
            continue
        break
    assert crashes == 5
    deadline = time.time() + 10
    while True:
        row = next(r for r in client.get_model_repository_index() if r["name"] == "crashy")
        if row["state"] == "UNAVAILABLE" or time.time() > deadline:
            break
        time.sleep(0.05)
    assert row["state"] == "UNAVAILABLE" and "5 times" in row["reason"] and "exit status: 7" in row["reason"], row
    assert not client.is_model_ready("crashy")
    with pytest.raises(InferenceServerException) as e:
        add_sub(httpclient, client, "crashy", np.ones(4, np.float32), np.ones(4, np.float32))
    assert e.value.status() == "503" and "5 times" in e.value.message(), e.value.message()
    s, _ = add_sub(httpclient, client, "add_sub_batched", np.ones((1, 4), np.float32), np.ones((1, 4), np.float32))
    assert s.tolist() == [[2.0] * 4]


def test_a_hung_execute_is_cut_at_its_timeout_and_the_worker_restarts(server):
    client = httpclient.InferenceServerClient(server.http_url, network_timeout=60)
    ok = np.ones(4, dtype=np.float32)
    t0 = time.perf_counter()
    with pytest.raises(InferenceServerException) as e:
        add_sub(httpclient, client, "add_sub", np.full(4, -333, np.float32), ok)
    took = time.perf_counter() - t0
    assert 1.5 < took < 10, took
    assert "did not answer within 2 s" in e.value.message(), e.value.message()
    wait_ready(client, "add_sub")
    s, _ = add_sub(httpclient, client, "add_sub", ok, ok)
    assert s.tolist() == [2.0] * 4


def test_a_hung_worker_that_forked_is_killed_with_its_children_and_restarts(server):
    # Regression: only the worker itself was killed at the timeout; its forked child kept the
    # pipe open, so the worker was never seen gone and never restarted.
    client = httpclient.InferenceServerClient(server.http_url, network_timeout=60)
    ok = np.ones(4, dtype=np.float32)
    with pytest.raises(InferenceServerException) as e:
        add_sub(httpclient, client, "add_sub", np.full(4, -444, np.float32), ok)
    assert "did not answer within 2 s" in e.value.message(), e.value.message()
    wait_ready(client, "add_sub", secs=30)
    s, _ = add_sub(httpclient, client, "add_sub", ok, ok)
    assert s.tolist() == [2.0] * 4


def test_what_model_py_prints_goes_to_the_server_log(server):
    client = httpclient.InferenceServerClient(server.http_url)
    ok = np.ones(4, dtype=np.float32)
    add_sub(httpclient, client, "add_sub", ok, ok)
    deadline = time.time() + 5
    while "add_sub executes (4,)" not in server.log_tail(400) and time.time() < deadline:
        time.sleep(0.1)
    assert "add_sub executes (4,)" in server.log_tail(400)
