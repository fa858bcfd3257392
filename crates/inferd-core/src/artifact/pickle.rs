//! Recognises Python pickle streams without interpreting them: a walk over the opcode table that
//! only checks each opcode is known and its argument is complete. Also recognises the containers
//! pickles hide in: PyTorch's zip format (`archive/data.pkl`), NumPy object arrays, and compressed
//! files whose names promise a pickle.

/// What was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PickleKind {
    /// A pickle stream of this protocol (0 and 1 are the text-era protocols).
    Stream {
        /// Protocol number.
        protocol: u8,
        /// `module.name` references (GLOBAL/INST) seen: what unpickling would import and call.
        globals: Vec<String>,
    },
    /// A zip archive with a pickle inside (PyTorch's `torch.save` format).
    Zip {
        /// The entry holding the pickle.
        entry: String,
    },
    /// A NumPy `.npy` file with an object dtype (stored as a pickle).
    NumpyObject,
    /// A compressed file whose name says it holds a pickle (joblib, `.pkl.gz`, ...).
    Compressed {
        /// The compression recognised.
        format: &'static str,
    },
}

impl PickleKind {
    /// One-line description.
    pub fn describe(&self) -> String {
        match self {
            PickleKind::Stream { protocol, globals } if globals.is_empty() => {
                format!("a Python pickle stream (protocol {protocol})")
            }
            PickleKind::Stream { protocol, globals } => format!(
                "a Python pickle stream (protocol {protocol}) that imports {}",
                globals
                    .iter()
                    .take(5)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            PickleKind::Zip { entry } => {
                format!("a zip archive holding a pickle ('{entry}', PyTorch's torch.save format)")
            }
            PickleKind::NumpyObject => {
                "a NumPy array of Python objects (stored as a pickle)".into()
            }
            PickleKind::Compressed { format } => {
                format!("{format}-compressed data with a pickle file name")
            }
        }
    }
}

/// File extensions that promise a pickle (or a format built on one).
pub const PICKLE_EXTENSIONS: &[&str] = &[
    "pkl", "pickle", "joblib", "pt", "pth", "ckpt", "bin", "sav", "dill", "npz", "npy",
];

#[derive(Clone, Copy)]
enum Arg {
    None,
    Fixed(usize),
    Line,
    TwoLines,
    Len1,
    Len4,
    Len8,
}

fn opcode(op: u8) -> Option<Arg> {
    use Arg::*;
    Some(match op {
        b'(' | b'.' | b'0' | b'1' | b'2' | b'N' | b'Q' | b'R' | b'a' | b'b' | b'd' | b'}'
        | b'e' | b'l' | b']' | b'o' | b's' | b't' | b')' | b'u' => None,
        b'F' | b'I' | b'L' | b'P' | b'S' | b'V' | b'g' | b'p' => Line,
        b'c' | b'i' => TwoLines,
        b'J' => Fixed(4),
        b'K' | b'h' | b'q' => Fixed(1),
        b'M' => Fixed(2),
        b'j' | b'r' => Fixed(4),
        b'G' => Fixed(8),
        b'T' | b'X' | b'B' => Len4,
        b'U' | b'C' => Len1,
        0x80 => Fixed(1),
        0x81 | 0x85 | 0x86 | 0x87 | 0x88 | 0x89 => None,
        0x82 => Fixed(1),
        0x83 => Fixed(2),
        0x84 => Fixed(4),
        0x8a => Len1,
        0x8b => Len4,
        0x8c => Len1,
        0x8d | 0x8e | 0x96 => Len8,
        0x8f | 0x90 | 0x91 | 0x92 | 0x93 | 0x94 | 0x97 | 0x98 => None,
        0x95 => Fixed(8),
        _ => return Option::None,
    })
}

/// Opcodes that import or call: the ones that make unpickling run code.
fn is_code_op(op: u8) -> bool {
    matches!(op, b'c' | b'i' | b'R' | b'o' | b'b' | 0x81 | 0x92 | 0x93)
}

/// Walks `data` (the start of a file, `complete` when it is the whole file) as a pickle stream.
pub fn detect_stream(data: &[u8], complete: bool) -> Option<PickleKind> {
    let mut i = 0usize;
    let mut ops = 0usize;
    let mut code = false;
    let mut protocol = 0u8;
    let mut globals = Vec::new();
    let line_end = |from: usize| {
        data[from..]
            .iter()
            .position(|&b| b == b'\n')
            .map(|p| from + p)
    };
    while i < data.len() {
        let op = data[i];
        let arg = opcode(op)?;
        if ops == 0 && op == 0x80 {
            let p = *data.get(i + 1)?;
            if !(2..=5).contains(&p) {
                return None;
            }
            protocol = p;
        }
        i += 1;
        match arg {
            Arg::None => {}
            Arg::Fixed(n) => i += n,
            Arg::Line => i = line_end(i)? + 1,
            Arg::TwoLines => {
                let a = line_end(i)?;
                let b = line_end(a + 1)?;
                let module = String::from_utf8_lossy(&data[i..a]).into_owned();
                let name = String::from_utf8_lossy(&data[a + 1..b]).into_owned();
                if module.len() > 200 || name.len() > 200 {
                    return None;
                }
                globals.push(format!("{module}.{name}"));
                i = b + 1;
            }
            Arg::Len1 | Arg::Len4 | Arg::Len8 => {
                let w = match arg {
                    Arg::Len1 => 1,
                    Arg::Len4 => 4,
                    _ => 8,
                };
                let bytes = data.get(i..i + w)?;
                let mut n = [0u8; 8];
                n[..w].copy_from_slice(bytes);
                let len = usize::try_from(u64::from_le_bytes(n)).ok()?;
                i = i.checked_add(w)?.checked_add(len)?;
            }
        }
        ops += 1;
        code |= is_code_op(op);
        if op == 0x93 {
            // STACK_GLOBAL: the module and name come from the stack, built at run time.
            globals.push(STACK_GLOBAL.to_string());
        }
        if op == b'.' {
            // STOP: a whole pickle. Protocol 0/1 streams must also end the file (or carry code),
            // so short text files that happen to parse are not called pickles.
            let at_end = data[i.min(data.len())..]
                .iter()
                .all(|b| b.is_ascii_whitespace());
            let real = protocol >= 2 || code || (ops >= 3 && at_end && complete);
            return real.then_some(PickleKind::Stream { protocol, globals });
        }
        if i > data.len() {
            // An argument runs past what was read.
            return (!complete && protocol >= 2)
                .then_some(PickleKind::Stream { protocol, globals });
        }
    }
    // Ran out of data before STOP: a truncated read of a protocol-2+ pickle still counts.
    (!complete && protocol >= 2 && ops > 1).then_some(PickleKind::Stream { protocol, globals })
}

fn u16le(b: &[u8], at: usize) -> Option<usize> {
    Some(u16::from_le_bytes([*b.get(at)?, *b.get(at + 1)?]) as usize)
}

fn u32le(b: &[u8], at: usize) -> Option<usize> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?) as usize)
}

