"""What model.py learns of each request besides its inputs, as under Triton: `request_id()` is
the client's `id`, `parameters()` its parameters as a JSON string, and `correlation_id()` its
`sequence_id`; in a dynamic batch each request keeps its own.
"""

from __future__ import annotations

import json
import sys
import threading

import requests

from test_python_backend import write

ECHO_META = '''
import json
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            meta = {"id": request.request_id(), "parameters": json.loads(request.parameters()),
                    "correlation_id": request.correlation_id(), "x": float(x.reshape(-1)[0]),
                    "batch": len(requests)}
            value = np.array([[json.dumps(meta).encode()]] * x.shape[0], dtype=object)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("META", value)]))
        return out
'''

CONFIG = '''name: "echo_meta"
backend: "python"
max_batch_size: 8
input [ { name: "X" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "META" data_type: TYPE_STRING dims: [ 1 ] } ]
dynamic_batching { max_queue_delay_microseconds: 200000 }
'''


def ask(server, rid: str, x: float, parameters: dict) -> dict:
    body = {"id": rid, "parameters": parameters,
            "inputs": [{"name": "X", "shape": [1, 1], "datatype": "FP32", "data": [x]}]}
    r = requests.post(f"{server.http_base}/v2/models/echo_meta/infer", json=body, timeout=30)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out.get("id", "") == rid
    return json.loads(out["outputs"][0]["data"][0])


def test_model_py_sees_each_requests_id_parameters_and_correlation_id(inferd_server_factory, tmp_path):
    repo = tmp_path / "models"
    write(repo, "echo_meta", ECHO_META, CONFIG)
    server = inferd_server_factory(repo, "--python-executable", sys.executable)
    alone = ask(server, "req-1", 1.0, {"colour": "red", "threshold": 0.5, "strict": True, "sequence_id": 42})
    assert alone["id"] == "req-1" and alone["correlation_id"] == 42, alone
    assert alone["parameters"] == {"colour": "red", "threshold": 0.5, "strict": True, "sequence_id": 42}, alone
    assert ask(server, "", 2.0, {})["correlation_id"] == 0
    # Four at once: batched together (the queue waits 200 ms), each with its own id and parameters.
    results: dict[int, dict] = {}

    def one(i: int) -> None:
        results[i] = ask(server, f"batch-{i}", float(i), {"n": i, "sequence_id": f"seq-{i}"})

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert max(r["batch"] for r in results.values()) > 1, results
    for i, r in results.items():
        assert (r["id"], r["x"], r["parameters"]["n"], r["correlation_id"]) == (f"batch-{i}", float(i), i, f"seq-{i}"), r


DECOUPLED_META = '''
import json
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            meta = {"id": request.request_id(), "parameters": json.loads(request.parameters()),
                    "correlation_id": request.correlation_id()}
            value = np.array([json.dumps(meta).encode()], dtype=object)
            sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("META", value)]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
'''

DECOUPLED_CONFIG = '''name: "decoupled_meta"
backend: "python"
max_batch_size: 0
model_transaction_policy { decoupled: true }
input [ { name: "X" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "META" data_type: TYPE_STRING dims: [ 1 ] } ]
'''


def test_a_decoupled_model_py_sees_the_requests_id_parameters_and_correlation_id(inferd_server_factory, tmp_path):
    import queue

    import numpy as np
    import tritonclient.grpc as grpcclient

    repo = tmp_path / "models"
    write(repo, "decoupled_meta", DECOUPLED_META, DECOUPLED_CONFIG)
    server = inferd_server_factory(repo, "--python-executable", sys.executable)
    got: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=lambda result, error: got.put((result, error)))
    x = grpcclient.InferInput("X", [1], "FP32")
    x.set_data_from_numpy(np.array([1.0], dtype=np.float32))
    client.async_stream_infer("decoupled_meta", [x], request_id="dec-7", sequence_id=9,
                              parameters={"colour": "blue"})
    result, error = got.get(timeout=30)
    client.stop_stream()
    assert error is None, error
    meta = json.loads(result.as_numpy("META")[0])
    assert (meta["id"], meta["parameters"]["colour"], meta["correlation_id"]) == ("dec-7", "blue", 9), meta


SLOW = '''
import json
import time
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    seen = []

    def execute(self, requests):
        out = []
        for request in requests:
            x = float(pb_utils.get_input_tensor_by_name(request, "X").as_numpy().reshape(-1)[0])
            if x == 0:  # what happened to the earlier requests
                value = json.dumps(self.seen)
            else:  # work for up to 20 s, stopping early when the client left
                start = time.monotonic()
                while time.monotonic() - start < 20 and not request.is_cancelled():
                    time.sleep(0.01)
                self.seen.append({"cancelled": request.is_cancelled(), "after": time.monotonic() - start})
                value = "done"
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([value.encode()], dtype=object))]))
        return out
'''

SLOW_CONFIG = '''name: "slow"
backend: "python"
max_batch_size: 0
input [ { name: "X" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "OUT" data_type: TYPE_STRING dims: [ 1 ] } ]
'''


def test_model_py_sees_a_client_that_left_in_is_cancelled(inferd_server_factory, tmp_path):
    import time

    repo = tmp_path / "models"
    write(repo, "slow", SLOW, SLOW_CONFIG)
    server = inferd_server_factory(repo, "--python-executable", sys.executable)

    def body(x):
        return {"inputs": [{"name": "X", "shape": [1], "datatype": "FP32", "data": [x]}]}

    url = f"{server.http_base}/v2/models/slow/infer"
    try:
        requests.post(url, json=body(1.0), timeout=0.5)
        raise AssertionError("the slow request answered within 0.5 s")
    except requests.Timeout:
        pass  # the client leaves while execute runs
    start = time.monotonic()
    r = requests.post(url, json=body(0.0), timeout=30)
    waited = time.monotonic() - start
    assert r.status_code == 200, r.text
    seen = json.loads(r.json()["outputs"][0]["data"][0])
    # The one instance was busy with the abandoned request until it saw the cancellation: far
    # sooner than its 20 s of work.
    assert seen and seen[0]["cancelled"] is True, seen
    assert seen[0]["after"] < 5 and waited < 10, (seen, waited)
