//! Ensembles (`platform: "ensemble"`): a pipeline of models as a DAG of steps joined by named
//! tensors. This file is the pure part: checking a config's steps (every tensor produced once,
//! every read tensor produced, no cycle, every ensemble output produced) and their types against
//! the members' configs, with precise errors. The engine runs the plan (`engine/ensemble.rs`),
//! each step through its member's own scheduler and batcher.

use std::collections::{BTreeMap, BTreeSet};

use crate::config::ModelConfig;
use crate::tensor::DataType;

/// One step: a member model and how its tensors map to the ensemble's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// The member model.
    pub model: String,
    /// Its version; `None`: the newest ready one.
    pub version: Option<u64>,
    /// (member input, ensemble tensor) pairs.
    pub inputs: Vec<(String, String)>,
    /// (member output, ensemble tensor) pairs.
    pub outputs: Vec<(String, String)>,
}

/// A checked ensemble: its steps in an order where each step comes after those it reads from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Steps, topologically ordered.
    pub steps: Vec<Step>,
    /// For each step, the steps (indices into `steps`) it waits for.
    pub after: Vec<Vec<usize>>,
    /// Models the ensemble uses.
    pub members: BTreeSet<String>,
}

fn step_name(i: usize, model: &str) -> String {
    format!("ensemble_scheduling.step[{i}] (model '{model}')")
}

/// Checks an ensemble config's structure and orders its steps.
pub fn plan(cfg: &ModelConfig) -> Result<Plan, String> {
    let Some(es) = &cfg.ensemble_scheduling else {
        return Err("platform 'ensemble' needs ensemble_scheduling with at least one step".into());
    };
    if es.step.is_empty() {
        return Err("ensemble_scheduling has no steps".into());
    }
    // Where each tensor comes from: None for an ensemble input, Some(step) for a step output.
    let mut source: BTreeMap<&str, Option<usize>> = BTreeMap::new();
    for i in &cfg.input {
        source.insert(i.name.as_str(), None);
    }
    let mut steps = Vec::with_capacity(es.step.len());
    for (i, s) in es.step.iter().enumerate() {
        if s.model_name.is_empty() {
            return Err(format!(
                "ensemble_scheduling.step[{i}]: model_name is empty"
            ));
        }
        if s.model_name == cfg.name {
            return Err(format!(
                "{}: an ensemble cannot run itself",
                step_name(i, &s.model_name)
            ));
        }
        if s.output_map.is_empty() {
            return Err(format!(
                "{}: output_map is empty, so the step's work would be lost",
                step_name(i, &s.model_name)
            ));
        }
        for t in s.output_map.values() {
            match source.insert(t.as_str(), Some(i)) {
                None => {}
                Some(None) => {
                    return Err(format!(
                        "{}: writes tensor '{t}', which is an ensemble input",
                        step_name(i, &s.model_name)
                    ));
                }
                Some(Some(j)) => {
                    return Err(format!(
                        "{}: writes tensor '{t}', which {} writes too; each tensor has one producer",
                        step_name(i, &s.model_name),
                        step_name(j, &es.step[j].model_name)
                    ));
                }
            }
        }
        steps.push(Step {
            model: s.model_name.clone(),
            version: u64::try_from(s.model_version).ok(),
            inputs: s
                .input_map
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            outputs: s
                .output_map
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        });
    }
    let mut deps: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); steps.len()];
    for (i, s) in steps.iter().enumerate() {
        for (_, t) in &s.inputs {
            match source.get(t.as_str()) {
                None => {
                    return Err(format!(
                        "{}: reads tensor '{t}', which is neither an ensemble input nor written by any step",
                        step_name(i, &s.model)
                    ));
                }
                Some(Some(j)) => {
                    deps[i].insert(*j);
                }
                Some(None) => {}
            }
        }
    }
    for o in &cfg.output {
        if !matches!(source.get(o.name.as_str()), Some(Some(_))) {
            return Err(format!(
                "ensemble output '{}' is written by no step (add it to a step's output_map)",
                o.name
            ));
        }
    }
    // Kahn's algorithm; what is left over lies on a cycle.
    let mut order = Vec::with_capacity(steps.len());
    let mut done = vec![false; steps.len()];
    while order.len() < steps.len() {
        let ready: Vec<usize> = (0..steps.len())
            .filter(|&i| !done[i] && deps[i].iter().all(|&d| done[d]))
            .collect();
        if ready.is_empty() {
            let stuck: Vec<String> = (0..steps.len())
                .filter(|&i| !done[i])
                .map(|i| step_name(i, &steps[i].model))
                .collect();
            return Err(format!(
                "the steps form a cycle (each waits for another's output): {}",
                stuck.join(", ")
            ));
        }
        for i in ready {
            done[i] = true;
            order.push(i);
        }
    }
    let position: BTreeMap<usize, usize> = order.iter().enumerate().map(|(p, &i)| (i, p)).collect();
    let after = order
        .iter()
        .map(|&i| deps[i].iter().map(|d| position[d]).collect())
        .collect();
    let members = steps.iter().map(|s| s.model.clone()).collect();
    let steps = order.iter().map(|&i| steps[i].clone()).collect();
    Ok(Plan {
        steps,
        after,
        members,
    })
}

