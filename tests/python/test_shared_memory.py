"""System shared memory (Triton's ``systemsharedmemory`` extension) with the real tritonclient and
its ``tritonclient.utils.shared_memory`` helpers, as Triton's shm example clients use them:
regions registered over HTTP and gRPC, inputs read from and outputs written into them, status
and unregister, regions that lie refused, a 64 MiB tensor through shared memory equal to the
same through the socket, and CUDA shared memory answered precisely on a CPU build.
"""

from __future__ import annotations

import os
import uuid

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException, serialize_byte_tensor, serialized_byte_size

import triton_models


@pytest.fixture(scope="module")
def server(inferd_server_factory, tmp_path_factory):
    repo = triton_models.make_repo(tmp_path_factory.mktemp("shm") / "models")
    # Room for the 64 MiB comparison through the socket (shared memory needs none).
    return inferd_server_factory(repo, "--http-max-body-bytes", str(80 << 20))


@pytest.fixture
def regions():
    """Creates shared-memory segments with unique keys; destroys them after the test."""
    made = []

    def create(size: int):
        key = f"/inferd-test-{uuid.uuid4().hex[:12]}"
        handle = shm.create_shared_memory_region(key.strip("/"), key, size)
        made.append(handle)
        return key, handle

    yield create
    for h in made:
        shm.destroy_shared_memory_region(h)


def _client(server, protocol):
    if protocol == "http":
        return httpclient, httpclient.InferenceServerClient(server.http_url)
    return grpcclient, grpcclient.InferenceServerClient(server.grpc_url)


