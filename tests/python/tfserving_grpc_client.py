"""The tensorflow-serving-api client's side of test_tfserving_grpc.py, run in a child process
(TensorFlow loaded into the test process breaks torch's later imports there): every call the
test checks, made with the real client, and the comparison of our .proto files with the
client's own descriptors; one JSON object of results on stdout.

    python tfserving_grpc_client.py HOST:PORT X.npy PROTO_DIR
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import grpc  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from google.protobuf import descriptor_pb2, descriptor_pool  # noqa: E402
from tensorflow_serving.apis import (  # noqa: E402
    get_model_metadata_pb2, get_model_status_pb2, model_service_pb2_grpc, predict_pb2,
    prediction_service_pb2_grpc)


def predict_request(model: str, x: np.ndarray, version: int | None = None, name: str = "input"):
    req = predict_pb2.PredictRequest()
    req.model_spec.name = model
    req.model_spec.signature_name = "serving_default"
    if version is not None:
        req.model_spec.version.value = version
    req.inputs[name].CopyFrom(tf.make_tensor_proto(x))
    return req


def error_of(call) -> dict:
    try:
        call()
    except grpc.RpcError as e:
        return {"code": e.code().name, "details": e.details()}
    return {"code": "OK", "details": ""}


def descriptors(proto_dir: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "fds.pb"
        subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{proto_dir}", f"--descriptor_set_out={out}",
                        "--include_imports", "tensorflow_serving/apis.proto"], check=True)
        fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    pool = descriptor_pool.Default()
    checked, mismatches = 0, []

    def walk(prefix, msgs):
        nonlocal checked
        for m in msgs:
            full = f"{prefix}.{m.name}"
            theirs = pool.FindMessageTypeByName(full)
            for f in m.field:
                t = theirs.fields_by_name.get(f.name)
                repeated = f.label == descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
                if t is None or (t.number, t.type, t.is_repeated) != (f.number, f.type, repeated):
                    mismatches.append(f"{full}.{f.name}")
                checked += 1
            walk(full, m.nested_type)

    for f in fds.file:
        if f.package.startswith("tensorflow"):
            walk(f.package, f.message_type)
    return {"checked": checked, "mismatches": mismatches}


def main() -> None:
    addr, x_file, proto_dir = sys.argv[1:4]
    x = np.load(x_file)
    channel = grpc.insecure_channel(addr)
    predict = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    models = model_service_pb2_grpc.ModelServiceStub(channel)
    out: dict = {}
    r = predict.Predict(predict_request("simple_mlp", x, version=1), timeout=10)
    out["predict"] = {"output": tf.make_ndarray(r.outputs["output"]).tolist(), "name": r.model_spec.name,
                      "version": r.model_spec.version.value}
    req = predict_pb2.PredictRequest()
    req.model_spec.name = "string_identity"
    req.inputs["INPUT0"].CopyFrom(tf.make_tensor_proto(np.array([[b"abc"], [b"d\xc3\xa9f"]], dtype=object)))
    got = tf.make_ndarray(predict.Predict(req, timeout=10).outputs["OUTPUT0"])
    out["strings"] = [[v.decode() for v in row] for row in got.tolist()]
    mreq = get_model_metadata_pb2.GetModelMetadataRequest()
    mreq.model_spec.name = "simple_mlp"
    mreq.metadata_field.append("signature_def")
    meta = predict.GetModelMetadata(mreq, timeout=10)
    sigs = get_model_metadata_pb2.SignatureDefMap()
    unpacked = meta.metadata["signature_def"].Unpack(sigs)
    sig = sigs.signature_def["serving_default"]
    out["metadata"] = {"unpacked": unpacked, "dtype_is_float": sig.inputs["input"].dtype == tf.float32.as_datatype_enum,
                       "dims": [d.size for d in sig.inputs["input"].tensor_shape.dim], "method": sig.method_name}
    st = get_model_status_pb2.GetModelStatusRequest()
    st.model_spec.name = "simple_mlp"
    rows = models.GetModelStatus(st, timeout=10).model_version_status
    out["status"] = sorted((row.version, row.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE) for row in rows)
    bad_sig = predict_request("simple_mlp", np.zeros((1, 64), np.float32))
    bad_sig.model_spec.signature_name = "classify"
    missing_version = get_model_status_pb2.GetModelStatusRequest()
    missing_version.model_spec.name = "simple_mlp"
    missing_version.model_spec.version.value = 9
    out["errors"] = {
        "bad_shape": error_of(lambda: predict.Predict(predict_request("simple_mlp", np.zeros((1, 3), np.float32)), timeout=10)),
        "unknown_model": error_of(lambda: predict.Predict(predict_request("nope", np.zeros((1, 64), np.float32)), timeout=10)),
        "bad_signature": error_of(lambda: predict.Predict(bad_sig, timeout=10)),
        "missing_version": error_of(lambda: models.GetModelStatus(missing_version, timeout=10)),
    }
    out["descriptors"] = descriptors(proto_dir)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
