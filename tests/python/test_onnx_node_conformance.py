"""ONNX's own backend node tests through inferd's ONNX backend (tract plus inferd's ONNX-ML
operators): every test either passes, or is refused with a message naming the operator. None
may answer wrongly.

The cases come from the generators in the ``onnx`` wheel (``onnx_node_cases.py``); the
``onnx_node_report`` example of ``inferd-onnx`` (``$INFERD_ONNX_NODE_REPORT``, built by
``scripts/test.sh``) runs them. ``python test_onnx_node_conformance.py REPORT.jsonl`` prints the
README's per-operator table from a report.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from onnx_node_cases import write_cases

# The three composite attention graphs whose fully masked rows reduce to -inf (tract's ReduceMax
# gave the float minimum; inferd-onnx's extremum.rs fixes it) must pass, not merely not be wrong.
FULLY_MASKED_ROWS = {
    "test_attention_23_boolmask_fullymasked_row_nan_robustness_expanded",
    "test_attention_23_fullymasked_qk_matmul_output_mode3_zero_expanded",
    "test_attention_4d_causal_nonpad_negative_offset_structural_empty_expanded",
}


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> list[dict]:
    tool = os.environ.get("INFERD_ONNX_NODE_REPORT")
    if not tool or not Path(tool).is_file():
        pytest.fail(
            "INFERD_ONNX_NODE_REPORT must name the built onnx_node_report example "
            "(cargo build -p inferd-onnx --example onnx_node_report); scripts/test.sh sets it",
            pytrace=False,
        )
    cases = tmp_path_factory.mktemp("onnx-node")
    assert write_cases(cases) > 1000, "the onnx wheel's node test generators made too few cases"
    out = subprocess.run([tool, str(cases)], capture_output=True, text=True, timeout=600, check=True)
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_onnx_node_tests_give_no_wrong_answer(report):
    wrong = {r["test"]: r["detail"] for r in report if r["status"] == "wrong"}
    assert not wrong, f"wrong answers: {wrong}"
    passed = sum(r["status"] == "passed" for r in report)
    assert passed > 900, f"only {passed} of {len(report)} node tests passed"



def test_reduce_max_of_a_fully_masked_row_is_minus_infinity(report):
    status = {r["test"]: r["status"] for r in report if r["test"] in FULLY_MASKED_ROWS}
    assert status == dict.fromkeys(FULLY_MASKED_ROWS, "passed"), status

def test_every_refusal_names_an_operator_of_its_model(report):
    unnamed = [
        (r["test"], r["detail"])
        for r in report
        if r["status"] == "refused" and not any(op.lower() in r["detail"].lower() for op in r["ops"])
    ]
    assert not unnamed, f"refusals that do not name the operator: {unnamed[:10]}"


def per_operator(report: list[dict]) -> str:
    """The README's table: node tests of each single-operator test, then composite graphs."""
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for r in report:
        key = r["ops"][0] if len(r["ops"]) == 1 else "(graphs of several operators)"
        counts[key][r["status"]] += 1
    lines = ["| operator | passed | refused | wrong |", "|---|---:|---:|---:|"]
    for op in sorted(counts, key=lambda k: (k.startswith("("), k.lower())):
        c = counts[op]
        lines.append(f"| {op} | {c['passed']} | {c['refused']} | {c['wrong']} |")
    total = collections.Counter(r["status"] for r in report)
    lines.append(f"| **all {len(report)} tests** | {total['passed']} | {total['refused']} | {total['wrong']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(per_operator([json.loads(line) for line in open(sys.argv[1])]))