/// What [`PickleKind::Stream`]'s globals hold for a STACK_GLOBAL import (its target is only
/// known when the stream runs).
pub const STACK_GLOBAL: &str = "(a name built at run time: STACK_GLOBAL)";

/// One zip entry: name, compression method, and its bytes when stored.
type ZipEntry<'a> = (String, usize, Option<&'a [u8]>);

/// A zip archive's entries.
fn zip_entries(data: &[u8]) -> Option<Vec<ZipEntry<'_>>> {
    if !data.starts_with(b"PK\x03\x04") {
        return None;
    }
    let tail_start = data.len().saturating_sub(65_557);
    let eocd = data[tail_start..]
        .windows(4)
        .rposition(|w| w == b"PK\x05\x06")?
        + tail_start;
    let entries = u16le(data, eocd + 10)?;
    let mut p = u32le(data, eocd + 16)?;
    let mut out = Vec::with_capacity(entries);
    for _ in 0..entries {
        if data.get(p..p + 4)? != b"PK\x01\x02" {
            return None;
        }
        let method = u16le(data, p + 10)?;
        let size = u32le(data, p + 20)?;
        let name_len = u16le(data, p + 28)?;
        let extra_len = u16le(data, p + 30)?;
        let comment_len = u16le(data, p + 32)?;
        let local = u32le(data, p + 42)?;
        let name = String::from_utf8_lossy(data.get(p + 46..p + 46 + name_len)?).into_owned();
        let body = (method == 0)
            .then(|| {
                let lname = u16le(data, local + 26)?;
                let lextra = u16le(data, local + 28)?;
                let start = local + 30 + lname + lextra;
                data.get(start..start.checked_add(size)?)
            })
            .flatten();
        out.push((name, method, body));
        p += 46 + name_len + extra_len + comment_len;
    }
    Some(out)
}

