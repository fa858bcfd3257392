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

import os

# Sentence encoders (candle) compute on the engine's own executor threads, as in the server
# (inferd_candle::confine_candle_threads): candle reads this once, before its first operation.
os.environ.setdefault("CANDLE_NUM_THREADS", "1")

from . import _errors  # noqa: E402
from ._errors import (  # noqa: E402
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
from ._inferd import Engine, Generation, __version__  # noqa: E402

__all__ = ["Engine", "Generation", *_errors.__all__, "__version__"]
