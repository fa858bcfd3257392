//! Tree ensembles of `TreeEnsembleClassifier` and `TreeEnsembleRegressor` (ai.onnx.ml 1 and 3,
//! with the `*_as_tensor` double forms). Trees are checked at load (ids, children, cycles,
//! feature and class indices) and walked with onnxruntime's comparisons: thresholds and sums in
//! float, or in double for the `_as_tensor` forms; NaN takes the true branch where
//! `nodes_missing_value_tracks_true` says so, and otherwise whatever the comparison gives.

use std::collections::HashMap;

use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

use super::fast_tree::Fast;

/// The compiled form of an ensemble, made on first use for the row width then seen.
pub(super) type FastCache = std::sync::OnceLock<(usize, Option<Fast>)>;

/// A split's comparison; the row goes to the true branch when it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `x <= t`.
    Leq,
    /// `x < t`.
    Lt,
    /// `x >= t`.
    Gte,
    /// `x > t`.
    Gt,
    /// `x == t`.
    Eq,
    /// `x != t`.
    Neq,
    /// A leaf.
    Leaf,
}

impl Mode {
    fn parse(s: &str) -> TractResult<Mode> {
        Ok(match s {
            "BRANCH_LEQ" => Mode::Leq,
            "BRANCH_LT" => Mode::Lt,
            "BRANCH_GTE" => Mode::Gte,
            "BRANCH_GT" => Mode::Gt,
            "BRANCH_EQ" => Mode::Eq,
            "BRANCH_NEQ" => Mode::Neq,
            "LEAF" => Mode::Leaf,
            other => bail!("unknown node mode '{other}'"),
        })
    }

    #[inline(always)]
    fn holds<T: PartialOrd>(self, x: T, t: T) -> bool {
        match self {
            Mode::Leq => x <= t,
            Mode::Lt => x < t,
            Mode::Gte => x >= t,
            Mode::Gt => x > t,
            Mode::Eq => x == t,
            Mode::Neq => x != t,
            Mode::Leaf => false,
        }
    }
}

/// How leaf weights of the trees combine into a target's score.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Aggregate {
    /// Sum.
    Sum,
    /// Sum divided by the number of trees.
    Average,
    /// Smallest weight.
    Min,
    /// Largest weight.
    Max,
}

impl Aggregate {
    pub(super) fn parse(s: &str) -> TractResult<Aggregate> {
        Ok(match s {
            "SUM" => Aggregate::Sum,
            "AVERAGE" => Aggregate::Average,
            "MIN" => Aggregate::Min,
            "MAX" => Aggregate::Max,
            other => bail!("unknown aggregate_function '{other}'"),
        })
    }
}

/// One node, with absolute indices of its children.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Node {
    pub(super) feature: u32,
    pub(super) mode: Mode,
    pub(super) threshold: f64,
    pub(super) on_true: u32,
    pub(super) on_false: u32,
    pub(super) nan_true: bool,
    /// Leaf weights: `weights[first..last]`.
    pub(super) first: u32,
    pub(super) last: u32,
}

/// A tree ensemble's structure and leaf weights, ready to walk.
#[derive(Clone, Debug, PartialEq)]
pub struct Ensemble {
    pub(super) nodes: Vec<Node>,
    pub(super) roots: Vec<u32>,
    /// `(target, weight)` of every leaf, grouped by leaf.
    pub(super) weights: Vec<(u32, f64)>,
    /// Targets (regressor) or classes (classifier).
    pub n_targets: usize,
    /// How weights combine.
    pub aggregate: Aggregate,
    /// Added to each target's score at the end (empty: none).
    pub base: Vec<f64>,
    /// Thresholds and sums in double (`*_as_tensor`), else in float.
    pub double: bool,
    /// Features a row must have.
    pub n_features: usize,
}

/// Reads a float attribute or its `_as_tensor` double form.
pub(super) fn floats_or_doubles(
    node: &NodeProto,
    name: &str,
) -> TractResult<Option<(Vec<f64>, bool)>> {
    if let Some(t) =
        node.get_attr_opt::<&tract_onnx::pb::TensorProto>(&format!("{name}_as_tensor"))?
    {
        let t =
            tract_onnx::tensor::load_tensor(&tract_onnx::data_resolver::MmapDataResolver, t, None)?;
        let t = t.cast_to::<f64>()?;
        return Ok(Some((super::slice::<f64>(&t)?.to_vec(), true)));
    }
    Ok(node
        .get_attr_opt_vec::<f32>(name)?
        .map(|v| (v.into_iter().map(f64::from).collect(), false)))
}

