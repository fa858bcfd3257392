//! Weights requantized at load to 8 bits per value with one f32 scale per block of 32 (the
//! layout of GGUF's Q8_0, so a Q8_0 tensor comes through unchanged), so a decode step reads
//! 1.125 bytes per weight instead of 4: decode is bound by reading the weights (see
//! bench/results/llm-2026-12-06.md), and this cuts what it reads 3.5 times. Activations stay
//! f32: quantizing them too (as llama.cpp's Q8 dot products do) moved SmolLM2's logits four
//! times further from the exact model, and they are not what decode waits for.

/// Values per block.
pub const BLOCK: usize = 32;

/// A row-major matrix in 8-bit blocks.
#[derive(Debug, Clone)]
pub struct Q8 {
    /// The values, row after row.
    pub q: Vec<i8>,
    /// One scale per block, row after row.
    pub d: Vec<f32>,
}

use super::simd::multiversion;

multiversion! {
/// Quantizes `x` (a whole number of blocks) into `q` and `d` (per instruction set, so rounding
/// is one vector instruction rather than a call per value).
pub fn quantize_into(x: &[f32], q: &mut Vec<i8>, d: &mut Vec<f32>) {
    for block in x.chunks_exact(BLOCK) {
        let max = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = max / 127.0;
        let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        d.push(scale);
        q.extend(
            block
                .iter()
                .map(|v| (v * inv).round().clamp(-127.0, 127.0) as i8),
        );
    }
}
}

/// `data` (rows of `cols`, `cols` a multiple of [`BLOCK`]) in 8-bit blocks; large matrices
/// in parallel pieces (load time, rayon's shared pool).
pub fn quantize(data: &[f32]) -> Q8 {
    quantize_with(data.len(), |start, len, out| {
        out.extend_from_slice(&data[start..start + len]);
    })
}

/// `len` values (a whole number of blocks) in 8-bit blocks, where `values(start, len, out)`
/// appends values `start..start + len` to `out`: pieces are made, and quantized, in parallel
/// (load time, rayon's shared pool), so the f32 values need never exist all at once.
pub fn quantize_with(len: usize, values: impl Fn(usize, usize, &mut Vec<f32>) + Sync) -> Q8 {
    use rayon::prelude::*;
    const PIECE: usize = BLOCK * 4096;
    let mut q = vec![0i8; len];
    let mut d = vec![0f32; len / BLOCK];
    q.par_chunks_mut(PIECE)
        .zip(d.par_chunks_mut(PIECE / BLOCK))
        .enumerate()
        .for_each(|(i, (qc, dc))| {
            let mut x = Vec::with_capacity(qc.len());
            values(i * PIECE, qc.len(), &mut x);
            let (mut pq, mut pd) = (Vec::with_capacity(qc.len()), Vec::with_capacity(dc.len()));
            quantize_into(&x, &mut pq, &mut pd);
            qc.copy_from_slice(&pq);
            dc.copy_from_slice(&pd);
        });
    Q8 { q, d }
}

multiversion! {
/// The dot product of one quantized row (`wq`, scales `wd`) with an f32 activation row.
pub fn dot_f32(wq: &[i8], wd: &[f32], x: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    for ((w, x), d) in wq.chunks_exact(BLOCK).zip(x.chunks_exact(BLOCK)).zip(wd) {
        // Widen the block first (one vector conversion), then multiply in 16 lanes.
        let mut wf = [0f32; BLOCK];
        for (o, v) in wf.iter_mut().zip(w) {
            *o = f32::from(*v) * d;
        }
        for (wc, xc) in wf.chunks_exact(16).zip(x.chunks_exact(16)) {
            for i in 0..16 {
                acc[i] += wc[i] * xc[i];
            }
        }
    }
    acc.iter().sum()
}
}

multiversion! {
/// One quantized row (`wq`, scales `wd`) against `n` f32 activation rows of `cols` each in
/// `x`: each weight block is widened once for all `n` (a batched decode reads and converts
/// every weight once per step, not once per sequence). Results go to `out[0..n]`.
pub fn dot_rows(wq: &[i8], wd: &[f32], x: &[f32], n: usize, cols: usize, out: &mut [f32]) {
    let widen = |b: usize, wf: &mut [f32; BLOCK]| {
        for (o, v) in wf.iter_mut().zip(&wq[b * BLOCK..(b + 1) * BLOCK]) {
            *o = f32::from(*v) * wd[b];
        }
    };
    widened_rows(wd.len().min(wq.len() / BLOCK), widen, x, n, cols, out);
}
}

