//! The evaluator: every tree as flat node arrays, rows walked with the reference libraries'
//! exact comparison and missing-value rules, sums in the reference's precision.

/// How a split treats its feature value (the two libraries differ).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// XGBoost: `x < threshold` in f32 goes left; NaN follows `default_left`.
    Xgboost,
    /// LightGBM: `x <= threshold` in f64 goes left; missing per the node's missing type.
    Lightgbm,
}

/// LightGBM's missing-value handling of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Missing {
    /// NaN is treated as 0.
    None,
    /// 0 (and NaN, turned into 0) follows `default_left`.
    Zero,
    /// NaN follows `default_left`.
    NaN,
}

/// One node. Leaves have `left == LEAF`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Node {
    /// Feature index (internal nodes).
    pub feature: u32,
    /// Left child, or [`LEAF`].
    pub left: u32,
    /// Right child.
    pub right: u32,
    /// Missing values go left.
    pub default_left: bool,
    /// LightGBM missing type.
    pub missing: Missing,
    /// Split threshold (internal) or leaf value.
    pub value: f64,
}

/// Marks a leaf.
pub const LEAF: u32 = u32::MAX;

/// A tree and the output it adds to.
#[derive(Clone, Debug, PartialEq)]
pub struct Tree {
    /// Nodes; 0 is the root.
    pub nodes: Vec<Node>,
    /// Output index (class) this tree contributes to.
    pub group: usize,
}

/// What turns summed margins into outputs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Transform {
    /// Raw margin.
    Identity,
    /// `1 / (1 + exp(-k * margin))`.
    Sigmoid(f64),
    /// Softmax across outputs.
    Softmax,
    /// `exp(margin)`.
    Exp,
}

/// A tree ensemble ready to evaluate.
#[derive(Clone, Debug, PartialEq)]
pub struct Forest {
    /// Trees.
    pub trees: Vec<Tree>,
    /// Features per row.
    pub n_features: usize,
    /// Outputs per row (classes for multiclass, else 1).
    pub n_outputs: usize,
    /// Margin each output starts from.
    pub base_margin: Vec<f64>,
    /// Output transform.
    pub transform: Transform,
    /// Split rule.
    pub rule: Rule,
    /// Objective name, for metadata.
    pub objective: String,
}

const LGB_ZERO: f64 = 1e-35;

impl Forest {
    /// Checks structural soundness (children in range, no cycles reachable from the root by
    /// construction: children must come after their parent or be leaves, features in range).
    pub fn validate(&self) -> Result<(), String> {
        if self.n_outputs == 0 || self.base_margin.len() != self.n_outputs {
            return Err("model has no outputs".into());
        }
        for (t, tree) in self.trees.iter().enumerate() {
            if tree.nodes.is_empty() {
                return Err(format!("tree {t} has no nodes"));
            }
            if tree.group >= self.n_outputs {
                return Err(format!(
                    "tree {t} adds to output {} of {}",
                    tree.group, self.n_outputs
                ));
            }
            for (i, n) in tree.nodes.iter().enumerate() {
                if n.left == LEAF {
                    continue;
                }
                let ok = |c: u32| (c as usize) < tree.nodes.len() && c as usize > i;
                if !ok(n.left) || !ok(n.right) {
                    return Err(format!(
                        "tree {t} node {i}: children {} / {} are out of order or range",
                        n.left, n.right
                    ));
                }
                if n.feature as usize >= self.n_features {
                    return Err(format!(
                        "tree {t} node {i}: feature {} but the model has {} features",
                        n.feature, self.n_features
                    ));
                }
            }
        }
        Ok(())
    }

    /// One step down from an internal node: the child `x` leads to. Written without data-
    /// dependent branches where the rule allows, since tree walks are branch-mispredict bound.
    #[inline(always)]
    fn step<const XGB: bool>(n: &Node, x: f32) -> u32 {
        let left = if XGB {
            // NaN compares false, so it goes left only by default.
            (x < n.value as f32) | (x.is_nan() & n.default_left)
        } else {
            let mut v = x as f64;
            if v.is_nan() && n.missing != Missing::NaN {
                v = 0.0;
            }
            if (n.missing == Missing::Zero && (-LGB_ZERO..=LGB_ZERO).contains(&v))
                || (n.missing == Missing::NaN && v.is_nan())
            {
                n.default_left
            } else {
                v <= n.value
            }
        };
        if left { n.left } else { n.right }
    }

    /// Sums every tree's leaf into per-row margins, walking `LANES` rows through a tree
    /// together: independent walks keep several memory loads in flight instead of one chain.
    /// XGBoost sums in f32 (as it does), LightGBM in f64.
    fn margins<const XGB: bool>(&self, rows: &[f32], margin: &mut [f64]) {
        const LANES: usize = 8;
        let nf = self.n_features.max(1);
        let no = self.n_outputs;
        let n_rows = rows.len() / nf;
        let mut acc32 = vec![0f32; LANES * no];
        for base in (0..n_rows).step_by(LANES) {
            let lanes = LANES.min(n_rows - base);
            let m = &mut margin[base * no..(base + lanes) * no];
            for l in 0..lanes {
                m[l * no..(l + 1) * no].copy_from_slice(&self.base_margin);
                for (a, b) in acc32[l * no..(l + 1) * no]
                    .iter_mut()
                    .zip(&self.base_margin)
                {
                    *a = *b as f32;
                }
            }
            for t in &self.trees {
                let nodes = &t.nodes;
                let mut idx = [0u32; LANES];
                loop {
                    let mut moved = false;
                    for l in 0..lanes {
                        let n = &nodes[idx[l] as usize];
                        if n.left != LEAF {
                            let x = rows[(base + l) * nf + n.feature as usize];
                            idx[l] = Self::step::<XGB>(n, x);
                            moved = true;
                        }
                    }
                    if !moved {
                        break;
                    }
                }
                for l in 0..lanes {
                    let v = nodes[idx[l] as usize].value;
                    if XGB {
                        acc32[l * no + t.group] += v as f32;
                    } else {
                        m[l * no + t.group] += v;
                    }
                }
            }
            if XGB {
                for (dst, a) in m.iter_mut().zip(&acc32) {
                    *dst = *a as f64;
                }
            }
        }
    }