fn ints(node: &NodeProto, name: &str, n: usize) -> TractResult<Vec<i64>> {
    let v: Vec<i64> = node.get_attr_vec(name)?;
    if v.len() != n {
        bail!("attribute '{name}' has {} values, expected {n}", v.len());
    }
    Ok(v)
}

/// The leaf attributes: `class_*` for classifiers, `target_*` for regressors.
pub(super) struct LeafAttrs {
    trees: Vec<i64>,
    nodes: Vec<i64>,
    ids: Vec<i64>,
    weights: Vec<f64>,
    double: bool,
}

pub(super) fn leaf_attrs(node: &NodeProto, prefix: &str) -> TractResult<LeafAttrs> {
    let ids: Vec<i64> = node.get_attr_vec(&format!("{prefix}_ids"))?;
    let n = ids.len();
    let (weights, double) = floats_or_doubles(node, &format!("{prefix}_weights"))?
        .ok_or_else(|| format_err!("attribute '{prefix}_weights' is missing"))?;
    if weights.len() != n {
        bail!(
            "'{prefix}_weights' has {} values, expected {n}",
            weights.len()
        );
    }
    Ok(LeafAttrs {
        trees: ints(node, &format!("{prefix}_treeids"), n)?,
        nodes: ints(node, &format!("{prefix}_nodeids"), n)?,
        ids,
        weights,
        double,
    })
}

impl Ensemble {
    /// Builds the ensemble from a v1/v3 node's attributes; `n_targets` bounds the leaf ids.
    pub(super) fn parse(
        node: &NodeProto,
        leaves: LeafAttrs,
        n_targets: usize,
        aggregate: Aggregate,
    ) -> TractResult<Ensemble> {
        let tree_ids: Vec<i64> = node.get_attr_vec("nodes_treeids")?;
        let n = tree_ids.len();
        if n == 0 {
            bail!("the ensemble has no nodes");
        }
        let node_ids = ints(node, "nodes_nodeids", n)?;
        let features = ints(node, "nodes_featureids", n)?;
        let trues = ints(node, "nodes_truenodeids", n)?;
        let falses = ints(node, "nodes_falsenodeids", n)?;
        let modes: Vec<String> = node.get_attr_vec("nodes_modes")?;
        if modes.len() != n {
            bail!(
                "attribute 'nodes_modes' has {} values, expected {n}",
                modes.len()
            );
        }
        let (thresholds, double_t) = floats_or_doubles(node, "nodes_values")?
            .ok_or_else(|| format_err!("attribute 'nodes_values' is missing"))?;
        if thresholds.len() != n {
            bail!(
                "attribute 'nodes_values' has {} values, expected {n}",
                thresholds.len()
            );
        }
        let nan_true: Vec<i64> = node
            .get_attr_opt_vec("nodes_missing_value_tracks_true")?
            .unwrap_or_else(|| vec![0; n]);
        if nan_true.len() != n {
            bail!(
                "attribute 'nodes_missing_value_tracks_true' has {} values, expected {n}",
                nan_true.len()
            );
        }

        let mut index: HashMap<(i64, i64), u32> = HashMap::with_capacity(n);
        // As onnxruntime: trees in the order they first appear, each rooted at its first node.
        let mut roots: Vec<u32> = Vec::new();
        let mut seen_trees = std::collections::HashSet::new();
        for i in 0..n {
            if index.insert((tree_ids[i], node_ids[i]), i as u32).is_some() {
                bail!("tree {} has node id {} twice", tree_ids[i], node_ids[i]);
            }
            if seen_trees.insert(tree_ids[i]) {
                roots.push(i as u32);
            }
        }

        // Leaf weights grouped by leaf, in attribute order within a leaf.
        let mut by_leaf: HashMap<u32, Vec<(u32, f64)>> = HashMap::new();
        for k in 0..leaves.ids.len() {
            let &at = index
                .get(&(leaves.trees[k], leaves.nodes[k]))
                .ok_or_else(|| {
                    format_err!(
                        "a leaf weight names tree {} node {}, which does not exist",
                        leaves.trees[k],
                        leaves.nodes[k]
                    )
                })?;
            let id = leaves.ids[k];
            if id < 0 || id as usize >= n_targets {
                bail!("a leaf weight is for target/class {id}, but there are {n_targets}");
            }
            by_leaf
                .entry(at)
                .or_default()
                .push((id as u32, leaves.weights[k]));
        }

        let mut nodes = Vec::with_capacity(n);
        let mut weights = Vec::with_capacity(leaves.ids.len());
        let mut n_features = 0usize;
        for i in 0..n {
            let mode = Mode::parse(&modes[i])?;
            let child = |id: i64| -> TractResult<u32> {
                index.get(&(tree_ids[i], id)).copied().ok_or_else(|| {
                    format_err!(
                        "tree {} node {}: child {id} does not exist",
                        tree_ids[i],
                        node_ids[i]
                    )
                })
            };
            let (on_true, on_false) = if mode == Mode::Leaf {
                (0, 0)
            } else {
                (child(trues[i])?, child(falses[i])?)
            };
            if mode != Mode::Leaf {
                if features[i] < 0 {
                    bail!(
                        "tree {} node {}: negative feature id",
                        tree_ids[i],
                        node_ids[i]
                    );
                }
                n_features = n_features.max(features[i] as usize + 1);
            }
            let first = weights.len() as u32;
            if mode == Mode::Leaf
                && let Some(w) = by_leaf.remove(&(i as u32))
            {
                if n_targets == 1 {
                    // onnxruntime's single-target path reads only a leaf's first weight.
                    weights.extend(w.into_iter().take(1));
                } else {
                    weights.extend(w);
                }
            } else if mode == Mode::Leaf {
                bail!(
                    "tree {} node {} is a leaf without a weight",
                    tree_ids[i],
                    node_ids[i]
                );
            }
            nodes.push(Node {
                feature: features[i].max(0) as u32,
                mode,
                threshold: thresholds[i],
                on_true,
                on_false,
                nan_true: nan_true[i] != 0,
                first,
                last: weights.len() as u32,
            });
        }
        // Weights on a node that is not a leaf are ignored, as onnxruntime ignores them.
        let ensemble = Ensemble {
            nodes,
            roots,
            weights,
            n_targets,
            aggregate,
            base: Vec::new(),
            double: double_t || leaves.double,
            n_features,
        };
        ensemble.check_acyclic()?;
        Ok(ensemble)
    }

