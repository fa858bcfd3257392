//! The typed model configuration: the subset of Triton's `ModelConfig` that inferd understands,
//! serialised to JSON with Triton's field names (what `GET /v2/models/{m}/config` returns).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::tensor::DataType;

/// A model's configuration (Triton's `ModelConfig`).
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelConfig {
    /// Model name; must equal the folder name.
    pub name: String,
    /// Triton platform string (`onnxruntime_onnx`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub platform: String,
    /// Triton backend name (`onnxruntime`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub backend: String,
    /// Which versions to serve.
    pub version_policy: VersionPolicy,
    /// Largest batch the model accepts; 0 means the model does not batch.
    pub max_batch_size: u32,
    /// Inputs.
    pub input: Vec<ModelInput>,
    /// Outputs.
    pub output: Vec<ModelOutput>,
    /// Execution instances.
    pub instance_group: Vec<InstanceGroup>,
    /// File name inside a version folder; backend default when empty.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub default_model_filename: String,
    /// Dynamic batching, when enabled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dynamic_batching: Option<DynamicBatching>,
    /// Warm-up requests run before a version becomes ready.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub model_warmup: Vec<ModelWarmup>,
    /// Ensemble steps, for `platform: "ensemble"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ensemble_scheduling: Option<EnsembleScheduling>,
    /// Free-form string parameters.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub parameters: BTreeMap<String, ModelParameter>,
    /// Optimization settings (execution accelerators).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub optimization: Option<Optimization>,
    /// The response cache (`response_cache { enable: true }`), used when the server has one
    /// (`--cache-config`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_cache: Option<ResponseCacheConfig>,
    /// How requests and responses pair up (`decoupled`: any number of responses each).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_transaction_policy: Option<ModelTransactionPolicy>,
    /// Stateful sequences (`sequence_batching`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sequence_batching: Option<super::sequence::SequenceBatching>,
}

/// Triton's `model_transaction_policy` message.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelTransactionPolicy {
    /// Zero, one or many responses per request, streamed as they come.
    pub decoupled: bool,
}

impl ModelConfig {
    /// Whether the model is decoupled (any number of responses per request).
    pub fn is_decoupled(&self) -> bool {
        self.model_transaction_policy
            .as_ref()
            .is_some_and(|p| p.decoupled)
    }
}

/// Triton's `response_cache` message.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ResponseCacheConfig {
    /// Whether identical requests are answered from the cache.
    pub enable: bool,
}

/// Triton's `optimization` message; inferd reads its execution accelerators.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Optimization {
    /// Accelerators to run the model with, in order of preference.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub execution_accelerators: Option<ExecutionAccelerators>,
}

/// Triton's `optimization.execution_accelerators`.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ExecutionAccelerators {
    /// For GPU instances (`tensorrt`, `cuda`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gpu_execution_accelerator: Vec<Accelerator>,
    /// For CPU instances (`openvino`, ...).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cpu_execution_accelerator: Vec<Accelerator>,
}

/// One accelerator and its settings.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Accelerator {
    /// Name (`tensorrt`).
    pub name: String,
    /// Settings (`precision_mode: FP16`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub parameters: BTreeMap<String, String>,
}

impl ModelConfig {
    /// True when the model takes a leading batch dimension.
    pub fn batches(&self) -> bool {
        self.max_batch_size > 0
    }

    /// The input with this name.
    pub fn input(&self, name: &str) -> Option<&ModelInput> {
        self.input.iter().find(|i| i.name == name)
    }

    /// The output with this name.
    pub fn output(&self, name: &str) -> Option<&ModelOutput> {
        self.output.iter().find(|o| o.name == name)
    }

    /// True when an instance group asks for GPUs.
    pub fn wants_gpu(&self) -> bool {
        self.instance_group
            .iter()
            .any(|g| g.kind == InstanceKind::Gpu)
    }

    fn accelerators(&self) -> Option<&ExecutionAccelerators> {
        self.optimization
            .as_ref()
            .and_then(|o| o.execution_accelerators.as_ref())
    }

    /// GPU accelerators named in `optimization.execution_accelerators`.
    pub fn gpu_accelerators(&self) -> &[Accelerator] {
        self.accelerators()
            .map_or(&[], |e| e.gpu_execution_accelerator.as_slice())
    }

    /// CPU accelerators named in `optimization.execution_accelerators`.
    pub fn cpu_accelerators(&self) -> &[Accelerator] {
        self.accelerators()
            .map_or(&[], |e| e.cpu_execution_accelerator.as_slice())
    }

