"""inferd's worker for a Triton python-backend model: runs one instance of ``model.py`` in its
own process. The server writes requests on this process's stdin and reads answers on the
original stdout (each message a 4-byte little-endian length and JSON); tensor bytes never go
through the pipe: they sit in a shared-memory file the server names, inputs read in place,
outputs written after them. ``model.py``'s own prints go to stderr, which the server logs.

    python3 -c "$(cat inferd_python_worker.py)" MODEL_PY SHM_FILE   (INFERD_PB_UTILS in the env)
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import mmap
import os
import struct
import sys
import traceback

import numpy as np


def _install_utils() -> None:
    """The server passes the utilities module's source in INFERD_PB_UTILS (no files to write or
    leave behind); it becomes the importable ``triton_python_backend_utils``."""
    import types

    src = os.environ.pop("INFERD_PB_UTILS", None)
    if src is None:
        return
    module = types.ModuleType("triton_python_backend_utils")
    module.__file__ = "<inferd>/triton_python_backend_utils.py"
    sys.modules[module.__name__] = module
    exec(compile(src, module.__file__, "exec"), module.__dict__)


_install_utils()
# Run with -c, the interpreter put the server's working folder first on the path; a model
# imports from its own folder (added when it loads), not from wherever the server started.
if sys.path and sys.path[0] == "":
    sys.path.pop(0)
import triton_python_backend_utils as pb_utils  # noqa: E402

DTYPES = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64, "FP16": np.float16,
    "FP32": np.float32, "FP64": np.float64,
}
NAMES = {np.dtype(v).str: k for k, v in DTYPES.items()}


class Channel:
    """Length-prefixed JSON messages on two file descriptors."""

    def __init__(self, rfd: int, wfd: int):
        self.r = os.fdopen(rfd, "rb", buffering=0)
        self.w = os.fdopen(wfd, "wb", buffering=0)

    def _read(self, n: int) -> bytes:
        chunks, got = [], 0
        while got < n:
            b = self.r.read(n - got)
            if not b:
                raise EOFError
            chunks.append(b)
            got += len(b)
        return b"".join(chunks)

    def recv(self) -> dict:
        (n,) = struct.unpack("<I", self._read(4))
        return json.loads(self._read(n))

    def send(self, msg: dict) -> None:
        body = json.dumps(msg).encode()
        self.w.write(struct.pack("<I", len(body)) + body)


class Shm:
    """The shared-memory file: inputs read in place, outputs written at the offset given."""

    def __init__(self, path: str):
        self.fd = os.open(path, os.O_RDWR)
        self.map = None
        self.size = 0

    def view(self, offset: int, nbytes: int) -> memoryview:
        end = offset + nbytes
        if end > self.size:
            self.size = os.fstat(self.fd).st_size
            if end > self.size:
                raise ValueError(f"tensor at {offset}+{nbytes} is past the shared file ({self.size} bytes)")
            self.map = mmap.mmap(self.fd, self.size, prot=mmap.PROT_READ)
        return memoryview(self.map)[offset:end]

    def write(self, offset: int, data) -> None:
        os.pwrite(self.fd, data, offset)


def decode_bytes(buf: memoryview, count: int) -> np.ndarray:
    out = np.empty(count, dtype=object)
    pos = 0
    for i in range(count):
        (n,) = struct.unpack_from("<I", buf, pos)
        out[i] = bytes(buf[pos + 4:pos + 4 + n])
        pos += 4 + n
    return out


def encode_bytes(array: np.ndarray) -> bytes:
    parts = []
    for item in array.reshape(-1):
        b = item.encode() if isinstance(item, str) else bytes(item)
        parts.append(struct.pack("<I", len(b)))
        parts.append(b)
    return b"".join(parts)


def input_tensor(shm: Shm, spec: dict) -> pb_utils.Tensor:
    shape = spec["shape"]
    buf = shm.view(spec["offset"], spec["nbytes"])
    if spec["datatype"] == "BYTES":
        array = decode_bytes(buf, int(np.prod(shape, dtype=np.int64))).reshape(shape)
    else:
        array = np.frombuffer(buf, dtype=DTYPES[spec["datatype"]]).reshape(shape)
    return pb_utils.Tensor(spec["name"], array)


def datatype_of(name: str, array: np.ndarray) -> str:
    if array.dtype.kind in "OSU":
        return "BYTES"
    key = array.dtype.newbyteorder("<").str if array.dtype.byteorder == ">" else array.dtype.str
    dt = NAMES.get(key) or NAMES.get(np.dtype(array.dtype.type).str)
    if dt is None:
        raise pb_utils.TritonModelException(f"output '{name}': NumPy dtype {array.dtype} has no Triton datatype")
    return dt


def error_of(e: BaseException) -> dict:
    return {"type": type(e).__name__, "message": str(e), "code": pb_utils.TritonError.INTERNAL}


def load_model(model_py: str):
    spec = importlib.util.spec_from_file_location("model", model_py)
    module = importlib.util.module_from_spec(spec)
    sys.modules["model"] = module
    sys.path.insert(0, os.path.dirname(model_py))
    spec.loader.exec_module(module)
    if not hasattr(module, "TritonPythonModel"):
        raise pb_utils.TritonModelException(f"{model_py} defines no class TritonPythonModel")
    return module.TritonPythonModel


def write_outputs(shm: Shm, response, wanted: list, offset: int) -> tuple[list, int]:
    outs = []
    for t in response.output_tensors():
        if wanted and t.name() not in wanted:
            continue
        array = np.asarray(t.as_numpy())
        dt = datatype_of(t.name(), array)
        data = encode_bytes(array) if dt == "BYTES" else np.ascontiguousarray(array).astype(
            array.dtype.newbyteorder("<"), copy=False).tobytes()
        offset = (offset + 63) // 64 * 64
        shm.write(offset, data)
        outs.append({"name": t.name(), "datatype": dt, "shape": list(array.shape), "offset": offset,
                     "nbytes": len(data)})
        offset += len(data)
    return outs, offset


def main() -> None:
    model_py, shm_path = sys.argv[1], sys.argv[2]
    # The protocol keeps the real stdout; the model's prints go to stderr.
    proto_out = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    channel = Channel(0, proto_out)
    shm = Shm(shm_path)
    model_class = None
    model = None
    while True:
        try:
            msg = channel.recv()
        except EOFError:
            break
        op = msg.get("op")
        try:
            if op == "auto_complete":
                model_class = model_class or load_model(model_py)
                config = msg["config"]
                if hasattr(model_class, "auto_complete_config"):
                    done = model_class.auto_complete_config(pb_utils.ModelConfig(config))
                    config = done.as_dict() if isinstance(done, pb_utils.ModelConfig) else config
                channel.send({"ok": True, "config": config})
            elif op == "init":
                model_class = model_class or load_model(model_py)
                model = model_class()
                if hasattr(model, "initialize"):
                    model.initialize(msg["args"])
                channel.send({"ok": True})
            elif op == "execute":
                channel.send(execute(model, shm, msg))
            elif op == "finalize":
                if model is not None and hasattr(model, "finalize"):
                    model.finalize()
                channel.send({"ok": True})
                break
            else:
                channel.send({"error": {"type": "ProtocolError", "message": f"unknown op {op!r}", "code": 1}})
        except Exception as e:  # noqa: BLE001 - every failure goes back to the server
            traceback.print_exc(file=sys.stderr)
            channel.send({"error": error_of(e)})


def execute(model, shm: Shm, msg: dict) -> dict:
    requests = []
    for r in msg["requests"]:
        requests.append(pb_utils.InferenceRequest(
            inputs=[input_tensor(shm, s) for s in r["inputs"]], requested_output_names=r["outputs"],
            request_id=r.get("request_id", ""), correlation_id=r.get("correlation_id", 0),
            parameters=r.get("parameters", "{}")))
    result = model.execute(requests)
    if inspect.iscoroutine(result):
        import asyncio

        result = asyncio.run(result)
    if result is None or len(result) != len(requests):
        got = "None" if result is None else f"{len(result)} responses"
        return {"error": {"type": "TritonModelException", "code": pb_utils.TritonError.INTERNAL,
                          "message": f"execute returned {got} for {len(requests)} requests"}}
    offset = msg["out_offset"]
    answers = []
    for req, resp in zip(msg["requests"], result):
        if not isinstance(resp, pb_utils.InferenceResponse):
            answers.append({"error": {"type": "TypeError", "code": pb_utils.TritonError.INTERNAL,
                                      "message": f"execute returned {type(resp).__name__}, not InferenceResponse"}})
        elif resp.has_error():
            answers.append({"error": {"type": "TritonError", "code": resp.error().code(),
                                      "message": resp.error().message()}})
        else:
            outs, offset = write_outputs(shm, resp, req["outputs"], offset)
            answers.append({"outputs": outs})
    return {"responses": answers}


if __name__ == "__main__":
    main()
