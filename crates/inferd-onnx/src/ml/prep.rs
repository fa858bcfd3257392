//! Element-wise preprocessing: `Scaler`, `Imputer`, `Normalizer`, `Binarizer`.

use std::sync::Arc;

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

use super::{Kernel, OutShape, OutSpec, as_f32, numeric_input, rows_of, slice, tensor};

/// Picks the per-column value of a 1-or-C attribute.
fn per_column(values: &[f32], col: usize) -> f32 {
    if values.len() == 1 {
        values[0]
    } else {
        values[col]
    }
}

/// Checks a 1-or-C attribute against the input's columns.
fn check_columns(op: &str, attr: &str, len: usize, cols: usize) -> TractResult<()> {
    if len != 1 && len != cols {
        bail!("{op}: attribute '{attr}' has {len} values for an input of {cols} columns");
    }
    Ok(())
}

/// `Scaler`: `(x - offset) * scale`, per column or for all.
#[derive(Debug)]
pub struct Scaler {
    offset: Vec<f32>,
    scale: Vec<f32>,
}

pub(super) fn scaler(_: &ParsingContext, node: &NodeProto) -> TractResult<Arc<dyn Kernel>> {
    let offset: Vec<f32> = node
        .get_attr_opt_vec("offset")?
        .unwrap_or_else(|| vec![0.0]);
    let scale: Vec<f32> = node.get_attr_opt_vec("scale")?.unwrap_or_else(|| vec![1.0]);
    if offset.is_empty() || scale.is_empty() {
        bail!("'offset' and 'scale' must not be empty");
    }
    Ok(Arc::new(Scaler { offset, scale }))
}

impl Kernel for Scaler {
    fn name(&self) -> &'static str {
        "Scaler"
    }

    fn outputs(&self, input: DatumType) -> TractResult<Vec<OutSpec>> {
        numeric_input("Scaler", input)?;
        Ok(vec![OutSpec::new(DatumType::F32, OutShape::SameAsInput)])
    }

    fn eval(&self, inputs: &[TValue]) -> TractResult<Vec<Tensor>> {
        let x = &inputs[0];
        let (_, cols) = rows_of(x)?;
        check_columns("Scaler", "offset", self.offset.len(), cols)?;
        check_columns("Scaler", "scale", self.scale.len(), cols)?;
        let v = as_f32(x)?;
        let out = v
            .iter()
            .enumerate()
            .map(|(i, &x)| {
                let c = i % cols.max(1);
                (x - per_column(&self.offset, c)) * per_column(&self.scale, c)
            })
            .collect();
        Ok(vec![tensor(x.shape(), out)?])
    }
}

/// `Imputer`: replaces a value (NaN when the replaced value is NaN) by a per-column value.
#[derive(Debug)]
pub enum Imputer {
    /// Float inputs.
    Float {
        /// Values put in, 1 or one per column.
        imputed: Vec<f32>,
        /// The value replaced.
        replaced: f32,
    },
    /// Int64 inputs.
    Int {
        /// Values put in, 1 or one per column.
        imputed: Vec<i64>,
        /// The value replaced.
        replaced: i64,
    },
}

pub(super) fn imputer(_: &ParsingContext, node: &NodeProto) -> TractResult<Arc<dyn Kernel>> {
    let floats: Option<Vec<f32>> = node.get_attr_opt_vec("imputed_value_floats")?;
    let ints: Option<Vec<i64>> = node.get_attr_opt_vec("imputed_value_int64s")?;
    Ok(Arc::new(match (floats, ints) {
        (Some(imputed), None) if !imputed.is_empty() => Imputer::Float {
            imputed,
            replaced: node.get_attr_opt("replaced_value_float")?.unwrap_or(0.0),
        },
        (None, Some(imputed)) if !imputed.is_empty() => Imputer::Int {
            imputed,
            replaced: node.get_attr_opt("replaced_value_int64")?.unwrap_or(0),
        },
        _ => bail!("exactly one of 'imputed_value_floats' and 'imputed_value_int64s' must be set"),
    }))
}

impl Kernel for Imputer {
    fn name(&self) -> &'static str {
        "Imputer"
    }

    fn outputs(&self, input: DatumType) -> TractResult<Vec<OutSpec>> {
        let dt = match (self, input) {
            (Imputer::Float { .. }, DatumType::F32) => DatumType::F32,
            (Imputer::Int { .. }, DatumType::I64) => DatumType::I64,
            (Imputer::Float { .. }, dt) => {
                bail!("Imputer with float values takes float input, not {dt:?}")
            }
            (Imputer::Int { .. }, dt) => {
                bail!("Imputer with int64 values takes int64 input, not {dt:?}")
            }
        };
        Ok(vec![OutSpec::new(dt, OutShape::SameAsInput)])
    }

    fn eval(&self, inputs: &[TValue]) -> TractResult<Vec<Tensor>> {
        let x = &inputs[0];
        let (_, cols) = rows_of(x)?;
        let cols = cols.max(1);
        match self {
            Imputer::Float { imputed, replaced } => {
                check_columns("Imputer", "imputed_value_floats", imputed.len(), cols)?;
                let out = slice::<f32>(x)?
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| {
                        let hit = if replaced.is_nan() {
                            v.is_nan()
                        } else {
                            v == *replaced
                        };
                        if hit {
                            per_column(imputed, i % cols)
                        } else {
                            v
                        }
                    })
                    .collect();
                Ok(vec![tensor(x.shape(), out)?])
            }
            Imputer::Int { imputed, replaced } => {
                check_columns("Imputer", "imputed_value_int64s", imputed.len(), cols)?;
                let out = slice::<i64>(x)?
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| {
                        if v == *replaced {
                            if imputed.len() == 1 {
                                imputed[0]
                            } else {
                                imputed[i % cols]
                            }
                        } else {
                            v
                        }
                    })
                    .collect();
                Ok(vec![tensor(x.shape(), out)?])
            }
        }
    }
}

