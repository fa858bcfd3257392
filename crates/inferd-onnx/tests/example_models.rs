//! The ONNX backend on the bundled example models: signatures read from the files, and execution
//! of every supported kind of tensor the examples use (FP32, INT64, BYTES).

#![allow(clippy::unwrap_used)] // test helpers: a failed setup step should panic

use std::path::PathBuf;

use bytes::Bytes;
use inferd_core::backend::{LoadedModel, NamedTensor};
use inferd_core::tensor::{DataType, Tensor, TensorData};
use inferd_onnx::OnnxModel;

fn example(model: &str, version: u32) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/models")
        .join(model)
        .join(version.to_string())
        .join("model.onnx")
}

#[test]
fn mlp_signature_has_dynamic_batch() {
    let m = OnnxModel::load(&example("simple_mlp", 1)).unwrap();
    let sig = m.signature();
    assert_eq!(sig.inputs[0].name, "input");
    assert_eq!(sig.inputs[0].dtype, DataType::F32);
    assert_eq!(sig.inputs[0].shape, Some(vec![-1, 64]));
    assert_eq!(sig.outputs[0].name, "output");
    assert_eq!(sig.outputs[0].shape, Some(vec![-1, 10]));
}

#[test]
fn mlp_runs_batches_of_different_sizes_on_one_instance() {
    let m = OnnxModel::load(&example("simple_mlp", 1)).unwrap();
    let mut inst = m.new_instance().unwrap();
    for batch in [1usize, 5, 64, 2] {
        let x = Tensor::from_f32(vec![batch, 64], &vec![0.25; batch * 64]).unwrap();
        let out = inst
            .execute(
                &[NamedTensor {
                    name: "input".into(),
                    tensor: x,
                }],
                &["output".into()],
            )
            .unwrap();
        assert_eq!(out[0].tensor.shape(), &[batch, 10]);
        let v = out[0].tensor.to_f32_vec().unwrap();
        // Every row got the same input, so every row has the same output.
        assert_eq!(&v[..10], &v[(batch - 1) * 10..]);
    }
}

#[test]
fn add_sub_computes_int64() {
    let m = OnnxModel::load(&example("add_sub", 1)).unwrap();
    assert_eq!(m.signature().inputs.len(), 2);
    let mut inst = m.new_instance().unwrap();
    let a = Tensor::from_i64(vec![1, 4], &[1, 2, 3, 4]).unwrap();
    let b = Tensor::from_i64(vec![1, 4], &[10, 20, 30, 40]).unwrap();
    let out = inst
        .execute(
            &[
                NamedTensor {
                    name: "INPUT0".into(),
                    tensor: a,
                },
                NamedTensor {
                    name: "INPUT1".into(),
                    tensor: b,
                },
            ],
            &["OUTPUT1".into(), "OUTPUT0".into()],
        )
        .unwrap();
    assert_eq!(out[0].name, "OUTPUT1");
    assert_eq!(out[0].tensor.to_i64_vec().unwrap(), vec![-9, -18, -27, -36]);
    assert_eq!(out[1].tensor.to_i64_vec().unwrap(), vec![11, 22, 33, 44]);
}

#[test]
fn string_identity_round_trips_utf8() {
    let m = OnnxModel::load(&example("string_identity", 1)).unwrap();
    assert_eq!(m.signature().inputs[0].dtype, DataType::Bytes);
    let mut inst = m.new_instance().unwrap();
    let items = vec![
        Bytes::from_static(b""),
        Bytes::from("héllo ✓".as_bytes().to_vec()),
    ];
    let x = Tensor::new(
        DataType::Bytes,
        vec![2, 1],
        TensorData::Bytes(items.clone()),
    )
    .unwrap();
    let out = inst
        .execute(
            &[NamedTensor {
                name: "INPUT0".into(),
                tensor: x,
            }],
            &["OUTPUT0".into()],
        )
        .unwrap();
    assert_eq!(out[0].tensor.bytes_elements().unwrap(), items.as_slice());
}

#[test]
fn corrupt_file_is_a_load_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("model.onnx");
    std::fs::write(&p, b"\x08\x07garbage that is not protobuf \xff\xff\xff").unwrap();
    let err = OnnxModel::load(&p).err().expect("must fail");
    assert!(err.to_string().contains("ONNX"), "{err}");
}

