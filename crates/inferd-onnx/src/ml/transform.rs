//! What the classifiers and regressors share: `post_transform` functions, class labels, and
//! onnxruntime's rules for turning raw scores into a label and a score row, including its
//! binary cases (one column of weights standing for two classes).

use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

use super::tensor;

/// `post_transform`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PostTransform {
    /// Raw scores.
    None,
    /// `1 / (1 + e^-x)` each.
    Logistic,
    /// Softmax over the row.
    Softmax,
    /// Softmax over the row's non-zero entries; zeros stay (nearly) zero.
    SoftmaxZero,
    /// `sqrt(2) * erfinv(2x - 1)` each (Winitzki's approximation, as onnxruntime computes it).
    Probit,
}

impl PostTransform {
    /// A node's `post_transform` attribute (NONE when absent).
    pub fn of(node: &NodeProto) -> TractResult<PostTransform> {
        Self::parse(
            node.get_attr_opt::<&str>("post_transform")?
                .unwrap_or("NONE"),
        )
    }

    /// Parses the attribute.
    pub fn parse(s: &str) -> TractResult<PostTransform> {
        Ok(match s {
            "NONE" => PostTransform::None,
            "LOGISTIC" => PostTransform::Logistic,
            "SOFTMAX" => PostTransform::Softmax,
            "SOFTMAX_ZERO" => PostTransform::SoftmaxZero,
            "PROBIT" => PostTransform::Probit,
            other => bail!("unknown post_transform '{other}'"),
        })
    }
}

/// The logistic function, computed as onnxruntime does (symmetric around 0 for accuracy).
pub fn logistic(x: f32) -> f32 {
    let v = 1.0 / (1.0 + (-x.abs()).exp());
    if x < 0.0 { 1.0 - v } else { v }
}

fn erf_inv(x: f32) -> f32 {
    // Winitzki's approximation with a = 0.147, which is what onnxruntime evaluates.
    let sign = if x < 0.0 { -1.0 } else { 1.0 };
    let l = ((1.0 - x) * (1.0 + x)).ln();
    let v = 2.0 / (std::f32::consts::PI * 0.147) + 0.5 * l;
    let v2 = l / 0.147;
    sign * (-v + (v * v - v2).sqrt()).sqrt()
}

/// The probit function.
pub fn probit(x: f32) -> f32 {
    std::f32::consts::SQRT_2 * erf_inv(2.0 * x - 1.0)
}

fn softmax(v: &mut [f32]) {
    let max = v.iter().cloned().fold(f32::MIN, f32::max);
    let mut sum = 0.0;
    for x in v.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    v.iter_mut().for_each(|x| *x /= sum);
}

fn softmax_zero(v: &mut [f32]) {
    let max = v.iter().cloned().fold(f32::MIN, f32::max);
    let exp_neg_max = (-max).exp();
    let mut sum = 0.0;
    for x in v.iter_mut() {
        if x.abs() > 1e-7 {
            *x = (*x - max).exp();
            sum += *x;
        } else {
            *x *= exp_neg_max;
        }
    }
    v.iter_mut().for_each(|x| *x /= sum);
}

/// Applies `post` to one row of scores. A single score is only ever changed by PROBIT, as in
/// onnxruntime.
pub fn apply(post: PostTransform, scores: &[f64]) -> Vec<f32> {
    let mut v: Vec<f32> = scores.iter().map(|&s| s as f32).collect();
    apply_f32(post, &mut v);
    v
}

/// [`apply`] in place on float scores.
pub fn apply_f32(post: PostTransform, v: &mut [f32]) {
    if v.len() == 1 {
        if post == PostTransform::Probit {
            v[0] = probit(v[0]);
        }
        return;
    }
    match post {
        PostTransform::None => {}
        PostTransform::Logistic => v.iter_mut().for_each(|x| *x = logistic(*x)),
        PostTransform::Softmax => softmax(v),
        PostTransform::SoftmaxZero => softmax_zero(v),
        PostTransform::Probit => v.iter_mut().for_each(|x| *x = probit(*x)),
    }
}

