//! Products of stacked activation rows with weight matrices, whatever form the weights are held
//! in (f32, 8-bit blocks, the file's 4-bit blocks), split over the model's threads.
//!
//! Matrices that read the same input (a layer's query, key and value projections; its gate and
//! up projections) are multiplied as one group: the input is quantized once for all of them and
//! their rows are shared out in one parallel pass, where separate products paid a fork-join and
//! a quantization each, and left a thread idle on the small key and value matrices (192 rows,
//! three tasks for two threads, in SmolLM2).

use rayon::prelude::*;

use super::q4::Q4;
use super::q4fine::FineRows;
use super::q8::BLOCK;
use super::q8dot::QRows;
use super::weights::Matrix;

super::simd::multiversion! {
/// `a · b`, vectorised ([`dot16`]) at the CPU's instruction set.
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    dot16(a, b)
}
}

/// `a · b` with sixteen accumulators so the compiler vectorises it; inlined into its callers so
/// it is compiled at their instruction set (kernels call it inside their own multiversioned
/// bodies, with no dispatch per call).
#[inline(always)]
pub(crate) fn dot16(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// From this many input rows on (prefill) the blocked kernel wins; below it (batched decode)
/// its packing costs more than it saves: measured with bench/llm.py, 8 decoding streams ran at
/// 14 tokens/s through it against 45 on the dot loop.
const GEMM_ROWS: usize = 64;

/// Weight rows per parallel task: small enough to share two cores evenly, large enough that
/// scheduling costs nothing next to the arithmetic.
const ROWS_PER_TASK: usize = 64;

/// `x` (`n` rows of `m.cols`) times `m` transposed: `n` rows of `m.rows`.
pub(crate) fn matmul(pool: &rayon::ThreadPool, x: &[f32], n: usize, m: &Matrix) -> Vec<f32> {
    let [out] = matmul_group(pool, x, n, [m]);
    out
}

/// `x` (`n` rows of `cols`) times each of `ms` transposed (all of `cols` columns): for each
/// matrix, `n` rows of its `rows`. Each weight row is read once for all `n` input rows.
pub(crate) fn matmul_group<const N: usize>(
    pool: &rayon::ThreadPool,
    x: &[f32],
    n: usize,
    ms: [&Matrix; N],
) -> [Vec<f32>; N] {
    if n >= GEMM_ROWS {
        return ms.map(|m| gemm(pool, x, n, m));
    }
    // Computed row-major by weight row (each task writes its own contiguous slice), then
    // transposed to one row per token.
    let mut by_row: [Vec<f32>; N] = ms.map(|m| vec![0f32; n * m.rows]);
    let acts = Activations::for_group(x, n, &ms);
    let mut tasks: Vec<(&Matrix, usize, &mut [f32])> = Vec::new();
    for (&m, out) in ms.iter().zip(by_row.iter_mut()) {
        for (b, slice) in out.chunks_mut(n * ROWS_PER_TASK).enumerate() {
            tasks.push((m, b * ROWS_PER_TASK, slice));
        }
    }
    pool.install(|| {
        tasks
            .into_par_iter()
            .for_each(|(m, first, out)| products(m, first, out, &acts));
    });
    std::array::from_fn(|i| transposed(std::mem::take(&mut by_row[i]), n, ms[i].rows))
}

/// The form of the input rows a matrix multiplies with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Input {
    /// As they are.
    F32,
    /// In 8-bit blocks (`activations: int8`).
    Int8,
    /// In two 8-bit levels: one row against 4-bit weights (compute-bound on widening weights
    /// to f32; from two rows on, widening each block once for all rows is cheaper:
    /// bench/llm.py, 8 streams ran at 104 tokens/s on two levels, 170 widened), and any
    /// number of rows against weights repacked in groups of sixteen rows ([`super::x16`]).
    Fine,
}

