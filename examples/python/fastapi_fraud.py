"""A fraud-scoring service: FastAPI with its XGBoost model served in-process by inferd.

    python examples/python/make_fraud_model.py            # writes examples/python/models
    uvicorn --app-dir examples/python fastapi_fraud:app --port 8080
    curl -s localhost:8080/score -H 'content-type: application/json' \
         -d '{"features": [0.1, 2.5, 0.0, ...30 numbers...]}'

The model runs inside this process (no network hop); concurrent requests are batched by the
engine. To move the model to a dedicated inferd server (``inferd serve --model-repository
examples/python/models``), set ``INFERD_URL=localhost:8000``: the one line that picks
``scorer`` below changes, the endpoint code does not.

Settings (environment): ``FRAUD_MODELS`` (the repository, default ``models`` beside this file),
``INFERD_URL`` (a server's HTTP address instead of the embedded engine).
"""

from __future__ import annotations

import os
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

N_FEATURES = 30
REPOSITORY = Path(os.environ.get("FRAUD_MODELS", Path(__file__).parent / "models"))


class Embedded:
    """The model in this process: ``inferd.Engine``."""

    def __init__(self, repository: Path):
        import inferd

        self.engine = inferd.Engine(str(repository))

    async def score(self, features: np.ndarray) -> np.ndarray:
        out = await self.engine.infer_async("fraud", {"input__0": features})
        return out["output__0"]

    def close(self) -> None:
        self.engine.close()


class Remote:
    """The same model on a dedicated inferd server, through Triton's client."""

    def __init__(self, url: str):
        import tritonclient.http.aio as httpclient
        from tritonclient.utils import InferenceServerException

        self.module = httpclient
        self.server_error = InferenceServerException
        self.url = url
        self.client = None  # made on the event loop, at the first request

    async def score(self, features: np.ndarray) -> np.ndarray:
        if self.client is None:
            self.client = self.module.InferenceServerClient(self.url)
        inp = self.module.InferInput("input__0", list(features.shape), "FP32")
        inp.set_data_from_numpy(features)
        try:
            result = await self.client.infer("fraud", [inp])
        except self.server_error as e:
            if str(e.status()).startswith("4"):
                raise ValueError(e.message()) from e  # the request's fault, as InvalidInput is
            raise
        return result.as_numpy("output__0")

    async def aclose(self) -> None:
        if self.client is not None:
            await self.client.close()


# The one-line switch: embedded engine or dedicated server.
scorer = Remote(os.environ["INFERD_URL"]) if os.environ.get("INFERD_URL") else Embedded(REPOSITORY)


@asynccontextmanager
async def lifespan(_app: FastAPI):
    yield
    if isinstance(scorer, Remote):
        await scorer.aclose()
    else:
        scorer.close()  # drains requests still in flight


app = FastAPI(title="fraud scorer", lifespan=lifespan)


class Transaction(BaseModel):
    features: list[float] = Field(min_length=N_FEATURES, max_length=N_FEATURES)


@app.post("/score")
async def score(t: Transaction) -> dict:
    features = np.asarray([t.features], dtype=np.float32)
    try:
        p = await scorer.score(features)
    except ValueError as e:  # inferd.InvalidInput is a ValueError
        raise HTTPException(status_code=400, detail=str(e)) from e
    return {"fraud_probability": float(p.reshape(-1)[0])}
