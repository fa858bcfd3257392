//! Structural checks of weight-file headers, without loading any weights: SafeTensors (JSON header,
//! offsets), GGUF (metadata, tensor table), and ONNX external-data references.

use std::collections::BTreeMap;
use std::path::{Component, Path};

/// SafeTensors caps its header at 100 MB; so do we.
pub const SAFETENSORS_MAX_HEADER: u64 = 100_000_000;

fn st_dtype_size(d: &str) -> Option<u64> {
    Some(match d {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" => 1,
        "I16" | "U16" | "F16" | "BF16" => 2,
        "I32" | "U32" | "F32" => 4,
        "I64" | "U64" | "F64" => 8,
        _ => return None,
    })
}

/// Checks a SafeTensors file: `head` holds at least the header (8 + N bytes) when the file is
/// well-formed; `file_len` is the file size. Returns the problems found.
pub fn check_safetensors(head: &[u8], file_len: u64) -> Vec<String> {
    let mut out = Vec::new();
    let Some(n) = head
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    else {
        return vec!["file is shorter than the 8-byte header length".into()];
    };
    if n > SAFETENSORS_MAX_HEADER {
        return vec![format!(
            "header length {n} exceeds the {SAFETENSORS_MAX_HEADER}-byte limit"
        )];
    }
    if 8 + n > file_len {
        return vec![format!(
            "header length {n} runs past the end of the {file_len}-byte file"
        )];
    }
    let Some(header) = head.get(8..8 + n as usize) else {
        return vec!["header could not be read".into()];
    };
    let json: serde_json::Value = match serde_json::from_slice(header) {
        Ok(v) => v,
        Err(e) => return vec![format!("header is not valid JSON: {e}")],
    };
    let Some(map) = json.as_object() else {
        return vec!["header is not a JSON object".into()];
    };
    let data_len = file_len - 8 - n;
    let mut spans: Vec<(u64, u64, String)> = Vec::new();
    for (name, t) in map {
        if name == "__metadata__" {
            if !t
                .as_object()
                .is_some_and(|m| m.values().all(|v| v.is_string()))
            {
                out.push("__metadata__ must map strings to strings".into());
            }
            continue;
        }
        let dtype = t.get("dtype").and_then(|d| d.as_str()).unwrap_or("");
        let Some(size) = st_dtype_size(dtype) else {
            out.push(format!("tensor '{name}': unknown dtype '{dtype}'"));
            continue;
        };
        let shape: Option<Vec<u64>> = t
            .get("shape")
            .and_then(|s| s.as_array())
            .map(|a| a.iter().filter_map(|d| d.as_u64()).collect());
        let offs: Option<Vec<u64>> = t
            .get("data_offsets")
            .and_then(|s| s.as_array())
            .map(|a| a.iter().filter_map(|d| d.as_u64()).collect());
        let (Some(shape), Some(offs)) = (shape, offs) else {
            out.push(format!(
                "tensor '{name}': missing or malformed shape/data_offsets"
            ));
            continue;
        };
        if offs.len() != 2 || offs[0] > offs[1] {
            out.push(format!(
                "tensor '{name}': data_offsets {offs:?} are not [begin, end]"
            ));
            continue;
        }
        let expected = shape.iter().try_fold(size, |acc, &d| acc.checked_mul(d));
        if expected != Some(offs[1] - offs[0]) {
            out.push(format!(
                "tensor '{name}': {dtype} shape {shape:?} needs {} bytes but data_offsets span {}",
                expected
                    .map(|e| e.to_string())
                    .unwrap_or_else(|| "overflowing".into()),
                offs[1] - offs[0]
            ));
        }
        if offs[1] > data_len {
            out.push(format!(
                "tensor '{name}': data_offsets end {} runs past the {data_len}-byte data section",
                offs[1]
            ));
        }
        spans.push((offs[0], offs[1], name.clone()));
    }
    spans.sort();
    for w in spans.windows(2) {
        if w[1].0 < w[0].1 {
            out.push(format!("tensors '{}' and '{}' overlap", w[0].2, w[1].2));
        }
    }
    out
}

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

