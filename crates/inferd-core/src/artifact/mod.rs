//! Artifact safety: what `inferd scan` reports and what the server checks before it loads a
//! version. Nothing here interprets model content beyond headers.
//!
//! - [`pickle`]: pickle streams and the containers they hide in (refused everywhere).
//! - [`headers`]: SafeTensors and GGUF header checks, ONNX external-data references.
//!
//! Findings: pickle content (any file, any extension), ONNX external data that is absolute or
//! escapes the model folder, malformed SafeTensors/GGUF headers, symlinks that leave the
//! repository, and files whose sha256 differs from a digest pinned in the model's config
//! (`parameters { key: "sha256:<path under the model folder>" value: { string_value: "<hex>" } }`).

pub mod headers;
pub mod pickle;

use std::fmt;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

/// What kind of problem a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FindingKind {
    /// Pickle content: loading it could run arbitrary code.
    Pickle,
    /// ONNX external data outside the model folder.
    ExternalData,
    /// A malformed SafeTensors header.
    SafeTensors,
    /// A malformed GGUF header.
    Gguf,
    /// A symlink that leaves the repository.
    SymlinkEscape,
    /// A file whose digest differs from the pinned one.
    Digest,
    /// A PyTorch archive whose pickles import more than TorchScript's own classes: refused
    /// even when its digest is pinned.
    ForeignImports,
    /// A file that could not be read or parsed.
    Unreadable,
}

impl FindingKind {
    /// Stable machine name (JSON output).
    pub fn code(self) -> &'static str {
        match self {
            FindingKind::Pickle => "pickle",
            FindingKind::ExternalData => "onnx-external-data",
            FindingKind::SafeTensors => "safetensors-header",
            FindingKind::Gguf => "gguf-header",
            FindingKind::SymlinkEscape => "symlink-escape",
            FindingKind::Digest => "sha256-mismatch",
            FindingKind::ForeignImports => "pickle-imports",
            FindingKind::Unreadable => "unreadable",
        }
    }
}

/// One problem with one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// The file.
    pub path: PathBuf,
    /// Kind.
    pub kind: FindingKind,
    /// What is wrong and what to do.
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: [{}] {}",
            self.path.display(),
            self.kind.code(),
            self.message
        )
    }
}

const HEAD_BYTES: u64 = 64 * 1024;
/// Files up to this size are read whole (zip directories, ONNX external data, complete pickles);
/// 2 GiB is protobuf's own limit for an ONNX file.
const WHOLE_BYTES: u64 = 2 << 30;
/// GGUF metadata (vocabularies) can be large; read at most this much of the header.
const GGUF_HEAD_BYTES: u64 = 256 << 20;

fn finding(path: &Path, kind: FindingKind, message: impl Into<String>) -> Finding {
    Finding {
        path: path.to_path_buf(),
        kind,
        message: message.into(),
    }
}

fn read_prefix(path: &Path, n: u64) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    std::fs::File::open(path)?.take(n).read_to_end(&mut buf)?;
    Ok(buf)
}

/// The advice every pickle finding carries.
pub const PICKLE_ADVICE: &str = "unpickling runs arbitrary code, so inferd never loads it; convert the weights to SafeTensors \
(safetensors.torch.save_file(model.state_dict(), \"model.safetensors\")) or export the model to ONNX (torch.onnx.export)";

/// How to vouch for a pickle-based file the server can run isolated (a TorchScript archive,
/// a pickle beside a `model.py`): pin its digest in the model's config.
fn pin_advice(name: &str, data: &[u8]) -> String {
    format!(
        "unpickling can run code, so inferd serves it only when the model's config pins its digest, \
         in an isolated worker: parameters {{ key: \"sha256:<version>/{name}\" value: {{ string_value: \"{}\" }} }}",
        sha256_hex(data)
    )
}

