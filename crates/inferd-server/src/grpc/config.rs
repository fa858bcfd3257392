//! A model's effective config as the `ModelConfig` message `ModelConfig` RPC answers with.

use super::codec::dt_enum;
use crate::pb;
use inferd_core::config::{self as cfg, ModelConfig};

/// Converts the engine's config into the protocol's `ModelConfig` message.
pub fn config_to_pb(c: &ModelConfig) -> pb::ModelConfig {
    use pb::model_version_policy::{All, Latest, PolicyChoice, Specific};
    let reshape = |r: &Option<cfg::Reshape>| {
        r.as_ref().map(|r| pb::ModelTensorReshape {
            shape: r.shape.clone(),
        })
    };
    let policy = match &c.version_policy {
        cfg::VersionPolicy::Latest { num_versions } => PolicyChoice::Latest(Latest {
            num_versions: *num_versions,
        }),
        cfg::VersionPolicy::All {} => PolicyChoice::All(All {}),
        cfg::VersionPolicy::Specific { versions } => PolicyChoice::Specific(Specific {
            versions: versions.iter().map(|&v| v as i64).collect(),
        }),
    };
    let queue = |q: &cfg::QueuePolicy| pb::ModelQueuePolicy {
        timeout_action: match q.timeout_action {
            cfg::TimeoutAction::Reject => 0,
            cfg::TimeoutAction::Delay => 1,
        },
        default_timeout_microseconds: q.default_timeout_microseconds,
        allow_timeout_override: q.allow_timeout_override,
        max_queue_size: q.max_queue_size,
    };
    let scheduling = if let Some(d) = &c.dynamic_batching {
        Some(pb::model_config::SchedulingChoice::DynamicBatching(
            pb::ModelDynamicBatching {
                preferred_batch_size: d.preferred_batch_size.iter().map(|&v| v as i32).collect(),
                max_queue_delay_microseconds: d.max_queue_delay_microseconds,
                preserve_ordering: d.preserve_ordering,
                priority_levels: d.priority_levels as u64,
                default_priority_level: d.default_priority_level as u64,
                default_queue_policy: d.default_queue_policy.as_ref().map(queue),
                priority_queue_policy: d
                    .priority_queue_policy
                    .iter()
                    .map(|(k, v)| (*k as u64, queue(v)))
                    .collect(),
            },
        ))
    } else if let Some(sb) = &c.sequence_batching {
        Some(pb::model_config::SchedulingChoice::SequenceBatching(
            sequence_to_pb(sb),
        ))
    } else {
        c.ensemble_scheduling.as_ref().map(|e| {
            pb::model_config::SchedulingChoice::EnsembleScheduling(pb::ModelEnsembling {
                step: e
                    .step
                    .iter()
                    .map(|s| pb::model_ensembling::Step {
                        model_name: s.model_name.clone(),
                        model_version: s.model_version,
                        input_map: s.input_map.clone().into_iter().collect(),
                        output_map: s.output_map.clone().into_iter().collect(),
                        model_namespace: String::new(),
                    })
                    .collect(),
                ..Default::default()
            })
        })
    };
    pb::ModelConfig {
        name: c.name.clone(),
        platform: c.platform.clone(),
        backend: c.backend.clone(),
        version_policy: Some(pb::ModelVersionPolicy {
            policy_choice: Some(policy),
        }),
        max_batch_size: c.max_batch_size as i32,
        input: c
            .input
            .iter()
            .map(|i| pb::ModelInput {
                name: i.name.clone(),
                data_type: dt_enum(i.data_type.0),
                dims: i.dims.clone(),
                reshape: reshape(&i.reshape),
                optional: i.optional,
                ..Default::default()
            })
            .collect(),
        output: c
            .output
            .iter()
            .map(|o| pb::ModelOutput {
                name: o.name.clone(),
                data_type: dt_enum(o.data_type.0),
                dims: o.dims.clone(),
                reshape: reshape(&o.reshape),
                label_filename: o.label_filename.clone(),
                ..Default::default()
            })
            .collect(),
        instance_group: c
            .instance_group
            .iter()
            .map(|g| pb::ModelInstanceGroup {
                name: g.name.clone(),
                kind: match g.kind {
                    cfg::InstanceKind::Auto => 0,
                    cfg::InstanceKind::Gpu => 1,
                    cfg::InstanceKind::Cpu => 2,
                    cfg::InstanceKind::Model => 3,
                },
                count: g.count as i32,
                gpus: g.gpus.iter().map(|&x| x as i32).collect(),
                ..Default::default()
            })
            .collect(),
        default_model_filename: c.default_model_filename.clone(),
        parameters: c
            .parameters
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    pb::ModelParameter {
                        string_value: v.string_value.clone(),
                    },
                )
            })
            .collect(),
        scheduling_choice: scheduling,
        optimization: c.optimization.as_ref().map(|o| {
            let accelerators = |list: &[cfg::Accelerator]| {
                list.iter()
                    .map(
                        |a| pb::model_optimization_policy::execution_accelerators::Accelerator {
                            name: a.name.clone(),
                            parameters: a.parameters.clone().into_iter().collect(),
                        },
                    )
                    .collect()
            };
            pb::ModelOptimizationPolicy {
                execution_accelerators: o.execution_accelerators.as_ref().map(|e| {
                    pb::model_optimization_policy::ExecutionAccelerators {
                        gpu_execution_accelerator: accelerators(&e.gpu_execution_accelerator),
                        cpu_execution_accelerator: accelerators(&e.cpu_execution_accelerator),
                    }
                }),
                ..Default::default()
            }
        }),
        model_transaction_policy: c.model_transaction_policy.as_ref().map(|p| {
            pb::ModelTransactionPolicy {
                decoupled: p.decoupled,
            }
        }),
        ..Default::default()
    }
}

