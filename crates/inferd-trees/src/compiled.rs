//! The fast path: every tree re-laid out as a perfect binary tree, walked branch-free.
//!
//! A tree of depth `d` becomes `2^d - 1` split nodes in breadth-first order plus `2^d` leaves;
//! a leaf that sits higher up is copied into every leaf slot below it (and the split nodes above
//! those copies route arbitrarily), so every walk takes exactly `d` steps of
//! `i = 2i + 1 + right`, with no "is this a leaf" test and no data-dependent branch. Each split
//! is folded into one f32 comparison, `right = x >= t`, plus a missing-value rule, exactly
//! equivalent to the library's own:
//!
//! - XGBoost: left iff `x < t` in f32, NaN goes the node's default way;
//! - LightGBM: left iff `(x as f64) <= t` — for an f32 `x` the same as `x < t'` with `t'` the
//!   next f32 above `t` rounded down; NaN (and, for "zero" missing types, `|x| <= 1e-35`) goes
//!   the default way, or the way 0 goes when the node has no missing type.
//!
//! Walks are interleaved eight at a time — eight trees for one row, or one tree for eight rows —
//! so their memory loads overlap instead of forming one long dependency chain. Leaf values are
//! summed per row in tree order, in the precision the library sums in, so results are
//! bit-identical to [`Forest::predict`](crate::Forest::predict)'s walk.
//!
//! On x86-64 CPUs with AVX-512F and BMI2, forests whose trees are at most 6 deep over at most
//! 64 features go through the `simd` kernel instead (same layout at depth 6, same comparisons,
//! same sums; see that module). [`Compiled::new_portable`] leaves it out.

use crate::forest::{Forest, LEAF, Missing, Rule};

#[cfg(target_arch = "x86_64")]
mod simd;

/// Deepest tree laid out this way (a perfect tree of depth 12 has 8191 split nodes).
pub const MAX_DEPTH: u32 = 12;
/// Walks interleaved.
const LANES: usize = 8;
/// Rows evaluated per block (bounds the per-block leaf buffer).
const BLOCK_ROWS: usize = 32;

const FEATURE_MASK: u32 = (1 << 30) - 1;

/// Which missing-value rule a walk applies: none (no NaN in the rows, no zero-as-missing
/// nodes), NaN only, or NaN and LightGBM's zero band.
const NONE: u8 = 0;
const NAN: u8 = 1;
const ZERO_OR_NAN: u8 = 2;
const DEFAULT_RIGHT: u32 = 1 << 30;
const ZERO_MISSING: u32 = 1 << 31;

/// LightGBM's zero band (`|x| <= 1e-35`) as an f32 bound.
fn zero_band() -> f32 {
    round_down(1e-35)
}

/// Largest f32 not above `v`.
fn round_down(v: f64) -> f32 {
    let f = v as f32;
    if f64::from(f) > v { f.next_down() } else { f }
}

#[derive(Clone, Copy, Debug, Default)]
struct PNode {
    /// Goes right iff `x >= t` (for values that are not missing).
    t: f32,
    /// Feature index, [`DEFAULT_RIGHT`], [`ZERO_MISSING`].
    bits: u32,
}

#[derive(Clone, Debug)]
struct Group {
    depth: u32,
    /// Tree numbers (in the forest's order) of the trees in this group.
    trees: Vec<u32>,
    nodes: Vec<PNode>,
    leaves: Vec<f64>,
}

/// Buffers one evaluating thread reuses across calls.
#[derive(Debug, Default)]
pub struct Scratch {
    vals: Vec<f64>,
    margin: Vec<f64>,
    acc32: Vec<f32>,
    acc64: Vec<f64>,
    /// The SIMD kernel's "goes right" bits: packed (16 per chunk), then per tree spread
    /// over its slots.
    words: Vec<u16>,
    slots: Vec<u64>,
}

/// A forest compiled for fast evaluation; see the module documentation.
#[derive(Clone, Debug)]
pub struct Compiled {
    groups: Vec<Group>,
    /// Output index of each tree, in tree order.
    tree_group: Vec<u32>,
    has_zero_missing: bool,
    zero_band: f32,
    /// The whole forest laid out for the AVX-512 kernel, where the CPU and the shape allow.
    #[cfg(target_arch = "x86_64")]
    simd: Option<simd::Kernel>,
}

