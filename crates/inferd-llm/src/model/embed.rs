//! Token embeddings kept as the file stores them; a lookup dequantizes only its rows.
//!
//! Dequantized whole, SmolLM2's 49152 x 576 table is 113 MB of f32 that a decode step reads a
//! few rows of. Worse, a start touched that memory twice (the table, then a copy to requantize
//! as the tied output projection): on this machine memory first touched after a few idle
//! seconds costs about 2 ms a megabyte, and the first start of a run was 0.6-1.1 s against
//! 0.2 s for the starts right after it (bench/results/llm-2026-12-08-start.md).

use inferd_gguf::GgmlType;

use super::ModelError;
use super::q8::{self, Q8};
use super::weights::Tensors;

/// A `rows` x `cols` embedding table.
#[derive(Debug, Clone)]
pub struct Embeddings {
    /// Vocabulary size.
    pub rows: usize,
    /// Model width.
    pub cols: usize,
    form: Form,
}

#[derive(Debug, Clone)]
enum Form {
    /// Row-major f32 values.
    F32(Vec<f32>),
    /// The file's bytes: `row_bytes` a row of whole blocks of type `ty`.
    Blocks {
        ty: GgmlType,
        raw: Vec<u8>,
        row_bytes: usize,
    },
}

impl Embeddings {
    /// A table of f32 values, row-major.
    pub fn from_f32(rows: usize, cols: usize, data: Vec<f32>) -> Embeddings {
        debug_assert_eq!(data.len(), rows * cols);
        Embeddings {
            rows,
            cols,
            form: Form::F32(data),
        }
    }

    /// The tensor `name` of `f`, checked to be `rows` x `cols`; kept in the file's blocks
    /// where its rows are whole blocks of a type that dequantizes, else as f32.
    pub(crate) fn from_gguf(
        f: &Tensors<'_>,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<Embeddings, ModelError> {
        let (t, raw) = f.matrix_bytes(name, rows, cols)?;
        let whole_blocks = t
            .ggml_type
            .block()
            .filter(|&(_, per)| per > 0 && (cols as u64).is_multiple_of(per));
        if let Some((bytes, per)) = whole_blocks {
            let row_bytes = (cols as u64 / per * bytes) as usize;
            if raw.len() == row_bytes * rows
                && inferd_gguf::dequantize(t.ggml_type, &raw[..row_bytes])
                    .is_some_and(|r| r.len() == cols)
            {
                return Ok(Embeddings {
                    rows,
                    cols,
                    form: Form::Blocks {
                        ty: t.ggml_type,
                        raw: raw.to_vec(),
                        row_bytes,
                    },
                });
            }
        }
        let data = f.dequantize(name)?;
        Ok(Embeddings::from_f32(rows, cols, data))
    }

    /// Appends row `t` (f32) to `out`.
    ///
    /// # Panics
    /// When `t` is not below [`Embeddings::rows`].
    pub fn push_row(&self, t: usize, out: &mut Vec<f32>) {
        self.push_rows(t..t + 1, out);
    }

    /// Appends rows `range` (f32) to `out`.
    fn push_rows(&self, range: std::ops::Range<usize>, out: &mut Vec<f32>) {
        let c = self.cols;
        match &self.form {
            Form::F32(data) => out.extend_from_slice(&data[range.start * c..range.end * c]),
            Form::Blocks { ty, raw, row_bytes } => {
                let bytes = &raw[range.start * row_bytes..range.end * row_bytes];
                // Checked at load: the type dequantizes and rows are whole blocks.
                out.extend(inferd_gguf::dequantize(*ty, bytes).unwrap_or_default());
            }
        }
    }

    /// Every value, row-major.
    pub fn to_f32(&self) -> Vec<f32> {
        match &self.form {
            Form::F32(data) => data.clone(),
            Form::Blocks { .. } => {
                let mut out = Vec::with_capacity(self.rows * self.cols);
                self.push_rows(0..self.rows, &mut out);
                out
            }
        }
    }

    /// Appends values `start..start + len` of the row-major table to `out`.
    pub fn values(&self, start: usize, len: usize, out: &mut Vec<f32>) {
        let c = self.cols;
        let (first, last) = (start / c, (start + len).div_ceil(c));
        let at = out.len();
        self.push_rows(first..last, out);
        out.drain(at..at + start - first * c);
        out.truncate(at + len);
    }

    /// The table in 8-bit blocks (equal to [`q8::quantize`] of [`Embeddings::to_f32`]),
    /// dequantized a piece at a time, never whole. `cols` must be a multiple of [`q8::BLOCK`].
    pub fn to_q8(&self) -> Q8 {
        q8::quantize_with(self.rows * self.cols, |start, len, out| {
            self.values(start, len, out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Q8_0 blocks of `rows` x `cols` (cols a multiple of 32), values from `f`.
    fn q8_0_bytes(rows: usize, cols: usize, f: impl Fn(usize) -> f32) -> Vec<u8> {
        let mut raw = Vec::new();
        for b in 0..rows * cols / 32 {
            let vals: Vec<f32> = (0..32).map(|i| f(b * 32 + i)).collect();
            let max = vals.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = half::f16::from_f32(max / 127.0);
            raw.extend_from_slice(&d.to_le_bytes());
            let inv = if max > 0.0 { 127.0 / max } else { 0.0 };
            raw.extend(vals.iter().map(|v| (v * inv).round() as i8 as u8));
        }
        raw
    }

    fn blocks(rows: usize, cols: usize) -> Embeddings {
        Embeddings {
            rows,
            cols,
            form: Form::Blocks {
                ty: GgmlType(8),
                raw: q8_0_bytes(rows, cols, |i| ((i * 37 % 101) as f32 - 50.0) / 7.0),
                row_bytes: cols / 32 * 34,
            },
        }
    }

    #[test]
    fn a_looked_up_row_equals_the_whole_table_dequantized() {
        let e = blocks(40, 96);
        let all = e.to_f32();
        for t in [0, 1, 17, 39] {
            let mut row = vec![9.0];
            e.push_row(t, &mut row);
            assert_eq!(row[0], 9.0);
            assert_eq!(&row[1..], &all[t * 96..(t + 1) * 96]);
        }
    }

    #[test]
    fn to_q8_equals_quantizing_the_dequantized_table_across_piece_boundaries() {
        // 4100 rows of 96: pieces of 32 x 4096 values end mid-row.
        let e = blocks(4100, 96);
        let (a, b) = (e.to_q8(), q8::quantize(&e.to_f32()));
        assert_eq!(a.q, b.q);
        assert_eq!(a.d, b.d);
        let f = Embeddings::from_f32(4100, 96, e.to_f32()).to_q8();
        assert_eq!(f.q, b.q);
    }

    #[test]
    fn values_mid_row_append_exactly_the_range() {
        let e = blocks(8, 64);
        let all = e.to_f32();
        let mut out = vec![1.0, 2.0];
        e.values(70, 100, &mut out);
        assert_eq!(&out[..2], &[1.0, 2.0]);
        assert_eq!(&out[2..], &all[70..170]);
    }
}
