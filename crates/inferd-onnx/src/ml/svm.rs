//! `SVMClassifier` (one-vs-one voting, optional Platt probabilities with pairwise coupling) and
//! `SVMRegressor`, with onnxruntime's kernels, vote and label rules.

use std::sync::Arc;

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

use super::transform::{self, Labels, PostTransform, Second};
use super::{Kernel, OutShape, OutSpec, as_f32, numeric_input, rows_of, tensor};

/// The kernel function.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KernelFn {
    /// `<x, v>`.
    Linear,
    /// `(gamma <x, v> + coef0)^degree`.
    Poly { gamma: f32, coef0: f32, degree: f32 },
    /// `exp(-gamma |x - v|²)`.
    Rbf { gamma: f32 },
    /// `tanh(gamma <x, v> + coef0)`.
    Sigmoid { gamma: f32, coef0: f32 },
}

impl KernelFn {
    fn parse(node: &NodeProto) -> TractResult<KernelFn> {
        let p: Vec<f32> = node.get_attr_opt_vec("kernel_params")?.unwrap_or_default();
        let (gamma, coef0, degree) = match p.as_slice() {
            [] => (0.0, 0.0, 0.0),
            [g, c, d, ..] => (*g, *c, *d),
            _ => bail!("'kernel_params' must hold gamma, coef0 and degree"),
        };
        Ok(
            match node
                .get_attr_opt::<&str>("kernel_type")?
                .unwrap_or("LINEAR")
            {
                "LINEAR" => KernelFn::Linear,
                "POLY" => KernelFn::Poly {
                    gamma,
                    coef0,
                    degree,
                },
                "RBF" => KernelFn::Rbf { gamma },
                "SIGMOID" => KernelFn::Sigmoid { gamma, coef0 },
                other => bail!("unknown kernel_type '{other}'"),
            },
        )
    }

    fn eval(self, x: &[f32], v: &[f32]) -> f32 {
        let dot = || x.iter().zip(v).map(|(a, b)| a * b).sum::<f32>();
        match self {
            KernelFn::Linear => dot(),
            KernelFn::Poly {
                gamma,
                coef0,
                degree,
            } => {
                let b = gamma * dot() + coef0;
                if degree == 2.0 {
                    b * b
                } else if degree == 3.0 {
                    b * b * b
                } else {
                    b.powf(degree)
                }
            }
            KernelFn::Rbf { gamma } => {
                let d: f32 = x.iter().zip(v).map(|(a, b)| (a - b) * (a - b)).sum();
                (-gamma * d).exp()
            }
            KernelFn::Sigmoid { gamma, coef0 } => (gamma * dot() + coef0).tanh(),
        }
    }
}

/// Pairwise coupling of one-vs-one probabilities into class probabilities (Wu, Lin and Weng
/// 2004, method 2, as libsvm and onnxruntime iterate it: at most 100 rounds, tolerance
/// 0.005 / k). `r[i * k + j]` is the probability of class i over class j.
fn couple(k: usize, r: &[f32]) -> Vec<f32> {
    let mut q = vec![0f32; k * k];
    let mut p = vec![1.0 / k as f32; k];
    for i in 0..k {
        for j in 0..i {
            q[i * k + i] += r[j * k + i] * r[j * k + i];
            q[i * k + j] = q[j * k + i];
        }
        for j in i + 1..k {
            q[i * k + i] += r[j * k + i] * r[j * k + i];
            q[i * k + j] = -r[j * k + i] * r[i * k + j];
        }
    }
    let eps = 0.005 / k as f32;
    let mut qp = vec![0f32; k];
    for _ in 0..100 {
        let mut pqp = 0.0;
        for i in 0..k {
            qp[i] = (0..k).map(|j| q[i * k + j] * p[j]).sum();
            pqp += p[i] * qp[i];
        }
        let max_error = qp.iter().map(|v| (v - pqp).abs()).fold(0.0, f32::max);
        if max_error < eps {
            break;
        }
        for i in 0..k {
            let diff = (-qp[i] + pqp) / q[i * k + i];
            p[i] += diff;
            pqp = (pqp + diff * (diff * q[i * k + i] + 2.0 * qp[i])) / (1.0 + diff) / (1.0 + diff);
            for j in 0..k {
                qp[j] = (qp[j] + diff * q[i * k + j]) / (1.0 + diff);
                p[j] /= 1.0 + diff;
            }
        }
    }
    p
}

