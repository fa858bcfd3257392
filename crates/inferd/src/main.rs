//! The `inferd` binary: `inferd serve` runs the server; `inferd repo check` validates a model
//! repository. Flags use Triton's names so deployment scripts carry over; every `serve` flag can
//! also be set through an `INFERD_*` environment variable or a TOML file (`--config`).

use std::ffi::OsString;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use inferd_core::{Backend, ControlMode, Engine, EngineOptions};
use inferd_server::{BoundServer, ServerOptions};

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "inferd",
    version,
    about = "inferd: a model server speaking KServe v2 (HTTP and gRPC)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve a model repository over HTTP and gRPC.
    Serve(ServeArgs),
    /// Scan model files, folders or repositories for unsafe artifacts (pickles, escaping
    /// symlinks or ONNX external data, malformed SafeTensors/GGUF headers, sha256 pins).
    /// Exit code: 0 clean, 1 findings, 2 usage or I/O error.
    Scan {
        /// Files or folders to scan.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
    },
    /// Describe a weight file (GGUF): metadata, tensor table, and optionally some tensors'
    /// dequantized values, as JSON.
    Inspect {
        /// The file.
        file: PathBuf,
        /// Tensors to dequantize and summarise (repeatable).
        #[arg(long)]
        tensor: Vec<String>,
    },
    /// Model repository tools.
    Repo {
        #[command(subcommand)]
        command: RepoCommand,
    },
}

#[derive(Subcommand, Debug)]
enum RepoCommand {
    /// Validate a repository: configs, version folders, and a full load of every version.
    /// Exits non-zero when anything is wrong.
    Check {
        /// The repository folder.
        dir: PathBuf,
        /// Which backend loads ONNX models (as `serve --onnx-backend`).
        #[arg(long, env = "INFERD_ONNX_BACKEND", value_enum, default_value_t = OnnxBackend::Auto)]
        onnx_backend: OnnxBackend,
    },
}

/// Which backend runs ONNX models.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum OnnxBackend {
    /// tract; with ONNX Runtime built in, also ONNX Runtime for what tract refuses, and for
    /// models whose answers on the warm-up rows differ between the two (checked at load).
    Auto,
    /// tract (pure Rust) for every ONNX model.
    Tract,
    /// ONNX Runtime for every ONNX model (needs the onnxruntime feature).
    Onnxruntime,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    /// One line per finding.
    Human,
    /// A JSON document.
    Json,
}

