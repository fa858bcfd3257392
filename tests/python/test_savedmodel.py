"""TensorFlow SavedModels in the python backend's isolated workers, made by TensorFlow itself
(tf.saved_model.save): Triton's layout with a config, and TF Serving's (saved_model.pb in the
version folder, no config) completed from the signature; answers equal TensorFlow's own; the
config's signature_name picks another signature; a signature that reads a file is refused
unless the saved_model.pb digest is pinned.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient

# TensorFlow runs in a child process: loaded into the test process, it breaks torch's later
# imports there (its LLVM and triton's clash and abort the interpreter).
BUILD = r'''
import json, os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np
import tensorflow as tf

repo, x_file, want_file = sys.argv[1:4]


class Scorer(tf.Module):
    def __init__(self):
        super().__init__()
        rng = np.random.default_rng(0)
        self.w = tf.Variable(rng.random((4, 2), dtype=np.float32))

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
    def score(self, x):
        return {"logits": tf.matmul(x, self.w), "total": tf.reduce_sum(x, axis=1)}

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
    def double(self, x):
        return {"doubled": x * 2.0}


class Reader(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([], tf.string, name="path")])
    def read(self, path):
        return {"content": tf.io.read_file(path)}


scorer = Scorer()
sigs = {"serving_default": scorer.score, "double": scorer.double}
for folder in (f"{repo}/triton_layout/1/model.savedmodel", f"{repo}/tfs_layout/1", f"{repo}/doubler/1/model.savedmodel"):
    tf.saved_model.save(scorer, folder, signatures=sigs)
reader = Reader()
for name in ("reader", "reader_pinned"):
    tf.saved_model.save(reader, f"{repo}/{name}/1/model.savedmodel", signatures={"serving_default": reader.read})
x = np.load(x_file)
want = scorer.score(tf.constant(x))
json.dump({k: v.numpy().tolist() for k, v in want.items()}, open(want_file, "w"))
'''


@pytest.fixture(scope="module")
def setup(inferd_server_factory, tmp_path_factory):
    root = tmp_path_factory.mktemp("savedmodel")
    repo = root / "models"
    x = np.random.default_rng(3).random((3, 4), dtype=np.float32)
    np.save(root / "x.npy", x)
    subprocess.run([sys.executable, "-c", BUILD, str(repo), str(root / "x.npy"), str(root / "want.json")],
                   check=True, timeout=600)
    want = json.loads((root / "want.json").read_text())
    (repo / "triton_layout" / "config.pbtxt").write_text(
        'name: "triton_layout"\nplatform: "tensorflow_savedmodel"\nmax_batch_size: 0\n'
        'input [ { name: "x" data_type: TYPE_FP32 dims: [ -1, 4 ] } ]\n'
        'output [ { name: "logits" data_type: TYPE_FP32 dims: [ -1, 2 ] }, { name: "total" data_type: TYPE_FP32 dims: [ -1 ] } ]\n')
    (repo / "doubler" / "config.pbtxt").write_text(
        'name: "doubler"\nplatform: "tensorflow_savedmodel"\nmax_batch_size: 0\n'
        'parameters { key: "signature_name" value: { string_value: "double" } }\n')
    digest = hashlib.sha256((repo / "reader_pinned" / "1" / "model.savedmodel" / "saved_model.pb").read_bytes()).hexdigest()
    (repo / "reader_pinned" / "config.pbtxt").write_text(
        'name: "reader_pinned"\nplatform: "tensorflow_savedmodel"\nmax_batch_size: 0\n'
        f'parameters {{ key: "sha256:1/model.savedmodel/saved_model.pb" value: {{ string_value: "{digest}" }} }}\n')
    (repo / "reader" / "config.pbtxt").write_text('name: "reader"\nplatform: "tensorflow_savedmodel"\nmax_batch_size: 0\n')
    secret = root / "secret.txt"
    secret.write_text("not for models")
    server = inferd_server_factory(repo, "--python-executable", sys.executable, strict_readiness=False)
    return server, (x, want), secret


def infer(server, model: str, x: np.ndarray, outputs: list[str]) -> dict:
    client = httpclient.InferenceServerClient(server.http_url)
    inp = httpclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    r = client.infer(model, [inp])
    return {o: r.as_numpy(o) for o in outputs}


@pytest.mark.parametrize("model", ["triton_layout", "tfs_layout"])
def test_a_savedmodel_answers_as_tensorflow_does(setup, model):
    server, (x, want), _ = setup
    got = infer(server, model, x, ["logits", "total"])
    np.testing.assert_allclose(got["logits"], np.array(want["logits"], dtype=np.float32), rtol=1e-6)
    np.testing.assert_allclose(got["total"], np.array(want["total"], dtype=np.float32), rtol=1e-6)


def test_tf_serving_layout_is_completed_from_the_signature(setup):
    server, _, _ = setup
    meta = httpclient.InferenceServerClient(server.http_url).get_model_metadata("tfs_layout")
    assert [(i["name"], i["datatype"], i["shape"]) for i in meta["inputs"]] == [("x", "FP32", [-1, 4])]
    assert [(o["name"], o["datatype"]) for o in meta["outputs"]] == [("logits", "FP32"), ("total", "FP32")]


def test_signature_name_picks_another_signature(setup):
    server, _, _ = setup
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    assert infer(server, "doubler", x, ["doubled"])["doubled"].tolist() == (x * 2).tolist()


def test_a_signature_that_reads_files_is_refused_unless_pinned(setup):
    server, _, secret = setup
    index = requests.post(f"{server.http_base}/v2/repository/index", json={}, timeout=10).json()
    row = next(r for r in index if r["name"] == "reader")
    assert row["state"] == "UNAVAILABLE" and "ReadFile" in row["reason"] and "pins" in row["reason"], row
    client = httpclient.InferenceServerClient(server.http_url)
    inp = httpclient.InferInput("path", [], "BYTES")
    inp.set_data_from_numpy(np.array(str(secret).encode(), dtype=object))
    got = client.infer("reader_pinned", [inp]).as_numpy("content")
    assert bytes(got.reshape(-1)[0]) == b"not for models"