/// What a header check says when the bytes it was given end inside the header.
pub const PAST_THE_END: &str = "header runs past the end of the file";

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self
            .i
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or(PAST_THE_END)?;
        let s = &self.b[self.i..end];
        self.i = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().map_err(|_| "short read")?,
        ))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().map_err(|_| "short read")?,
        ))
    }
    fn string(&mut self) -> Result<String, String> {
        let n = self.u64()?;
        if n > 1 << 24 {
            return Err(format!("string of {n} bytes is implausibly long"));
        }
        Ok(String::from_utf8_lossy(self.take(n as usize)?).into_owned())
    }
}

/// Bytes of one block and elements per block of a GGML tensor type, where known.
pub fn ggml_block(t: u32) -> Option<(u64, u64)> {
    Some(match t {
        0 => (4, 1),
        1 => (2, 1),
        2 => (18, 32),
        3 => (20, 32),
        6 => (22, 32),
        7 => (24, 32),
        8 => (34, 32),
        9 => (36, 32),
        10 => (84, 256),
        11 => (110, 256),
        12 => (144, 256),
        13 => (176, 256),
        14 => (210, 256),
        15 => (292, 256),
        24 => (1, 1),
        25 => (2, 1),
        26 => (4, 1),
        27 => (8, 1),
        28 => (8, 1),
        30 => (2, 1),
        _ => return None,
    })
}

fn skip_gguf_value(c: &mut Cursor, ty: u32, depth: usize) -> Result<Option<u64>, String> {
    let fixed = |t: u32| -> Option<usize> {
        Some(match t {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            10..=12 => 8,
            _ => return None,
        })
    };
    if let Some(n) = fixed(ty) {
        let b = c.take(n)?;
        let v = match n {
            1 => b[0] as u64,
            2 => u16::from_le_bytes([b[0], b[1]]) as u64,
            4 => u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u64,
            _ => u64::from_le_bytes(b.try_into().map_err(|_| "short read")?),
        };
        return Ok(Some(v));
    }
    match ty {
        8 => {
            c.string()?;
            Ok(None)
        }
        9 if depth < 4 => {
            let inner = c.u32()?;
            let n = c.u64()?;
            if n > 1 << 28 {
                return Err(format!("array of {n} elements is implausibly long"));
            }
            for _ in 0..n {
                skip_gguf_value(c, inner, depth + 1)?;
            }
            Ok(None)
        }
        other => Err(format!("unknown metadata value type {other}")),
    }
}

/// Checks a GGUF file's header and tensor table against its size. `head` is the file's start
/// (the whole header must be in it).
pub fn check_gguf(head: &[u8], file_len: u64) -> Vec<String> {
    match gguf_inner(head, file_len) {
        Ok(v) => v,
        Err(e) => vec![e],
    }
}

fn gguf_inner(head: &[u8], file_len: u64) -> Result<Vec<String>, String> {
    let mut c = Cursor { b: head, i: 0 };
    if c.take(4)? != b"GGUF" {
        return Err("missing the GGUF magic".into());
    }
    let version = c.u32()?;
    if !(2..=3).contains(&version) {
        return Err(format!("unsupported GGUF version {version}"));
    }
    let n_tensors = c.u64()?;
    let n_kv = c.u64()?;
    if n_tensors > 1 << 20 || n_kv > 1 << 20 {
        return Err(format!(
            "implausible counts: {n_tensors} tensors, {n_kv} metadata entries"
        ));
    }
    let mut alignment = 32u64;
    for _ in 0..n_kv {
        let key = c.string()?;
        let ty = c.u32()?;
        let v = skip_gguf_value(&mut c, ty, 0).map_err(|e| format!("metadata '{key}': {e}"))?;
        if key == "general.alignment" {
            alignment = v
                .filter(|&a| a > 0 && a.is_power_of_two())
                .ok_or("general.alignment is not a power of two")?;
        }
    }
    let mut out = Vec::new();
    let mut tensors = Vec::new();
    for _ in 0..n_tensors {
        let name = c.string()?;
        let n_dims = c.u32()?;
        if n_dims > 8 {
            return Err(format!("tensor '{name}' has {n_dims} dimensions"));
        }
        let mut elems = 1u64;
        for _ in 0..n_dims {
            elems = elems
                .checked_mul(c.u64()?)
                .ok_or_else(|| format!("tensor '{name}': element count overflows"))?;
        }
        let ty = c.u32()?;
        let offset = c.u64()?;
        tensors.push((name, elems, ty, offset));
    }
    let data_start = (c.i as u64).div_ceil(alignment) * alignment;
    let mut spans = Vec::new();
    for (name, elems, ty, offset) in tensors {
        if offset % alignment != 0 {
            out.push(format!(
                "tensor '{name}': offset {offset} is not aligned to {alignment}"
            ));
        }
        let size = ggml_block(ty).map(|(bytes, per)| elems.div_ceil(per).saturating_mul(bytes));
        let start = data_start.saturating_add(offset);
        let end = start.saturating_add(size.unwrap_or(0));
        if end > file_len || start > file_len {
            out.push(format!("tensor '{name}': data [{start}, {end}) runs past the end of the {file_len}-byte file"));
        }
        if size.is_some() {
            spans.push((start, end, name));
        }
    }
    spans.sort();
    for w in spans.windows(2) {
        if w[1].0 < w[0].1 {
            out.push(format!("tensors '{}' and '{}' overlap", w[0].2, w[1].2));
        }
    }
    Ok(out)
}

