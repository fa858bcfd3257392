//! `TreeEnsemble` (ai.onnx.ml 5): the one tree operator of opset 5, with tensor attributes,
//! leaves in arrays of their own and per-tree roots. It is read into the same [`Ensemble`] as
//! the version 1/3 operators (interior nodes first, then one node per leaf), so it shares their
//! walks, onnxruntime's aggregation rules and the compiled kernel.
//!
//! Refused, naming what: double splits (served only as float here), `BRANCH_MEMBER` splits, and
//! `post_transform` 1 and 2, whose meaning onnxruntime and the ONNX specification swap
//! (LOGISTIC/SOFTMAX against SOFTMAX/LOGISTIC), so either reading would be wrong for someone.

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

use super::slice;
use super::transform::PostTransform;
use super::tree::{Aggregate, Ensemble, Mode, Node};

fn tensor_attr(node: &NodeProto, name: &str) -> TractResult<Option<Tensor>> {
    match node.get_attr_opt::<&tract_onnx::pb::TensorProto>(name)? {
        Some(t) => Ok(Some(tract_onnx::tensor::load_tensor(
            &tract_onnx::data_resolver::MmapDataResolver,
            t,
            None,
        )?)),
        None => Ok(None),
    }
}

fn ints(node: &NodeProto, name: &str) -> TractResult<Vec<i64>> {
    node.get_attr_opt_vec(name).map(Option::unwrap_or_default)
}

/// Reads the operator into an ensemble and its post transform.
pub(super) fn parse(
    _: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Ensemble, PostTransform)> {
    let splits = tensor_attr(node, "nodes_splits")?
        .ok_or_else(|| format_err!("'nodes_splits' is missing"))?;
    if splits.datum_type() != DatumType::F32 {
        bail!(
            "splits of type {:?}: the tract backend serves TreeEnsemble on float only",
            splits.datum_type()
        );
    }
    let splits = slice::<f32>(&splits)?.to_vec();
    let modes =
        tensor_attr(node, "nodes_modes")?.ok_or_else(|| format_err!("'nodes_modes' is missing"))?;
    let modes: Vec<i64> = slice::<i64>(&*modes.cast_to::<i64>()?)?.to_vec();
    let leaf_weights = tensor_attr(node, "leaf_weights")?
        .ok_or_else(|| format_err!("'leaf_weights' is missing"))?;
    let leaf_weights: Vec<f64> = slice::<f64>(&*leaf_weights.cast_to::<f64>()?)?.to_vec();
    let features = ints(node, "nodes_featureids")?;
    let trues = ints(node, "nodes_truenodeids")?;
    let falses = ints(node, "nodes_falsenodeids")?;
    let true_leafs = ints(node, "nodes_trueleafs")?;
    let false_leafs = ints(node, "nodes_falseleafs")?;
    let roots = ints(node, "tree_roots")?;
    let targets = ints(node, "leaf_targetids")?;
    let n = features.len();
    let nan_true = node
        .get_attr_opt_vec::<i64>("nodes_missing_value_tracks_true")?
        .unwrap_or_else(|| vec![0; n]);
    for (name, len) in [
        ("nodes_splits", splits.len()),
        ("nodes_modes", modes.len()),
        ("nodes_truenodeids", trues.len()),
        ("nodes_falsenodeids", falses.len()),
        ("nodes_trueleafs", true_leafs.len()),
        ("nodes_falseleafs", false_leafs.len()),
        ("nodes_missing_value_tracks_true", nan_true.len()),
    ] {
        if len != n {
            bail!("'{name}' has {len} values, 'nodes_featureids' {n}");
        }
    }
    if targets.len() != leaf_weights.len() || roots.is_empty() {
        bail!(
            "'leaf_targetids' and 'leaf_weights' must pair up, and 'tree_roots' must not be empty"
        );
    }
    let n_targets: i64 = node.get_attr("n_targets")?;
    if n_targets < 1 {
        bail!("'n_targets' must be at least 1");
    }
    let aggregate = match node.get_attr_opt::<i64>("aggregate_function")?.unwrap_or(1) {
        0 => Aggregate::Average,
        1 => Aggregate::Sum,
        2 => Aggregate::Min,
        3 => Aggregate::Max,
        v => bail!("unknown aggregate_function {v}"),
    };
    let post = match node.get_attr_opt::<i64>("post_transform")?.unwrap_or(0) {
        0 => PostTransform::None,
        3 => PostTransform::SoftmaxZero,
        4 => PostTransform::Probit,
        v @ (1 | 2) => bail!(
            "post_transform {v} means SOFTMAX/LOGISTIC to the ONNX specification but LOGISTIC/SOFTMAX to onnxruntime; either reading would be wrong for someone, so the model is refused (build with --features onnxruntime to serve it as onnxruntime does)"
        ),
        v => bail!("unknown post_transform {v}"),
    };

    let leaf_at = |j: i64| -> TractResult<u32> {
        if j < 0 || j as usize >= targets.len() {
            bail!("leaf {j} does not exist ({} leaves)", targets.len());
        }
        Ok((n + j as usize) as u32)
    };
    let node_at = |i: i64| -> TractResult<u32> {
        if i < 0 || i as usize >= n {
            bail!("node {i} does not exist ({n} nodes)");
        }
        Ok(i as u32)
    };
    let mut nodes = Vec::with_capacity(n + targets.len());
    let mut n_features = 0;
    for i in 0..n {
        let mode = match modes[i] {
            0 => Mode::Leq,
            1 => Mode::Lt,
            2 => Mode::Gte,
            3 => Mode::Gt,
            4 => Mode::Eq,
            5 => Mode::Neq,
            6 => bail!(
                "BRANCH_MEMBER splits (node {i}) are not served by the tract backend; build with --features onnxruntime"
            ),
            v => bail!("node {i}: unknown mode {v}"),
        };
        if features[i] < 0 {
            bail!("node {i}: negative feature id");
        }
        n_features = n_features.max(features[i] as usize + 1);
        let child = |leaf: i64, id: i64| if leaf != 0 { leaf_at(id) } else { node_at(id) };
        nodes.push(Node {
            feature: features[i] as u32,
            mode,
            threshold: splits[i] as f64,
            on_true: child(true_leafs[i], trues[i])?,
            on_false: child(false_leafs[i], falses[i])?,
            nan_true: nan_true[i] != 0,
            first: 0,
            last: 0,
        });
    }
    let mut weights = Vec::with_capacity(targets.len());
    for (j, (&t, &w)) in targets.iter().zip(&leaf_weights).enumerate() {
        if t < 0 || t >= n_targets {
            bail!("leaf {j} is for target {t}, but there are {n_targets}");
        }
        weights.push((t as u32, w));
        nodes.push(Node {
            feature: 0,
            mode: Mode::Leaf,
            threshold: 0.0,
            on_true: 0,
            on_false: 0,
            nan_true: false,
            first: j as u32,
            last: j as u32 + 1,
        });
    }
    let roots = roots
        .iter()
        .map(|&r| {
            let at = node_at(r)? as usize;
            // onnxruntime reads a root whose two children are the same id as the leaf `r`.
            if trues[at] == falses[at] && true_leafs[at] == false_leafs[at] && true_leafs[at] != 0 {
                return leaf_at(r);
            }
            Ok(at as u32)
        })
        .collect::<TractResult<Vec<u32>>>()?;
    let ensemble = Ensemble {
        nodes,
        roots,
        weights,
        n_targets: n_targets as usize,
        aggregate,
        base: Vec::new(),
        double: false,
        n_features,
    };
    ensemble.check_acyclic()?;
    Ok((ensemble, post))
}
