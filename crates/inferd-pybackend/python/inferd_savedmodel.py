"""inferd's runner for a TensorFlow SavedModel (``platform: "tensorflow_savedmodel"``, the
``model.savedmodel/`` folder of a Triton repository, or TF Serving's own layout with
``saved_model.pb`` and ``variables/`` in the version folder), run as the model of a
python-backend worker.

Before TensorFlow loads anything, the graph is read as a protobuf (nothing runs) and the ops
reachable from the served signature (``serving_default``, or the config's ``signature_name``
parameter) are listed, following function calls; ops that touch files, processes or Python
(``ReadFile``, ``WriteFile``, ``MatchingFiles``, ``PyFunc``, ``EagerPyFunc``, readers, savers,
file-backed datasets, summary writers, ...) refuse the model unless its config pins the
``saved_model.pb`` digest. A config without inputs and outputs is completed from the
signature (TF Serving's layout has no config at all). Inputs are fed by name; the outputs are
the signature's, by name.
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils

# Ops that read or write files, run processes or Python, or reach the network.
FORBIDDEN = {
    "ReadFile", "WriteFile", "MatchingFiles", "PyFunc", "PyFuncStateless", "EagerPyFunc",
    "Save", "SaveV2", "SaveSlices", "Restore", "RestoreV2", "RestoreSlice", "MergeV2Checkpoints",
    "ImmutableConst", "InitializeTableFromTextFile", "InitializeTableFromTextFileV2",
    "TextLineReader", "TextLineReaderV2", "WholeFileReader", "WholeFileReaderV2", "TFRecordReader",
    "TFRecordReaderV2", "FixedLengthRecordReader", "FixedLengthRecordReaderV2", "LMDBReader",
    "TextLineDataset", "TFRecordDataset", "FixedLengthRecordDataset", "FixedLengthRecordDatasetV2",
    "CSVDataset", "CSVDatasetV2", "ExperimentalCSVDataset", "SqlDataset", "ExperimentalSqlDataset",
    "LMDBDataset", "ExperimentalLMDBDataset", "DatasetToTFRecord", "ExperimentalDatasetToTFRecord",
    "SnapshotDataset", "SnapshotDatasetV2", "SaveDataset", "SaveDatasetV2", "LoadDataset", "CacheDataset",
    "CacheDatasetV2", "CreateSummaryFileWriter", "WriteSummary", "WriteScalarSummary", "WriteHistogramSummary",
    "WriteImageSummary", "WriteAudioSummary", "WriteGraphSummary", "WriteRawProtoSummary", "PrintV2",
    "LoadAndRemapMatrix", "RecordInput", "DebugIdentityV2", "DebugIdentityV3",
}

# TensorFlow dtype names -> config datatypes.
TF_TO_CONFIG = {
    "float32": "TYPE_FP32", "float64": "TYPE_FP64", "float16": "TYPE_FP16", "bfloat16": "TYPE_BF16",
    "int8": "TYPE_INT8", "int16": "TYPE_INT16", "int32": "TYPE_INT32", "int64": "TYPE_INT64",
    "uint8": "TYPE_UINT8", "uint16": "TYPE_UINT16", "uint32": "TYPE_UINT32", "uint64": "TYPE_UINT64",
    "bool": "TYPE_BOOL", "string": "TYPE_STRING",
}


def model_dir() -> str:
    path = INFERD_MODEL_FILE  # noqa: F821 - set by the worker before this runs
    return os.path.dirname(path) if os.path.basename(path) == "saved_model.pb" else path


def param(cfg, key, default=""):
    v = cfg.get("parameters", {}).get(key)
    if isinstance(v, dict):
        v = v.get("string_value")
    return default if v in (None, "") else v


def signature_name(cfg) -> str:
    return param(cfg, "signature_name", "serving_default")


def reachable_ops(folder: str, signature: str) -> set:
    """The ops the signature can run: its output nodes' inputs, transitively, and every function
    they call (function attributes, nested)."""
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel()
    with open(os.path.join(folder, "saved_model.pb"), "rb") as f:
        sm.ParseFromString(f.read())
    mg = sm.meta_graphs[0]
    if signature not in mg.signature_def:
        raise pb_utils.TritonModelException(
            f"the SavedModel has no signature '{signature}' (it has: {', '.join(sorted(mg.signature_def))})")
    graph = mg.graph_def
    nodes = {n.name: n for n in graph.node}
    library = {f.signature.name: f for f in graph.library.function}
    ops, seen_nodes, seen_fns = set(), set(), set()

    def functions_of(node):
        for attr in node.attr.values():
            if attr.HasField("func"):
                yield attr.func.name
            for fn in attr.list.func:
                yield fn.name

    def visit_fn(name):
        if name in seen_fns or name not in library:
            return
        seen_fns.add(name)
        for n in library[name].node_def:
            ops.add(n.op)
            if n.op in library:  # a function called as an op
                visit_fn(n.op)
            for f in functions_of(n):
                visit_fn(f)

    stack = [t.name.split(":")[0].lstrip("^") for t in mg.signature_def[signature].outputs.values()]
    while stack:
        name = stack.pop()
        if name in seen_nodes or name not in nodes:
            continue
        seen_nodes.add(name)
        node = nodes[name]
        ops.add(node.op)
        if node.op in library:
            visit_fn(node.op)
        for f in functions_of(node):
            visit_fn(f)
        stack.extend(i.split(":")[0].lstrip("^") for i in node.input)
    return ops


def check_ops(cfg) -> None:
    folder = model_dir()
    bad = sorted(reachable_ops(folder, signature_name(cfg)) & FORBIDDEN)
    pinned = any(k.startswith("sha256:") and k.endswith("saved_model.pb") for k in cfg.get("parameters", {}))
    if bad and not pinned:
        raise pb_utils.TritonModelException(
            f"signature '{signature_name(cfg)}' reaches ops that touch files, processes or Python: {', '.join(bad)}; "
            "inferd serves such a SavedModel only when its config pins the saved_model.pb digest "
            "(parameters { key: \"sha256:<version>/.../saved_model.pb\" ... })")


def load(cfg):
    import tensorflow as tf

    threads = int(param(cfg, "INTRA_OP_THREAD_COUNT", "1"))
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass  # already initialised in this process
    loaded = tf.saved_model.load(model_dir())
    name = signature_name(cfg)
    if name not in loaded.signatures:
        raise pb_utils.TritonModelException(f"the SavedModel has no signature '{name}'")
    return loaded, loaded.signatures[name]


def dims(shape) -> list:
    return [-1 if d is None else int(d) for d in shape]


class TritonPythonModel:
    @staticmethod
    def auto_complete_config(auto_complete_model_config):
        cfg = auto_complete_model_config.as_dict()
        check_ops(cfg)
        _, fn = load(cfg)
        _, kwargs = fn.structured_input_signature
        for name, spec in sorted(kwargs.items()):
            auto_complete_model_config.add_input(
                {"name": name, "data_type": TF_TO_CONFIG.get(spec.dtype.name, "TYPE_FP32"), "dims": dims(spec.shape)})
        for name, spec in sorted(fn.structured_outputs.items()):
            auto_complete_model_config.add_output(
                {"name": name, "data_type": TF_TO_CONFIG.get(spec.dtype.name, "TYPE_FP32"), "dims": dims(spec.shape)})
        return auto_complete_model_config

    def initialize(self, args):
        cfg = json.loads(args["model_config"])
        check_ops(cfg)
        self.loaded, self.fn = load(cfg)
        _, kwargs = self.fn.structured_input_signature
        self.specs = kwargs
        self.outputs = [o["name"] for o in cfg.get("output", [])]

    def execute(self, requests):
        import tensorflow as tf

        out = []
        for r in requests:
            feed = {}
            for name, spec in self.specs.items():
                t = pb_utils.get_input_tensor_by_name(r, name)
                if t is None:
                    raise pb_utils.TritonModelException(f"input '{name}' is missing")
                feed[name] = tf.constant(t.as_numpy(), dtype=spec.dtype)
            got = self.fn(**feed)
            tensors = []
            for name in self.outputs:
                value = np.asarray(got[name].numpy())
                if value.dtype.kind in "OS":
                    value = np.array([bytes(v) for v in value.reshape(-1)], dtype=object).reshape(value.shape)
                tensors.append(pb_utils.Tensor(name, value))
            out.append(pb_utils.InferenceResponse(tensors))
        return out
