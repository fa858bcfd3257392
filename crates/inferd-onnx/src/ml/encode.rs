//! Feature encoding and selection: `OneHotEncoder`, `LabelEncoder`, `ArrayFeatureExtractor`,
//! `FeatureVectorizer`.

use std::collections::HashMap;
use std::sync::Arc;

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

use super::{Kernel, OutShape, OutSpec, as_f32, rows_of, slice, tensor};

/// The categories of a `OneHotEncoder`.
#[derive(Debug)]
enum Categories {
    Ints(HashMap<i64, usize>),
    Strings(HashMap<String, usize>),
}

/// `OneHotEncoder`: each value becomes a row of `n` floats with a 1 at its category.
#[derive(Debug)]
pub struct OneHotEncoder {
    cats: Categories,
    n: usize,
    /// Unknown values give all zeros (else they are an error).
    zeros: bool,
}

pub(super) fn one_hot_encoder(
    _: &ParsingContext,
    node: &NodeProto,
) -> TractResult<Arc<dyn Kernel>> {
    let ints: Option<Vec<i64>> = node.get_attr_opt_vec("cats_int64s")?;
    let strings: Option<Vec<String>> = node.get_attr_opt_vec("cats_strings")?;
    let zeros = node.get_attr_opt::<i64>("zeros")?.unwrap_or(1) != 0;
    let (cats, n) = match (ints, strings) {
        (Some(v), None) if !v.is_empty() => {
            let n = v.len();
            (
                Categories::Ints(v.into_iter().enumerate().map(|(i, c)| (c, i)).collect()),
                n,
            )
        }
        (None, Some(v)) if !v.is_empty() => {
            let n = v.len();
            (
                Categories::Strings(v.into_iter().enumerate().map(|(i, c)| (c, i)).collect()),
                n,
            )
        }
        _ => bail!("exactly one of 'cats_int64s' and 'cats_strings' must be set and not empty"),
    };
    Ok(Arc::new(OneHotEncoder { cats, n, zeros }))
}

impl Kernel for OneHotEncoder {
    fn name(&self) -> &'static str {
        "OneHotEncoder"
    }

    fn outputs(&self, input: DatumType) -> TractResult<Vec<OutSpec>> {
        match (&self.cats, input) {
            (Categories::Strings(_), DatumType::String)
            | (
                Categories::Ints(_),
                DatumType::I64 | DatumType::I32 | DatumType::F32 | DatumType::F64 | DatumType::TDim,
            ) => {}
            (_, dt) => bail!("OneHotEncoder: input type {dt:?} does not match its categories"),
        }
        Ok(vec![OutSpec::new(DatumType::F32, OutShape::Append(self.n))])
    }

    fn eval(&self, inputs: &[TValue]) -> TractResult<Vec<Tensor>> {
        let x = &inputs[0];
        let lookup: Vec<Option<usize>> = match &self.cats {
            Categories::Strings(m) => slice::<String>(x)?
                .iter()
                .map(|s| m.get(s).copied())
                .collect(),
            Categories::Ints(m) => {
                let v = x.cast_to::<i64>()?;
                slice::<i64>(&v)?
                    .iter()
                    .map(|i| m.get(i).copied())
                    .collect()
            }
        };
        let mut out = vec![0f32; lookup.len() * self.n];
        for (i, hit) in lookup.iter().enumerate() {
            match hit {
                Some(c) => out[i * self.n + c] = 1.0,
                None if self.zeros => {}
                None => bail!(
                    "OneHotEncoder: value #{i} is not one of the categories (and 'zeros' is 0)"
                ),
            }
        }
        let mut shape = x.shape().to_vec();
        shape.push(self.n);
        Ok(vec![tensor(&shape, out)?])
    }
}

/// A `LabelEncoder` key or value.
#[derive(Clone, Debug, PartialEq)]
enum Labels {
    Ints(Vec<i64>),
    Strings(Vec<String>),
    Floats(Vec<f32>),
}

impl Labels {
    fn dt(&self) -> DatumType {
        match self {
            Labels::Ints(_) => DatumType::I64,
            Labels::Strings(_) => DatumType::String,
            Labels::Floats(_) => DatumType::F32,
        }
    }

    fn len(&self) -> usize {
        match self {
            Labels::Ints(v) => v.len(),
            Labels::Strings(v) => v.len(),
            Labels::Floats(v) => v.len(),
        }
    }
}

