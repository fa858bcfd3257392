//! The AVX-512 kernel, for forests whose trees are at most 6 deep over at most 64 features
//! (XGBoost's default depth; the fraud model).
//!
//! Per row:
//! 1. The row's features fit in (at most) four 512-bit registers, so "the value of each
//!    node's feature" for sixteen nodes at once is one register permute, not sixteen loads.
//!    Every tree's real split nodes (its padding slots left out) are packed sixteen to a
//!    chunk; one permute and one compare per chunk give a bit per node, "goes right",
//!    stored as 16 bits of that tree's word.
//! 2. `pdep` spreads each tree's bits over the slots of a perfect depth-6 tree (padding
//!    slots read as "left": both their subtrees hold the same leaf).
//! 3. Eight trees walk at once, one per 64-bit lane: `j = 2j + bit(j)` six times, a shift, an
//!    and and two adds per level. The leaves are gathered and scattered tree-major.
//!
//! Then, per block of rows, the leaf values are summed per row in tree order (vectorised
//! across rows, so the order of every row's sum is the reference's), in the library's
//! precision. Comparisons and missing-value rules are the portable walk's, lane for lane:
//! `x >= t` (ordered), a missing value (NaN, or LightGBM's zero band on zero-missing nodes)
//! goes the node's default way. So results are bit-identical to the reference walk.
//!
//! `unsafe` here is limited to pointer loads and stores (each in bounds, commented) and the
//! calls into `#[target_feature]` functions, made only through a [`Kernel`], which exists only
//! after the CPU was seen to support AVX-512F and BMI2.
#![allow(unsafe_code)]

use std::arch::x86_64::*;

use super::{Compiled, NAN, NONE, PNode, Scratch, ZERO_OR_NAN, lay_out};
use crate::forest::{Forest, Rule};

/// Nodes per chunk (one 512-bit register of f32).
const CHUNK: usize = 16;
/// Every tree is laid out at this depth (so no deeper tree is taken): 63 split slots, one
/// `u64` of bits.
const DEPTH: u32 = 6;
/// Most features: four registers of sixteen.
const MAX_FEATURES: usize = 64;
/// Trees walked at once.
const LANES: usize = 8;
/// Rows per block (bounds the leaf-value buffer).
const BLOCK_ROWS: usize = 32;

/// Sixteen real split nodes of one tree.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
struct Chunk {
    /// Feature index of each node (lanes past the tree's nodes: 0).
    feature: [i32; CHUNK],
    /// Goes right iff `x >= t` (lanes past the tree's nodes: NaN, never right).
    t: [f32; CHUNK],
}

/// The rest of a [`Chunk`], kept apart so that the chunks proper take two cache lines each
/// (a forest's chunks should stay in L1: the bench model's LightGBM variant has ~300).
#[derive(Clone, Copy, Debug)]
struct Meta {
    /// Lanes whose node sends missing values right.
    default_right: u16,
    /// Lanes whose node treats LightGBM's zero band as missing.
    zero_missing: u16,
    /// Lanes whose feature index is 32 or more (the upper register pair).
    upper: u16,
}

/// A forest laid out for the kernel.
#[derive(Clone, Debug)]
pub(crate) struct Kernel {
    chunks: Vec<Chunk>,
    meta: Vec<Meta>,
    /// Per tree (padded to a multiple of [`LANES`] with empty trees): the byte of the result
    /// bits where its splits' bits start (its at most 63 bits follow).
    first: Vec<u32>,
    /// Per padded tree: the perfect-layout slots that hold real splits, in slot order (=
    /// chunk lane order).
    real: Vec<u64>,
    /// Per padded tree, its 64 leaf slots.
    leaves: Vec<f64>,
    /// Trees, padded.
    padded: usize,
    /// Per output, its trees in order.
    groups: Vec<Vec<u32>>,
    /// Registers one row occupies: 1, 2 or 4.
    regs: usize,
}

