//! Tests of [`super`]: config.pbtxt to the typed config, with diagnostics.

use super::*;

fn parse(text: &str) -> Result<ParsedConfig, Vec<Diagnostic>> {
    parse_config(text, Path::new("m/config.pbtxt"))
}

#[test]
fn reads_all_fields_the_foundation_needs() {
    let p = parse(
        r#"
        name: "mlp"
        platform: "onnxruntime_onnx"
        max_batch_size: 64
        version_policy: { specific { versions: [1, 3] } }
        input [ { name: "x" data_type: TYPE_FP32 dims: [ 64 ] optional: true reshape: { shape: [ 8, 8 ] } } ]
        output [ { name: "y" data_type: TYPE_STRING dims: [ -1 ] } ]
        instance_group [ { count: 2 kind: KIND_CPU } ]
        dynamic_batching { preferred_batch_size: [ 4, 8 ] max_queue_delay_microseconds: 100
          default_queue_policy { timeout_action: DELAY max_queue_size: 10 }
          priority_queue_policy { key: 1 value: { max_queue_size: 3 } } }
        model_warmup [ { name: "w" batch_size: 2 inputs { key: "x" value: { data_type: TYPE_FP32 dims: [64] zero_data: true } } } ]
        parameters { key: "k" value: { string_value: "v" } }
        "#,
    )
    .unwrap();
    let c = &p.config;
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    assert!(p.max_batch_size_set);
    assert_eq!(c.name, "mlp");
    assert_eq!(c.max_batch_size, 64);
    assert_eq!(
        c.version_policy,
        VersionPolicy::Specific {
            versions: vec![1, 3]
        }
    );
    assert_eq!(c.input[0].dims, vec![64]);
    assert!(c.input[0].optional);
    assert_eq!(c.input[0].reshape, Some(Reshape { shape: vec![8, 8] }));
    assert_eq!(c.output[0].data_type.0, DataType::Bytes);
    assert_eq!(c.instance_count(), 2);
    let db = c.dynamic_batching.as_ref().unwrap();
    assert_eq!(db.preferred_batch_size, vec![4, 8]);
    assert_eq!(
        db.default_queue_policy.as_ref().unwrap().timeout_action,
        TimeoutAction::Delay
    );
    assert_eq!(db.priority_queue_policy[&1].max_queue_size, 3);
    assert_eq!(c.model_warmup[0].inputs["x"].dims, vec![64]);
    assert_eq!(c.parameters["k"].string_value, "v");
}

#[test]
fn gpu_groups_place_count_instances_on_each_listed_gpu() {
    use crate::config::{InstanceKind, Placement};
    let p = parse(
        r#"
        name: "m"
        instance_group [
          { count: 2 kind: KIND_GPU gpus: [ 0, 3 ] },
          { kind: KIND_GPU },
          { count: 1 kind: KIND_CPU }
        ]
        "#,
    )
    .unwrap();
    let at = |group, kind, gpu| Placement { group, kind, gpu };
    let gpu = InstanceKind::Gpu;
    assert_eq!(
        p.config.placements(),
        vec![
            at(0, gpu, Some(0)),
            at(0, gpu, Some(0)),
            at(0, gpu, Some(3)),
            at(0, gpu, Some(3)),
            at(1, gpu, None),
            at(2, InstanceKind::Cpu, None),
        ]
    );
    assert_eq!(p.config.instance_count(), 6);
    let none = parse("name: \"m\"").unwrap();
    assert_eq!(
        none.config.placements(),
        vec![at(0, InstanceKind::Auto, None)]
    );
}

#[test]
fn execution_accelerators_are_read_and_other_optimization_fields_warn() {
    let p = parse(
        r#"
        name: "m"
        instance_group [ { kind: KIND_GPU gpus: [ 1 ] } ]
        optimization { execution_accelerators {
          gpu_execution_accelerator : [ { name : "tensorrt"
            parameters { key: "precision_mode" value: "FP16" } } ]
          cpu_execution_accelerator : [ { name : "openvino" } ] }
          graph { level: 1 } }
        "#,
    )
    .unwrap();
    let c = &p.config;
    assert!(c.wants_gpu());
    assert_eq!(c.gpu_accelerators()[0].name, "tensorrt");
    assert_eq!(c.gpu_accelerators()[0].parameters["precision_mode"], "FP16");
    assert_eq!(c.cpu_accelerators()[0].name, "openvino");
    assert_eq!(p.warnings.len(), 1, "{:?}", p.warnings);
    assert_eq!(p.warnings[0].field, "optimization.graph");
    let err = parse("name: \"m\"\noptimization { execution_accelerators { gpu_execution_accelerator [ { parameters { key: \"a\" value: 3 } } ] } }").unwrap_err();
    let text: Vec<String> = err.iter().map(|d| d.to_string()).collect();
    assert!(
        text.iter().any(|t| t.contains("accelerator has no name")),
        "{text:?}"
    );
    assert!(
        text.iter().any(|t| t.contains("expected a string value")),
        "{text:?}"
    );
}