    /// Refuses trees whose walk could loop: every path from a root must end at a leaf.
    pub(super) fn check_acyclic(&self) -> TractResult<()> {
        // 0: unseen, 1: on the current path, 2: done.
        let mut state = vec![0u8; self.nodes.len()];
        for &root in &self.roots {
            let mut stack = vec![(root, false)];
            while let Some((i, leaving)) = stack.pop() {
                let i = i as usize;
                if leaving {
                    state[i] = 2;
                    continue;
                }
                match state[i] {
                    1 => bail!("the trees contain a cycle (through node index {i})"),
                    2 => continue,
                    _ => {}
                }
                state[i] = 1;
                stack.push((i as u32, true));
                let n = &self.nodes[i];
                if n.mode != Mode::Leaf {
                    stack.push((n.on_true, false));
                    stack.push((n.on_false, false));
                }
            }
        }
        Ok(())
    }

    /// The leaf a row reaches from `root`.
    #[inline]
    fn leaf(&self, root: u32, row: &[f32]) -> &Node {
        let mut n = &self.nodes[root as usize];
        while n.mode != Mode::Leaf {
            let x = row[n.feature as usize];
            let go_true = if x.is_nan() {
                n.nan_true
                    || (self.double && n.mode.holds(x as f64, n.threshold))
                    || (!self.double && n.mode.holds(x, n.threshold as f32))
            } else if self.double {
                n.mode.holds(x as f64, n.threshold)
            } else {
                n.mode.holds(x, n.threshold as f32)
            };
            n = &self.nodes[if go_true { n.on_true } else { n.on_false } as usize];
        }
        n
    }

