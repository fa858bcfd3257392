//! Graphs that are one inferd operator (a converted tree ensemble, a linear model: what
//! skl2onnx and onnxmltools export for a bare estimator) run that operator's kernel directly,
//! without tract's plan. For a 100-tree forest at batch 1 the walk takes ~1.9 us and the plan
//! around it ~1.5 us more (state, facts, tensors: a profile in
//! bench/results/onnx-trees-profile-2026-12-05.md); this path leaves only the input and output
//! conversions. A kernel with a plain-rows lane ([`Kernel::eval_rows`]: the tree ensembles)
//! skips those too, when the one input is an f32 matrix: the request's values go in as a
//! slice and the outputs come back as vectors that become inferd tensors, with no tract tensor
//! on either side. Any other graph runs on the plan.

use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::source::TypedSource;

use inferd_core::tensor::{DataType, Tensor as InferdTensor};

use crate::ml::{self, Kernel, Plain};

/// How a one-operator graph maps onto its kernel.
#[derive(Debug, Clone)]
pub(crate) struct Direct {
    /// The operator.
    pub(crate) kernel: Arc<dyn Kernel>,
    /// For each kernel input, which model input feeds it.
    pub(crate) inputs: Vec<usize>,
    /// For each model output, which kernel output it is.
    pub(crate) outputs: Vec<usize>,
}

/// The direct path of `model`, when it is a single inferd operator between its inputs and
/// outputs. Casts of an output to the type it already has may follow it: tract removes those
/// everywhere but on a model output, which skl2onnx writes for a classifier's label (an int64
/// label cast to int64, which tract types as a dimension, `TDim`, and inferd returns as INT64).
pub(crate) fn of(model: &TypedModel) -> Option<Direct> {
    use tract_onnx::tract_core::ops::cast::Cast;
    let model_inputs = model.input_outlets().ok()?;
    let model_outputs = model.output_outlets().ok()?;
    let same_type_cast = |n: &TypedNode| {
        n.op_as::<Cast>().is_some_and(|c| {
            n.inputs.len() == 1
                && model.outlet_fact(n.inputs[0]).is_ok_and(|f| {
                    f.datum_type == c.to
                        || (f.datum_type == DatumType::I64 && c.to == DatumType::TDim)
                })
        })
    };
    let mut compute = model
        .nodes()
        .iter()
        .filter(|n| !n.op_is::<TypedSource>() && !same_type_cast(n));
    let node = compute.next()?;
    if compute.next().is_some() {
        return None;
    }
    let kernel = ml::kernel_of(node)?;
    let inputs = node
        .inputs
        .iter()
        .map(|o| model_inputs.iter().position(|i| i == o))
        .collect::<Option<Vec<_>>>()?;
    let outputs = model_outputs
        .iter()
        .map(|o| {
            // Through a same-type cast back to the operator.
            let o = match &model.nodes()[o.node] {
                n if same_type_cast(n) => n.inputs[0],
                _ => *o,
            };
            (o.node == node.id).then_some(o.slot)
        })
        .collect::<Option<Vec<_>>>()?;
    Some(Direct {
        kernel,
        inputs,
        outputs,
    })
}

/// The plain-rows lane of `d` for `input` (the model's one input), when the kernel has one and
/// the input is f32 rows (`[rows, cols]`, or `[cols]` as one row, as onnxruntime reads it).
pub(crate) fn run_rows(d: &Direct, input: &InferdTensor) -> Option<TractResult<Vec<Plain>>> {
    if d.inputs != [0] || input.dtype() != DataType::F32 {
        return None;
    }
    let (rows, cols) = match *input.shape() {
        [n, c] => (n, c),
        [c] => (1, c),
        _ => return None,
    };
    let x = input.to_f32_vec()?;
    d.kernel.eval_rows(&x, rows, cols)
}

/// A plain output as an inferd tensor.
pub(crate) fn plain_tensor(p: &Plain) -> Result<InferdTensor, inferd_core::tensor::TensorError> {
    match p {
        Plain::F32(shape, v) => InferdTensor::from_f32(shape.clone(), v),
        Plain::I64(shape, v) => InferdTensor::from_i64(shape.clone(), v),
    }
}