fn input_for(m: &Matrix, n: usize) -> Input {
    let quantized = m.q8.is_some() || q4_only(m).is_some();
    if quantized && m.int8_act {
        Input::Int8
    } else if (q4_only(m).is_some() && n == 1) || m.x16.is_some() {
        Input::Fine
    } else {
        Input::F32
    }
}

/// The input rows, and the quantized forms of them that the group's matrices ask for, each
/// made once for the whole group, before the parallel pass (made inside it by the first task
/// that needed it, the other thread slept on the lock: one-stream decode ran slower than with a
/// product per matrix).
struct Activations<'a> {
    x: &'a [f32],
    n: usize,
    int8: Option<QRows>,
    fine: Option<FineRows>,
}

impl<'a> Activations<'a> {
    fn for_group(x: &'a [f32], n: usize, ms: &[&Matrix]) -> Activations<'a> {
        let asks = |form| ms.iter().any(|m| input_for(m, n) == form);
        Activations {
            x,
            n,
            int8: asks(Input::Int8).then(|| QRows::quantize(x)),
            fine: asks(Input::Fine).then(|| FineRows::quantize(x)),
        }
    }
}

/// The matrix's 4-bit blocks when they are all it holds.
fn q4_only(m: &Matrix) -> Option<&Q4> {
    m.q4.as_ref().filter(|_| m.data.is_empty())
}

/// Weight rows `first..` of `m` (as many as `out` holds, `n` results each) times every input
/// row.
fn products(m: &Matrix, first: usize, out: &mut [f32], a: &Activations<'_>) {
    let (x, n, cols) = (a.x, a.n, m.cols);
    let per_row = cols / BLOCK;
    let input = input_for(m, n);
    // The repacked copy, where there is one, serves both 4-bit and 8-bit weights.
    if let (Input::Fine, Some(f), Some(x16)) = (input, &a.fine, &m.x16)
        && x16.dot_rows(first, f, n, out)
    {
        return;
    }
    if let Some(x16) = m.x16.as_ref().filter(|_| m.repacked_only()) {
        // All the matrix holds, and its kernel declined (it cannot here: the rows are whole
        // groups and the CPU has it): f32 products from its values.
        let mut w = vec![0f32; cols];
        for (k, o) in out.chunks_exact_mut(n).enumerate() {
            x16.dequantize_rows(first + k..first + k + 1, cols, &mut w);
            for (t, o) in o.iter_mut().enumerate() {
                *o = dot(&w, &x[t * cols..(t + 1) * cols]);
            }
        }
        return;
    }
    if let Some(q4) = q4_only(m) {
        if input == Input::F32 && n > 1 && super::pair::available() {
            let row = |r| {
                let (qs, d, m) = q4.row(r, per_row);
                super::pair::Row::Q4 { qs, d, m }
            };
            return in_pairs(row, first, out, x, n, cols);
        }
        for (k, o) in out.chunks_exact_mut(n).enumerate() {
            let (qs, d, mm) = q4.row(first + k, per_row);
            match (input, &a.int8, &a.fine) {
                (Input::Int8, Some(xq), _) => {
                    super::q4::dot_rows(qs, d, mm, (&xq.q, &xq.d, &xq.s), n, cols, o);
                }
                (Input::Fine, _, Some(f)) => {
                    for (t, o) in o.iter_mut().enumerate() {
                        *o = super::q4fine::dot(qs, d, mm, f.row(t, per_row));
                    }
                }
                _ => super::q4::dot_rows_f32(qs, d, mm, x, n, cols, o),
            }
        }
        return;
    }
    let Some(q) = &m.q8 else {
        let rows = &m.data[first * cols..];
        for (row, o) in rows.chunks_exact(cols).zip(out.chunks_exact_mut(n)) {
            for (t, o) in o.iter_mut().enumerate() {
                *o = dot(row, &x[t * cols..(t + 1) * cols]);
            }
        }
        return;
    };
    if input != Input::Int8 && n > 1 && super::pair::available() {
        let row = |r: usize| super::pair::Row::Q8 {
            q: &q.q[r * cols..(r + 1) * cols],
            d: &q.d[r * per_row..(r + 1) * per_row],
        };
        return in_pairs(row, first, out, x, n, cols);
    }
    for (k, o) in out.chunks_exact_mut(n).enumerate() {
        let r = first + k;
        let (wq, wd) = (
            &q.q[r * cols..(r + 1) * cols],
            &q.d[r * per_row..(r + 1) * per_row],
        );
        match (input, &a.int8) {
            (Input::Int8, Some(xq)) => {
                for (t, o) in o.iter_mut().enumerate() {
                    let (xs, xd) = (
                        &xq.q[t * cols..(t + 1) * cols],
                        &xq.d[t * per_row..(t + 1) * per_row],
                    );
                    *o = super::q8dot::dot(wq, wd, xs, xd);
                }
            }
            _ if n == 1 => o[0] = super::q8::dot_f32(wq, wd, x),
            _ => super::q8::dot_rows(wq, wd, x, n, cols, o),
        }
    }
}

/// Weight rows `first..` (as many as `out` holds, `n` results each) two at a time: each
/// activation vector loaded serves both ([`super::pair`]).
fn in_pairs<'a>(
    row: impl Fn(usize) -> super::pair::Row<'a>,
    first: usize,
    out: &mut [f32],
    x: &[f32],
    n: usize,
    cols: usize,
) {
    for (k, o) in out.chunks_mut(2 * n).enumerate() {
        let r = first + 2 * k;
        let (oa, ob) = o.split_at_mut(n.min(o.len()));
        let b = (!ob.is_empty()).then(|| row(r + 1));
        super::pair::dot_pair(row(r), b, x, n, cols, oa, ob);
    }
}

