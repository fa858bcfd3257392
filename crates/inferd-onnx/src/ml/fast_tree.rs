//! ONNX tree ensembles on `inferd-trees`' compiled kernel (perfect-tree layout, branch-free and
//! interleaved walks, AVX-512 where the CPU has it), so an ONNX forest runs as fast as the same
//! forest in XGBoost's own format.
//!
//! The kernel's split is XGBoost's, `left iff x < t` in f32 with NaN going the node's default
//! way; every ONNX comparison but equality folds into it exactly:
//!
//! | ONNX | left (the kernel's) branch | threshold | NaN goes left when |
//! |---|---|---|---|
//! | `x < t` | true | `t` | it tracks true |
//! | `x <= t` | true | next f32 above `t` | it tracks true |
//! | `x >= t` | false | `t` | it does not track true |
//! | `x > t` | false | next f32 above `t` | it does not track true |
//!
//! Forests with equality splits, several weights on a leaf, trees writing several targets,
//! MIN/MAX aggregation or double thresholds keep the reference walk in [`super::tree`].

use inferd_trees::forest::{Forest, LEAF, Missing, Node as TNode, Rule, Transform, Tree};
use inferd_trees::{Predictor, Scratch};

use super::tree::{Aggregate, Ensemble, Mode};

/// A compiled ensemble and which targets its trees write.
#[derive(Debug)]
pub struct Fast {
    predictor: Predictor,
    /// Targets some tree writes (every row reaches a weighted leaf of every tree).
    pub scored: Vec<bool>,
}

impl Fast {
    /// Compiles `e` for rows of `cols` features, when its form allows.
    pub fn new(e: &Ensemble, cols: usize) -> Option<Fast> {
        if e.double
            || !matches!(e.aggregate, Aggregate::Sum | Aggregate::Average)
            || cols < e.n_features
        {
            return None;
        }
        let mut trees = Vec::with_capacity(e.roots.len());
        let mut scored = vec![false; e.n_targets];
        for &root in &e.roots {
            let mut nodes: Vec<TNode> = Vec::new();
            let mut group: Option<u32> = None;
            // Pre-order, so children come after their parent as the forest requires.
            let mut stack = vec![(root, None::<(usize, bool)>)];
            while let Some((i, parent)) = stack.pop() {
                let n = &e.nodes[i as usize];
                let at = nodes.len() as u32;
                if let Some((p, left)) = parent {
                    if left {
                        nodes[p].left = at;
                    } else {
                        nodes[p].right = at;
                    }
                }
                if n.mode == Mode::Leaf {
                    let w = &e.weights[n.first as usize..n.last as usize];
                    let [(target, weight)] = w else { return None };
                    if group.is_some_and(|g| g != *target) {
                        return None;
                    }
                    group = Some(*target);
                    nodes.push(TNode {
                        feature: 0,
                        left: LEAF,
                        right: LEAF,
                        default_left: false,
                        missing: Missing::NaN,
                        value: *weight,
                    });
                    continue;
                }
                let t = n.threshold as f32;
                if !t.is_finite() {
                    return None;
                }
                let (true_left, threshold) = match n.mode {
                    Mode::Lt => (true, t),
                    Mode::Leq => (true, t.next_up()),
                    Mode::Gte => (false, t),
                    Mode::Gt => (false, t.next_up()),
                    _ => return None,
                };
                let (l, r) = if true_left {
                    (n.on_true, n.on_false)
                } else {
                    (n.on_false, n.on_true)
                };
                nodes.push(TNode {
                    feature: n.feature,
                    left: 0,
                    right: 0,
                    default_left: n.nan_true == true_left,
                    missing: Missing::NaN,
                    value: threshold as f64,
                });
                let me = at as usize;
                stack.push((r, Some((me, false))));
                stack.push((l, Some((me, true))));
            }
            let group = group? as usize;
            scored[group] = true;
            trees.push(Tree { nodes, group });
        }
        let forest = Forest {
            trees,
            n_features: cols,
            n_outputs: e.n_targets,
            base_margin: vec![0.0; e.n_targets],
            transform: Transform::Identity,
            rule: Rule::Xgboost,
            objective: "onnx".into(),
        };
        forest.validate().ok()?;
        Some(Fast {
            predictor: Predictor::new(forest),
            scored,
        })
    }