/// `LabelEncoder` (ai.onnx.ml 1 and 2): maps keys to values, unknown keys to a default.
#[derive(Debug)]
pub struct LabelEncoder {
    keys: Labels,
    values: Labels,
    default_int: i64,
    default_string: String,
    default_float: f32,
}

fn labels(node: &NodeProto, prefix: &str) -> TractResult<Option<Labels>> {
    if let Some(v) = node.get_attr_opt_vec::<i64>(&format!("{prefix}_int64s"))? {
        return Ok(Some(Labels::Ints(v)));
    }
    if let Some(v) = node.get_attr_opt_vec::<String>(&format!("{prefix}_strings"))? {
        return Ok(Some(Labels::Strings(v)));
    }
    if let Some(v) = node.get_attr_opt_vec::<f32>(&format!("{prefix}_floats"))? {
        return Ok(Some(Labels::Floats(v)));
    }
    if node
        .attribute
        .iter()
        .any(|a| a.name == format!("{prefix}_tensor"))
    {
        bail!(
            "'{prefix}_tensor' (LabelEncoder 4) is not supported by the tract backend; build with --features onnxruntime"
        );
    }
    Ok(None)
}

pub(super) fn label_encoder(_: &ParsingContext, node: &NodeProto) -> TractResult<Arc<dyn Kernel>> {
    let default_int = node.get_attr_opt("default_int64")?.unwrap_or(-1);
    let default_string = node
        .get_attr_opt::<String>("default_string")?
        .unwrap_or_else(|| "_Unused".to_string());
    let default_float = node.get_attr_opt("default_float")?.unwrap_or(-0.0);
    // Version 1: classes_strings; strings map to their index and indices back to strings,
    // the direction chosen by the input type (resolved at evaluation from the keys' type).
    if let Some(classes) = node.get_attr_opt_vec::<String>("classes_strings")? {
        let idx: Vec<i64> = (0..classes.len() as i64).collect();
        return Ok(Arc::new(LabelEncoderV1 {
            strings_to_ints: LabelEncoder {
                keys: Labels::Strings(classes.clone()),
                values: Labels::Ints(idx.clone()),
                default_int,
                default_string: default_string.clone(),
                default_float,
            },
            ints_to_strings: LabelEncoder {
                keys: Labels::Ints(idx),
                values: Labels::Strings(classes),
                default_int,
                default_string,
                default_float,
            },
        }));
    }
    let keys = labels(node, "keys")?.ok_or_else(|| format_err!("no keys attribute"))?;
    let values = labels(node, "values")?.ok_or_else(|| format_err!("no values attribute"))?;
    if keys.len() != values.len() {
        bail!("{} keys but {} values", keys.len(), values.len());
    }
    Ok(Arc::new(LabelEncoder {
        keys,
        values,
        default_int,
        default_string,
        default_float,
    }))
}

impl LabelEncoder {
    fn position(&self, x: &Tensor) -> TractResult<Vec<Option<usize>>> {
        Ok(match &self.keys {
            Labels::Ints(k) => {
                let m: HashMap<i64, usize> = k.iter().enumerate().map(|(i, v)| (*v, i)).collect();
                slice::<i64>(x)?.iter().map(|v| m.get(v).copied()).collect()
            }
            Labels::Strings(k) => {
                let m: HashMap<&str, usize> =
                    k.iter().enumerate().map(|(i, v)| (v.as_str(), i)).collect();
                slice::<String>(x)?
                    .iter()
                    .map(|v| m.get(v.as_str()).copied())
                    .collect()
            }
            Labels::Floats(k) => {
                let m: HashMap<u32, usize> = k
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (v.to_bits(), i))
                    .collect();
                slice::<f32>(x)?
                    .iter()
                    .map(|v| m.get(&v.to_bits()).copied())
                    .collect()
            }
        })
    }
}

impl Kernel for LabelEncoder {
    fn name(&self) -> &'static str {
        "LabelEncoder"
    }

    fn outputs(&self, input: DatumType) -> TractResult<Vec<OutSpec>> {
        if input != self.keys.dt() {
            bail!(
                "LabelEncoder: input type {input:?} but keys of type {:?}",
                self.keys.dt()
            );
        }
        Ok(vec![OutSpec::new(self.values.dt(), OutShape::SameAsInput)])
    }

    fn eval(&self, inputs: &[TValue]) -> TractResult<Vec<Tensor>> {
        let x = &inputs[0];
        let pos = self.position(x)?;
        Ok(vec![match &self.values {
            Labels::Ints(v) => tensor(
                x.shape(),
                pos.iter()
                    .map(|p| p.map_or(self.default_int, |i| v[i]))
                    .collect(),
            )?,
            Labels::Floats(v) => tensor(
                x.shape(),
                pos.iter()
                    .map(|p| p.map_or(self.default_float, |i| v[i]))
                    .collect(),
            )?,
            Labels::Strings(v) => tensor(
                x.shape(),
                pos.iter()
                    .map(|p| p.map_or_else(|| self.default_string.clone(), |i| v[i].clone()))
                    .collect(),
            )?,
        }])
    }
}

