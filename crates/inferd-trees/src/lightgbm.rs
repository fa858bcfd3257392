//! LightGBM's text model format.

use std::collections::HashMap;

use crate::forest::{Forest, LEAF, Missing, Node, Rule, Transform, Tree};

fn parse_list<T: std::str::FromStr>(
    kv: &HashMap<&str, &str>,
    key: &str,
    tree: usize,
) -> Result<Vec<T>, String> {
    let Some(v) = kv.get(key) else {
        return Ok(Vec::new());
    };
    v.split_whitespace()
        .map(|x| {
            x.parse::<T>()
                .map_err(|_| format!("Tree={tree}: '{key}' holds '{x}'"))
        })
        .collect()
}

/// Builds a forest from a LightGBM text model.
pub fn from_text(text: &str) -> Result<Forest, String> {
    let mut header: HashMap<&str, &str> = HashMap::new();
    let mut blocks: Vec<(usize, HashMap<&str, &str>)> = Vec::new();
    for line in text.lines() {
        let line = line.trim_end();
        if line == "end of trees" {
            break;
        }
        if let Some(n) = line.strip_prefix("Tree=") {
            let id = n
                .trim()
                .parse::<usize>()
                .map_err(|_| format!("bad tree header '{line}'"))?;
            blocks.push((id, HashMap::new()));
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        match blocks.last_mut() {
            Some((_, kv)) => {
                kv.insert(k, v);
            }
            None => {
                header.insert(k, v);
            }
        }
    }
    if !header.contains_key("version") && !text.starts_with("tree") {
        return Err("not a LightGBM text model (no 'tree' header)".into());
    }
    let num_class: usize = header
        .get("num_class")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(1);
    let per_iter: usize = header
        .get("num_tree_per_iteration")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(num_class)
        .max(1);
    let n_features = header
        .get("max_feature_idx")
        .and_then(|v| v.trim().parse::<usize>().ok())
        .map(|m| m + 1)
        .ok_or("missing max_feature_idx")?;
    let objective = header
        .get("objective")
        .copied()
        .unwrap_or("regression")
        .to_string();
    let mut words = objective.split_whitespace();
    let obj_name = words.next().unwrap_or("");
    let opt = |name: &str| -> Option<f64> {
        objective.split_whitespace().find_map(|w| {
            w.strip_prefix(&format!("{name}:"))
                .and_then(|v| v.parse().ok())
        })
    };
    let (n_outputs, transform) = match obj_name {
        "binary" | "cross_entropy" | "xentropy" => {
            (1, Transform::Sigmoid(opt("sigmoid").unwrap_or(1.0)))
        }
        "multiclass" | "softmax" => (num_class, Transform::Softmax),
        "regression" | "regression_l2" | "regression_l1" | "huber" | "fair" | "quantile"
        | "mape" | "l2" | "l1" | "mse" | "mae" | "rmse" => (1, Transform::Identity),
        "poisson" | "gamma" | "tweedie" => (1, Transform::Exp),
        other => return Err(format!("objective '{other}' is not supported")),
    };
    if per_iter != n_outputs {
        return Err(format!(
            "{per_iter} trees per iteration for {n_outputs} outputs is not supported"
        ));
    }
    let mut trees = Vec::with_capacity(blocks.len());
    for (pos, (id, kv)) in blocks.iter().enumerate() {
        let num_leaves: usize = kv
            .get("num_leaves")
            .and_then(|v| v.trim().parse().ok())
            .ok_or(format!("Tree={id}: missing num_leaves"))?;
        if kv
            .get("num_cat")
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0)
            > 0
        {
            return Err(format!("Tree={id}: categorical splits are not supported"));
        }
        if kv.get("is_linear").is_some_and(|v| v.trim() == "1") {
            return Err(format!("Tree={id}: linear trees are not supported"));
        }
        let leaf_value: Vec<f64> = parse_list(kv, "leaf_value", *id)?;
        if leaf_value.len() != num_leaves || num_leaves == 0 {
            return Err(format!(
                "Tree={id}: {} leaf values for {num_leaves} leaves",
                leaf_value.len()
            ));
        }
        let internal = num_leaves - 1;
        let feat: Vec<u32> = parse_list(kv, "split_feature", *id)?;
        let thr: Vec<f64> = parse_list(kv, "threshold", *id)?;
        let dt: Vec<u32> = parse_list(kv, "decision_type", *id)?;
        let lc: Vec<i64> = parse_list(kv, "left_child", *id)?;
        let rc: Vec<i64> = parse_list(kv, "right_child", *id)?;
        if [feat.len(), thr.len(), dt.len(), lc.len(), rc.len()]
            .iter()
            .any(|&l| l != internal)
        {
            return Err(format!(
                "Tree={id}: split arrays do not have {internal} entries"
            ));
        }
        // Internal nodes keep their indices; leaf k becomes node internal + k.
        let child = |c: i64| -> Result<u32, String> {
            let idx = if c >= 0 { c } else { internal as i64 + (!c) };
            u32::try_from(idx).map_err(|_| format!("Tree={id}: bad child {c}"))
        };
        let mut nodes = Vec::with_capacity(internal + num_leaves);
        for i in 0..internal {
            if dt[i] & 1 != 0 {
                return Err(format!("Tree={id}: categorical splits are not supported"));
            }
            nodes.push(Node {
                feature: feat[i],
                left: child(lc[i])?,
                right: child(rc[i])?,
                default_left: dt[i] & 2 != 0,
                missing: match (dt[i] >> 2) & 3 {
                    1 => Missing::Zero,
                    2 => Missing::NaN,
                    _ => Missing::None,
                },
                value: thr[i],
            });
        }
        for v in leaf_value {
            nodes.push(Node {
                feature: 0,
                left: LEAF,
                right: LEAF,
                default_left: false,
                missing: Missing::None,
                value: v,
            });
        }
        trees.push(Tree {
            nodes,
            group: pos % n_outputs,
        });
    }
    let forest = Forest {
        trees,
        n_features,
        n_outputs,
        base_margin: vec![0.0; n_outputs],
        transform,
        rule: Rule::Lightgbm,
        objective: obj_name.to_string(),
    };
    forest.validate()?;
    Ok(forest)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODEL: &str = "tree\nversion=v4\nnum_class=1\nnum_tree_per_iteration=1\nmax_feature_idx=1\nobjective=binary sigmoid:1\n\nTree=0\nnum_leaves=3\nnum_cat=0\nsplit_feature=0 1\nthreshold=0.5 -1\ndecision_type=10 0\nleft_child=1 -1\nright_child=-3 -2\nleaf_value=0.1 0.2 0.3\nis_linear=0\nshrinkage=1\n\nend of trees\n";

    #[test]
    fn parses_and_predicts() {
        let f = from_text(MODEL).unwrap();
        assert_eq!(f.n_features, 2);
        let mut out = [0f32];
        // x0 <= 0.5 -> node 1; x1 <= -1 -> leaf 0 (0.1)
        f.predict(&[0.0, -2.0], &mut out);
        assert!((out[0] - (1.0 / (1.0 + (-0.1f64).exp())) as f32).abs() < 1e-7);
        // NaN at the root with NaN missing type and default_left -> left.
        f.predict(&[f32::NAN, 5.0], &mut out);
        assert!((out[0] - (1.0 / (1.0 + (-0.2f64).exp())) as f32).abs() < 1e-7);
    }

    #[test]
    fn malformed_models_are_errors() {
        assert!(from_text("hello").is_err());
        assert!(from_text(&MODEL.replace("leaf_value=0.1 0.2 0.3", "leaf_value=0.1")).is_err());
        assert!(
            from_text(&MODEL.replace("left_child=1 -1", "left_child=0 -1")).is_err(),
            "self loop"
        );
        assert!(from_text(&MODEL.replace("split_feature=0 1", "split_feature=0 9")).is_err());
    }
}
