"""inferd's worker for a Triton python-backend model: runs one instance of ``model.py`` in its
own process. The server writes messages on this process's stdin and reads this worker's on the
original stdout (each a 4-byte little-endian length and JSON). Tensor bytes never go through
the pipes: each side writes them into its own shared file (the server's: request inputs and
BLS results; this worker's: responses and BLS inputs), and a message lists them as
``tensors`` in a ``region`` that the reader gives back with a ``free`` message once it has
copied them (request inputs are read in place and given back by the server when the request
ends). ``model.py``'s own prints go to stderr, which the server logs.

No thread only reads: whichever thread waits for a message reads the pipe itself, one at a
time (``Worker.pump``). The main thread, idle, reads the server's next ``execute`` and runs it
with no hand-over between threads (a reader thread cost each request a wake-up and a pass of
the GIL, which set the rate of small models). A thread waiting for a BLS result, a metric
reply or a decoupled sender's credits reads in its turn, handing on whatever is for others;
``request.is_cancelled()`` reads what has already arrived. ``auto_complete``, ``init``,
``execute`` and ``finalize`` run on the main thread, one call at a time, as Triton runs them.
Decoupled models' response senders and BLS calls work from any thread.

    python3 -c "$(cat inferd_python_worker.py)" MODEL_PY TO_WORKER FROM_WORKER
    (INFERD_PB_UTILS in the env holds the utilities module's source)
"""

from __future__ import annotations

import bisect
import importlib.util
import inspect
import json
import mmap
import os
import queue
import select
import struct
import sys
import threading
import time
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


class Conn:
    """Length-prefixed JSON messages: read by one thread at a time (the one holding the reader's
    turn, see ``Worker.pump``) through a buffer, so a message costs one read, not two; written
    by any (under a lock)."""

    def __init__(self, rfd: int, wfd: int):
        self.rfd = rfd
        self.w = os.fdopen(wfd, "wb", buffering=0)
        self.lock = threading.Lock()
        self.buf = bytearray()

    def _frame(self):
        """The next whole message in the buffer, or None."""
        if len(self.buf) < 4:
            return None
        (n,) = struct.unpack_from("<I", self.buf)
        if len(self.buf) < 4 + n:
            return None
        body = bytes(self.buf[4:4 + n])
        del self.buf[:4 + n]
        return json.loads(body)

    def recv(self) -> dict:
        while True:
            msg = self._frame()
            if msg is not None:
                return msg
            chunk = os.read(self.rfd, 1 << 16)
            if not chunk:
                raise EOFError
            self.buf += chunk

    def ready(self) -> bool:
        """Whether recv() has a message without waiting for more than its rest."""
        if self._frame_len_ok():
            return True
        readable, _, _ = select.select([self.rfd], [], [], 0)
        return bool(readable)

    def _frame_len_ok(self) -> bool:
        if len(self.buf) < 4:
            return False
        (n,) = struct.unpack_from("<I", self.buf)
        return len(self.buf) >= 4 + n

    def send(self, msg: dict) -> None:
        body = json.dumps(msg).encode()
        with self.lock:
            self.w.write(struct.pack("<I", len(body)) + body)


class Inbox:
    """The server's file, mapped read-only; tensors are read in place."""

    def __init__(self, path: str):
        self.fd = os.open(path, os.O_RDONLY)
        self.map = None
        self.size = 0
        self.lock = threading.Lock()

    def view(self, offset: int, nbytes: int) -> memoryview:
        end = offset + nbytes
        with self.lock:
            if end > self.size:
                size = os.fstat(self.fd).st_size
                if end > size:
                    raise ValueError(f"tensor at {offset}+{nbytes} is past the shared file ({size} bytes)")
                # The old mapping lives on while arrays still view it.
                self.map, self.size = mmap.mmap(self.fd, size, prot=mmap.PROT_READ), size
            return memoryview(self.map)[offset:end]


