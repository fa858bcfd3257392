"""What the LLM reference tests share: the ``llm_generate`` example run on a model (a GGUF file or a Hugging
Face folder), and transformers' greedy ids and logits for some prompts."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

GENERATE = os.environ.get("INFERD_LLM_GENERATE", "")


def generate(model, ids, new, simd="native", **extra):
    """``llm_generate MODEL`` on ``{"prompts": ids, "max_new_tokens": new, **extra}``, its kernels capped at
    ``simd`` (``native``: the CPU's best)."""
    assert GENERATE and Path(GENERATE).is_file(), (
        "set INFERD_LLM_GENERATE to the llm_generate example (scripts/test.sh builds it)"
    )
    env = dict(os.environ)
    env.pop("INFERD_LLM_SIMD", None)
    if simd != "native":
        env["INFERD_LLM_SIMD"] = simd
    r = subprocess.run([GENERATE, str(model)], input=json.dumps({"prompts": ids, "max_new_tokens": new, **extra}),
                       capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def transformers_greedy(model, tok, prompts, new):
    """Token ids of ``prompts``, transformers' greedy continuation of each and its logits after each prompt."""
    import torch

    ids = [tok(p)["input_ids"] for p in prompts]
    outs, logits = [], []
    with torch.no_grad():
        for i in ids:
            g = model.generate(torch.tensor([i]), max_new_tokens=new, do_sample=False)
            outs.append(g[0][len(i):].tolist())
            logits.append(model(torch.tensor([i])).logits[0, -1].numpy())
    return ids, outs, logits


def same_until_eos(ours, theirs, eos, new):
    """transformers stops at the end-of-sequence token; inferd's loop in llm_generate has no stop token."""
    n = len(theirs)
    assert ours[:n] == theirs, (ours, theirs)
    if n < new:
        assert theirs[-1] == eos
