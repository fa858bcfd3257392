"""ONNX as users export it: models made at test time by the real converters (skl2onnx,
onnxmltools, torch.onnx, tf2onnx) with default options, each dropped into a repository folder
with no config and served by the default build, every output held against onnxruntime on random
rows: labels equal, floats within 1e-4. None refused, none wrong.

On the ONNX Runtime build (``INFERD_BUILD_FEATURES`` names onnxruntime) the same repository is
served twice: with ``--onnx-backend auto`` (tract, cross-checked against ONNX Runtime at load)
and with ``--onnx-backend onnxruntime``.

The models are listed in ``onnx_converters.py``.
"""

from __future__ import annotations

import os
import zlib

import numpy as np
import pytest

from inferd_testlib import TritonClient
from onnx_converters import all_models, write_repository

# Every model the generator makes; the fixture checks the two lists agree.
MODEL_NAMES = [
    "skl_linear_regression",
    "skl_logistic_binary",
    "skl_logistic_multiclass",
    "skl_random_forest_binary",
    "skl_random_forest_multiclass",
    "skl_random_forest_regressor",
    "skl_extra_trees_classifier",
    "skl_extra_trees_regressor",
    "skl_gradient_boosting_binary",
    "skl_gradient_boosting_multiclass",
    "skl_gradient_boosting_regressor",
    "skl_svc_multiclass",
    "skl_svc_binary_probability",
    "skl_svr",
    "skl_mlp_classifier",
    "skl_mlp_regressor",
    "skl_pipeline_impute_scale_onehot",
    "xgb_classifier_binary",
    "xgb_classifier_multiclass",
    "xgb_regressor",
    "lgbm_classifier_binary",
    "lgbm_classifier_multiclass",
    "lgbm_regressor",
    "catboost_classifier_binary",
    "catboost_regressor",
    "torch_mlp",
    "torch_cnn",
    "torch_transformer_encoder",
    "keras_mlp_classifier",
    "keras_cnn_nhwc",
]

ORT_BUILD = "onnxruntime" in os.environ.get("INFERD_BUILD_FEATURES", "")
BACKENDS = ["auto", "onnxruntime"] if ORT_BUILD else ["auto"]


# Requests of these many rows each (auto-complete gives batching models max_batch_size 4).
CHUNKS = [1, 4, 3, 2, 4]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    models = {m.name: m for m in all_models()}
    assert sorted(models) == sorted(MODEL_NAMES), "MODEL_NAMES and the generator disagree"
    repo = tmp_path_factory.mktemp("converters") / "models"
    write_repository(repo, list(models.values()))
    return models, repo


@pytest.fixture(scope="module", params=BACKENDS)
def served(request, exported, inferd_server_factory):
    models, repo = exported
    # Not waiting for readiness: a model that fails to load must fail its own test, by name.
    server = inferd_server_factory(
        repo, "--onnx-backend", request.param, wait_ready=False, name=f"converters-{request.param}"
    )
    client = TritonClient("http", server)
    yield server, client, models, repo, request.param
    client.close()


def _load_state(client: TritonClient, name: str) -> tuple[str, str]:
    for entry in client.repository_index():
        if entry["name"] == name:
            return entry["state"], entry["reason"]
    return "MISSING", ""


def _wait_loaded(client: TritonClient, name: str) -> None:
    import time

    deadline = time.monotonic() + 120
    while True:
        state, reason = _load_state(client, name)
        if state == "READY":
            return
        if state == "UNAVAILABLE" or time.monotonic() > deadline:
            pytest.fail(f"model {name} was not served: {state}: {reason}", pytrace=False)
        time.sleep(0.2)


def _zipmap_labels(path) -> dict[str, list]:
    """Class labels of the ZipMaps that make graph outputs (inferd serves those as tensors)."""
    import onnx
    from onnx import helper

    graph = onnx.load(str(path)).graph
    out = {}
    for node in graph.node:
        if node.op_type == "ZipMap":
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            labels = attrs.get("classlabels_int64s") or [s.decode() for s in attrs["classlabels_strings"]]
            out[node.output[0]] = list(labels)
    return out