impl Kernel {
    /// Lays out `forest` (tree depths `depths`) for the kernel; `None` when the CPU lacks
    /// AVX-512F or BMI2, or a tree is too deep, or there are too many features.
    pub(crate) fn new(forest: &Forest, depths: &[u32]) -> Option<Kernel> {
        let nf = forest.n_features;
        if !(std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("bmi2"))
            || depths.iter().any(|&d| d > DEPTH)
            || nf > MAX_FEATURES
        {
            return None;
        }
        let padded = forest.trees.len().div_ceil(LANES) * LANES;
        let mut k = Kernel {
            chunks: Vec::new(),
            meta: Vec::new(),
            first: Vec::new(),
            real: vec![0; padded],
            leaves: vec![0.0; padded << DEPTH],
            padded,
            groups: (0..forest.n_outputs.max(1))
                .map(|g| {
                    let trees = forest.trees.iter().enumerate();
                    trees
                        .filter(|(_, t)| t.group == g)
                        .map(|(i, _)| i as u32)
                        .collect()
                })
                .collect(),
            regs: match nf {
                0..=16 => 1,
                17..=32 => 2,
                _ => 4,
            },
        };
        // All trees' real splits in one stream, each tree starting on a byte boundary of the
        // result bits (so its bits are one unaligned u64 load), cut into chunks of sixteen.
        let mut stream: Vec<Option<PNode>> = Vec::new();
        k.first = vec![0; padded];
        for (t, tree) in forest.trees.iter().enumerate() {
            let laid = lay_out(forest.rule, &tree.nodes, DEPTH);
            k.real[t] = laid.real;
            k.leaves[t << DEPTH..(t + 1) << DEPTH].copy_from_slice(&laid.leaves);
            stream.resize(stream.len().next_multiple_of(8), None);
            k.first[t] = (stream.len() / 8) as u32;
            stream.extend(
                (0..laid.nodes.len())
                    .filter(|s| laid.real & (1 << s) != 0)
                    .map(|s| Some(laid.nodes[s])),
            );
        }
        stream.resize(stream.len().next_multiple_of(CHUNK), None);
        for f in &mut k.first[forest.trees.len()..] {
            *f = (stream.len() / 8) as u32;
        }
        for nodes in stream.chunks(CHUNK) {
            let mut ch = Chunk {
                feature: [0; CHUNK],
                t: [f32::NAN; CHUNK],
            };
            let mut m = Meta {
                default_right: 0,
                zero_missing: 0,
                upper: 0,
            };
            for (lane, n) in nodes.iter().enumerate() {
                let Some(n) = n else { continue };
                let f = (n.bits & super::FEATURE_MASK) as usize;
                ch.feature[lane] = f as i32;
                ch.t[lane] = n.t;
                if n.bits & super::DEFAULT_RIGHT != 0 {
                    m.default_right |= 1 << lane;
                }
                if n.bits & super::ZERO_MISSING != 0 {
                    m.zero_missing |= 1 << lane;
                }
                if f >= 32 {
                    m.upper |= 1 << lane;
                }
            }
            k.chunks.push(ch);
            k.meta.push(m);
        }
        Some(k)
    }

