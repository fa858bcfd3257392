"""Shared helpers for the inferd interop suite: server process, model repos, clients, references.

Fixtures live in ``conftest.py``; everything here is plain Python so tests can import it.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

import numpy as np
import requests

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_MODELS = REPO_ROOT / "examples" / "models"
EXAMPLE_MODEL_NAMES = ("simple_mlp", "add_sub", "string_identity")

STARTUP_TIMEOUT_S = 60.0
SHUTDOWN_GRACE_S = 10.0

# The exact lines inferd prints (flushed) once its listeners are bound.
_LISTEN_RE = {
    "http": re.compile(r"^HTTP listening on (?P<host>\S+):(?P<port>\d+)\s*$", re.M),
    "grpc": re.compile(r"^gRPC listening on (?P<host>\S+):(?P<port>\d+)\s*$", re.M),
}

T = TypeVar("T")

# Servers started and not yet stopped; conftest attaches their logs to failing test reports.
ACTIVE_SERVERS: list["InferdServer"] = []


# --------------------------------------------------------------------------------------------
# waiting
# --------------------------------------------------------------------------------------------


def wait_until(
    predicate: Callable[[], T],
    *,
    timeout: float,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Call ``predicate`` until it returns a truthy value (returned) or ``timeout`` elapses.

    Exceptions raised by ``predicate`` count as "not yet"; the last one is reported on timeout.
    """
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    last_value: Any = None
    while True:
        try:
            last_value = predicate()
            if last_value:
                return last_value
            last_exc = None
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"
            last_exc = exc
        if time.monotonic() >= deadline:
            detail = f"last error: {last_exc!r}" if last_exc else f"last value: {last_value!r}"
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what} ({detail})")
        time.sleep(interval)


# --------------------------------------------------------------------------------------------
# model repositories
# --------------------------------------------------------------------------------------------


def copy_models(dest: Path, names: Iterable[str] | None = None) -> Path:
    """Copy example models (all, or ``names``) into the repository directory ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in names if names is not None else EXAMPLE_MODEL_NAMES:
        src = EXAMPLE_MODELS / name
        if not (src / "config.pbtxt").is_file():
            raise FileNotFoundError(
                f"{src} is missing; run `.venv/bin/python examples/models/generate.py` first"
            )
        shutil.copytree(src, dest / name)
    return dest


def example_model_path(name: str, version: int | str = 1) -> Path:
    return EXAMPLE_MODELS / name / str(version) / "model.onnx"


# --------------------------------------------------------------------------------------------
# the server process
# --------------------------------------------------------------------------------------------


_THREAD = threading.local()


def thread_session() -> requests.Session:
    """This thread's own keep-alive session (load generators post from many threads)."""
    s = getattr(_THREAD, "session", None)
    if s is None:
        s = _THREAD.session = requests.Session()
    return s


def post_json_body(url: str, body: str) -> requests.Response:
    """POSTs a JSON text on this thread's session."""
    return thread_session().post(url, data=body, headers={"content-type": "application/json"}, timeout=60)


