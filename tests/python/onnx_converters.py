"""Models made by the real ONNX converters with their default options, as a user exports them.

Each entry of ``MODELS`` builds one model at test time (scikit-learn through ``skl2onnx``;
XGBoost, LightGBM and CatBoost through ``onnxmltools``; PyTorch through ``torch.onnx.export``;
Keras through ``tf2onnx``)
and says how to make request rows for it. ``test_onnx_converters.py`` serves every one with no
config and holds each output against onnxruntime.

Run as a script to write the repository for a manual look:
``python tests/python/onnx_converters.py /tmp/onnx-repo``.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

N_FEATURES = 8
TRAIN_ROWS = 400


@dataclass
class Exported:
    """A converted model and a maker of request inputs for it."""

    name: str
    onnx: bytes
    feeds: Callable[[np.random.Generator, int], dict[str, np.ndarray]]


def _data(seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(TRAIN_ROWS, N_FEATURES)).astype(np.float32)
    score = x[:, 0] + 0.5 * x[:, 1] - x[:, 2] * x[:, 3]
    y_bin = (score > 0).astype(np.int64)
    y_multi = np.digitize(score, [-0.5, 0.5]).astype(np.int64)
    return x, score.astype(np.float32), y_bin, y_multi


def _float_rows(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    return {"X": rng.normal(size=(n, N_FEATURES)).astype(np.float32)}


def _skl(model, name: str, **options) -> Exported:
    from skl2onnx import to_onnx

    # What a user writes: a float sample for the input type; default options otherwise (the
    # zipmap is turned off only where the test says so, since it cannot be served).
    onx = to_onnx(model, _data()[0][:1], options=options or None)
    return Exported(name, onx.SerializeToString(), _float_rows)


def sklearn_models() -> list[Exported]:
    from sklearn.ensemble import (
        ExtraTreesClassifier,
        ExtraTreesRegressor,
        GradientBoostingClassifier,
        GradientBoostingRegressor,
        RandomForestClassifier,
        RandomForestRegressor,
    )
    from sklearn.linear_model import LinearRegression, LogisticRegression
    from sklearn.neural_network import MLPClassifier, MLPRegressor
    from sklearn.svm import SVC, SVR

    x, score, y_bin, y_multi = _data()
    nz = {"zipmap": False}
    out = []

    def fit(model, y):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return model.fit(x, y)

    out.append(_skl(fit(LinearRegression(), score), "skl_linear_regression"))
    out.append(_skl(fit(LogisticRegression(), y_bin), "skl_logistic_binary", zipmap=False))
    out.append(_skl(fit(LogisticRegression(), y_multi), "skl_logistic_multiclass", zipmap=False))
    out.append(_skl(fit(RandomForestClassifier(n_estimators=20, max_depth=6, random_state=0), y_bin), "skl_random_forest_binary", **nz))
    out.append(_skl(fit(RandomForestClassifier(n_estimators=20, max_depth=6, random_state=0), y_multi), "skl_random_forest_multiclass", **nz))
    out.append(_skl(fit(RandomForestRegressor(n_estimators=20, max_depth=6, random_state=0), score), "skl_random_forest_regressor"))
    out.append(_skl(fit(ExtraTreesClassifier(n_estimators=20, max_depth=6, random_state=0), y_multi), "skl_extra_trees_classifier", **nz))
    out.append(_skl(fit(ExtraTreesRegressor(n_estimators=20, max_depth=6, random_state=0), score), "skl_extra_trees_regressor"))
    out.append(_skl(fit(GradientBoostingClassifier(n_estimators=20, random_state=0), y_bin), "skl_gradient_boosting_binary", **nz))
    out.append(_skl(fit(GradientBoostingClassifier(n_estimators=20, random_state=0), y_multi), "skl_gradient_boosting_multiclass", **nz))
    out.append(_skl(fit(GradientBoostingRegressor(n_estimators=20, random_state=0), score), "skl_gradient_boosting_regressor"))
    out.append(_skl(fit(SVC(), y_multi), "skl_svc_multiclass", **nz))
    out.append(_skl(fit(SVC(probability=True, random_state=0), y_bin), "skl_svc_binary_probability", **nz))
    out.append(_skl(fit(SVR(), score), "skl_svr"))
    out.append(_skl(fit(MLPClassifier(hidden_layer_sizes=(16,), max_iter=300, random_state=0), y_multi), "skl_mlp_classifier", **nz))
    out.append(_skl(fit(MLPRegressor(hidden_layer_sizes=(16,), max_iter=300, random_state=0), score), "skl_mlp_regressor"))
    out.append(sklearn_pipeline())
    return out


def sklearn_pipeline() -> Exported:
    """Imputer, scaler and one-hot encoder in front of a logistic regression, over one float
    input whose last column is a category code, as a user's preprocessing pipeline is."""
    from skl2onnx import to_onnx
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    x, _, y_bin, _ = _data()
    x = x.copy()
    x[:, -1] = np.floor(np.abs(x[:, -1]) * 2) % 4  # a category code 0..3
    x[::7, 0] = np.nan
    numeric = list(range(N_FEATURES - 1))
    pre = ColumnTransformer(
        [
            ("num", Pipeline([("impute", SimpleImputer()), ("scale", StandardScaler())]), numeric),
            ("cat", OneHotEncoder(handle_unknown="ignore"), [N_FEATURES - 1]),
        ]
    )
    model = Pipeline([("pre", pre), ("clf", LogisticRegression())]).fit(x, y_bin)
    onx = to_onnx(model, x[:1], options={id(model): {"zipmap": False}})

    def feeds(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        rows = rng.normal(size=(n, N_FEATURES)).astype(np.float32)
        rows[:, -1] = rng.integers(0, 5, size=n)  # 4 is a category never seen in training
        rows[rng.random(n) < 0.2, 0] = np.nan
        return {"X": rows}

    return Exported("skl_pipeline_impute_scale_onehot", onx.SerializeToString(), feeds)


def boosting_models() -> list[Exported]:
    import lightgbm
    import onnxmltools
    import xgboost
    from onnxmltools.convert.common.data_types import FloatTensorType

    x, score, y_bin, y_multi = _data()
    types = [("X", FloatTensorType([None, N_FEATURES]))]
    out = []

    def add(name, onx, feeds=_float_rows):
        out.append(Exported(name, onx.SerializeToString(), feeds))

    params = {"n_estimators": 20, "max_depth": 4}
    add("xgb_classifier_binary", onnxmltools.convert_xgboost(xgboost.XGBClassifier(**params).fit(x, y_bin), initial_types=types))
    add("xgb_classifier_multiclass", onnxmltools.convert_xgboost(xgboost.XGBClassifier(**params).fit(x, y_multi), initial_types=types))
    add("xgb_regressor", onnxmltools.convert_xgboost(xgboost.XGBRegressor(**params).fit(x, score), initial_types=types))
    lgb = {"n_estimators": 20, "num_leaves": 15, "verbose": -1}
    add("lgbm_classifier_binary", onnxmltools.convert_lightgbm(lightgbm.LGBMClassifier(**lgb).fit(x, y_bin), initial_types=types, zipmap=False))
    add("lgbm_classifier_multiclass", onnxmltools.convert_lightgbm(lightgbm.LGBMClassifier(**lgb).fit(x, y_multi), initial_types=types, zipmap=False))
    add("lgbm_regressor", onnxmltools.convert_lightgbm(lightgbm.LGBMRegressor(**lgb).fit(x, score), initial_types=types))
    import catboost
    for name, model, y in (
        ("catboost_classifier_binary", catboost.CatBoostClassifier(iterations=20, depth=4, verbose=False, allow_writing_files=False), y_bin),
        ("catboost_regressor", catboost.CatBoostRegressor(iterations=20, depth=4, verbose=False, allow_writing_files=False), score),
    ):
        model.fit(x, y)
        # Without a name catboost's exporter fails; it names the input "features".
        add(name, onnxmltools.convert_catboost(model, name=name),
            lambda rng, n: {"features": _float_rows(rng, n)["X"]})
    return out


def torch_models() -> list[Exported]:
    import contextlib
    import io

    import torch
    from torch import nn

    torch.manual_seed(0)
    out = []

    def export(name, module, example, input_names, dynamic, feeds):
        # torch.onnx.export's default exporter (dynamo): the TorchScript one bakes the traced
        # sequence length into attention reshapes, so its "dynamic" transformer runs on
        # onnxruntime only at that length.
        module.eval()
        dims = {axis: torch.export.Dim(label) for axis, label in dynamic.items()}
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module, (example,), input_names=input_names, output_names=["output"],
                dynamic_shapes=({**dims},), dynamo=True,
            )
        out.append(Exported(name, program.model_proto.SerializeToString(), feeds))

    mlp = nn.Sequential(nn.Linear(N_FEATURES, 32), nn.ReLU(), nn.Linear(32, 3))
    export("torch_mlp", mlp, torch.zeros(2, N_FEATURES), ["X"], {0: "batch"}, _float_rows)

    cnn = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 4 * 4, 5)
    )
    export(
        "torch_cnn", cnn, torch.zeros(2, 1, 8, 8), ["image"], {0: "batch"},
        lambda rng, n: {"image": rng.normal(size=(n, 1, 8, 8)).astype(np.float32)},
    )

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            layer = nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=32, batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)

        def forward(self, x):
            return self.encoder(x)

    seq_len = [5]

    def seq_feeds(rng, n):
        # A different sequence length for each call: the sequence dimension is dynamic too.
        seq_len[0] = 3 + (seq_len[0] + 4) % 9
        return {"tokens": rng.normal(size=(n, seq_len[0], 16)).astype(np.float32)}

    export(
        "torch_transformer_encoder", Encoder(), torch.zeros(2, 5, 16), ["tokens"],
        {0: "batch", 1: "seq"}, seq_feeds,
    )
    return out


