"""The usual embedded-serving Python service, as a peer to measure against: FastAPI + uvicorn +
onnxruntime (1 intra-op thread), answering the KServe v2 JSON inference request.

    python bench/peers/fastapi_peer.py MODEL_NAME MODEL.onnx PORT
"""

import sys

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI, HTTPException, Request

name, path, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
opts = ort.SessionOptions()
opts.intra_op_num_threads = 1
opts.inter_op_num_threads = 1
session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
input_name = session.get_inputs()[0].name
output_name = session.get_outputs()[0].name
app = FastAPI()


@app.get("/v2/health/ready")
def ready():
    return {}


@app.post("/v2/models/{model}/infer")
async def infer(model: str, request: Request):
    if model != name:
        raise HTTPException(404, f"unknown model {model}")
    body = await request.json()
    inp = body["inputs"][0]
    x = np.asarray(inp["data"], dtype=np.float32).reshape(inp["shape"])
    y = session.run([output_name], {input_name: x})[0]
    return {
        "model_name": name,
        "outputs": [{"name": output_name, "datatype": "FP32", "shape": list(y.shape), "data": y.ravel().tolist()}],
    }


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
