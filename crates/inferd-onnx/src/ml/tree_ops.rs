//! The tree ensemble operators as kernels: `TreeEnsembleRegressor`, `TreeEnsembleClassifier`
//! (ai.onnx.ml 1 and 3) and `TreeEnsemble` (5), over the [`Ensemble`] of [`super::tree`].

use std::sync::Arc;

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

use super::transform::{self, Labels, PostTransform};
use super::tree::{Aggregate, Ensemble, FastCache, floats_or_doubles, leaf_attrs};
use super::{Kernel, OutShape, OutSpec, Plain, as_f32, numeric_input, rows_of, tensor};

/// `TreeEnsembleRegressor`.
#[derive(Debug)]
pub struct Regressor {
    ensemble: Ensemble,
    post: PostTransform,
    fast: FastCache,
    /// The ONNX operator (`TreeEnsembleRegressor`, or `TreeEnsemble` for version 5).
    op: &'static str,
}

pub(super) fn regressor(_: &ParsingContext, node: &NodeProto) -> TractResult<Arc<dyn Kernel>> {
    let n_targets: i64 = node.get_attr_opt("n_targets")?.unwrap_or(1);
    if n_targets < 1 {
        bail!("'n_targets' must be at least 1");
    }
    let aggregate = Aggregate::parse(
        node.get_attr_opt::<&str>("aggregate_function")?
            .unwrap_or("SUM"),
    )?;
    let mut ensemble = Ensemble::parse(
        node,
        leaf_attrs(node, "target")?,
        n_targets as usize,
        aggregate,
    )?;
    if let Some((base, _)) = floats_or_doubles(node, "base_values")? {
        if !base.is_empty() && base.len() != n_targets as usize {
            bail!(
                "'base_values' has {} values for {n_targets} targets",
                base.len()
            );
        }
        ensemble.base = base;
    }
    let post = PostTransform::of(node)?;
    Ok(Arc::new(Regressor {
        ensemble,
        post,
        fast: FastCache::new(),
        op: "TreeEnsembleRegressor",
    }))
}

impl Kernel for Regressor {
    fn name(&self) -> &'static str {
        self.op
    }

    fn outputs(&self, input: DatumType) -> TractResult<Vec<OutSpec>> {
        numeric_input("TreeEnsembleRegressor", input)?;
        Ok(vec![OutSpec::new(
            DatumType::F32,
            OutShape::RowsBy(self.ensemble.n_targets),
        )])
    }

    fn eval(&self, inputs: &[TValue]) -> TractResult<Vec<Tensor>> {
        let (rows, cols) = rows_of(&inputs[0])?;
        let out = self.regress(&as_f32(&inputs[0])?, rows, cols)?;
        Ok(vec![tensor(&[rows, self.ensemble.n_targets], out)?])
    }

    fn eval_rows(&self, x: &[f32], rows: usize, cols: usize) -> Option<TractResult<Vec<Plain>>> {
        let shape = vec![rows, self.ensemble.n_targets];
        Some(
            self.regress(x, rows, cols)
                .map(|out| vec![Plain::F32(shape, out)]),
        )
    }
}

impl Regressor {
    /// Each row's targets, `n_targets` per row.
    fn regress(&self, x: &[f32], rows: usize, cols: usize) -> TractResult<Vec<f32>> {
        self.ensemble.check_row_width(cols)?;
        let (scores, has) = self.ensemble.sums(&self.fast, x, rows, cols);
        let nt = self.ensemble.n_targets;
        let mut out = Vec::with_capacity(rows * nt);
        for (row, seen) in scores.chunks(nt).zip(has.chunks(nt)) {
            out.extend(transform::apply(
                self.post,
                &self.ensemble.finish_regression(row, seen),
            ));
        }
        Ok(out)
    }
}

/// `TreeEnsembleClassifier`.
#[derive(Debug)]
pub struct Classifier {
    ensemble: Ensemble,
    labels: Labels,
    post: PostTransform,
    binary: Option<transform::Binary>,
    fast: FastCache,
}