/// `sequence_batching` as the protocol's message.
fn sequence_to_pb(sb: &cfg::SequenceBatching) -> pb::ModelSequenceBatching {
    use cfg::sequence::{ControlKind, FalseTrue};
    use pb::model_sequence_batching as msb;
    let control = |c: &cfg::sequence::Control| {
        let mut out = msb::Control {
            kind: match c.kind {
                ControlKind::Start => 0,
                ControlKind::Ready => 1,
                ControlKind::End => 2,
                ControlKind::Corrid => 3,
            },
            data_type: c.data_type.map_or(0, |d| dt_enum(d.0)),
            ..Default::default()
        };
        match c.false_true {
            Some(FalseTrue::Int32(v)) => out.int32_false_true = v.to_vec(),
            Some(FalseTrue::Fp32(v)) => out.fp32_false_true = v.to_vec(),
            Some(FalseTrue::Bool(v)) => out.bool_false_true = v.to_vec(),
            None => {}
        }
        out
    };
    let strategy = match (&sb.direct, &sb.oldest) {
        (_, Some(o)) => Some(msb::StrategyChoice::Oldest(msb::StrategyOldest {
            max_candidate_sequences: o.max_candidate_sequences as i32,
            preferred_batch_size: o.preferred_batch_size.iter().map(|&v| v as i32).collect(),
            max_queue_delay_microseconds: o.max_queue_delay_microseconds,
            preserve_ordering: o.preserve_ordering,
        })),
        (Some(d), None) => Some(msb::StrategyChoice::Direct(msb::StrategyDirect {
            max_queue_delay_microseconds: d.max_queue_delay_microseconds,
            minimum_slot_utilization: d.minimum_slot_utilization,
        })),
        (None, None) => None,
    };
    pb::ModelSequenceBatching {
        strategy_choice: strategy,
        max_sequence_idle_microseconds: sb.idle().as_micros() as u64,
        control_input: sb
            .control_input
            .iter()
            .map(|ci| msb::ControlInput {
                name: ci.name.clone(),
                control: ci.control.iter().map(control).collect(),
            })
            .collect(),
        state: sb
            .state
            .iter()
            .map(|s| msb::State {
                input_name: s.input_name.clone(),
                output_name: s.output_name.clone(),
                data_type: dt_enum(s.data_type.0),
                dims: s.dims.clone(),
                initial_state: s
                    .initial_state
                    .iter()
                    .map(|i| msb::InitialState {
                        data_type: dt_enum(i.data_type.0),
                        dims: i.dims.clone(),
                        name: i.name.clone(),
                        state_data: Some(if i.zero_data {
                            msb::initial_state::StateData::ZeroData(true)
                        } else {
                            msb::initial_state::StateData::DataFile(i.data_file.clone())
                        }),
                    })
                    .collect(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}
