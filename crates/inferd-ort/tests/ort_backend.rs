//! The ONNX Runtime backend on the example models, checked against the tract backend on the same
//! inputs. Needs ORT_DYLIB_PATH (scripts/test.sh points it at the onnxruntime wheel's library).

#![allow(clippy::unwrap_used)] // test helpers: a failed setup step should panic

use std::path::PathBuf;

use bytes::Bytes;
use inferd_core::backend::{LoadedModel, NamedTensor};
use inferd_core::tensor::{DataType, Tensor, TensorData};
use inferd_onnx::OnnxModel;
use inferd_ort::OrtModel;

fn example(model: &str, version: u32) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/models")
        .join(model)
        .join(version.to_string())
        .join("model.onnx")
}

fn require_runtime() {
    assert!(
        std::env::var_os("ORT_DYLIB_PATH").is_some(),
        "ORT_DYLIB_PATH must point at libonnxruntime (scripts/test.sh sets it from the onnxruntime wheel)"
    );
}

#[test]
fn mlp_matches_tract_and_reads_the_signature() {
    require_runtime();
    let ort = OrtModel::load(&example("simple_mlp", 2)).unwrap();
    assert_eq!(ort.signature().inputs[0].shape, Some(vec![-1, 64]));
    assert_eq!(ort.signature().outputs[0].dtype, DataType::F32);
    let tract = OnnxModel::load(&example("simple_mlp", 2)).unwrap();
    let x: Vec<f32> = (0..3 * 64)
        .map(|i| ((i * 37) % 100) as f32 / 50.0 - 1.0)
        .collect();
    let input = vec![NamedTensor {
        name: "input".into(),
        tensor: Tensor::from_f32(vec![3, 64], &x).unwrap(),
    }];
    let outs = vec!["output".to_string()];
    let a = ort.new_instance().unwrap().execute(&input, &outs).unwrap();
    let b = tract
        .new_instance()
        .unwrap()
        .execute(&input, &outs)
        .unwrap();
    assert_eq!(a[0].tensor.shape(), &[3, 10]);
    for (p, q) in a[0]
        .tensor
        .to_f32_vec()
        .unwrap()
        .iter()
        .zip(b[0].tensor.to_f32_vec().unwrap())
    {
        assert!((p - q).abs() < 1e-5, "{p} vs {q}");
    }
}

#[test]
fn int64_and_strings_round_trip() {
    require_runtime();
    let m = OrtModel::load(&example("add_sub", 1)).unwrap();
    let a = Tensor::from_i64(vec![1, 4], &[1, 2, 3, 4]).unwrap();
    let b = Tensor::from_i64(vec![1, 4], &[10, 20, 30, 40]).unwrap();
    let out = m
        .new_instance()
        .unwrap()
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
            &["OUTPUT1".into()],
        )
        .unwrap();
    assert_eq!(out[0].tensor.to_i64_vec().unwrap(), vec![-9, -18, -27, -36]);
    let s = OrtModel::load(&example("string_identity", 1)).unwrap();
    let items = vec![
        Bytes::from_static(b""),
        Bytes::from("héllo".as_bytes().to_vec()),
    ];
    let x = Tensor::new(
        DataType::Bytes,
        vec![2, 1],
        TensorData::Bytes(items.clone()),
    )
    .unwrap();
    let out = s
        .new_instance()
        .unwrap()
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
