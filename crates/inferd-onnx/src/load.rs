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
pub const HOW_TO_SERVE_THE_REST: &str =
    "build inferd with --features onnxruntime and set ORT_DYLIB_PATH to serve it on ONNX Runtime";

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

/// Parses an ONNX file into an inference model with every input dimension known or symbolic.
pub fn parse(path: &Path, config: Option<&ModelConfig>) -> Result<InferenceModel, BackendError> {
    let onnx = framework();
    let mut proto = onnx
        .proto_model_for_path(path)
        .map_err(|e| load_err(format!("not a loadable ONNX model: {e:#}")))?;
    for output in unzip_outputs(&mut proto) {
        tracing::warn!(
            model = %path.display(),
            output,
            "ZipMap output served as an FP32 tensor, one column per class in class-label order"
        );
    }
    check_operators(&onnx, &proto)?;
    let dir = path.parent().and_then(Path::to_str);
    let parsed = onnx
        .parse(&proto, dir)
        .map_err(|e| load_err(format!("not a loadable ONNX model: {e:#}")))?;
    if !parsed.unresolved_inputs.is_empty() {
        return Err(load_err(format!(
            "the graph reads tensors nothing produces: {:?}",
            parsed.unresolved_inputs
        )));
    }
    let mut model = parsed.model;
    fix_input_facts(&mut model, config)?;
    Ok(model)
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