/// Drops the pickle findings of files whose digest the config pins (and that match it: a
/// mismatch is its own finding): the operator vouches for them. Findings of any other kind,
/// foreign imports included, stay.
pub fn waive_pinned<'a>(
    findings: Vec<Finding>,
    model_dir: &Path,
    params: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Vec<Finding> {
    let pinned: Vec<PathBuf> = params
        .into_iter()
        .filter_map(|(k, _)| k.strip_prefix("sha256:"))
        .filter(|rel| headers::unsafe_location(rel).is_none())
        .map(|rel| model_dir.join(rel))
        .collect();
    let mismatched: Vec<PathBuf> = findings
        .iter()
        .filter(|f| f.kind == FindingKind::Digest)
        .map(|f| f.path.clone())
        .collect();
    findings
        .into_iter()
        .filter(|f| {
            !(f.kind == FindingKind::Pickle
                && pinned.contains(&f.path)
                && !mismatched.contains(&f.path))
        })
        .collect()
}

/// A file's bytes as the checks read them, handed on to the loader so the file is read once.
pub type FileBytes = Arc<[u8]>;

/// Whether the last `n` bytes of `path` hold a zip end-of-central-directory record (a zip
/// appended to another format, which only a whole read can inspect).
fn tail_has_zip(file: &mut std::fs::File, len: u64) -> bool {
    let n = len.min(65_557);
    let mut tail = Vec::new();
    let read = file
        .seek(SeekFrom::Start(len - n))
        .and_then(|_| file.take(n).read_to_end(&mut tail));
    // Unreadable: treat as possibly a zip, so the whole read reports the failure.
    read.is_err() || tail.windows(4).any(|w| w == b"PK\x05\x06")
}

/// The first `HEAD_BYTES`, then (`whole` of `len` wanted) the rest, with one open: the file's
/// bytes go through the checks once. Weights that loaders map or read by tensor (a GGUF by its
/// magic, a `.safetensors` by its name) are checked by their headers alone, unless a zip hides
/// at their end. Gives (bytes, read whole).
fn read_for_scan(path: &Path, name: &str, len: u64) -> std::io::Result<(Vec<u8>, bool)> {
    let mut file = std::fs::File::open(path)?;
    let mut data = Vec::new();
    (&mut file).take(HEAD_BYTES).read_to_end(&mut data)?;
    let weights = data.starts_with(b"GGUF") || name.to_ascii_lowercase().ends_with(".safetensors");
    let header_only = len > HEAD_BYTES && weights && !tail_has_zip(&mut file, len);
    let whole = len <= WHOLE_BYTES && !header_only;
    if whole && len > HEAD_BYTES {
        file.seek(SeekFrom::Start(data.len() as u64))?;
        data.reserve_exact((len - data.len() as u64) as usize);
        file.read_to_end(&mut data)?;
    }
    Ok((data, whole))
}

/// The GGUF header: read in growing prefixes until it parses (a vocabulary makes it megabytes,
/// the tensors behind it are gigabytes that the loader, not the check, reads).
fn gguf_header(path: &Path, len: u64) -> Vec<u8> {
    let mut n = (1u64 << 20).min(len);
    loop {
        let data = read_prefix(path, n).unwrap_or_default();
        let short = headers::check_gguf(&data, len)
            .iter()
            .any(|p| p.contains(headers::PAST_THE_END));
        if !short || n >= len.min(GGUF_HEAD_BYTES) {
            return data;
        }
        n = (n * 4).min(len.min(GGUF_HEAD_BYTES));
    }
}

/// Checks one regular file's content.
pub fn scan_file(path: &Path) -> Vec<Finding> {
    scan_file_keeping(path).0
}