#[test]
fn unknown_fields_are_errors_with_their_position() {
    let errs = parse(
        "name: \"m\"\nfoo: 1\ninput [ { name: \"x\" data_type: TYPE_FP32 dims: [1] bar: 2 } ]",
    )
    .unwrap_err();
    let e: Vec<String> = errs.iter().map(|d| d.to_string()).collect();
    assert!(
        e.iter()
            .any(|s| s.contains("m/config.pbtxt:2:1: field 'foo': unknown field")),
        "{e:?}"
    );
    assert!(e.iter().any(|s| s.contains("'input[0].bar'")), "{e:?}");
}

#[test]
fn fields_whose_semantics_inferd_lacks_are_refused_by_name() {
    for (text, field) in [
        (
            "batch_input [ { kind: BATCH_ELEMENT_COUNT } ]",
            "batch_input",
        ),
        ("batch_output [ { target_name: \"y\" } ]", "batch_output"),
    ] {
        let errs = parse(&format!("name: \"m\"\n{text}")).unwrap_err();
        let e: Vec<String> = errs.iter().map(|d| d.to_string()).collect();
        assert!(
            e.iter().any(|s| s.starts_with("m/config.pbtxt:2:")
                && s.contains(&format!("field '{field}'"))
                && s.contains("does not implement")),
            "{text}: {e:?}"
        );
    }
    // Switched off, they mean nothing and load.
    let p = parse("name: \"m\"\nmodel_transaction_policy { decoupled: false }\nresponse_cache { enable: false }").unwrap();
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    // Decoupled is read (the backend must answer so; checked at load).
    let p = parse("name: \"m\"\nmodel_transaction_policy { decoupled: true }").unwrap();
    assert!(p.config.is_decoupled());
    // The response cache is read (and used when the server has one).
    let p = parse("name: \"m\"\nresponse_cache { enable: true }").unwrap();
    assert_eq!(p.config.response_cache.map(|c| c.enable), Some(true));
}

#[test]
fn fields_that_only_tune_performance_warn_by_name() {
    let p =
        parse("name: \"m\"\nmodel_metrics { }\noptimization { cuda { graphs: true } }").unwrap();
    let w: Vec<String> = p.warnings.iter().map(|d| d.to_string()).collect();
    assert!(w.iter().any(|s| s.contains("'model_metrics'")), "{w:?}");
    assert!(w.iter().any(|s| s.contains("'optimization.cuda'")), "{w:?}");
}

#[test]
fn numbers_that_size_memory_or_time_are_bounded() {
    for text in [
        "max_batch_size: 4294967295",
        "dynamic_batching { priority_levels: 4294967295 }",
        "dynamic_batching { default_queue_policy { max_queue_size: 4294967295 } }",
        "dynamic_batching { max_queue_delay_microseconds: 9223372036854775807 }",
        "instance_group [ { count: 100000 } ]",
        "model_warmup [ { name: \"w\" batch_size: 1 count: 4294967295 } ]",
    ] {
        let errs = parse(&format!("name: \"m\"\n{text}")).unwrap_err();
        assert!(
            errs.iter().any(|d| d.message.contains("out of range")
                || d.message.contains("must be")
                || d.message.contains("at most")),
            "{text}: {errs:?}"
        );
    }
}

#[test]
fn errors_name_file_line_field_and_reason() {
    let errs = parse("name: \"m\"\ninput [ { name: \"x\" data_type: TYPE_FLOAT dims: [ 1 ] } ]\nmax_batch_size: -3").unwrap_err();
    let s: Vec<String> = errs.iter().map(|d| d.to_string()).collect();
    assert!(
        s.iter().any(|e| e.starts_with("m/config.pbtxt:2:")
            && e.contains("input[0].data_type")
            && e.contains("TYPE_FLOAT")),
        "{s:?}"
    );
    assert!(
        s.iter()
            .any(|e| e.contains("max_batch_size") && e.contains("out of range")),
        "{s:?}"
    );
}

#[test]
fn syntax_error_is_reported_with_position() {
    let errs = parse("name: \"m\"\ninput [ { name: \"x\" ").unwrap_err();
    assert_eq!(errs.len(), 1);
    assert!(errs[0].to_string().contains("syntax error"), "{}", errs[0]);
}