pub(super) fn classifier(_: &ParsingContext, node: &NodeProto) -> TractResult<Arc<dyn Kernel>> {
    let labels = Labels::parse(node)?;
    let n = labels.len();
    let mut ensemble = Ensemble::parse(node, leaf_attrs(node, "class")?, n, Aggregate::Sum)?;
    if let Some((base, _)) = floats_or_doubles(node, "base_values")? {
        if !base.is_empty() && base.len() != n && !(n == 2 && base.len() == 1) {
            bail!("'base_values' has {} values for {n} classes", base.len());
        }
        ensemble.base = base;
    }
    let post = PostTransform::of(node)?;
    let binary = (n == 2).then(|| transform::Binary {
        single_class: ensemble.single_class(),
        all_positive: ensemble.weights_all_positive(),
    });
    Ok(Arc::new(Classifier {
        ensemble,
        labels,
        post,
        binary,
        fast: FastCache::new(),
    }))
}

impl Kernel for Classifier {
    fn name(&self) -> &'static str {
        "TreeEnsembleClassifier"
    }

    fn outputs(&self, input: DatumType) -> TractResult<Vec<OutSpec>> {
        numeric_input("TreeEnsembleClassifier", input)?;
        Ok(vec![
            OutSpec::new(self.labels.dt(), OutShape::Rows),
            OutSpec::new(DatumType::F32, OutShape::RowsBy(self.labels.len())),
        ])
    }

    fn eval(&self, inputs: &[TValue]) -> TractResult<Vec<Tensor>> {
        let (rows, cols) = rows_of(&inputs[0])?;
        let (winners, probs) = self.classify(&as_f32(&inputs[0])?, rows, cols)?;
        Ok(vec![
            self.labels.pick(rows, &winners)?,
            tensor(&[rows, self.labels.len()], probs)?,
        ])
    }

    fn eval_rows(&self, x: &[f32], rows: usize, cols: usize) -> Option<TractResult<Vec<Plain>>> {
        // String labels leave as tract strings, on the general lane.
        let Labels::Ints(labels) = &self.labels else {
            return None;
        };
        Some(self.classify(x, rows, cols).map(|(winners, probs)| {
            let picked = winners
                .iter()
                .map(|&w| labels[w.min(labels.len() - 1)])
                .collect();
            vec![
                Plain::I64(vec![rows], picked),
                Plain::F32(vec![rows, labels.len()], probs),
            ]
        }))
    }
}

impl Classifier {
    /// Each row's winning class (an index into the labels) and its probabilities.
    fn classify(&self, x: &[f32], rows: usize, cols: usize) -> TractResult<(Vec<usize>, Vec<f32>)> {
        self.ensemble.check_row_width(cols)?;
        let (scores, has) = self.ensemble.sums(&self.fast, x, rows, cols);
        let nc = self.labels.len();
        let mut winners = Vec::with_capacity(rows);
        let mut probs = Vec::with_capacity(rows * nc);
        for r in 0..rows {
            let row = &scores[r * nc..(r + 1) * nc];
            let seen = &has[r * nc..(r + 1) * nc];
            let (winner, p) = match self.binary {
                Some(b) => transform::tree_binary(b, row, seen, &self.ensemble.base, self.post),
                None => transform::multiclass(row, seen, &self.ensemble.base, self.post),
            };
            winners.push(winner);
            probs.extend(p);
        }
        Ok((winners, probs))
    }
}

/// `TreeEnsemble` (ai.onnx.ml 5): see [`super::tree5`].
pub(super) fn tree_ensemble_v5(
    ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<Arc<dyn Kernel>> {
    let (ensemble, post) = super::tree5::parse(ctx, node)?;
    Ok(Arc::new(Regressor {
        ensemble,
        post,
        fast: FastCache::new(),
        op: "TreeEnsemble",
    }))
}
