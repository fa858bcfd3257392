"""inferd's runner for a TorchScript model (``platform: "pytorch_libtorch"``, ``model.pt``), run
as the model of a python-backend worker. The archive is loaded with ``torch.jit.load`` (never
``torch.load``: TorchScript's own loader resolves the archive's classes from its compiled code,
it does not import Python), on CPU, in eval mode. Inputs go to ``forward`` positionally: in the
order of their ``__N`` suffixes when every input is named ``NAME__N`` (Triton's convention),
else in the config's order; outputs are taken from what ``forward`` returns (a tensor, or a
tuple or list of tensors) the same way. With dynamic batching the batch's requests run as one
call, concatenated along the first dimension and split back by rows.
"""

import json
import re

import numpy as np
import torch
import triton_python_backend_utils as pb_utils


def ordered(specs):
    """Names in forward's order: by their __N suffix when all have one, else as configured."""
    names = [s["name"] for s in specs]
    idx = [re.fullmatch(r".*__(\d+)", n) for n in names]
    if all(idx):
        return [n for _, n in sorted(zip([int(m.group(1)) for m in idx], names))]
    return names


def param(cfg, key, default):
    v = cfg.get("parameters", {}).get(key)
    if isinstance(v, dict):
        v = v.get("string_value")
    return default if v in (None, "") else v


class TritonPythonModel:
    def initialize(self, args):
        cfg = json.loads(args["model_config"])
        torch.set_num_threads(int(param(cfg, "INTRA_OP_THREAD_COUNT", "1")))
        self.module = torch.jit.load(args["inferd_model_file"], map_location="cpu")
        self.module.eval()
        self.inputs = ordered(cfg.get("input", []))
        self.outputs = ordered(cfg.get("output", []))
        self.batching = int(cfg.get("max_batch_size", 0)) > 0

    def run(self, arrays):
        with torch.inference_mode():
            got = self.module(*[torch.from_numpy(np.ascontiguousarray(a)) for a in arrays])
        got = list(got) if isinstance(got, (tuple, list)) else [got]
        if len(got) < len(self.outputs):
            raise pb_utils.TritonModelException(
                f"forward returned {len(got)} outputs; the config names {len(self.outputs)}")
        return [t.detach().cpu().numpy() for t in got[: len(self.outputs)]]

    def arrays(self, request):
        out = []
        for name in self.inputs:
            t = pb_utils.get_input_tensor_by_name(request, name)
            if t is None:
                raise pb_utils.TritonModelException(f"input '{name}' is missing")
            a = t.as_numpy()
            if a.dtype == object:
                raise pb_utils.TritonModelException(f"input '{name}': TorchScript models take no BYTES tensors")
            out.append(a)
        return out

    def respond(self, results):
        return pb_utils.InferenceResponse([pb_utils.Tensor(n, r) for n, r in zip(self.outputs, results)])

    def execute(self, requests):
        if self.batching and len(requests) > 1:
            per = [self.arrays(r) for r in requests]
            rows = [p[0].shape[0] for p in per]
            merged = self.run([np.concatenate([p[i] for p in per]) for i in range(len(self.inputs))])
            out, at = [], 0
            for n in rows:
                out.append(self.respond([m[at:at + n] for m in merged]))
                at += n
            return out
        return [self.respond(self.run(self.arrays(r))) for r in requests]