#[test]
fn empty_config_is_all_defaults() {
    let p = parse("").unwrap();
    assert!(!p.max_batch_size_set);
    assert_eq!(
        p.config.version_policy,
        VersionPolicy::Latest { num_versions: 1 }
    );
}

#[test]
fn ensemble_steps_read_maps() {
    let p = parse(r#"name: "e" platform: "ensemble" ensemble_scheduling { step [ { model_name: "a" model_version: -1 input_map { key: "IN" value: "x" } output_map { key: "OUT" value: "y" } } ] }"#).unwrap();
    let s = &p.config.ensemble_scheduling.unwrap().step[0];
    assert_eq!(s.model_name, "a");
    assert_eq!(s.input_map["IN"], "x");
    assert_eq!(s.output_map["OUT"], "y");
}

#[test]
fn sequence_batching_reads_controls_state_and_strategy() {
    let p = parse(
        r#"name: "acc"
max_batch_size: 8
sequence_batching {
  max_sequence_idle_microseconds: 5000000
  oldest { max_candidate_sequences: 4 max_queue_delay_microseconds: 100 preferred_batch_size: [ 2 ] }
  control_input [
    { name: "START" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] } ] },
    { name: "READY" control [ { kind: CONTROL_SEQUENCE_READY fp32_false_true: [ 0, 1 ] } ] },
    { name: "END" control [ { kind: CONTROL_SEQUENCE_END bool_false_true: [ false, true ] } ] },
    { name: "CORRID" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 } ] }
  ]
  state [ { input_name: "S_IN" output_name: "S_OUT" data_type: TYPE_INT32 dims: [ 1 ]
            initial_state { data_type: TYPE_INT32 dims: [ 1 ] zero_data: true name: "zero" } } ]
}"#,
    )
    .unwrap();
    let sb = p.config.sequence_batching.unwrap();
    assert_eq!(sb.idle(), std::time::Duration::from_secs(5));
    assert_eq!(sb.oldest.as_ref().unwrap().max_candidate_sequences, 4);
    assert_eq!(sb.max_queue_delay_microseconds(), 100);
    assert_eq!(sb.as_dynamic().preferred_batch_size, vec![2]);
    use crate::config::sequence::{ControlKind, FalseTrue};
    let kinds: Vec<_> = sb.control_input.iter().map(|c| c.control[0].kind).collect();
    assert_eq!(
        kinds,
        [
            ControlKind::Start,
            ControlKind::Ready,
            ControlKind::End,
            ControlKind::Corrid
        ]
    );
    assert_eq!(
        sb.control_input[0].control[0].false_true,
        Some(FalseTrue::Int32([0, 1]))
    );
    assert_eq!(sb.control_input[1].control[0].dtype(), DataType::F32);
    assert_eq!(sb.control_input[2].control[0].dtype(), DataType::Bool);
    assert_eq!(sb.control_input[3].control[0].dtype(), DataType::U64);
    assert_eq!(sb.state[0].input_name, "S_IN");
    assert!(sb.state[0].initial_state[0].zero_data);
    let inputs: Vec<&str> = sb.server_inputs().collect();
    assert_eq!(inputs, ["START", "READY", "END", "CORRID", "S_IN"]);
}

#[test]
fn sequence_batching_mistakes_are_named_with_their_field() {
    for (text, field, why) in [
        (
            "control_input [ { name: \"S\" control [ { kind: CONTROL_SEQUENCE_START } ] } ]",
            "sequence_batching.control_input[0].control[0]",
            "false and true values",
        ),
        (
            "control_input [ { name: \"S\" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 1 ] } ] } ]",
            "sequence_batching.control_input[0].control[0].int32_false_true",
            "exactly two values",
        ),
        (
            "control_input [ { name: \"C\" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_FP32 } ] } ]",
            "sequence_batching.control_input[0].control[0]",
            "TYPE_UINT64",
        ),
        (
            "direct { } oldest { }",
            "sequence_batching",
            "only one of direct and oldest",
        ),
        (
            "state [ { input_name: \"a\" output_name: \"b\" data_type: TYPE_FP32 dims: [ -1 ] } ]",
            "sequence_batching.state[0]",
            "variable dims",
        ),
        (
            "control_input [ { name: \"X\" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] } ] } ] state [ { input_name: \"X\" output_name: \"b\" data_type: TYPE_FP32 dims: [ 1 ] } ]",
            "sequence_batching",
            "more than one control or state",
        ),
    ] {
        let errs = parse(&format!("name: \"m\"\nsequence_batching {{ {text} }}")).unwrap_err();
        let e: Vec<String> = errs.iter().map(|d| d.to_string()).collect();
        assert!(
            e.iter()
                .any(|s| s.contains(&format!("field '{field}")) && s.contains(why)),
            "{text}: {e:?}"
        );
    }
}
