//! `LinearClassifier` and `LinearRegressor`: `X · Wᵀ + b` in float, then onnxruntime's label
//! and post-transform rules.

use std::sync::Arc;

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

use super::transform::{self, Labels, PostTransform, Second};
use super::{Kernel, OutShape, OutSpec, as_f32, numeric_input, rows_of, tensor};

/// `X · Wᵀ + b` for `rows` rows: `targets` scores per row. Sums in float, as onnxruntime's GEMM.
fn scores(x: &[f32], rows: usize, cols: usize, w: &[f32], b: &[f32], targets: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows * targets);
    for r in 0..rows {
        let row = &x[r * cols..(r + 1) * cols];
        for t in 0..targets {
            let wt = &w[t * cols..(t + 1) * cols];
            let dot: f32 = row.iter().zip(wt).map(|(a, b)| a * b).sum();
            out.push(dot + b.get(t).copied().unwrap_or(0.0));
        }
    }
    out
}

fn check_width(op: &str, coefficients: usize, targets: usize, cols: usize) -> TractResult<()> {
    if coefficients != targets * cols {
        bail!(
            "{op}: {coefficients} coefficients for {targets} target(s) do not fit rows of {cols} features"
        );
    }
    Ok(())
}

/// `LinearRegressor`.
#[derive(Debug)]
pub struct Regressor {
    coefficients: Vec<f32>,
    intercepts: Vec<f32>,
    targets: usize,
    post: PostTransform,
}

pub(super) fn regressor(_: &ParsingContext, node: &NodeProto) -> TractResult<Arc<dyn Kernel>> {
    let targets: i64 = node.get_attr_opt("targets")?.unwrap_or(1);
    if targets < 1 {
        bail!("'targets' must be at least 1");
    }
    let coefficients: Vec<f32> = node.get_attr_vec("coefficients")?;
    let intercepts: Vec<f32> = node.get_attr_opt_vec("intercepts")?.unwrap_or_default();
    if !intercepts.is_empty() && intercepts.len() != targets as usize {
        bail!("{} intercepts for {targets} targets", intercepts.len());
    }
    let post = PostTransform::of(node)?;
    Ok(Arc::new(Regressor {
        coefficients,
        intercepts,
        targets: targets as usize,
        post,
    }))
}

impl Kernel for Regressor {
    fn name(&self) -> &'static str {
        "LinearRegressor"
    }

    fn outputs(&self, input: DatumType) -> TractResult<Vec<OutSpec>> {
        numeric_input("LinearRegressor", input)?;
        Ok(vec![OutSpec::new(
            DatumType::F32,
            OutShape::RowsBy(self.targets),
        )])
    }

    fn eval(&self, inputs: &[TValue]) -> TractResult<Vec<Tensor>> {
        let (rows, cols) = rows_of(&inputs[0])?;
        check_width(
            "LinearRegressor",
            self.coefficients.len(),
            self.targets,
            cols,
        )?;
        let x = as_f32(&inputs[0])?;
        let mut s = scores(
            &x,
            rows,
            cols,
            &self.coefficients,
            &self.intercepts,
            self.targets,
        );
        for row in s.chunks_mut(self.targets) {
            transform::apply_f32(self.post, row);
        }
        Ok(vec![tensor(&[rows, self.targets], s)?])
    }
}

/// `LinearClassifier`.
#[derive(Debug)]
pub struct Classifier {
    coefficients: Vec<f32>,
    intercepts: Vec<f32>,
    targets: usize,
    labels: Labels,
    post: PostTransform,
}

pub(super) fn classifier(_: &ParsingContext, node: &NodeProto) -> TractResult<Arc<dyn Kernel>> {
    let labels = Labels::parse(node)?;
    let coefficients: Vec<f32> = node.get_attr_vec("coefficients")?;
    let mut intercepts: Vec<f32> = node.get_attr_opt_vec("intercepts")?.unwrap_or_default();
    // onnxruntime counts targets by the intercepts; without them, one per class.
    let targets = if intercepts.is_empty() {
        labels.len()
    } else {
        intercepts.len()
    };
    if intercepts.is_empty() {
        intercepts = vec![0.0; targets];
    }
    if targets != labels.len() && !(targets == 1 && labels.len() == 2) {
        bail!(
            "{targets} sets of coefficients for {} classes",
            labels.len()
        );
    }
    if coefficients.is_empty() || !coefficients.len().is_multiple_of(targets) {
        bail!(
            "{} coefficients are not a multiple of {targets} target(s)",
            coefficients.len()
        );
    }
    let post = PostTransform::of(node)?;
    Ok(Arc::new(Classifier {
        coefficients,
        intercepts,
        targets,
        labels,
        post,
    }))
}