/// How one binary score becomes two columns (onnxruntime's `add_second_class`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Second {
    /// Positive weights: `[1 - s, s]` (`[1 - p, p]` with `p = logistic(s)` under LOGISTIC).
    Complement,
    /// Mixed weights: `[-s, s]`, or `[logistic(-s), logistic(s)]` under LOGISTIC.
    Negate,
    /// The score is left alone.
    Keep,
}

/// Turns one binary score into the two-column row.
pub fn second_class(post: PostTransform, s: f32, how: Second) -> [f32; 2] {
    if post == PostTransform::Probit {
        return [probit(s), 0.0];
    }
    match how {
        // onnxruntime 1.32 puts the score through the sigmoid first (older ones did not).
        Second::Complement if post == PostTransform::Logistic => {
            let p = logistic(s);
            [1.0 - p, p]
        }
        Second::Complement => [1.0 - s, s],
        Second::Negate if post == PostTransform::Logistic => [logistic(-s), logistic(s)],
        Second::Negate => [-s, s],
        Second::Keep => [s, 0.0],
    }
}

/// What onnxruntime knows of a binary tree classifier's weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Binary {
    /// Every leaf weight is for one class (the "binary case").
    pub single_class: bool,
    /// No leaf weight is negative.
    pub all_positive: bool,
}

/// A two-class tree classifier's label index and scores from its class sums (`row`, without
/// base values), which classes any leaf wrote (`seen`), its base values and transform.
pub fn tree_binary(
    b: Binary,
    row: &[f64],
    seen: &[bool],
    base: &[f64],
    post: PostTransform,
) -> (usize, Vec<f32>) {
    let (mut s0, mut s1) = (row[0] as f32, row[1] as f32);
    let (h0, mut h1) = (seen[0], seen[1]);
    let mut two = true;
    let mut how = Second::Keep;
    match base.len() {
        2 if h1 => {
            // onnxruntime's rule, which assumes both base values are equal.
            s1 = base[1] as f32 + s0;
            s0 = -s1;
            h1 = true;
        }
        2 => {
            s1 += base[1] as f32;
            s0 += base[0] as f32;
        }
        1 => {
            s0 += base[0] as f32;
            two = h1;
        }
        _ => {
            how = Second::Negate;
            two = h1;
        }
    }
    let pos = if two && h1 {
        s1
    } else if h0 {
        s0
    } else {
        0.0
    };
    let label = if b.single_class {
        let (win, h) = if b.all_positive {
            (pos > 0.5, [Second::Complement, Second::Complement])
        } else {
            (pos > 0.0, [Second::Negate, Second::Negate])
        };
        how = if win { h[0] } else { h[1] };
        usize::from(win)
    } else {
        usize::from(pos > 0.0)
    };
    if two {
        let mut v = [if h0 { s0 } else { 0.0 }, if h1 { s1 } else { 0.0 }];
        apply_f32(post, &mut v);
        (label, v.to_vec())
    } else {
        (label, second_class(post, s0, how).to_vec())
    }
}