/// Server settings: one schema for flags, environment and the `--config` file.
#[derive(Args, Debug, Clone)]
struct ServeArgs {
    /// TOML file of these settings, keyed by flag name without the dashes (`http-port = 8000`,
    /// `load-model = ["a", "b"]`). A flag or INFERD_* variable overrides the file.
    #[arg(long, env = "INFERD_CONFIG")]
    config: Option<PathBuf>,
    /// Model repository folder (default: the bundled examples).
    #[arg(long, env = "INFERD_MODEL_REPOSITORY")]
    model_repository: Option<PathBuf>,
    /// HTTP port (0 picks a free one).
    #[arg(long, env = "INFERD_HTTP_PORT", default_value_t = 8000)]
    http_port: u16,
    /// gRPC port (0 picks a free one).
    #[arg(long, env = "INFERD_GRPC_PORT", default_value_t = 8001)]
    grpc_port: u16,
    /// HTTP listen address.
    #[arg(long, env = "INFERD_HTTP_ADDRESS", default_value = "0.0.0.0")]
    http_address: IpAddr,
    /// gRPC listen address.
    #[arg(long, env = "INFERD_GRPC_ADDRESS", default_value = "0.0.0.0")]
    grpc_address: IpAddr,
    /// none: load everything at start; poll: also follow repository changes; explicit: load
    /// only --load-model models and what the repository API asks for.
    #[arg(long, env = "INFERD_MODEL_CONTROL_MODE", default_value = "none")]
    model_control_mode: ControlMode,
    /// Seconds between repository scans in poll mode (fractions allowed).
    #[arg(long, env = "INFERD_REPOSITORY_POLL_SECS", default_value_t = 15.0)]
    repository_poll_secs: f64,
    /// Model to load at start in explicit mode (repeatable; `*` loads all).
    #[arg(long = "load-model", env = "INFERD_LOAD_MODEL", value_delimiter = ',')]
    load_model: Vec<String>,
    /// Ready only when every model that should be loaded is ready.
    #[arg(long, env = "INFERD_STRICT_READINESS", default_value_t = true, action = ArgAction::Set)]
    strict_readiness: bool,
    /// Largest request body (HTTP) or message (gRPC) in bytes.
    #[arg(long, env = "INFERD_HTTP_MAX_BODY_BYTES", default_value_t = 64 * 1024 * 1024)]
    http_max_body_bytes: usize,
    /// Inference requests in flight at once over HTTP and gRPC together; past it requests are
    /// answered 503 / RESOURCE_EXHAUSTED before their bodies are read.
    #[arg(long, env = "INFERD_MAX_INFLIGHT_REQUESTS", default_value_t = 1024)]
    max_inflight_requests: usize,
    /// Bound of each model version's request queue (per priority level) when its config sets
    /// no max_queue_size.
    #[arg(long, env = "INFERD_MAX_QUEUE_SIZE", default_value_t = 1024)]
    max_queue_size: usize,
    /// Model executions that may run at once across all models and instances, so instances
    /// share the cores instead of oversubscribing them (0: one per core).
    #[arg(long, env = "INFERD_COMPUTE_THREADS", default_value_t = 0)]
    compute_threads: usize,
    /// Microseconds an idle executor polls its queue before sleeping: lower latency at low load
    /// for some CPU (0 turns it off).
    #[arg(long, env = "INFERD_EXECUTOR_SPIN_US", default_value_t = 100)]
    executor_spin_us: u64,
    /// Microseconds one network worker keeps polling after an HTTP request instead of parking:
    /// a parked thread takes tens of microseconds to wake on a VM (0 turns it off).
    #[arg(long, env = "INFERD_NETWORK_SPIN_US", default_value_t = 100)]
    network_spin_us: u64,
    /// Threads that run HTTP and gRPC (0: half the cores, at least one). Model executors have
    /// threads of their own, so network threads beyond the cores they leave free only add
    /// wake-ups (on 2 cores, 2 network threads served ~35% fewer batch-64 rows/s than 1).
    #[arg(long, env = "INFERD_NETWORK_THREADS", default_value_t = 0)]
    network_threads: usize,
    /// Which backend runs ONNX models; a model's config parameter `onnx_backend` overrides it.
    #[arg(long, env = "INFERD_ONNX_BACKEND", value_enum, default_value_t = OnnxBackend::Auto)]
    onnx_backend: OnnxBackend,
    /// Where each setting not left at its default came from, by flag name (for errors).
    #[arg(skip)]
    origins: std::collections::BTreeMap<String, String>,
}

impl ServeArgs {
    /// How to name setting `flag` in an error: `--flag`, its environment variable, or the
    /// config file it came from.
    fn origin(&self, flag: &str) -> String {
        self.origins
            .get(flag)
            .cloned()
            .unwrap_or_else(|| format!("--{flag}"))
    }
}

/// The network thread count for `--network-threads n`: `n`, or for 0 half the cores (at least
/// one).
fn network_threads(n: usize, cores: usize) -> usize {
    match n {
        0 => (cores / 2).max(1),
        n => n,
    }
}