/// Checks one regular file's content; also gives its bytes when they were read whole.
fn scan_file_keeping(path: &Path) -> (Vec<Finding>, Option<Vec<u8>>) {
    let unreadable = |e: std::io::Error| {
        (
            vec![finding(
                path,
                FindingKind::Unreadable,
                format!("cannot read: {e}"),
            )],
            None,
        )
    };
    let len = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) => return unreadable(e),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (data, whole) = match read_for_scan(path, &name, len) {
        Ok(d) => d,
        Err(e) => return unreadable(e),
    };
    let head = &data[..data.len().min(HEAD_BYTES as usize)];
    let mut out = Vec::new();
    if let Some(k) = pickle::detect(&name, head, whole.then_some(&data[..])) {
        let zip = whole.then(|| pickle::zip_pickles(&data)).flatten();
        match &zip {
            Some(z) if z.torchscript && z.foreign().is_empty() => out.push(finding(
                path,
                FindingKind::Pickle,
                format!(
                    "a TorchScript archive (its pickles name only TorchScript's own classes) — {}",
                    pin_advice(&name, &data)
                ),
            )),
            _ => out.push(finding(
                path,
                FindingKind::Pickle,
                format!("{} — {PICKLE_ADVICE}", k.describe()),
            )),
        }
        if let Some(z) = zip {
            let foreign = z.foreign();
            if !foreign.is_empty() {
                out.push(finding(
                    path,
                    FindingKind::ForeignImports,
                    format!(
                        "its pickles import {} (outside TorchScript's own classes): refused even when its sha256 is pinned{}",
                        foreign.iter().take(5).cloned().collect::<Vec<_>>().join(", "),
                        if z.torchscript {
                            ""
                        } else {
                            "; this is torch.save output, not TorchScript: save the model with torch.jit.script(model).save(...) or torch.jit.trace"
                        }
                    ),
                ));
            }
        }
        return (out, None);
    }
    let lower = name.to_ascii_lowercase();
    if lower.ends_with(".safetensors") {
        // Large shards: read exactly the 8-byte length and the header it announces.
        let header = if whole || data.len() < 8 {
            data.clone()
        } else {
            let n = u64::from_le_bytes(data[..8].try_into().unwrap_or([0; 8]));
            read_prefix(path, 8 + n.min(headers::SAFETENSORS_MAX_HEADER)).unwrap_or_default()
        };
        for p in headers::check_safetensors(&header, len) {
            out.push(finding(path, FindingKind::SafeTensors, p));
        }
    }
    if head.starts_with(b"GGUF") {
        let gguf_head = if whole {
            data.clone()
        } else {
            gguf_header(path, len)
        };
        for p in headers::check_gguf(&gguf_head, len) {
            out.push(finding(path, FindingKind::Gguf, p));
        }
    }
    if lower.ends_with(".onnx") && !whole {
        out.push(finding(
            path,
            FindingKind::Unreadable,
            format!("ONNX file of {len} bytes is larger than the {WHOLE_BYTES}-byte scan limit; its external data references cannot be checked"),
        ));
    }
    if lower.ends_with(".onnx") && whole {
        match headers::onnx_external_locations(&data) {
            Ok(locs) => {
                for l in locs {
                    if let Some(why) = headers::unsafe_location(&l) {
                        out.push(finding(path, FindingKind::ExternalData, why));
                    }
                }
            }
            Err(e) => out.push(finding(
                path,
                FindingKind::Unreadable,
                format!("not a parseable ONNX protobuf: {e}"),
            )),
        }
    }
    (out, whole.then_some(data))
}

/// Checks every file under `dir` (symlinks must stay inside `root`; they are not followed).
pub fn scan_tree(dir: &Path, root: &Path) -> Vec<Finding> {
    scan_tree_keeping(dir, root, None).0
}

/// [`scan_tree`], also giving the bytes of `keep` (the model file the loader will read) when
/// the checks read it whole, so the loader need not read it again.
pub fn scan_tree_keeping(
    dir: &Path,
    root: &Path,
    keep: Option<&Path>,
) -> (Vec<Finding>, Option<FileBytes>) {
    let mut out = Vec::new();
    let root_real = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    let mut kept = None;
    walk(dir, &root_real, 0, &mut out, (keep, &mut kept));
    (out, kept)
}

type Keep<'a, 'b> = (Option<&'a Path>, &'b mut Option<FileBytes>);

