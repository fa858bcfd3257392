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
