//! The ONNX-ML operators (`ai.onnx.ml`) that converters emit (skl2onnx, onnxmltools, tf2onnx),
//! implemented with onnxruntime's semantics, which is what Triton's ONNX backend serves and what
//! users compare against.
//!
//! Every operator is a [`Kernel`]: a parsed, validated set of attributes and a pure function from
//! input tensors to output tensors, with its output types and shapes stated up front. One
//! adapter ([`MlOp`]) plugs any kernel into tract's inference, typing and evaluation, so each
//! operator is written once, as plain Rust, and tested without a graph.
//!
//! tract ships its own `TreeEnsembleClassifier`, `LinearClassifier`, `LinearRegressor` and
//! `Normalizer`; they are replaced here: tract's tree classifier picks the wrong label for
//! skl2onnx's binary random forests, and the others lack onnxruntime's binary and
//! post-transform cases.

mod encode;
mod fast_tree;
mod linear;
mod prep;
mod svm;
mod transform;
pub(crate) mod tree;
mod tree5;
mod tree_ops;

use std::fmt::Debug;
use std::sync::Arc;

use tract_onnx::model::{OnnxOpRegister, ParsingContext};
use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

/// The ONNX-ML operators this backend implements itself, by ONNX name.
pub const OPERATORS: &[&str] = &[
    "ArrayFeatureExtractor",
    "Binarizer",
    "FeatureVectorizer",
    "Imputer",
    "LabelEncoder",
    "LinearClassifier",
    "LinearRegressor",
    "Normalizer",
    "OneHotEncoder",
    "Scaler",
    "SVMClassifier",
    "SVMRegressor",
    "TreeEnsemble",
    "TreeEnsembleClassifier",
    "TreeEnsembleRegressor",
];

/// Operators refused at load with advice, because a serving API cannot return them. (A
/// `ZipMap` that only produces a graph output is served as the tensor it maps; see
/// [`crate::load::unzip_outputs`].)
pub const REFUSED: &[(&str, &str)] = &[(
    "ZipMap",
    "ZipMap returns a sequence of maps, which the KServe v2 protocol cannot carry; export the \
     model without it (skl2onnx: options={id(model): {'zipmap': False}}, onnxmltools: the same \
     option) so probabilities come back as one FP32 tensor",
)];

/// Registers every operator of [`OPERATORS`] into tract's ONNX parser, replacing tract's own.
pub fn register(reg: &mut OnnxOpRegister) {
    reg.insert("ArrayFeatureExtractor", |c, n| {
        build(c, n, encode::array_feature_extractor)
    });
    reg.insert("Binarizer", |c, n| build(c, n, prep::binarizer));
    reg.insert("FeatureVectorizer", |c, n| {
        build(c, n, encode::feature_vectorizer)
    });
    reg.insert("Imputer", |c, n| build(c, n, prep::imputer));
    reg.insert("LabelEncoder", |c, n| build(c, n, encode::label_encoder));
    reg.insert("LinearClassifier", |c, n| build(c, n, linear::classifier));
    reg.insert("LinearRegressor", |c, n| build(c, n, linear::regressor));
    reg.insert("Normalizer", |c, n| build(c, n, prep::normalizer));
    reg.insert("OneHotEncoder", |c, n| build(c, n, encode::one_hot_encoder));
    reg.insert("Scaler", |c, n| build(c, n, prep::scaler));
    reg.insert("SVMClassifier", |c, n| build(c, n, svm::classifier));
    reg.insert("SVMRegressor", |c, n| build(c, n, svm::regressor));
    reg.insert("TreeEnsemble", |c, n| {
        build(c, n, tree_ops::tree_ensemble_v5)
    });
    reg.insert("TreeEnsembleClassifier", |c, n| {
        build(c, n, tree_ops::classifier)
    });
    reg.insert("TreeEnsembleRegressor", |c, n| {
        build(c, n, tree_ops::regressor)
    });
}

type Parser = fn(&ParsingContext, &NodeProto) -> TractResult<Arc<dyn Kernel>>;

fn build(
    ctx: &ParsingContext,
    node: &NodeProto,
    parse: Parser,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let kernel =
        parse(ctx, node).with_context(|| format!("node '{}' ({})", node.name, node.op_type))?;
    Ok((expand(MlOp { kernel }), vec![]))
}

/// The shape of one kernel output, in terms of the first input's shape (`[N, ...]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutShape {
    /// `[N]`: one value per row.
    Rows,
    /// `[N, k]`.
    RowsBy(usize),
    /// The first input's shape.
    SameAsInput,
    /// The first input's shape, one more axis of `k` at the end.
    Append(usize),
    /// The first input's shape, its last axis as long as the second input (a list of indices).
    GatherLast,
}

/// One output of a kernel: its element type and shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutSpec {
    /// Element type.
    pub dt: DatumType,
    /// Shape.
    pub shape: OutShape,
}

