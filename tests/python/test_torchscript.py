"""TorchScript models (platform "pytorch_libtorch", model.pt) in the python backend's isolated
workers, made by torch itself (torch.jit.script and torch.jit.trace): answers equal torch's own
on the same inputs, over HTTP with tritonclient, batched and not; an unpinned archive is refused
as a pickle with the pin to add (its real sha256); torch.save output (a pickled eager module) is
refused even when pinned, naming its foreign import; a pickle beside a model.py serves once
pinned; `inferd scan` reports the foreign imports.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient

import torch  # installed by tests/python/requirements.txt (sentence-transformers pulls it)


class TwoHeads(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(4, 3)

    def forward(self, x, y):
        return torch.relu(self.lin(x)) + y, x.sum(dim=1, keepdim=True)


class Eager(torch.nn.Module):
    def forward(self, x):
        return x * 2


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def config(name: str, mbs: int, pin: str | None, extra: str = "") -> str:
    dims = "[ 4 ]" if mbs else "[ -1, 4 ]"
    ydims = "[ 3 ]" if mbs else "[ -1, 3 ]"
    sdims = "[ 1 ]" if mbs else "[ -1, 1 ]"
    pin_line = f'parameters {{ key: "sha256:1/model.pt" value: {{ string_value: "{pin}" }} }}\n' if pin else ""
    return (f'name: "{name}"\nplatform: "pytorch_libtorch"\nmax_batch_size: {mbs}\n'
            f'input [ {{ name: "INPUT__0" data_type: TYPE_FP32 dims: {dims} }}, '
            f'{{ name: "INPUT__1" data_type: TYPE_FP32 dims: {ydims} }} ]\n'
            f'output [ {{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: {ydims} }}, '
            f'{{ name: "OUTPUT__1" data_type: TYPE_FP32 dims: {sdims} }} ]\n' + pin_line + extra)


PICKLE_USER = '''
import os
import pickle
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        with open(os.path.join(os.path.dirname(__file__), "scale.pkl"), "rb") as f:
            self.scale = pickle.load(f)

    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
            "Y", pb_utils.get_input_tensor_by_name(r, "X").as_numpy() * self.scale)]) for r in requests]
'''


# python_backend's "pytorch" example: add_sub computed with torch inside a model.py.
TORCH_ADD_SUB = '''
import torch
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            a = torch.from_numpy(pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy())
            b = torch.from_numpy(pb_utils.get_input_tensor_by_name(r, "INPUT1").as_numpy())
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", (a + b).numpy()),
                                                   pb_utils.Tensor("OUTPUT1", (a - b).numpy())]))
        return out
'''


@pytest.fixture(scope="module")
def setup(inferd_server_factory, tmp_path_factory):
    root = tmp_path_factory.mktemp("torchscript")
    repo = root / "models"
    model = TwoHeads().eval()
    scripted = torch.jit.script(model)
    traced = torch.jit.trace(model, (torch.zeros(2, 4), torch.zeros(2, 3)))
    for name, mod, mbs, extra in [("scripted", scripted, 0, ""), ("traced", traced, 0, ""),
                                  ("batched", scripted, 16, "dynamic_batching { max_queue_delay_microseconds: 20000 }\n"),
                                  ("unpinned", scripted, 0, None)]:
        (repo / name / "1").mkdir(parents=True)
        mod.save(str(repo / name / "1" / "model.pt"))
        pin = None if extra is None else sha(repo / name / "1" / "model.pt")
        (repo / name / "config.pbtxt").write_text(config(name, mbs, pin, extra or ""))
    # torch.save of an eager module: a pickle that imports this test's class.
    (repo / "eager" / "1").mkdir(parents=True)
    torch.save(Eager(), repo / "eager" / "1" / "model.pt")
    (repo / "eager" / "config.pbtxt").write_text(config("eager", 0, sha(repo / "eager" / "1" / "model.pt")))
    # A python model with a pickle beside its model.py, pinned and not.
    for name, pinned in [("pickle_user", True), ("pickle_user_unpinned", False)]:
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "1" / "model.py").write_text(PICKLE_USER)
        (repo / name / "1" / "scale.pkl").write_bytes(__import__("pickle").dumps(3.0))
        pin = (f'parameters {{ key: "sha256:1/scale.pkl" value: {{ string_value: "{sha(repo / name / "1" / "scale.pkl")}" }} }}\n'
               if pinned else "")
        (repo / name / "config.pbtxt").write_text(
            f'name: "{name}"\nbackend: "python"\nmax_batch_size: 0\n'
            'input [ { name: "X" data_type: TYPE_FP32 dims: [ 2 ] } ]\n'
            'output [ { name: "Y" data_type: TYPE_FP32 dims: [ 2 ] } ]\n' + pin)
    (repo / "pytorch" / "1").mkdir(parents=True)
    (repo / "pytorch" / "1" / "model.py").write_text(TORCH_ADD_SUB)
    (repo / "pytorch" / "config.pbtxt").write_text(
        'name: "pytorch"\nbackend: "python"\nmax_batch_size: 0\n'
        'input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] }, { name: "INPUT1" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'
        'output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] }, { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 4 ] } ]\n')
    server = inferd_server_factory(repo, "--python-executable", sys.executable, strict_readiness=False)
    return server, repo, model


def index_row(server, name: str) -> dict:
    index = requests.post(f"{server.http_base}/v2/repository/index", json={}, timeout=10).json()
    return next(r for r in index if r["name"] == name)


def infer(server, model: str, x: np.ndarray, y: np.ndarray):
    client = httpclient.InferenceServerClient(server.http_url)
    inputs = [httpclient.InferInput("INPUT__0", list(x.shape), "FP32"), httpclient.InferInput("INPUT__1", list(y.shape), "FP32")]
    inputs[0].set_data_from_numpy(x)
    inputs[1].set_data_from_numpy(y)
    r = client.infer(model, inputs)
    return r.as_numpy("OUTPUT__0"), r.as_numpy("OUTPUT__1")


@pytest.mark.parametrize("name", ["scripted", "traced"])
def test_a_pinned_torchscript_model_answers_as_torch_does(setup, name):
    server, _, model = setup
    rng = np.random.default_rng(1)
    x, y = rng.random((2, 4), dtype=np.float32), rng.random((2, 3), dtype=np.float32)
    with torch.inference_mode():
        want0, want1 = model(torch.from_numpy(x), torch.from_numpy(y))
    got0, got1 = infer(server, name, x, y)
    np.testing.assert_allclose(got0, want0.numpy(), rtol=1e-6)
    np.testing.assert_allclose(got1, want1.numpy(), rtol=1e-6)


def test_a_batched_torchscript_model_gives_each_client_its_rows(setup):
    server, _, model = setup
    rng = np.random.default_rng(2)
    rows = [(rng.random((1, 4), dtype=np.float32), rng.random((1, 3), dtype=np.float32)) for _ in range(12)]
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        got = list(pool.map(lambda r: infer(server, "batched", *r), rows))
    for (x, y), (g0, g1) in zip(rows, got):
        with torch.inference_mode():
            w0, w1 = model(torch.from_numpy(x), torch.from_numpy(y))
        np.testing.assert_allclose(g0, w0.numpy(), rtol=1e-6)
        np.testing.assert_allclose(g1, w1.numpy(), rtol=1e-6)


def test_a_python_model_that_computes_with_torch_answers(setup):
    server, _, _ = setup
    client = httpclient.InferenceServerClient(server.http_url)
    a, b = np.arange(4, dtype=np.float32), np.ones(4, dtype=np.float32)
    inputs = [httpclient.InferInput("INPUT0", [4], "FP32"), httpclient.InferInput("INPUT1", [4], "FP32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    r = client.infer("pytorch", inputs)
    assert r.as_numpy("OUTPUT0").tolist() == (a + b).tolist() and r.as_numpy("OUTPUT1").tolist() == (a - b).tolist()


def test_an_unpinned_archive_is_refused_with_the_pin_to_add(setup):
    server, repo, _ = setup
    row = index_row(server, "unpinned")
    digest = sha(repo / "unpinned" / "1" / "model.pt")
    assert row["state"] == "UNAVAILABLE", row
    assert "TorchScript archive" in row["reason"] and "sha256:" in row["reason"] and digest in row["reason"], row


def test_torch_save_output_is_refused_even_when_pinned_naming_its_import(setup):
    server, _, _ = setup
    row = index_row(server, "eager")
    assert row["state"] == "UNAVAILABLE", row
    assert "Eager" in row["reason"] and "refused even when" in row["reason"] and "torch.save" in row["reason"], row


def test_a_pinned_pickle_beside_a_model_py_serves_and_an_unpinned_one_is_refused(setup):
    server, _, _ = setup
    client = httpclient.InferenceServerClient(server.http_url)
    inp = httpclient.InferInput("X", [2], "FP32")
    inp.set_data_from_numpy(np.array([1.0, 2.0], dtype=np.float32))
    assert client.infer("pickle_user", [inp]).as_numpy("Y").tolist() == [3.0, 6.0]
    row = index_row(server, "pickle_user_unpinned")
    assert row["state"] == "UNAVAILABLE" and "pickle" in row["reason"], row


def test_inferd_scan_reports_the_foreign_imports_and_the_torchscript_pin(setup, inferd_bin):
    _, repo, _ = setup
    out = subprocess.run([str(inferd_bin), "scan", "--format", "json", str(repo)], capture_output=True, text=True)
    findings = json.loads(out.stdout)
    by_file = {}
    for f in findings if isinstance(findings, list) else findings["findings"]:
        by_file.setdefault(Path(f["path"]).parent.parent.name, []).append(f)
    assert any(f["kind"] == "pickle-imports" and "Eager" in f["message"] for f in by_file["eager"]), by_file["eager"]
    assert not any(f["kind"] == "pickle-imports" for f in by_file["scripted"]), by_file["scripted"]
    assert any("TorchScript archive" in f["message"] for f in by_file["scripted"]), by_file["scripted"]
