"""A slow client of a decoupled python model slows the model's `send`, instead of the server
buffering every response: the worker may have only a bounded number of responses on their way
(credits returned as the client takes them). A model that streams 600 responses of 256 KiB to a
client that stops reading gets fewer than half out; once the client reads again, every
response arrives, in order.
"""

from __future__ import annotations

import queue
import sys
import threading
import time

import numpy as np
import tritonclient.grpc as grpcclient

from test_python_backend import write

# Streams N responses of 64Ki FP32 each; PROGRESS (a file) holds how many send() calls returned.
FIREHOSE = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.block = np.zeros(65536, dtype=np.float32)

    def execute(self, requests):
        for request in requests:
            n = int(pb_utils.get_input_tensor_by_name(request, "N").as_numpy()[0])
            path = pb_utils.get_input_tensor_by_name(request, "PROGRESS").as_numpy()[0].decode()
            sender = request.get_response_sender()
            for i in range(n):
                self.block[0] = i
                sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", self.block)]))
                with open(path, "w") as f:
                    f.write(str(i + 1))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
'''

CONFIG = '''name: "firehose"
backend: "python"
max_batch_size: 0
model_transaction_policy { decoupled: True }
input [ { name: "N" data_type: TYPE_INT32 dims: [ 1 ] }, { name: "PROGRESS" data_type: TYPE_STRING dims: [ 1 ] } ]
output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 65536 ] } ]
'''


def test_a_slow_decoupled_client_slows_the_models_send(inferd_server_factory, tmp_path):
    repo = tmp_path / "models"
    write(repo, "firehose", FIREHOSE, CONFIG)
    # The model's folder is read-only to its worker; the progress file lives in a writable place.
    progress = tmp_path / "progress"
    progress.write_text("0")
    server = inferd_server_factory(repo, "--python-executable", sys.executable)
    got: queue.Queue = queue.Queue()
    release = threading.Event()

    def callback(result, error):
        got.put((result, error))
        if got.qsize() >= 3:
            release.wait(60)  # stop reading: the stream's flow control backs up to the server

    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=callback)
    try:
        n = grpcclient.InferInput("N", [1], "INT32")
        n.set_data_from_numpy(np.array([600], dtype=np.int32))
        p = grpcclient.InferInput("PROGRESS", [1], "BYTES")
        p.set_data_from_numpy(np.array([str(progress).encode()], dtype=object))
        client.async_stream_infer("firehose", [n, p], enable_empty_final_response=True)
        # Wait until the model stops getting responses out (however slow the machine), then
        # count how far it got.
        stalled, since, deadline = -1, time.time(), time.time() + 60
        while time.time() < deadline:
            now = int(progress.read_text() or 0)
            if now != stalled:
                stalled, since = now, time.time()
            elif time.time() - since > 2.0:
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"the model never stopped sending: {stalled}")
        # 3 read, the gRPC and HTTP/2 buffers of both sides (~100 of 256 KiB here), the engine's 16
        # and the worker's 64 credits; without credits the model sends all 600 at once.
        assert stalled < 300, f"{stalled} of 600 responses were sent to a client that stopped reading"
        release.set()
        values = []
        deadline = time.time() + 60
        while time.time() < deadline:
            result, error = got.get(timeout=30)
            assert error is None, error
            if result.get_response().parameters["triton_final_response"].bool_param:
                break
            values.append(int(result.as_numpy("OUT")[0]))
        assert values == list(range(600))
    finally:
        release.set()
        client.stop_stream()
