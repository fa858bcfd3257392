//! Saved references (`inferd drift baseline`): a monitor's reference written out, and a
//! monitor started from one.

use serde::{Deserialize, Serialize};

use super::*;

/// A saved reference (`inferd drift baseline`): every feature's bins or categories and its
/// counts. A version whose model folder holds one starts with it instead of collecting its own.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reference {
    /// Requests it was made of.
    pub requests: u64,
    /// Tensors.
    pub tensors: Vec<TensorReference>,
}

/// One tensor of a saved reference.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TensorReference {
    /// Name.
    pub name: String,
    /// Input or output.
    pub kind: TensorKind,
    /// Features, argmax last when there is one.
    pub features: Vec<FeatureReference>,
}

/// One feature of a saved reference.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FeatureReference {
    /// Name (position, `argmax`, `N.length`, `N.tokens`).
    pub name: String,
    /// Position.
    pub index: usize,
    /// Numeric: bin edges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edges: Option<Vec<f64>>,
    /// Categorical: labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
    /// Counts per bin or category.
    pub counts: Counts,
}

impl FeatureReference {
    fn of(f: &Feature) -> FeatureReference {
        let (edges, labels) = match &f.sketch {
            Sketch::Numeric { edges, .. } => (edges.as_ref().map(|e| e.0.clone()), None),
            Sketch::Categorical { categories } => (None, Some(categories.labels.clone())),
        };
        FeatureReference {
            name: f.name.clone(),
            index: f.index,
            edges,
            labels,
            counts: f.reference.clone(),
        }
    }

    fn feature(&self) -> Feature {
        let sketch = match (&self.edges, &self.labels) {
            (_, Some(labels)) => Sketch::Categorical {
                categories: Categories {
                    labels: labels.clone(),
                },
            },
            (edges, None) => Sketch::Numeric {
                raw: Vec::new(),
                edges: Some(Edges(edges.clone().unwrap_or_default())),
            },
        };
        Feature {
            name: self.name.clone(),
            index: self.index,
            sketch,
            reference: self.counts.clone(),
            window: VecDeque::new(),
        }
    }
}

impl Monitor {
    /// A monitor that starts from a saved reference (its current window counts at once).
    pub fn from_reference(cfg: DriftConfig, reference: &Reference) -> Monitor {
        let mut m = Monitor::new(cfg);
        m.reference_requests = reference.requests;
        m.reference_done = true;
        m.tensors = reference
            .tensors
            .iter()
            .map(|t| {
                let mut features: Vec<Feature> =
                    t.features.iter().map(FeatureReference::feature).collect();
                let argmax = features
                    .iter()
                    .position(|f| f.name == "argmax")
                    .map(|i| features.remove(i));
                TensorState {
                    name: t.name.clone(),
                    kind: t.kind,
                    features,
                    argmax,
                }
            })
            .collect();
        m
    }

    /// The reference, once complete (to save with `inferd drift baseline`).
    pub fn reference(&self) -> Option<Reference> {
        self.reference_done.then(|| Reference {
            requests: self.reference_requests,
            tensors: self
                .tensors
                .iter()
                .map(|t| TensorReference {
                    name: t.name.clone(),
                    kind: t.kind,
                    features: t
                        .features
                        .iter()
                        .chain(t.argmax.as_ref())
                        .map(FeatureReference::of)
                        .collect(),
                })
                .collect(),
        })
    }
}