/// Parses the command line; for `serve --config FILE`, the file's settings join it as flags,
/// below the command line and the environment. Clap errors and `--help` exit here, as usual.
fn parse_cli(argv: Vec<OsString>) -> Result<Cli> {
    let matches = Cli::command().get_matches_from(&argv);
    let Some(("serve", sub)) = matches.subcommand() else {
        return Ok(Cli::from_arg_matches(&matches)?);
    };
    let serve = Cli::command()
        .find_subcommand("serve")
        .cloned()
        .context("the serve command is missing")?;
    let path = sub.get_one::<PathBuf>("config");
    let from_file = match path {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("config file {}: cannot read it", path.display()))?;
            config_file_settings(&serve, sub, path, &text)?
        }
        None => Vec::new(),
    };
    let mut origins = std::collections::BTreeMap::new();
    for arg in serve.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        let origin = match sub.value_source(arg.get_id().as_str()) {
            Some(ValueSource::EnvVariable) => arg
                .get_env()
                .map_or(format!("--{long}"), |v| v.to_string_lossy().into_owned()),
            Some(ValueSource::CommandLine) => format!("--{long}"),
            _ => continue,
        };
        origins.insert(long.to_string(), origin);
    }
    let mut extra: Vec<OsString> = Vec::new();
    if let Some(path) = path {
        for (key, values) in from_file {
            origins.insert(
                key.clone(),
                format!("'{key}' in config file {}", path.display()),
            );
            extra.extend(values.iter().map(|v| format!("--{key}={v}").into()));
        }
    }
    let mut cli = if extra.is_empty() {
        Cli::from_arg_matches(&matches)?
    } else {
        // No options come before the subcommand, so argv[1] is `serve`.
        let mut full: Vec<OsString> = argv[..2].to_vec();
        full.extend(extra);
        full.extend(argv[2..].iter().cloned());
        Cli::from_arg_matches(&Cli::command().get_matches_from(full))?
    };
    if let Command::Serve(a) = &mut cli.command {
        a.origins = origins;
    }
    Ok(cli)
}

/// The settings a config file contributes, as (flag name, values): every setting the command
/// line or environment does not already give. Each value is checked with its flag's own parser
/// first, so an error names the file, the setting and the reason.
fn config_file_settings(
    serve: &clap::Command,
    given: &ArgMatches,
    path: &std::path::Path,
    text: &str,
) -> Result<Vec<(String, Vec<String>)>> {
    let file = path.display();
    let table: toml::Table = text
        .parse()
        .map_err(|e| anyhow!("config file {file}: not valid TOML: {e}"))?;
    let settable = || {
        serve
            .get_arguments()
            .filter(|a| a.get_long().is_some_and(|l| l != "config" && l != "help"))
    };
    let mut out = Vec::new();
    for (key, value) in &table {
        let Some(arg) = settable().find(|a| a.get_long() == Some(key.as_str())) else {
            let known: Vec<&str> = settable().filter_map(|a| a.get_long()).collect();
            bail!(
                "config file {file}: unknown setting '{key}' (settings are the serve flags \
                 without the dashes: {})",
                known.join(", ")
            );
        };
        let items: Vec<&toml::Value> = match value {
            toml::Value::Array(items) if matches!(arg.get_action(), ArgAction::Append) => {
                items.iter().collect()
            }
            v => vec![v],
        };
        let values = items
            .into_iter()
            .map(|v| config_scalar(v).map_err(|why| anyhow!("config file {file}: '{key}': {why}")))
            .collect::<Result<Vec<_>>>()?;
        for v in &values {
            // The flag's own parser, through clap (an invalid environment variable would
            // already have stopped the first parse, so an error here is this value's).
            let alone = [OsString::from("serve"), format!("--{key}={v}").into()];
            if let Err(e) = serve.clone().try_get_matches_from(alone) {
                bail!("config file {file}: '{key}' = {v:?}: {}", clap_reason(&e));
            }
        }
        let overridden = matches!(
            given.value_source(arg.get_id().as_str()),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        );
        if !overridden {
            out.push((key.clone(), values));
        }
    }
    Ok(out)
}

/// A TOML value as the flag text it stands for.
fn config_scalar(v: &toml::Value) -> std::result::Result<String, String> {
    match v {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        other => Err(format!(
            "expects a single string, number or boolean, got {}",
            match other {
                toml::Value::Array(_) => "an array",
                toml::Value::Table(_) => "a table",
                _ => "a date-time",
            }
        )),
    }
}