/// A bare scikit-learn-style linear regression: one `LinearRegressor` node (ai.onnx.ml).
fn linear_regressor_file(dir: &std::path::Path) -> PathBuf {
    use prost::Message;
    use tract_onnx::pb;
    let float_attr = |name: &str, v: &[f32]| pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Floats as i32,
        floats: v.to_vec(),
        ..Default::default()
    };
    let tensor_type = |name: &str, dims: &[i64]| pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: pb::tensor_proto::DataType::Float as i32,
                shape: Some(pb::TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|&d| pb::tensor_shape_proto::Dimension {
                            value: Some(if d < 0 {
                                pb::tensor_shape_proto::dimension::Value::DimParam("N".into())
                            } else {
                                pb::tensor_shape_proto::dimension::Value::DimValue(d)
                            }),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    };
    let model = pb::ModelProto {
        ir_version: 8,
        opset_import: vec![
            pb::OperatorSetIdProto {
                domain: String::new(),
                version: 13,
            },
            pb::OperatorSetIdProto {
                domain: "ai.onnx.ml".into(),
                version: 1,
            },
        ],
        graph: Some(pb::GraphProto {
            name: "linear".into(),
            node: vec![pb::NodeProto {
                op_type: "LinearRegressor".into(),
                domain: "ai.onnx.ml".into(),
                input: vec!["x".into()],
                output: vec!["y".into()],
                attribute: vec![
                    float_attr("coefficients", &[1.0, 2.0, 3.0]),
                    float_attr("intercepts", &[0.5]),
                ],
                ..Default::default()
            }],
            input: vec![tensor_type("x", &[-1, 3])],
            output: vec![tensor_type("y", &[-1, 1])],
            ..Default::default()
        }),
        ..Default::default()
    };
    let path = dir.join("model.onnx");
    std::fs::write(&path, model.encode_to_vec()).unwrap();
    path
}

#[test]
fn a_graph_of_one_ml_operator_runs_its_kernel_without_the_plan() {
    let dir = tempfile::tempdir().unwrap();
    let m = OnnxModel::load(&linear_regressor_file(dir.path())).unwrap();
    assert!(m.runs_directly());
    let input = vec![NamedTensor {
        name: "x".into(),
        tensor: Tensor::from_f32(vec![2, 3], &[1.0, 1.0, 1.0, 0.0, 1.0, -1.0]).unwrap(),
    }];
    let out = m
        .new_instance()
        .unwrap()
        .execute(&input, &["y".to_string()])
        .unwrap();
    assert_eq!(out[0].tensor.shape(), &[2, 1]);
    assert_eq!(out[0].tensor.to_f32_vec().unwrap(), vec![6.5, -0.5]);
    assert!(
        !OnnxModel::load(&example("simple_mlp", 2))
            .unwrap()
            .runs_directly()
    );
}

/// A two-tree ensemble (`TreeEnsembleRegressor`, or `TreeEnsembleClassifier` over classes 7, 8
/// and 9 when `classes`), as the converters write one: tree 0 splits feature 0 at `<= 0.5`
/// (leaves 1 and 2), tree 1 feature 1 at `< 0` (leaves 10 and 20), NaN going the false way.
/// With `cast_label`, the classifier's label leaves through a Cast to int64, as skl2onnx
/// writes it.
fn two_tree_file(dir: &std::path::Path, classes: bool, cast_label: bool) -> PathBuf {
    use prost::Message;
    use tract_onnx::pb;
    use tract_onnx::pb::attribute_proto::AttributeType;
    let ints = |name: &str, v: &[i64]| pb::AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: v.to_vec(),
        ..Default::default()
    };
    let floats = |name: &str, v: &[f32]| pb::AttributeProto {
        name: name.into(),
        r#type: AttributeType::Floats as i32,
        floats: v.to_vec(),
        ..Default::default()
    };
    let strings = |name: &str, v: &[&str]| pb::AttributeProto {
        name: name.into(),
        r#type: AttributeType::Strings as i32,
        strings: v.iter().map(|s| s.as_bytes().to_vec()).collect(),
        ..Default::default()
    };
    let value = |name: &str, elem: pb::tensor_proto::DataType, dims: &[i64]| pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: elem as i32,
                shape: Some(pb::TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|&d| pb::tensor_shape_proto::Dimension {
                            value: Some(if d < 0 {
                                pb::tensor_shape_proto::dimension::Value::DimParam("N".into())
                            } else {
                                pb::tensor_shape_proto::dimension::Value::DimValue(d)
                            }),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    };
    let p = if classes { "class" } else { "target" };
    let mut attribute = vec![
        ints("nodes_treeids", &[0, 0, 0, 1, 1, 1]),
        ints("nodes_nodeids", &[0, 1, 2, 0, 1, 2]),
        ints("nodes_featureids", &[0, 0, 0, 1, 0, 0]),
        floats("nodes_values", &[0.5, 0.0, 0.0, 0.0, 0.0, 0.0]),
        strings(
            "nodes_modes",
            &["BRANCH_LEQ", "LEAF", "LEAF", "BRANCH_LT", "LEAF", "LEAF"],
        ),
        ints("nodes_truenodeids", &[1, 0, 0, 1, 0, 0]),
        ints("nodes_falsenodeids", &[2, 0, 0, 2, 0, 0]),
        ints(&format!("{p}_treeids"), &[0, 0, 1, 1]),
        ints(&format!("{p}_nodeids"), &[1, 2, 1, 2]),
        ints(&format!("{p}_ids"), &[0, 1, 2, 0]),
        floats(&format!("{p}_weights"), &[1.0, 2.0, 10.0, 20.0]),
    ];
    if classes {
        attribute.push(ints("classlabels_int64s", &[7, 8, 9]));
    } else {
        attribute[9] = ints("target_ids", &[0, 0, 0, 0]);
        attribute.push(pb::AttributeProto {
            name: "n_targets".into(),
            r#type: AttributeType::Int as i32,
            i: 1,
            ..Default::default()
        });
    }
    let float = pb::tensor_proto::DataType::Float;
    let (op, outputs) = if classes {
        (
            "TreeEnsembleClassifier",
            vec![
                value("label", pb::tensor_proto::DataType::Int64, &[-1]),
                value("probabilities", float, &[-1, 3]),
            ],
        )
    } else {
        (
            "TreeEnsembleRegressor",
            vec![value("variable", float, &[-1, 1])],
        )
    };
    let mut node = vec![pb::NodeProto {
        op_type: op.into(),
        domain: "ai.onnx.ml".into(),
        input: vec!["x".into()],
        output: outputs.iter().map(|o| o.name.clone()).collect(),
        attribute,
        ..Default::default()
    }];
    let mut outputs = outputs;
    if cast_label {
        node[0].output[0] = "raw_label".into();
        node.push(pb::NodeProto {
            op_type: "Cast".into(),
            input: vec!["raw_label".into()],
            output: vec!["label".into()],
            attribute: vec![pb::AttributeProto {
                name: "to".into(),
                r#type: AttributeType::Int as i32,
                i: pb::tensor_proto::DataType::Int64 as i64,
                ..Default::default()
            }],
            ..Default::default()
        });
        outputs[0].name = "label".into();
    }
    let model = pb::ModelProto {
        ir_version: 8,
        opset_import: vec![
            pb::OperatorSetIdProto {
                domain: String::new(),
                version: 13,
            },
            pb::OperatorSetIdProto {
                domain: "ai.onnx.ml".into(),
                version: 1,
            },
        ],
        graph: Some(pb::GraphProto {
            name: "forest".into(),
            node,
            input: vec![value("x", float, &[-1, 2])],
            output: outputs,
            ..Default::default()
        }),
        ..Default::default()
    };
    let path = dir.join("model.onnx");
    std::fs::write(&path, model.encode_to_vec()).unwrap();
    path
}