/// The pickles inside a PyTorch zip archive (TorchScript's `torch.jit.save` or `torch.save`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ZipPickles {
    /// Whether the archive holds TorchScript code (`<archive>/code/`): `torch.jit.save`.
    pub torchscript: bool,
    /// Every `module.name` the pickles import.
    pub globals: Vec<String>,
    /// Pickle entries that could not be read (compressed, truncated).
    pub unreadable: Vec<String>,
}

impl ZipPickles {
    /// Imports outside TorchScript's own classes (and entries that could not be checked).
    pub fn foreign(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .globals
            .iter()
            .filter(|g| !torchscript_allows(g))
            .cloned()
            .collect();
        out.extend(
            self.unreadable
                .iter()
                .map(|e| format!("(unreadable entry '{e}')")),
        );
        out.sort();
        out.dedup();
        out
    }
}

/// Whether `global` (`module.name`) is one of the classes a TorchScript archive's pickles
/// name: its own compiled classes (`__torch__.*`), storages, tensor rebuilders, TorchScript's
/// list builders and `collections.OrderedDict`. `torch.jit.load` resolves these itself,
/// without Python; anything else is a sign the file is not what it claims.
pub fn torchscript_allows(global: &str) -> bool {
    if global.starts_with("__torch__.") || global.starts_with("torch.jit._pickle.") {
        return true;
    }
    if let Some(storage) = global.strip_prefix("torch.")
        && !storage.contains('.')
        && storage.ends_with("Storage")
    {
        return true;
    }
    matches!(
        global,
        "torch._utils._rebuild_tensor_v2"
            | "torch._utils._rebuild_parameter"
            | "torch._utils._rebuild_parameter_with_state"
            | "torch._utils._rebuild_qtensor"
            | "torch._utils._rebuild_sparse_tensor"
            | "collections.OrderedDict"
    )
}

/// Reads the pickles of a zip archive (whole file in `data`): what they import, and whether
/// it is TorchScript. `None` when `data` is no zip with pickles.
pub fn zip_pickles(data: &[u8]) -> Option<ZipPickles> {
    let entries = zip_entries(data)?;
    let mut out = ZipPickles::default();
    let mut any = false;
    for (name, _method, body) in &entries {
        let lower = name.to_ascii_lowercase();
        if lower.contains("/code/") || lower.starts_with("code/") {
            out.torchscript = true;
        }
        if !(lower.ends_with(".pkl") || lower.ends_with(".pickle")) {
            continue;
        }
        any = true;
        match body.and_then(|b| detect_stream(b, true)) {
            Some(PickleKind::Stream { globals, .. }) => out.globals.extend(globals),
            _ => out.unreadable.push(name.clone()),
        }
    }
    out.globals.sort();
    out.globals.dedup();
    any.then_some(out)
}

/// Looks inside a zip archive (whole file in `data`) for pickle entries.
pub fn detect_zip(data: &[u8]) -> Option<PickleKind> {
    for (name, _method, body) in zip_entries(data)? {
        let lower = name.to_ascii_lowercase();
        let pickled_name = lower.ends_with(".pkl") || lower.ends_with(".pickle");
        // A stored entry is also judged by its first bytes.
        let pickled_body = body.is_some_and(|b| {
            matches!(
                detect_stream(&b[..b.len().min(4096)], false),
                Some(PickleKind::Stream { protocol: 2.., .. })
            )
        });
        if pickled_name || pickled_body {
            return Some(PickleKind::Zip { entry: name });
        }
    }
    None
}

