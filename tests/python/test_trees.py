"""Tree ensembles served by inferd match the real XGBoost and LightGBM libraries to 1e-6, on
models trained here with NaNs in the data: XGBoost binary:logistic, reg:squarederror and
multi:softprob (JSON and UBJSON files), LightGBM binary, regression and multiclass (text), and
a Triton FIL config (`backend: "fil"` with `model_type`)."""

from __future__ import annotations

import lightgbm
import numpy as np
import pytest
import xgboost

from inferd_testlib import TritonClient

N_FEATURES = 30


def data(seed: int, n: int = 600):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, N_FEATURES)).astype(np.float32)
    x[rng.random(x.shape) < 0.08] = np.nan
    x[rng.random(x.shape) < 0.04] = 0.0  # exact zeros: LightGBM's zero-as-missing rule
    z = np.nan_to_num(x)
    score = z[:, 0] + 0.5 * z[:, 1] - z[:, 2] * z[:, 3]
    return x, score


def write_model(repo, name, filename, save, config_extra=""):
    d = repo / name / "1"
    d.mkdir(parents=True)
    save(str(d / filename))
    (repo / name / "config.pbtxt").write_text(f'name: "{name}"\nmax_batch_size: 1024\n{config_extra}')


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    repo = tmp_path_factory.mktemp("trees") / "models"
    x, score = data(1)
    y_bin = (score > 0).astype(int)
    y_multi = np.digitize(score, [-0.5, 0.5])
    refs = {}

    def xgb(name, params, y, filename, extra=""):
        b = xgboost.train({**params, "max_depth": 6, "eta": 0.3}, xgboost.DMatrix(x, label=y), num_boost_round=40)
        write_model(repo, name, filename, b.save_model, extra)
        refs[name] = lambda q, b=b: b.predict(xgboost.DMatrix(q))

    xgb("xgb_binary", {"objective": "binary:logistic"}, y_bin, "model.json", 'backend: "xgboost"')
    xgb("xgb_reg_ubj", {"objective": "reg:squarederror"}, score, "model.ubj", 'backend: "xgboost"')
    xgb("xgb_multi", {"objective": "multi:softprob", "num_class": 3}, y_multi, "model.json")
    xgb("fil_xgb", {"objective": "binary:logistic"}, y_bin, "xgboost.json",
        'backend: "fil"\nparameters { key: "model_type" value: { string_value: "xgboost_json" } }')

    def lgb(name, params, y):
        b = lightgbm.train({**params, "num_leaves": 31, "verbose": -1}, lightgbm.Dataset(x, label=y), num_boost_round=40)
        write_model(repo, name, "model.txt", b.save_model, 'backend: "lightgbm"')
        refs[name] = lambda q, b=b: b.predict(q)

    lgb("lgb_binary", {"objective": "binary"}, y_bin)
    lgb("lgb_reg", {"objective": "regression"}, score)
    lgb("lgb_multi", {"objective": "multiclass", "num_class": 3}, y_multi)
    # At most 6 deep: the AVX-512 kernel's shape (where the CPU has it), NaN and zero-missing.
    lgb("lgb_binary_d6", {"objective": "binary", "max_depth": 6}, y_bin)
    lgb("lgb_zero_missing_d6", {"objective": "regression", "max_depth": 6, "zero_as_missing": True}, score)
    return repo, refs


@pytest.fixture(scope="module")
def server(inferd_server_factory, models):
    return inferd_server_factory(models[0])


@pytest.mark.parametrize(
    "name",
    ["xgb_binary", "xgb_reg_ubj", "xgb_multi", "fil_xgb", "lgb_binary", "lgb_reg", "lgb_multi", "lgb_binary_d6",
     "lgb_zero_missing_d6"],
)
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_predictions_match_the_reference_library(server, models, name, protocol):
    _, refs = models
    q, _ = data(99, n=257)
    want = np.asarray(refs[name](q), dtype=np.float64).reshape(len(q), -1)
    client = TritonClient(protocol, server)
    try:
        meta = client.model_metadata(name)
        assert meta["inputs"][0]["name"] == "input__0"
        assert [int(d) for d in meta["inputs"][0]["shape"]] == [-1, N_FEATURES]
        _, out = client.infer(name, {"input__0": q}, ["output__0"])
    finally:
        client.close()
    got = out["output__0"].astype(np.float64)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