def _compare(name: str, output: str, ours: np.ndarray, ref, rows: int) -> None:
    assert ours.shape == ref.shape, f"{name}.{output}: shape {ours.shape}, onnxruntime {ref.shape}"
    if ref.dtype == object or ref.dtype.kind in "US":
        ours = np.array([v.decode() if isinstance(v, bytes) else v for v in ours.ravel()]).reshape(ours.shape)
        assert (ours == ref.astype(str)).all(), f"{name}.{output}: labels differ: {ours} vs {ref}"
    elif ref.dtype.kind in "iub":
        assert ours.dtype == ref.dtype, f"{name}.{output}: type {ours.dtype}, onnxruntime {ref.dtype}"
        wrong = int((ours != ref).sum())
        assert wrong == 0, f"{name}.{output}: {wrong} of {ref.size} values differ: {ours} vs {ref}"
    else:
        np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4, err_msg=f"{name}.{output}")


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_converted_model_is_served_with_onnxruntimes_answers(served, onnx_reference, name):
    server, client, models, repo, backend = served
    # Both backends serve a terminal ZipMap (CatBoost's) as the FP32 tensor it maps.
    _wait_loaded(client, name)
    model = models[name]
    path = repo / name / "1" / "model.onnx"
    outputs = [o.name for o in onnx_reference.session(path).get_outputs()]
    zipmaps = _zipmap_labels(path)
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    for rows in CHUNKS:
        feeds = model.feeds(rng, rows)
        ref = onnx_reference.run(path, feeds)
        for out, labels in zipmaps.items():
            # onnxruntime returns one {label: probability} per row; inferd the FP32 rows.
            ref[out] = np.array([[m[k] for k in labels] for m in ref[out]], dtype=np.float32)
        _, ours = client.infer(name, feeds, outputs)
        for out in outputs:
            _compare(name, out, ours[out], ref[out], rows)


def test_converted_models_also_answer_over_grpc(served, onnx_reference):
    server, _, models, repo, _ = served
    grpc = TritonClient("grpc", server)
    try:
        for name in ("skl_random_forest_binary", "lgbm_classifier_multiclass", "skl_pipeline_impute_scale_onehot"):
            path = repo / name / "1" / "model.onnx"
            outputs = [o.name for o in onnx_reference.session(path).get_outputs()]
            feeds = models[name].feeds(np.random.default_rng(7), 3)
            ref = onnx_reference.run(path, feeds)
            _, ours = grpc.infer(name, feeds, outputs)
            for out in outputs:
                _compare(name, out, ours[out], ref[out], 3)
    finally:
        grpc.close()


@pytest.mark.skipif(not ORT_BUILD, reason="the cross-check needs the ONNX Runtime build, which scripts/test.sh also runs")
@pytest.mark.parametrize("served", ["auto"], indirect=True)
def test_auto_serves_every_converted_model_on_tract_after_the_cross_check(served):
    server, client, models, _, _ = served
    for name in MODEL_NAMES:
        _wait_loaded(client, name)
    log = server.stderr_path.read_text(errors="replace")
    for name in MODEL_NAMES:
        who = f"model '{name}' version 1: served on tract"
        # CatBoost's ZipMap included: ONNX Runtime gets the model with it unzipped too.
        assert f"{who} (its answers match ONNX Runtime's)" in log, (name, server.log_tail())


# No converter emits TreeEnsemble (ai.onnx.ml 5) by default yet (skl2onnx keeps the ml-3
# operators even at ml opset 5), so this one is written by hand: two trees, two targets, four
# split modes, a NaN that tracks true, leaves in their own arrays.
def _tree_ensemble_v5():
    from onnx import TensorProto, helper, numpy_helper

    # Two trees over 3 features, 2 targets; modes LEQ, LT, GT, NEQ; missing tracks true on one.
    node = helper.make_node(
        "TreeEnsemble", ["X"], ["Y"], domain="ai.onnx.ml",
        n_targets=2, aggregate_function=1, post_transform=0,
        tree_roots=[0, 2],
        nodes_featureids=[0, 1, 2, 0],
        nodes_splits=numpy_helper.from_array(np.array([0.5, -0.2, 0.1, 1.0], dtype=np.float32), "s"),
        nodes_modes=numpy_helper.from_array(np.array([0, 1, 3, 5], dtype=np.uint8), "m"),
        nodes_truenodeids=[1, 0, 3, 2], nodes_trueleafs=[0, 1, 0, 1],
        nodes_falsenodeids=[1, 1, 4, 3], nodes_falseleafs=[1, 1, 1, 1],
        nodes_missing_value_tracks_true=[0, 1, 0, 0],
        leaf_targetids=[0, 1, 0, 1, 0],
        leaf_weights=numpy_helper.from_array(np.array([1.0, 2.0, 4.0, 8.0, 16.0], dtype=np.float32), "w"),
    )
    g = helper.make_graph([node], "v5", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 3])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, 2])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("ai.onnx.ml", 5)])



def test_tree_ensemble_v5_is_served_with_onnxruntimes_answers(inferd_server_factory, onnx_reference, tmp_path):
    import onnx
    model = _tree_ensemble_v5()
    onnx.checker.check_model(model)
    d = tmp_path / "models" / "tree5" / "1"
    d.mkdir(parents=True)
    (d / "model.onnx").write_bytes(model.SerializeToString())
    server = inferd_server_factory(tmp_path / "models")
    client = TritonClient("http", server)
    x = np.array([[0.4, -0.3, 0.2], [0.6, np.nan, 0.0], [2.0, 0.0, 1.0], [np.nan, 5, np.nan]], dtype=np.float32)
    ref = onnx_reference.run(d / "model.onnx", {"X": x})
    _, ours = client.infer("tree5", {"X": x}, ["Y"])
    client.close()
    _compare("tree5", "Y", ours["Y"], ref["Y"], 4)