/// One weight row, whose block `b` `widen` writes out in f32, against `n` activation rows of
/// `cols` in `x`: rows go in tiles of 8, 4, 2 and 1 whose sums are arrays of constant size, which
/// the compiler keeps in registers across the blocks (a vector of `n` sums lived in memory, and
/// every block stored and reloaded it: a fifth of the 4-bit kernel's samples). Each row sums in
/// the same order whatever the tile. Inlined into its callers, so it compiles at their
/// instruction set.
#[inline(always)]
pub(crate) fn widened_rows(
    blocks: usize,
    widen: impl Fn(usize, &mut [f32; BLOCK]) + Copy,
    x: &[f32],
    n: usize,
    cols: usize,
    out: &mut [f32],
) {
    #[inline(always)]
    fn tile<const R: usize>(
        blocks: usize,
        widen: impl Fn(usize, &mut [f32; BLOCK]),
        x: &[f32],
        cols: usize,
        out: &mut [f32],
    ) -> usize {
        let mut acc = [[0f32; 16]; R];
        for b in 0..blocks {
            let mut wf = [0f32; BLOCK];
            widen(b, &mut wf);
            for (t, a) in acc.iter_mut().enumerate() {
                let xb = &x[t * cols + b * BLOCK..t * cols + (b + 1) * BLOCK];
                for (wc, xc) in wf.chunks_exact(16).zip(xb.chunks_exact(16)) {
                    for i in 0..16 {
                        a[i] += wc[i] * xc[i];
                    }
                }
            }
        }
        for (o, a) in out.iter_mut().zip(&acc) {
            *o = a.iter().sum();
        }
        R
    }
    let mut t = 0;
    while t < n {
        let (x, o) = (&x[t * cols..], &mut out[t..]);
        t += match n - t {
            8.. => tile::<8>(blocks, widen, x, cols, o),
            4..=7 => tile::<4>(blocks, widen, x, cols, o),
            2 | 3 => tile::<2>(blocks, widen, x, cols, o),
            _ => tile::<1>(blocks, widen, x, cols, o),
        };
    }
}

/// Rows `rows` of `m` (of `cols` each) back to f32, into `out`.
pub fn dequantize_rows(m: &Q8, rows: std::ops::Range<usize>, cols: usize, out: &mut [f32]) {
    let per_row = cols / BLOCK;
    for (k, r) in rows.enumerate() {
        let q = &m.q[r * cols..(r + 1) * cols];
        let d = &m.d[r * per_row..(r + 1) * per_row];
        for ((o, qb), s) in out[k * cols..(k + 1) * cols]
            .chunks_exact_mut(BLOCK)
            .zip(q.chunks_exact(BLOCK))
            .zip(d)
        {
            for (o, v) in o.iter_mut().zip(qb) {
                *o = f32::from(*v) * s;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quantized_dot_product_is_close_to_the_exact_one() {
        let mut rng = fastrand::Rng::with_seed(5);
        let w: Vec<f32> = (0..256).map(|_| rng.f32() * 2.0 - 1.0).collect();
        let x: Vec<f32> = (0..256).map(|_| rng.f32() * 4.0 - 2.0).collect();
        let exact: f32 = w.iter().zip(&x).map(|(a, b)| a * b).sum();
        let qw = quantize(&w);
        let got = dot_f32(&qw.q, &qw.d, &x);
        let mut two = [0f32; 2];
        let xx: Vec<f32> = x.iter().chain(&x).copied().collect();
        dot_rows(&qw.q, &qw.d, &xx, 2, 256, &mut two);
        assert!(
            (two[0] - got).abs() < 1e-3 && (two[1] - got).abs() < 1e-3,
            "{two:?} {got}"
        );
        let scale: f32 = w.iter().zip(&x).map(|(a, b)| (a * b).abs()).sum();
        assert!((got - exact).abs() < 0.005 * scale, "{got} vs {exact}");
        let mut back = vec![0f32; 256];
        dequantize_rows(&qw, 0..1, 256, &mut back);
        for (a, b) in w.iter().zip(&back) {
            assert!((a - b).abs() <= 1.0 / 127.0, "{a} {b}");
        }
    }

    #[test]
    fn a_zero_block_stays_zero() {
        let q = quantize(&[0.0; 32]);
        assert_eq!(q.d, vec![0.0]);
        assert!(q.q.iter().all(|&v| v == 0));
    }

    #[test]
    fn every_row_tile_gives_each_row_what_it_gives_alone() {
        let mut rng = fastrand::Rng::with_seed(6);
        let cols = 4 * BLOCK;
        let w: Vec<f32> = (0..cols).map(|_| rng.f32() * 2.0 - 1.0).collect();
        let qw = quantize(&w);
        let x: Vec<f32> = (0..19 * cols).map(|_| rng.f32() * 4.0 - 2.0).collect();
        let alone: Vec<f32> = x
            .chunks_exact(cols)
            .map(|row| {
                let mut o = [0f32; 1];
                dot_rows(&qw.q, &qw.d, row, 1, cols, &mut o);
                o[0]
            })
            .collect();
        for n in 1..=19 {
            let mut out = vec![0f32; n];
            dot_rows(&qw.q, &qw.d, &x[..n * cols], n, cols, &mut out);
            assert_eq!(out, alone[..n], "{n} rows");
        }
    }
}