impl OutSpec {
    /// Shorthand.
    pub fn new(dt: DatumType, shape: OutShape) -> OutSpec {
        OutSpec { dt, shape }
    }
}

/// An ONNX-ML operator: parsed attributes and the function they define.
pub trait Kernel: Debug + Send + Sync {
    /// The ONNX operator name.
    fn name(&self) -> &'static str;
    /// How many inputs it takes.
    fn n_inputs(&self) -> usize {
        1
    }
    /// Its outputs, given the first input's element type. Errors name the unsupported type.
    fn outputs(&self, input: DatumType) -> TractResult<Vec<OutSpec>>;
    /// Runs it. Inputs have been typed by tract; shapes are checked here.
    fn eval(&self, inputs: &[TValue]) -> TractResult<Vec<Tensor>>;
    /// Runs it on `rows` rows of `cols` f32 values, with outputs as plain vectors: the lane a
    /// graph that is only this operator takes ([`crate::direct`]), with no tract tensor on
    /// either side. `None` where the kernel has no such lane (then [`Kernel::eval`] runs).
    fn eval_rows(&self, _x: &[f32], _rows: usize, _cols: usize) -> Option<TractResult<Vec<Plain>>> {
        None
    }
}

/// One output of [`Kernel::eval_rows`]: its shape and row-major values.
#[derive(Debug, Clone, PartialEq)]
pub enum Plain {
    /// f32 values.
    F32(Vec<usize>, Vec<f32>),
    /// i64 values.
    I64(Vec<usize>, Vec<i64>),
}

/// A kernel's outputs for whichever input type it accepts: how many there are and their shapes
/// do not depend on the type.
fn any_type_specs(kernel: &dyn Kernel) -> TractResult<Vec<OutSpec>> {
    kernel
        .outputs(DatumType::F32)
        .or_else(|_| kernel.outputs(DatumType::I64))
        .or_else(|_| kernel.outputs(DatumType::String))
}

/// Adapts a [`Kernel`] to tract: shape inference (as an expansion) and typed evaluation.
#[derive(Clone, Debug)]
struct MlOp {
    kernel: Arc<dyn Kernel>,
}

impl Expansion for MlOp {
    fn name(&self) -> StaticName {
        self.kernel.name().into()
    }

    fn nboutputs(&self) -> TractResult<usize> {
        Ok(any_type_specs(&*self.kernel)?.len())
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, self.kernel.n_inputs())?;
        check_output_arity(outputs, self.nboutputs()?)?;
        let kernel = self.kernel.clone();
        s.given(&inputs[0].datum_type, move |s, dt| {
            for (o, spec) in kernel.outputs(dt)?.iter().enumerate() {
                s.equals(&outputs[o].datum_type, spec.dt)?;
            }
            Ok(())
        })?;
        let kernel = self.kernel.clone();
        s.given(&inputs[0].rank, move |s, rank| {
            let rank = rank as usize;
            let specs = any_type_specs(&*kernel)?;
            for (o, spec) in specs.iter().enumerate() {
                let out = &outputs[o];
                match spec.shape {
                    OutShape::Rows => {
                        s.equals(&out.rank, 1)?;
                        s.equals(&out.shape[0], &inputs[0].shape[0])?;
                    }
                    OutShape::RowsBy(k) => {
                        s.equals(&out.rank, 2)?;
                        s.equals(&out.shape[0], &inputs[0].shape[0])?;
                        s.equals(&out.shape[1], k.to_dim())?;
                    }
                    OutShape::SameAsInput => s.equals(&out.shape, &inputs[0].shape)?,
                    OutShape::Append(k) => {
                        s.equals(&out.rank, rank as i64 + 1)?;
                        for a in 0..rank {
                            s.equals(&out.shape[a], &inputs[0].shape[a])?;
                        }
                        s.equals(&out.shape[rank], k.to_dim())?;
                    }
                    OutShape::GatherLast => {
                        // A 1-D input gives [1, k], as onnxruntime does.
                        let r = rank.max(2);
                        s.equals(&out.rank, r as i64)?;
                        if rank == 1 {
                            s.equals(&out.shape[0], 1.to_dim())?;
                        } else {
                            for a in 0..rank - 1 {
                                s.equals(&out.shape[a], &inputs[0].shape[a])?;
                            }
                        }
                        // As many values as the indices hold, whatever their rank.
                        s.given(&inputs[1].shape, move |s, idx| {
                            let k: TDim = idx.iter().product();
                            s.equals(&outputs[o].shape[r - 1], k)
                        })?;
                    }
                }
            }
            Ok(())
        })
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        model.wire_node(
            prefix,
            MlTypedOp {
                kernel: self.kernel.clone(),
            },
            inputs,
        )
    }
}

/// The kernel a node runs, when the node is one of inferd's ONNX-ML operators.
pub(crate) fn kernel_of(node: &TypedNode) -> Option<Arc<dyn Kernel>> {
    node.op_as::<MlTypedOp>().map(|op| op.kernel.clone())
}