/// `SVMClassifier`.
#[derive(Debug)]
pub struct Classifier {
    kernel: KernelFn,
    labels: Labels,
    /// Support vectors per class; empty in linear mode.
    per_class: Vec<usize>,
    start: Vec<usize>,
    vectors: Vec<f32>,
    n_vectors: usize,
    coefficients: Vec<f32>,
    rho: Vec<f32>,
    prob_a: Vec<f32>,
    prob_b: Vec<f32>,
    post: PostTransform,
    all_positive: bool,
}

pub(super) fn classifier(_: &ParsingContext, node: &NodeProto) -> TractResult<Arc<dyn Kernel>> {
    let labels = Labels::parse(node)?;
    let k = labels.len();
    let per_class: Vec<i64> = node
        .get_attr_opt_vec("vectors_per_class")?
        .unwrap_or_default();
    if per_class.iter().any(|&v| v < 0) {
        bail!("'vectors_per_class' has a negative count");
    }
    let per_class: Vec<usize> = per_class.into_iter().map(|v| v as usize).collect();
    let n_vectors: usize = per_class.iter().sum();
    let mut start = Vec::with_capacity(per_class.len());
    let mut at = 0;
    for &n in &per_class {
        start.push(at);
        at += n;
    }
    let vectors: Vec<f32> = node
        .get_attr_opt_vec("support_vectors")?
        .unwrap_or_default();
    let coefficients: Vec<f32> = node.get_attr_vec("coefficients")?;
    let rho: Vec<f32> = node.get_attr_vec("rho")?;
    let prob_a: Vec<f32> = node.get_attr_opt_vec("prob_a")?.unwrap_or_default();
    let prob_b: Vec<f32> = node.get_attr_opt_vec("prob_b")?.unwrap_or_default();
    let pairs = k * (k - 1) / 2;
    if prob_a.len() != prob_b.len() {
        bail!("'prob_a' and 'prob_b' differ in length");
    }
    if n_vectors > 0 {
        if per_class.len() != k {
            bail!(
                "'vectors_per_class' has {} entries for {k} classes",
                per_class.len()
            );
        }
        if vectors.is_empty() || !vectors.len().is_multiple_of(n_vectors) {
            bail!(
                "{} support vector values for {n_vectors} vectors",
                vectors.len()
            );
        }
        if coefficients.len() < (k - 1) * n_vectors {
            bail!(
                "{} coefficients, expected {}",
                coefficients.len(),
                (k - 1) * n_vectors
            );
        }
        if rho.len() < pairs || (!prob_a.is_empty() && prob_a.len() < pairs) {
            bail!("'rho' and 'prob_a'/'prob_b' need one value per pair of classes ({pairs})");
        }
    } else if rho.is_empty() || !coefficients.len().is_multiple_of(k) {
        bail!(
            "linear SVM: {} coefficients for {k} classes and {} rho",
            coefficients.len(),
            rho.len()
        );
    }
    let all_positive = coefficients.iter().all(|&c| c >= 0.0);
    Ok(Arc::new(Classifier {
        kernel: if n_vectors > 0 {
            KernelFn::parse(node)?
        } else {
            KernelFn::Linear
        },
        labels,
        per_class,
        start,
        vectors,
        n_vectors,
        coefficients,
        rho,
        prob_a,
        prob_b,
        post: PostTransform::of(node)?,
        all_positive,
    }))
}

impl Classifier {
    fn svc(&self) -> bool {
        self.n_vectors > 0
    }

    /// Columns of the score output.
    fn width(&self) -> usize {
        let k = self.labels.len();
        if self.svc() && self.prob_a.is_empty() {
            if k > 2 { k * (k - 1) / 2 } else { 2 }
        } else {
            k
        }
    }

    fn features(&self) -> usize {
        if self.svc() {
            self.vectors.len() / self.n_vectors
        } else {
            self.coefficients.len() / self.labels.len()
        }
    }

