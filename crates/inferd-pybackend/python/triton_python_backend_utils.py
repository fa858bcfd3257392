"""inferd's implementation of the module that Triton's python backend gives ``model.py``:
``import triton_python_backend_utils as pb_utils`` works unchanged. Written by inferd from the
API Triton documents (names, signatures, behaviour); the worker that runs ``model.py`` sets the
process-wide parts (the model config, the response channel) before ``initialize``.
"""

from __future__ import annotations

import json
import sys

import numpy as np

TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1
TRITONSERVER_REQUEST_FLAG_SEQUENCE_START = 1
TRITONSERVER_REQUEST_FLAG_SEQUENCE_END = 2

# Triton's config datatype names and NumPy's.
_CONFIG_TO_NUMPY = {
    "TYPE_BOOL": np.bool_, "TYPE_UINT8": np.uint8, "TYPE_UINT16": np.uint16, "TYPE_UINT32": np.uint32,
    "TYPE_UINT64": np.uint64, "TYPE_INT8": np.int8, "TYPE_INT16": np.int16, "TYPE_INT32": np.int32,
    "TYPE_INT64": np.int64, "TYPE_FP16": np.float16, "TYPE_FP32": np.float32, "TYPE_FP64": np.float64,
    "TYPE_STRING": np.object_,
}


def triton_string_to_numpy(triton_type_string):
    """The NumPy dtype of a config datatype name (``"TYPE_FP32"`` -> ``numpy.float32``)."""
    try:
        return _CONFIG_TO_NUMPY[triton_type_string]
    except KeyError:
        raise TritonModelException(f"unknown datatype {triton_type_string!r}") from None


class TritonModelException(Exception):
    """Raised by the utilities when a model uses them wrongly."""


class TritonError:
    """An error a model returns in a response (``InferenceResponse(error=...)``)."""

    UNKNOWN = 0
    INTERNAL = 1
    NOT_FOUND = 2
    INVALID_ARG = 3
    UNAVAILABLE = 4
    UNSUPPORTED = 5
    ALREADY_EXISTS = 6
    CANCELLED = 7

    def __init__(self, message, code=INTERNAL):
        self._message = str(message)
        self._code = code

    def message(self):
        return self._message

    def code(self):
        return self._code

    def __repr__(self):
        return f"TritonError({self._message!r}, code={self._code})"


class Tensor:
    """A named tensor: a NumPy array (BYTES tensors are object arrays of ``bytes``)."""

    def __init__(self, name, array, *_args):
        if not isinstance(array, np.ndarray):
            raise TritonModelException(f"tensor {name!r}: expected a numpy.ndarray, got {type(array).__name__}")
        self._name = str(name)
        self._array = array

    def name(self):
        return self._name

    def as_numpy(self):
        return self._array

    def shape(self):
        return list(self._array.shape)

    def is_cpu(self):
        return True

    def to_dlpack(self):
        return self._array.__dlpack__()

    @staticmethod
    def from_dlpack(name, capsule):
        return Tensor(name, np.from_dlpack(capsule))

    def __repr__(self):
        return f"Tensor({self._name!r}, shape={self.shape()}, dtype={self._array.dtype})"


class InferenceResponse:
    """A response: output tensors, or an error."""

    def __init__(self, output_tensors=None, error=None, parameters=None):
        self._outputs = list(output_tensors or [])
        if error is not None and not isinstance(error, TritonError):
            error = TritonError(str(error))
        self._error = error
        self._parameters = parameters

    def output_tensors(self):
        return self._outputs

    def has_error(self):
        return self._error is not None

    def error(self):
        return self._error


class InferenceResponseSender:
    """Sends responses for one request of a decoupled model (``request.get_response_sender()``);
    usable from any thread, during ``execute`` or after it returned."""

    def __init__(self, send, cancelled):
        self._send = send
        self._cancelled = cancelled
        self._closed = False

    def send(self, response=None, flags=0):
        if self._closed:
            raise TritonModelException("the response sender is closed: the final flag was already sent")
        if response is not None and not isinstance(response, InferenceResponse):
            raise TritonModelException(f"send() takes an InferenceResponse, not {type(response).__name__}")
        if response is None and not flags & TRITONSERVER_RESPONSE_COMPLETE_FINAL:
            raise TritonModelException("send() without a response must carry TRITONSERVER_RESPONSE_COMPLETE_FINAL")
        if flags & TRITONSERVER_RESPONSE_COMPLETE_FINAL:
            self._closed = True
        self._send(response, flags)

    def is_cancelled(self):
        return self._cancelled()


# The worker running this model sets this: the channel BLS requests and metrics go through.
_runtime = None


def _the_runtime():
    if _runtime is None:
        raise TritonModelException("this needs inferd's python worker (model.py runs inside the server)")
    return _runtime