    /// [`Compiled::predict_with`] on this kernel; `c` is the compiled form it belongs to.
    pub(crate) fn predict(
        &self,
        c: &Compiled,
        forest: &Forest,
        rows: &[f32],
        out: &mut [f32],
        s: &mut Scratch,
    ) {
        let nf = forest.n_features.max(1);
        let no = forest.n_outputs.max(1);
        let n_rows = (rows.len() / nf).min(out.len() / no);
        // Every element is written before it is read (stale `words` bits are never read, see
        // `block`), so the buffers are only sized, not cleared: a batch of one row should not
        // pay for zeroing the leaf-value block.
        fit(&mut s.words, 2 * self.half());
        fit(&mut s.slots, self.padded);
        fit(&mut s.vals, self.padded * BLOCK_ROWS);
        fit(&mut s.acc64, no * BLOCK_ROWS);
        fit(&mut s.acc32, no * BLOCK_ROWS);
        s.margin.clear();
        s.margin.resize(no, 0.0);
        for r0 in (0..n_rows).step_by(BLOCK_ROWS) {
            let nr = BLOCK_ROWS.min(n_rows - r0);
            let block = &rows[r0 * nf..(r0 + nr) * nf];
            let mode = c.missing_mode(block);
            let b = Block {
                block,
                nf,
                nr,
                zero_band: c.zero_band,
            };
            // SAFETY: a `Kernel` exists only where `is_x86_feature_detected!` confirmed
            // AVX-512F and BMI2. The buffers were sized above for `self.padded` trees,
            // `BLOCK_ROWS` rows and `no` outputs; `nr <= BLOCK_ROWS` and `block` holds `nr`
            // rows of `nf <= MAX_FEATURES` features.
            unsafe {
                match (self.regs, mode) {
                    (1, NONE) => self.block::<1, NONE>(&b, s),
                    (1, NAN) => self.block::<1, NAN>(&b, s),
                    (1, _) => self.block::<1, ZERO_OR_NAN>(&b, s),
                    (2, NONE) => self.block::<2, NONE>(&b, s),
                    (2, NAN) => self.block::<2, NAN>(&b, s),
                    (2, _) => self.block::<2, ZERO_OR_NAN>(&b, s),
                    (_, NONE) => self.block::<4, NONE>(&b, s),
                    (_, NAN) => self.block::<4, NAN>(&b, s),
                    (_, _) => self.block::<4, ZERO_OR_NAN>(&b, s),
                }
                match forest.rule {
                    Rule::Xgboost => {
                        let acc = &mut s.acc32;
                        sum::<f32>(forest, &self.groups, &s.vals, self.padded, acc, nr)
                    }
                    Rule::Lightgbm => {
                        let acc = &mut s.acc64;
                        sum::<f64>(forest, &self.groups, &s.vals, self.padded, acc, nr)
                    }
                }
            }
            for r in 0..nr {
                for (g, m) in s.margin.iter_mut().enumerate() {
                    *m = match forest.rule {
                        Rule::Xgboost => f64::from(s.acc32[g * BLOCK_ROWS + r]),
                        Rule::Lightgbm => s.acc64[g * BLOCK_ROWS + r],
                    };
                }
                let row = r0 + r;
                forest.finish(&s.margin, &mut out[row * no..(row + 1) * no]);
            }
        }
    }

    /// Leaf values of every (tree, row) of the block into `s.vals[row * padded + tree]`.
    #[target_feature(enable = "avx512f,bmi2")]
    fn block<const REGS: usize, const MISSING: u8>(&self, b: &Block<'_>, s: &mut Scratch) {
        assert!(
            s.words.len() >= 2 * self.half()
                && s.slots.len() >= self.padded
                && s.vals.len() >= self.padded * BLOCK_ROWS
                && self.leaves.len() >= self.padded << DEPTH
                && self.real.len() >= self.padded
                && b.nr <= BLOCK_ROWS
                && b.block.len() >= b.nr * b.nf
        );
        // Software-pipelined by one row: row r's compares are issued before row r-1's walk,
        // which reads its words back as `u64`s. Read right after the 16-bit stores, they
        // would wait for those stores to commit (no store forwarding into a wider load);
        // one row later they long have. Hence two halves of `words`, by row parity.
        let (words, rest) = s.words.split_at_mut(self.half());
        let halves = [words, &mut rest[..self.half()]];
        let [even, odd] = halves;
        for r in 0..b.nr {
            let (now, prev) = if r.is_multiple_of(2) {
                (&mut *even, &*odd)
            } else {
                (&mut *odd, &*even)
            };
            self.compare::<REGS, MISSING>(b, r, now);
            if r > 0 {
                self.walk(r - 1, prev, &mut s.slots, &mut s.vals);
            }
        }
        if b.nr > 0 {
            let last = if (b.nr - 1).is_multiple_of(2) {
                &*even
            } else {
                &*odd
            };
            self.walk(b.nr - 1, last, &mut s.slots, &mut s.vals);
        }
    }

