"""TensorFlow SavedModels in the python backend's isolated workers, made by TensorFlow itself
(tf.saved_model.save): Triton's layout with a config, and TF Serving's (saved_model.pb in the
version folder, no config) completed from the signature; answers equal TensorFlow's own; the
config's signature_name picks another signature; a signature that reads a file is refused
unless the saved_model.pb digest is pinned.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import tensorflow as tf  # noqa: E402 - installed by tests/python/requirements.txt


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


def save(module, folder: Path, signatures) -> None:
    tf.saved_model.save(module, str(folder), signatures=signatures)


@pytest.fixture(scope="module")
def setup(inferd_server_factory, tmp_path_factory):
    root = tmp_path_factory.mktemp("savedmodel")
    repo = root / "models"
    scorer = Scorer()
    sigs = {"serving_default": scorer.score, "double": scorer.double}
    # Triton's layout, with a config.
    save(scorer, repo / "triton_layout" / "1" / "model.savedmodel", sigs)
    (repo / "triton_layout" / "config.pbtxt").write_text(
        'name: "triton_layout"\nplatform: "tensorflow_savedmodel"\nmax_batch_size: 0\n'
        'input [ { name: "x" data_type: TYPE_FP32 dims: [ -1, 4 ] } ]\n'
        'output [ { name: "logits" data_type: TYPE_FP32 dims: [ -1, 2 ] }, { name: "total" data_type: TYPE_FP32 dims: [ -1 ] } ]\n')
    # TF Serving's layout: no config at all.
    save(scorer, repo / "tfs_layout" / "1", sigs)
    # Another signature, by name.
    save(scorer, repo / "doubler" / "1" / "model.savedmodel", sigs)
    (repo / "doubler" / "config.pbtxt").write_text(
        'name: "doubler"\nplatform: "tensorflow_savedmodel"\nmax_batch_size: 0\n'
        'parameters { key: "signature_name" value: { string_value: "double" } }\n')
    # A signature that reads a file: refused, then served once pinned.
    reader = Reader()
    for name in ("reader", "reader_pinned"):
        save(reader, repo / name / "1" / "model.savedmodel", {"serving_default": reader.read})
    digest = hashlib.sha256((repo / "reader_pinned" / "1" / "model.savedmodel" / "saved_model.pb").read_bytes()).hexdigest()
    (repo / "reader_pinned" / "config.pbtxt").write_text(
        'name: "reader_pinned"\nplatform: "tensorflow_savedmodel"\nmax_batch_size: 0\n'
        f'parameters {{ key: "sha256:1/model.savedmodel/saved_model.pb" value: {{ string_value: "{digest}" }} }}\n'
        'parameters { key: "allow_network" value: { string_value: "false" } }\n')
    (repo / "reader" / "config.pbtxt").write_text('name: "reader"\nplatform: "tensorflow_savedmodel"\nmax_batch_size: 0\n')
    secret = root / "secret.txt"
    secret.write_text("not for models")
    server = inferd_server_factory(repo, "--python-executable", sys.executable, strict_readiness=False)
    return server, scorer, secret


def infer(server, model: str, x: np.ndarray, outputs: list[str]) -> dict:
    client = httpclient.InferenceServerClient(server.http_url)
    inp = httpclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    r = client.infer(model, [inp])
    return {o: r.as_numpy(o) for o in outputs}


@pytest.mark.parametrize("model", ["triton_layout", "tfs_layout"])
def test_a_savedmodel_answers_as_tensorflow_does(setup, model):
    server, scorer, _ = setup
    x = np.random.default_rng(3).random((3, 4), dtype=np.float32)
    want = scorer.score(tf.constant(x))
    got = infer(server, model, x, ["logits", "total"])
    np.testing.assert_allclose(got["logits"], want["logits"].numpy(), rtol=1e-6)
    np.testing.assert_allclose(got["total"], want["total"].numpy(), rtol=1e-6)


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
