//! The load-time cross-check of `--onnx-backend auto`: the rows both backends run, and how their
//! answers are compared. Pure functions; [`crate::select`] drives them.

use bytes::Bytes;
use half::f16;
use inferd_core::backend::{NamedTensor, TensorSpec};
use inferd_core::tensor::{DataType, Tensor, TensorData, element_count};

/// Absolute and relative tolerance for floating-point outputs (the conformance suite's 1e-4).
pub const TOLERANCE: f64 = 1e-4;
/// Rows in the synthesized batch when the model's batch dimension is free.
const SYNTH_BATCH: usize = 4;
/// Size given to other free dimensions (a sequence length, an image side).
const SYNTH_DIM: usize = 5;

/// Inputs made up from a signature when the config has no warm-up: free dimensions get small
/// sizes, floats are spread over [-2, 2) (tree splits and activations see both signs), integers
/// are 0 or 1 (valid as indices and as categories), strings "0" or "1". Deterministic, so a
/// disagreement found at one load is found at every load.
pub fn synthesize(inputs: &[TensorSpec]) -> Result<Vec<NamedTensor>, String> {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    inputs
        .iter()
        .map(|spec| {
            let shape: Vec<usize> = match &spec.shape {
                Some(s) => s
                    .iter()
                    .enumerate()
                    .map(|(i, &d)| match (i, usize::try_from(d)) {
                        (_, Ok(d)) => d,
                        (0, Err(_)) => SYNTH_BATCH,
                        (_, Err(_)) => SYNTH_DIM,
                    })
                    .collect(),
                None => vec![SYNTH_BATCH],
            };
            let n = element_count(&shape)
                .filter(|&n| n <= 1 << 24)
                .ok_or_else(|| format!("input '{}' is too large to synthesize", spec.name))?;
            let data = fill(spec.dtype, n, &mut rng);
            let tensor = Tensor::new(spec.dtype, shape, data).map_err(|e| e.to_string())?;
            Ok(NamedTensor {
                name: spec.name.clone(),
                tensor,
            })
        })
        .collect()
}

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in [-2, 2).
    fn float(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 * 4.0 - 2.0
    }
}

fn fill(dtype: DataType, n: usize, rng: &mut XorShift) -> TensorData {
    let Some(size) = dtype.size() else {
        let items = (0..n)
            .map(|_| Bytes::from(if rng.next() & 1 == 0 { "0" } else { "1" }))
            .collect();
        return TensorData::Bytes(items);
    };
    let mut raw = Vec::with_capacity(n * size);
    for _ in 0..n {
        match dtype {
            DataType::F32 => raw.extend_from_slice(&(rng.float() as f32).to_le_bytes()),
            DataType::F64 => raw.extend_from_slice(&rng.float().to_le_bytes()),
            DataType::F16 => raw.extend_from_slice(&f16::from_f64(rng.float()).to_le_bytes()),
            DataType::BF16 => {
                raw.extend_from_slice(&half::bf16::from_f64(rng.float()).to_le_bytes())
            }
            _ => {
                // Little-endian 0 or 1 in the type's width.
                let mut bytes = vec![0u8; size];
                bytes[0] = (rng.next() & 1) as u8;
                raw.extend_from_slice(&bytes);
            }
        }
    }
    TensorData::Raw(raw.into())
}

/// How one output of the two backends differs, for the warning.
#[derive(Debug, Clone, PartialEq)]
pub struct Disagreement {
    /// The output's name.
    pub output: String,
    /// What differs (types, shapes, or the first element out of tolerance).
    pub detail: String,
}