/// A tree's depth, or `None` past [`MAX_DEPTH`]. Iterative and stopping early: a hostile model
/// file can hold a chain of millions of nodes.
fn depth(nodes: &[crate::forest::Node]) -> Option<u32> {
    let mut max = 0;
    let mut stack = vec![(0usize, 0u32)];
    while let Some((i, d)) = stack.pop() {
        let n = &nodes[i];
        if n.left == LEAF {
            max = max.max(d);
        } else if d == MAX_DEPTH {
            return None;
        } else {
            stack.push((n.left as usize, d + 1));
            stack.push((n.right as usize, d + 1));
        }
    }
    Some(max)
}

/// One tree in the perfect layout of depth `d`.
struct Laid {
    /// `2^d - 1` split slots, breadth first.
    nodes: Vec<PNode>,
    /// `2^d` leaf slots.
    leaves: Vec<f64>,
    /// Slots (below 64) holding a real split rather than padding under a higher leaf.
    real: u64,
}

/// Lays out `nodes` (a tree no deeper than `d`) as a perfect tree of depth `d`, each split
/// folded into `right = x >= t` plus its missing rule under `rule`.
fn lay_out(rule: Rule, nodes: &[crate::forest::Node], d: u32) -> Laid {
    let n_int = (1usize << d) - 1;
    let mut out = Laid {
        nodes: vec![PNode::default(); n_int],
        leaves: vec![0.0; n_int + 1],
        real: 0,
    };
    let mut stack = vec![(0usize, 0usize)]; // (source node, slot in the perfect tree)
    while let Some((src, slot)) = stack.pop() {
        let n = &nodes[src];
        if slot >= n_int {
            // A leaf slot: the source must be a leaf here (`d` is at least the depth).
            out.leaves[slot - n_int] = n.value;
            continue;
        }
        if n.left == LEAF {
            // A leaf above the bottom: both subtrees repeat it.
            out.nodes[slot] = PNode { t: 0.0, bits: 0 };
            stack.push((src, 2 * slot + 1));
            stack.push((src, 2 * slot + 2));
            continue;
        }
        let (t, dr, zm) = match rule {
            Rule::Xgboost => (n.value as f32, !n.default_left, false),
            Rule::Lightgbm => {
                let below = round_down(n.value);
                // left iff x <= below  <=>  right iff x >= next f32 above `below`.
                let t = if below == f32::INFINITY {
                    f32::NAN // nothing is above +inf: never right
                } else {
                    below.next_up()
                };
                match n.missing {
                    // NaN is read as 0: it goes where 0 goes.
                    Missing::None => (t, 0.0 > n.value, false),
                    Missing::NaN => (t, !n.default_left, false),
                    Missing::Zero => (t, !n.default_left, true),
                }
            }
        };
        let mut bits = n.feature & FEATURE_MASK;
        if dr {
            bits |= DEFAULT_RIGHT;
        }
        if zm {
            bits |= ZERO_MISSING;
        }
        out.nodes[slot] = PNode { t, bits };
        if slot < 64 {
            out.real |= 1 << slot;
        }
        stack.push((n.left as usize, 2 * slot + 1));
        stack.push((n.right as usize, 2 * slot + 2));
    }
    out
}

/// The portable walk's layout: trees grouped by depth, each laid out as a perfect tree.
fn portable_groups(forest: &Forest, depths: &[u32]) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    for (t, (tree, &d)) in forest.trees.iter().zip(depths).enumerate() {
        let gi = match groups.iter().position(|g| g.depth == d) {
            Some(i) => i,
            None => {
                groups.push(Group {
                    depth: d,
                    trees: Vec::new(),
                    nodes: Vec::new(),
                    leaves: Vec::new(),
                });
                groups.len() - 1
            }
        };
        let g = &mut groups[gi];
        let laid = lay_out(forest.rule, &tree.nodes, d);
        g.nodes.extend(laid.nodes);
        g.leaves.extend(laid.leaves);
        g.trees.push(t as u32);
    }
    groups
}

impl Compiled {
    /// Compiles a validated forest; `None` when a tree is deeper than [`MAX_DEPTH`] (the
    /// forest's own walk serves those).
    pub fn new(forest: &Forest) -> Option<Compiled> {
        Compiled::build(forest, true)
    }

    /// [`Compiled::new`] without the SIMD kernel: the portable walk only (for tests and
    /// benchmarks that compare the two).
    pub fn new_portable(forest: &Forest) -> Option<Compiled> {
        Compiled::build(forest, false)
    }