    /// Total execution instances (at least one): as many as [`ModelConfig::placements`]
    /// lists, counted without building the list (request paths ask for it).
    pub fn instance_count(&self) -> usize {
        let n: usize = self
            .instance_group
            .iter()
            .map(|g| g.count.max(1) as usize * g.pinned_gpus().len().max(1))
            .sum();
        n.max(1)
    }

    /// Where each execution instance runs, Triton's way: a group places `count` instances
    /// (at least one), and a `KIND_GPU` group with `gpus: [a, b]` places `count` on each listed
    /// GPU. No groups: one instance of the backend's choosing.
    pub fn placements(&self) -> Vec<Placement> {
        if self.instance_group.is_empty() {
            return vec![Placement::default()];
        }
        let mut out = Vec::new();
        for (i, g) in self.instance_group.iter().enumerate() {
            let n = g.count.max(1) as usize;
            let gpus: Vec<Option<i64>> = match g.pinned_gpus() {
                [] => vec![None],
                listed => listed.iter().map(|&d| Some(d)).collect(),
            };
            for gpu in gpus {
                out.extend(std::iter::repeat_n(
                    Placement {
                        group: i,
                        kind: g.kind,
                        gpu,
                    },
                    n,
                ));
            }
        }
        out
    }
}

/// Where one execution instance runs (see [`ModelConfig::placements`]). The default: the
/// backend's choice, no GPU pinned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Placement {
    /// Index of its `instance_group`.
    pub group: usize,
    /// The group's kind.
    pub kind: InstanceKind,
    /// The GPU it is pinned to (`KIND_GPU` with `gpus` listed); `None`: the backend's default
    /// device.
    pub gpu: Option<i64>,
}

/// A string parameter (`parameters { key: "k" value: { string_value: "v" } }`).
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ModelParameter {
    /// The value.
    pub string_value: String,
}

/// Which versions of a model to serve.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VersionPolicy {
    /// The newest `num_versions` versions.
    Latest {
        /// How many.
        num_versions: u32,
    },
    /// Every version present.
    All {},
    /// Exactly these versions.
    Specific {
        /// The versions.
        versions: Vec<u64>,
    },
}

impl Default for VersionPolicy {
    fn default() -> Self {
        VersionPolicy::Latest { num_versions: 1 }
    }
}

impl VersionPolicy {
    /// Picks the versions to serve from those available (any order); result ascending.
    pub fn select(&self, available: &[u64]) -> Vec<u64> {
        let mut v: Vec<u64> = available.to_vec();
        v.sort_unstable();
        v.dedup();
        match self {
            VersionPolicy::All {} => v,
            VersionPolicy::Latest { num_versions } => {
                let keep = (*num_versions as usize).min(v.len());
                v.split_off(v.len() - keep)
            }
            VersionPolicy::Specific { versions } => {
                v.retain(|x| versions.contains(x));
                v
            }
        }
    }
}

/// A tensor's reshape (`reshape: { shape: [...] }`).
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Reshape {
    /// The shape the model sees.
    pub shape: Vec<i64>,
}

/// Element type as written in config files (`TYPE_FP32`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ConfigDataType(pub DataType);

impl TryFrom<String> for ConfigDataType {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        DataType::from_config_name(&s)
            .map(ConfigDataType)
            .ok_or_else(|| format!("unknown data_type '{s}'"))
    }
}

impl From<ConfigDataType> for String {
    fn from(d: ConfigDataType) -> String {
        d.0.config_name().to_string()
    }
}

impl Default for ConfigDataType {
    fn default() -> Self {
        ConfigDataType(DataType::F32)
    }
}

/// A model input.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelInput {
    /// Name.
    pub name: String,
    /// Element type.
    pub data_type: ConfigDataType,
    /// Shape without the batch dimension; -1 is variable.
    pub dims: Vec<i64>,
    /// Shape the model sees, when it differs from `dims`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reshape: Option<Reshape>,
    /// Requests may omit this input.
    pub optional: bool,
}

/// A model output.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelOutput {
    /// Name.
    pub name: String,
    /// Element type.
    pub data_type: ConfigDataType,
    /// Shape without the batch dimension; -1 is variable.
    pub dims: Vec<i64>,
    /// Shape the model produces, when it differs from `dims`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reshape: Option<Reshape>,
    /// Labels file for the classification extension.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub label_filename: String,
}

/// Where instances run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum InstanceKind {
    /// Backend's choice.
    #[default]
    #[serde(rename = "KIND_AUTO")]
    Auto,
    /// CPU.
    #[serde(rename = "KIND_CPU")]
    Cpu,
    /// GPU.
    #[serde(rename = "KIND_GPU")]
    Gpu,
    /// Model-managed placement.
    #[serde(rename = "KIND_MODEL")]
    Model,
}