/// A multiclass tree row from its sums (`row`, no base values): base values are added (a class
/// with a base value counts as scored); the label is the first highest score among scored
/// classes; unscored classes enter the transform as 0.
pub fn multiclass(
    row: &[f64],
    seen: &[bool],
    base: &[f64],
    post: PostTransform,
) -> (usize, Vec<f32>) {
    let mut s = row.to_vec();
    let mut has = seen.to_vec();
    for (k, b) in base.iter().enumerate().take(s.len()) {
        s[k] = if has[k] { s[k] + b } else { *b };
        has[k] = true;
    }
    let mut best: Option<(usize, f64)> = None;
    for (i, &v) in s.iter().enumerate() {
        if has[i] && best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    let z: Vec<f64> = s
        .iter()
        .zip(&has)
        .map(|(&v, &h)| if h { v } else { 0.0 })
        .collect();
    (best.map_or(0, |b| b.0), apply(post, &z))
}

/// A classifier's class labels.
#[derive(Clone, Debug, PartialEq)]
pub enum Labels {
    /// `classlabels_int64s` (or `classlabels_ints`).
    Ints(Vec<i64>),
    /// `classlabels_strings`.
    Strings(Vec<String>),
}

impl Labels {
    /// Reads `classlabels_int64s`/`classlabels_ints` or `classlabels_strings`.
    pub fn parse(node: &NodeProto) -> TractResult<Labels> {
        let ints = match node.get_attr_opt_vec::<i64>("classlabels_int64s")? {
            Some(v) => Some(v),
            None => node.get_attr_opt_vec::<i64>("classlabels_ints")?,
        };
        let strings: Option<Vec<String>> = node.get_attr_opt_vec("classlabels_strings")?;
        match (ints, strings) {
            (Some(v), None) if !v.is_empty() => Ok(Labels::Ints(v)),
            (None, Some(v)) if !v.is_empty() => Ok(Labels::Strings(v)),
            _ => bail!(
                "exactly one of the integer and string class label attributes must be set and not empty"
            ),
        }
    }

    /// Number of classes.
    pub fn len(&self) -> usize {
        match self {
            Labels::Ints(v) => v.len(),
            Labels::Strings(v) => v.len(),
        }
    }

    /// The label tensor's type.
    pub fn dt(&self) -> DatumType {
        match self {
            Labels::Ints(_) => DatumType::I64,
            Labels::Strings(_) => DatumType::String,
        }
    }

    /// The label tensor `[rows]` for the winning class indices.
    pub fn pick(&self, rows: usize, winners: &[usize]) -> TractResult<Tensor> {
        match self {
            Labels::Ints(v) => tensor(
                &[rows],
                winners.iter().map(|&w| v[w.min(v.len() - 1)]).collect(),
            ),
            Labels::Strings(v) => tensor(
                &[rows],
                winners
                    .iter()
                    .map(|&w| v[w.min(v.len() - 1)].clone())
                    .collect(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logistic_and_probit_match_their_definitions() {
        assert!((logistic(0.0) - 0.5).abs() < 1e-7);
        assert!((logistic(-2.0) - 1.0 / (1.0 + 2f32.exp())).abs() < 1e-7);
        // probit(0.975) ~ 1.96 within the approximation's accuracy.
        assert!(
            (probit(0.975) - 1.959_964).abs() < 2e-3,
            "{}",
            probit(0.975)
        );
        assert!(probit(0.5).abs() < 1e-6);
    }

    #[test]
    fn one_score_is_changed_only_by_probit() {
        assert_eq!(apply(PostTransform::Logistic, &[2.0]), vec![2.0]);
        assert_eq!(apply(PostTransform::Softmax, &[0.0, 0.0]), vec![0.5, 0.5]);
    }

    #[test]
    fn positive_binary_weights_are_a_probability_of_the_second_class() {
        let b = Binary {
            single_class: true,
            all_positive: true,
        };
        // A random forest's vote share 0.7 for the positive class.
        let (label, p) = tree_binary(b, &[0.7, 0.0], &[true, false], &[], PostTransform::None);
        assert_eq!(label, 1);
        assert!(
            (p[0] - 0.3).abs() < 1e-6 && (p[1] - 0.7).abs() < 1e-6,
            "{p:?}"
        );
        let (label, _) = tree_binary(b, &[0.4, 0.0], &[true, false], &[], PostTransform::None);
        assert_eq!(label, 0);
    }

    #[test]
    fn mixed_binary_weights_are_a_margin_through_logistic() {
        let b = Binary {
            single_class: true,
            all_positive: false,
        };
        let (label, p) = tree_binary(
            b,
            &[-1.0, 0.0],
            &[true, false],
            &[0.5],
            PostTransform::Logistic,
        );
        assert_eq!(label, 0, "margin -0.5 is the negative class");
        assert!((p[1] - logistic(-0.5)).abs() < 1e-6 && (p[0] - logistic(0.5)).abs() < 1e-6);
    }

    #[test]
    fn multiclass_label_is_the_first_highest_scored_class() {
        let (label, _) = multiclass(
            &[1.0, 3.0, 3.0],
            &[true, true, true],
            &[],
            PostTransform::None,
        );
        assert_eq!(label, 1);
        let (label, _) = multiclass(&[0.0, -1.0], &[false, true], &[], PostTransform::None);
        assert_eq!(label, 1, "a class no leaf voted for cannot win");
    }
}