def _status_names(client, protocol):
    st = client.get_system_shared_memory_status()
    return sorted(r["name"] for r in st) if protocol == "http" else sorted(st.regions.keys())


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_simple_reads_inputs_and_writes_outputs_in_shared_memory(server, protocol, regions):
    mod, client = _client(server, protocol)
    client.unregister_system_shared_memory()
    client.unregister_cuda_shared_memory()
    in0 = np.arange(16, dtype=np.int32)
    in1 = np.ones(16, dtype=np.int32)
    in_key, in_h = regions(128)
    out_key, out_h = regions(128)
    shm.set_shared_memory_region(in_h, [in0])
    shm.set_shared_memory_region(in_h, [in1], offset=64)
    client.register_system_shared_memory("input_data", in_key, 128)
    client.register_system_shared_memory("output_data", out_key, 128)
    assert _status_names(client, protocol) == ["input_data", "output_data"]
    inputs = [mod.InferInput("INPUT0", [1, 16], "INT32"), mod.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_shared_memory("input_data", 64)
    inputs[1].set_shared_memory("input_data", 64, offset=64)
    outputs = [mod.InferRequestedOutput("OUTPUT0"), mod.InferRequestedOutput("OUTPUT1")]
    outputs[0].set_shared_memory("output_data", 64)
    outputs[1].set_shared_memory("output_data", 64, offset=64)
    result = client.infer("simple", inputs, outputs=outputs)
    o0, o1 = result.get_output("OUTPUT0"), result.get_output("OUTPUT1")
    if protocol == "http":
        dt0, shape0 = o0["datatype"], o0["shape"]
    else:
        dt0, shape0 = o0.datatype, list(o0.shape)
    assert dt0 == "INT32" and shape0 == [1, 16]
    sum_ = shm.get_contents_as_numpy(out_h, np.int32, [1, 16])
    diff = shm.get_contents_as_numpy(out_h, np.int32, [1, 16], offset=64)
    np.testing.assert_array_equal(sum_[0], in0 + in1)
    np.testing.assert_array_equal(diff[0], in0 - in1)
    # The same objects reused with data in the body, then shared memory again.
    inputs[1].set_data_from_numpy(2 * in1.reshape(1, 16))
    for o in outputs:
        o.unset_shared_memory()
    result = client.infer("simple", inputs, outputs=outputs)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0")[0], in0 + 2)
    client.unregister_system_shared_memory("input_data")
    assert _status_names(client, protocol) == ["output_data"]
    client.unregister_system_shared_memory()
    assert _status_names(client, protocol) == []


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_strings_fit_regions_sized_exactly(server, protocol, regions):
    mod, client = _client(server, protocol)
    in0 = np.array([str(i).encode() for i in range(16)], dtype=np.object_)
    in1 = np.array([b"1"] * 16, dtype=np.object_)
    want0 = np.array([str(i + 1).encode() for i in range(16)], dtype=np.object_)
    want1 = np.array([str(i - 1).encode() for i in range(16)], dtype=np.object_)
    names = []
    for name, arr, write in (("i0", in0, True), ("i1", in1, True), ("o0", want0, False), ("o1", want1, False)):
        serialized = serialize_byte_tensor(arr)
        size = serialized_byte_size(serialized)
        key, h = regions(size)
        if write:
            shm.set_shared_memory_region(h, [serialized])
        client.register_system_shared_memory(f"{protocol}-{name}", key, size)
        names.append((f"{protocol}-{name}", size, h))
    inputs = [mod.InferInput("INPUT0", [1, 16], "BYTES"), mod.InferInput("INPUT1", [1, 16], "BYTES")]
    inputs[0].set_shared_memory(names[0][0], names[0][1])
    inputs[1].set_shared_memory(names[1][0], names[1][1])
    outputs = [mod.InferRequestedOutput("OUTPUT0"), mod.InferRequestedOutput("OUTPUT1")]
    outputs[0].set_shared_memory(names[2][0], names[2][1])
    outputs[1].set_shared_memory(names[3][0], names[3][1])
    client.infer("simple_string", inputs, outputs=outputs)
    got0 = shm.get_contents_as_numpy(names[2][2], np.object_, [1, 16])
    got1 = shm.get_contents_as_numpy(names[3][2], np.object_, [1, 16])
    assert list(got0[0]) == list(want0) and list(got1[0]) == list(want1)
    client.unregister_system_shared_memory()


def test_a_64_mib_tensor_through_shared_memory_equals_the_socket(server, regions):
    client = httpclient.InferenceServerClient(server.http_url)
    rng = np.random.default_rng(7)
    # ONNX string tensors hold UTF-8: printable ASCII.
    text = rng.integers(32, 127, size=64 << 20, dtype=np.uint8).tobytes()
    payload = np.array([[text]], dtype=np.object_)
    size = 4 + (64 << 20)
    in_key, in_h = regions(size)
    out_key, out_h = regions(size)
    shm.set_shared_memory_region(in_h, [serialize_byte_tensor(payload)])
    client.register_system_shared_memory("big_in", in_key, size)
    client.register_system_shared_memory("big_out", out_key, size)
    inp = httpclient.InferInput("INPUT0", [1, 1], "BYTES")
    inp.set_shared_memory("big_in", size)
    out = httpclient.InferRequestedOutput("OUTPUT0")
    out.set_shared_memory("big_out", size)
    client.infer("simple_identity", [inp], outputs=[out])
    through_shm = shm.get_contents_as_numpy(out_h, np.object_, [1, 1])
    inp2 = httpclient.InferInput("INPUT0", [1, 1], "BYTES")
    inp2.set_data_from_numpy(payload, binary_data=True)
    through_socket = client.infer(
        "simple_identity", [inp2], outputs=[httpclient.InferRequestedOutput("OUTPUT0", binary_data=True)]
    ).as_numpy("OUTPUT0")
    assert bytes(through_shm[0][0]) == bytes(through_socket[0][0]) == bytes(payload[0][0])
    client.unregister_system_shared_memory()


def test_regions_that_lie_are_refused_and_nothing_outside_is_touched(server, regions):
    base = server.http_base
    key, h = regions(64)

    def register(name, body):
        return requests.post(f"{base}/v2/systemsharedmemory/region/{name}/register", json=body, timeout=10)

    r = register("too_big", {"key": key, "offset": 0, "byte_size": 65})
    assert r.status_code == 400 and "past the end" in r.json()["error"]
    r = register("far", {"key": key, "offset": 64, "byte_size": 1})
    assert r.status_code == 400 and "past the end" in r.json()["error"]
    for bad_key in ("/../etc/passwd", "etc/passwd", "/a/b"):
        r = register("escape", {"key": bad_key, "offset": 0, "byte_size": 1})
        assert r.status_code == 400 and bad_key in r.json()["error"], r.text
    # A symbolic link in /dev/shm is not followed.
    link = f"/dev/shm/inferd-link-{uuid.uuid4().hex[:8]}"
    os.symlink("/etc/hostname", link)
    try:
        r = register("link", {"key": "/" + os.path.basename(link), "offset": 0, "byte_size": 1})
        assert r.status_code == 400 and "cannot open" in r.json()["error"]
    finally:
        os.unlink(link)
    assert register("ok", {"key": key, "offset": 32, "byte_size": 32}).status_code == 200
    shm.set_shared_memory_region(h, [np.full(16, 9, dtype=np.int32)])
    # An input whose offset + size runs past the registered 32 bytes.
    body = {
        "inputs": [
            {"name": "INPUT0", "shape": [1, 16], "datatype": "INT32",
             "parameters": {"shared_memory_region": "ok", "shared_memory_byte_size": 64}},
            {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": [0] * 16},
        ]
    }
    r = requests.post(f"{base}/v2/models/simple/infer", json=body, timeout=10)
    assert r.status_code == 400 and "do not fit shared-memory region 'ok'" in r.json()["error"]
    # An output larger than the room given is refused; the region is left as it was.
    body["inputs"][0] = {"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": list(range(16))}
    body["outputs"] = [{"name": "OUTPUT0", "parameters": {"shared_memory_region": "ok", "shared_memory_byte_size": 16}}]
    r = requests.post(f"{base}/v2/models/simple/infer", json=body, timeout=10)
    assert r.status_code == 400 and "do not fit" in r.json()["error"]
    assert shm.get_contents_as_numpy(h, np.int32, [16]).tolist() == [9] * 16
    r = requests.get(f"{base}/v2/systemsharedmemory/region/nope/status", timeout=10)
    assert r.status_code == 400 and "nope" in r.json()["error"]
    requests.post(f"{base}/v2/systemsharedmemory/unregister", timeout=10)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_cuda_shared_memory_says_it_needs_a_gpu_build(server, protocol):
    _, client = _client(server, protocol)
    client.unregister_cuda_shared_memory()
    status = client.get_cuda_shared_memory_status()
    assert (status == [] if protocol == "http" else len(status.regions) == 0)
    base = server.http_base
    r = requests.post(
        f"{base}/v2/cudasharedmemory/region/gpu0/register",
        json={"raw_handle": {"b64": ""}, "device_id": 0, "byte_size": 64},
        timeout=10,
    )
    assert r.status_code == 400 and "CUDA" in r.json()["error"] and "system shared memory" in r.json()["error"]
    if protocol == "grpc":
        with pytest.raises(InferenceServerException) as e:
            client.register_cuda_shared_memory("gpu0", b"\0" * 64, 0, 64)
        assert "CUDA" in e.value.message()


def test_registering_needs_the_admin_token_when_one_is_set(inferd_server_factory, tmp_path_factory, regions):
    repo = triton_models.make_repo(tmp_path_factory.mktemp("shm_auth") / "models")
    server = inferd_server_factory(repo, "--admin-token", "shm-token")
    key, _ = regions(64)
    url = f"{server.http_base}/v2/systemsharedmemory/region/r/register"
    body = {"key": key, "offset": 0, "byte_size": 64}
    assert requests.post(url, json=body, timeout=10).status_code == 401
    r = requests.post(url, json=body, headers={"Authorization": "Bearer shm-token"}, timeout=10)
    assert r.status_code == 200, r.text
    assert requests.post(f"{server.http_base}/v2/systemsharedmemory/unregister", timeout=10).status_code == 401
    # Status stays open.
    st = requests.get(f"{server.http_base}/v2/systemsharedmemory/status", timeout=10)
    assert st.status_code == 200 and [r["name"] for r in st.json()] == ["r"]
    with pytest.raises(InferenceServerException):
        grpcclient.InferenceServerClient(server.grpc_url).register_system_shared_memory("g", key, 64)