def heavy_model(repo: Path, d: int, layers: int) -> None:
    """An ONNX model `heavy` whose compute is `layers` MatMul + Relu of one d x d weight (one row
    per request, max batch 1): it, not HTTP, sets a replica's pace."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    # One orthogonal weight applied again and again: heavy compute, a small file, values
    # that neither vanish nor explode.
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    inits = [numpy_helper.from_array(q.astype(np.float32), "w")]
    nodes, x = [], "input"
    for i in range(layers):
        nodes.append(helper.make_node("MatMul", [x, "w"], [f"m{i}"]))
        nodes.append(helper.make_node("Relu", [f"m{i}"], [f"r{i}"]))
        x = f"r{i}"
    nodes.append(helper.make_node("Identity", [x], ["output"]))
    graph = helper.make_graph(
        nodes, "heavy",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", d])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", d])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (repo / "heavy" / "1").mkdir(parents=True)
    onnx.save(model, str(repo / "heavy" / "1" / "model.onnx"))
    (repo / "heavy" / "config.pbtxt").write_text(
        'name: "heavy"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 1\n'
        f'input [ {{ name: "input" data_type: TYPE_FP32 dims: [ {d} ] }} ]\n'
        f'output [ {{ name: "output" data_type: TYPE_FP32 dims: [ {d} ] }} ]\n'
        'dynamic_batching { }\ninstance_group [ { count: 1 kind: KIND_CPU } ]\n'
    )



class InferdServer:
    """One ``inferd serve`` process bound to ephemeral ports, with its output in log files."""

    def __init__(
        self,
        binary: Path,
        repo: Path | str,
        args: list[str],
        log_dir: Path,
        name: str,
        env: dict[str, str] | None = None,
    ):
        self.binary = binary
        self.env = dict(env or {})  # added to (and overriding) this process's environment
        self.repo = repo
        self.name = name
        self.argv = [
            str(binary),
            "serve",
            "--model-repository",
            str(repo),
            "--http-address",
            "127.0.0.1",
            "--http-port",
            "0",
            "--grpc-address",
            "127.0.0.1",
            "--grpc-port",
            "0",
            *args,
        ]
        log_dir.mkdir(parents=True, exist_ok=True)
        self.stdout_path = log_dir / f"{name}.stdout.log"
        self.stderr_path = log_dir / f"{name}.stderr.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.http_host = self.grpc_host = ""
        self.http_port = self.grpc_port = 0
        self.metrics_url = ""  # http://host:port of the metrics listener, when it has one
        self.admin_base = ""  # http://host:port of the admin listener (--admin-port), when it has one
        self.tfserving_rest = ""  # http://host:port of TF Serving's REST API (--tfserving-rest-port)
        self.tfserving_grpc = ""  # host:port of TF Serving's gRPC API (--tfserving-grpc-port)

    # --- addresses ---------------------------------------------------------------------------

    @property
    def http_url(self) -> str:
        """``host:port`` as tritonclient.http expects it."""
        return f"{self.http_host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        """``host:port`` as tritonclient.grpc expects it."""
        return f"{self.grpc_host}:{self.grpc_port}"

    @property
    def http_base(self) -> str:
        return f"http://{self.http_url}"

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self, *, wait_ready: bool = True, timeout: float = STARTUP_TIMEOUT_S) -> "InferdServer":
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                # No pause between SIGTERM and closing (--drain-delay-secs) unless a test sets one.
                env={
                    "INFERD_DRAIN_DELAY_SECS": "0",
                    # Never the default 8002: tests run servers side by side.
                    "INFERD_METRICS_PORT": "0",
                    **os.environ,
                    "RUST_BACKTRACE": os.environ.get("RUST_BACKTRACE", "1"),
                    **self.env,
                },
            )
        ACTIVE_SERVERS.append(self)
        try:
            deadline = time.monotonic() + timeout
            self._wait_for_listen_lines(deadline)
            if wait_ready:
                self._wait_for_health("ready", deadline)
            else:
                self._wait_for_health("live", deadline)
        except BaseException as exc:
            self.stop()
            raise AssertionError(f"inferd failed to start: {exc}\n{self.describe()}") from None
        return self

    def _wait_for_listen_lines(self, deadline: float) -> None:
        found: dict[str, re.Match[str]] = {}
        while len(found) < 2:
            self._check_alive()
            text = self.stdout_path.read_text(errors="replace")
            for proto, pattern in _LISTEN_RE.items():
                if proto not in found and (m := pattern.search(text)):
                    found[proto] = m
            if len(found) < 2:
                if time.monotonic() > deadline:
                    missing = sorted(set(_LISTEN_RE) - set(found))
                    raise TimeoutError(f"no '... listening on HOST:PORT' line on stdout for {missing}")
                time.sleep(0.05)
        self.http_host, self.http_port = found["http"]["host"], int(found["http"]["port"])
        if m := re.search(r"^Metrics listening on (\S+)\s*$", text, re.M):
            self.metrics_url = f"http://{m.group(1)}"
        if m := re.search(r"^Admin listening on (\S+)\s*$", text, re.M):
            self.admin_base = f"http://{m.group(1)}"
        if m := re.search(r"^TF Serving REST listening on (\S+)\s*$", text, re.M):
            self.tfserving_rest = f"http://{m.group(1)}"
        if m := re.search(r"^TF Serving gRPC listening on (\S+)\s*$", text, re.M):
            self.tfserving_grpc = m.group(1)
        self.grpc_host, self.grpc_port = found["grpc"]["host"], int(found["grpc"]["port"])
        if self.http_port == 0 or self.grpc_port == 0:
            raise AssertionError("server printed port 0 instead of the bound ephemeral port")

    def _wait_for_health(self, which: str, deadline: float) -> None:
        if "--tls-cert-file" in self.argv:
            return  # plain HTTP cannot ask; TLS tests wait with their own certificates
        url = f"{self.http_base}/v2/health/{which}"
        while True:
            self._check_alive()
            try:
                if requests.get(url, timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"GET {url} did not return 200 in time")
            time.sleep(0.1)

    def _check_alive(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"inferd exited early with status {self.process.returncode}")

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after a grace period. Returns the exit status."""
        if self in ACTIVE_SERVERS:
            ACTIVE_SERVERS.remove(self)
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=SHUTDOWN_GRACE_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=SHUTDOWN_GRACE_S)
        return self.process.returncode

    # --- diagnostics -------------------------------------------------------------------------

    def log_tail(self, max_lines: int = 150) -> str:
        parts = []
        for label, path in (("stdout", self.stdout_path), ("stderr", self.stderr_path)):
            try:
                lines = path.read_text(errors="replace").splitlines()
            except FileNotFoundError:
                lines = ["<no log file>"]
            if len(lines) > max_lines:
                lines = [f"... ({len(lines) - max_lines} earlier lines in {path})"] + lines[-max_lines:]
            parts.append(f"--- {label} ({path}) ---\n" + "\n".join(lines))
        return "\n".join(parts)

    def describe(self) -> str:
        status = "running" if self.is_running() else f"exited ({self.process and self.process.returncode})"
        return f"inferd server {self.name!r}: {status}\ncommand: {' '.join(self.argv)}\n{self.log_tail()}"


