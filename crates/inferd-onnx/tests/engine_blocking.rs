//! `Engine::infer_blocking`, the embedding API for callers on plain threads, against the
//! example repository's `simple_mlp` on tract: same answers as the async `Engine::infer`, each
//! of several concurrent callers its own, and the same errors.

use std::sync::Arc;

use inferd_core::{ControlMode, Engine, EngineOptions, Error, InferRequest, NamedTensor, Tensor};
use inferd_onnx::OnnxBackend;

fn engine(rt: &tokio::runtime::Runtime) -> Engine {
    let engine = Engine::new(
        EngineOptions {
            repository: std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../examples/models"),
            control_mode: ControlMode::Explicit,
            startup_models: vec!["simple_mlp".into()],
            ..Default::default()
        },
        vec![Arc::new(OnnxBackend)],
    );
    rt.block_on(engine.start()).expect("simple_mlp loads");
    engine
}

fn request(rows: usize, seed: f32) -> InferRequest {
    let x: Vec<f32> = (0..rows * 64)
        .map(|i| (i as f32 * 0.37 + seed).sin())
        .collect();
    InferRequest {
        inputs: vec![NamedTensor {
            name: "input".into(),
            tensor: Tensor::from_f32(vec![rows, 64], &x).expect("tensor"),
        }],
        ..Default::default()
    }
}

fn output(r: &inferd_core::InferResponse) -> Vec<f32> {
    r.outputs[0].tensor.to_f32_vec().expect("f32 output")
}

#[test]
fn infer_blocking_answers_as_infer_does_from_plain_threads() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let engine = engine(&rt);
    let want: Vec<Vec<f32>> = (0..8)
        .map(|i| {
            output(
                &rt.block_on(engine.infer("simple_mlp", None, request(3, i as f32)))
                    .expect("infer"),
            )
        })
        .collect();
    // Eight plain threads at once: their requests may batch together and must still come back
    // to the right caller.
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let engine = &engine;
                s.spawn(move || engine.infer_blocking("simple_mlp", None, request(3, i as f32)))
            })
            .collect();
        for (i, h) in handles.into_iter().enumerate() {
            let got = h.join().expect("thread").expect("infer_blocking");
            assert_eq!(got.model_name, "simple_mlp");
            assert_eq!(output(&got), want[i], "caller {i}");
        }
    });
}

#[test]
fn infer_blocking_refuses_what_infer_refuses() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let engine = engine(&rt);
    assert!(matches!(
        engine.infer_blocking("no_such_model", None, request(1, 0.0)),
        Err(Error::NotFound(_))
    ));
    let mut wrong = request(1, 0.0);
    wrong.inputs[0].name = "nope".into();
    let err = engine
        .infer_blocking("simple_mlp", None, wrong)
        .expect_err("unknown input");
    assert!(err.to_string().contains("nope"), "{err}");
}