class InferenceRequest:
    """A request given to ``execute``; or, built by a model, a request to another model (BLS)."""

    def __init__(self, model_name=None, inputs=None, requested_output_names=None, request_id="",
                 correlation_id=0, parameters=None, flags=0, model_version=-1, **_kwargs):
        self._model_name = model_name
        self._inputs = list(inputs or [])
        self._requested = list(requested_output_names or [])
        self._request_id = request_id
        self._correlation_id = correlation_id
        self._parameters = parameters if isinstance(parameters, str) else json.dumps(parameters or {})
        self._flags = flags
        self._model_version = model_version
        self._sender = None
        self._cancelled = None
        self._timeout = _kwargs.get("timeout", 0)

    def inputs(self):
        return self._inputs

    def requested_output_names(self):
        return self._requested

    def request_id(self):
        return self._request_id

    def correlation_id(self):
        return self._correlation_id

    def parameters(self):
        return self._parameters

    def flags(self):
        return self._flags

    def model_name(self):
        return self._model_name

    def get_response_sender(self):
        if self._sender is None:
            raise TritonModelException("this model is not decoupled: return responses from execute")
        return self._sender

    def model_version(self):
        return self._model_version

    def is_cancelled(self):
        return self._cancelled() if self._cancelled is not None else False

    def exec(self, decoupled=False):
        """Runs this request on the server's model ``model_name`` (BLS). Returns the
        InferenceResponse (an error is in ``response.error()``, not raised), or with
        ``decoupled=True`` an iterator over the model's responses."""
        if not self._model_name:
            raise TritonModelException("exec() needs the InferenceRequest's model_name")
        return _the_runtime().bls(self, decoupled)

    async def async_exec(self, decoupled=False):
        """exec() without blocking the event loop: many requests run at once under asyncio.gather."""
        import asyncio

        return await asyncio.get_running_loop().run_in_executor(None, self.exec, decoupled)


def get_input_tensor_by_name(request, name):
    for t in request.inputs():
        if t.name() == name:
            return t
    return None


def get_output_tensor_by_name(response, name):
    for t in response.output_tensors():
        if t.name() == name:
            return t
    return None


def get_input_config_by_name(model_config, name):
    for c in model_config.get("input", []):
        if c.get("name") == name:
            return c
    return None


def get_output_config_by_name(model_config, name):
    for c in model_config.get("output", []):
        if c.get("name") == name:
            return c
    return None


def using_decoupled_model_transaction_policy(model_config):
    return bool(model_config.get("model_transaction_policy", {}).get("decoupled", False))


class MetricFamily:
    """A family of the model's own metrics, shown on the server's metrics page
    (``MetricFamily(name, description, kind=MetricFamily.COUNTER)``)."""

    COUNTER = 0
    GAUGE = 1
    HISTOGRAM = 2
    _KINDS = {COUNTER: "counter", GAUGE: "gauge", HISTOGRAM: "histogram"}

    def __init__(self, name, description, kind):
        if kind not in self._KINDS:
            raise TritonModelException(f"metric family {name!r}: kind must be COUNTER, GAUGE or HISTOGRAM")
        self._name = str(name)
        self._kind = kind
        _the_runtime().metric({"action": "family", "family": self._name, "description": str(description),
                               "kind": self._KINDS[kind]})

    def Metric(self, labels=None, buckets=None):  # noqa: N802 - Triton's name
        """A metric of this family, told apart by its labels (a histogram's needs buckets)."""
        return Metric(self, labels, buckets)


class Metric:
    """One metric of a family: ``increment``, ``set`` (gauges), ``observe`` (histograms), ``value``."""

    def __init__(self, family, labels=None, buckets=None):
        self._family = family._name
        self._labels = {str(k): str(v) for k, v in (labels or {}).items()}
        _the_runtime().metric({"action": "metric", "family": self._family, "labels": self._labels,
                               "buckets": None if buckets is None else [float(b) for b in buckets]})

    def _do(self, action, value=0.0):
        return _the_runtime().metric({"action": action, "family": self._family, "labels": self._labels,
                                      "value": float(value)})

    def increment(self, value):
        self._do("increment", value)

    def set(self, value):
        self._do("set", value)

    def observe(self, value):
        self._do("observe", value)

    def value(self):
        return self._do("value")


class Logger:
    """Log lines from a model, in the server's log (``pb_utils.Logger.log_info("...")``)."""

    @staticmethod
    def _log(level, message):
        print(f"[{level}] {message}", file=sys.stderr, flush=True)

    @staticmethod
    def log(message, level=None):
        Logger._log(level or "INFO", message)

    @staticmethod
    def log_info(message):
        Logger._log("INFO", message)

    @staticmethod
    def log_warn(message):
        Logger._log("WARN", message)

    @staticmethod
    def log_error(message):
        Logger._log("ERROR", message)

    @staticmethod
    def log_verbose(message):
        Logger._log("VERBOSE", message)


class ModelConfig:
    """The config handed to ``auto_complete_config``: a model fills in what its config lacks."""

    def __init__(self, config):
        self._config = config

    def as_dict(self):
        return self._config

    def _names(self, key):
        return {c["name"] for c in self._config.get(key, [])}

    def _add(self, key, spec):
        for field in ("name", "data_type", "dims"):
            if field not in spec:
                raise TritonModelException(f"{key} {spec!r} lacks '{field}'")
        existing = next((c for c in self._config.get(key, []) if c["name"] == spec["name"]), None)
        if existing is None:
            self._config.setdefault(key, []).append(dict(spec))
        elif existing.get("data_type") != spec["data_type"] or list(existing.get("dims", [])) != list(spec["dims"]):
            raise TritonModelException(
                f"{key} '{spec['name']}' is already in the config with another datatype or shape")

    def add_input(self, input):
        self._add("input", input)

    def add_output(self, output):
        self._add("output", output)

    def set_max_batch_size(self, max_batch_size):
        self._config["max_batch_size"] = int(max_batch_size)

    def set_dynamic_batching(self):
        self._config.setdefault("dynamic_batching", {})

    def add_model_warmup(self, model_warmup):
        self._config.setdefault("model_warmup", []).append(model_warmup)

    def set_model_transaction_policy(self, transaction_policy_dict):
        self._config["model_transaction_policy"] = dict(transaction_policy_dict)
