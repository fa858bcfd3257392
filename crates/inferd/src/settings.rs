//! `inferd serve`'s settings: one typed schema for flags, `INFERD_*` environment variables and
//! the `--config` TOML file, checked into the engine's and the front-ends' options with errors
//! that name where a bad value came from.

use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Args, CommandFactory, FromArgMatches};
use inferd_core::{ControlMode, EngineOptions};
use inferd_server::ServerOptions;
use inferd_server::listen::HttpLimits;

use crate::{Cli, Command};

/// Which backend runs ONNX models.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OnnxBackend {
    /// tract; with ONNX Runtime built in, also ONNX Runtime for what tract refuses, and for
    /// models whose answers on the warm-up rows differ between the two (checked at load).
    Auto,
    /// tract (pure Rust) for every ONNX model.
    Tract,
    /// ONNX Runtime for every ONNX model (needs the onnxruntime feature).
    Onnxruntime,
}

/// How log lines are written.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (fields, span with the request id), for log collectors.
    Json,
}

/// How LLM versions store their KV cache unless their config says (`kv_cache_dtype`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KvCacheDtype {
    /// 32-bit floats, exact.
    F32,
    /// 8-bit integers in groups of 32 with a scale each: 3.5x the tokens in the same memory.
    Q8,
}

/// Server settings: one schema for flags, environment and the `--config` file.
#[derive(Args, Debug, Clone)]
pub(crate) struct ServeArgs {
    /// TOML file of these settings, keyed by flag name without the dashes (`http-port = 8000`,
    /// `load-model = ["a", "b"]`). A flag or INFERD_* variable overrides the file.
    #[arg(long, env = "INFERD_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// Model repository: a folder (default: examples/models under the working directory) or
    /// object storage (`s3://bucket/prefix`, `gs://...`, `az://...`; credentials from the
    /// standard environment, e.g. AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL).
    #[arg(long, env = "INFERD_MODEL_REPOSITORY")]
    pub(crate) model_repository: Option<PathBuf>,
    /// Local folder that holds the copy of an object-storage repository (default: a folder
    /// named after the URL under the system's temporary folder). Kept across restarts, so an
    /// unchanged version is not downloaded again.
    #[arg(long, env = "INFERD_MODEL_CACHE_DIR")]
    pub(crate) model_cache_dir: Option<PathBuf>,
    /// Traffic routes (TOML, `[routes.NAME]` tables: split, ab, shadow, canary, bluegreen).
    /// Default: `routes.toml` at the root of a local repository, when there is one.
    #[arg(long, env = "INFERD_ROUTES_FILE")]
    pub(crate) routes_file: Option<PathBuf>,
    /// Where routes and their live state (canary progress, blue-green side) are kept across
    /// restarts, with the audit log of every change. Without it they live in memory only.
    #[arg(long, env = "INFERD_STATE_DIR")]
    pub(crate) state_dir: Option<PathBuf>,
    /// Share routes and their state with the other replicas through etcd:
    /// `etcd://host:port[,host:port]/prefix` (replicas of one deployment use one prefix). A
    /// change through any replica reaches every replica at once, and one replica at a time
    /// (the lease holder) makes the canary decisions. Needs a build with the `etcd` feature.
    #[arg(long, env = "INFERD_STATE_STORE")]
    pub(crate) state_store: Option<String>,
    /// Bearer token(s) for every mutating call (routes, actions, repository load/unload):
    /// `NAME:SECRET` (NAME goes to the audit log) or `SECRET`; repeat the flag or separate
    /// with commas. Without one, those calls are open to anyone (logged as a warning).
    #[arg(long, env = "INFERD_ADMIN_TOKEN", value_delimiter = ',')]
    pub(crate) admin_token: Vec<String>,
    /// Bearer token(s) for `POST /v2/feedback` only (admin tokens are accepted too), so an
    /// application can report outcomes without admin rights.
    #[arg(long, env = "INFERD_FEEDBACK_TOKEN", value_delimiter = ',')]
    pub(crate) feedback_token: Vec<String>,
    /// HTTP port (0 picks a free one).
    #[arg(long, env = "INFERD_HTTP_PORT", default_value_t = 8000)]
    pub(crate) http_port: u16,
    /// gRPC port (0 picks a free one).
    #[arg(long, env = "INFERD_GRPC_PORT", default_value_t = 8001)]
    pub(crate) grpc_port: u16,
    /// Port of the Prometheus metrics listener (0 picks a free one); the same page is also at
    /// /metrics on the HTTP port.
    #[arg(long, env = "INFERD_METRICS_PORT", default_value_t = 8002)]
    pub(crate) metrics_port: u16,
    /// Metrics listen address.
    #[arg(long, env = "INFERD_METRICS_ADDRESS", default_value = "0.0.0.0")]
    pub(crate) metrics_address: IpAddr,
    /// Serve the admin API (routes, actions, reports, repository load/unload) on a listener of
    /// its own on this port (0 picks a free one) instead of the HTTP port.
    #[arg(long, env = "INFERD_ADMIN_PORT")]
    pub(crate) admin_port: Option<u16>,
    /// Serve TF Serving's REST API (`/v1/models/...`, `:predict`) for every model on a listener
    /// of its own on this port (TF Serving's default is 8501; 0 picks a free one), on the HTTP
    /// address. Off unless given.
    #[arg(long, env = "INFERD_TFSERVING_REST_PORT")]
    pub(crate) tfserving_rest_port: Option<u16>,
    /// Serve TF Serving's gRPC API (`tensorflow.serving.PredictionService`, `ModelService`)
    /// for every model on a listener of its own on this port (TF Serving's default is 8500; 0
    /// picks a free one), on the gRPC address. Off unless given.
    #[arg(long, env = "INFERD_TFSERVING_GRPC_PORT")]
    pub(crate) tfserving_grpc_port: Option<u16>,
    /// The admin listener's address (with --admin-port; default 127.0.0.1, reachable only
    /// from the pod or host unless widened).
    #[arg(long, env = "INFERD_ADMIN_ADDRESS")]
    pub(crate) admin_address: Option<IpAddr>,
    /// Serve metrics on their own listener (--metrics-port); false keeps them on the HTTP port
    /// only.
    #[arg(long, env = "INFERD_ALLOW_METRICS", default_value_t = true, action = ArgAction::Set)]
    pub(crate) allow_metrics: bool,
    /// HTTP listen address.
    #[arg(long, env = "INFERD_HTTP_ADDRESS", default_value = "0.0.0.0")]
    pub(crate) http_address: IpAddr,
    /// gRPC listen address.
    #[arg(long, env = "INFERD_GRPC_ADDRESS", default_value = "0.0.0.0")]
    pub(crate) grpc_address: IpAddr,
    /// none: load everything at start; poll: also follow repository changes; explicit: load
    /// only --load-model models and what the repository API asks for.
    #[arg(long, env = "INFERD_MODEL_CONTROL_MODE", default_value = "none")]
    pub(crate) model_control_mode: ControlMode,
    /// Seconds between repository scans in poll mode (fractions allowed).
    #[arg(long, env = "INFERD_REPOSITORY_POLL_SECS", default_value_t = 15.0)]
    pub(crate) repository_poll_secs: f64,
    /// Model to load at start in explicit mode (repeatable; `*` loads all).
    #[arg(long = "load-model", env = "INFERD_LOAD_MODEL", value_delimiter = ',')]
    pub(crate) load_model: Vec<String>,
    /// Ready only when every model that should be loaded is ready.
    #[arg(long, env = "INFERD_STRICT_READINESS", default_value_t = true, action = ArgAction::Set)]
    pub(crate) strict_readiness: bool,
    /// Largest request body (HTTP) or message (gRPC) in bytes.
    #[arg(long, env = "INFERD_HTTP_MAX_BODY_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub(crate) http_max_body_bytes: usize,
    /// Largest inference request JSON, and raw binary input, in bytes (Triton's
    /// `--http-max-input-size`); past it a 400 says so. 0: the body limit.
    #[arg(long, env = "INFERD_HTTP_MAX_INPUT_SIZE", default_value_t = 0)]
    pub(crate) http_max_input_size: usize,
    /// Inference requests in flight at once over HTTP and gRPC together; past it requests are
    /// answered 503 / RESOURCE_EXHAUSTED (once their bodies are in: a client still sending holds
    /// a connection, not a slot).
    #[arg(long, env = "INFERD_MAX_INFLIGHT_REQUESTS", default_value_t = 1024)]
    pub(crate) max_inflight_requests: usize,
    /// Bound of each model version's request queue (per priority level) when its config sets
    /// no max_queue_size.
    #[arg(long, env = "INFERD_MAX_QUEUE_SIZE", default_value_t = 1024)]
    pub(crate) max_queue_size: usize,
    /// Model executions that may run at once across all models and instances, so instances
    /// share the cores instead of oversubscribing them (0: one per core).
    #[arg(long, env = "INFERD_COMPUTE_THREADS", default_value_t = 0)]
    pub(crate) compute_threads: usize,
    /// Model versions that load at once, at start and on reloads (0: one per core): more
    /// overlap reading files with building models, fewer bound the memory loads take together.
    #[arg(long, env = "INFERD_MODEL_LOAD_THREADS", default_value_t = 0)]
    pub(crate) model_load_threads: usize,
    /// Seconds a request for a model that is still loading (a replica just scaled from zero,
    /// a version coming up) waits for it before failing; 0 fails at once with 503.
    #[arg(long, env = "INFERD_COLD_START_WAIT_SECS", default_value_t = 0.0)]
    pub(crate) cold_start_wait_secs: f64,
    /// Requests that may wait for a cold start at once; more get 503 at once.
    #[arg(long, env = "INFERD_COLD_START_QUEUE", default_value_t = 1024)]
    pub(crate) cold_start_queue: usize,
    /// Share of each model version's requests that drift monitoring samples (0 to 1; 0 turns
    /// it off); a model's `parameters { key: "drift_sample_rate" ... }` wins.
    #[arg(long, env = "INFERD_DRIFT_SAMPLE_RATE", default_value_t = 0.05)]
    pub(crate) drift_sample_rate: f64,
    /// Live sequences each stateful model (`sequence_batching`) may hold; a new sequence past it
    /// gets 503 until one ends or idles out (a model's `oldest.max_candidate_sequences` wins).
    #[arg(long, env = "INFERD_MAX_SEQUENCES", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) max_sequences: u32,
    /// Folder where files given with a load request (`file:<version>/<name>`) are staged; a
    /// private folder under the system's temporary folder when unset. Never the repository.
    #[arg(long, env = "INFERD_STAGING_DIR")]
    pub(crate) staging_dir: Option<PathBuf>,
    /// The response cache, as Triton writes it: `local,size=BYTES` (shared by the models whose
    /// config sets `response_cache { enable: true }`).
    #[arg(long, env = "INFERD_CACHE_CONFIG")]
    pub(crate) cache_config: Option<String>,
    /// Microseconds an idle executor polls its queue before sleeping: lower latency at low load
    /// for some CPU (0 turns it off).
    #[arg(long, env = "INFERD_EXECUTOR_SPIN_US", default_value_t = 100)]
    pub(crate) executor_spin_us: u64,
    /// Microseconds one network worker keeps polling after an HTTP request instead of parking:
    /// a parked thread takes tens of microseconds to wake on a VM (0 turns it off).
    #[arg(long, env = "INFERD_NETWORK_SPIN_US", default_value_t = 100)]
    pub(crate) network_spin_us: u64,
    /// Threads that run HTTP and gRPC (0: half the cores, at least one). Model executors have
    /// threads of their own, so network threads beyond the cores they leave free only add
    /// wake-ups (on 2 cores, 2 network threads served ~35% fewer batch-64 rows/s than 1).
    #[arg(long, env = "INFERD_NETWORK_THREADS", default_value_t = 0)]
    pub(crate) network_threads: usize,
    /// Seconds a client has to send a request's head, once it starts, and its body (HTTP);
    /// past it the connection is closed (head) or answered 408 and closed (body).
    #[arg(long, env = "INFERD_HTTP_READ_TIMEOUT_SECS", default_value_t = 30.0)]
    pub(crate) http_read_timeout_secs: f64,
    /// Seconds an HTTP connection may stay open with no request in progress.
    #[arg(long, env = "INFERD_HTTP_IDLE_TIMEOUT_SECS", default_value_t = 60.0)]
    pub(crate) http_idle_timeout_secs: f64,
    /// Connections open at once, HTTP and gRPC together; more are closed as they arrive.
    #[arg(long, env = "INFERD_MAX_CONNECTIONS", default_value_t = 4096)]
    pub(crate) max_connections: usize,
    /// Seconds between gRPC HTTP/2 keepalive pings to each client.
    #[arg(long, env = "INFERD_GRPC_KEEPALIVE_TIME_SECS", default_value_t = 60.0)]
    pub(crate) grpc_keepalive_time_secs: f64,
    /// Seconds a gRPC keepalive ping may go unanswered before the connection is closed.
    #[arg(
        long,
        env = "INFERD_GRPC_KEEPALIVE_TIMEOUT_SECS",
        default_value_t = 20.0
    )]
    pub(crate) grpc_keepalive_timeout_secs: f64,
    /// Concurrent streams per HTTP/2 connection (gRPC, and HTTP/2 on the HTTP port).
    #[arg(
        long,
        env = "INFERD_GRPC_MAX_CONCURRENT_STREAMS",
        default_value_t = 256
    )]
    pub(crate) grpc_max_concurrent_streams: u32,
    /// Seconds, after the drain delay, that requests already admitted may take to finish
    /// (new ones get 503 / UNAVAILABLE meanwhile); then the process exits anyway.
    #[arg(long, env = "INFERD_EXIT_TIMEOUT_SECS", default_value_t = 30.0)]
    pub(crate) exit_timeout_secs: f64,
    /// Seconds an unloaded (or replaced) model version may take to finish its requests; then
    /// the ones still queued are failed with UNAVAILABLE and the version stops.
    #[arg(long, env = "INFERD_MODEL_UNLOAD_TIMEOUT_SECS", default_value_t = 30.0)]
    pub(crate) model_unload_timeout_secs: f64,
    /// Horizon of the demand forecast on the metrics page, seconds; default: each model's
    /// measured load time (its cold start).
    #[arg(long, env = "INFERD_FORECAST_HORIZON_SECS")]
    pub(crate) forecast_horizon_secs: Option<f64>,
    /// Seconds between SIGTERM (readiness turns false at once) and the listeners closing, so
    /// load balancers stop sending before the server stops accepting.
    #[arg(long, env = "INFERD_DRAIN_DELAY_SECS", default_value_t = 5.0)]
    pub(crate) drain_delay_secs: f64,
    /// PEM certificate chain: serve HTTP and gRPC over TLS (with --tls-key-file). Re-read on
    /// SIGHUP and when the files change.
    #[arg(long, env = "INFERD_TLS_CERT_FILE", requires = "tls_key_file")]
    pub(crate) tls_cert_file: Option<PathBuf>,
    /// PEM private key of --tls-cert-file.
    #[arg(long, env = "INFERD_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub(crate) tls_key_file: Option<PathBuf>,
    /// PEM CA certificates: clients must present a certificate signed by one (mutual TLS).
    #[arg(long, env = "INFERD_TLS_CLIENT_CA_FILE", requires = "tls_cert_file")]
    pub(crate) tls_client_ca_file: Option<PathBuf>,
    /// Log lines as text or JSON (one object per line).
    #[arg(long, env = "INFERD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub(crate) log_format: LogFormat,
    /// KV-cache memory of each LLM version, in bytes (a model's config parameter
    /// `kv_cache_bytes` overrides it); the blocks it makes are reported when the model loads.
    #[arg(long, env = "INFERD_LLM_KV_CACHE_BYTES", default_value_t = 256 << 20)]
    pub(crate) llm_kv_cache_bytes: usize,
    /// Sequences an LLM version runs at once (config parameter `max_num_seqs` overrides it);
    /// more wait in a bounded queue, past which requests get 429.
    #[arg(long, env = "INFERD_LLM_MAX_NUM_SEQS", default_value_t = 32)]
    pub(crate) llm_max_num_seqs: usize,
    /// How each LLM version stores keys and values (config parameter `kv_cache_dtype`
    /// overrides it): `f32`, or `q8` for 3.5x the tokens in the same `--llm-kv-cache-bytes`.
    #[arg(long, env = "INFERD_LLM_KV_CACHE_DTYPE", value_enum, default_value_t = KvCacheDtype::F32)]
    pub(crate) llm_kv_cache_dtype: KvCacheDtype,
    /// The Python interpreter that runs `backend: "python"` models' workers (it needs numpy).
    #[arg(long, env = "INFERD_PYTHON_EXECUTABLE", default_value = "python3")]
    pub(crate) python_executable: PathBuf,
    /// Where python models' packed environments (config parameter `EXECUTION_ENV_PATH` naming
    /// a conda-pack archive) are unpacked, once per archive (default: ~/.cache/inferd/python-envs).
    #[arg(long, env = "INFERD_PYTHON_ENV_CACHE_DIR")]
    pub(crate) python_env_cache_dir: Option<PathBuf>,
    /// Which backend runs ONNX models; a model's config parameter `onnx_backend` overrides it.
    #[arg(long, env = "INFERD_ONNX_BACKEND", value_enum, default_value_t = OnnxBackend::Auto)]
    pub(crate) onnx_backend: OnnxBackend,
    /// Where each setting not left at its default came from, by flag name (for errors).
    #[arg(skip)]
    pub(crate) origins: std::collections::BTreeMap<String, String>,
}