/// `x · mᵀ` on matrixmultiply's kernels, the weight's rows split over `pool` in slabs.
fn gemm(pool: &rayon::ThreadPool, x: &[f32], n: usize, m: &Matrix) -> Vec<f32> {
    use ndarray::{ArrayView2, ArrayViewMut2};
    const SLAB: usize = 256;
    let xs = ArrayView2::from_shape((n, m.cols), x).expect("x is n rows of m.cols");
    // Each task fills its own slab of output columns, stored [slab][n][width] so the slabs are
    // disjoint slices; then they are interleaved into rows.
    let mut slabs = vec![0f32; n * m.rows];
    pool.install(|| {
        slabs
            .par_chunks_mut(n * SLAB)
            .enumerate()
            .for_each(|(b, out)| {
                let first = b * SLAB;
                let width = SLAB.min(m.rows - first);
                let mut buf = Vec::new();
                let rows: &[f32] = match (&m.q8, q4_only(m)) {
                    (Some(q), _) => {
                        buf.resize(width * m.cols, 0.0);
                        super::q8::dequantize_rows(q, first..first + width, m.cols, &mut buf);
                        &buf
                    }
                    (None, Some(q)) => {
                        buf.resize(width * m.cols, 0.0);
                        q.dequantize_rows(first..first + width, m.cols, &mut buf);
                        &buf
                    }
                    _ if m.repacked_only() => {
                        buf.resize(width * m.cols, 0.0);
                        if let Some(x) = &m.x16 {
                            x.dequantize_rows(first..first + width, m.cols, &mut buf);
                        }
                        &buf
                    }
                    _ => &m.data[first * m.cols..(first + width) * m.cols],
                };
                let w = ArrayView2::from_shape((width, m.cols), rows).expect("whole rows");
                let mut o = ArrayViewMut2::from_shape((n, width), out).expect("n x width");
                ndarray::linalg::general_mat_mul(1.0, &xs, &w.t(), 0.0, &mut o);
            });
    });
    let mut out = vec![0f32; n * m.rows];
    for (b, slab) in slabs.chunks(n * SLAB).enumerate() {
        let width = slab.len() / n;
        for t in 0..n {
            out[t * m.rows + b * SLAB..t * m.rows + b * SLAB + width]
                .copy_from_slice(&slab[t * width..(t + 1) * width]);
        }
    }
    out
}