fn walk(path: &Path, root: &Path, depth: usize, out: &mut Vec<Finding>, keep: Keep<'_, '_>) {
    if depth > 32 {
        out.push(finding(
            path,
            FindingKind::Unreadable,
            "folders nested more than 32 deep; not scanned",
        ));
        return;
    }
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) => {
            out.push(finding(
                path,
                FindingKind::Unreadable,
                format!("cannot read: {e}"),
            ));
            return;
        }
    };
    if meta.file_type().is_symlink() {
        match std::fs::canonicalize(path) {
            Ok(target) if target.starts_with(root) => {}
            Ok(target) => out.push(finding(
                path,
                FindingKind::SymlinkEscape,
                format!(
                    "symlink points outside the repository, to '{}'",
                    target.display()
                ),
            )),
            Err(e) => out.push(finding(
                path,
                FindingKind::SymlinkEscape,
                format!("dangling symlink: {e}"),
            )),
        }
        return;
    }
    if meta.is_dir() {
        let Ok(rd) = std::fs::read_dir(path) else {
            out.push(finding(path, FindingKind::Unreadable, "cannot list folder"));
            return;
        };
        let mut entries: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        entries.sort();
        let (want, kept) = keep;
        for e in entries {
            walk(&e, root, depth + 1, out, (want, &mut *kept));
        }
    } else if meta.is_file() {
        let (findings, data) = scan_file_keeping(path);
        out.extend(findings);
        let (want, kept) = keep;
        if want == Some(path) {
            *kept = data.map(Arc::from);
        }
    }
}

/// sha256 of bytes, lowercase hex.
fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// sha256 of a file, lowercase hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Checks the digests pinned in a model's config parameters (`sha256:<relative path>`), only
/// those under `within` (a version folder) when given.
pub fn check_pins<'a>(
    model_dir: &Path,
    params: impl IntoIterator<Item = (&'a String, &'a String)>,
    within: Option<&Path>,
) -> Vec<Finding> {
    check_pins_known(model_dir, params, within, None)
}