impl ServeArgs {
    /// How to name setting `flag` in an error: `--flag`, its environment variable, or the
    /// config file it came from.
    pub(crate) fn origin(&self, flag: &str) -> String {
        self.origins
            .get(flag)
            .cloned()
            .unwrap_or_else(|| format!("--{flag}"))
    }
}

/// The network thread count for `--network-threads n`: `n`, or for 0 half the cores (at least
/// one).
pub(crate) fn network_threads(n: usize, cores: usize) -> usize {
    match n {
        0 => (cores / 2).max(1),
        n => n,
    }
}

/// Parses the command line; for `serve --config FILE`, the file's settings join it as flags,
/// below the command line and the environment. Clap errors and `--help` exit here, as usual.
pub(crate) fn parse_cli(argv: Vec<OsString>) -> Result<Cli> {
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

pub(crate) fn engine_options(a: &ServeArgs, repo: PathBuf) -> Result<EngineOptions> {
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
        model_load_threads: a.model_load_threads,
        cold_start_wait: seconds(a, "cold-start-wait-secs", a.cold_start_wait_secs, 0.0)?,
        cold_start_queue: a.cold_start_queue,
        drift_sample_rate: a.drift_sample_rate,
        max_sequences: a.max_sequences as usize,
        staging_dir: a.staging_dir.clone(),
        response_cache_bytes: match &a.cache_config {
            Some(text) => inferd_core::cache::parse_config(text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", a.origin("cache-config")))?,
            None => 0,
        },
        executor_spin: Duration::from_micros(a.executor_spin_us),
        reclaim_memory: Some(crate::alloc::reclaim),
        unload_timeout: seconds(
            a,
            "model-unload-timeout-secs",
            a.model_unload_timeout_secs,
            0.0,
        )?,
    })
}

