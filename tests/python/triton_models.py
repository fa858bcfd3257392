"""Models with the names, datatypes and shapes Triton's example clients expect (the clients in
``src/python/examples/`` of triton-inference-server/client), built as ONNX here.

What each computes is taken from Triton's example repository (its graphs, read for facts):

- ``simple``: INT32 INPUT0/INPUT1 [16] -> OUTPUT0 = sum, OUTPUT1 = difference (batching, 8);
- ``simple_int8``: the same in INT8; ``simple_string``: the same on decimal strings;
- ``simple_identity``: BYTES INPUT0 [-1] -> OUTPUT0, unchanged;
- ``simple_sequence``: INPUT INT32 [1] with control inputs START and READY:
  OUTPUT = READY * (INPUT + START) (no state);
- ``simple_dyna_sequence``: also END and CORRID (UINT64):
  OUTPUT = READY * ((INPUT + START) + END * CORRID);
- ``repeat_int32``: decoupled (Triton's ``repeat`` backend, built into inferd): one response
  per element of IN, after DELAY[i] ms each;
- ``simple_string_dyna_sequence``: an accumulator with a string correlation id: START sets it
  to INPUT, later requests add INPUT, END adds the id read as a number. Triton builds it as a
  C++ backend; here the accumulator is implicit state (``sequence_batching.state``) the server
  keeps, which is how a stateful ONNX model carries state.

``make_repo(dest)`` writes them all and returns ``dest``.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

OPSET = 13
IR_VERSION = 8


def _model(nodes, name, inputs, outputs) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs=inputs, outputs=outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def _t(name: str, dtype: int, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def _add_sub(name: str, dtype: int, via: int | None) -> onnx.ModelProto:
    shape = ["batch", 16]
    nodes = []
    a, b = "INPUT0", "INPUT1"
    if via is not None:
        nodes += [
            helper.make_node("Cast", ["INPUT0"], ["a"], to=via),
            helper.make_node("Cast", ["INPUT1"], ["b"], to=via),
        ]
        a, b = "a", "b"
    s, d = ("OUTPUT0", "OUTPUT1") if via is None else ("s", "d")
    nodes += [helper.make_node("Add", [a, b], [s]), helper.make_node("Sub", [a, b], [d])]
    if via is not None:
        nodes += [
            helper.make_node("Cast", ["s"], ["OUTPUT0"], to=dtype),
            helper.make_node("Cast", ["d"], ["OUTPUT1"], to=dtype),
        ]
    return _model(
        nodes,
        name,
        [_t("INPUT0", dtype, shape), _t("INPUT1", dtype, shape)],
        [_t("OUTPUT0", dtype, shape), _t("OUTPUT1", dtype, shape)],
    )


def _add_sub_config(name: str, type_name: str) -> str:
    io = "\n".join(
        f'{kind} {{ name: "{kind.upper()}{i}" data_type: {type_name} dims: [ 16 ] }}'
        for kind in ("input", "output")
        for i in (0, 1)
    )
    return f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 8\n{io}\n'


def _identity() -> onnx.ModelProto:
    shape = ["batch", "n"]
    return _model(
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])],
        "simple_identity",
        [_t("INPUT0", TensorProto.STRING, shape)],
        [_t("OUTPUT0", TensorProto.STRING, shape)],
    )


IDENTITY_CONFIG = """name: "simple_identity"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_STRING dims: [ -1 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_STRING dims: [ -1 ] } ]
"""


def _control(name: str, kind: str) -> str:
    return (
        f'{{ name: "{name}" control [ {{ kind: CONTROL_SEQUENCE_{kind} '
        "int32_false_true: [ 0, 1 ] } ] }"
    )


def _sequence() -> onnx.ModelProto:
    b1 = ["batch", 1]
    return _model(
        [
            helper.make_node("Add", ["INPUT", "START"], ["sum"]),
            helper.make_node("Mul", ["READY", "sum"], ["OUTPUT"]),
        ],
        "simple_sequence",
        [_t(n, TensorProto.INT32, b1) for n in ("INPUT", "START", "READY")],
        [_t("OUTPUT", TensorProto.INT32, b1)],
    )


SEQUENCE_CONFIG = f"""name: "simple_sequence"
platform: "onnxruntime_onnx"
max_batch_size: 8
sequence_batching {{
  max_sequence_idle_microseconds: 5000000
  control_input [ {_control("START", "START")}, {_control("READY", "READY")} ]
}}
input [ {{ name: "INPUT" data_type: TYPE_INT32 dims: [ 1 ] }} ]
output [ {{ name: "OUTPUT" data_type: TYPE_INT32 dims: [ 1 ] }} ]
instance_group [ {{ kind: KIND_CPU }} ]
"""


def _dyna_sequence() -> onnx.ModelProto:
    b1 = ["batch", 1]
    return _model(
        [
            helper.make_node("Cast", ["CORRID"], ["corrid"], to=TensorProto.INT32),
            helper.make_node("Mul", ["END", "corrid"], ["end_id"]),
            helper.make_node("Add", ["INPUT", "START"], ["sum"]),
            helper.make_node("Add", ["sum", "end_id"], ["total"]),
            helper.make_node("Mul", ["READY", "total"], ["OUTPUT"]),
        ],
        "simple_dyna_sequence",
        [_t(n, TensorProto.INT32, b1) for n in ("INPUT", "START", "END", "READY")]
        + [_t("CORRID", TensorProto.UINT64, b1)],
        [_t("OUTPUT", TensorProto.INT32, b1)],
    )


DYNA_CONFIG = f"""name: "simple_dyna_sequence"
platform: "onnxruntime_onnx"
max_batch_size: 8
sequence_batching {{
  max_sequence_idle_microseconds: 10000000
  oldest {{ max_candidate_sequences: 1024 max_queue_delay_microseconds: 10000 }}
  control_input [
    {_control("START", "START")},
    {_control("END", "END")},
    {_control("READY", "READY")},
    {{ name: "CORRID" control [ {{ kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 }} ] }}
  ]
}}
input [ {{ name: "INPUT" data_type: TYPE_INT32 dims: [ 1 ] }} ]
output [ {{ name: "OUTPUT" data_type: TYPE_INT32 dims: [ 1 ] }} ]
instance_group [ {{ count: 2 kind: KIND_CPU }} ]
"""


def _accumulator(name: str, corrid_type: int) -> onnx.ModelProto:
    """acc = INPUT + (1 - START) * ACC_IN + END * int(CORRID); OUTPUT = ACC_OUT = acc."""
    b1 = ["batch", 1]
    one = helper.make_tensor("one", TensorProto.INT32, [], [1])
    nodes = [
        helper.make_node("Constant", [], ["one_c"], value=one),
        helper.make_node("Sub", ["one_c", "START"], ["not_start"]),
        helper.make_node("Mul", ["not_start", "ACC_IN"], ["kept"]),
        helper.make_node("Add", ["kept", "INPUT"], ["acc0"]),
        helper.make_node("Cast", ["CORRID"], ["corrid"], to=TensorProto.INT32),
        helper.make_node("Mul", ["END", "corrid"], ["end_id"]),
        helper.make_node("Add", ["acc0", "end_id"], ["OUTPUT"]),
        helper.make_node("Identity", ["OUTPUT"], ["ACC_OUT"]),
    ]
    return _model(
        nodes,
        name,
        [_t(n, TensorProto.INT32, b1) for n in ("INPUT", "START", "END", "ACC_IN")]
        + [_t("CORRID", corrid_type, b1)],
        [_t("OUTPUT", TensorProto.INT32, b1), _t("ACC_OUT", TensorProto.INT32, b1)],
    )


def _accumulator_config(name: str, corrid: str, extra: str = "") -> str:
    return f"""name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: 8
