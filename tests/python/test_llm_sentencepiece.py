"""SentencePiece vocabularies in GGUF (``tokenizer.ggml.model = "llama"``, as Llama 2, TinyLlama
and Mistral files carry them), checked against Google's ``sentencepiece`` library itself.

A BPE SentencePiece model with byte fallback is trained here on Python's standard library
sources (deterministic: one thread, no shuffling); its pieces, scores and types are written into
a GGUF with the ``gguf`` library as llama.cpp's converter does. inferd's tokenizer (through the
``llm_generate`` example's tokenizer mode) must give ``sentencepiece``'s ids, BOS first, for
English, code, runs of spaces, digits, and characters the vocabulary lacks (byte fallback);
decoding gives the text back, streamed piece by piece with no broken character.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
from pathlib import Path

import pytest

GENERATE = os.environ.get("INFERD_LLM_GENERATE", "")

TEXTS = [
    "Hello world",
    "def add(a, b):\n    return a + b  # sum",
    "Numbers 12345 and 3.14159 and 2026-12-06",
    "   three leading spaces and  two inside",
    "Ünïcödé àccents, 中文字符 and emoji 🚀",
    "import os\nimport sys\n\nclass Path(object):\n\tpass",
    "tab\tseparated\tvalues\n\n\nnewlines",
    "x",
]


@pytest.fixture(scope="module")
def spm_gguf(tmp_path_factory):
    import sentencepiece as spm
    import gguf

    d = tmp_path_factory.mktemp("spm")
    corpus = d / "corpus.txt"
    sources = sorted(glob.glob(os.path.join(os.path.dirname(os.__file__), "*.py")))[:60]
    corpus.write_text("\n".join(Path(f).read_text(encoding="utf-8", errors="ignore") for f in sources))
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(d / "m"), vocab_size=2000, model_type="bpe", byte_fallback=True,
        character_coverage=0.9995, bos_id=1, eos_id=2, unk_id=0, pad_id=-1, split_digits=True,
        allow_whitespace_only_pieces=True, remove_extra_whitespaces=False, normalization_rule_name="identity",
        num_threads=1, shuffle_input_sentence=False, minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_file=str(d / "m.model"))
    n = sp.get_piece_size()
    pieces = [sp.id_to_piece(i) for i in range(n)]
    scores = [sp.get_score(i) for i in range(n)]
    types = []
    for i in range(n):
        if sp.is_unknown(i):
            types.append(gguf.TokenType.UNKNOWN)
        elif sp.is_control(i):
            types.append(gguf.TokenType.CONTROL)
        elif sp.is_byte(i):
            types.append(gguf.TokenType.BYTE)
        else:
            types.append(gguf.TokenType.NORMAL)
    w = gguf.GGUFWriter(str(d / "spm.gguf"), arch="llama")
    w.add_tokenizer_model("llama")
    w.add_token_list(pieces)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(sp.bos_id())
    w.add_eos_token_id(sp.eos_id())
    w.add_unk_token_id(sp.unk_id())
    w.add_add_bos_token(True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    return sp, d / "spm.gguf"


def tokenize(model: Path, texts: list[str]) -> dict:
    assert GENERATE and Path(GENERATE).is_file(), "set INFERD_LLM_GENERATE (scripts/test.sh builds it)"
    r = subprocess.run([GENERATE, str(model)], input=json.dumps({"texts": texts}), capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_ids_equal_sentencepiece_and_decode_back(spm_gguf):
    sp, model = spm_gguf
    got = tokenize(model, TEXTS)
    for text, ids, decoded, streamed in zip(TEXTS, got["encoded"], got["decoded"], got["streamed"]):
        want = sp.encode(text, add_bos=True)
        assert ids == want, (text, [sp.id_to_piece(i) for i in ids], [sp.id_to_piece(i) for i in want])
        assert decoded == "<s> " + text, "special tokens kept, as transformers decodes them"
        assert "".join(streamed) == text
    # The byte fallback was exercised: the emoji is not a piece.
    assert any(sp.is_byte(i) for i in got["encoded"][4])
