//! From an ONNX file to a runnable tract plan: operators checked up front (a model whose
//! operator tract cannot run is refused naming it and the node), unknown input dimensions
//! given symbols (converters leave the batch dimension without value or name), the config's
//! dims turned into facts, then typing, optimisation and planning.

use std::path::Path;

use inferd_core::backend::BackendError;
use inferd_core::config::ModelConfig;
use tract_onnx::pb::{GraphProto, ModelProto};
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::{DimFact, Factoid, ShapeFactoid};

use crate::ml;

/// What to do for a model tract cannot run.
pub const HOW_TO_SERVE_THE_REST: &str = "build inferd with --features onnxruntime and set ORT_DYLIB_PATH, and --onnx-backend auto (the default) serves it on ONNX Runtime";

fn load_err(e: impl std::fmt::Display) -> BackendError {
    BackendError::Load(e.to_string())
}

/// tract's ONNX parser with inferd's ONNX-ML operators registered.
pub fn framework() -> tract_onnx::Onnx {
    let mut onnx = tract_onnx::onnx();
    ml::register(&mut onnx.op_register);
    onnx
}

fn walk_graph<'a>(graph: &'a GraphProto, out: &mut Vec<&'a tract_onnx::pb::NodeProto>) {
    for node in &graph.node {
        out.push(node);
        for attr in &node.attribute {
            if let Some(g) = &attr.g {
                walk_graph(g, out);
            }
            for g in &attr.graphs {
                walk_graph(g, out);
            }
        }
    }
}

/// Refuses, before any work, a model with an operator the tract backend does not run: the
/// operator, its domain and the node are named, with what to do.
pub fn check_operators(onnx: &tract_onnx::Onnx, proto: &ModelProto) -> Result<(), BackendError> {
    let Some(graph) = &proto.graph else {
        return Err(load_err("the ONNX file has no graph"));
    };
    let mut nodes = Vec::new();
    walk_graph(graph, &mut nodes);
    for node in nodes {
        let domain = if node.domain.is_empty() {
            "ai.onnx"
        } else {
            node.domain.as_str()
        };
        let name = if node.name.is_empty() {
            "(unnamed)"
        } else {
            node.name.as_str()
        };
        if let Some((_, advice)) = ml::REFUSED.iter().find(|(op, _)| *op == node.op_type) {
            return Err(load_err(format!(
                "operator {} ({domain}) at node '{name}' cannot be served: {advice}",
                node.op_type
            )));
        }
        if !onnx.op_register.0.contains_key(&node.op_type) {
            return Err(load_err(format!(
                "operator {} ({domain}) at node '{name}' is not implemented by the ONNX backend (tract); {HOW_TO_SERVE_THE_REST}",
                node.op_type
            )));
        }
    }
    Ok(())
}

/// Serves a `ZipMap` that produces a graph output, and feeds nothing else, as the tensor it
/// maps: one FP32 column per class, in the order of its class labels, under the output's own
/// name. Converters that cannot leave ZipMap out (CatBoost's) are served this way; a ZipMap
/// feeding other nodes stays, and [`check_operators`] refuses it. Returns the outputs changed.
pub fn unzip_outputs(proto: &mut ModelProto) -> Vec<String> {
    let Some(graph) = proto.graph.as_mut() else {
        return Vec::new();
    };
    let outputs: std::collections::HashSet<String> =
        graph.output.iter().map(|o| o.name.clone()).collect();
    let consumed: std::collections::HashSet<String> = graph
        .node
        .iter()
        .flat_map(|n| n.input.iter().cloned())
        .collect();
    let mut changed = Vec::new();
    for node in graph.node.iter_mut() {
        if node.op_type == "ZipMap"
            && node.output.len() == 1
            && outputs.contains(&node.output[0])
            && !consumed.contains(&node.output[0])
        {
            node.op_type = "Identity".into();
            node.domain = String::new();
            node.attribute.clear();
            changed.push(node.output[0].clone());
        }
    }
    for out in graph.output.iter_mut() {
        if changed.contains(&out.name) {
            // Its declared type is a sequence of maps; the tensor's comes from the graph.
            out.r#type = None;
        }
    }
    changed
}

/// ONNX element types tract carries (`TensorProto.DataType` codes): float, uint8, int8,
/// uint16, int16, int32, int64, string, bool, float16, double, uint32, uint64.
const TRACT_TYPES: &[i32] = &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13];

