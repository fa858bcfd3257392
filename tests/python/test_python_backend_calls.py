"""Triton python-backend models that talk back: decoupled models (a response sender used from
the model's own threads, the final flag, responses streamed over gRPC) and BLS (a model.py
calling the server's other models with exec, async_exec and exec(decoupled=True)). The
models are laid out as the triton-inference-server/python_backend examples' READMEs describe
(decoupled repeat and square, bls sync and async, bls_decoupled sync and async), written here
from Triton's documented API, and checked the way those examples' clients check them.
"""

from __future__ import annotations

import queue
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from test_python_backend import ADD_SUB, ADD_SUB_CONFIG, shm_files, write

# Sends IN's value as OUT, IN times, from a thread of its own; then the final flag.
SQUARE = '''
import threading
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        import json
        config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(config):
            raise pb_utils.TritonModelException("square_int32 must be decoupled")
        self.threads = []

    def execute(self, requests):
        for request in requests:
            n = int(pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()[0])
            sender = request.get_response_sender()
            t = threading.Thread(target=self.respond, args=(n, sender))
            t.start()
            self.threads.append(t)
        return None

    def respond(self, n, sender):
        for _ in range(n):
            sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([n], dtype=np.int32))]))
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def finalize(self):
        for t in self.threads:
            t.join()
'''

SQUARE_CONFIG = '''name: "square_int32"
backend: "python"
max_batch_size: 0
model_transaction_policy { decoupled: True }
input [ { name: "IN" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
instance_group [ { count: 1 kind: KIND_CPU } ]
'''

# One response per element of IN (OUT the element, IDX its index) after DELAY[i] ms each, then
# the final flag after WAIT ms; stops early when the client has gone.
REPEAT = '''
import threading
import time
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            values = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy().copy()
            delays = pb_utils.get_input_tensor_by_name(request, "DELAY").as_numpy().copy()
            wait = int(pb_utils.get_input_tensor_by_name(request, "WAIT").as_numpy()[0])
            if len(values) != len(delays):
                raise pb_utils.TritonModelException("IN and DELAY differ in length")
            threading.Thread(target=self.respond, args=(request, values, delays, wait), daemon=True).start()
        return None

    def respond(self, request, values, delays, wait):
        sender = request.get_response_sender()
        for i, (v, d) in enumerate(zip(values, delays)):
            time.sleep(d / 1000)
            if sender.is_cancelled():
                break
            sender.send(pb_utils.InferenceResponse([
                pb_utils.Tensor("OUT", np.array([v], dtype=np.int32)),
                pb_utils.Tensor("IDX", np.array([i], dtype=np.uint32))]))
        time.sleep(wait / 1000)
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
'''

REPEAT_CONFIG = '''name: "repeat_int32"
backend: "python"
max_batch_size: 0
model_transaction_policy { decoupled: True }
input [ { name: "IN" data_type: TYPE_INT32 dims: [ -1 ] },
        { name: "DELAY" data_type: TYPE_UINT32 dims: [ -1 ] },
        { name: "WAIT" data_type: TYPE_UINT32 dims: [ 1 ] } ]
output [ { name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] }, { name: "IDX" data_type: TYPE_UINT32 dims: [ 1 ] } ]
instance_group [ { count: 1 kind: KIND_CPU } ]
'''

# Calls the model MODEL_NAME names with INPUT0 and INPUT1, answers with its outputs.
BLS_SYNC = '''
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            name = pb_utils.get_input_tensor_by_name(request, "MODEL_NAME").as_numpy()[0].decode()
            inputs = [pb_utils.get_input_tensor_by_name(request, "INPUT0"),
                      pb_utils.get_input_tensor_by_name(request, "INPUT1")]
            call = pb_utils.InferenceRequest(model_name=name, inputs=inputs,
                                             requested_output_names=["OUTPUT0", "OUTPUT1"])
            response = call.exec()
            if response.has_error():
                raise pb_utils.TritonModelException(response.error().message())
            responses.append(pb_utils.InferenceResponse([
                pb_utils.get_output_tensor_by_name(response, "OUTPUT0"),
                pb_utils.get_output_tensor_by_name(response, "OUTPUT1")]))
        return responses
'''

# Both models at once (asyncio.gather over async_exec): OUTPUT0 from add_sub, OUTPUT1 from sub_add.
BLS_ASYNC = '''
import asyncio
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    async def execute(self, requests):
        responses = []
        for request in requests:
            inputs = [pb_utils.get_input_tensor_by_name(request, "INPUT0"),
                      pb_utils.get_input_tensor_by_name(request, "INPUT1")]
            calls = [pb_utils.InferenceRequest(model_name=m, inputs=inputs,
                                               requested_output_names=["OUTPUT0", "OUTPUT1"]).async_exec()
                     for m in ("add_sub", "sub_add")]
            first, second = await asyncio.gather(*calls)
            for r in (first, second):
                if r.has_error():
                    raise pb_utils.TritonModelException(r.error().message())
            responses.append(pb_utils.InferenceResponse([
                pb_utils.get_output_tensor_by_name(first, "OUTPUT0"),
                pb_utils.get_output_tensor_by_name(second, "OUTPUT1")]))
        return responses
'''