/// Compares the outputs of the two backends by name. An output one side lacks is a
/// disagreement; floats agree within [`TOLERANCE`] (absolute or relative, NaN equals NaN,
/// infinities must match), everything else exactly.
pub fn compare(tract: &[NamedTensor], ort: &[NamedTensor]) -> Vec<Disagreement> {
    let mut out = Vec::new();
    for t in tract {
        let Some(o) = ort.iter().find(|o| o.name == t.name) else {
            out.push(Disagreement {
                output: t.name.clone(),
                detail: "ONNX Runtime does not produce it".into(),
            });
            continue;
        };
        if let Some(detail) = differ(&t.tensor, &o.tensor) {
            out.push(Disagreement {
                output: t.name.clone(),
                detail,
            });
        }
    }
    for o in ort {
        if !tract.iter().any(|t| t.name == o.name) {
            out.push(Disagreement {
                output: o.name.clone(),
                detail: "tract does not produce it".into(),
            });
        }
    }
    out
}

fn differ(a: &Tensor, b: &Tensor) -> Option<String> {
    if a.dtype() != b.dtype() {
        return Some(format!(
            "tract gives {}, ONNX Runtime {}",
            a.dtype().as_str(),
            b.dtype().as_str()
        ));
    }
    if a.shape() != b.shape() {
        return Some(format!(
            "tract gives shape {:?}, ONNX Runtime {:?}",
            a.shape(),
            b.shape()
        ));
    }
    match (a.data(), b.data()) {
        (TensorData::Bytes(x), TensorData::Bytes(y)) => {
            let i = x.iter().zip(y).position(|(p, q)| p != q)?;
            Some(format!(
                "element {i}: tract {:?}, ONNX Runtime {:?}",
                String::from_utf8_lossy(&x[i]),
                String::from_utf8_lossy(&y[i])
            ))
        }
        (TensorData::Raw(x), TensorData::Raw(y)) => {
            let floats = |r: &Bytes| -> Option<Vec<f64>> {
                Some(match a.dtype() {
                    DataType::F32 => r
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
                        .collect(),
                    DataType::F64 => r
                        .chunks_exact(8)
                        .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                        .collect(),
                    DataType::F16 => r
                        .chunks_exact(2)
                        .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f64())
                        .collect(),
                    DataType::BF16 => r
                        .chunks_exact(2)
                        .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f64())
                        .collect(),
                    _ => return None,
                })
            };
            match (floats(x), floats(y)) {
                (Some(p), Some(q)) => {
                    // Half precision carries ~3 decimal digits: hold it to its own precision.
                    let tol = match a.dtype() {
                        DataType::F16 | DataType::BF16 => 1e-2,
                        _ => TOLERANCE,
                    };
                    let i = p.iter().zip(&q).position(|(&u, &v)| !close(u, v, tol))?;
                    Some(format!(
                        "element {i}: tract {}, ONNX Runtime {}",
                        p[i], q[i]
                    ))
                }
                _ => {
                    let size = a.dtype().size().unwrap_or(1).max(1);
                    let i = x
                        .chunks(size)
                        .zip(y.chunks(size))
                        .position(|(p, q)| p != q)?;
                    Some(format!(
                        "element {i}: tract {}, ONNX Runtime {}",
                        int_text(a.dtype(), &x[i * size..][..size]),
                        int_text(a.dtype(), &y[i * size..][..size])
                    ))
                }
            }
        }
        _ => Some("the two backends store it differently".into()),
    }
}

fn close(u: f64, v: f64, tol: f64) -> bool {
    if u.is_nan() || v.is_nan() {
        return u.is_nan() && v.is_nan();
    }
    if u.is_infinite() || v.is_infinite() {
        return u == v;
    }
    (u - v).abs() <= tol * (1.0 + v.abs())
}