fn type_name(code: i32) -> String {
    tract_onnx::pb::tensor_proto::DataType::try_from(code)
        .map(|t| t.as_str_name().to_string())
        .unwrap_or_else(|_| format!("type {code}"))
}

/// Refuses a model whose graph inputs, outputs or weights have an element type tract cannot
/// carry (bfloat16, the float8/float4 and int4 families, complex), naming the operator that
/// reads or writes the tensor.
pub fn check_types(proto: &ModelProto) -> Result<(), BackendError> {
    let Some(graph) = &proto.graph else {
        return Ok(());
    };
    let declared = graph
        .input
        .iter()
        .chain(&graph.output)
        .filter_map(|v| match v.r#type.as_ref()?.value.as_ref()? {
            tract_onnx::pb::type_proto::Value::TensorType(t) => {
                Some((v.name.as_str(), t.elem_type))
            }
        })
        .chain(
            graph
                .initializer
                .iter()
                .map(|t| (t.name.as_str(), t.data_type)),
        );
    for (tensor, code) in declared {
        if TRACT_TYPES.contains(&code) {
            continue;
        }
        let user = graph
            .node
            .iter()
            .find(|n| n.input.iter().chain(&n.output).any(|i| i == tensor));
        let at = match user {
            Some(n) => format!("operator {} at node '{}'", n.op_type, node_label(n)),
            None => format!(
                "the graph (operators: {})",
                Operators::of(proto).all.join(", ")
            ),
        };
        return Err(load_err(format!(
            "{at} uses tensor '{tensor}' of type {}, which the ONNX backend (tract) does not support; {HOW_TO_SERVE_THE_REST}",
            type_name(code)
        )));
    }
    Ok(())
}

/// A node's name as tract reports it: its name, else its first output, else its position.
fn node_label(n: &tract_onnx::pb::NodeProto) -> &str {
    if !n.name.is_empty() {
        &n.name
    } else {
        n.output.first().map(String::as_str).unwrap_or("(unnamed)")
    }
}

/// Which ONNX operator each node (by tract's name for it) is, so errors from deep inside
/// tract can name the operator.
#[derive(Clone, Debug, Default)]
pub struct Operators {
    by_node: std::collections::HashMap<String, String>,
    /// The model's distinct operators, sorted.
    all: Vec<String>,
}

impl Operators {
    /// Indexes a model's nodes.
    pub fn of(proto: &ModelProto) -> Operators {
        let mut nodes = Vec::new();
        if let Some(g) = &proto.graph {
            walk_graph(g, &mut nodes);
        }
        let mut all: Vec<String> = nodes.iter().map(|n| n.op_type.clone()).collect();
        all.sort();
        all.dedup();
        Operators {
            by_node: nodes
                .into_iter()
                .map(|n| (node_label(n).to_string(), n.op_type.clone()))
                .collect(),
            all,
        }
    }

    /// `msg` with the operator of the first node it names (tract writes `node #N "name"`), or
    /// else with the model's operators.
    pub fn explain(&self, msg: &str) -> String {
        let mut rest = msg;
        while let Some(at) = rest.find("node #") {
            rest = &rest[at + 6..];
            if let Some(open) = rest.find('"') {
                let tail = &rest[open + 1..];
                if let Some(close) = tail.find('"')
                    && let Some(op) = self.by_node.get(&tail[..close])
                {
                    return format!("operator {op} at node '{}': {msg}", &tail[..close]);
                }
            }
        }
        let mut ops = self
            .all
            .iter()
            .take(8)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        if self.all.len() > 8 {
            ops.push_str(", ...");
        }
        format!("{msg} (the model's operators: {ops})")
    }
}

/// Operators, or operator settings, for which tract answers differently from the ONNX
/// reference (found by the ONNX node tests; see the README). They are refused rather than
/// served wrong.
fn known_wrong(node: &tract_onnx::pb::NodeProto, graph_has_f16: bool) -> Option<&'static str> {
    let attr = |name: &str| node.attribute.iter().find(|a| a.name == name);
    let attr_str = |name: &str| attr(name).map(|a| String::from_utf8_lossy(&a.s).to_string());
    match node.op_type.as_str() {
        "BitShift" => Some("tract overflows for shift amounts at or beyond the type's width"),
        "Attention" if node.domain.is_empty() || node.domain == "ai.onnx" => {
            Some("tract's Attention ignores windows and past key/value inputs")
        }
        "GRU" | "LSTM" | "RNN" if attr_str("direction").as_deref() == Some("reverse") => {
            Some("tract runs reverse recurrences forward")
        }
        "Swish" if attr("alpha").is_some() => Some("tract ignores Swish's alpha"),
        "SpaceToDepth" if attr_str("mode").as_deref() == Some("CRD") => {
            Some("tract ignores SpaceToDepth's CRD mode")
        }
        "Celu" if graph_has_f16 => Some("tract computes Celu wrongly on float16"),
        _ => None,
    }
}

