"""Llama 3's byte-level BPE (``tokenizer.ggml.pre = "llama-bpe"``), checked against Hugging
Face's ``tokenizers`` library itself.

A tokenizer with Llama 3's pre-tokenizer (its split pattern, isolated, then bytes mapped without
the GPT-2 regex) is trained here on Python's standard library sources; its vocabulary, merges
and token types are written into a GGUF with the ``gguf`` library as llama.cpp's converter does
for Llama 3. inferd's tokenizer (through the ``llm_generate`` example's tokenizer mode) must give
the library's ids, BOS first, for English, contractions in any case, numbers (split in groups of
three digits), code, runs of spaces and newlines, and text outside the training data; decoding
gives the text back, streamed piece by piece with no broken character.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
from pathlib import Path

import pytest

from test_llm_sentencepiece import tokenize

GENERATE = os.environ.get("INFERD_LLM_GENERATE", "")

LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)

TEXTS = [
    "Hello world",
    "I'LL say it's fine, they'Re here and we'VE seen",
    "Numbers 1234567 and 3.14159 and 2026-12-07",
    "def add(a, b):\n    return a + b  # sum",
    "   three leading spaces and  two inside   ",
    "Ünïcödé àccents, 中文字符 and emoji 🚀",
    "tab\tseparated\tvalues\n\n\nnewlines\r\n",
    "x",
]


def train_llama3_bpe(directory, specials, vocab_size, files):
    """A byte-level BPE with Llama 3's pre-tokenizer, trained on the first ``files`` of Python's standard
    library sources (written to ``directory``), with ``specials`` first in its vocabulary."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    corpus = Path(directory) / "corpus.txt"
    sources = sorted(glob.glob(os.path.join(os.path.dirname(os.__file__), "*.py")))[:files]
    corpus.write_text("\n".join(Path(f).read_text(encoding="utf-8", errors="ignore") for f in sources))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train([str(corpus)], trainer)
    return tok


@pytest.fixture(scope="module")
def llama3_gguf(tmp_path_factory):
    import gguf

    d = tmp_path_factory.mktemp("llama3tok")
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]
    tok = train_llama3_bpe(d, specials, vocab_size=3000, files=60)
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    tokens = [None] * len(vocab)
    for piece, i in vocab.items():
        tokens[i] = piece
    assert all(t is not None for t in tokens)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    types = [gguf.TokenType.CONTROL if t in specials else gguf.TokenType.NORMAL for t in tokens]
    w = gguf.GGUFWriter(str(d / "llama3.gguf"), arch="llama")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("llama-bpe")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(vocab["<|begin_of_text|>"])
    w.add_eos_token_id(vocab["<|end_of_text|>"])
    w.add_add_bos_token(True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    return tok, vocab["<|begin_of_text|>"], d / "llama3.gguf"


def test_ids_equal_the_tokenizers_library_and_decode_back(llama3_gguf):
    tok, bos, model = llama3_gguf
    got = tokenize(model, TEXTS)
    for text, ids, decoded, streamed in zip(TEXTS, got["encoded"], got["decoded"], got["streamed"]):
        want = [bos] + tok.encode(text, add_special_tokens=False).ids
        assert ids == want, (text, [tok.id_to_token(i) for i in ids], [tok.id_to_token(i) for i in want])
        assert decoded == "<|begin_of_text|>" + text, "special tokens kept, as transformers decodes them"
        assert "".join(streamed) == text


def test_numbers_are_split_in_groups_of_three_digits(llama3_gguf):
    tok, _, model = llama3_gguf
    ids = tokenize(model, ["1234567"])["encoded"][0][1:]
    pieces = [tok.id_to_token(i) for i in ids]
    # No piece spans more than three digits, whatever the merges learned.
    assert all(len(p) <= 3 for p in pieces), pieces
    assert "".join(pieces) == "1234567"


def test_an_unknown_pre_tokenizer_is_refused_by_name(tmp_path):
    import gguf

    w = gguf.GGUFWriter(str(tmp_path / "odd.gguf"), arch="llama")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("made-up-pre")
    w.add_token_list(["a", "b", "ab"])
    w.add_token_types([gguf.TokenType.NORMAL] * 3)
    w.add_token_merges(["a b"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    r = subprocess.run([GENERATE, str(tmp_path / "odd.gguf")], input=json.dumps({"texts": ["ab"]}),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "made-up-pre" in r.stderr, r.stderr