/// Why clap refused a value: the value parser's own error, or the values it accepts (the caller
/// names the file and setting instead of clap's flag and usage).
fn clap_reason(e: &clap::Error) -> String {
    if let Some(why) = std::error::Error::source(e) {
        return why.to_string();
    }
    match e.get(clap::error::ContextKind::ValidValue) {
        Some(valid) => format!("invalid value (possible values: {valid})"),
        None => e.kind().to_string(),
    }
}

/// The backends of this build; `origin` names where `onnx` came from, for its error.
fn backends(onnx: OnnxBackend, origin: &str) -> Result<Vec<Arc<dyn Backend>>> {
    #[cfg(feature = "onnxruntime")]
    let choice = match onnx {
        OnnxBackend::Auto => inferd_ort::OnnxChoice::Auto,
        OnnxBackend::Tract => inferd_ort::OnnxChoice::Tract,
        OnnxBackend::Onnxruntime => inferd_ort::OnnxChoice::OnnxRuntime,
    };
    #[cfg(not(feature = "onnxruntime"))]
    if onnx == OnnxBackend::Onnxruntime {
        bail!(
            "{origin}: onnxruntime is not built in (build inferd with `--features onnxruntime`, \
             or use auto or tract)"
        );
    }
    let _ = origin;
    // Order matters: the first backend that accepts a config's platform/backend serves it.
    Ok(vec![
        #[cfg(feature = "onnxruntime")]
        Arc::new(inferd_ort::OnnxSelect::new(choice)),
        #[cfg(feature = "onnx")]
        Arc::new(inferd_onnx::OnnxBackend),
        #[cfg(feature = "trees")]
        Arc::new(inferd_trees::TreesBackend),
        #[cfg(feature = "candle")]
        Arc::new(inferd_candle::CandleBackend),
    ])
}

/// The bundled example repository: `examples/models` under the working directory, else the one
/// in the source tree this binary was built from.
fn default_repository() -> PathBuf {
    let local = PathBuf::from("examples/models");
    if local.is_dir() {
        return local;
    }
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/models"
    ))
}