/// Refuses nodes [`known_wrong`] lists.
pub fn check_known_wrong(proto: &ModelProto) -> Result<(), BackendError> {
    let Some(graph) = &proto.graph else {
        return Ok(());
    };
    let has_f16 = graph.input.iter().chain(&graph.output).any(|v| {
        matches!(v.r#type.as_ref().and_then(|t| t.value.as_ref()),
            Some(tract_onnx::pb::type_proto::Value::TensorType(t)) if t.elem_type == 10)
    });
    let mut nodes = Vec::new();
    walk_graph(graph, &mut nodes);
    for node in nodes {
        if let Some(why) = known_wrong(node, has_f16) {
            return Err(load_err(format!(
                "operator {} at node '{}' is refused: {why}, which would give wrong answers; {HOW_TO_SERVE_THE_REST}",
                node.op_type,
                node_label(node)
            )));
        }
    }
    Ok(())
}

/// The dims the config gives an input, batch dimension included, when it gives them.
fn config_dims(config: Option<&ModelConfig>, name: &str) -> Option<Vec<i64>> {
    let cfg = config?;
    let input = cfg.input.iter().find(|i| i.name == name)?;
    if input.dims.is_empty() || input.reshape.is_some() {
        return None;
    }
    let mut dims = input.dims.clone();
    if cfg.max_batch_size > 0 {
        dims.insert(0, -1);
    }
    Some(dims)
}