    /// One row: the winning class index and the score row.
    fn row(&self, x: &[f32]) -> (usize, Vec<f32>) {
        let k = self.labels.len();
        let f = self.features();
        if !self.svc() {
            let mut s: Vec<f32> = (0..k)
                .map(|c| {
                    KernelFn::Linear.eval(x, &self.coefficients[c * f..(c + 1) * f]) + self.rho[0]
                })
                .collect();
            let (mut best, mut max) = (0, s[0]);
            for (i, &v) in s.iter().enumerate() {
                if v > max {
                    (best, max) = (i, v);
                }
            }
            let win = self.binary_label(best, max, false);
            transform::apply_f32(self.post, &mut s);
            return (win, s);
        }
        let kern: Vec<f32> = (0..self.n_vectors)
            .map(|v| self.kernel.eval(x, &self.vectors[v * f..(v + 1) * f]))
            .collect();
        let mut votes = vec![0usize; k];
        let mut pair_scores = Vec::with_capacity(k * (k - 1) / 2);
        let nv = self.n_vectors;
        let mut idx = 0;
        for i in 0..k.saturating_sub(1) {
            for j in i + 1..k {
                let mut sum = 0f64;
                for m in 0..self.per_class[i] {
                    let at = self.start[i] + m;
                    sum += (self.coefficients[(j - 1) * nv + at] * kern[at]) as f64;
                }
                for m in 0..self.per_class[j] {
                    let at = self.start[j] + m;
                    sum += (self.coefficients[i * nv + at] * kern[at]) as f64;
                }
                sum += self.rho[idx] as f64;
                idx += 1;
                pair_scores.push(sum as f32);
                votes[if sum > 0.0 { i } else { j }] += 1;
            }
        }
        // The first class with the most votes.
        let mut best = 0;
        for (i, &v) in votes.iter().enumerate() {
            if v > votes[best] {
                best = i;
            }
        }
        let win = self.binary_label(best, 0.0, !self.prob_a.is_empty());
        if !self.prob_a.is_empty() {
            let mut r = vec![0f32; k * k];
            let mut index = 0;
            for i in 0..k - 1 {
                for j in i + 1..k {
                    let v = 1.0
                        - transform::logistic(
                            pair_scores[index] * self.prob_a[index] + self.prob_b[index],
                        );
                    let v = v.clamp(1e-7, 1.0 - 1e-7);
                    r[i * k + j] = v;
                    r[j * k + i] = 1.0 - v;
                    index += 1;
                }
            }
            let mut p = couple(k, &r);
            transform::apply_f32(self.post, &mut p);
            return (win, p);
        }
        if k <= 2 {
            let how = if self.post == PostTransform::None {
                Second::Negate
            } else {
                Second::Complement
            };
            return (
                win,
                transform::second_class(self.post, pair_scores[0], how).to_vec(),
            );
        }
        transform::apply_f32(self.post, &mut pair_scores);
        (win, pair_scores)
    }

    /// onnxruntime's label for two classes; otherwise the winning index.
    fn binary_label(&self, best: usize, max_weight: f32, have_proba: bool) -> usize {
        if self.labels.len() != 2 || have_proba {
            return best;
        }
        if (self.all_positive && max_weight >= 0.5) || (max_weight > 0.0 && !self.all_positive) {
            1
        } else {
            best
        }
    }
}

impl Kernel for Classifier {
    fn name(&self) -> &'static str {
        "SVMClassifier"
    }

    fn outputs(&self, input: DatumType) -> TractResult<Vec<OutSpec>> {
        numeric_input("SVMClassifier", input)?;
        Ok(vec![
            OutSpec::new(self.labels.dt(), OutShape::Rows),
            OutSpec::new(DatumType::F32, OutShape::RowsBy(self.width())),
        ])
    }

    fn eval(&self, inputs: &[TValue]) -> TractResult<Vec<Tensor>> {
        let (rows, cols) = rows_of(&inputs[0])?;
        if cols != self.features() {
            bail!(
                "SVMClassifier: rows have {cols} features, the model expects {}",
                self.features()
            );
        }
        let x = as_f32(&inputs[0])?;
        let mut winners = Vec::with_capacity(rows);
        let mut scores = Vec::with_capacity(rows * self.width());
        for r in 0..rows {
            let (w, s) = self.row(&x[r * cols..(r + 1) * cols]);
            winners.push(w);
            scores.extend(s);
        }
        Ok(vec![
            self.labels.pick(rows, &winners)?,
            tensor(&[rows, self.width()], scores)?,
        ])
    }
}

