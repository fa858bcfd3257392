//! The `inferd` binary: `inferd serve` runs the server; `inferd repo check` validates a model
//! repository. Flags use Triton's names so deployment scripts carry over; every `serve` flag can
//! also be set through an `INFERD_*` environment variable or a TOML file (`--config`).

mod alloc;
mod autoscale_cli;
mod autoscale_control;
mod drift_cli;
mod health;
mod http_client;
mod remote;
mod route_cli;
mod routes;
mod settings;
mod tools;
mod top;

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use inferd_core::{Backend, Engine};
use inferd_server::BoundServer;
use settings::{
    LogFormat, OnnxBackend, ServeArgs, engine_options, network_threads, parse_cli, server_options,
};

#[derive(Parser, Debug)]
#[command(
    name = "inferd",
    version,
    about = "inferd: a model server speaking KServe v2 (HTTP and gRPC)"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Serve a model repository over HTTP and gRPC.
    Serve(Box<ServeArgs>),
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
    /// Check that an inferd endpoint answers 200 (a container HEALTHCHECK: the image has no
    /// curl). Exit code 0 when it does, 1 otherwise.
    Health {
        /// The URL (default: readiness on 127.0.0.1 at INFERD_HTTP_PORT, else 8000, so a
        /// container's HEALTHCHECK follows the port the server was given).
        url: Option<String>,
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 3.0)]
        timeout_secs: f64,
    },
    /// Copy a repository (or chosen models) from object storage to a folder, for init
    /// containers and preloading to local disk. Each version folder arrives whole (downloaded
    /// under a hidden name, size and pinned sha256 checked, then renamed) or not at all; a
    /// second pull fetches only what changed. Exit code: 0 done, 1 some version or file failed
    /// its checks, 2 the store could not be read.
    Pull {
        /// The repository: s3://bucket/prefix, gs://bucket/prefix or az://container/prefix
        /// (credentials from the standard environment).
        source: String,
        /// The destination folder (created when missing).
        #[arg(long)]
        to: PathBuf,
        /// Only these models (repeatable); default: every model.
        #[arg(long)]
        model: Vec<String>,
        /// No progress bar or summary.
        #[arg(long)]
        quiet: bool,
    },
    /// Model repository tools.
    Repo {
        #[command(subcommand)]
        command: RepoCommand,
    },
    /// Traffic routes through a server's admin API (list, get, apply FILE, delete, and the
    /// canary and blue-green actions). Exit code: 0 done, 1 refused by the server, 2 usage or
    /// connection error.
    Route {
        #[command(subcommand)]
        command: route_cli::RouteCommand,
    },
    /// Drift monitoring tools: `baseline MODEL FILE` saves a serving version's reference, to
    /// put in the model folder as drift_reference.json. Exit code: 0 done, 1 refused by the
    /// server, 2 usage or connection error.
    Drift {
        #[command(subcommand)]
        command: drift_cli::DriftCommand,
    },
    /// Autoscaling tools: `simulate` replays traffic against scaling policies.
    Autoscale {
        #[command(subcommand)]
        command: autoscale_cli::AutoscaleCommand,
    },
    /// The console's overview in the terminal, refreshing: health, models and their versions,
    /// requests/s, latency, errors, queues and routes (`q` quits). Exit code: 0, or 2 when the
    /// server cannot be read.
    Top(top::TopArgs),
    /// A route's report: an A/B test's statistics, a shadow's comparison, a canary's analyses.
    Report {
        /// The route.
        route: String,
        #[command(flatten)]
        at: route_cli::Endpoint,
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

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    /// One line per finding.
    Human,
    /// A JSON document.
    Json,
}

/// The backends of this build; `origin` names where `onnx` came from, for its error.
/// Server-wide LLM defaults from the flags (or the library's when the flags do not apply).
#[derive(Debug, Clone, Copy)]
#[cfg_attr(not(feature = "llm"), allow(dead_code))]
pub(crate) struct LlmFlags {
    kv_cache_bytes: usize,
    max_num_seqs: usize,
    kv_cache_q8: bool,
}

impl Default for LlmFlags {
    fn default() -> Self {
        LlmFlags {
            kv_cache_bytes: 256 << 20,
            max_num_seqs: 32,
            kv_cache_q8: false,
        }
    }
}