/// Seconds from setting `flag`: finite and at least `min`.
fn seconds(a: &ServeArgs, flag: &str, v: f64, min: f64) -> Result<Duration> {
    if !(v.is_finite() && v >= min) {
        bail!(
            "{}: must be a number of seconds of at least {min}, got {v}",
            a.origin(flag)
        );
    }
    Ok(Duration::from_secs_f64(v))
}

/// Routes' auth and state dir (the routes themselves are read once models are known).
fn traffic(a: &ServeArgs) -> Result<inferd_server::traffic::Traffic> {
    use inferd_server::traffic::auth::{Auth, Token};
    let tokens = |flag: &str, list: &[String], default_name: &str| -> Result<Vec<Token>> {
        list.iter()
            .map(|t| {
                Token::parse(t.trim(), default_name)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", a.origin(flag)))
            })
            .collect()
    };
    let auth = Auth::new(
        tokens("admin-token", &a.admin_token, "admin")?,
        tokens("feedback-token", &a.feedback_token, "feedback")?,
    );
    let state = match &a.state_dir {
        Some(d) => Some(
            inferd_server::traffic::persist::StateDir::open(d)
                .map_err(|e| anyhow::anyhow!("{}: {e}", a.origin("state-dir")))?,
        ),
        None => None,
    };
    Ok(inferd_server::traffic::Traffic::new(auth, state))
}