/// `SVMRegressor`.
#[derive(Debug)]
pub struct Regressor {
    kernel: KernelFn,
    vectors: Vec<f32>,
    n_vectors: usize,
    coefficients: Vec<f32>,
    rho: f32,
    one_class: bool,
}

pub(super) fn regressor(_: &ParsingContext, node: &NodeProto) -> TractResult<Arc<dyn Kernel>> {
    let n: i64 = node.get_attr_opt("n_supports")?.unwrap_or(0);
    if n < 0 {
        bail!("'n_supports' is negative");
    }
    let n = n as usize;
    let vectors: Vec<f32> = node
        .get_attr_opt_vec("support_vectors")?
        .unwrap_or_default();
    let coefficients: Vec<f32> = node.get_attr_vec("coefficients")?;
    let rho: Vec<f32> = node.get_attr_vec("rho")?;
    if rho.is_empty() || coefficients.is_empty() {
        bail!("'rho' and 'coefficients' must not be empty");
    }
    if n > 0 && (vectors.is_empty() || !vectors.len().is_multiple_of(n) || coefficients.len() < n) {
        bail!(
            "{} support vector values and {} coefficients for {n} vectors",
            vectors.len(),
            coefficients.len()
        );
    }
    Ok(Arc::new(Regressor {
        kernel: if n > 0 {
            KernelFn::parse(node)?
        } else {
            KernelFn::Linear
        },
        vectors,
        n_vectors: n,
        coefficients,
        rho: rho[0],
        one_class: node.get_attr_opt::<i64>("one_class")?.unwrap_or(0) != 0,
    }))
}

impl Kernel for Regressor {
    fn name(&self) -> &'static str {
        "SVMRegressor"
    }

    fn outputs(&self, input: DatumType) -> TractResult<Vec<OutSpec>> {
        numeric_input("SVMRegressor", input)?;
        Ok(vec![OutSpec::new(DatumType::F32, OutShape::RowsBy(1))])
    }

    fn eval(&self, inputs: &[TValue]) -> TractResult<Vec<Tensor>> {
        let (rows, cols) = rows_of(&inputs[0])?;
        let f = self
            .vectors
            .len()
            .checked_div(self.n_vectors)
            .unwrap_or(self.coefficients.len());
        if cols != f {
            bail!("SVMRegressor: rows have {cols} features, the model expects {f}");
        }
        let x = as_f32(&inputs[0])?;
        let out = (0..rows)
            .map(|r| {
                let row = &x[r * cols..(r + 1) * cols];
                let y = if self.n_vectors > 0 {
                    (0..self.n_vectors)
                        .map(|v| {
                            self.coefficients[v]
                                * self.kernel.eval(row, &self.vectors[v * f..(v + 1) * f])
                        })
                        .sum::<f32>()
                        + self.rho
                } else {
                    KernelFn::Linear.eval(row, &self.coefficients) + self.rho
                };
                if self.one_class {
                    if y > 0.0 { 1.0 } else { -1.0 }
                } else {
                    y
                }
            })
            .collect();
        Ok(vec![tensor(&[rows, 1], out)?])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coupling_two_classes_gives_the_pairwise_probability() {
        let r = [0.0, 0.8, 0.2, 0.0];
        let p = couple(2, &r);
        assert!(
            (p[0] - 0.8).abs() < 0.01 && (p[1] - 0.2).abs() < 0.01,
            "{p:?}"
        );
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }

    #[test]
    fn rbf_kernel_is_one_at_the_vector() {
        let k = KernelFn::Rbf { gamma: 0.5 };
        assert_eq!(k.eval(&[1.0, 2.0], &[1.0, 2.0]), 1.0);
        assert!((k.eval(&[0.0], &[2.0]) - (-2f32).exp()).abs() < 1e-7);
    }
}
