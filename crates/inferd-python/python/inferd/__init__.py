"""inferd in-process: a model repository served inside a Python service.

    import numpy as np, inferd

    with inferd.Engine("models", compute_threads=2) as engine:
        out = engine.infer("fraud", {"features": np.zeros((1, 30), np.float32)})
        out["probability"]          # a NumPy array

The same engine as the ``inferd`` server (formats, safety checks, dynamic batching, model
configs); ``Engine.infer`` releases the GIL while the engine works, so calls from many threads
or asyncio tasks (``await engine.infer_async(...)``) are batched together. Errors raise the
classes below (``InvalidInput``, ``ModelNotFound``, ``Overloaded``, ...), with the engine's
message.
"""

from __future__ import annotations

from ._errors import (
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    InferdError,
    InternalError,
    InvalidInput,
    ModelNotFound,
    Overloaded,
    Unavailable,
)
from ._inferd import Engine, Generation, __version__

__all__ = [
    "Engine",
    "Generation",
    "InferdError",
    "InvalidInput",
    "ModelNotFound",
    "Unavailable",
    "Overloaded",
    "FailedPrecondition",
    "Cancelled",
    "DeadlineExceeded",
    "InternalError",
    "__version__",
]