    /// Whether the SIMD kernel serves this forest (instead of the portable walk).
    pub fn uses_simd(&self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            self.simd.is_some()
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    fn build(forest: &Forest, allow_simd: bool) -> Option<Compiled> {
        let depths = forest
            .trees
            .iter()
            .map(|t| depth(&t.nodes))
            .collect::<Option<Vec<u32>>>()?;
        #[cfg(target_arch = "x86_64")]
        let simd = if allow_simd {
            simd::Kernel::new(forest, &depths)
        } else {
            None
        };
        #[cfg(not(target_arch = "x86_64"))]
        let simd: Option<()> = {
            let _ = allow_simd;
            None
        };
        // The portable layout only where the kernel does not serve the forest.
        let groups = if simd.is_some() {
            Vec::new()
        } else {
            portable_groups(forest, &depths)
        };
        let has_zero_missing = forest.rule == Rule::Lightgbm
            && forest
                .trees
                .iter()
                .flat_map(|t| &t.nodes)
                .any(|n| n.left != LEAF && n.missing == Missing::Zero);
        Some(Compiled {
            groups,
            tree_group: forest.trees.iter().map(|t| t.group as u32).collect(),
            has_zero_missing,
            zero_band: zero_band(),
            #[cfg(target_arch = "x86_64")]
            simd,
        })
    }

    /// The missing-value rule a block of rows needs: rows without NaN (the common case) skip
    /// it entirely, unless some node treats zeros as missing.
    fn missing_mode(&self, block: &[f32]) -> u8 {
        if self.has_zero_missing {
            ZERO_OR_NAN
        } else if block.iter().any(|x| x.is_nan()) {
            NAN
        } else {
            NONE
        }
    }

    /// Predicts `rows` (row-major, `n_features` each) into `out` (`n_outputs` per row), exactly
    /// as [`Forest::predict`] does; `forest` is the one this was compiled from.
    pub fn predict(&self, forest: &Forest, rows: &[f32], out: &mut [f32]) {
        self.predict_with(forest, rows, out, &mut Scratch::default());
    }

    /// [`Compiled::predict`] with caller-kept buffers, so repeated calls allocate nothing.
    pub fn predict_with(&self, forest: &Forest, rows: &[f32], out: &mut [f32], s: &mut Scratch) {
        #[cfg(target_arch = "x86_64")]
        if let Some(k) = &self.simd {
            return k.predict(self, forest, rows, out, s);
        }
        let nf = forest.n_features.max(1);
        let no = forest.n_outputs.max(1);
        let n_rows = (rows.len() / nf).min(out.len() / no);
        let n_trees = self.tree_group.len();
        s.vals.clear();
        s.vals.resize(BLOCK_ROWS.min(n_rows.max(1)) * n_trees, 0.0);
        s.margin.clear();
        s.margin.resize(no, 0.0);
        s.acc32.clear();
        s.acc32.resize(no, 0.0);
        let (vals, margin, acc32) = (&mut s.vals[..], &mut s.margin[..], &mut s.acc32[..]);
        for r0 in (0..n_rows).step_by(BLOCK_ROWS) {
            let nr = BLOCK_ROWS.min(n_rows - r0);
            let block = &rows[r0 * nf..(r0 + nr) * nf];
            let mode = self.missing_mode(block);
            for g in &self.groups {
                match mode {
                    NONE => self.walk::<NONE>(g, block, nf, nr, n_trees, vals),
                    NAN => self.walk::<NAN>(g, block, nf, nr, n_trees, vals),
                    _ => self.walk::<ZERO_OR_NAN>(g, block, nf, nr, n_trees, vals),
                }
            }
            for r in 0..nr {
                let v = &vals[r * n_trees..(r + 1) * n_trees];
                match forest.rule {
                    Rule::Xgboost => {
                        for (a, b) in acc32.iter_mut().zip(&forest.base_margin) {
                            *a = *b as f32;
                        }
                        for (x, &grp) in v.iter().zip(&self.tree_group) {
                            acc32[grp as usize] += *x as f32;
                        }
                        for (m, a) in margin.iter_mut().zip(acc32.iter()) {
                            *m = f64::from(*a);
                        }
                    }
                    Rule::Lightgbm => {
                        margin.copy_from_slice(&forest.base_margin);
                        for (x, &grp) in v.iter().zip(&self.tree_group) {
                            margin[grp as usize] += *x;
                        }
                    }
                }
                let row = r0 + r;
                forest.finish(margin, &mut out[row * no..(row + 1) * no]);
            }
        }
    }

    /// Walks every (tree of `g`, row of `block`) pair, eight at a time, tree-major: one row
    /// interleaves eight trees; many rows interleave eight rows of one tree. Writes each leaf
    /// value to `vals[row * n_trees + tree]`.
    #[inline(never)]
    fn walk<const MISSING: u8>(
        &self,
        g: &Group,
        block: &[f32],
        nf: usize,
        nr: usize,
        n_trees: usize,
        vals: &mut [f64],
    ) {
        let d = g.depth;
        let n_int = (1usize << d) - 1;
        let total = g.trees.len() * nr;
        let zb = self.zero_band;
        // Lanes walk (tree, row) pairs in tree-major order; counters instead of divisions.
        let (mut tl, mut r) = (0usize, 0usize);
        let mut lane_tree = [0usize; LANES];
        let mut lane_row = [0usize; LANES];
        let mut p = 0;
        while p < total {
            let k = LANES.min(total - p);
            let mut node_base = [0usize; LANES];
            let mut row_base = [0usize; LANES];
            for l in 0..k {
                lane_tree[l] = tl;
                lane_row[l] = r;
                node_base[l] = tl * n_int;
                row_base[l] = r * nf;
                r += 1;
                if r == nr {
                    r = 0;
                    tl += 1;
                }
            }
            let mut idx = [0usize; LANES];
            for _ in 0..d {
                for l in 0..LANES {
                    let n = g.nodes[node_base[l] + idx[l]];
                    let x = block[row_base[l] + (n.bits & FEATURE_MASK) as usize];
                    let ge = x >= n.t;
                    let right = if MISSING == NONE {
                        ge
                    } else {
                        let dr = n.bits & DEFAULT_RIGHT != 0;
                        let miss = if MISSING == ZERO_OR_NAN {
                            x.is_nan() | ((n.bits & ZERO_MISSING != 0) & (x.abs() <= zb))
                        } else {
                            x.is_nan()
                        };
                        (ge & !miss) | (miss & dr)
                    };
                    idx[l] = 2 * idx[l] + 1 + right as usize;
                }
            }
            for (l, &i) in idx[..k].iter().enumerate() {
                let t = lane_tree[l];
                vals[lane_row[l] * n_trees + g.trees[t] as usize] =
                    g.leaves[t * (n_int + 1) + i - n_int];
            }
            p += k;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forest::{Node, Transform, Tree};

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn unit(&mut self) -> f64 {
            (self.next() >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    /// A random, unbalanced tree over `nf` features with thresholds on a coarse grid (so rows
    /// hit them exactly) and every missing rule.
    fn tree(rng: &mut Rng, nf: usize, max_depth: u32, group: usize) -> Tree {
        fn grow(rng: &mut Rng, nodes: &mut Vec<Node>, nf: usize, depth: u32, max: u32) -> u32 {
            let i = nodes.len();
            nodes.push(Node {
                feature: 0,
                left: LEAF,
                right: LEAF,
                default_left: false,
                missing: Missing::None,
                value: (rng.unit() - 0.5) * 2.0,
            });
            if depth < max && rng.unit() < 0.8 {
                let l = grow(rng, nodes, nf, depth + 1, max);
                let r = grow(rng, nodes, nf, depth + 1, max);
                let missing = match rng.next() % 3 {
                    0 => Missing::None,
                    1 => Missing::Zero,
                    _ => Missing::NaN,
                };
                nodes[i] = Node {
                    feature: (rng.next() % nf as u64) as u32,
                    left: l,
                    right: r,
                    default_left: rng.next().is_multiple_of(2),
                    missing,
                    // Grid values plus an f64 that is not an f32, to test the rounding.
                    value: ((rng.next() % 9) as f64 - 4.0) / 4.0
                        + if rng.next().is_multiple_of(4) {
                            1e-9
                        } else {
                            0.0
                        },
                };
            }
            i as u32
        }
        // Children must come after their parent: grow depth-first (parents first).
        let mut nodes = Vec::new();
        grow(rng, &mut nodes, nf, 0, max_depth);
        Tree { nodes, group }
    }

    fn rows(rng: &mut Rng, n: usize, nf: usize) -> Vec<f32> {
        (0..n * nf)
            .map(|_| match rng.next() % 10 {
                0 => f32::NAN,
                1 => 0.0,
                2 => -0.0,
                3 => 1e-36,
                4 => ((rng.next() % 9) as f32 - 4.0) / 4.0, // exactly on a threshold
                5 => f32::INFINITY,
                _ => (rng.unit() as f32 - 0.5) * 3.0,
            })
            .collect()
    }

    #[test]
    fn compiled_walk_equals_the_reference_walk_bit_for_bit() {
        let mut rng = Rng(0x1234_5678_9abc_def1);
        for rule in [Rule::Xgboost, Rule::Lightgbm] {
            for (n_outputs, transform) in [
                (1, Transform::Sigmoid(1.0)),
                (1, Transform::Identity),
                (3, Transform::Softmax),
            ] {
                // 7, 20, 40 features: one, two and four registers a row in the AVX-512
                // kernel; 70: past it (the portable walk).
                // Trees up to 6 deep (the SIMD kernel's limit; depth 0 is a lone leaf), and
                // up to 9 (the portable walk).
                let shapes = [7, 20, 40, 70]
                    .into_iter()
                    .flat_map(|nf| [(nf, 6), (nf, 9)]);
                for (nf, max_depth) in shapes {
                    let trees: Vec<Tree> = (0..37)
                        .map(|t| tree(&mut rng, nf, t % (max_depth + 1), t as usize % n_outputs))
                        .collect();
                    let forest = Forest {
                        trees,
                        n_features: nf,
                        n_outputs,
                        base_margin: vec![0.25; n_outputs],
                        transform,
                        rule,
                        objective: "test".into(),
                    };
                    forest.validate().unwrap();
                    let simd = Compiled::new(&forest).unwrap();
                    let portable = Compiled::new_portable(&forest).unwrap();
                    assert!(!portable.uses_simd());
                    #[cfg(target_arch = "x86_64")]
                    assert_eq!(
                        simd.uses_simd(),
                        nf <= 64
                            && max_depth <= 6
                            && std::arch::is_x86_feature_detected!("avx512f")
                            && std::arch::is_x86_feature_detected!("bmi2"),
                        "nf={nf} max_depth={max_depth}"
                    );
                    for c in [&simd, &portable] {
                        for n in [1, 3, 8, 31, 32, 33, 100] {
                            let x = rows(&mut rng, n, nf);
                            let mut want = vec![0f32; n * n_outputs];
                            let mut got = vec![0f32; n * n_outputs];
                            forest.predict(&x, &mut want);
                            c.predict(&forest, &x, &mut got);
                            for (i, (a, b)) in want.iter().zip(&got).enumerate() {
                                assert_eq!(
                                    a.to_bits(),
                                    b.to_bits(),
                                    "{rule:?} nf={nf} max_depth={max_depth} n={n} simd={} element {i}: {a} vs {b}",
                                    c.uses_simd()
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_chain_of_a_million_nodes_is_left_to_the_plain_walk_without_recursing() {
        let n = 1_000_000u32;
        let nodes: Vec<Node> = (0..n)
            .map(|i| {
                let last = i + 1 == n;
                Node {
                    feature: 0,
                    left: if last { LEAF } else { i + 1 },
                    right: if last { LEAF } else { i + 1 },
                    default_left: true,
                    missing: Missing::NaN,
                    value: 0.0,
                }
            })
            .collect();
        assert_eq!(depth(&nodes), None);
        assert_eq!(depth(&nodes[n as usize - 1..]), Some(0), "a lone leaf");
    }

    #[test]
    fn trees_deeper_than_the_limit_are_left_to_the_plain_walk() {
        let mut nodes = Vec::new();
        for i in 0..=MAX_DEPTH + 1 {
            let last = i == MAX_DEPTH + 1;
            nodes.push(Node {
                feature: 0,
                left: if last { LEAF } else { 2 * i + 2 },
                right: if last { LEAF } else { 2 * i + 1 },
                default_left: true,
                missing: Missing::NaN,
                value: i as f64,
            });
            if !last {
                nodes.push(Node {
                    feature: 0,
                    left: LEAF,
                    right: LEAF,
                    default_left: true,
                    missing: Missing::NaN,
                    value: -1.0,
                });
            }
        }
        let forest = Forest {
            trees: vec![Tree { nodes, group: 0 }],
            n_features: 1,
            n_outputs: 1,
            base_margin: vec![0.0],
            transform: Transform::Identity,
            rule: Rule::Xgboost,
            objective: "test".into(),
        };
        assert!(Compiled::new(&forest).is_none());
    }
}