/// `LabelEncoder` 1: strings to indices, or indices to strings.
#[derive(Debug)]
pub struct LabelEncoderV1 {
    strings_to_ints: LabelEncoder,
    ints_to_strings: LabelEncoder,
}

impl LabelEncoderV1 {
    fn pick(&self, dt: DatumType) -> &LabelEncoder {
        if dt == DatumType::String {
            &self.strings_to_ints
        } else {
            &self.ints_to_strings
        }
    }
}

impl Kernel for LabelEncoderV1 {
    fn name(&self) -> &'static str {
        "LabelEncoder"
    }

    fn outputs(&self, input: DatumType) -> TractResult<Vec<OutSpec>> {
        self.pick(input).outputs(input)
    }

    fn eval(&self, inputs: &[TValue]) -> TractResult<Vec<Tensor>> {
        self.pick(inputs[0].datum_type()).eval(inputs)
    }
}

/// `ArrayFeatureExtractor`: the input's last axis gathered at the given indices.
#[derive(Debug)]
pub struct ArrayFeatureExtractor;

pub(super) fn array_feature_extractor(
    _: &ParsingContext,
    _: &NodeProto,
) -> TractResult<Arc<dyn Kernel>> {
    Ok(Arc::new(ArrayFeatureExtractor))
}

fn gather<T: Datum + Clone>(x: &Tensor, idx: &[usize], out_shape: &[usize]) -> TractResult<Tensor> {
    let v = slice::<T>(x)?;
    let last = *x.shape().last().unwrap_or(&1);
    let out = v
        .chunks(last.max(1))
        .flat_map(|row| idx.iter().map(move |&i| row[i].clone()))
        .collect();
    tensor(out_shape, out)
}

impl Kernel for ArrayFeatureExtractor {
    fn name(&self) -> &'static str {
        "ArrayFeatureExtractor"
    }

    fn n_inputs(&self) -> usize {
        2
    }

    fn outputs(&self, input: DatumType) -> TractResult<Vec<OutSpec>> {
        match input {
            DatumType::F32
            | DatumType::F64
            | DatumType::I64
            | DatumType::I32
            | DatumType::String => Ok(vec![OutSpec::new(input, OutShape::GatherLast)]),
            DatumType::TDim => Ok(vec![OutSpec::new(DatumType::I64, OutShape::GatherLast)]),
            dt => bail!("ArrayFeatureExtractor: unsupported input type {dt:?}"),
        }
    }

    fn eval(&self, inputs: &[TValue]) -> TractResult<Vec<Tensor>> {
        let x = &inputs[0];
        let idx_t = inputs[1].cast_to::<i64>()?;
        let last = *x.shape().last().unwrap_or(&1);
        let idx = slice::<i64>(&idx_t)?
            .iter()
            .map(|&i| {
                if i < 0 || i as usize >= last {
                    bail!(
                        "ArrayFeatureExtractor: index {i} is out of range for a last axis of {last}"
                    )
                }
                Ok(i as usize)
            })
            .collect::<TractResult<Vec<_>>>()?;
        let mut shape = x.shape().to_vec();
        if shape.len() < 2 {
            shape = vec![1, idx.len()];
        } else {
            let l = shape.len() - 1;
            shape[l] = idx.len();
        }
        Ok(vec![match x.datum_type() {
            DatumType::TDim => gather::<i64>(&*x.cast_to::<i64>()?, &idx, &shape)?,
            DatumType::F32 => gather::<f32>(x, &idx, &shape)?,
            DatumType::F64 => gather::<f64>(x, &idx, &shape)?,
            DatumType::I64 => gather::<i64>(x, &idx, &shape)?,
            DatumType::I32 => gather::<i32>(x, &idx, &shape)?,
            DatumType::String => gather::<String>(x, &idx, &shape)?,
            dt => bail!("ArrayFeatureExtractor: unsupported input type {dt:?}"),
        }])
    }
}