/// The typed, runnable form of [`MlOp`].
#[derive(Clone, Debug)]
struct MlTypedOp {
    kernel: Arc<dyn Kernel>,
}

// Two nodes are the same operation only when they share the parsed kernel.
impl PartialEq for MlTypedOp {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.kernel, &other.kernel)
    }
}

impl Eq for MlTypedOp {}

impl Op for MlTypedOp {
    fn name(&self) -> StaticName {
        self.kernel.name().into()
    }

    op_as_typed_op!();
}

impl EvalOp for MlTypedOp {
    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        Ok(self
            .kernel
            .eval(&inputs)?
            .into_iter()
            .map(|t| t.into_tvalue())
            .collect())
    }

    op_out_of_plan!();
}

impl TypedOp for MlTypedOp {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let x = inputs[0];
        let rows = || -> TractResult<TDim> {
            x.shape
                .iter()
                .next()
                .cloned()
                .ok_or_else(|| format_err!("{} needs an input with rows", self.kernel.name()))
        };
        self.kernel
            .outputs(x.datum_type)?
            .iter()
            .map(|spec| {
                let shape: TVec<TDim> = match spec.shape {
                    OutShape::Rows => tvec![rows()?],
                    OutShape::RowsBy(k) => tvec![rows()?, k.to_dim()],
                    OutShape::SameAsInput => x.shape.iter().cloned().collect(),
                    OutShape::Append(k) => {
                        let mut s: TVec<TDim> = x.shape.iter().cloned().collect();
                        s.push(k.to_dim());
                        s
                    }
                    OutShape::GatherLast => {
                        let k = inputs
                            .get(1)
                            .map(|i| i.shape.volume())
                            .ok_or_else(|| format_err!("missing the indices input"))?;
                        let mut s: TVec<TDim> = x.shape.iter().cloned().collect();
                        if s.len() < 2 {
                            s = tvec![1.to_dim(), k];
                        } else {
                            let last = s.len() - 1;
                            s[last] = k;
                        }
                        s
                    }
                };
                Ok(spec.dt.fact(shape))
            })
            .collect()
    }

    as_op!();
}

/// Reads a tensor's elements as f32 (onnxruntime's ML operators compute in float), whatever
/// numeric type it holds, row-major.
pub(crate) fn as_f32(t: &Tensor) -> TractResult<std::borrow::Cow<'_, [f32]>> {
    if t.datum_type() == DatumType::F32 {
        return Ok(std::borrow::Cow::Borrowed(slice::<f32>(t)?));
    }
    if t.datum_type() == DatumType::TDim {
        let i = t.cast_to::<i64>()?;
        return Ok(std::borrow::Cow::Owned(
            slice::<i64>(&i)?.iter().map(|&v| v as f32).collect(),
        ));
    }
    let c = t.cast_to::<f32>()?;
    Ok(std::borrow::Cow::Owned(slice::<f32>(&c)?.to_vec()))
}

/// A tensor's elements, row-major.
pub(crate) fn slice<T: Datum>(t: &Tensor) -> TractResult<&[T]> {
    t.try_as_plain_ram()?.as_slice::<T>()
}

/// A tensor of `shape` holding `data`.
pub(crate) fn tensor<T: Datum>(shape: &[usize], data: Vec<T>) -> TractResult<Tensor> {
    Ok(tract_ndarray::ArrayD::from_shape_vec(shape, data)?.into_tensor())
}

/// The first input as `(rows, columns, values)`: a 2-D input as it is, a 1-D input as one row
/// (as onnxruntime reads it).
pub(crate) fn rows_of(t: &Tensor) -> TractResult<(usize, usize)> {
    match t.shape() {
        [n, c] => Ok((*n, *c)),
        [c] => Ok((1, *c)),
        [] => Ok((1, 1)),
        s => bail!("expected a 2-D input [rows, features], got shape {s:?}"),
    }
}

/// Numeric input types the float operators accept (onnxruntime: float, double, int64, int32).
pub(crate) fn numeric_input(op: &str, dt: DatumType) -> TractResult<()> {
    match dt {
        // tract types some int64 tensors as dimensions (TDim) during inference.
        DatumType::F32 | DatumType::F64 | DatumType::I64 | DatumType::I32 | DatumType::TDim => {
            Ok(())
        }
        _ => bail!("{op} takes float, double, int64 or int32 input, not {dt:?}"),
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    use super::*;

    /// A 2-D f32 tensor.
    pub fn mat(rows: usize, cols: usize, v: &[f32]) -> TValue {
        tract_ndarray::Array2::from_shape_vec((rows, cols), v.to_vec())
            .expect("shape")
            .into_tvalue()
    }

    /// A tensor's f32 values.
    pub fn f32s(t: &Tensor) -> Vec<f32> {
        slice::<f32>(t).expect("f32").to_vec()
    }

    /// A tensor's i64 values.
    pub fn i64s(t: &Tensor) -> Vec<i64> {
        slice::<i64>(t).expect("i64").to_vec()
    }
}