/// A group of execution instances.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct InstanceGroup {
    /// Group name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Instances in the group.
    pub count: u32,
    /// Placement.
    pub kind: InstanceKind,
    /// GPU ids for KIND_GPU.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<i64>,
}

impl InstanceGroup {
    /// The GPUs the group pins its instances to (`KIND_GPU` with `gpus` listed; else none).
    fn pinned_gpus(&self) -> &[i64] {
        if self.kind == InstanceKind::Gpu {
            &self.gpus
        } else {
            &[]
        }
    }
}

/// What happens to a request whose queue timeout expires.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum TimeoutAction {
    /// Answer with an error.
    #[default]
    #[serde(rename = "REJECT")]
    Reject,
    /// Keep it queued behind requests that have not timed out.
    #[serde(rename = "DELAY")]
    Delay,
}

/// A queue policy (`default_queue_policy`, `priority_queue_policy`).
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct QueuePolicy {
    /// Action on timeout.
    pub timeout_action: TimeoutAction,
    /// Default queue timeout; 0 is none.
    pub default_timeout_microseconds: u64,
    /// Requests may set their own timeout.
    pub allow_timeout_override: bool,
    /// Queue bound; 0 is the server default.
    pub max_queue_size: u32,
}

/// Dynamic batching settings.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct DynamicBatching {
    /// Batch sizes to prefer.
    pub preferred_batch_size: Vec<u32>,
    /// How long a request may wait for a batch to fill.
    pub max_queue_delay_microseconds: u64,
    /// Responses leave in request order.
    pub preserve_ordering: bool,
    /// Number of priority levels; 0 disables priorities.
    pub priority_levels: u32,
    /// Level of requests that name none.
    pub default_priority_level: u32,
    /// Queue policy for every level without its own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_queue_policy: Option<QueuePolicy>,
    /// Per-level queue policies.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub priority_queue_policy: BTreeMap<u32, QueuePolicy>,
}

/// One warm-up input.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct WarmupInput {
    /// Element type.
    pub data_type: ConfigDataType,
    /// Shape without the batch dimension.
    pub dims: Vec<i64>,
    /// Fill with zeros.
    pub zero_data: bool,
    /// Fill with random values.
    pub random_data: bool,
    /// Read from a file in the model's `warmup/` folder.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub input_data_file: String,
}

/// A warm-up request.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelWarmup {
    /// Name, for logs.
    pub name: String,
    /// Batch size of the request.
    pub batch_size: u32,
    /// Inputs by name.
    pub inputs: BTreeMap<String, WarmupInput>,
    /// Repetitions.
    pub count: u32,
}

/// One step of an ensemble.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct EnsembleStep {
    /// Model the step runs.
    pub model_name: String,
    /// Version; -1 for the policy's latest.
    pub model_version: i64,
    /// Step input name -> ensemble tensor name.
    pub input_map: BTreeMap<String, String>,
    /// Step output name -> ensemble tensor name.
    pub output_map: BTreeMap<String, String>,
}

/// Ensemble scheduling.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct EnsembleScheduling {
    /// Steps.
    pub step: Vec<EnsembleStep>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latest_policy_keeps_newest() {
        let p = VersionPolicy::Latest { num_versions: 2 };
        assert_eq!(p.select(&[3, 1, 10, 2]), vec![3, 10]);
        assert_eq!(p.select(&[7]), vec![7]);
        assert_eq!(p.select(&[]), Vec::<u64>::new());
    }

    #[test]
    fn all_and_specific_policies() {
        assert_eq!(VersionPolicy::All {}.select(&[2, 1]), vec![1, 2]);
        let p = VersionPolicy::Specific {
            versions: vec![1, 4],
        };
        assert_eq!(p.select(&[1, 2, 3]), vec![1]);
    }

    #[test]
    fn config_json_uses_triton_names() {
        let cfg = ModelConfig {
            name: "m".into(),
            max_batch_size: 4,
            input: vec![ModelInput {
                name: "x".into(),
                data_type: ConfigDataType(DataType::Bytes),
                dims: vec![-1],
                ..Default::default()
            }],
            ..Default::default()
        };
        let j = serde_json::to_value(&cfg).unwrap();
        assert_eq!(j["input"][0]["data_type"], "TYPE_STRING");
        assert_eq!(
            j["version_policy"],
            serde_json::json!({"latest": {"num_versions": 1}})
        );
        let back: ModelConfig = serde_json::from_value(j).unwrap();
        assert_eq!(back, cfg);
    }
}