/// Gives every input dimension a fact: the model's where it has one; else the config's; else a
/// symbol, shared by all inputs for the leading (batch) dimension and fresh for the others.
pub fn fix_input_facts(
    model: &mut InferenceModel,
    config: Option<&ModelConfig>,
) -> Result<(), BackendError> {
    let batch = model.symbols.sym("N");
    for i in 0..model.inputs.len() {
        let outlet = model.inputs[i];
        let name = model.node(outlet.node).name.clone();
        let fact = model.input_fact(i).map_err(load_err)?.clone();
        if fact.shape.is_open() {
            // Rank unknown: leave it to tract's inference (the config cannot fix a rank here).
            continue;
        }
        let cfg = config_dims(config, &name);
        let dims: TVec<DimFact> = fact
            .shape
            .dims()
            .enumerate()
            .map(|(axis, d)| {
                if let Some(known) = d.concretize() {
                    return DimFact::from(known);
                }
                match cfg.as_ref().and_then(|c| c.get(axis)) {
                    Some(&v) if v > 0 => DimFact::from(TDim::from(v)),
                    _ if axis == 0 => DimFact::from(TDim::from(batch.clone())),
                    _ => DimFact::from(TDim::from(
                        model.symbols.sym(&format!("{}_{axis}", sanitize(&name))),
                    )),
                }
            })
            .collect();
        let mut fixed = fact.clone();
        fixed.shape = ShapeFactoid::closed(dims);
        model.set_input_fact(i, fixed).map_err(load_err)?;
    }
    Ok(())
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// A model re-encoded with its terminal ZipMaps unzipped.
#[derive(Debug, Clone)]
pub struct Unzipped {
    /// The model, encoded.
    pub bytes: Vec<u8>,
    /// The outputs that are now the tensors their ZipMaps mapped.
    pub outputs: Vec<String>,
}

/// The model file with its terminal ZipMaps made into the tensors they map ([`unzip_outputs`]),
/// encoded again, for runtimes that read a model from memory (ONNX Runtime). `None` when there
/// is nothing to unzip, or when the model keeps tensors in external files (only a path lets a
/// runtime find those).
pub fn unzipped_model(path: &Path) -> Result<Option<Unzipped>, BackendError> {
    use prost::Message;
    let mut proto = framework()
        .proto_model_for_path(path)
        .map_err(|e| load_err(format!("not a loadable ONNX model: {e:#}")))?;
    let external = proto.graph.as_ref().is_some_and(|g| {
        g.initializer.iter().any(|t| {
            t.data_location == Some(tract_onnx::pb::tensor_proto::DataLocation::External as i32)
        })
    });
    if external {
        return Ok(None);
    }
    let changed = unzip_outputs(&mut proto);
    if changed.is_empty() {
        return Ok(None);
    }
    Ok(Some(Unzipped {
        bytes: proto.encode_to_vec(),
        outputs: changed,
    }))
}

/// Parses an ONNX file (from `bytes` when given, its content already read) into an inference
/// model with every input dimension known or symbolic, and the map from its nodes to their
/// operators.
pub fn parse(
    path: &Path,
    bytes: Option<&[u8]>,
    config: Option<&ModelConfig>,
) -> Result<(InferenceModel, Operators), BackendError> {
    let onnx = framework();
    let proto = match bytes {
        Some(mut b) => onnx.proto_model_for_read(&mut b),
        None => onnx.proto_model_for_path(path),
    };
    let mut proto = proto.map_err(|e| load_err(format!("not a loadable ONNX model: {e:#}")))?;
    for output in unzip_outputs(&mut proto) {
        tracing::warn!(
            model = %path.display(),
            output,
            "ZipMap output served as an FP32 tensor, one column per class in class-label order"
        );
    }
    check_operators(&onnx, &proto)?;
    check_types(&proto)?;
    check_known_wrong(&proto)?;
    let operators = Operators::of(&proto);
    let dir = path.parent().and_then(Path::to_str);
    let parsed = onnx
        .parse(&proto, dir)
        .map_err(|e| load_err(operators.explain(&format!("not a loadable ONNX model: {e:#}"))))?;
    if !parsed.unresolved_inputs.is_empty() {
        return Err(load_err(format!(
            "the graph reads tensors nothing produces: {:?}",
            parsed.unresolved_inputs
        )));
    }
    let mut model = parsed.model;
    fix_input_facts(&mut model, config)?;
    Ok((model, operators))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::pb::{GraphProto, ModelProto, NodeProto};

    fn model_with(op: &str, domain: &str) -> ModelProto {
        ModelProto {
            graph: Some(GraphProto {
                node: vec![NodeProto {
                    op_type: op.into(),
                    domain: domain.into(),
                    name: "the_node".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn an_operator_tract_lacks_is_refused_by_name_with_what_to_do() {
        let err =
            check_operators(&framework(), &model_with("NoSuchOp", "com.example")).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("operator NoSuchOp (com.example) at node 'the_node'"),
            "{msg}"
        );
        assert!(msg.contains("--features onnxruntime"), "{msg}");
    }

    #[test]
    fn zipmap_is_refused_with_the_export_option_that_avoids_it() {
        let err = check_operators(&framework(), &model_with("ZipMap", "ai.onnx.ml")).unwrap_err();
        assert!(err.to_string().contains("'zipmap': False"), "{err}");
    }

    #[test]
    fn a_zipmap_that_only_makes_a_graph_output_is_served_as_its_tensor() {
        let mut proto = model_with("ZipMap", "ai.onnx.ml");
        let graph = proto.graph.as_mut().unwrap();
        graph.node[0].input = vec!["probabilities_tensor".into()];
        graph.node[0].output = vec!["probabilities".into()];
        graph.output = vec![tract_onnx::pb::ValueInfoProto {
            name: "probabilities".into(),
            ..Default::default()
        }];
        let mut fed = proto.clone();
        assert_eq!(unzip_outputs(&mut proto), vec!["probabilities".to_string()]);
        assert_eq!(proto.graph.as_ref().unwrap().node[0].op_type, "Identity");
        check_operators(&framework(), &proto).unwrap();
        // The same ZipMap feeding another node stays, and is refused.
        fed.graph.as_mut().unwrap().node.push(NodeProto {
            op_type: "Identity".into(),
            input: vec!["probabilities".into()],
            ..Default::default()
        });
        assert!(unzip_outputs(&mut fed).is_empty());
        assert!(check_operators(&framework(), &fed).is_err());
    }

    #[test]
    fn the_ml_operators_are_registered() {
        let onnx = framework();
        for op in ml::OPERATORS {
            assert!(
                onnx.op_register.0.contains_key(*op),
                "{op} is not registered"
            );
            check_operators(&onnx, &model_with(op, "ai.onnx.ml")).unwrap();
        }
    }
}