/// `Normalizer`'s norms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Norm {
    /// Divide by the row's largest value.
    Max,
    /// Divide by the sum of absolute values.
    L1,
    /// Divide by the Euclidean norm.
    L2,
}

/// `Normalizer`: each row divided by its norm.
#[derive(Debug)]
pub struct Normalizer {
    norm: Norm,
}

pub(super) fn normalizer(_: &ParsingContext, node: &NodeProto) -> TractResult<Arc<dyn Kernel>> {
    let norm = match node.get_attr_opt::<&str>("norm")?.unwrap_or("MAX") {
        "MAX" => Norm::Max,
        "L1" => Norm::L1,
        "L2" => Norm::L2,
        other => bail!("attribute 'norm' is '{other}'; expected MAX, L1 or L2"),
    };
    Ok(Arc::new(Normalizer { norm }))
}

impl Kernel for Normalizer {
    fn name(&self) -> &'static str {
        "Normalizer"
    }

    fn outputs(&self, input: DatumType) -> TractResult<Vec<OutSpec>> {
        numeric_input("Normalizer", input)?;
        Ok(vec![OutSpec::new(DatumType::F32, OutShape::SameAsInput)])
    }

    fn eval(&self, inputs: &[TValue]) -> TractResult<Vec<Tensor>> {
        let x = &inputs[0];
        let (_, cols) = rows_of(x)?;
        let mut out = as_f32(x)?.into_owned();
        for row in out.chunks_mut(cols.max(1)) {
            let d = match self.norm {
                Norm::Max => row.iter().cloned().fold(f32::NEG_INFINITY, f32::max),
                Norm::L1 => row.iter().map(|v| v.abs()).sum(),
                Norm::L2 => row.iter().map(|v| v * v).sum::<f32>().sqrt(),
            };
            if d != 0.0 {
                row.iter_mut().for_each(|v| *v /= d);
            }
        }
        Ok(vec![tensor(x.shape(), out)?])
    }
}

/// `Binarizer`: 1 where `x > threshold`, else 0, in the input's type.
#[derive(Debug)]
pub struct Binarizer {
    threshold: f32,
}

pub(super) fn binarizer(_: &ParsingContext, node: &NodeProto) -> TractResult<Arc<dyn Kernel>> {
    Ok(Arc::new(Binarizer {
        threshold: node.get_attr_opt("threshold")?.unwrap_or(0.0),
    }))
}

impl Kernel for Binarizer {
    fn name(&self) -> &'static str {
        "Binarizer"
    }

    fn outputs(&self, input: DatumType) -> TractResult<Vec<OutSpec>> {
        match input {
            DatumType::F32 | DatumType::F64 => Ok(vec![OutSpec::new(input, OutShape::SameAsInput)]),
            dt => bail!("Binarizer takes float or double input, not {dt:?}"),
        }
    }

    fn eval(&self, inputs: &[TValue]) -> TractResult<Vec<Tensor>> {
        let x = &inputs[0];
        if x.datum_type() == DatumType::F64 {
            let t = self.threshold as f64;
            let out = slice::<f64>(x)?
                .iter()
                .map(|&v| if v > t { 1f64 } else { 0f64 })
                .collect();
            return Ok(vec![tensor(x.shape(), out)?]);
        }
        let out = slice::<f32>(x)?
            .iter()
            .map(|&v| if v > self.threshold { 1f32 } else { 0f32 })
            .collect();
        Ok(vec![tensor(x.shape(), out)?])
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    #[test]
    fn scaler_broadcasts_a_single_offset_and_applies_per_column_scales() {
        let s = Scaler {
            offset: vec![1.0],
            scale: vec![2.0, 10.0],
        };
        let out = s.eval(&[mat(2, 2, &[1.0, 2.0, 3.0, 4.0])]).unwrap();
        assert_eq!(f32s(&out[0]), vec![0.0, 10.0, 4.0, 30.0]);
        let bad = s.eval(&[mat(1, 3, &[1.0, 2.0, 3.0])]).unwrap_err();
        assert!(format!("{bad}").contains("'scale' has 2 values"), "{bad}");
    }

    #[test]
    fn imputer_replaces_nan_when_the_replaced_value_is_nan() {
        let k = Imputer::Float {
            imputed: vec![7.0, 8.0],
            replaced: f32::NAN,
        };
        let out = k
            .eval(&[mat(2, 2, &[f32::NAN, 1.0, 2.0, f32::NAN])])
            .unwrap();
        assert_eq!(f32s(&out[0]), vec![7.0, 1.0, 2.0, 8.0]);
    }

    #[test]
    fn normalizer_divides_rows_and_leaves_zero_rows() {
        let k = Normalizer { norm: Norm::L2 };
        let out = k.eval(&[mat(2, 2, &[3.0, 4.0, 0.0, 0.0])]).unwrap();
        assert_eq!(f32s(&out[0]), vec![0.6, 0.8, 0.0, 0.0]);
        let k = Normalizer { norm: Norm::L1 };
        let out = k.eval(&[mat(1, 2, &[1.0, -3.0])]).unwrap();
        assert_eq!(f32s(&out[0]), vec![0.25, -0.75]);
    }

    #[test]
    fn binarizer_is_strictly_greater() {
        let k = Binarizer { threshold: 0.5 };
        let out = k.eval(&[mat(1, 3, &[0.5, 0.6, -1.0])]).unwrap();
        assert_eq!(f32s(&out[0]), vec![0.0, 1.0, 0.0]);
    }
}