/// The front-ends' settings.
pub(crate) fn server_options(a: &ServeArgs) -> Result<ServerOptions> {
    if a.max_connections == 0 {
        bail!("{}: must be positive", a.origin("max-connections"));
    }
    if !(0.0..=1.0).contains(&a.drift_sample_rate) {
        bail!(
            "{}: {} is not a rate from 0 to 1",
            a.origin("drift-sample-rate"),
            a.drift_sample_rate
        );
    }
    if a.grpc_max_concurrent_streams == 0 {
        bail!(
            "{}: must be positive",
            a.origin("grpc-max-concurrent-streams")
        );
    }
    Ok(ServerOptions {
        http_addr: SocketAddr::new(a.http_address, a.http_port),
        grpc_addr: SocketAddr::new(a.grpc_address, a.grpc_port),
        metrics_addr: a
            .allow_metrics
            .then(|| SocketAddr::new(a.metrics_address, a.metrics_port)),
        admin_addr: admin_addr(a)?,
        tfserving_rest_addr: a
            .tfserving_rest_port
            .map(|p| SocketAddr::new(a.http_address, p)),
        tfserving_grpc_addr: a
            .tfserving_grpc_port
            .map(|p| SocketAddr::new(a.grpc_address, p)),
        max_body_bytes: a.http_max_body_bytes,
        max_input_size: match a.http_max_input_size {
            0 => a.http_max_body_bytes,
            n => n,
        },
        max_inflight: a.max_inflight_requests,
        max_connections: a.max_connections,
        http: HttpLimits {
            read_timeout: seconds(a, "http-read-timeout-secs", a.http_read_timeout_secs, 0.001)?,
            idle_timeout: seconds(a, "http-idle-timeout-secs", a.http_idle_timeout_secs, 0.001)?,
            max_concurrent_streams: a.grpc_max_concurrent_streams,
        },
        grpc_keepalive_time: seconds(
            a,
            "grpc-keepalive-time-secs",
            a.grpc_keepalive_time_secs,
            1.0,
        )?,
        grpc_keepalive_timeout: seconds(
            a,
            "grpc-keepalive-timeout-secs",
            a.grpc_keepalive_timeout_secs,
            0.001,
        )?,
        grpc_max_concurrent_streams: a.grpc_max_concurrent_streams,
        drain_delay: seconds(a, "drain-delay-secs", a.drain_delay_secs, 0.0)?,
        exit_timeout: seconds(a, "exit-timeout-secs", a.exit_timeout_secs, 0.0)?,
        spin: Duration::from_micros(a.network_spin_us),
        tls: tls(a)?,
        traffic: std::sync::Arc::new(traffic(a)?),
        forecast_horizon: a
            .forecast_horizon_secs
            .map(|v| seconds(a, "forecast-horizon-secs", v, 0.0))
            .transpose()?,
    })
}