/// An integer or boolean element as text.
fn int_text(dtype: DataType, b: &[u8]) -> String {
    let mut w = [0u8; 8];
    w[..b.len()].copy_from_slice(b);
    let u = u64::from_le_bytes(w);
    let bits = b.len() * 8;
    match dtype {
        DataType::I8 | DataType::I16 | DataType::I32 | DataType::I64 => {
            // Sign-extend from the element's width.
            (((u << (64 - bits)) as i64) >> (64 - bits)).to_string()
        }
        DataType::Bool => (u != 0).to_string(),
        _ => u.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(name: &str, t: Tensor) -> NamedTensor {
        NamedTensor {
            name: name.into(),
            tensor: t,
        }
    }

    fn f32s(name: &str, v: &[f32]) -> NamedTensor {
        named(name, Tensor::from_f32(vec![v.len()], v).expect("tensor"))
    }

    #[test]
    fn floats_within_tolerance_agree() {
        let a = [f32s("y", &[1.0, 1e6, f32::NAN, f32::NEG_INFINITY])];
        let b = [f32s(
            "y",
            &[1.00001, 1e6 + 50.0, f32::NAN, f32::NEG_INFINITY],
        )];
        assert_eq!(compare(&a, &b), vec![]);
    }

    #[test]
    fn a_float_out_of_tolerance_names_the_output_and_element() {
        let a = [f32s("y", &[1.0, 2.0]), f32s("z", &[0.0])];
        let b = [f32s("y", &[1.0, 2.01]), f32s("z", &[0.0])];
        let d = compare(&a, &b);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].output, "y");
        assert!(d[0].detail.starts_with("element 1:"), "{}", d[0].detail);
    }

    #[test]
    fn infinity_against_a_finite_value_disagrees() {
        let a = [f32s("y", &[f32::MIN])];
        let b = [f32s("y", &[f32::NEG_INFINITY])];
        assert_eq!(compare(&a, &b).len(), 1);
    }

    #[test]
    fn integers_compare_exactly_and_print_signed() {
        let a = [named(
            "l",
            Tensor::from_i64(vec![2], &[1, i64::MAX]).expect("t"),
        )];
        let b = [named(
            "l",
            Tensor::from_i64(vec![2], &[1, i64::MIN]).expect("t"),
        )];
        let d = compare(&a, &b);
        assert_eq!(d.len(), 1);
        assert!(
            d[0].detail.contains(&i64::MIN.to_string()),
            "{}",
            d[0].detail
        );
    }

    #[test]
    fn a_missing_output_or_other_shape_disagrees() {
        let a = [f32s("y", &[1.0, 2.0])];
        let b = [named(
            "y",
            Tensor::from_f32(vec![1, 2], &[1.0, 2.0]).expect("t"),
        )];
        assert!(compare(&a, &b)[0].detail.contains("shape"));
        let c = [f32s("w", &[1.0, 2.0])];
        let d = compare(&a, &c);
        assert_eq!(d.len(), 2);
    }

    #[test]
    fn synthesized_inputs_fill_free_dims_and_stay_deterministic() {
        let specs = [
            TensorSpec {
                name: "x".into(),
                dtype: DataType::F32,
                shape: Some(vec![-1, 3]),
            },
            TensorSpec {
                name: "ids".into(),
                dtype: DataType::I64,
                shape: Some(vec![-1, -1]),
            },
            TensorSpec {
                name: "s".into(),
                dtype: DataType::Bytes,
                shape: None,
            },
        ];
        let a = synthesize(&specs).expect("synth");
        assert_eq!(a[0].tensor.shape(), &[SYNTH_BATCH, 3]);
        assert_eq!(a[1].tensor.shape(), &[SYNTH_BATCH, SYNTH_DIM]);
        assert!(
            a[1].tensor
                .to_i64_vec()
                .expect("i64")
                .iter()
                .all(|v| *v == 0 || *v == 1)
        );
        let xs = a[0].tensor.to_f32_vec().expect("f32");
        assert!(xs.iter().all(|v| (-2.0..2.0).contains(v)));
        assert!(xs.iter().any(|v| *v < 0.0) && xs.iter().any(|v| *v > 0.0));
        assert_eq!(synthesize(&specs).expect("again"), a);
    }
}