    /// Sums of each row's leaves, `n_targets` per row, in float as onnxruntime sums them.
    pub fn sums(&self, rows: &[f32], out: &mut [f32]) {
        thread_local! {
            // The walk's buffers, kept per thread (the kernel is shared by every instance):
            // made fresh on each call they were a fifth of a one-row call (perf, 2026-12-07).
            static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::default();
        }
        SCRATCH.with(|s| match s.try_borrow_mut() {
            Ok(mut scratch) => self.predictor.predict_with(rows, out, &mut scratch),
            Err(_) => self.predictor.predict(rows, out),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::super::tree::Node;
    use super::*;

    /// A depth-2 tree per (mode, tracks-true) pair, thresholds on values the rows hit exactly.
    fn ensemble() -> Ensemble {
        let mut nodes = Vec::new();
        let mut roots = Vec::new();
        let mut weights = Vec::new();
        let modes = [Mode::Lt, Mode::Leq, Mode::Gte, Mode::Gt];
        for (k, &mode) in modes.iter().enumerate() {
            for nan_true in [false, true] {
                let base = nodes.len() as u32;
                roots.push(base);
                let split = |feature: u32, threshold: f64, t: u32, f: u32| Node {
                    feature,
                    mode,
                    threshold,
                    on_true: t,
                    on_false: f,
                    nan_true,
                    first: 0,
                    last: 0,
                };
                nodes.push(split(k as u32 % 3, 0.5, base + 1, base + 2));
                nodes.push(split(2, -0.25, base + 3, base + 4));
                let w0 = weights.len() as u32;
                for (i, v) in [1.0, 2.0, 4.0].into_iter().enumerate() {
                    weights.push((
                        0u32,
                        v * (k as f64 + 1.0) * if nan_true { -1.0 } else { 1.0 },
                    ));
                    let w = w0 + i as u32;
                    nodes.push(Node {
                        feature: 0,
                        mode: Mode::Leaf,
                        threshold: 0.0,
                        on_true: 0,
                        on_false: 0,
                        nan_true: false,
                        first: w,
                        last: w + 1,
                    });
                }
            }
        }
        Ensemble {
            nodes,
            roots,
            weights,
            n_targets: 1,
            aggregate: Aggregate::Sum,
            base: vec![],
            double: false,
            n_features: 3,
        }
    }

    #[test]
    fn compiled_walk_equals_the_reference_walk_for_every_split_and_nan_rule() {
        let e = ensemble();
        let fast = Fast::new(&e, 3).expect("compiles");
        let values = [f32::NAN, -1.0, -0.25, 0.0, 0.5, 0.5f32.next_up(), 2.0];
        let mut rows = Vec::new();
        for a in values {
            for b in values {
                for c in values {
                    rows.extend([a, b, c]);
                }
            }
        }
        let n = rows.len() / 3;
        let (want, has) = e.scores(&rows, n);
        let mut got = vec![0f32; n];
        fast.sums(&rows, &mut got);
        assert!(has.iter().all(|&h| h) && fast.scored == vec![true]);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(*g as f64, *w, "row {:?}", &rows[i * 3..i * 3 + 3]);
        }
    }

    #[test]
    fn equality_splits_and_multi_weight_leaves_keep_the_reference_walk() {
        let mut e = ensemble();
        e.nodes[0].mode = Mode::Eq;
        assert!(Fast::new(&e, 3).is_none());
        let mut e = ensemble();
        e.nodes[2].last += 1;
        assert!(Fast::new(&e, 3).is_none());
    }
}
