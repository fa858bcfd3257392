//! Runs ONNX's own backend node tests (`<dir>/<test>/model.onnx` and
//! `test_data_set_*/{input,output}_*.pb`, as `onnx.backend.test` writes them) through inferd's
//! ONNX backend and prints one JSON line per test: `{"test", "ops", "status", "detail"}` with
//! status `passed`, `refused` (the backend declined at load or run, saying why) or `wrong`
//! (it answered, and the answer differs from the reference beyond ONNX's own tolerances).
//!
//! `cargo run -p inferd-onnx --example onnx_node_report -- DIR`

use std::path::{Path, PathBuf};

use inferd_onnx::OnnxModel;
use prost::Message;
use tract_onnx::pb::{ModelProto, TensorProto};
use tract_onnx::prelude::*;

fn tensor(path: &Path) -> anyhow_like::Result<Tensor> {
    let bytes = std::fs::read(path)?;
    let proto = TensorProto::decode(bytes.as_slice())?;
    Ok(tract_onnx::tensor::load_tensor(
        &tract_onnx::data_resolver::MmapDataResolver,
        &proto,
        None,
    )?)
}

mod anyhow_like {
    pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;
}

fn numbered(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut v: Vec<(usize, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let n = name
                .strip_prefix(prefix)?
                .strip_suffix(".pb")?
                .parse()
                .ok()?;
            Some((n, e.path()))
        })
        .collect();
    v.sort();
    v.into_iter().map(|(_, p)| p).collect()
}

/// Whether `got` matches `want`: relative 1e-3 as ONNX's backend tests, absolute 1e-5 (values
/// that cancel to about zero differ by ~1e-6 between any two float implementations), and for
/// float16 relative 4e-3 and absolute 1e-3 (a few units in the last place).
fn same(got: &Tensor, want: &Tensor) -> Result<(), String> {
    if got.shape() != want.shape() {
        return Err(format!(
            "shape {:?}, expected {:?}",
            got.shape(),
            want.shape()
        ));
    }
    let (g, w) = (got.datum_type(), want.datum_type());
    let g_norm = if g == DatumType::TDim {
        DatumType::I64
    } else {
        g
    };
    if g_norm != w {
        return Err(format!("type {g:?}, expected {w:?}"));
    }
    if w.is_float() {
        let (rtol, atol) = if w == DatumType::F16 {
            (4e-3, 1e-3)
        } else {
            (1e-3, 1e-5)
        };
        let a = got.cast_to::<f64>().map_err(|e| e.to_string())?;
        let b = want.cast_to::<f64>().map_err(|e| e.to_string())?;
        let a = a
            .try_as_plain_ram()
            .and_then(|v| v.as_slice::<f64>().map(|s| s.to_vec()));
        let b = b
            .try_as_plain_ram()
            .and_then(|v| v.as_slice::<f64>().map(|s| s.to_vec()));
        let (a, b) = (a.map_err(|e| e.to_string())?, b.map_err(|e| e.to_string())?);
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            let ok = (x.is_nan() && y.is_nan()) || x == y || (x - y).abs() <= atol + rtol * y.abs();
            if !ok {
                return Err(format!("element {i}: {x}, expected {y}"));
            }
        }
        return Ok(());
    }
    let got = if g == DatumType::TDim {
        got.cast_to::<i64>()
            .map_err(|e| e.to_string())?
            .into_owned()
    } else {
        got.clone()
    };
    if got != *want {
        return Err("values differ".into());
    }
    Ok(())
}

fn run_case(dir: &Path) -> (String, String) {
    let model = match OnnxModel::load(&dir.join("model.onnx")) {
        Ok(m) => m,
        Err(e) => return ("refused".into(), e.to_string()),
    };
    let mut sets: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    sets.sort();
    for set in sets {
        let inputs: Result<TVec<TValue>, _> = numbered(&set, "input_")
            .iter()
            .map(|p| tensor(p).map(|t| t.into_tvalue()))
            .collect();
        let inputs = match inputs {
            Ok(i) => i,
            Err(e) => {
                return (
                    "refused".into(),
                    format!("input is not a tensor inferd can carry: {e}"),
                );
            }
        };
        let outputs = match model.plan().run(inputs) {
            Ok(o) => o,
            Err(e) => return ("refused".into(), model.explain(&format!("{e:#}"))),
        };
        let expected = numbered(&set, "output_");
        if expected.len() != outputs.len() {
            return (
                "wrong".into(),
                format!("{} outputs, expected {}", outputs.len(), expected.len()),
            );
        }
        for (i, (got, want)) in outputs.iter().zip(&expected).enumerate() {
            let want = match tensor(want) {
                Ok(w) => w,
                Err(e) => return ("refused".into(), format!("output {i} is not a tensor: {e}")),
            };
            if let Err(e) = same(got, &want) {
                return ("wrong".into(), format!("output {i}: {e}"));
            }
        }
    }
    ("passed".into(), String::new())
}

fn ops(dir: &Path) -> Vec<String> {
    let Ok(bytes) = std::fs::read(dir.join("model.onnx")) else {
        return vec![];
    };
    let Ok(m) = ModelProto::decode(bytes.as_slice()) else {
        return vec![];
    };
    let mut v: Vec<String> = m
        .graph
        .map(|g| g.node.into_iter().map(|n| n.op_type).collect())
        .unwrap_or_default();
    v.sort();
    v.dedup();
    v
}

fn main() {
    let Some(root) = std::env::args().nth(1) else {
        eprintln!("usage: onnx_node_report DIR");
        std::process::exit(2);
    };
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("read the test folder")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("model.onnx").is_file())
        .collect();
    cases.sort();
    for case in cases {
        let name = case
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let c = case.clone();
        // A panic inside tract is a refusal of that model, not the end of the report.
        let (status, detail) = std::panic::catch_unwind(move || run_case(&c))
            .unwrap_or_else(|_| ("refused".into(), "the backend panicked".into()));
        println!(
            "{}",
            serde_json::json!({"test": name, "ops": ops(&case), "status": status, "detail": detail})
        );
    }
}