/// Results computed one weight row at a time (`n` per row) as one row per token.
fn transposed(by_row: Vec<f32>, n: usize, rows: usize) -> Vec<f32> {
    if n == 1 {
        return by_row;
    }
    let mut out = vec![0f32; n * rows];
    for r in 0..rows {
        for t in 0..n {
            out[t * rows + r] = by_row[r * n + t];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(rows: usize, cols: usize, seed: u32) -> Matrix {
        let data = (0..rows * cols)
            .map(|i| (((i as u32).wrapping_mul(2_654_435_761) ^ seed) % 2001) as f32 / 1000.0 - 1.0)
            .collect();
        Matrix {
            rows,
            cols,
            data,
            ..Matrix::default()
        }
    }

    fn reference(x: &[f32], n: usize, m: &Matrix) -> Vec<f32> {
        let mut out = vec![0f32; n * m.rows];
        for t in 0..n {
            for r in 0..m.rows {
                out[t * m.rows + r] = (0..m.cols)
                    .map(|c| x[t * m.cols + c] * m.data[r * m.cols + c])
                    .sum();
            }
        }
        out
    }

    fn pool() -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap()
    }

    #[test]
    fn a_group_gives_each_matrix_what_it_gives_alone() {
        let pool = pool();
        let cols = 64;
        let (a, b, c) = (
            matrix(130, cols, 1),
            matrix(70, cols, 2),
            matrix(64, cols, 3),
        );
        for n in [1, 3, 64] {
            let x = matrix(n, cols, 9).data;
            let exact = [
                reference(&x, n, &a),
                reference(&x, n, &b),
                reference(&x, n, &c),
            ];
            // The same matrices in 8-bit blocks, alone and grouped, give the same bits.
            let q: Vec<Matrix> = [&a, &b, &c]
                .iter()
                .map(|m| (*m).clone().quantized(false))
                .collect();
            let grouped = matmul_group(&pool, &x, n, [&q[0], &q[1], &q[2]]);
            for (i, m) in q.iter().enumerate() {
                assert_eq!(grouped[i], matmul(&pool, &x, n, m), "matrix {i}, {n} rows");
                assert_eq!(grouped[i].len(), n * m.rows);
                for (g, e) in grouped[i].iter().zip(&exact[i]) {
                    assert!((g - e).abs() < 0.05, "matrix {i}, {n} rows: {g} vs {e}");
                }
            }
            // And in f32, within rounding of the plain sums.
            let plain = matmul_group(&pool, &x, n, [&a, &b, &c]);
            for (i, e) in exact.iter().enumerate() {
                for (g, e) in plain[i].iter().zip(e) {
                    assert!((g - e).abs() < 1e-3, "f32 matrix {i}, {n} rows: {g} vs {e}");
                }
            }
        }
    }

    #[test]
    fn a_group_mixing_int8_and_f32_activations_gives_each_what_it_gives_alone() {
        let pool = pool();
        let cols = 64;
        let x = matrix(2, cols, 5).data;
        let mut int8 = matrix(96, cols, 6).quantized(false);
        int8.int8_act = true;
        let plain = matrix(40, cols, 7);
        let out = matmul_group(&pool, &x, 2, [&int8, &plain]);
        assert_eq!(out[0], matmul(&pool, &x, 2, &int8));
        assert_eq!(out[1], matmul(&pool, &x, 2, &plain));
        for (g, e) in out[0].iter().zip(reference(&x, 2, &matrix(96, cols, 6))) {
            assert!((g - e).abs() < 0.1, "int8 activations: {g} vs {e}");
        }
    }
}