    /// `words` for one row: 16 bits per chunk, then room for reading eight bytes at the end.
    fn half(&self) -> usize {
        self.chunks.len() + 4
    }

    /// Row `r`'s "goes right" bits, 16 per chunk, into `words[chunk]`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn compare<const REGS: usize, const MISSING: u8>(
        &self,
        b: &Block<'_>,
        r: usize,
        words: &mut [u16],
    ) {
        assert!(words.len() >= self.chunks.len());
        let zb = _mm512_set1_ps(b.zero_band);
        let x = load_row::<REGS>(b.block, b.nf, r);
        for ((ch, m), out) in self.chunks.iter().zip(&self.meta).zip(words.iter_mut()) {
            // SAFETY: `feature` and `t` are 16-element arrays: each load reads exactly them.
            let (idx, t) = unsafe {
                (
                    _mm512_loadu_si512(ch.feature.as_ptr().cast()),
                    _mm512_loadu_ps(ch.t.as_ptr()),
                )
            };
            let v = gather::<REGS>(&x, idx, m.upper);
            let ge = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(v, t);
            let right = if MISSING == NONE {
                ge
            } else {
                let mut miss = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
                if MISSING == ZERO_OR_NAN {
                    let band = _mm512_cmp_ps_mask::<_CMP_LE_OQ>(_mm512_abs_ps(v), zb);
                    miss |= band & m.zero_missing;
                }
                (ge & !miss) | (miss & m.default_right)
            };
            *out = right;
        }
    }

    /// Walks every tree for row `r` from its `words`; its leaf values go to
    /// `vals[r * padded + tree]`.
    #[inline]
    #[target_feature(enable = "avx512f,bmi2")]
    fn walk(&self, r: usize, words: &[u16], slots: &mut [u64], vals: &mut [f64]) {
        assert!(words.len() >= self.half() && slots.len() >= self.padded && r < BLOCK_ROWS);
        // Each tree's packed bits onto its perfect layout's slots, shifted by one so that
        // slot `s` is bit `s + 1` (the walk numbers the root 1). The bits after a tree's
        // own belong to the next trees (or are stale), but `pdep` reads only as many low bits
        // as the tree has real splits.
        for ((&first, real), out) in self.first.iter().zip(&self.real).zip(slots.iter_mut()) {
            // SAFETY: `first <= 2 * chunks.len()` bytes, and `words` holds `chunks.len() + 4`
            // u16s (asserted above): the eight bytes read are inside it.
            let w = unsafe {
                words
                    .as_ptr()
                    .cast::<u8>()
                    .add(first as usize)
                    .cast::<u64>()
                    .read_unaligned()
            };
            *out = _pdep_u64(w, *real) << 1;
        }
        let one = _mm512_set1_epi64(1);
        let lane = _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0);
        for t0 in (0..self.padded).step_by(LANES) {
            // SAFETY: `t0 + LANES <= padded <= slots.len()`.
            let bits = unsafe { _mm512_loadu_si512(slots.as_ptr().add(t0).cast()) };
            let mut j = one;
            for _ in 0..DEPTH {
                let bit = _mm512_and_si512(_mm512_srlv_epi64(bits, j), one);
                j = _mm512_add_epi64(_mm512_add_epi64(j, j), bit);
            }
            // j is 64 + leaf; lane l's leaves start at (t0 + l) * 64.
            let tree = _mm512_add_epi64(_mm512_set1_epi64(t0 as i64), lane);
            let leaf = _mm512_add_epi64(
                _mm512_slli_epi64::<DEPTH>(tree),
                _mm512_sub_epi64(j, _mm512_set1_epi64(1 << DEPTH)),
            );
            // SAFETY: every index is below `padded << DEPTH <= leaves.len()`.
            let v = unsafe { _mm512_i64gather_pd::<8>(leaf, self.leaves.as_ptr()) };
            let at = r * self.padded + t0;
            // SAFETY: `r < BLOCK_ROWS` and `t0 + LANES <= padded`: the eight values end within
            // `BLOCK_ROWS * padded <= vals.len()` (asserted in `block`).
            unsafe { _mm512_storeu_pd(vals.as_mut_ptr().add(at), v) };
        }
    }
}

