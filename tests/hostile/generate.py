#!/usr/bin/env python3
"""(Re)generate the hostile-artifact corpus: model folders that inferd must refuse, both when it
serves a repository and in `inferd scan`. Run from the repository root:

    .venv/bin/python tests/hostile/generate.py

Each model is Triton-layout (`<model>/config.pbtxt`, `<model>/1/<file>`):
- pickle_payload:  a pickle whose unpickling would run `touch /tmp/inferd_hostile_marker`
                   (os.system via __reduce__), saved as model.onnx to hide its nature.
- torch_zip:       a zip archive holding archive/data.pkl (PyTorch's torch.save layout), as model.pt.
- onnx_external:   a valid ONNX model whose initializer's external data points at ../../../../etc/passwd.
- bad_safetensors: a SafeTensors file whose tensor offsets run past the end of the file.
The symlink-escape case is made by the tests at run time (a link to a file outside the repository),
since a committed symlink to an absolute path would point somewhere different on every machine.
Nothing here is ever unpickled: the generator writes the pickle bytes with pickle.dumps.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import zipfile
from pathlib import Path

import onnx
from onnx import TensorProto, helper

OUT = Path(__file__).resolve().parent / "repo"
MARKER = "/tmp/inferd_hostile_marker"


class Payload:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


def write_model(name: str, filename: str, data: bytes, config_extra: str = "") -> None:
    d = OUT / name / "1"
    d.mkdir(parents=True, exist_ok=True)
    (d / filename).write_bytes(data)
    (OUT / name / "config.pbtxt").write_text(
        f'name: "{name}"\nbackend: "onnxruntime"\nmax_batch_size: 0\n'
        f'default_model_filename: "{filename}"\n{config_extra}'
    )


def main() -> None:
    write_model("pickle_payload", "model.onnx", pickle.dumps(Payload(), protocol=2))

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pickle.dumps({"weight": [1.0, 2.0]}, protocol=2))
        z.writestr("archive/version", "3\n")
    write_model("torch_zip", "model.pt", buf.getvalue())

    w = TensorProto()
    w.name = "w"
    w.data_type = TensorProto.FLOAT
    w.dims.extend([4])
    w.data_location = TensorProto.EXTERNAL
    entry = w.external_data.add()
    entry.key, entry.value = "location", "../../../../etc/passwd"
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "external",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    write_model("onnx_external", "model.onnx", model.SerializeToString())

    header = json.dumps({"w": {"dtype": "F32", "shape": [1024], "data_offsets": [0, 4096]}}).encode()
    write_model("bad_safetensors", "model.safetensors", struct.pack("<Q", len(header)) + header + b"\0" * 16)
    print(OUT)


if __name__ == "__main__":
    main()
