//! Exact `ReduceMax` / `ReduceMin` on floats.
//!
//! tract's reducers start from the type's finite bound (`f32::MIN` for a maximum), so a slice
//! that holds only `-inf`, or nothing, reduces to `f32::MIN` where ONNX (and onnxruntime) give
//! `-inf`. An attention graph that masks a whole row with `-inf` then subtracts a finite
//! maximum, and its softmax divides zero by zero: NaN where the reference answers 0 (three of
//! ONNX's composite attention tests). [`exact`] wraps every float `Reduce<Max>` / `Reduce<Min>`
//! of a typed model: tract's own kernel still computes every output, and only an output equal
//! to the finite bound is looked at again, so the common case costs one comparison per output.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::nn::{Reduce, Reducer};
use tract_onnx::tract_hir::internal::tract_ndarray::Dimension;
use tract_onnx::tract_hir::internal::*;

/// Replaces each float `Reduce<Max>` and `Reduce<Min>` node of `model` with [`ExactExtremum`].
pub(crate) fn exact(model: &mut TypedModel) -> TractResult<()> {
    let targets: Vec<usize> = model
        .nodes()
        .iter()
        .filter(|n| {
            n.op_as::<Reduce>()
                .is_some_and(|r| matches!(r.reducer, Reducer::Max | Reducer::Min))
        })
        .map(|n| n.id)
        .collect();
    for id in targets {
        let node = model.node(id);
        let dt = model.outlet_fact(node.inputs[0])?.datum_type;
        if !dt.is_float() {
            continue;
        }
        let Some(inner) = node.op_as::<Reduce>().cloned() else {
            continue;
        };
        let patch = TypedModelPatch::replace_single_op(
            model,
            node,
            &node.inputs.clone(),
            ExactExtremum { inner },
        )?;
        patch.apply(model)?;
    }
    Ok(())
}

/// tract's `Reduce<Max>` / `Reduce<Min>`, with slices of only infinities (or no values)
/// reducing to that infinity.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub(crate) struct ExactExtremum {
    inner: Reduce,
}

impl Op for ExactExtremum {
    fn name(&self) -> StaticName {
        format!("Exact{}", self.inner.name()).into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        self.inner.info()
    }

    op_as_typed_op!();
}

impl EvalOp for ExactExtremum {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = &inputs[0];
        let out = self.inner.reducer.reduce(&self.inner.axes, x)?;
        let max = matches!(self.inner.reducer, Reducer::Max);
        let out = match x.datum_type() {
            DatumType::F16 => fix::<f16>(&self.inner.axes, max, x, out)?,
            DatumType::F32 => fix::<f32>(&self.inner.axes, max, x, out)?,
            DatumType::F64 => fix::<f64>(&self.inner.axes, max, x, out)?,
            _ => out,
        };
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for ExactExtremum {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        self.inner.output_facts(inputs)
    }

    fn axes_mapping(
        &self,
        inputs: &[&TypedFact],
        outputs: &[&TypedFact],
    ) -> TractResult<AxesMapping> {
        self.inner.axes_mapping(inputs, outputs)
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        self.inner.cost(inputs)
    }

    as_op!();
}

/// Sets to the infinity every output that tract left at the finite bound and whose slice holds
/// nothing but that infinity.
fn fix<T>(axes: &[usize], max: bool, x: &Tensor, mut out: Tensor) -> TractResult<Tensor>
where
    T: Datum + tract_num_traits::Float,
{
    let (bound, infinity) = if max {
        (T::min_value(), T::neg_infinity())
    } else {
        (T::max_value(), T::infinity())
    };
    let x = x.to_plain_array_view::<T>()?;
    let mut o = out.to_plain_array_view_mut::<T>()?;
    for (coords, v) in o.indexed_iter_mut() {
        if *v != bound {
            continue;
        }
        let spec: Vec<tract_ndarray::SliceInfoElem> = coords
            .slice()
            .iter()
            .enumerate()
            .map(|(ax, &d)| {
                if axes.contains(&ax) {
                    (..).into()
                } else {
                    (d as isize).into()
                }
            })
            .collect();
        let slice = x.slice(spec.as_slice());
        if slice.iter().all(|e| *e == infinity) {
            *v = infinity;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(reducer: Reducer, axes: &[usize], x: Tensor) -> Tensor {
        let op = ExactExtremum {
            inner: Reduce::new(axes.into(), reducer),
        };
        let out = op
            .eval(&EvalContext::out_of_plan(), tvec!(x.into_tvalue()))
            .expect("eval");
        out[0].clone().into_tensor()
    }

    fn values(t: &Tensor) -> Vec<f32> {
        crate::ml::slice::<f32>(t).expect("f32").to_vec()
    }

    #[test]
    fn max_of_a_row_of_minus_infinity_is_minus_infinity() {
        let ninf = f32::NEG_INFINITY;
        let x = tensor2(&[[ninf, ninf, ninf], [1.0, ninf, -2.0]]);
        let out = run(Reducer::Max, &[1], x);
        assert_eq!(out.shape(), &[2, 1]);
        assert_eq!(values(&out), vec![ninf, 1.0]);
    }

    #[test]
    fn min_of_a_row_of_infinity_is_infinity() {
        let inf = f32::INFINITY;
        let x = tensor2(&[[inf, inf], [3.0, inf]]);
        assert_eq!(values(&run(Reducer::Min, &[1], x)), vec![inf, 3.0]);
    }

    #[test]
    fn a_true_finite_minimum_stays() {
        let x = tensor2(&[[f32::MIN, f32::NEG_INFINITY]]);
        assert_eq!(values(&run(Reducer::Max, &[1], x)), vec![f32::MIN]);
    }

    #[test]
    fn max_over_nothing_is_minus_infinity() {
        let x = Tensor::zero::<f32>(&[2, 0]).expect("tensor");
        assert_eq!(
            values(&run(Reducer::Max, &[1], x)),
            vec![f32::NEG_INFINITY; 2]
        );
    }

    #[test]
    fn f64_and_leading_axes() {
        let x = tensor2(&[
            [f64::NEG_INFINITY, 2.0],
            [f64::NEG_INFINITY, f64::NEG_INFINITY],
        ]);
        let out = run(Reducer::Max, &[0], x);
        assert_eq!(
            crate::ml::slice::<f64>(&out).expect("f64"),
            &[f64::NEG_INFINITY, 2.0]
        );
    }
}