sequence_batching {{
  max_sequence_idle_microseconds: 10000000
  {extra}
  control_input [
    {_control("START", "START")},
    {_control("END", "END")},
    {{ name: "CORRID" control [ {{ kind: CONTROL_SEQUENCE_CORRID data_type: {corrid} }} ] }}
  ]
  state [ {{
    input_name: "ACC_IN" output_name: "ACC_OUT" data_type: TYPE_INT32 dims: [ 1 ]
    initial_state {{ data_type: TYPE_INT32 dims: [ 1 ] zero_data: true name: "zero" }}
  }} ]
}}
input [ {{ name: "INPUT" data_type: TYPE_INT32 dims: [ 1 ] }} ]
output [ {{ name: "OUTPUT" data_type: TYPE_INT32 dims: [ 1 ] }} ]
"""


REPEAT_CONFIG = """name: "repeat_int32"
backend: "repeat"
max_batch_size: 0
model_transaction_policy { decoupled: True }
input [
  { name: "IN" data_type: TYPE_INT32 dims: [ -1 ] },
  { name: "DELAY" data_type: TYPE_UINT32 dims: [ -1 ] },
  { name: "WAIT" data_type: TYPE_UINT32 dims: [ 1 ] }
]
output [
  { name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] },
  { name: "IDX" data_type: TYPE_UINT32 dims: [ 1 ] }
]
"""


def _write(dest: Path, name: str, config: str, model: onnx.ModelProto) -> None:
    (dest / name / "1").mkdir(parents=True, exist_ok=True)
    (dest / name / "config.pbtxt").write_text(config)
    onnx.save(model, str(dest / name / "1" / "model.onnx"))


def make_repo(dest: Path, accumulator_limit: int | None = None) -> Path:
    """Writes the example clients' models under ``dest``; ``accumulator_limit`` also adds
    ``accumulator``, an INT64-id accumulator whose live sequences are bounded (oldest strategy's
    max_candidate_sequences) and whose idle timeout is short (300 ms)."""
    _write(dest, "simple", _add_sub_config("simple", "TYPE_INT32"), _add_sub("simple", TensorProto.INT32, None))
    _write(
        dest,
        "simple_int8",
        _add_sub_config("simple_int8", "TYPE_INT8"),
        _add_sub("simple_int8", TensorProto.INT8, TensorProto.INT32),
    )
    _write(
        dest,
        "simple_string",
        _add_sub_config("simple_string", "TYPE_STRING"),
        _add_sub("simple_string", TensorProto.STRING, TensorProto.INT32),
    )
    _write(dest, "simple_identity", IDENTITY_CONFIG, _identity())
    _write(dest, "simple_sequence", SEQUENCE_CONFIG, _sequence())
    _write(dest, "simple_dyna_sequence", DYNA_CONFIG, _dyna_sequence())
    _write(
        dest,
        "simple_string_dyna_sequence",
        _accumulator_config("simple_string_dyna_sequence", "TYPE_STRING"),
        _accumulator("simple_string_dyna_sequence", TensorProto.STRING),
    )
    # Decoupled: Triton's repeat backend (built into inferd); its version folder holds no file.
    (dest / "repeat_int32" / "1").mkdir(parents=True, exist_ok=True)
    (dest / "repeat_int32" / "config.pbtxt").write_text(REPEAT_CONFIG)
    if accumulator_limit is not None:
        config = _accumulator_config("accumulator", "TYPE_UINT64", f"oldest {{ max_candidate_sequences: {accumulator_limit} }}")
        config = config.replace("max_sequence_idle_microseconds: 10000000", "max_sequence_idle_microseconds: 300000")
        _write(dest, "accumulator", config, _accumulator("accumulator", TensorProto.UINT64))
    return dest


def _step(model: str, inputs: dict[str, str], outputs: dict[str, str]) -> str:
    ins = " ".join(f'input_map {{ key: "{k}" value: "{v}" }}' for k, v in inputs.items())
    outs = " ".join(f'output_map {{ key: "{k}" value: "{v}" }}' for k, v in outputs.items())
    return f'{{ model_name: "{model}" model_version: -1 {ins} {outs} }}'


def _ensemble(name: str, steps: list[str], outputs: list[str], in_type: str = "TYPE_INT32") -> str:
    ins = "\n".join(f'input {{ name: "{n}" data_type: {in_type} dims: [ 16 ] }}' for n in ("IN0", "IN1"))
    outs = "\n".join(f'output {{ name: "{n}" data_type: TYPE_INT32 dims: [ 16 ] }}' for n in outputs)
    return (
        f'name: "{name}"\nplatform: "ensemble"\nmax_batch_size: 8\n{ins}\n{outs}\n'
        f"ensemble_scheduling {{ step [ {', '.join(steps)} ] }}\n"
    )


def make_ensembles(dest: Path) -> Path:
    """Ensembles over ``simple`` (written by ``make_repo``):

    - ``pipeline``: a first step gives SUM and DIFF of IN0 and IN1; two steps then run at once,
      one on (SUM, DIFF) giving TWICE0 = 2*IN0 and TWICE1 = 2*IN1, one on (SUM, SUM) giving
      SUM2 = 2*(IN0+IN1) (and a DIFF0 of zeros it drops);
    - ``missing_member``: a step names a model that is not in the repository;
    - ``wrong_types``: an INT8 member fed the ensemble's INT32 input.
    """
    first = _step("simple", {"INPUT0": "IN0", "INPUT1": "IN1"}, {"OUTPUT0": "SUM", "OUTPUT1": "DIFF"})
    twice = _step("simple", {"INPUT0": "SUM", "INPUT1": "DIFF"}, {"OUTPUT0": "TWICE0", "OUTPUT1": "TWICE1"})
    sum2 = _step("simple", {"INPUT0": "SUM", "INPUT1": "SUM"}, {"OUTPUT0": "SUM2"})
    for name, config in [
        ("pipeline", _ensemble("pipeline", [twice, sum2, first], ["TWICE0", "TWICE1", "SUM2"])),
        (
            "missing_member",
            _ensemble(
                "missing_member",
                [_step("no_such_model", {"INPUT0": "IN0", "INPUT1": "IN1"}, {"OUTPUT0": "TWICE0"})],
                ["TWICE0"],
            ),
        ),
        (
            "wrong_types",
            _ensemble(
                "wrong_types",
                [_step("simple_int8", {"INPUT0": "IN0", "INPUT1": "IN1"}, {"OUTPUT0": "TWICE0"})],
                ["TWICE0"],
            ),
        ),
    ]:
        (dest / name / "1").mkdir(parents=True, exist_ok=True)
        (dest / name / "config.pbtxt").write_text(config)
    return dest