class Outbox:
    """This worker's file: each message's tensors in a region of their own, 64-byte aligned,
    placed first-fit in the gaps given-back regions leave (as the server's arena), so the file
    grows only to the most bytes live at once, however long a decoupled stream holds a region."""

    def __init__(self, path: str):
        self.fd = os.open(path, os.O_RDWR)
        self.lock = threading.Lock()
        self.size = os.fstat(self.fd).st_size
        self.extents = []  # sorted [start, end, region] of the live regions
        self.next = 1

    def _place(self, length: int) -> int:
        at = 0
        for start, end, _ in self.extents:
            if start >= at + length:
                break
            at = (max(at, end) + 63) // 64 * 64
        return at

    def put(self, arrays: list) -> tuple[list, int | None]:
        """Writes (name, datatype, array, data) items; returns their specs and the region."""
        if not arrays:
            return [], None
        rel = []
        length = 0
        for item in arrays:
            length = (length + 63) // 64 * 64
            rel.append(length)
            length += len(item[3])
        length = max(length, 1)
        with self.lock:
            region, self.next = self.next, self.next + 1
            start = self._place(length)
            end = start + length
            if end > self.size:
                os.ftruncate(self.fd, end)
                self.size = end
            bisect.insort(self.extents, [start, end, region])
        # One write for the whole region (alignment gaps zero-filled).
        buf = bytearray(length)
        specs = []
        for (name, dt, array, data), r in zip(arrays, rel):
            buf[r:r + len(data)] = data
            specs.append({"name": name, "datatype": dt, "shape": list(array.shape), "offset": start + r,
                          "nbytes": len(data)})
        os.pwrite(self.fd, buf, start)
        return specs, region

    def free(self, region: int) -> None:
        with self.lock:
            self.extents = [e for e in self.extents if e[2] != region]


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


def read_tensor(inbox: Inbox, spec: dict, copy: bool) -> pb_utils.Tensor:
    shape = spec["shape"]
    buf = inbox.view(spec["offset"], spec["nbytes"])
    if spec["datatype"] == "BYTES":
        array = decode_bytes(buf, int(np.prod(shape, dtype=np.int64))).reshape(shape)
    else:
        array = np.frombuffer(buf, dtype=DTYPES[spec["datatype"]]).reshape(shape)
        if copy:
            array = array.copy()
    return pb_utils.Tensor(spec["name"], array)


def datatype_of(name: str, array: np.ndarray) -> str:
    if array.dtype.kind in "OSU":
        return "BYTES"
    key = array.dtype.newbyteorder("<").str if array.dtype.byteorder == ">" else array.dtype.str
    dt = NAMES.get(key) or NAMES.get(np.dtype(array.dtype.type).str)
    if dt is None:
        raise pb_utils.TritonModelException(f"output '{name}': NumPy dtype {array.dtype} has no Triton datatype")
    return dt


def encoded(tensors) -> list:
    """(name, datatype, array, bytes) of each pb_utils.Tensor."""
    out = []
    for t in tensors:
        array = np.asarray(t.as_numpy())
        dt = datatype_of(t.name(), array)
        data = encode_bytes(array) if dt == "BYTES" else np.ascontiguousarray(array).astype(
            array.dtype.newbyteorder("<"), copy=False).tobytes()
        out.append((t.name(), dt, array, data))
    return out


def error_of(e: BaseException) -> dict:
    return {"type": type(e).__name__, "message": str(e), "code": pb_utils.TritonError.INTERNAL}


BUILTIN = os.environ.pop("INFERD_PB_BUILTIN", "")


def load_model(model_py: str):
    if BUILTIN:
        # inferd's own runner for a framework's model file (TorchScript, SavedModel).
        import types

        module = types.ModuleType("model")
        module.INFERD_MODEL_FILE = model_py
        sys.modules["model"] = module
        exec(compile(BUILTIN, "<inferd runner>", "exec"), module.__dict__)
        return module.TritonPythonModel
    spec = importlib.util.spec_from_file_location("model", model_py)
    module = importlib.util.module_from_spec(spec)
    sys.modules["model"] = module
    sys.path.insert(0, os.path.dirname(model_py))
    spec.loader.exec_module(module)
    if not hasattr(module, "TritonPythonModel"):
        raise pb_utils.TritonModelException(f"{model_py} defines no class TritonPythonModel")
    return module.TritonPythonModel


class BlsStream:
    """The responses of a decoupled BLS call, as they come."""

    def __init__(self, worker, q: queue.Queue):
        self.worker = worker
        self.q = q
        self.done = False

    def __iter__(self):
        return self

    def __next__(self):
        if self.done:
            raise StopIteration
        response, final = self.worker.take(self.q)
        if final:
            self.done = True
            if response is None:
                raise StopIteration
        return response