# --------------------------------------------------------------------------------------------
# onnxruntime references
# --------------------------------------------------------------------------------------------


class OnnxReference:
    """Runs model files with onnxruntime to get the outputs inferd should reproduce."""

    def __init__(self) -> None:
        self._sessions: dict[Path, Any] = {}

    def session(self, model_path: Path):
        import onnxruntime as ort

        model_path = Path(model_path).resolve()
        if model_path not in self._sessions:
            self._sessions[model_path] = ort.InferenceSession(
                str(model_path), providers=["CPUExecutionProvider"]
            )
        return self._sessions[model_path]

    def run(self, model_path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        sess = self.session(model_path)
        names = [o.name for o in sess.get_outputs()]
        return dict(zip(names, sess.run(names, feeds)))


def mlp_input(batch: int, seed: int = 1234) -> np.ndarray:
    """A deterministic FP32 [batch, 64] input for simple_mlp."""
    return np.random.default_rng(seed).uniform(-1.0, 1.0, (batch, 64)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# protocol-agnostic tritonclient wrapper
# --------------------------------------------------------------------------------------------


def _ints(values: Iterable[Any]) -> list[int]:
    return [int(v) for v in values]


def _normalize_tensor_metadata(tensors: list[dict]) -> list[dict]:
    return [{**t, "shape": _ints(t.get("shape", []))} for t in tensors]


def _normalize_config_tensors(tensors: list[dict]) -> list[dict]:
    return [{**t, "dims": _ints(t.get("dims", []))} for t in tensors]


class TritonClient:
    """Thin wrapper over ``tritonclient.http`` / ``tritonclient.grpc``.

    gRPC answers are taken ``as_json=True`` (MessageToJson: int64 become strings, zero values are
    omitted); the helpers below turn both protocols' answers into the same plain-Python shapes.
    The raw client stays available as ``.client`` and the module as ``.module``.
    """

    def __init__(self, protocol: str, server: InferdServer):
        self.protocol = protocol
        if protocol == "http":
            import tritonclient.http as module

            self.client = module.InferenceServerClient(
                url=server.http_url, connection_timeout=10.0, network_timeout=30.0
            )
        elif protocol == "grpc":
            import tritonclient.grpc as module

            self.client = module.InferenceServerClient(url=server.grpc_url)
        else:
            raise ValueError(protocol)
        self.module = module

    def close(self) -> None:
        self.client.close()

    def _json(self) -> dict:
        return {"as_json": True} if self.protocol == "grpc" else {}

    def is_model_ready(self, model: str, version: str = "") -> bool:
        """False for unavailable *or unknown* models: over gRPC the latter may be an error status."""
        from tritonclient.utils import InferenceServerException

        try:
            return bool(self.client.is_model_ready(model, version))
        except InferenceServerException:
            return False

    def server_metadata(self) -> dict:
        return self.client.get_server_metadata(**self._json())

    def model_metadata(self, model: str, version: str = "") -> dict:
        md = self.client.get_model_metadata(model, model_version=version, **self._json())
        md["inputs"] = _normalize_tensor_metadata(md.get("inputs", []))
        md["outputs"] = _normalize_tensor_metadata(md.get("outputs", []))
        md.setdefault("versions", [])
        return md

    def model_config(self, model: str, version: str = "") -> dict:
        cfg = self.client.get_model_config(model, model_version=version, **self._json())
        if self.protocol == "grpc":
            cfg = cfg["config"]
        cfg["max_batch_size"] = int(cfg.get("max_batch_size", 0))
        cfg["input"] = _normalize_config_tensors(cfg.get("input", []))
        cfg["output"] = _normalize_config_tensors(cfg.get("output", []))
        return cfg

    def repository_index(self) -> list[dict]:
        """Entries as ``{"name", "version", "state", "reason"}`` with "" for absent fields."""
        index = self.client.get_model_repository_index(**self._json())
        if self.protocol == "grpc":
            index = index.get("models", [])
        return [
            {key: str(entry.get(key, "") or "") for key in ("name", "version", "state", "reason")}
            for entry in index
        ]

    def model_stats(self, model: str, version: str = "") -> list[dict]:
        stats = self.client.get_inference_statistics(model, model_version=version, **self._json())
        return stats.get("model_stats", [])

    def infer(
        self,
        model: str,
        inputs: dict[str, np.ndarray],
        outputs: Iterable[str],
        *,
        version: str = "",
        binary: bool = True,
        timeout: float | None = 30.0,
    ) -> tuple[str, dict[str, np.ndarray]]:
        """Infer and return ``(model_version, {output_name: array})``.

        ``binary`` selects the HTTP binary-tensor extension (True) or JSON tensors (False);
        gRPC always uses raw contents. BYTES outputs come back as ``np.object_`` arrays of bytes.
        """
        from tritonclient.utils import np_to_triton_dtype

        infer_inputs = []
        for name, array in inputs.items():
            inp = self.module.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            if self.protocol == "http":
                inp.set_data_from_numpy(array, binary_data=binary)
            else:
                inp.set_data_from_numpy(array)
            infer_inputs.append(inp)
        if self.protocol == "http":
            requested = [self.module.InferRequestedOutput(n, binary_data=binary) for n in outputs]
            result = self.client.infer(model, infer_inputs, model_version=version, outputs=requested)
            response_version = result.get_response().get("model_version", "")
        else:
            requested = [self.module.InferRequestedOutput(n) for n in outputs]
            result = self.client.infer(
                model, infer_inputs, model_version=version, outputs=requested, client_timeout=timeout
            )
            response_version = result.get_response().model_version
        arrays = {}
        for name in outputs:
            array = result.as_numpy(name)
            assert array is not None, f"response has no output {name!r}: {result.get_response()}"
            if array.dtype == np.object_:
                array = np.vectorize(_as_bytes, otypes=[np.object_])(array)
            arrays[name] = array
        return str(response_version), arrays


def _as_bytes(value: Any) -> bytes:
    # tritonclient.http decodes JSON BYTES outputs to str; binary ones stay bytes.
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def ready_versions(index: list[dict], model: str) -> set[str]:
    return {e["version"] for e in index if e["name"] == model and e["state"] == "READY"}