fn engine_options(a: &ServeArgs, repo: PathBuf) -> Result<EngineOptions> {
    if !(a.repository_poll_secs.is_finite() && a.repository_poll_secs > 0.0) {
        bail!(
            "{}: must be a positive number of seconds, got {}",
            a.origin("repository-poll-secs"),
            a.repository_poll_secs
        );
    }
    for (flag, v) in [
        ("http-max-body-bytes", a.http_max_body_bytes),
        ("max-inflight-requests", a.max_inflight_requests),
        ("max-queue-size", a.max_queue_size),
    ] {
        if v == 0 {
            bail!("{}: must be positive", a.origin(flag));
        }
    }
    if !a.load_model.is_empty() && a.model_control_mode != ControlMode::Explicit {
        let mode = match a.origins.get("model-control-mode") {
            Some(o) => format!("{}, from {o}", a.model_control_mode),
            None => format!("{}, the default", a.model_control_mode),
        };
        bail!(
            "{}: only valid with model-control-mode explicit (it is {mode})",
            a.origin("load-model"),
        );
    }
    Ok(EngineOptions {
        repository: repo,
        control_mode: a.model_control_mode,
        poll_interval: Duration::from_secs_f64(a.repository_poll_secs),
        startup_models: a.load_model.clone(),
        strict_readiness: a.strict_readiness,
        queue_capacity: a.max_queue_size,
        compute_threads: a.compute_threads,
        executor_spin: Duration::from_micros(a.executor_spin_us),
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down: draining in-flight requests");
}

async fn serve(a: ServeArgs) -> Result<()> {
    let repo = a
        .model_repository
        .clone()
        .unwrap_or_else(default_repository);
    if !repo.is_dir() {
        bail!(
            "{}: '{}' is not a folder",
            a.origin("model-repository"),
            repo.display()
        );
    }
    let opts = engine_options(&a, repo.clone())?;
    let engine = Engine::new(opts, backends(a.onnx_backend, &a.origin("onnx-backend"))?);
    let server = BoundServer::bind(
        engine.clone(),
        ServerOptions {
            http_addr: SocketAddr::new(a.http_address, a.http_port),
            grpc_addr: SocketAddr::new(a.grpc_address, a.grpc_port),
            max_body_bytes: a.http_max_body_bytes,
            max_inflight: a.max_inflight_requests,
            spin: Duration::from_micros(a.network_spin_us),
        },
    )
    .await
    .context("cannot bind the listeners")?;
    let http = server.http_addr()?;
    let grpc = server.grpc_addr()?;
    // For scripts and tests that bind port 0. A closed stdout must not stop the server.
    let announce = {
        let mut out = std::io::stdout().lock();
        writeln!(out, "HTTP listening on {http}")
            .and_then(|_| writeln!(out, "gRPC listening on {grpc}"))
            .and_then(|_| out.flush())
    };
    if let Err(e) = announce {
        tracing::warn!("cannot print the listening addresses on stdout: {e}");
    }
    tracing::info!(%http, %grpc, "listening");
    if let Some(file) = &a.config {
        tracing::info!(config = %file.display(), "settings read from the config file");
    }
    tracing::info!(
        repository = %repo.display(),
        mode = %a.model_control_mode,
        network_threads = tokio::runtime::Handle::current().metrics().num_workers(),
        "serving"
    );
    // Health and metadata answer while models load; readiness turns true after startup loads.
    let serving = tokio::spawn(server.serve(shutdown_signal()));
    engine.start().await.context("startup failed")?;
    tracing::info!(ready = engine.is_ready(), "startup loading finished");
    serving.await.context("server task failed")??;
    Ok(())
}

fn repo_check(dir: PathBuf, onnx: OnnxBackend) -> Result<bool> {
    if !dir.is_dir() {
        bail!("'{}' is not a folder", dir.display());
    }
    let engine = Engine::new(
        EngineOptions {
            repository: dir.clone(),
            ..Default::default()
        },
        backends(onnx, "--onnx-backend")?,
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
fn inspect(file: &std::path::Path, tensors: &[String]) -> Result<()> {
    let g = inferd_gguf::GgufFile::open(file)?;
    let mut dequantized = serde_json::Map::new();
    for name in tensors {
        let v = g.dequantize(name)?;
        let sum: f64 = v.iter().map(|&x| x as f64).sum();
        dequantized.insert(
            name.clone(),
            serde_json::json!({ "len": v.len(), "head": &v[..v.len().min(16)], "sum": sum }),
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
fn scan(paths: &[PathBuf], format: Format) -> u8 {
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

fn main() -> std::process::ExitCode {
    // Before any thread exists (see the function's contract).
    #[cfg(feature = "candle")]
    inferd_candle::confine_candle_threads();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("INFERD_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal: log files and collectors get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = match parse_cli(std::env::args_os().collect()) {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("inferd: error: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Serve(a) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(network_threads(
                a.network_threads,
                std::thread::available_parallelism().map_or(1, |n| n.get()),
            ))
            .enable_all()
            .build()
            .context("cannot start the async runtime")
            .and_then(|rt| rt.block_on(serve(a))),
        Command::Inspect { file, tensor } => inspect(&file, &tensor),
        Command::Scan { paths, format } => {
            return std::process::ExitCode::from(scan(&paths, format));
        }
        Command::Repo {
            command: RepoCommand::Check { dir, onnx_backend },
        } => match repo_check(dir, onnx_backend) {
            Ok(true) => return std::process::ExitCode::SUCCESS,
            Ok(false) => return std::process::ExitCode::from(1),
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("inferd: error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::network_threads;

    #[test]
    fn network_threads_default_to_half_the_cores_and_at_least_one() {
        assert_eq!(network_threads(0, 1), 1);
        assert_eq!(network_threads(0, 2), 1);
        assert_eq!(network_threads(0, 3), 1);
        assert_eq!(network_threads(0, 16), 8);
        assert_eq!(network_threads(3, 2), 3);
    }
}