/// Grows `v` to `n` elements if it is shorter; keeps what is there.
fn fit<T: Copy + Default>(v: &mut Vec<T>, n: usize) {
    if v.len() < n {
        v.resize(n, T::default());
    }
}

struct Block<'a> {
    block: &'a [f32],
    nf: usize,
    nr: usize,
    zero_band: f32,
}

/// The precision a library sums its trees in.
trait Acc: Copy + std::ops::AddAssign {
    fn from_margin(m: f64) -> Self;
    fn from_leaf(v: f64) -> Self;
    /// `a[l] += column(t)[l]` for each tree `t` of `trees` in order, eight rows `l` at once.
    fn sum_columns(a: &mut [Self], trees: &[u32], column: impl Fn(u32) -> __m512d);
}
impl Acc for f32 {
    fn from_margin(m: f64) -> f32 {
        m as f32
    }
    fn from_leaf(v: f64) -> f32 {
        v as f32
    }
    #[inline]
    fn sum_columns(a: &mut [f32], trees: &[u32], column: impl Fn(u32) -> __m512d) {
        let a: &mut [f32; 8] = a.try_into().expect("eight rows");
        // SAFETY: the caller (`sum`) runs only where AVX-512F was detected.
        unsafe { sum_columns_f32(a, trees, column) }
    }
}
impl Acc for f64 {
    fn from_margin(m: f64) -> f64 {
        m
    }
    fn from_leaf(v: f64) -> f64 {
        v
    }
    #[inline]
    fn sum_columns(a: &mut [f64], trees: &[u32], column: impl Fn(u32) -> __m512d) {
        let a: &mut [f64; 8] = a.try_into().expect("eight rows");
        // SAFETY: the caller (`sum`) runs only where AVX-512F was detected.
        unsafe { sum_columns_f64(a, trees, column) }
    }
}

#[inline]
#[target_feature(enable = "avx512f")]
fn sum_columns_f32(a: &mut [f32; 8], trees: &[u32], column: impl Fn(u32) -> __m512d) {
    // SAFETY: `a` is eight f32s.
    let mut acc = unsafe { _mm256_loadu_ps(a.as_ptr()) };
    for &t in trees {
        // `cvtpd_ps` rounds to nearest, as `f64 as f32` does.
        acc = _mm256_add_ps(acc, _mm512_cvtpd_ps(column(t)));
    }
    // SAFETY: `a` is eight f32s.
    unsafe { _mm256_storeu_ps(a.as_mut_ptr(), acc) };
}

#[inline]
#[target_feature(enable = "avx512f")]
fn sum_columns_f64(a: &mut [f64; 8], trees: &[u32], column: impl Fn(u32) -> __m512d) {
    // SAFETY: `a` is eight f64s.
    let mut acc = unsafe { _mm512_loadu_pd(a.as_ptr()) };
    for &t in trees {
        acc = _mm512_add_pd(acc, column(t));
    }
    // SAFETY: `a` is eight f64s.
    unsafe { _mm512_storeu_pd(a.as_mut_ptr(), acc) };
}