fn dims_fit(a: &[i64], b: &[i64]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(&x, &y)| x == -1 || y == -1 || x == y)
}

/// A tensor's datatype and dims (no batch dimension), as a config declares it.
type Spec = (DataType, Vec<i64>);

/// Checks the steps' tensors against the members' configs (`member(name)`: its config, when
/// known): every mapped name exists, datatypes agree along every edge, dims are compatible,
/// and a batching ensemble has batching members.
pub fn check_types(
    cfg: &ModelConfig,
    plan: &Plan,
    member: &dyn Fn(&str) -> Option<ModelConfig>,
) -> Result<(), String> {
    let mut spec: BTreeMap<String, (Spec, String)> = cfg
        .input
        .iter()
        .map(|i| {
            (
                i.name.clone(),
                (
                    (i.data_type.0, i.dims.clone()),
                    format!("ensemble input '{}'", i.name),
                ),
            )
        })
        .collect();
    for (i, s) in plan.steps.iter().enumerate() {
        let Some(m) = member(&s.model) else {
            continue;
        };
        let here = format!("step {i} (model '{}')", s.model);
        if cfg.max_batch_size > 0 && m.max_batch_size < cfg.max_batch_size {
            return Err(format!(
                "{here}: the ensemble batches up to {} but model '{}' takes at most {}",
                cfg.max_batch_size, s.model, m.max_batch_size
            ));
        }
        for (name, t) in &s.inputs {
            let Some(inp) = m.input(name) else {
                return Err(format!(
                    "{here}: input_map names '{name}', which is not an input of '{}' (its inputs: {})",
                    s.model,
                    m.input
                        .iter()
                        .map(|i| i.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            };
            if let Some(((dt, dims), from)) = spec.get(t) {
                if *dt != inp.data_type.0 {
                    return Err(format!(
                        "{here}: input '{name}' is {} but tensor '{t}' (from {from}) is {}",
                        inp.data_type.0.config_name(),
                        dt.config_name()
                    ));
                }
                if !inp.dims.is_empty() && !dims.is_empty() && !dims_fit(dims, &inp.dims) {
                    return Err(format!(
                        "{here}: input '{name}' has dims {:?} but tensor '{t}' (from {from}) has {dims:?}",
                        inp.dims
                    ));
                }
            }
        }
        for (name, t) in &s.outputs {
            let Some(out) = m.output(name) else {
                return Err(format!(
                    "{here}: output_map names '{name}', which is not an output of '{}' (its outputs: {})",
                    s.model,
                    m.output
                        .iter()
                        .map(|o| o.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            };
            spec.insert(
                t.clone(),
                (
                    (out.data_type.0, out.dims.clone()),
                    format!("output '{name}' of step {i} (model '{}')", s.model),
                ),
            );
        }
    }
    for o in &cfg.output {
        if let Some(((dt, _), from)) = spec.get(&o.name)
            && *dt != o.data_type.0
        {
            return Err(format!(
                "ensemble output '{}' is {} but {from} gives {}",
                o.name,
                o.data_type.0.config_name(),
                dt.config_name()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_config;

    fn cfg(text: &str) -> ModelConfig {
        parse_config(text, std::path::Path::new("e/config.pbtxt"))
            .unwrap()
            .config
    }

    const HEAD: &str = r#"name: "e" platform: "ensemble" max_batch_size: 8
input [ { name: "RAW" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 2 ] } ]
"#;

    fn ens(steps: &str) -> ModelConfig {
        cfg(&format!("{HEAD}ensemble_scheduling {{ step [ {steps} ] }}"))
    }

    const PRE: &str = r#"{ model_name: "pre" model_version: -1 input_map { key: "x" value: "RAW" } output_map { key: "y" value: "MID" } }"#;
    const NET: &str = r#"{ model_name: "net" model_version: 2 input_map { key: "a" value: "MID" } output_map { key: "b" value: "OUT" } }"#;

    #[test]
    fn steps_are_ordered_by_what_they_read() {
        let p = plan(&ens(&format!("{NET}, {PRE}"))).unwrap();
        assert_eq!(p.steps[0].model, "pre");
        assert_eq!(p.steps[1].model, "net");
        assert_eq!(p.steps[1].version, Some(2));
        assert_eq!(p.steps[0].version, None);
        assert_eq!(p.after, vec![vec![], vec![0]]);
    }

    #[test]
    fn structural_mistakes_are_named() {
        let e = plan(&ens(NET)).unwrap_err();
        assert!(
            e.contains("reads tensor 'MID'") && e.contains("model 'net'"),
            "{e}"
        );
        let e = plan(&ens(PRE)).unwrap_err();
        assert!(
            e.contains("ensemble output 'OUT' is written by no step"),
            "{e}"
        );
        let twice = r#"{ model_name: "pre2" model_version: -1 input_map { key: "x" value: "RAW" } output_map { key: "y" value: "MID" } }"#;
        let e = plan(&ens(&format!("{PRE}, {twice}, {NET}"))).unwrap_err();
        assert!(
            e.contains("writes tensor 'MID'") && e.contains("one producer"),
            "{e}"
        );
        let a = r#"{ model_name: "a" model_version: -1 input_map { key: "i" value: "T2" } output_map { key: "o" value: "T1" } }"#;
        let b = r#"{ model_name: "b" model_version: -1 input_map { key: "i" value: "T1" } output_map { key: "o" value: "T2" } }"#;
        let c = r#"{ model_name: "c" model_version: -1 input_map { key: "i" value: "RAW" } output_map { key: "o" value: "OUT" } }"#;
        let e = plan(&ens(&format!("{a}, {b}, {c}"))).unwrap_err();
        assert!(
            e.contains("cycle") && e.contains("'a'") && e.contains("'b'"),
            "{e}"
        );
        let e = plan(&cfg(&format!("{HEAD}ensemble_scheduling {{ }}"))).unwrap_err();
        assert!(e.contains("no steps"), "{e}");
    }

    #[test]
    fn types_along_every_edge_must_agree() {
        let e = ens(&format!("{PRE}, {NET}"));
        let p = plan(&e).unwrap();
        let member = |dt_mid: &'static str| {
            move |name: &str| {
                Some(cfg(&match name {
                    "pre" => format!(r#"name: "pre" max_batch_size: 8 input [ {{ name: "x" data_type: TYPE_FP32 dims: [ 4 ] }} ] output [ {{ name: "y" data_type: {dt_mid} dims: [ 3 ] }} ]"#),
                    _ => r#"name: "net" max_batch_size: 8 input [ { name: "a" data_type: TYPE_FP32 dims: [ -1 ] } ] output [ { name: "b" data_type: TYPE_FP32 dims: [ 2 ] } ]"#.to_string(),
                }))
            }
        };
        check_types(&e, &p, &member("TYPE_FP32")).unwrap();
        let err = check_types(&e, &p, &member("TYPE_INT64")).unwrap_err();
        assert!(
            err.contains("input 'a' is TYPE_FP32")
                && err.contains("TYPE_INT64")
                && err.contains("output 'y' of step 0"),
            "{err}"
        );
        let wrong_name = |name: &str| {
            (name == "pre").then(|| cfg(r#"name: "pre" max_batch_size: 8 input [ { name: "z" data_type: TYPE_FP32 dims: [ 4 ] } ]"#))
        };
        let err = check_types(&e, &p, &wrong_name).unwrap_err();
        assert!(
            err.contains("'x', which is not an input of 'pre'") && err.contains("z"),
            "{err}"
        );
        let small = |name: &str| {
            (name == "pre").then(|| cfg(r#"name: "pre" max_batch_size: 2 input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ] output [ { name: "y" data_type: TYPE_FP32 dims: [ 3 ] } ]"#))
        };
        let err = check_types(&e, &p, &small).unwrap_err();
        assert!(err.contains("takes at most 2"), "{err}");
    }
}
