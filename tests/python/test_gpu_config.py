"""GPU requests in config.pbtxt are honoured or refused, never quietly run on CPU.

This machine has no GPU and the test suite's ONNX Runtime is the CPU wheel, so what is checked
here is the refusal: a `KIND_GPU` model becomes UNAVAILABLE with a reason that says what to do,
while the CPU models next to it serve. Which reason depends on the build, named by
$INFERD_BUILD_FEATURES (scripts/test.sh sets it): the default build's backends run on CPU only;
a build with `onnxruntime-cuda` asks the library for its CUDA provider and reports it missing."""

from __future__ import annotations

import os
import shutil

import pytest
import requests

from inferd_testlib import copy_models

FEATURES = os.environ.get("INFERD_BUILD_FEATURES", "")


@pytest.fixture(scope="module")
def server(inferd_server_factory, tmp_path_factory):
    repo = copy_models(tmp_path_factory.mktemp("gpu") / "models", ["simple_mlp"])
    src = repo / "simple_mlp"
    for name, extra in (
        ("on_gpu", 'instance_group [ { kind: KIND_GPU gpus: [ 0 ] } ]'),
        (
            "on_tensorrt",
            'instance_group [ { kind: KIND_GPU } ]\n'
            'optimization { execution_accelerators { gpu_execution_accelerator: '
            '[ { name: "tensorrt" parameters { key: "precision_mode" value: "FP16" } } ] } }',
        ),
        (
            # GPU accelerators on a CPU model apply to nothing; the model serves and its config
            # reports them as written.
            "cpu_tagged",
            'instance_group [ { kind: KIND_CPU } ]\n'
            'optimization { execution_accelerators { gpu_execution_accelerator: '
            '[ { name: "tensorrt" parameters { key: "precision_mode" value: "FP16" } } ] } }',
        ),
    ):
        dst = repo / name
        shutil.copytree(src / "1", dst / "1")
        text = (src / "config.pbtxt").read_text().replace('name: "simple_mlp"', f'name: "{name}"')
        (dst / "config.pbtxt").write_text(text + "\n" + extra + "\n")
    return inferd_server_factory(repo, strict_readiness=False)


def reasons(server) -> dict[str, str]:
    rows = requests.post(f"{server.http_base}/v2/repository/index", json={}, timeout=10).json()
    return {r["name"]: (r.get("state", ""), r.get("reason", "")) for r in rows}


# What each refusal must say, by build. The model's own name ("on_tensorrt") and path are taken
# out of the reason before matching, so they cannot supply a phrase.
EXPECTED = {
    "onnxruntime-cuda": {
        "on_gpu": ("has no CUDA execution provider", "point ORT_DYLIB_PATH at a GPU build"),
        "on_tensorrt": ("the tensorrt accelerator needs inferd built with the onnxruntime-tensorrt feature",),
    },
    "default": {
        "on_gpu": ("KIND_GPU", "CPU only"),
        "on_tensorrt": ("KIND_GPU", "CPU only"),
    },
}


@pytest.mark.parametrize("model", ["on_gpu", "on_tensorrt"])
def test_gpu_instances_are_refused_with_what_to_do(server, model):
    state, reason = reasons(server)[model]
    assert state == "UNAVAILABLE", (state, reason)
    own = reason.replace(f"{model}/1/model.onnx", "<file>").replace(f"'{model}'", "<model>")
    build = "onnxruntime-cuda" if "onnxruntime-cuda" in FEATURES else "default"
    for phrase in EXPECTED[build][model]:
        assert phrase in own, (phrase, reason)
    r = requests.post(f"{server.http_base}/v2/models/{model}/infer", json={"inputs": []}, timeout=10)
    assert r.status_code == 404, r.text
    assert f"model '{model}' is not ready" in r.json()["error"], r.text


@pytest.mark.parametrize("model", ["simple_mlp", "cpu_tagged"])
def test_cpu_models_beside_them_serve(server, model):
    state, _ = reasons(server)[model]
    assert state == "READY"


def test_model_config_reports_execution_accelerators_over_http_and_grpc(server):
    import tritonclient.grpc as grpcclient

    http = requests.get(f"{server.http_base}/v2/models/cpu_tagged/config", timeout=10).json()
    accel = http["optimization"]["execution_accelerators"]["gpu_execution_accelerator"]
    assert accel == [{"name": "tensorrt", "parameters": {"precision_mode": "FP16"}}], http
    client = grpcclient.InferenceServerClient(server.grpc_url)
    cfg = client.get_model_config("cpu_tagged", as_json=True)["config"]
    accel = cfg["optimization"]["execution_accelerators"]["gpu_execution_accelerator"]
    assert accel == [{"name": "tensorrt", "parameters": {"precision_mode": "FP16"}}], cfg
    plain = client.get_model_config("simple_mlp", as_json=True)["config"]
    assert "optimization" not in plain, plain