# The sum of square_int32's responses to IN (IN * IN); async: two calls at once, twice that.
BLS_DECOUPLED = '''
import asyncio
import numpy as np
import triton_python_backend_utils as pb_utils

ASYNC = {async_}


def total(responses):
    s = 0
    for r in responses:
        if r.has_error():
            raise pb_utils.TritonModelException(r.error().message())
        s += int(pb_utils.get_output_tensor_by_name(r, "OUT").as_numpy()[0])
    return s


class TritonPythonModel:
    def execute(self, requests):
        if ASYNC:
            return asyncio.run(self.both(requests))
        out = []
        for request in requests:
            call = pb_utils.InferenceRequest(model_name="square_int32", inputs=[
                pb_utils.get_input_tensor_by_name(request, "IN")], requested_output_names=["OUT"])
            s = total(call.exec(decoupled=True))
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("SUM", np.array([s], dtype=np.int32))]))
        return out

    async def both(self, requests):
        out = []
        for request in requests:
            inp = [pb_utils.get_input_tensor_by_name(request, "IN")]
            streams = await asyncio.gather(*[pb_utils.InferenceRequest(
                model_name="square_int32", inputs=inp, requested_output_names=["OUT"]).async_exec(decoupled=True)
                for _ in range(2)])
            s = sum(total(st) for st in streams)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("SUM", np.array([s], dtype=np.int32))]))
        return out
'''

BLS_DECOUPLED_CONFIG = '''name: "{name}"
backend: "python"
max_batch_size: 0
input [ {{ name: "IN" data_type: TYPE_INT32 dims: [ 1 ] }} ]
output [ {{ name: "SUM" data_type: TYPE_INT32 dims: [ 1 ] }} ]
'''

BLS_CONFIG = '''name: "{name}"
backend: "python"
max_batch_size: 0
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] }}, {{ name: "INPUT1" data_type: TYPE_FP32 dims: [ 4 ] }}{extra} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] }}, {{ name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 4 ] }} ]
'''


@pytest.fixture(scope="module")
def server(inferd_server_factory, tmp_path_factory):
    repo = tmp_path_factory.mktemp("pycalls") / "models"
    write(repo, "square_int32", SQUARE, SQUARE_CONFIG)
    write(repo, "repeat_int32", REPEAT, REPEAT_CONFIG)
    write(repo, "add_sub", ADD_SUB, ADD_SUB_CONFIG.format(name="add_sub", mbs=0, extra=""))
    # sub_add: add_sub with its outputs swapped (a second model for the async call).
    write(repo, "sub_add", ADD_SUB.replace('"OUTPUT0", (in0 + in1)', '"OUTPUT0", (in0 - in1)').replace(
        '"OUTPUT1", (in0 - in1)', '"OUTPUT1", (in0 + in1)'), ADD_SUB_CONFIG.format(name="sub_add", mbs=0, extra=""))
    write(repo, "bls_sync", BLS_SYNC, BLS_CONFIG.format(
        name="bls_sync", extra=', { name: "MODEL_NAME" data_type: TYPE_STRING dims: [ 1 ] }'))
    write(repo, "bls_async", BLS_ASYNC, BLS_CONFIG.format(name="bls_async", extra=""))
    write(repo, "bls_decoupled_sync", BLS_DECOUPLED.format(async_=False),
          BLS_DECOUPLED_CONFIG.format(name="bls_decoupled_sync"))
    write(repo, "bls_decoupled_async", BLS_DECOUPLED.format(async_=True),
          BLS_DECOUPLED_CONFIG.format(name="bls_decoupled_async"))
    before = shm_files()
    s = inferd_server_factory(repo, "--python-executable", sys.executable)
    yield s
    s.stop()
    assert shm_files() - before == set(), "shared-memory files left behind"


def stream(server, model: str, inputs, timeout: float = 30.0):
    """Sends one request on a gRPC stream; returns the responses (or errors) until the final one."""
    got: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=lambda result, error: got.put((result, error)))
    try:
        client.async_stream_infer(model, inputs, enable_empty_final_response=True)
        out = []
        deadline = time.time() + timeout
        while True:
            result, error = got.get(timeout=max(0.1, deadline - time.time()))
            if error is not None:
                out.append(error)
                break
            if result.get_response().parameters["triton_final_response"].bool_param:
                if result.get_response().outputs:
                    out.append(result)
                break
            out.append(result)
        return out
    finally:
        client.stop_stream()


