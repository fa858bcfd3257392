//! The offline tools: `inferd repo check` (a full load of every version), `inferd inspect`
//! (a GGUF file described as JSON) and `inferd scan` (unsafe artifacts).

use std::path::PathBuf;

use anyhow::{Result, bail};
use inferd_core::{Engine, EngineOptions};

use crate::settings::OnnxBackend;
use crate::{Format, LlmFlags, backends};

pub(crate) fn repo_check(dir: PathBuf, onnx: OnnxBackend) -> Result<bool> {
    if !dir.is_dir() {
        bail!("'{}' is not a folder", dir.display());
    }
    let engine = Engine::new(
        EngineOptions {
            repository: dir.clone(),
            ..Default::default()
        },
        backends(
            onnx,
            "--onnx-backend",
            LlmFlags::default(),
            inferd_pybackend::PythonBackend::new("python3".into()),
        )?,
    );
    let names = inferd_core::repository::list_models(&dir).map_err(|e| anyhow::anyhow!("{e}"))?;
    if names.is_empty() {
        println!("{}: no model folders found", dir.display());
        return Ok(false);
    }
    let mut ok = true;
    for name in names {
        let (problems, warnings) = engine.check_model_blocking(&name);
        for w in &warnings {
            println!("warning: {w}");
        }
        if problems.is_empty() {
            println!("ok: {name}");
        } else {
            ok = false;
            for p in problems {
                println!("error: {name}: {p}");
            }
        }
    }
    Ok(ok)
}

fn gguf_value_json(v: &inferd_gguf::Value) -> serde_json::Value {
    use inferd_gguf::Value as V;
    match v {
        V::String(s) => serde_json::json!(s),
        V::Bool(b) => serde_json::json!(b),
        V::F32(f) => serde_json::json!(f),
        V::F64(f) => serde_json::json!(f),
        V::I8(x) => serde_json::json!(x),
        V::I16(x) => serde_json::json!(x),
        V::I32(x) => serde_json::json!(x),
        V::I64(x) => serde_json::json!(x),
        V::Array(a) => serde_json::json!({
            "array_len": a.len(),
            "head": a.iter().take(8).map(gguf_value_json).collect::<Vec<_>>(),
        }),
        other => serde_json::json!(other.as_u64()),
    }
}

/// Runs `inferd inspect`.
pub(crate) fn inspect(file: &std::path::Path, tensors: &[String]) -> Result<()> {
    let g = inferd_gguf::GgufFile::open(file)?;
    let mut dequantized = serde_json::Map::new();
    for name in tensors {
        let v = g.dequantize(name)?;
        let sum: f64 = v.iter().map(|&x| x as f64).sum();
        // A sum weighted by position (weights -8..=8 in a pattern that does not repeat
        // within a block), so values in the wrong places show even where the plain sum agrees.
        let checksum: f64 = v
            .iter()
            .enumerate()
            .map(|(i, &x)| x as f64 * (((i * 7 + i / 13) % 17) as f64 - 8.0))
            .sum();
        dequantized.insert(
            name.clone(),
            serde_json::json!({
                "len": v.len(), "head": &v[..v.len().min(16)], "sum": sum, "checksum": checksum,
            }),
        );
    }
    let doc = serde_json::json!({
        "format": "gguf",
        "version": g.version,
        "alignment": g.alignment,
        "metadata": g.metadata.iter().map(|(k, v)| (k.clone(), gguf_value_json(v))).collect::<serde_json::Map<_, _>>(),
        "tensors": g.tensors.iter().map(|t| serde_json::json!({
            "name": t.name, "type": t.ggml_type.name(), "dims": t.dims, "offset": t.offset, "size": t.size,
        })).collect::<Vec<_>>(),
        "dequantized": dequantized,
    });
    println!("{doc}");
    Ok(())
}

/// Runs `inferd scan`; returns the exit code.
pub(crate) fn scan(paths: &[PathBuf], format: Format) -> u8 {
    use inferd_core::artifact;
    let mut findings = Vec::new();
    for p in paths {
        if !p.exists() && std::fs::symlink_metadata(p).is_err() {
            eprintln!("inferd scan: '{}' does not exist", p.display());
            return 2;
        }
        if p.is_dir() {
            findings.extend(artifact::scan_tree(p, p));
            // Digests pinned in model configs below this folder.
            for cfg_path in config_files(p) {
                let Some(model_dir) = cfg_path.parent() else {
                    continue;
                };
                let Ok(text) = std::fs::read_to_string(&cfg_path) else {
                    continue;
                };
                if let Ok(parsed) = inferd_core::config::parse_config(&text, &cfg_path) {
                    let params = parsed
                        .config
                        .parameters
                        .iter()
                        .map(|(k, v)| (k, &v.string_value));
                    findings.extend(artifact::check_pins(model_dir, params, None));
                }
            }
        } else {
            let root = p.parent().unwrap_or(p);
            findings.extend(artifact::scan_tree(p, root));
        }
    }
    if findings.iter().any(|f| {
        f.kind == artifact::FindingKind::Unreadable && f.message.starts_with("cannot read")
    }) {
        for f in &findings {
            eprintln!("{f}");
        }
        return 2;
    }
    match format {
        Format::Human => {
            for f in &findings {
                println!("{f}");
            }
            if findings.is_empty() {
                println!("no findings");
            } else {
                println!(
                    "{} finding{}",
                    findings.len(),
                    if findings.len() == 1 { "" } else { "s" }
                );
            }
        }
        Format::Json => {
            let doc = serde_json::json!({
                "findings": findings.iter().map(|f| serde_json::json!({
                    "path": f.path.display().to_string(),
                    "kind": f.kind.code(),
                    "message": f.message,
                })).collect::<Vec<_>>(),
            });
            println!("{doc}");
        }
    }
    u8::from(!findings.is_empty())
}

fn config_files(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), 0usize)];
    while let Some((d, depth)) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() && depth < 4 {
                stack.push((p, depth + 1));
            } else if ft.is_file() && e.file_name() == "config.pbtxt" {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}