class Worker:
    def __init__(self, model_py: str, to_worker: str, from_worker: str):
        self.model_py = model_py
        proto_out = os.dup(1)
        os.dup2(2, 1)
        sys.stdout = sys.stderr
        self.conn = Conn(0, proto_out)
        self.inbox = Inbox(to_worker)
        self.outbox = Outbox(from_worker)
        # Calls for the main thread, in order.
        self.work: queue.Queue = queue.Queue()
        # The reader's turn: `reading` while a thread reads the pipe; waiters sleep on `turn`
        # and are woken after every message handled.
        self.turn = threading.Condition()
        self.reading = False
        self.lock = threading.Lock()
        self.bls_waiting: dict[int, queue.Queue] = {}
        self.bls_next = 1
        self.rpc_waiting: dict[int, queue.Queue] = {}
        self.cancelled: set[int] = set()
        # (call, request index) of requests whose clients left while their execute waited or ran.
        self.cancelled_requests: set[tuple[int, int]] = set()
        # Non-decoupled calls queued or running: a cancel may come for a call still waiting
        # behind another (the server hands the next batch over while one runs).
        self.executing: set[int] = set()
        # Decoupled calls queued or streaming: a whole-call cancel is kept only for these (one
        # that comes after the final response would stay in `cancelled` for good).
        self.streams: set[int] = set()
        self.gates: dict[int, threading.Semaphore] = {}
        self.model_class = None
        self.model = None
        pb_utils._runtime = self
        # What the reader thread itself has to say (region frees) goes through a thread of its
        # own: a reader blocked writing to a full pipe would stop reading the server, which may
        # itself be blocked writing to us.
        self.control: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self.control_loop, name="inferd-control", daemon=True).start()

    # --- reading: whoever waits reads ------------------------------------------------------
    def pump(self, ready) -> None:
        """Returns once ``ready()`` (called under ``self.turn``) holds, reading and handling the
        server's messages meanwhile whenever no other thread is reading."""
        while True:
            with self.turn:
                while not ready():
                    if not self.reading:
                        self.reading = True
                        break
                    self.turn.wait()
                else:
                    return
            self.read_one()

    def poll(self) -> None:
        """Handles the messages that have already arrived, if no other thread is reading (then
        that thread handles them); never waits for one."""
        while True:
            with self.turn:
                if self.reading:
                    return
                try:
                    if not self.conn.ready():
                        return
                except OSError:
                    return
                self.reading = True
            self.read_one()

    def read_one(self) -> None:
        """Reads and handles one message; the caller holds the reader's turn, given up after the
        message is handled, so messages are handled one at a time in the order sent (a BLS
        stream's results, a call's cancel after its execute)."""
        try:
            try:
                msg = self.conn.recv()
            except (EOFError, OSError, ValueError):
                os._exit(0)  # the server is gone (or the pipe is broken): nothing is left to answer
            try:
                self.handle(msg)
            except Exception:  # noqa: BLE001 - one bad message must not stop the reading
                traceback.print_exc(file=sys.stderr)
        finally:
            with self.turn:
                self.reading = False
                self.turn.notify_all()

    def take(self, q: queue.Queue):
        """The next item of ``q``, reading the pipe until one is there."""
        self.pump(lambda: not q.empty())
        return q.get_nowait()

    def handle(self, msg: dict) -> None:
        """One message from the server: calls queue for the main thread, the rest is done here."""
        for region in msg.get("free", ()):  # given back on the server's next message
            self.outbox.free(region)
        op = msg.get("op")
        if op == "free":
            for region in msg.get("regions", ()):
                self.outbox.free(region)
        elif op == "cancel" and "requests" in msg:
            # Clients that left while a (non-decoupled) execute waits or runs; too late ones are
            # ignored.
            with self.lock:
                if msg["id"] in self.executing:
                    self.cancelled_requests.update((msg["id"], i) for i in msg["requests"])
        elif op == "cancel":
            with self.lock:
                if msg["id"] in self.streams:
                    self.cancelled.add(msg["id"])
                self.gates.pop(msg["id"], None)  # a waiting send sees the cancel and drops
        elif op == "credit":
            with self.lock:
                gate = self.gates.get(msg.get("id"))
            if gate is not None:
                gate.release(int(msg.get("n", 0)))
        elif op == "bls_result":
            self.bls_result(msg)
        elif op == "rpc_result":
            with self.lock:
                q = self.rpc_waiting.pop(msg.get("rpc"), None)
            if q is not None:
                q.put(msg)
        else:
            if op == "execute":
                with self.lock:
                    (self.streams if msg.get("decoupled") else self.executing).add(msg.get("id"))
            self.work.put(msg)

    def control_loop(self) -> None:
        while True:
            msg = self.control.get()
            try:
                self.conn.send(msg)
            except OSError:
                return

    def bls_result(self, msg: dict) -> None:
        tensors = [read_tensor(self.inbox, s, copy=True) for s in msg.get("tensors", [])]
        if msg.get("region") is not None:
            self.control.put({"op": "free", "region": msg["region"]})
        with self.lock:
            q = self.bls_waiting.get(msg["bls"])
            if msg.get("final"):
                self.bls_waiting.pop(msg["bls"], None)
        if q is None:
            return
        if "error" in msg:
            err = msg["error"]
            response = pb_utils.InferenceResponse(error=pb_utils.TritonError(err["message"], err.get("code", 1)))
        elif msg.get("empty"):
            response = None
        else:
            response = pb_utils.InferenceResponse(tensors)
        q.put((response, bool(msg.get("final"))))

    # --- for pb_utils: BLS ----------------------------------------------------------------
    def bls(self, request, decoupled: bool):
        items = encoded(request.inputs())
        specs, region = self.outbox.put(items)
        q: queue.Queue = queue.Queue()
        with self.lock:
            bls, self.bls_next = self.bls_next, self.bls_next + 1
            self.bls_waiting[bls] = q
        self.conn.send({"op": "bls", "bls": bls, "model": request.model_name(),
                        "version": int(request.model_version()), "outputs": request.requested_output_names() or None,
                        "decoupled": bool(decoupled), "tensors": specs, "region": region})
        if decoupled:
            return BlsStream(self, q)
        response, _ = self.take(q)
        return response

    # --- for pb_utils: metrics ---------------------------------------------------------------
    def metric(self, msg: dict) -> float:
        q: queue.Queue = queue.Queue()
        with self.lock:
            rpc, self.bls_next = self.bls_next, self.bls_next + 1
            self.rpc_waiting[rpc] = q
        self.conn.send({"op": "metric", "rpc": rpc, **msg})
        reply = self.take(q)
        if "error" in reply:
            raise pb_utils.TritonModelException(reply["error"])
        return reply.get("value", 0.0)

    # --- the main thread ------------------------------------------------------------------
    def run(self) -> None:
        while True:
            msg = self.take(self.work)
            op, call = msg.get("op"), msg.get("id")
            try:
                if op == "auto_complete":
                    self.model_class = self.model_class or load_model(self.model_py)
                    config = msg["config"]
                    if hasattr(self.model_class, "auto_complete_config"):
                        done = self.model_class.auto_complete_config(pb_utils.ModelConfig(config))
                        config = done.as_dict() if isinstance(done, pb_utils.ModelConfig) else config
                    self.conn.send({"op": "reply", "id": call, "config": config})
                elif op == "init":
                    self.model_class = self.model_class or load_model(self.model_py)
                    self.model = self.model_class()
                    if hasattr(self.model, "initialize"):
                        self.model.initialize(msg["args"])
                    self.conn.send({"op": "reply", "id": call, "sandbox": self.sandbox()})
                elif op == "execute":
                    try:
                        self.execute(msg)
                    finally:
                        with self.lock:
                            self.executing.discard(call)
                            self.cancelled_requests = {k for k in self.cancelled_requests if k[0] != call}
                elif op == "finalize":
                    if self.model is not None and hasattr(self.model, "finalize"):
                        self.model.finalize()
                    self.conn.send({"op": "reply", "id": call})
                    os._exit(0)
                else:
                    raise pb_utils.TritonModelException(f"unknown op {op!r}")
            except Exception as e:  # noqa: BLE001 - every failure goes back to the server
                traceback.print_exc(file=sys.stderr)
                self.conn.send({"op": "reply", "id": call, "error": error_of(e)})
                with self.lock:  # a decoupled call that failed streams no more
                    self.streams.discard(call)
                    self.cancelled.discard(call)
                    self.gates.pop(call, None)

    def sandbox(self) -> dict:
        """What this process got of the protections the server asked for."""
        import resource

        out = {}
        try:
            mine, parents = os.readlink("/proc/self/ns/net"), os.readlink(f"/proc/{os.getppid()}/ns/net")
            out["network"] = "isolated" if mine != parents else "shared"
        except OSError:
            out["network"] = "unknown"
        model_dir = os.path.dirname(os.path.dirname(os.path.abspath(self.model_py)))
        for key, folder in (("model_dir", model_dir), ("repository", os.path.dirname(model_dir))):
            try:
                out[key] = "read-only" if os.statvfs(folder).f_flag & os.ST_RDONLY else "writable"
            except OSError:
                out[key] = "unknown"
        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        out["memory_limit_mb"] = None if soft == resource.RLIM_INFINITY else soft >> 20
        return out

    def sender(self, call: int, index: int, wanted: list, credits: int = 0):
        # Backpressure: at most `credits` responses on their way; the server returns credits as
        # the client takes responses, so a slow client slows send() instead of the server
        # buffering without bound. A cancelled call's sends are dropped, never blocked.
        gate = threading.Semaphore(credits) if credits > 0 else None
        if gate is not None:
            with self.lock:
                self.gates[call] = gate

        polled_at = [0.0]

        def send(response, flags):
            final = bool(flags & pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            # A cancel that has arrived drops this response; looked for at most every 5 ms, so
            # a fast stream does not pay a system call per response.
            now = time.monotonic()
            if now - polled_at[0] >= 0.005:
                polled_at[0] = now
                self.poll()
            if gate is not None:
                self.pump(lambda: gate.acquire(blocking=False) or cancelled())
            if cancelled() and not final:
                return
            msg = {"op": "response", "id": call, "request": index, "final": final}
            if response is not None:
                self.attach(msg, response, wanted)
            self.conn.send(msg)
            if final:
                with self.lock:
                    self.streams.discard(call)
                    self.cancelled.discard(call)
                    self.gates.pop(call, None)

        def cancelled():
            with self.lock:
                return call in self.cancelled

        def polled():
            self.poll()
            return cancelled()

        return pb_utils.InferenceResponseSender(send, polled), polled

    def request_cancelled(self, call: int, index: int):
        def cancelled():
            self.poll()
            with self.lock:
                return (call, index) in self.cancelled_requests

        return cancelled

    def attach(self, msg: dict, response, wanted: list) -> None:
        """Puts a response's outputs (or error) into a message."""
        if response.has_error():
            msg["error"] = {"type": "TritonError", "code": response.error().code(),
                            "message": response.error().message()}
            return
        tensors = [t for t in response.output_tensors() if not wanted or t.name() in wanted]
        specs, region = self.outbox.put(encoded(tensors))
        msg["tensors"] = specs
        msg["region"] = region

    def execute(self, msg: dict) -> None:
        call, decoupled = msg["id"], bool(msg.get("decoupled"))
        requests = []
        for i, r in enumerate(msg["requests"]):
            req = pb_utils.InferenceRequest(
                inputs=[read_tensor(self.inbox, s, copy=False) for s in r["inputs"]],
                requested_output_names=r["outputs"], request_id=r.get("request_id", ""),
                correlation_id=r.get("correlation_id", 0), parameters=r.get("parameters", "{}"))
            if decoupled:
                req._sender, req._cancelled = self.sender(call, i, r["outputs"], int(msg.get("credits", 0)))
            else:
                req._cancelled = self.request_cancelled(call, i)
            requests.append(req)
        result = self.model.execute(requests)
        if inspect.iscoroutine(result):
            import asyncio

            result = asyncio.run(result)
        if decoupled:
            self.conn.send({"op": "reply", "id": call})
            return
        if result is None or len(result) != len(requests):
            got = "None" if result is None else f"{len(result)} responses"
            raise pb_utils.TritonModelException(f"execute returned {got} for {len(requests)} requests")
        answers, items = [], []
        for req, resp in zip(msg["requests"], result):
            if not isinstance(resp, pb_utils.InferenceResponse):
                answers.append({"error": {"type": "TypeError", "code": pb_utils.TritonError.INTERNAL,
                                          "message": f"execute returned {type(resp).__name__}, not InferenceResponse"}})
            elif resp.has_error():
                answers.append({"error": {"type": "TritonError", "code": resp.error().code(),
                                          "message": resp.error().message()}})
            else:
                wanted = req["outputs"]
                tensors = [t for t in resp.output_tensors() if not wanted or t.name() in wanted]
                answers.append({"outputs": list(range(len(items), len(items) + len(tensors)))})
                items.extend(encoded(tensors))
        specs, region = self.outbox.put(items)
        self.conn.send({"op": "reply", "id": call, "responses": answers, "tensors": specs, "region": region})


def main() -> None:
    Worker(sys.argv[1], sys.argv[2], sys.argv[3]).run()


if __name__ == "__main__":
    main()