fn varint(b: &[u8], i: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*i)?;
        *i += 1;
        v |= ((byte & 0x7f) as u64) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Visits the fields of a protobuf message: (field number, payload of length-delimited fields).
fn fields(b: &[u8], mut f: impl FnMut(u64, &[u8])) -> Result<(), String> {
    let mut i = 0;
    while i < b.len() {
        let tag = varint(b, &mut i).ok_or("truncated protobuf tag")?;
        match tag & 7 {
            0 => {
                varint(b, &mut i).ok_or("truncated varint")?;
            }
            1 => i += 8,
            5 => i += 4,
            2 => {
                let n = varint(b, &mut i).ok_or("truncated length")? as usize;
                let end = i
                    .checked_add(n)
                    .filter(|&e| e <= b.len())
                    .ok_or("length-delimited field runs past the end")?;
                f(tag >> 3, &b[i..end]);
                i = end;
            }
            w => return Err(format!("unsupported protobuf wire type {w}")),
        }
    }
    if i > b.len() {
        return Err("field runs past the end".into());
    }
    Ok(())
}

/// The external-data `location`s an ONNX model refers to (initializers, sparse initializers,
/// node attribute tensors, nested subgraphs).
pub fn onnx_external_locations(model: &[u8]) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut err = None;
    fields(model, |n, b| {
        if n == 7
            && let Err(e) = graph_locations(b, &mut out, 0)
        {
            err = Some(e);
        }
    })?;
    match err {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

fn tensor_locations(t: &[u8], out: &mut Vec<String>) -> Result<(), String> {
    fields(t, |n, b| {
        if n == 13 {
            let mut kv: BTreeMap<u64, String> = BTreeMap::new();
            let _ = fields(b, |k, v| {
                kv.insert(k, String::from_utf8_lossy(v).into_owned());
            });
            if kv.get(&1).map(String::as_str) == Some("location") {
                out.push(kv.get(&2).cloned().unwrap_or_default());
            }
        }
    })
}

fn graph_locations(g: &[u8], out: &mut Vec<String>, depth: usize) -> Result<(), String> {
    if depth > 32 {
        return Err("subgraphs nested too deeply".into());
    }
    let mut result = Ok(());
    fields(g, |n, b| {
        let r = match n {
            5 => tensor_locations(b, out),
            15 => fields(b, |m, t| {
                if m == 1 || m == 2 {
                    let _ = tensor_locations(t, out);
                }
            }),
            1 => fields(b, |m, attr| {
                if m == 5 {
                    let _ = fields(attr, |k, v| match k {
                        5 | 10 => {
                            let _ = tensor_locations(v, out);
                        }
                        6 | 11 => {
                            let _ = graph_locations(v, out, depth + 1);
                        }
                        _ => {}
                    });
                }
            }),
            _ => Ok(()),
        };
        if result.is_ok() {
            result = r;
        }
    })?;
    result
}

/// Why an external-data location is unsafe, if it is: absolute, or escaping the model folder.
pub fn unsafe_location(location: &str) -> Option<String> {
    let p = Path::new(location);
    if p.is_absolute() || location.starts_with('\\') || location.get(1..3) == Some(":\\") {
        return Some(format!(
            "external data location '{location}' is an absolute path"
        ));
    }
    let mut depth = 0i32;
    for c in p.components() {
        match c {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            _ => {
                return Some(format!(
                    "external data location '{location}' is not a relative path"
                ));
            }
        }
        if depth < 0 {
            return Some(format!(
                "external data location '{location}' escapes the model folder"
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(header: &str, data_len: usize) -> Vec<u8> {
        let mut f = (header.len() as u64).to_le_bytes().to_vec();
        f.extend_from_slice(header.as_bytes());
        f.extend(std::iter::repeat_n(0u8, data_len));
        f
    }

    #[test]
    fn good_safetensors_passes() {
        let f = st(
            r#"{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"__metadata__":{"k":"v"}}"#,
            16,
        );
        assert!(check_safetensors(&f, f.len() as u64).is_empty());
    }

    #[test]
    fn bad_safetensors_offsets_are_found() {
        let f = st(
            r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}}"#,
            16,
        );
        let p = check_safetensors(&f, f.len() as u64).join("; ");
        assert!(p.contains("overlap") && p.contains("runs past"), "{p}");
        let f = st(
            r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}}"#,
            16,
        );
        assert!(check_safetensors(&f, f.len() as u64)[0].contains("needs 12 bytes"));
        let mut f = st("{}", 0);
        f[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(check_safetensors(&f, f.len() as u64)[0].contains("exceeds"));
    }

    fn gguf(tensors: &[(&str, u64, u32, u64)], data: usize) -> Vec<u8> {
        let mut f = b"GGUF".to_vec();
        f.extend_from_slice(&3u32.to_le_bytes());
        f.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        f.extend_from_slice(&1u64.to_le_bytes());
        let s = |f: &mut Vec<u8>, x: &str| {
            f.extend_from_slice(&(x.len() as u64).to_le_bytes());
            f.extend_from_slice(x.as_bytes());
        };
        s(&mut f, "general.name");
        f.extend_from_slice(&8u32.to_le_bytes());
        s(&mut f, "tiny");
        for (name, n, ty, off) in tensors {
            s(&mut f, name);
            f.extend_from_slice(&1u32.to_le_bytes());
            f.extend_from_slice(&n.to_le_bytes());
            f.extend_from_slice(&ty.to_le_bytes());
            f.extend_from_slice(&off.to_le_bytes());
        }
        while !f.len().is_multiple_of(32) {
            f.push(0);
        }
        f.extend(std::iter::repeat_n(0u8, data));
        f
    }

    #[test]
    fn gguf_tensor_table_is_checked_against_the_file() {
        let f = gguf(&[("a", 8, 0, 0), ("b", 8, 0, 32)], 64);
        assert!(
            check_gguf(&f, f.len() as u64).is_empty(),
            "{:?}",
            check_gguf(&f, f.len() as u64)
        );
        let f = gguf(&[("a", 8, 0, 0), ("b", 100, 0, 32)], 64);
        assert!(check_gguf(&f, f.len() as u64).join(";").contains("'b'"));
        let f = gguf(&[("a", 16, 0, 0), ("b", 8, 0, 32)], 96);
        assert!(check_gguf(&f, f.len() as u64).join(";").contains("overlap"));
        assert!(check_gguf(b"GGUF\x03\x00\x00\x00", 8)[0].contains("past the end"));
    }

    #[test]
    fn external_data_locations_are_judged() {
        assert!(unsafe_location("weights.bin").is_none());
        assert!(unsafe_location("sub/../weights.bin").is_none());
        assert!(
            unsafe_location("../../etc/passwd")
                .unwrap()
                .contains("escapes")
        );
        assert!(unsafe_location("/etc/passwd").unwrap().contains("absolute"));
    }

    #[test]
    fn onnx_external_location_is_read_from_initializers() {
        // ModelProto{graph(7): GraphProto{initializer(5): TensorProto{external_data(13): {key: "location", value: "../x"}}}}
        let entry = [&[0x0a, 8][..], b"location", &[0x12, 4], b"../x"].concat();
        let tensor = [&[0x6a, entry.len() as u8][..], &entry].concat();
        let graph = [&[0x2a, tensor.len() as u8][..], &tensor].concat();
        let model = [&[0x3a, graph.len() as u8][..], &graph].concat();
        assert_eq!(
            onnx_external_locations(&model).unwrap(),
            vec!["../x".to_string()]
        );
        assert!(onnx_external_locations(&[0x3a, 0x7f]).is_err());
    }
}