fn backends(
    onnx: OnnxBackend,
    origin: &str,
    llm: LlmFlags,
    python: inferd_pybackend::PythonBackend,
) -> Result<Vec<Arc<dyn Backend>>> {
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
    let _ = (origin, llm);
    // Order matters: the first backend that accepts a config's platform/backend serves it.
    Ok(vec![
        #[cfg(feature = "onnxruntime")]
        Arc::new(inferd_ort::OnnxSelect::new(choice)),
        #[cfg(feature = "onnx")]
        Arc::new(inferd_onnx::OnnxBackend),
        #[cfg(feature = "trees")]
        Arc::new(inferd_trees::TreesBackend),
        Arc::new(inferd_repeat::RepeatBackend),
        Arc::new(inferd_repeat::IdentityBackend),
        // Before candle: a Hugging Face llama folder holds a model.safetensors too, which
        // candle, guessing from file names, would otherwise take for one of its encoders.
        #[cfg(feature = "llm")]
        Arc::new(inferd_llm::backend::LlmBackend {
            defaults: inferd_llm::backend::LlmDefaults {
                kv_cache_bytes: llm.kv_cache_bytes,
                max_num_seqs: llm.max_num_seqs,
                kv_dtype: if llm.kv_cache_q8 {
                    inferd_llm::model::KvDtype::Q8
                } else {
                    inferd_llm::model::KvDtype::F32
                },
            },
        }),
        #[cfg(feature = "candle")]
        Arc::new(inferd_candle::CandleBackend),
        // Last: a folder holding only a model.py is guessed to be a python model.
        Arc::new(python.torchscript()),
        Arc::new(python.savedmodel()),
        Arc::new(python),
    ])
}

/// The python backend as the flags set it.
fn python_backend(a: &settings::ServeArgs) -> inferd_pybackend::PythonBackend {
    let mut b = inferd_pybackend::PythonBackend::new(a.python_executable.clone());
    if let Some(dir) = &a.python_env_cache_dir {
        b.env_cache = dir.clone();
    }
    b
}

/// Without `--model-repository`: the example repository, `examples/models` under the working
/// directory (the source tree's root). The build machine's path is never baked in: a binary
/// copied elsewhere says how to name a repository instead.
fn default_repository() -> Result<PathBuf> {
    let local = PathBuf::from("examples/models");
    if local.is_dir() {
        return Ok(local);
    }
    let cwd = std::env::current_dir()
        .map(|d| d.display().to_string())
        .unwrap_or_else(|_| "the working directory".into());
    bail!(
        "no model repository: pass --model-repository DIR (or set INFERD_MODEL_REPOSITORY); \
         the default, examples/models, is not under {cwd}"
    )
}

/// Logs to stderr, filtered by `INFERD_LOG` (a `tracing` filter, default `info` with
/// `object_store` at `warn`: its per-retry lines are noise, and the outcome of a sync is logged
/// once by inferd itself): text, coloured only for a person at a terminal, or one JSON object
/// per line for log collectors.
fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("INFERD_LOG")
        .unwrap_or_else(|_| "info,object_store=warn".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init();
    } else {
        builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
}

/// Resolves on the first SIGTERM or SIGINT; a second one ends the process at once.
async fn shutdown_signal() {
    first_signal().await;
    tracing::info!("shutting down: draining in-flight requests (a second signal exits now)");
    tokio::spawn(async {
        first_signal().await;
        tracing::warn!("second signal: exiting now, without waiting for requests in flight");
        std::process::exit(1);
    });
}

async fn first_signal() {
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
}

