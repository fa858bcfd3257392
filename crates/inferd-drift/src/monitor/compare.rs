//! One monitor's current window against another's (a canary's outputs against the primary's
//! over the same time), for the drift guardrails.

use super::*;

impl Monitor {
    /// The largest PSI over one kind's features, this monitor's current window against
    /// `expected`'s current window (a canary's outputs against the primary's over the same
    /// time), over the features both bin alike: numeric ones with equal bin edges (a monitor
    /// seeded with the other's reference has them), categorical ones matched by label. `None`
    /// until some feature has `min_current` values in both windows.
    pub fn max_psi_against_window(&self, expected: &Monitor, kind: TensorKind) -> Option<f64> {
        let (mine, theirs) = (self.oldest(), expected.oldest());
        let mut best: Option<f64> = None;
        for t in self.tensors.iter().filter(|t| t.kind == kind) {
            let Some(e) = expected
                .tensors
                .iter()
                .find(|x| x.kind == kind && x.name == t.name)
            else {
                continue;
            };
            let pairs = t.features.iter().chain(t.argmax.as_ref()).filter_map(|f| {
                let g = e
                    .features
                    .iter()
                    .chain(e.argmax.as_ref())
                    .find(|g| g.name == f.name)?;
                Some((f, g))
            });
            for (f, g) in pairs {
                let (a, b) = (f.current(mine), g.current(theirs));
                if a.total < self.cfg.min_current || b.total < self.cfg.min_current {
                    continue;
                }
                let shares = match (&f.sketch, &g.sketch) {
                    (
                        Sketch::Numeric { edges: Some(x), .. },
                        Sketch::Numeric { edges: Some(y), .. },
                    ) if x == y => Some((b.shares(x.bins()), a.shares(x.bins()))),
                    (
                        Sketch::Categorical { categories: x },
                        Sketch::Categorical { categories: y },
                    ) => Some(by_label(&b, y, &a, x)),
                    _ => None,
                };
                if let Some((expected_shares, actual)) = shares {
                    let v = psi(&expected_shares, &actual);
                    best = Some(best.map_or(v, |m| m.max(v)));
                }
            }
        }
        best
    }
}

/// Two categorical windows as shares over the union of their labels (each monitor numbers its
/// categories in the order it met them), "other" last.
fn by_label(b: &Counts, bl: &Categories, a: &Counts, al: &Categories) -> (Vec<f64>, Vec<f64>) {
    let mut labels: Vec<&str> = bl.labels.iter().map(String::as_str).collect();
    for l in &al.labels {
        if !labels.contains(&l.as_str()) {
            labels.push(l);
        }
    }
    let share = |c: &Counts, cats: &Categories| -> Vec<f64> {
        let t = c.total.max(1) as f64;
        let at = |i: usize| c.counts.get(i).copied().unwrap_or(0) as f64 / t;
        let mut v: Vec<f64> = labels
            .iter()
            .map(|l| cats.labels.iter().position(|x| x == l).map_or(0.0, at))
            .collect();
        v.push(at(crate::sketch::CATEGORIES));
        v
    };
    (share(b, bl), share(a, al))
}