/// The admin listener's address: `--admin-port` on `--admin-address` (127.0.0.1 by default).
fn admin_addr(a: &ServeArgs) -> Result<Option<SocketAddr>> {
    match (a.admin_port, a.admin_address) {
        (Some(port), addr) => Ok(Some(SocketAddr::new(
            addr.unwrap_or(IpAddr::from([127, 0, 0, 1])),
            port,
        ))),
        (None, Some(_)) => bail!(
            "{}: needs --admin-port (without it the admin API is on the HTTP port)",
            a.origin("admin-address")
        ),
        (None, None) => Ok(None),
    }
}

/// The TLS files, read and checked now, so a bad one stops the start naming it.
fn tls(a: &ServeArgs) -> Result<Option<std::sync::Arc<inferd_server::tls::Tls>>> {
    let (Some(cert), Some(key)) = (&a.tls_cert_file, &a.tls_key_file) else {
        return Ok(None);
    };
    let files = inferd_server::tls::TlsFiles {
        cert: cert.clone(),
        key: key.clone(),
        client_ca: a.tls_client_ca_file.clone(),
    };
    let tls = inferd_server::tls::Tls::load(files).map_err(|e| anyhow!("TLS: {e}"))?;
    Ok(Some(std::sync::Arc::new(tls)))
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