    /// Per-row aggregated leaf weights, `n_targets` each (averaged for AVERAGE, no base values),
    /// and which targets any reached leaf wrote to: a target no leaf wrote to outputs 0.
    pub fn scores(&self, rows: &[f32], n_rows: usize) -> (Vec<f64>, Vec<bool>) {
        let nt = self.n_targets;
        let nf = rows.len() / n_rows.max(1);
        let mut out = vec![0f64; n_rows * nt];
        let mut has = vec![false; n_rows * nt];
        let mut acc32 = vec![0f32; nt];
        for r in 0..n_rows {
            let row = &rows[r * nf..(r + 1) * nf];
            let score = &mut out[r * nt..(r + 1) * nt];
            let seen = &mut has[r * nt..(r + 1) * nt];
            acc32.iter_mut().for_each(|a| *a = 0.0);
            for &root in &self.roots {
                let leaf = self.leaf(root, row);
                for &(t, w) in &self.weights[leaf.first as usize..leaf.last as usize] {
                    let t = t as usize;
                    // Sums in the thresholds' precision (float unless `_as_tensor`), as onnxruntime.
                    match (self.aggregate, self.double) {
                        (Aggregate::Sum | Aggregate::Average, true) => score[t] += w,
                        (Aggregate::Sum | Aggregate::Average, false) => acc32[t] += w as f32,
                        (Aggregate::Min, _) => {
                            score[t] = if seen[t] && score[t] <= w {
                                score[t]
                            } else {
                                w
                            }
                        }
                        (Aggregate::Max, _) => {
                            score[t] = if seen[t] && score[t] >= w {
                                score[t]
                            } else {
                                w
                            }
                        }
                    }
                    seen[t] = true;
                }
            }
            if !self.double && matches!(self.aggregate, Aggregate::Sum | Aggregate::Average) {
                for (s, a) in score.iter_mut().zip(&acc32) {
                    *s = *a as f64;
                }
            }
            if self.aggregate == Aggregate::Average {
                let n = self.roots.len().max(1) as f64;
                score.iter_mut().for_each(|s| *s /= n);
            }
        }
        (out, has)
    }

    /// [`Ensemble::scores`] on the compiled kernel when the ensemble compiles (for the row
    /// width it first sees), else on the reference walk.
    pub(super) fn sums(
        &self,
        cache: &FastCache,
        rows: &[f32],
        n_rows: usize,
        cols: usize,
    ) -> (Vec<f64>, Vec<bool>) {
        let (width, fast) = cache.get_or_init(|| (cols, Fast::new(self, cols)));
        let Some(fast) = fast.as_ref().filter(|_| *width == cols) else {
            return self.scores(rows, n_rows);
        };
        let nt = self.n_targets;
        let mut sums = vec![0f32; n_rows * nt];
        fast.sums(rows, &mut sums);
        let div = if self.aggregate == Aggregate::Average {
            self.roots.len().max(1) as f64
        } else {
            1.0
        };
        let out = sums.iter().map(|&s| s as f64 / div).collect();
        let has = (0..n_rows)
            .flat_map(|_| fast.scored.iter().copied())
            .collect();
        (out, has)
    }

    /// A regressor row's final values: base values added, unscored targets 0 (several
    /// targets); for a single target the base value is added whether or not a leaf scored.
    pub(super) fn finish_regression(&self, row: &[f64], seen: &[bool]) -> Vec<f64> {
        if self.n_targets == 1 {
            let origin = if self.base.len() == 1 {
                self.base[0]
            } else {
                0.0
            };
            return vec![row[0] + origin];
        }
        row.iter()
            .zip(seen)
            .enumerate()
            .map(|(k, (&s, &h))| {
                if !h {
                    0.0
                } else if self.base.len() == self.n_targets {
                    s + self.base[k]
                } else {
                    s
                }
            })
            .collect()
    }

    pub(super) fn check_row_width(&self, cols: usize) -> TractResult<()> {
        if cols < self.n_features {
            bail!(
                "the trees read feature {} but rows have {cols} features",
                self.n_features - 1
            );
        }
        Ok(())
    }

    /// Whether every leaf weight is for one and the same class (onnxruntime's binary case).
    pub(super) fn single_class(&self) -> bool {
        let mut ids = self.weights.iter().map(|w| w.0);
        match ids.next() {
            Some(first) => ids.all(|i| i == first),
            None => true,
        }
    }

    /// Whether no leaf weight is negative.
    pub(super) fn weights_all_positive(&self) -> bool {
        self.weights.iter().all(|w| w.1 >= 0.0)
    }
}