async fn serve(a: ServeArgs) -> Result<()> {
    // Every setting is checked before the repository is looked for, so a mistake in a flag or
    // file is reported as such.
    let server_opts = server_options(&a)?;
    let mut opts = engine_options(&a, PathBuf::new())?;
    opts.repository = match a.model_repository.clone() {
        Some(dir) => dir,
        None => default_repository()?,
    };
    let mirror = match remote::remote_url(&opts.repository) {
        Some(url) => {
            let m = remote::mirror(url, a.model_cache_dir.clone())?;
            opts.repository = m.root().to_path_buf();
            Some(m)
        }
        None => None,
    };
    if !opts.repository.is_dir() {
        bail!(
            "{}: '{}' is not a folder",
            a.origin("model-repository"),
            opts.repository.display()
        );
    }
    let repo = opts.repository.clone();
    let poll = opts.poll_interval;
    let traffic = server_opts.traffic.clone();
    if traffic.auth.admin_open() {
        tracing::warn!(
            "no --admin-token: route changes and repository load/unload are open to anyone who can reach the HTTP and gRPC ports"
        );
    }
    let routes_file = routes::file(a.routes_file.as_deref(), &repo, mirror.is_some());
    if a.llm_kv_cache_bytes == 0 || a.llm_max_num_seqs == 0 {
        bail!(
            "{}: must be positive",
            if a.llm_kv_cache_bytes == 0 {
                a.origin("llm-kv-cache-bytes")
            } else {
                a.origin("llm-max-num-seqs")
            }
        );
    }
    let llm = LlmFlags {
        kv_cache_bytes: a.llm_kv_cache_bytes,
        max_num_seqs: a.llm_max_num_seqs,
        kv_cache_q8: a.llm_kv_cache_dtype == settings::KvCacheDtype::Q8,
    };
    let engine = Engine::new(
        opts,
        backends(
            a.onnx_backend,
            &a.origin("onnx-backend"),
            llm,
            python_backend(&a),
        )?,
    );
    let server = BoundServer::bind(engine.clone(), server_opts)
        .await
        .context("cannot bind the listeners")?;
    let http = server.http_addr()?;
    let grpc = server.grpc_addr()?;
    // For scripts and tests that bind port 0. A closed stdout must not stop the server.
    let metrics = server.metrics_addr()?;
    let admin = server.admin_addr()?;
    let tfserving_rest = server.tfserving_rest_addr()?;
    let tfserving_grpc = server.tfserving_grpc_addr()?;
    let announce = {
        let mut out = std::io::stdout().lock();
        writeln!(out, "HTTP listening on {http}")
            .and_then(|_| match metrics {
                Some(m) => writeln!(out, "Metrics listening on {m}"),
                None => Ok(()),
            })
            .and_then(|_| match admin {
                Some(a) => writeln!(out, "Admin listening on {a}"),
                None => Ok(()),
            })
            .and_then(|_| match tfserving_rest {
                Some(a) => writeln!(out, "TF Serving REST listening on {a}"),
                None => Ok(()),
            })
            .and_then(|_| match tfserving_grpc {
                Some(a) => writeln!(out, "TF Serving gRPC listening on {a}"),
                None => Ok(()),
            })
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
        repository = %a.model_repository.as_deref().unwrap_or(&repo).display(),
        mode = %a.model_control_mode,
        network_threads = tokio::runtime::Handle::current().metrics().num_workers(),
        "serving"
    );
    // Health and metadata answer while models load; readiness turns true after startup loads.
    let mut serving = tokio::spawn(server.serve(shutdown_signal()));
    // A signal during startup loading ends the server without waiting for the loads.
    let startup = async {
        if let Some(m) = mirror {
            remote::first_sync(&m, &engine).await?;
            if a.model_control_mode != inferd_core::ControlMode::None {
                tokio::spawn(remote::follow(m, poll, engine.clone()));
            }
        }
        match &a.state_store {
            Some(url) => {
                let store = routes::connect(url, &a.origin("state-store")).await?;
                routes::install_shared(&traffic, store, routes_file.as_deref(), &repo).await?;
            }
            None => routes::install(&traffic, routes_file.as_deref(), &repo)?,
        }
        engine.start().await.map_err(anyhow::Error::from)
    };
    tokio::select! {
        started = startup => {
            started.context("startup failed")?;
            tracing::info!(ready = engine.is_ready(), "startup loading finished");
        }
        done = &mut serving => {
            done.context("server task failed")??;
            tracing::info!("stopped during startup loading");
            return Ok(());
        }
    }
    serving.await.context("server task failed")??;
    Ok(())
}

use tools::{inspect, repo_check, scan};

fn main() -> std::process::ExitCode {
    // Before any thread exists (see the function's contract).
    #[cfg(feature = "candle")]
    inferd_candle::confine_candle_threads();
    let cli = match parse_cli(std::env::args_os().collect()) {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("inferd: error: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    let json = matches!(&cli.command, Command::Serve(a) if a.log_format == LogFormat::Json);
    init_logging(json);
    let result = match cli.command {
        Command::Serve(a) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(network_threads(
                a.network_threads,
                std::thread::available_parallelism().map_or(1, |n| n.get()),
            ))
            .enable_all()
            .build()
            .context("cannot start the async runtime")
            .and_then(|rt| {
                let r = rt.block_on(serve(*a));
                // Loads still running on blocking threads (a signal during startup) are not
                // waited for.
                rt.shutdown_timeout(Duration::from_millis(200));
                r
            }),
        Command::Inspect { file, tensor } => inspect(&file, &tensor),
        Command::Health { url, timeout_secs } => {
            let url = url.unwrap_or_else(|| {
                let port = std::env::var("INFERD_HTTP_PORT").unwrap_or_else(|_| "8000".into());
                format!("http://127.0.0.1:{port}/v2/health/ready")
            });
            let timeout = Duration::from_secs_f64(timeout_secs.clamp(0.001, 3600.0));
            return match health::check(&url, timeout) {
                Ok(true) => std::process::ExitCode::SUCCESS,
                Ok(false) => {
                    eprintln!("inferd health: {url} did not answer 200");
                    std::process::ExitCode::from(1)
                }
                Err(e) => {
                    eprintln!("inferd health: {e:#}");
                    std::process::ExitCode::from(1)
                }
            };
        }
        Command::Pull {
            source,
            to,
            model,
            quiet,
        } => {
            return std::process::ExitCode::from(remote::pull(&source, to, model, quiet));
        }
        Command::Route { command } => {
            return std::process::ExitCode::from(route_cli::route(command));
        }
        Command::Report { route, at } => {
            return std::process::ExitCode::from(route_cli::report(&route, &at));
        }
        Command::Drift { command } => {
            let code = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(drift_cli::run(command)));
            return std::process::ExitCode::from(match code {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    2
                }
            });
        }
        Command::Autoscale { command } => autoscale_cli::run(command),
        Command::Top(args) => {
            return std::process::ExitCode::from(top::run(args).unwrap_or_else(|e| {
                eprintln!("inferd top: {e:#}");
                2
            }));
        }
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