#[test]
fn a_lone_tree_ensemble_reads_and_writes_inferds_tensors_directly() {
    let dir = tempfile::tempdir().unwrap();
    let x = Tensor::from_f32(vec![3, 2], &[0.5, -1.0, 0.6, 0.0, f32::NAN, 5.0]).unwrap();
    let input = |t: &Tensor| {
        vec![NamedTensor {
            name: "x".into(),
            tensor: t.clone(),
        }]
    };
    let reg = OnnxModel::load(&two_tree_file(dir.path(), false, false)).unwrap();
    assert!(reg.runs_directly());
    let mut inst = reg.new_instance().unwrap();
    let out = inst.execute(&input(&x), &["variable".to_string()]).unwrap();
    assert_eq!(out[0].tensor.dtype(), DataType::F32);
    assert_eq!(out[0].tensor.shape(), &[3, 1]);
    assert_eq!(out[0].tensor.to_f32_vec().unwrap(), vec![11.0, 22.0, 22.0]);
    // One row as a vector, as onnxruntime reads it.
    let one = Tensor::from_f32(vec![2], &[0.0, -3.0]).unwrap();
    let out = inst
        .execute(&input(&one), &["variable".to_string()])
        .unwrap();
    assert_eq!(out[0].tensor.shape(), &[1, 1]);
    assert_eq!(out[0].tensor.to_f32_vec().unwrap(), vec![11.0]);
    // A row of the wrong width is the client's mistake, named.
    let wide = Tensor::from_f32(vec![1, 1], &[0.0]).unwrap();
    let err = inst
        .execute(&input(&wide), &["variable".to_string()])
        .unwrap_err();
    assert!(
        matches!(err, inferd_core::backend::BackendError::InvalidInput(_)),
        "{err}"
    );

    // The label straight out, or through a cast to its own type (skl2onnx's classifiers).
    for cast_label in [false, true] {
        let cls = OnnxModel::load(&two_tree_file(dir.path(), true, cast_label)).unwrap();
        assert!(cls.runs_directly(), "cast_label {cast_label}");
        let out = cls
            .new_instance()
            .unwrap()
            .execute(
                &input(&x),
                &["probabilities".to_string(), "label".to_string()],
            )
            .unwrap();
        // Row 0: class 0 gets 1, class 2 gets 10; rows 1 and 2: class 1 gets 2, class 0 gets 20.
        assert_eq!(
            out[0].tensor.to_f32_vec().unwrap(),
            vec![1.0, 0.0, 10.0, 20.0, 2.0, 0.0, 20.0, 2.0, 0.0]
        );
        assert_eq!(out[1].tensor.dtype(), DataType::I64);
        assert_eq!(out[1].tensor.to_i64_vec().unwrap(), vec![9, 7, 7]);
    }
}
