"""What a python model's worker may touch: no network unless its config sets allow_network,
its model folder and the rest of the repository (other models' folders) read-only, a private TMPDIR, an address-space limit (memory_limit_mb); and
the server logs which protections the worker got.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from test_python_backend import write

# PORT in: tries to reach the server on 127.0.0.1:PORT, to write into its own folder, into
# TMPDIR, into another model's folder and into the repository's root; answers with what
# happened to each.
PROBE = '''
import os
import socket
import tempfile
import numpy as np
import triton_python_backend_utils as pb_utils


def attempt(f):
    try:
        f()
        return b"ok"
    except Exception as e:
        return f"{type(e).__name__}: {e}".encode()


class TritonPythonModel:
    def initialize(self, args):
        self.folder = os.path.join(args["model_repository"], args["model_version"])

    def execute(self, requests):
        out = []
        for r in requests:
            port = int(pb_utils.get_input_tensor_by_name(r, "PORT").as_numpy()[0])
            net = attempt(lambda: socket.create_connection(("127.0.0.1", port), timeout=2).close())
            own = attempt(lambda: open(os.path.join(self.folder, "written.txt"), "w").write("x"))
            tmp = attempt(lambda: open(os.path.join(tempfile.gettempdir(), "scratch"), "w").write("x"))
            where = tempfile.gettempdir().encode()
            repo = os.path.dirname(self.folder.rstrip("/").rsplit("/", 1)[0])
            other = attempt(lambda: open(os.path.join(repo, "hog", "1", "intruder.py"), "w").write("x"))
            root = attempt(lambda: os.mkdir(os.path.join(repo, "planted")))
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor(
                "RESULT", np.array([net, own, tmp, where, other, root], dtype=object))]))
        return out
'''

# N MiB in: allocates and touches that much.
HOG = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            mib = int(pb_utils.get_input_tensor_by_name(r, "MIB").as_numpy()[0])
            block = np.ones(mib << 18, dtype=np.float32)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("SUM", np.array([block.sum()], dtype=np.float64))]))
        return out
'''


def probe_config(name: str, extra: str = "") -> str:
    return (f'name: "{name}"\nbackend: "python"\nmax_batch_size: 0\n'
            'input [ { name: "PORT" data_type: TYPE_INT32 dims: [ 1 ] } ]\n'
            'output [ { name: "RESULT" data_type: TYPE_STRING dims: [ 6 ] } ]\n' + extra)


@pytest.fixture(scope="module")
def server(inferd_server_factory, tmp_path_factory):
    repo = tmp_path_factory.mktemp("pysandbox") / "models"
    write(repo, "probe", PROBE, probe_config("probe"))
    write(repo, "probe_net", PROBE, probe_config(
        "probe_net", 'parameters { key: "allow_network" value: { string_value: "true" } }\n'))
    write(repo, "hog", HOG, 'name: "hog"\nbackend: "python"\nmax_batch_size: 0\n'
          'input [ { name: "MIB" data_type: TYPE_INT32 dims: [ 1 ] } ]\n'
          'output [ { name: "SUM" data_type: TYPE_FP64 dims: [ 1 ] } ]\n'
          'parameters { key: "memory_limit_mb" value: { string_value: "1024" } }\n')
    yield inferd_server_factory(repo, "--python-executable", sys.executable)


def probe(server, model: str) -> list[str]:
    client = httpclient.InferenceServerClient(server.http_url)
    port = int(server.http_url.rsplit(":", 1)[1])
    inp = httpclient.InferInput("PORT", [1], "INT32")
    inp.set_data_from_numpy(np.array([port], dtype=np.int32))
    return [x.decode() for x in client.infer(model, [inp]).as_numpy("RESULT")]


def test_a_worker_has_no_network_its_folder_is_read_only_and_its_tmpdir_is_private(server):
    net, own, tmp, where, _, _ = probe(server, "probe")
    assert net != "ok" and "unreachable" in net.lower(), net  # a network namespace with loopback down
    assert own != "ok" and "Read-only file system" in own, own
    assert tmp == "ok", tmp
    assert "inferd-py-tmp-" in where, where


def test_a_worker_cannot_write_into_other_models_or_the_repository(server):
    *_, other, root = probe(server, "probe")
    assert "Read-only file system" in other, other
    assert "Read-only file system" in root, root


def test_allow_network_lets_the_worker_reach_the_network(server):
    net, own, *_ = probe(server, "probe_net")
    assert net == "ok", net
    assert "Read-only file system" in own, own


def test_a_model_past_its_memory_limit_fails_its_request_and_lives_on(server):
    client = httpclient.InferenceServerClient(server.http_url)

    def hog(mib: int):
        inp = httpclient.InferInput("MIB", [1], "INT32")
        inp.set_data_from_numpy(np.array([mib], dtype=np.int32))
        return client.infer("hog", [inp]).as_numpy("SUM")[0]

    with pytest.raises(InferenceServerException) as e:
        hog(4096)
    assert "MemoryError" in e.value.message() or "Unable to allocate" in e.value.message(), e.value.message()
    assert hog(16) == 16 << 18


def test_the_server_logs_the_protections_each_worker_got(server):
    deadline = time.time() + 5
    while "python worker protections" not in server.log_tail(400) and time.time() < deadline:
        time.sleep(0.1)
    log = server.log_tail(400)
    line = next(l for l in log.splitlines() if "python worker protections" in l and "model=probe " in l)
    assert "network=isolated" in line and "model_dir=read-only" in line and "memory_limit=8192 MiB" in line, line
    assert "repository=read-only" in line, line
