"""inferd embedded in Python: the wheel built from crates/inferd-python (scripts/test.sh builds it
with maturin and installs it into the suite's venv; ``INFERD_WHEEL`` names the file).

- Every model of a repository (the examples, an XGBoost and a LightGBM model, a SafeTensors
  sentence encoder) answers in-process exactly as the inferd server answers over HTTP.
- NumPy dtypes of every KServe datatype go in and come back: BOOL, the ints, FP16, FP32, FP64,
  BF16 (ml_dtypes, or uint16 bits named with a ``(array, "BF16")`` pair) and BYTES (object
  arrays of bytes or str, ``S`` arrays); non-contiguous and big-endian arrays too.
- Wrong names, datatypes, shapes, parameters and models raise the exception of their kind with a
  message that names what was wrong, and change nothing; a pickle model is refused at load.
- 64 threads and 64 asyncio tasks at once each get their own answers, and the statistics show
  batches of more than one request (the GIL is released while the engine works).
- ``close()`` (and leaving a ``with`` block) drains requests in flight; later ones are refused.
- Explicit model control; an LLM streams the same greedy text as the server's completions API.
- The wheel installs with pip into a fresh venv and serves from there.
- The FastAPI example answers over HTTP with the XGBoost library's probabilities, embedded and
  pointed at a dedicated inferd through tritonclient.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import lightgbm
import ml_dtypes
import numpy as np
import pytest
import requests
import xgboost

import inferd
from inferd_testlib import REPO_ROOT, TritonClient, copy_models, heavy_model, wait_until

EXAMPLES = REPO_ROOT / "examples" / "python"
sys.path.insert(0, str(EXAMPLES))
import make_fraud_model  # noqa: E402

# (numpy dtype, config type) of every KServe datatype but BYTES and BF16 (tested apart).
FIXED = [
    (np.bool_, "TYPE_BOOL"), (np.uint8, "TYPE_UINT8"), (np.uint16, "TYPE_UINT16"),
    (np.uint32, "TYPE_UINT32"), (np.uint64, "TYPE_UINT64"), (np.int8, "TYPE_INT8"),
    (np.int16, "TYPE_INT16"), (np.int32, "TYPE_INT32"), (np.int64, "TYPE_INT64"),
    (np.float16, "TYPE_FP16"), (np.float32, "TYPE_FP32"), (np.float64, "TYPE_FP64"),
]
TYPES = [t for _, t in FIXED] + ["TYPE_BF16", "TYPE_STRING"]


def identity_config() -> str:
    ins = ", ".join(f'{{ name: "IN_{t[5:]}" data_type: {t} dims: [ 3 ] }}' for t in TYPES)
    outs = ", ".join(f'{{ name: "OUT_{t[5:]}" data_type: {t} dims: [ 3 ] }}' for t in TYPES)
    return f'name: "identity_all"\nbackend: "identity"\nmax_batch_size: 8\ninput [ {ins} ]\noutput [ {outs} ]\n'


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    repo = copy_models(tmp_path_factory.mktemp("embedded") / "models")
    (repo / "identity_all" / "1").mkdir(parents=True)
    (repo / "identity_all" / "config.pbtxt").write_text(identity_config())
    make_fraud_model.train(repo, rounds=30)
    x, y = make_fraud_model.transactions(2000, seed=3)
    lgb = lightgbm.train({"objective": "regression", "verbose": -1}, lightgbm.Dataset(x, label=x[:, 0] * 2 + y),
                         num_boost_round=20)
    (repo / "lgb_reg" / "1").mkdir(parents=True)
    lgb.save_model(str(repo / "lgb_reg" / "1" / "model.txt"))
    (repo / "lgb_reg" / "config.pbtxt").write_text('backend: "lightgbm"\nmax_batch_size: 64\n')
    # A SafeTensors sentence encoder (candle).
    minilm = os.environ.get("INFERD_MINILM_DIR", "")
    assert minilm and Path(minilm, "model.safetensors").is_file(), "set INFERD_MINILM_DIR (scripts/test.sh fetches it)"
    shutil.copytree(minilm, repo / "minilm" / "1")
    (repo / "minilm" / "config.pbtxt").write_text('backend: "candle"\nmax_batch_size: 16\n')
    # Batching copies of simple_mlp: one for threads, one for asyncio tasks, so each test
    # reads its own statistics.
    for name in ("mlp_threads", "mlp_tasks"):
        shutil.copytree(repo / "simple_mlp", repo / name)
        cfg = (repo / name / "config.pbtxt").read_text().replace('name: "simple_mlp"', f'name: "{name}"')
        (repo / name / "config.pbtxt").write_text(
            cfg.replace("version_policy: { all {} }", "") + "dynamic_batching { max_queue_delay_microseconds: 20000 }\n")
    return repo


@pytest.fixture(scope="module")
def engine(repo):
    with inferd.Engine(str(repo), compute_threads=2) as e:
        yield e


@pytest.fixture(scope="module")
def server(inferd_server_factory, repo):
    return inferd_server_factory(repo)


def mlp_rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 64)).astype(np.float32)


CASES = {
    "add_sub": lambda: {"INPUT0": np.arange(8, dtype=np.int64).reshape(2, 4),
                        "INPUT1": np.full((2, 4), 3, dtype=np.int64)},
    "simple_mlp": lambda: {"input": mlp_rows(5, 1)},
    "string_identity": lambda: {"INPUT0": np.array([[b"fraud"], ["caf\u00e9"]], dtype=object)},
    "fraud": lambda: {"input__0": make_fraud_model.transactions(16, seed=5)[0]},
    "lgb_reg": lambda: {"input__0": make_fraud_model.transactions(16, seed=6)[0]},
    "minilm": lambda: {"TEXT": np.array([["Hello world"], [b"inferd serves models"], ["caf\u00e9 \U0001F680"]],
                                        dtype=object)},
}


@pytest.mark.parametrize("model", sorted(CASES))
def test_every_model_answers_as_the_server_does(engine, server, model):
    inputs = CASES[model]()
    meta = engine.model_metadata(model)
    names = [o["name"] for o in meta["outputs"]]
    ours = engine.infer(model, inputs)
    assert sorted(ours) == sorted(names)
    wire = {k: (np.vectorize(lambda s: s.encode() if isinstance(s, str) else s, otypes=[object])(v)
                if v.dtype == object else v) for k, v in inputs.items()}
    _, theirs = TritonClient("http", server).infer(model, wire, names)
    for name in names:
        assert ours[name].dtype == theirs[name].dtype, name
        assert ours[name].shape == theirs[name].shape, name
        if ours[name].dtype.kind == "f":
            np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-5, atol=1e-6)
        else:
            assert (ours[name] == theirs[name]).all(), (name, ours[name], theirs[name])


def test_the_embedded_fraud_model_matches_the_xgboost_library(engine, repo):
    x, _ = make_fraud_model.transactions(64, seed=11)
    booster = xgboost.Booster(model_file=str(repo / "fraud" / "1" / "model.json"))
    want = booster.predict(xgboost.DMatrix(x))
    got = engine.infer("fraud", {"input__0": x})["output__0"].reshape(-1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def identity_inputs(batch: int = 2) -> tuple[dict, dict]:
    rng = np.random.default_rng(0)
    inputs, want = {}, {}
    for dtype, t in FIXED:
        if dtype is np.bool_:
            a = rng.random((batch, 3)) > 0.5
        elif np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            a = rng.integers(info.min, info.max, size=(batch, 3), dtype=dtype, endpoint=True)
            a[0, 0], a[0, 1] = info.min, info.max
        else:
            a = rng.normal(size=(batch, 3)).astype(dtype)
            a[0, 0] = np.finfo(dtype).max
        inputs[f"IN_{t[5:]}"] = a
        want[f"OUT_{t[5:]}"] = a
    bf = rng.normal(size=(batch, 3)).astype(ml_dtypes.bfloat16)
    inputs["IN_BF16"] = bf
    want["OUT_BF16"] = bf
    strings = np.array([[b"a", b"", "\u00e9t\u00e9"], [b"\x00\xff", "x" * 1000, b"z"]][:batch], dtype=object)
    inputs["IN_STRING"] = strings
    want["OUT_STRING"] = np.vectorize(lambda s: s.encode() if isinstance(s, str) else s, otypes=[object])(strings)
    return inputs, want


def test_numpy_dtypes_of_every_kserve_datatype_come_back_as_they_went(engine):
    inputs, want = identity_inputs()
    out = engine.infer("identity_all", inputs)
    assert sorted(out) == sorted(want)
    for name, w in want.items():
        got = out[name]
        assert got.dtype == w.dtype, (name, got.dtype, w.dtype)
        assert got.shape == w.shape, name
        if w.dtype == object:
            assert got.tolist() == w.tolist(), name
        else:
            assert got.tobytes() == w.tobytes(), name


def test_bf16_bits_as_uint16_and_numpy_bytes_arrays_are_accepted(engine):
    inputs, _ = identity_inputs(batch=1)
    bits = np.array([[0x3F80, 0xC000, 0x7F80]], dtype=np.uint16)  # 1.0, -2.0, +inf
    inputs["IN_BF16"] = (bits, "BF16")
    inputs["IN_STRING"] = np.array([[b"ab", b"c", b""]], dtype="S2")
    out = engine.infer("identity_all", inputs)
    assert out["OUT_BF16"].dtype == ml_dtypes.bfloat16
    assert out["OUT_BF16"].view(np.uint16).tolist() == bits.tolist()
    assert out["OUT_BF16"].astype(np.float32).tolist() == [[1.0, -2.0, np.inf]]
    assert out["OUT_STRING"].tolist() == [[b"ab", b"c", b""]]


def test_non_contiguous_and_big_endian_arrays_are_read_by_value(engine):
    base = np.arange(32, dtype=np.int64).reshape(4, 8)
    strided = base[::2, ::2]
    big = np.full((2, 4), 5, dtype=">i8")
    out = engine.infer("add_sub", {"INPUT0": strided, "INPUT1": big})
    assert out["OUTPUT0"].tolist() == (strided + 5).tolist()
    assert out["OUTPUT1"].tolist() == (strided - 5).tolist()
    # A list is an array too.
    out = engine.infer("add_sub", {"INPUT0": [[1, 2, 3, 4]], "INPUT1": [[1, 1, 1, 1]]})
    assert out["OUTPUT0"].tolist() == [[2, 3, 4, 5]]


def test_outputs_and_parameters_are_honoured(engine):
    inputs = CASES["add_sub"]()
    out = engine.infer("add_sub", inputs, outputs=["OUTPUT1"], parameters={"priority": 0, "flag": True,
                                                                          "ratio": 0.5, "who": "me"})
    assert list(out) == ["OUTPUT1"]
    v1 = engine.infer("simple_mlp", {"input": mlp_rows(1, 2)}, version=1)["output"]
    v2 = engine.infer("simple_mlp", {"input": mlp_rows(1, 2)}, version="2")["output"]
    assert not np.allclose(v1, v2), "versions 1 and 2 are different models"


@pytest.mark.parametrize(
    "call, kind, words",
    [
        (lambda e: e.infer("add_sub", {"INPUT0": np.zeros((1, 4), np.int32), "INPUT1": np.zeros((1, 4), np.int64)}),
         inferd.InvalidInput, ["INPUT0", "INT32", "INT64"]),
        (lambda e: e.infer("add_sub", {"INPUT0": np.zeros((1, 5), np.int64), "INPUT1": np.zeros((1, 5), np.int64)}),
         inferd.InvalidInput, ["INPUT0", "shape", "[1, 5]"]),
        (lambda e: e.infer("add_sub", {"INPUT0": np.zeros((1, 4), np.int64), "WRONG": np.zeros((1, 4), np.int64)}),
         inferd.InvalidInput, ["WRONG"]),
        (lambda e: e.infer("add_sub", {"INPUT0": np.zeros((1, 4), np.int64)}),
         inferd.InvalidInput, ["INPUT1"]),
        (lambda e: e.infer("add_sub", CASES["add_sub"](), outputs=["NOPE"]),
         inferd.InvalidInput, ["NOPE"]),
        (lambda e: e.infer("add_sub", CASES["add_sub"](), parameters={"priority": [1]}),
         inferd.InvalidInput, ["priority", "list"]),
        (lambda e: e.infer("add_sub", {"INPUT0": np.zeros((1, 4), np.complex64), "INPUT1": np.zeros((1, 4), np.int64)}),
         inferd.InvalidInput, ["INPUT0", "complex64"]),
        (lambda e: e.infer("string_identity", {"INPUT0": np.array([[1]], dtype=object)}),
         inferd.InvalidInput, ["INPUT0", "element 0", "int", "bytes or str"]),
        (lambda e: e.infer("identity_all", {"IN_BF16": (np.zeros((1, 3), np.float32), "BF16")}),
         inferd.InvalidInput, ["IN_BF16", "BF16", "FP32"]),
        (lambda e: e.infer("no_such_model", {}), inferd.ModelNotFound, ["no_such_model"]),
        (lambda e: e.infer("simple_mlp", {"input": mlp_rows(1, 1)}, version=7), inferd.ModelNotFound, ["7"]),
        (lambda e: e.infer("simple_mlp", {"input": mlp_rows(1, 1)}, version="x"), inferd.InvalidInput, ["version"]),
        (lambda e: e.load("add_sub"), inferd.FailedPrecondition, ["explicit"]),
    ],
)
def test_client_mistakes_raise_their_kind_naming_what_was_wrong_and_change_nothing(engine, call, kind, words):
    before = engine.infer("add_sub", CASES["add_sub"]())
    with pytest.raises(kind) as e:
        call(engine)
    for w in words:
        assert w in str(e.value), (w, str(e.value))
    assert isinstance(e.value, inferd.InferdError)
    after = engine.infer("add_sub", CASES["add_sub"]())
    assert all((before[k] == after[k]).all() for k in before)
    assert engine.is_ready() and engine.is_model_ready("add_sub")


def test_exceptions_are_also_the_builtin_kinds_callers_catch():
    assert issubclass(inferd.InvalidInput, ValueError)
    assert issubclass(inferd.ModelNotFound, LookupError)
    assert issubclass(inferd.DeadlineExceeded, TimeoutError)
    assert issubclass(inferd.Overloaded, inferd.Unavailable)


def test_unknown_or_bad_options_are_refused_with_the_known_ones(repo):
    with pytest.raises(TypeError, match="unknown option 'compute_thread'.*compute_threads"):
        inferd.Engine(str(repo), compute_thread=2)
    with pytest.raises(ValueError, match="option 'max_queue_size': must be positive"):
        inferd.Engine(str(repo), max_queue_size=0)
    with pytest.raises(ValueError, match="option 'model_control_mode'.*expected none, poll or explicit"):
        inferd.Engine(str(repo), model_control_mode="sometimes")
    with pytest.raises(ValueError, match="load_model.*only valid with model_control_mode='explicit'"):
        inferd.Engine(str(repo), load_model=["add_sub"])
    with pytest.raises(ValueError, match="is not a folder"):
        inferd.Engine(str(repo / "nowhere"))


def test_a_pickle_model_is_refused_and_the_others_serve(tmp_path):
    marker = Path("/tmp/inferd_hostile_marker")
    marker.unlink(missing_ok=True)
    repo = copy_models(tmp_path / "models", ["add_sub"])
    shutil.copytree(REPO_ROOT / "tests" / "hostile" / "repo" / "pickle_payload", repo / "pickle_payload")
    with inferd.Engine(str(repo), strict_readiness=False) as e:
        row = next(r for r in e.models() if r["name"] == "pickle_payload")
        assert row["state"] == "UNAVAILABLE" and "[pickle]" in row["reason"], row
        with pytest.raises(inferd.ModelNotFound, match=r"pickle_payload.*UNAVAILABLE.*\[pickle\]"):
            e.infer("pickle_payload", {"x": np.zeros(1, np.float32)})
        assert e.infer("add_sub", CASES["add_sub"]())["OUTPUT0"].tolist() == [[3, 4, 5, 6], [7, 8, 9, 10]]
    assert not marker.exists(), "the pickle payload ran"


def batches_over_one(engine, model: str) -> int:
    stats = engine.statistics(model)["model_stats"][0]
    return sum(b["compute_infer"]["count"] for b in stats["batch_stats"] if b["batch_size"] > 1)


def test_64_threads_at_once_get_their_own_answers_and_batch(engine):
    rows = mlp_rows(64, 9)
    alone = [engine.infer("simple_mlp", {"input": rows[i:i + 1]})["output"] for i in range(64)]
    barrier = threading.Barrier(64)
    got: dict[int, np.ndarray] = {}

    def one(i: int) -> None:
        barrier.wait()
        got[i] = engine.infer("mlp_threads", {"input": rows[i:i + 1]})["output"]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(got) == list(range(64))
    for i in range(64):
        np.testing.assert_allclose(got[i], alone[i], rtol=1e-5, atol=1e-6, err_msg=f"thread {i}")
    assert batches_over_one(engine, "mlp_threads") > 0, engine.statistics("mlp_threads")


def test_64_asyncio_tasks_at_once_get_their_own_answers_and_batch(engine):
    rows = mlp_rows(64, 10)
    alone = [engine.infer("simple_mlp", {"input": rows[i:i + 1]})["output"] for i in range(64)]

    async def all_at_once():
        return await asyncio.gather(
            *[engine.infer_async("mlp_tasks", {"input": rows[i:i + 1]}) for i in range(64)])

    got = asyncio.run(all_at_once())
    for i in range(64):
        np.testing.assert_allclose(got[i]["output"], alone[i], rtol=1e-5, atol=1e-6, err_msg=f"task {i}")
    assert batches_over_one(engine, "mlp_tasks") > 0, engine.statistics("mlp_tasks")
    stats = engine.statistics("mlp_tasks")["model_stats"][0]
    assert stats["inference_count"] == 64 and stats["execution_count"] < 64, stats


def test_asyncio_errors_raise_in_the_awaiting_task(engine):
    async def bad():
        return await engine.infer_async("add_sub", {"INPUT0": np.zeros((1, 3), np.int64),
                                                    "INPUT1": np.zeros((1, 3), np.int64)})

    with pytest.raises(inferd.InvalidInput, match="INPUT0"):
        asyncio.run(bad())
    with pytest.raises(RuntimeError, match="no running event loop"):
        engine.infer_async("add_sub", CASES["add_sub"]())


def test_close_drains_requests_in_flight_and_refuses_new_ones(tmp_path):
    repo = tmp_path / "models"
    heavy_model(repo, 1024, 320)
    x = np.ones((1, 1024), np.float32)
    e = inferd.Engine(str(repo))
    t0 = time.perf_counter()
    e.infer("heavy", {"input": x})
    one = time.perf_counter() - t0
    start = threading.Barrier(7)
    answered, errors = [], []

    def call():
        start.wait()
        try:
            e.infer("heavy", {"input": x})
            answered.append(time.perf_counter())
        except Exception as err:  # noqa: BLE001 - recorded and asserted below
            errors.append(err)

    threads = [threading.Thread(target=call) for _ in range(6)]
    for t in threads:
        t.start()
    start.wait()
    time.sleep(min(one, 0.02))  # all six are queued; the model runs them one at a time
    e.close()
    closed = time.perf_counter()
    for t in threads:
        t.join(60)
    assert not errors and len(answered) == 6, (errors, len(answered), one)
    assert max(answered) <= closed, "close() returned before the requests in flight were answered"
    with pytest.raises(inferd.Unavailable, match="shutting down"):
        e.infer("heavy", {"input": x})
    assert not e.is_live() and not e.is_ready()
    e.close()  # idempotent


def test_explicit_model_control_loads_and_unloads(tmp_path):
    repo = copy_models(tmp_path / "models", ["add_sub", "simple_mlp"])
    with inferd.Engine(str(repo), model_control_mode="explicit", load_model=["add_sub"]) as e:
        assert e.is_model_ready("add_sub")
        with pytest.raises(inferd.ModelNotFound, match="simple_mlp"):
            e.is_model_ready("simple_mlp")  # in the repository, never loaded: unknown, as on the server
        with pytest.raises(inferd.ModelNotFound, match="simple_mlp"):
            e.infer("simple_mlp", {"input": mlp_rows(1, 1)})
        e.load("simple_mlp")
        assert e.infer("simple_mlp", {"input": mlp_rows(1, 1)})["output"].shape == (1, 10)
        assert e.model_config("simple_mlp")["max_batch_size"] == 64
        e.unload("add_sub")
        wait_until(lambda: not e.is_model_ready("add_sub"), timeout=30, what="add_sub unloaded")
        with pytest.raises(inferd.ModelNotFound, match="no_such"):
            e.load("no_such")


def test_an_llm_streams_the_servers_greedy_text(inferd_server_factory, tmp_path):
    gguf = os.environ.get("INFERD_SMOLLM2_GGUF", "")
    assert gguf and Path(gguf).is_file(), "set INFERD_SMOLLM2_GGUF (scripts/test.sh fetches it)"
    repo = tmp_path / "models"
    (repo / "smollm2" / "1").mkdir(parents=True)
    shutil.copy(gguf, repo / "smollm2" / "1" / "model.gguf")
    prompt = "The three primary colours are"
    server = inferd_server_factory(repo)
    r = requests.post(f"{server.http_base}/v1/completions", json={
        "model": "smollm2", "prompt": prompt, "max_tokens": 24, "temperature": 0}, timeout=120)
    assert r.status_code == 200, r.text
    want = r.json()["choices"][0]["text"]
    with inferd.Engine(str(repo)) as e:
        g = e.generate("smollm2", prompt, max_tokens=24, temperature=0.0)
        pieces = list(g)
        assert len(pieces) > 1, pieces
        assert "".join(pieces) == want
        assert g.finish_reason in ("length", "stop") and g.completion_tokens == r.json()["usage"]["completion_tokens"]
        chat = e.generate("smollm2", [{"role": "user", "content": "Say hi."}], max_tokens=8, temperature=0.0)
        assert chat.text() and chat.finish_reason
        with pytest.raises(inferd.InvalidInput, match="message 0: missing 'content'"):
            e.generate("smollm2", [{"role": "user"}])


def test_a_tensor_model_does_not_generate(engine):
    with pytest.raises(inferd.InvalidInput, match="does not generate text"):
        engine.generate("simple_mlp", "hello")


def test_the_wheel_installs_with_pip_into_a_fresh_venv_and_serves(tmp_path):
    wheel = os.environ.get("INFERD_WHEEL", "")
    assert wheel and Path(wheel).is_file(), "set INFERD_WHEEL to the built wheel (scripts/test.sh does)"
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", wheel], capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stderr
    script = (
        "import numpy as np, inferd\n"
        f"with inferd.Engine({str(REPO_ROOT / 'examples' / 'models')!r}) as e:\n"
        "    out = e.infer('add_sub', {'INPUT0': np.ones((1, 4), np.int64), 'INPUT1': np.ones((1, 4), np.int64)})\n"
        "    print(inferd.__version__, out['OUTPUT0'].tolist())\n"
    )
    run = subprocess.run([str(venv / "bin" / "python"), "-c", script], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == [inferd.__version__, "[[2,", "2,", "2,", "2]]"], run.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def uvicorn(env: dict, port: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--app-dir", str(EXAMPLES), "fastapi_fraud:app",
         "--host", "127.0.0.1", "--port", str(port)],
        env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@pytest.mark.parametrize("placement", ["embedded", "dedicated"])
def test_the_fastapi_fraud_example_answers_over_http(inferd_server_factory, tmp_path, placement):
    repo = make_fraud_model.train(tmp_path / "models", rounds=40)
    env = {"FRAUD_MODELS": str(repo)}
    if placement == "dedicated":
        env["INFERD_URL"] = inferd_server_factory(repo).http_url
    port = free_port()
    app = uvicorn(env, port)
    try:
        wait_until(lambda: app.poll() is not None or requests.get(f"http://127.0.0.1:{port}/docs", timeout=1).ok,
                   timeout=60, what="uvicorn to listen")
        assert app.poll() is None, app.stdout.read().decode()
        x, _ = make_fraud_model.transactions(20, seed=21)
        booster = xgboost.Booster(model_file=str(repo / "fraud" / "1" / "model.json"))
        want = booster.predict(xgboost.DMatrix(x))
        for row, p in zip(x, want):
            r = requests.post(f"http://127.0.0.1:{port}/score", json={"features": row.tolist()}, timeout=10)
            assert r.status_code == 200, r.text
            assert abs(r.json()["fraud_probability"] - float(p)) < 1e-6
        short = requests.post(f"http://127.0.0.1:{port}/score", json={"features": [1.0] * 29}, timeout=10)
        assert short.status_code == 422, short.text
    finally:
        app.terminate()
        out, _ = app.communicate(timeout=30)
    # uvicorn re-raises the SIGTERM it handled once the app has shut down (closing the engine).
    assert app.returncode in (0, -15) and "Application shutdown complete" in out.decode(), out.decode()[-3000:]


def test_a_triton_python_model_runs_in_a_worker_of_the_embedded_engine(tmp_path):
    from test_python_backend import ADD_SUB, ADD_SUB_CONFIG

    repo = tmp_path / "models"
    (repo / "add_sub_py" / "1").mkdir(parents=True)
    (repo / "add_sub_py" / "1" / "model.py").write_text(ADD_SUB)
    (repo / "add_sub_py" / "config.pbtxt").write_text(ADD_SUB_CONFIG.format(name="add_sub_py", mbs=8, extra=""))
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    with inferd.Engine(str(repo)) as e:
        out = e.infer("add_sub_py", {"INPUT0": a, "INPUT1": np.ones_like(a)})
        assert out["OUTPUT0"].tolist() == (a + 1).tolist() and out["OUTPUT1"].tolist() == (a - 1).tolist()
        with pytest.raises(inferd.InvalidInput, match="INPUT0 holds -555"):
            e.infer("add_sub_py", {"INPUT0": np.full((1, 4), -555, np.float32), "INPUT1": np.ones((1, 4), np.float32)})