/// Recognises a pickle in a file: `head` is the file's start (up to 64 KiB or the whole file),
/// `whole` is the whole file when it was small enough to read, `name` its file name.
pub fn detect(name: &str, head: &[u8], whole: Option<&[u8]>) -> Option<PickleKind> {
    if let Some(k) = detect_stream(whole.unwrap_or(head), whole.is_some()) {
        return Some(k);
    }
    if let Some(all) = whole
        && let Some(k) = detect_zip(all)
    {
        return Some(k);
    }
    if head.starts_with(b"\x93NUMPY") {
        let header_end = head
            .iter()
            .position(|&b| b == b'\n')
            .unwrap_or(head.len().min(512));
        let header = String::from_utf8_lossy(&head[..header_end]);
        if header.contains("'descr': '|O'") || header.contains("'descr': 'O'") {
            return Some(PickleKind::NumpyObject);
        }
    }
    let lower = name.to_ascii_lowercase();
    let pickle_name = PICKLE_EXTENSIONS
        .iter()
        .filter(|e| !matches!(**e, "bin" | "npy" | "npz"))
        .any(|e| lower.ends_with(&format!(".{e}")) || lower.contains(&format!(".{e}.")));
    if pickle_name {
        let format = if head.starts_with(&[0x1f, 0x8b]) {
            Some("gzip")
        } else if head.starts_with(b"BZh") {
            Some("bzip2")
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            Some("xz")
        } else if head.starts_with(b"ZF") {
            Some("joblib zlib")
        } else if head.len() >= 2 && head[0] == 0x78 && matches!(head[1], 0x01 | 0x5e | 0x9c | 0xda)
        {
            Some("zlib")
        } else if head.starts_with(&[0x04, 0x22, 0x4d, 0x18]) {
            Some("lz4")
        } else {
            None
        };
        if let Some(format) = format {
            return Some(PickleKind::Compressed { format });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_2_to_5_streams_are_found() {
        // pickle.dumps({'a': 1}, protocol=4)
        let p4 = b"\x80\x04\x95\x0a\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\x01a\x94K\x01s.";
        assert_eq!(
            detect_stream(p4, true),
            Some(PickleKind::Stream {
                protocol: 4,
                globals: vec![]
            })
        );
        // pickle.dumps(None, protocol=2)
        assert!(detect_stream(b"\x80\x02N.", true).is_some());
    }

    #[test]
    fn protocol_0_code_execution_payload_is_found_with_its_globals() {
        let payload = b"cos\nsystem\n(S'touch /tmp/pwned'\ntR.";
        match detect_stream(payload, true) {
            Some(PickleKind::Stream {
                protocol: 0,
                globals,
            }) => assert_eq!(globals, vec!["os.system"]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn text_and_binary_model_files_are_not_pickles() {
        for data in [
            &b"name: \"m\"\nmax_batch_size: 8\n"[..],
            b"{\"learner\": {}}",
            b"\x08\x07\x12\x04onnx",
            b"1.5",
            b"GGUF\x03\x00\x00\x00",
            b"",
        ] {
            assert_eq!(detect("model.onnx", data, Some(data)), None, "{data:?}");
        }
    }

    #[test]
    fn truncated_large_pickle_head_still_counts() {
        let mut head = b"\x80\x04\x95\x00\x10\x00\x00\x00\x00\x00\x00\x8e".to_vec();
        head.extend_from_slice(&1_000_000u64.to_le_bytes());
        head.extend_from_slice(&[0u8; 100]);
        assert!(detect_stream(&head, false).is_some());
        assert!(
            detect_stream(&head, true).is_none(),
            "a complete file must end its arguments"
        );
    }

    #[test]
    fn compressed_pickle_names_are_refused() {
        assert_eq!(
            detect("model.joblib", b"\x78\x9cabc", None),
            Some(PickleKind::Compressed { format: "zlib" })
        );
        assert_eq!(
            detect("model.pkl.gz", b"\x1f\x8babc", None),
            Some(PickleKind::Compressed { format: "gzip" })
        );
        assert_eq!(detect("data.gz", b"\x1f\x8babc", None), None);
    }

    #[test]
    fn numpy_object_arrays_are_refused() {
        let head =
            b"\x93NUMPY\x01\x00v\x00{'descr': '|O', 'fortran_order': False, 'shape': (2,), }\n";
        assert_eq!(detect("x.npy", head, None), Some(PickleKind::NumpyObject));
    }

    #[test]
    fn hostile_bytes_never_panic() {
        let mut seed = 0x1234_5678u32;
        for len in 0..400 {
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    (seed % 256) as u8
                })
                .collect();
            let _ = detect("x.pkl", &data, Some(&data));
            let mut z = b"PK\x03\x04".to_vec();
            z.extend_from_slice(&data);
            z.extend_from_slice(
                b"PK\x05\x06\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",
            );
            let _ = detect_zip(&z);
        }
    }

    #[test]
    fn torchscript_allows_its_own_classes_and_nothing_else() {
        for ok in [
            "__torch__.M",
            "__torch__.torch.nn.modules.linear.Linear",
            "torch.FloatStorage",
            "torch._utils._rebuild_tensor_v2",
            "torch.jit._pickle.build_intlist",
            "collections.OrderedDict",
        ] {
            assert!(torchscript_allows(ok), "{ok}");
        }
        for bad in [
            "os.system",
            "builtins.eval",
            "__main__.Net",
            "torch.nn.modules.linear.Linear",
            "torch.storage.FloatStorage",
            STACK_GLOBAL,
        ] {
            assert!(!torchscript_allows(bad), "{bad}");
        }
    }
}