/// `FeatureVectorizer`: inputs concatenated column-wise as floats, each cut or zero-padded to
/// its declared width.
#[derive(Debug)]
pub struct FeatureVectorizer {
    dims: Vec<usize>,
}

pub(super) fn feature_vectorizer(
    _: &ParsingContext,
    node: &NodeProto,
) -> TractResult<Arc<dyn Kernel>> {
    let dims: Vec<i64> = node.get_attr_vec("inputdimensions")?;
    if dims.is_empty() || dims.iter().any(|&d| d < 0) {
        bail!("'inputdimensions' must list one non-negative width per input, got {dims:?}");
    }
    Ok(Arc::new(FeatureVectorizer {
        dims: dims.into_iter().map(|d| d as usize).collect(),
    }))
}

impl Kernel for FeatureVectorizer {
    fn name(&self) -> &'static str {
        "FeatureVectorizer"
    }

    fn n_inputs(&self) -> usize {
        self.dims.len()
    }

    fn outputs(&self, input: DatumType) -> TractResult<Vec<OutSpec>> {
        super::numeric_input("FeatureVectorizer", input)?;
        Ok(vec![OutSpec::new(
            DatumType::F32,
            OutShape::RowsBy(self.dims.iter().sum()),
        )])
    }

    fn eval(&self, inputs: &[TValue]) -> TractResult<Vec<Tensor>> {
        let (rows, _) = rows_of(&inputs[0])?;
        let width: usize = self.dims.iter().sum();
        let mut out = vec![0f32; rows * width];
        let mut at = 0;
        for (x, &d) in inputs.iter().zip(&self.dims) {
            let (r, c) = rows_of(x)?;
            if r != rows {
                bail!("FeatureVectorizer: inputs have {rows} and {r} rows");
            }
            let v = as_f32(x)?;
            for row in 0..rows {
                let n = c.min(d);
                out[row * width + at..row * width + at + n]
                    .copy_from_slice(&v[row * c..row * c + n]);
            }
            at += d;
        }
        Ok(vec![tensor(&[rows, width], out)?])
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    #[test]
    fn one_hot_encoder_appends_an_axis_and_zeroes_unknowns() {
        let k = OneHotEncoder {
            cats: Categories::Ints([(3, 0), (5, 1)].into_iter().collect()),
            n: 2,
            zeros: true,
        };
        let out = k.eval(&[mat(1, 2, &[5.0, 4.0])]).unwrap();
        assert_eq!(out[0].shape(), &[1, 2, 2]);
        assert_eq!(f32s(&out[0]), vec![0.0, 1.0, 0.0, 0.0]);
        let strict = OneHotEncoder { zeros: false, ..k };
        assert!(strict.eval(&[mat(1, 1, &[4.0])]).is_err());
    }

    #[test]
    fn array_feature_extractor_gathers_the_last_axis() {
        let idx = tensor(&[2], vec![2i64, 0]).unwrap().into_tvalue();
        let out = ArrayFeatureExtractor
            .eval(&[mat(2, 3, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]), idx.clone()])
            .unwrap();
        assert_eq!(out[0].shape(), &[2, 2]);
        assert_eq!(f32s(&out[0]), vec![3.0, 1.0, 6.0, 4.0]);
        let bad = tensor(&[1], vec![3i64]).unwrap().into_tvalue();
        assert!(
            ArrayFeatureExtractor
                .eval(&[mat(1, 3, &[1.0, 2.0, 3.0]), bad])
                .is_err()
        );
    }

    #[test]
    fn feature_vectorizer_pads_and_cuts_to_declared_widths() {
        let k = FeatureVectorizer { dims: vec![1, 3] };
        let out = k
            .eval(&[mat(1, 2, &[1.0, 2.0]), mat(1, 2, &[3.0, 4.0])])
            .unwrap();
        assert_eq!(f32s(&out[0]), vec![1.0, 3.0, 4.0, 0.0]);
    }

    #[test]
    fn label_encoder_maps_with_default() {
        let k = LabelEncoder {
            keys: Labels::Strings(vec!["a".into(), "b".into()]),
            values: Labels::Ints(vec![10, 20]),
            default_int: -1,
            default_string: "_Unused".into(),
            default_float: 0.0,
        };
        let x = tensor(&[3], vec!["b".to_string(), "z".into(), "a".into()])
            .unwrap()
            .into_tvalue();
        assert_eq!(i64s(&k.eval(&[x]).unwrap()[0]), vec![20, -1, 10]);
    }
}
