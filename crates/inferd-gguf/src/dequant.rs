//! Dequantization of GGUF tensor data: every block type the loaders read, to f32.

use half::{bf16, f16};

use crate::GgmlType;

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Dequantizes raw tensor data of type `ty` (whole blocks); `None` for unsupported types.
pub fn dequantize(ty: GgmlType, raw: &[u8]) -> Option<Vec<f32>> {
    let (bytes, per) = ty.block()?;
    let (bytes, per) = (bytes as usize, per as usize);
    if !raw.len().is_multiple_of(bytes) {
        return None;
    }
    let mut out = Vec::with_capacity(raw.len() / bytes * per);
    match ty.0 {
        0 => out.extend(
            raw.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        ),
        1 => out.extend(
            raw.chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()),
        ),
        30 => out.extend(
            raw.chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()),
        ),
        2 => {
            for b in raw.chunks_exact(bytes) {
                let d = f16_at(b, 0);
                let qs = &b[2..18];
                out.extend(qs.iter().map(|&q| ((q & 0x0f) as i32 - 8) as f32 * d));
                out.extend(qs.iter().map(|&q| ((q >> 4) as i32 - 8) as f32 * d));
            }
        }
        3 => {
            for b in raw.chunks_exact(bytes) {
                let d = f16_at(b, 0);
                let m = f16_at(b, 2);
                let qs = &b[4..20];
                out.extend(qs.iter().map(|&q| (q & 0x0f) as f32 * d + m));
                out.extend(qs.iter().map(|&q| (q >> 4) as f32 * d + m));
            }
        }
        8 => {
            for b in raw.chunks_exact(bytes) {
                let d = f16_at(b, 0);
                out.extend(b[2..34].iter().map(|&q| q as i8 as f32 * d));
            }
        }
        6 | 7 => {
            for b in raw.chunks_exact(bytes) {
                out.extend_from_slice(&q5_block(ty.0 == 7, b));
            }
        }
        12 | 13 => {
            for b in raw.chunks_exact(bytes) {
                out.extend_from_slice(&q45k_block(ty.0 == 13, b));
            }
        }
        14 => {
            for b in raw.chunks_exact(bytes) {
                out.extend_from_slice(&q6k_block(b));
            }
        }
        _ => return None,
    }
    Some(out)
}

/// One Q5_0 block (scale, 32 high bits, 32 low nibbles; values `d·(q - 16)`) or, with
/// `offset`, one Q5_1 block (scale and offset first; values `d·q + m`).
fn q5_block(offset: bool, b: &[u8]) -> [f32; 32] {
    let d = f16_at(b, 0);
    let (m, at) = if offset { (f16_at(b, 2), 4) } else { (0.0, 2) };
    let qh = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    let qs = &b[at + 4..at + 20];
    let mut y = [0f32; 32];
    for (j, &q) in qs.iter().enumerate() {
        let lo = u32::from(q & 0x0f) | (((qh >> j) & 1) << 4);
        let hi = u32::from(q >> 4) | (((qh >> (j + 16)) & 1) << 4);
        let (lo, hi) = if offset {
            (lo as f32 * d + m, hi as f32 * d + m)
        } else {
            ((lo as i32 - 16) as f32 * d, (hi as i32 - 16) as f32 * d)
        };
        y[j] = lo;
        y[j + 16] = hi;
    }
    y
}

/// Scale and minimum `j` (0..8) of a K-quant super-block's twelve packed 6-bit bytes.
fn k_scale_min(j: usize, s: &[u8]) -> (f32, f32) {
    let (sc, m) = if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    };
    (f32::from(sc), f32::from(m))
}

/// One Q4_K super-block (256 values: scale, minimum scale, eight 6-bit sub-block scales and
/// minimums, 4-bit values) or, with `fifth_bit`, one Q5_K block (the same plus a fifth bit per
/// value, stored before the nibbles). Values are `d·sc·q - dmin·m` per 32-value sub-block.
fn q45k_block(fifth_bit: bool, b: &[u8]) -> [f32; 256] {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    let (qh, qs) = if fifth_bit {
        (&b[16..48], &b[48..176])
    } else {
        (&b[0..0], &b[16..144])
    };
    let mut y = [0f32; 256];
    for (k, q) in qs.chunks_exact(32).enumerate() {
        // Each 32 bytes hold two sub-blocks: low nibbles, then high nibbles.
        let (sc1, m1) = k_scale_min(2 * k, scales);
        let (sc2, m2) = k_scale_min(2 * k + 1, scales);
        for (l, &v) in q.iter().enumerate() {
            let (mut lo, mut hi) = (v & 0x0f, v >> 4);
            if fifth_bit {
                lo |= ((qh[l] >> (2 * k)) & 1) << 4;
                hi |= ((qh[l] >> (2 * k + 1)) & 1) << 4;
            }
            y[64 * k + l] = d * sc1 * f32::from(lo) - dmin * m1;
            y[64 * k + 32 + l] = d * sc2 * f32::from(hi) - dmin * m2;
        }
    }
    y
}

/// One Q6_K super-block (256 values: low nibbles, high 2-bit pairs, sixteen 8-bit sub-block
/// scales, then the f16 scale). Values are `d·sc·(q - 32)` per 16-value sub-block.
fn q6k_block(b: &[u8]) -> [f32; 256] {
    let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
    let d = f16_at(b, 208);
    let mut y = [0f32; 256];
    for half in 0..2 {
        let (ql, qh, sc) = (&ql[64 * half..], &qh[32 * half..], &sc[8 * half..]);
        let y = &mut y[128 * half..];
        for l in 0..32 {
            let is = l / 16;
            let q = [
                (ql[l] & 0x0f) | ((qh[l] & 3) << 4),
                (ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4),
                (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4),
                (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4),
            ];
            for (i, q) in q.into_iter().enumerate() {
                y[l + 32 * i] = d * f32::from(sc[is + 2 * i] as i8) * (i32::from(q) - 32) as f32;
            }
        }
    }
    y
}