def keras_models() -> list[Exported]:
    """Keras 3 models through tf2onnx. ``tf2onnx.convert.from_keras`` cannot read Keras 3
    models (it fails looking up a ``keras_tensor``), so users export a ``tf.function`` of the
    model with ``from_function``: that is what these do, with tf2onnx's default opset."""
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf
    import tf2onnx

    tf.keras.utils.set_random_seed(0)
    x, _, _, y_multi = _data()
    out = []

    def export(name, model, spec, feeds):
        fn = tf.function(lambda t: model(t, training=False))
        proto, _ = tf2onnx.convert.from_function(fn, input_signature=spec)
        out.append(Exported(name, proto.SerializeToString(), feeds))

    layers = tf.keras.layers
    mlp = tf.keras.Sequential([
        tf.keras.Input(shape=(N_FEATURES,)),
        layers.Dense(32, activation="relu"),
        layers.BatchNormalization(),
        layers.Dropout(0.2),
        layers.Dense(3, activation="softmax"),
    ])
    mlp.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    mlp.fit(x, y_multi, epochs=2, verbose=0)
    export("keras_mlp_classifier", mlp, (tf.TensorSpec((None, N_FEATURES), tf.float32, name="X"),),
           _float_rows)

    cnn = tf.keras.Sequential([
        tf.keras.Input(shape=(8, 8, 3)),
        layers.Conv2D(4, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(2),
        layers.GlobalAveragePooling2D(),
        layers.Dense(2),
    ])
    export(
        "keras_cnn_nhwc", cnn, (tf.TensorSpec((None, 8, 8, 3), tf.float32, name="image"),),
        lambda rng, n: {"image": rng.normal(size=(n, 8, 8, 3)).astype(np.float32)},
    )
    return out


def all_models() -> list[Exported]:
    return sklearn_models() + boosting_models() + torch_models() + keras_models()


def write_repository(repo: Path, models: list[Exported]) -> None:
    """One folder per model, ``<name>/1/model.onnx``, and no config: what a new user does."""
    for m in models:
        d = repo / m.name / "1"
        d.mkdir(parents=True, exist_ok=True)
        (d / "model.onnx").write_bytes(m.onnx)


if __name__ == "__main__":
    write_repository(Path(sys.argv[1]), all_models())