def int_input(module, name: str, values, dtype=np.int32, datatype="INT32"):
    t = module.InferInput(name, [len(values)], datatype)
    t.set_data_from_numpy(np.array(values, dtype=dtype))
    return t


@pytest.mark.parametrize("n", [4, 2, 0, 1])
def test_square_sends_n_responses_of_n_from_its_own_thread(server, n):
    responses = stream(server, "square_int32", [int_input(grpcclient, "IN", [n])])
    assert all(not isinstance(r, InferenceServerException) for r in responses), responses
    assert [r.as_numpy("OUT").tolist() for r in responses] == [[n]] * n


def test_repeat_streams_each_value_with_its_index_after_its_delay(server):
    values, delays = [4, 2, 0, 1], [100, 20, 20, 20]
    t0 = time.perf_counter()
    responses = stream(server, "repeat_int32", [
        int_input(grpcclient, "IN", values), int_input(grpcclient, "DELAY", delays, np.uint32, "UINT32"),
        int_input(grpcclient, "WAIT", [200], np.uint32, "UINT32")])
    took = time.perf_counter() - t0
    assert [r.as_numpy("OUT").tolist() for r in responses] == [[v] for v in values]
    assert [r.as_numpy("IDX").tolist() for r in responses] == [[i] for i in range(4)]
    assert took >= (sum(delays) + 200) / 1000, took


def test_a_decoupled_model_refuses_a_plain_infer_call(server):
    client = httpclient.InferenceServerClient(server.http_url)
    with pytest.raises(InferenceServerException) as e:
        client.infer("square_int32", [int_input(httpclient, "IN", [2])])
    assert e.value.status() == "400", e.value


def add_sub_inputs(module, a, b, extra=()):
    inputs = [module.InferInput("INPUT0", [4], "FP32"), module.InferInput("INPUT1", [4], "FP32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    return inputs + list(extra)


def model_name_input(name: str):
    t = httpclient.InferInput("MODEL_NAME", [1], "BYTES")
    t.set_data_from_numpy(np.array([name.encode()], dtype=object))
    return t


@pytest.mark.parametrize("target,first,second", [("add_sub", np.add, np.subtract), ("sub_add", np.subtract, np.add)])
def test_bls_sync_answers_with_the_model_it_names(server, target, first, second):
    client = httpclient.InferenceServerClient(server.http_url)
    a, b = np.random.default_rng(5).random(4, dtype=np.float32), np.random.default_rng(6).random(4, dtype=np.float32)
    r = client.infer("bls_sync", add_sub_inputs(httpclient, a, b, [model_name_input(target)]))
    np.testing.assert_allclose(r.as_numpy("OUTPUT0"), first(a, b))
    np.testing.assert_allclose(r.as_numpy("OUTPUT1"), second(a, b))


def test_bls_to_a_model_the_server_lacks_fails_that_request_with_the_reason(server):
    client = httpclient.InferenceServerClient(server.http_url)
    a = np.ones(4, dtype=np.float32)
    with pytest.raises(InferenceServerException) as e:
        client.infer("bls_sync", add_sub_inputs(httpclient, a, a, [model_name_input("no_such_model")]))
    assert "no_such_model" in e.value.message() and "not found" in e.value.message(), e.value.message()
    r = client.infer("bls_sync", add_sub_inputs(httpclient, a, a, [model_name_input("add_sub")]))
    assert r.as_numpy("OUTPUT0").tolist() == [2.0] * 4


def test_bls_async_runs_two_models_at_once(server):
    client = httpclient.InferenceServerClient(server.http_url)
    a, b = np.random.default_rng(7).random(4, dtype=np.float32), np.random.default_rng(8).random(4, dtype=np.float32)
    r = client.infer("bls_async", add_sub_inputs(httpclient, a, b))
    np.testing.assert_allclose(r.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_allclose(r.as_numpy("OUTPUT1"), a + b)


@pytest.mark.parametrize("model,factor", [("bls_decoupled_sync", 1), ("bls_decoupled_async", 2)])
def test_bls_decoupled_sums_the_square_models_responses(server, model, factor):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    for n in [4, 2, 0, 1]:
        r = client.infer(model, [int_input(grpcclient, "IN", [n])])
        assert r.as_numpy("SUM").tolist() == [factor * n * n], (model, n)


def test_bls_calls_from_many_clients_at_once_all_answer(server):
    import concurrent.futures

    def one(i):
        client = httpclient.InferenceServerClient(server.http_url)
        a = np.full(4, i, dtype=np.float32)
        r = client.infer("bls_async", add_sub_inputs(httpclient, a, a))
        return r.as_numpy("OUTPUT0").tolist(), r.as_numpy("OUTPUT1").tolist()

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        got = list(pool.map(one, range(32)))
    assert got == [([2.0 * i] * 4, [2.0 * i] * 4) for i in range(32)]