impl Kernel for Classifier {
    fn name(&self) -> &'static str {
        "LinearClassifier"
    }

    fn outputs(&self, input: DatumType) -> TractResult<Vec<OutSpec>> {
        numeric_input("LinearClassifier", input)?;
        Ok(vec![
            OutSpec::new(self.labels.dt(), OutShape::Rows),
            OutSpec::new(
                DatumType::F32,
                OutShape::RowsBy(self.labels.len().max(self.targets)),
            ),
        ])
    }

    fn eval(&self, inputs: &[TValue]) -> TractResult<Vec<Tensor>> {
        let (rows, cols) = rows_of(&inputs[0])?;
        check_width(
            "LinearClassifier",
            self.coefficients.len(),
            self.targets,
            cols,
        )?;
        let x = as_f32(&inputs[0])?;
        let s = scores(
            &x,
            rows,
            cols,
            &self.coefficients,
            &self.intercepts,
            self.targets,
        );
        let mut winners = Vec::with_capacity(rows);
        let mut probs = Vec::with_capacity(rows * self.labels.len());
        if self.targets == 1 {
            // One set of coefficients: the sign of the margin picks the second or first class.
            for &m in &s {
                winners.push(usize::from(m > 0.0));
                probs.extend(transform::second_class(self.post, m, Second::Complement));
            }
        } else {
            for row in s.chunks(self.targets) {
                let mut best = 0;
                for (i, &v) in row.iter().enumerate() {
                    if v > row[best] {
                        best = i;
                    }
                }
                winners.push(best);
                let mut row = row.to_vec();
                transform::apply_f32(self.post, &mut row);
                probs.extend(row);
            }
        }
        let width = self.labels.len().max(self.targets);
        Ok(vec![
            self.labels.pick(rows, &winners)?,
            tensor(&[rows, width], probs)?,
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    #[test]
    fn binary_classifier_with_one_coefficient_row_picks_by_sign() {
        let k = Classifier {
            coefficients: vec![1.0, -1.0],
            intercepts: vec![0.0],
            targets: 1,
            labels: Labels::Ints(vec![3, 7]),
            post: PostTransform::None,
        };
        let out = k.eval(&[mat(2, 2, &[2.0, 1.0, 0.0, 1.0])]).unwrap();
        assert_eq!(i64s(&out[0]), vec![7, 3]);
        assert_eq!(f32s(&out[1]), vec![0.0, 1.0, 2.0, -1.0], "[1 - s, s]");
    }

    #[test]
    fn multiclass_applies_the_transform_to_every_score() {
        let k = Classifier {
            coefficients: vec![1.0, 0.0, 0.0, 1.0],
            intercepts: vec![0.0, 0.0],
            targets: 2,
            labels: Labels::Strings(vec!["a".into(), "b".into()]),
            post: PostTransform::Logistic,
        };
        let out = k.eval(&[mat(1, 2, &[0.0, 1.0])]).unwrap();
        assert_eq!(
            out[0]
                .try_as_plain_ram()
                .unwrap()
                .as_slice::<String>()
                .unwrap(),
            &["b".to_string()]
        );
        let p = f32s(&out[1]);
        assert!((p[0] - 0.5).abs() < 1e-6 && (p[1] - transform::logistic(1.0)).abs() < 1e-6);
    }

    #[test]
    fn regressor_refuses_rows_of_the_wrong_width() {
        let k = Regressor {
            coefficients: vec![1.0, 2.0],
            intercepts: vec![1.0],
            targets: 1,
            post: PostTransform::None,
        };
        assert_eq!(
            f32s(&k.eval(&[mat(1, 2, &[1.0, 1.0])]).unwrap()[0]),
            vec![4.0]
        );
        assert!(k.eval(&[mat(1, 3, &[1.0, 1.0, 1.0])]).is_err());
    }
}
