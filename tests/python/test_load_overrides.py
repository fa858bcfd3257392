"""Load with overrides (Triton's load API ``parameters.config`` and ``file:<version>/<name>``)
with the real tritonclient, as Triton's model-control example clients use it: a config override
takes effect (max_batch_size changes, the rest auto-completed from the model), an invalid one is
refused and changes nothing, file overrides land in the staging folder only, traversal names
are refused with nothing written, and the admin token guards it all when configured.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

import triton_models

TOKEN = "override-admin-token"


def _tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def setup(inferd_server_factory, tmp_path_factory):
    base = tmp_path_factory.mktemp("overrides")
    repo = triton_models.make_repo(base / "models")
    staging = base / "staging"
    server = inferd_server_factory(repo, "--staging-dir", str(staging), control_mode="explicit")
    return server, repo, staging


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_config_override_takes_effect_and_a_bad_one_changes_nothing(setup, protocol):
    server, repo, _ = setup
    if protocol == "http":
        client = httpclient.InferenceServerClient(server.http_url)
    else:
        client = grpcclient.InferenceServerClient(server.grpc_url)
    before = _tree(repo)
    client.load_model("simple")
    assert client.is_model_ready("simple")
    with pytest.raises(InferenceServerException) as e:
        client.load_model("simple", config='"parameters": {"config": {{"max_batch_size": "16"}}}')
    assert "failed to load" in e.value.message() and "Invalid config override" in e.value.message()
    assert client.is_model_ready("simple")
    client.load_model("simple", config='{"max_batch_size":"16"}')
    cfg = client.get_model_config("simple")
    if protocol == "http":
        assert cfg["max_batch_size"] == 16
        assert [i["name"] for i in cfg["input"]] == ["INPUT0", "INPUT1"]
    else:
        assert cfg.config.max_batch_size == 16
    # An override that names a field wrongly is refused by name; the override in force stays.
    with pytest.raises(InferenceServerException) as e:
        client.load_model("simple", config='{"max_batch_sise": 4}')
    assert "max_batch_sise" in e.value.message()
    cfg = client.get_model_config("simple")
    assert (cfg["max_batch_size"] if protocol == "http" else cfg.config.max_batch_size) == 16
    # A load without overrides goes back to the repository's config.
    client.load_model("simple")
    cfg = client.get_model_config("simple")
    assert (cfg["max_batch_size"] if protocol == "http" else cfg.config.max_batch_size) == 8
    client.unload_model("simple")
    assert not client.is_model_ready("simple")
    with pytest.raises(InferenceServerException) as e:
        client.load_model("wrong_model_name")
    assert "failed to load" in e.value.message()
    assert _tree(repo) == before, "the repository must never be written"


def test_file_overrides_land_in_staging_only(setup):
    server, repo, staging = setup
    client = httpclient.InferenceServerClient(server.http_url)
    before = _tree(repo)
    model = (repo / "simple" / "1" / "model.onnx").read_bytes()
    # A new model, served entirely from the request.
    client.load_model(
        "from_request",
        config='{"platform": "onnxruntime_onnx", "max_batch_size": 8}',
        files={"file:1/model.onnx": model},
    )
    assert client.is_model_ready("from_request")
    assert not (repo / "from_request").exists()
    staged = [p for p in staging.rglob("model.onnx")]
    assert len(staged) == 1 and staged[0].read_bytes() == model
    assert staged[0].relative_to(staging).parts[-3:] == ("from_request", "1", "model.onnx")
    assert (staging.stat().st_mode & 0o777) == 0o700
    client.unload_model("from_request")
    assert not any(staging.rglob("model.onnx")), "unloading removes the staged files"
    assert _tree(repo) == before


@pytest.mark.parametrize(
    "name",
    ["file:../escape.onnx", "file:1/../../escape.onnx", "file:/tmp/escape.onnx", "file:model.onnx", "file:" + "A" * 256],
)
def test_traversal_names_are_refused_and_nothing_is_written(setup, name, tmp_path):
    server, repo, staging = setup
    before_repo, before_staging = _tree(repo), _tree(staging) if staging.exists() else {}
    body = {"parameters": {"config": "{}", name: base64.b64encode(b"x").decode()}}
    r = requests.post(f"{server.http_base}/v2/repository/models/simple/load", json=body, timeout=10)
    assert r.status_code == 400, r.text
    assert "failed to poll from model repository" in r.json()["error"] and name in r.json()["error"]
    assert _tree(repo) == before_repo
    assert (_tree(staging) if staging.exists() else {}) == before_staging
    assert not Path("/tmp/escape.onnx").exists()
    assert requests.get(f"{server.http_base}/v2/health/live", timeout=5).status_code == 200


def test_files_need_a_config_and_base64(setup):
    server, _, _ = setup
    url = f"{server.http_base}/v2/repository/models/simple/load"
    r = requests.post(url, json={"parameters": {"file:1/model.onnx": base64.b64encode(b"x").decode()}}, timeout=10)
    assert r.status_code == 400 and "need a config override" in r.json()["error"]
    r = requests.post(url, json={"parameters": {"config": "{}", "file:1/model.onnx": "not base64!"}}, timeout=10)
    assert r.status_code == 400 and "base64" in r.json()["error"]


def test_overrides_need_the_admin_token_when_one_is_set(inferd_server_factory, tmp_path_factory):
    repo = triton_models.make_repo(tmp_path_factory.mktemp("override_auth") / "models")
    server = inferd_server_factory(repo, "--admin-token", TOKEN, control_mode="explicit")
    url = f"{server.http_base}/v2/repository/models/simple/load"
    body = {"parameters": {"config": '{"max_batch_size": 4}'}}
    r = requests.post(url, json=body, timeout=10)
    assert r.status_code == 401
    r = requests.post(url, json=body, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert r.status_code == 200, r.text
    cfg = requests.get(f"{server.http_base}/v2/models/simple/config", timeout=10).json()
    assert cfg["max_batch_size"] == 4
    client = grpcclient.InferenceServerClient(server.grpc_url)
    with pytest.raises(InferenceServerException) as e:
        client.load_model("simple", config='{"max_batch_size": 2}')
    assert "UNAUTHENTICATED" in str(e.value.status())


def test_staged_files_are_checked_like_every_artifact(setup):
    server, repo, staging = setup
    client = httpclient.InferenceServerClient(server.http_url)
    pickle = b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00}\x94."
    with pytest.raises(InferenceServerException) as e:
        client.load_model(
            "smuggled",
            config='{"backend": "python"}',
            files={"file:1/model.pkl": pickle},
        )
    assert "pickle" in e.value.message() and "model.pkl" in e.value.message(), e.value.message()
    assert not client.is_model_ready("smuggled")
    assert not any(staging.rglob("model.pkl")), "a refused load leaves nothing staged"
