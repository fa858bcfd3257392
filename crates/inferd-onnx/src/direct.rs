//! Graphs that are one inferd operator (a converted tree ensemble, a linear model: what
//! skl2onnx and onnxmltools export for a bare estimator) run that operator's kernel directly,
//! without tract's plan. For a 100-tree forest at batch 1 the walk takes ~1.9 us and the plan
//! around it ~1.5 us more (state, facts, tensors: a profile in
//! bench/results/onnx-trees-profile-2026-12-05.md); this path leaves only the input and output
//! conversions. Any other graph runs on the plan.

use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::source::TypedSource;

use crate::ml::{self, Kernel};

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
/// outputs.
pub(crate) fn of(model: &TypedModel) -> Option<Direct> {
    let model_inputs = model.input_outlets().ok()?;
    let model_outputs = model.output_outlets().ok()?;
    let mut compute = model.nodes().iter().filter(|n| !n.op_is::<TypedSource>());
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
        .map(|o| (o.node == node.id).then_some(o.slot))
        .collect::<Option<Vec<_>>>()?;
    Some(Direct {
        kernel,
        inputs,
        outputs,
    })
}