/// Sums `vals` (row-major, `padded` per row) per row and output, in tree order, into
/// `acc[g * BLOCK_ROWS + r]`. Eight rows at a time: eight independent chains of additions
/// rather than one.
#[target_feature(enable = "avx512f")]
fn sum<A: Acc>(
    forest: &Forest,
    groups: &[Vec<u32>],
    vals: &[f64],
    padded: usize,
    acc: &mut [A],
    nr: usize,
) {
    const ROWS: usize = 8;
    const _: () = assert!(BLOCK_ROWS.is_multiple_of(ROWS));
    for (g, b) in forest.base_margin.iter().enumerate() {
        acc[g * BLOCK_ROWS..(g + 1) * BLOCK_ROWS].fill(A::from_margin(*b));
    }
    assert!(vals.len() >= BLOCK_ROWS * padded && forest.trees.len() <= padded);
    let p = padded as i64;
    let stride = _mm512_set_epi64(7 * p, 6 * p, 5 * p, 4 * p, 3 * p, 2 * p, p, 0);
    for r0 in (0..nr).step_by(ROWS) {
        let n = ROWS.min(nr - r0);
        if n < ROWS {
            // Fewer than eight rows (a single-row request): one chain of additions per row
            // and output, kept in a register (through memory, each addition would also wait
            // for the previous one's store: ~9 cycles a tree instead of 4).
            for r in r0..r0 + n {
                let row = &vals[r * padded..(r + 1) * padded];
                for (g, trees) in groups.iter().enumerate() {
                    let mut a = acc[g * BLOCK_ROWS + r];
                    for &t in trees {
                        a += A::from_leaf(row[t as usize]);
                    }
                    acc[g * BLOCK_ROWS + r] = a;
                }
            }
            continue;
        }
        // Eight rows' values of one tree are a column of `vals`: one gather. Each output's
        // trees are summed in order in a register (the order within an output is all that
        // the reference's per-row sum fixes).
        let base = _mm512_add_epi64(stride, _mm512_set1_epi64((r0 * padded) as i64));
        for (g, trees) in groups.iter().enumerate() {
            let a = &mut acc[g * BLOCK_ROWS + r0..][..ROWS];
            A::sum_columns(a, trees, |t| {
                let idx = _mm512_add_epi64(base, _mm512_set1_epi64(t as i64));
                // SAFETY: each index is `(r0 + l) * padded + t` with `r0 + l < BLOCK_ROWS` and
                // `t < padded`: inside `vals` (asserted above).
                unsafe { _mm512_i64gather_pd::<8>(idx, vals.as_ptr()) }
            });
        }
    }
}

/// Loads row `r` of `block` into `REGS` registers, zero past the row's `nf` features.
#[inline]
#[target_feature(enable = "avx512f")]
fn load_row<const REGS: usize>(block: &[f32], nf: usize, r: usize) -> [__m512; REGS] {
    let mut x = [_mm512_setzero_ps(); REGS];
    let row = &block[r * nf..(r + 1) * nf];
    for (k, reg) in x.iter_mut().enumerate() {
        let lanes = row.len().saturating_sub(k * CHUNK).min(CHUNK);
        if lanes > 0 {
            let mask = ((1u32 << lanes) - 1) as u16;
            // SAFETY: the mask enables exactly `lanes` elements starting at `k * CHUNK`, all
            // inside `row`; masked-off lanes are not read.
            *reg = unsafe { _mm512_maskz_loadu_ps(mask, row.as_ptr().add(k * CHUNK)) };
        }
    }
    x
}

/// The values of sixteen nodes' features for one row.
#[inline]
#[target_feature(enable = "avx512f")]
fn gather<const REGS: usize>(x: &[__m512; REGS], idx: __m512i, upper: u16) -> __m512 {
    match REGS {
        1 => _mm512_permutexvar_ps(idx, x[0]),
        2 => _mm512_permutex2var_ps(x[0], idx, x[1]),
        _ => {
            let lo = _mm512_permutex2var_ps(x[0], idx, x[1]);
            let hi = _mm512_permutex2var_ps(x[2], idx, x[3]);
            _mm512_mask_blend_ps(upper, lo, hi)
        }
    }
}
