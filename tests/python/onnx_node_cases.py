"""ONNX's own backend node tests, written out as ``onnx.backend.test`` lays them out
(``<test>/model.onnx``, ``<test>/test_data_set_N/{input,output}_K.pb``), from the test-case
generators shipped in the ``onnx`` wheel (the wheel carries the generators, not the data).

Only tests whose inputs and outputs are all tensors are written: sequences, maps and optionals
are not something a KServe v2 request can carry. ``python onnx_node_cases.py DIR`` writes them.
"""

from __future__ import annotations

import contextlib
import io
import sys
import warnings
from pathlib import Path


def write_cases(root: Path) -> int:
    import onnx.backend.test.case.node as node_cases
    from onnx import numpy_helper

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        cases = node_cases.collect_testcases(None)
    written = 0
    for case in cases:
        model = case.model
        graph = model.graph
        if not all(v.type.HasField("tensor_type") for v in list(graph.input) + list(graph.output)):
            continue
        d = root / case.name
        d.mkdir(parents=True, exist_ok=True)
        (d / "model.onnx").write_bytes(model.SerializeToString())
        for i, (inputs, outputs) in enumerate(case.data_sets):
            s = d / f"test_data_set_{i}"
            s.mkdir(exist_ok=True)
            for j, value in enumerate(inputs):
                proto = value if hasattr(value, "SerializeToString") else numpy_helper.from_array(value, graph.input[j].name)
                (s / f"input_{j}.pb").write_bytes(proto.SerializeToString())
            for j, value in enumerate(outputs):
                proto = value if hasattr(value, "SerializeToString") else numpy_helper.from_array(value, graph.output[j].name)
                (s / f"output_{j}.pb").write_bytes(proto.SerializeToString())
        written += 1
    return written


if __name__ == "__main__":
    print(write_cases(Path(sys.argv[1])))