    /// Predicts `rows` (row-major, `n_features` each) into `out` (`n_outputs` per row).
    pub fn predict(&self, rows: &[f32], out: &mut [f32]) {
        let nf = self.n_features.max(1);
        let no = self.n_outputs.max(1);
        let n_rows = (rows.len() / nf).min(out.len() / no);
        let rows = &rows[..n_rows * nf];
        let mut margin = vec![0f64; n_rows * no];
        match self.rule {
            Rule::Xgboost => self.margins::<true>(rows, &mut margin),
            Rule::Lightgbm => self.margins::<false>(rows, &mut margin),
        }
        for (m, o) in margin.chunks_exact(no).zip(out.chunks_exact_mut(no)) {
            self.finish(m, o);
        }
    }

    /// Turns one row's margins into outputs.
    pub(crate) fn finish(&self, margin: &[f64], out: &mut [f32]) {
        match self.transform {
            Transform::Identity => out.iter_mut().zip(margin).for_each(|(o, m)| *o = *m as f32),
            Transform::Exp => out
                .iter_mut()
                .zip(margin)
                .for_each(|(o, m)| *o = m.exp() as f32),
            Transform::Sigmoid(k) => match self.rule {
                Rule::Xgboost => out
                    .iter_mut()
                    .zip(margin)
                    .for_each(|(o, m)| *o = 1.0 / (1.0 + (-(*m as f32)).exp())),
                Rule::Lightgbm => out
                    .iter_mut()
                    .zip(margin)
                    .for_each(|(o, m)| *o = (1.0 / (1.0 + (-k * m).exp())) as f32),
            },
            Transform::Softmax => {
                let max = margin.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = margin.iter().map(|m| (m - max).exp()).sum();
                out.iter_mut()
                    .zip(margin)
                    .for_each(|(o, m)| *o = ((m - max).exp() / sum) as f32);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stump(rule: Rule, missing: Missing, default_left: bool) -> Forest {
        let nodes = vec![
            Node {
                feature: 0,
                left: 1,
                right: 2,
                default_left,
                missing,
                value: 0.5,
            },
            Node {
                feature: 0,
                left: LEAF,
                right: LEAF,
                default_left: false,
                missing,
                value: -1.0,
            },
            Node {
                feature: 0,
                left: LEAF,
                right: LEAF,
                default_left: false,
                missing,
                value: 1.0,
            },
        ];
        Forest {
            trees: vec![Tree { nodes, group: 0 }],
            n_features: 1,
            n_outputs: 1,
            base_margin: vec![0.0],
            transform: Transform::Identity,
            rule,
            objective: "reg".into(),
        }
    }

    fn one(f: &Forest, x: f32) -> f32 {
        let mut out = [0f32];
        f.predict(&[x], &mut out);
        out[0]
    }

    #[test]
    fn xgboost_splits_strictly_and_sends_nan_by_default() {
        let f = stump(Rule::Xgboost, Missing::NaN, true);
        assert_eq!(one(&f, 0.4), -1.0);
        assert_eq!(one(&f, 0.5), 1.0, "equal goes right in XGBoost");
        assert_eq!(one(&f, f32::NAN), -1.0);
    }

    #[test]
    fn lightgbm_splits_inclusively_with_missing_types() {
        let f = stump(Rule::Lightgbm, Missing::NaN, false);
        assert_eq!(one(&f, 0.5), -1.0, "equal goes left in LightGBM");
        assert_eq!(one(&f, f32::NAN), 1.0);
        let f = stump(Rule::Lightgbm, Missing::None, false);
        assert_eq!(one(&f, f32::NAN), -1.0, "NaN is 0 without a missing type");
        let mut f = stump(Rule::Lightgbm, Missing::Zero, false);
        f.trees[0].nodes[0].value = -0.5;
        assert_eq!(one(&f, 0.0), 1.0, "zero follows the default direction");
    }

    #[test]
    fn validate_rejects_bad_structure() {
        let mut f = stump(Rule::Xgboost, Missing::NaN, true);
        f.trees[0].nodes[0].left = 7;
        assert!(f.validate().unwrap_err().contains("children"));
        let mut f = stump(Rule::Xgboost, Missing::NaN, true);
        f.trees[0].nodes[0].left = 0;
        assert!(f.validate().is_err(), "a self loop must be refused");
        let mut f = stump(Rule::Xgboost, Missing::NaN, true);
        f.trees[0].nodes[0].feature = 3;
        assert!(f.validate().unwrap_err().contains("feature 3"));
    }
}
