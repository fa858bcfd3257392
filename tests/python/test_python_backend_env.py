"""A python model's own interpreter (Triton's EXECUTION_ENV_PATH parameter): a virtual
environment folder, or a packed environment archive unpacked once into the server's cache
(`--python-env-cache-dir`) and reused by later loads; a path that is neither is refused by name.
"""

from __future__ import annotations

import site
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient

from test_python_backend import write

PREFIX = '''
import sys
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("PREFIX", np.array([sys.prefix.encode()], dtype=object))])
                for _ in requests]
'''


def config(name: str, env: str) -> str:
    return (f'name: "{name}"\nbackend: "python"\nmax_batch_size: 0\n'
            'input [ { name: "X" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
            'output [ { name: "PREFIX" data_type: TYPE_STRING dims: [ 1 ] } ]\n'
            f'parameters {{ key: "EXECUTION_ENV_PATH" value: {{ string_value: "{env}" }} }}\n')


def make_env(path: Path) -> None:
    """A virtual environment without pip that sees this test venv's packages (numpy) via a .pth."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    libs = next(path.glob("lib/python3*/site-packages"))
    (libs / "test_packages.pth").write_text("\n".join(site.getsitepackages()) + "\n")


def prefix_of(server, model: str) -> str:
    client = httpclient.InferenceServerClient(server.http_url)
    inp = httpclient.InferInput("X", [1], "FP32")
    inp.set_data_from_numpy(np.zeros(1, dtype=np.float32))
    return client.infer(model, [inp]).as_numpy("PREFIX")[0].decode()


@pytest.fixture(scope="module")
def setup(inferd_server_factory, tmp_path_factory):
    root = tmp_path_factory.mktemp("pyenv")
    repo, cache = root / "models", root / "envs"
    make_env(root / "venv")
    write(repo, "in_venv", PREFIX, config("in_venv", str(root / "venv")))
    write(repo, "packed", PREFIX, config("packed", "$$TRITON_MODEL_DIRECTORY/env.tar.gz"))
    with tarfile.open(repo / "packed" / "env.tar.gz", "w:gz") as tar:
        tar.add(root / "venv", arcname=".")
    write(repo, "no_env", PREFIX, config("no_env", "$$TRITON_MODEL_DIRECTORY/missing.tar.gz"))
    server = inferd_server_factory(repo, "--python-executable", sys.executable,
                                   "--python-env-cache-dir", str(cache), "--model-control-mode", "explicit",
                                   "--load-model", "in_venv,packed,no_env", strict_readiness=False)
    yield server, root, cache


def test_a_virtual_environment_folder_runs_the_model(setup):
    server, root, _ = setup
    assert Path(prefix_of(server, "in_venv")).resolve() == (root / "venv").resolve()


def test_a_packed_environment_is_unpacked_once_into_the_cache_and_reused(setup):
    server, _, cache = setup
    prefix = Path(prefix_of(server, "packed"))
    assert prefix.parent == cache, prefix
    assert len(list(cache.iterdir())) == 1
    # Reloading the model reuses the unpacked folder (no second copy, same interpreter).
    marker = prefix / "kept-from-the-first-unpack"
    marker.write_text("")
    r = requests.post(f"{server.http_base}/v2/repository/models/packed/load", json={}, timeout=60)
    assert r.status_code == 200, r.text
    assert Path(prefix_of(server, "packed")) == prefix
    assert marker.exists() and len(list(cache.iterdir())) == 1


def test_a_missing_environment_leaves_the_model_unavailable_naming_it(setup):
    server, _, _ = setup
    index = requests.post(f"{server.http_base}/v2/repository/index", json={}, timeout=10).json()
    row = next(r for r in index if r["name"] == "no_env")
    assert row["state"] == "UNAVAILABLE", row
    assert "EXECUTION_ENV_PATH" in row["reason"] and "missing.tar.gz" in row["reason"], row