/// [`check_pins`], hashing `known`'s bytes (a file the checks already read) instead of
/// reading that file again.
pub fn check_pins_known<'a>(
    model_dir: &Path,
    params: impl IntoIterator<Item = (&'a String, &'a String)>,
    within: Option<&Path>,
    known: Option<(&Path, &[u8])>,
) -> Vec<Finding> {
    let mut out = Vec::new();
    for (key, want) in params {
        let Some(rel) = key.strip_prefix("sha256:") else {
            continue;
        };
        let file = model_dir.join(rel);
        if headers::unsafe_location(rel).is_some() {
            out.push(finding(
                &file,
                FindingKind::Digest,
                format!("pinned path '{rel}' must stay inside the model folder"),
            ));
            continue;
        }
        if within.is_some_and(|w| !file.starts_with(w)) {
            continue;
        }
        let digest = match known {
            Some((path, bytes)) if path == file => Ok(sha256_hex(bytes)),
            _ => sha256_file(&file),
        };
        match digest {
            Ok(got) if got.eq_ignore_ascii_case(want.trim()) => {}
            Ok(got) => out.push(finding(
                &file,
                FindingKind::Digest,
                format!("sha256 is {got} but the config pins {}", want.trim()),
            )),
            Err(e) => out.push(finding(
                &file,
                FindingKind::Digest,
                format!("pinned file cannot be read: {e}"),
            )),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_scan_finds_pickles_and_escaping_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        std::fs::create_dir_all(repo.join("m/1")).unwrap();
        std::fs::write(
            repo.join("m/1/weights.dat"),
            b"cos\nsystem\n(S'echo hi'\ntR.",
        )
        .unwrap();
        std::fs::write(dir.path().join("outside.onnx"), b"x").unwrap();
        std::os::unix::fs::symlink(dir.path().join("outside.onnx"), repo.join("m/1/model.onnx"))
            .unwrap();
        std::fs::write(repo.join("m/1/ok.txt"), b"labels\n").unwrap();
        let f = scan_tree(&repo, &repo);
        let kinds: Vec<_> = f.iter().map(|f| f.kind).collect();
        assert_eq!(
            kinds,
            vec![FindingKind::SymlinkEscape, FindingKind::Pickle],
            "{f:?}"
        );
        assert!(
            f[1].message.contains("os.system") && f[1].message.contains("SafeTensors"),
            "{}",
            f[1]
        );
    }

    #[test]
    fn pinned_digest_mismatch_is_found() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("1")).unwrap();
        std::fs::write(dir.path().join("1/model.onnx"), b"abc").unwrap();
        let good = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".to_string();
        let bad = "00".repeat(32);
        let key = "sha256:1/model.onnx".to_string();
        assert!(check_pins(dir.path(), [(&key, &good)], None).is_empty());
        let f = check_pins(dir.path(), [(&key, &bad)], None);
        assert_eq!(f[0].kind, FindingKind::Digest);
        let esc = "sha256:../x".to_string();
        assert!(
            check_pins(dir.path(), [(&esc, &good)], None)[0]
                .message
                .contains("inside the model folder")
        );
    }

    #[test]
    fn the_model_files_bytes_are_kept_for_the_loader_and_pins_use_them() {
        let dir = tempfile::tempdir().unwrap();
        let v = dir.path().join("m/1");
        std::fs::create_dir_all(&v).unwrap();
        let body = br#"{"learner": {}}"#;
        std::fs::write(v.join("model.json"), body).unwrap();
        std::fs::write(v.join("labels.txt"), b"a\nb\n").unwrap();
        let keep = v.join("model.json");
        let (f, kept) = scan_tree_keeping(&v, dir.path(), Some(&keep));
        assert!(f.is_empty(), "{f:?}");
        assert_eq!(kept.as_deref(), Some(&body[..]));
        let (_, none) = scan_tree_keeping(&v, dir.path(), None);
        assert!(none.is_none());
        // The pin is checked against the kept bytes: a pin of other content fails although
        // the file on disk is what it says (the loader parses the bytes that were checked).
        let key = "sha256:1/model.json".to_string();
        let good = sha256_hex(body);
        let params = [(key.clone(), good.clone())];
        let pins = |bytes: &[u8]| {
            check_pins_known(
                &dir.path().join("m"),
                params.iter().map(|(k, v)| (k, v)),
                Some(&v),
                Some((&keep, bytes)),
            )
        };
        assert!(pins(body).is_empty());
        assert_eq!(pins(b"other")[0].kind, FindingKind::Digest);
    }

    fn gguf_file(data: usize, tail: &[u8]) -> Vec<u8> {
        let mut f = b"GGUF".to_vec();
        f.extend_from_slice(&3u32.to_le_bytes());
        f.extend_from_slice(&1u64.to_le_bytes()); // tensors
        f.extend_from_slice(&0u64.to_le_bytes()); // metadata entries
        f.extend_from_slice(&1u64.to_le_bytes());
        f.push(b'w');
        f.extend_from_slice(&1u32.to_le_bytes());
        f.extend_from_slice(&((data / 4) as u64).to_le_bytes());
        f.extend_from_slice(&0u32.to_le_bytes()); // F32
        f.extend_from_slice(&0u64.to_le_bytes());
        while !f.len().is_multiple_of(32) {
            f.push(0);
        }
        f.extend(std::iter::repeat_n(0u8, data));
        f.extend_from_slice(tail);
        f
    }

    #[test]
    fn a_gguf_is_checked_by_its_header_without_reading_its_tensors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.gguf");
        std::fs::write(&path, gguf_file(1 << 20, b"")).unwrap();
        let (f, kept) = scan_tree_keeping(dir.path(), dir.path(), Some(&path));
        assert!(f.is_empty(), "{f:?}");
        assert!(kept.is_none(), "a GGUF is not read whole");
        // A header that claims more than the file holds is still found.
        let mut bad = gguf_file(1 << 20, b"");
        bad.truncate(200_000);
        std::fs::write(&path, &bad).unwrap();
        let f = scan_file(&path);
        assert_eq!(f[0].kind, FindingKind::Gguf, "{f:?}");
        // A zip appended to a GGUF is read whole, so what it hides is inspected.
        std::fs::write(&path, gguf_file(1 << 20, b"PK\x05\x06")).unwrap();
        let (_, kept) = scan_tree_keeping(dir.path(), dir.path(), Some(&path));
        assert!(kept.is_some());
    }
}
