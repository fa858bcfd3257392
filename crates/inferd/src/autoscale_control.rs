//! `inferd autoscale control`: a scaling loop for replicas outside Kubernetes. Once a second it
//! reads each replica's readiness and metrics page, feeds the policy the simulator replays
//! (`inferd_autoscale::control`), and when the policy asks for a new count runs the scale
//! command with it. One JSON line per second on stdout says what was observed and decided.

use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use inferd_autoscale::control::{Controller, Reading, SlotReading};
use inferd_autoscale::policy::Policy;
use serde_json::json;

use crate::autoscale_cli::PolicyArgs;

/// Arguments of `inferd autoscale control`.
#[derive(clap::Args, Debug)]
pub(crate) struct ControlArgs {
    /// The policy to follow: cpu-hpa, queue-hpa, keda, kpa, forecast.
    #[arg(long)]
    policy: String,
    /// A replica's base URL (repeatable, in order): with a count of N the first N are meant
    /// to run; --max-replicas is capped at the number listed.
    #[arg(long = "replica", required = true)]
    replicas: Vec<String>,
    /// Run as `sh -c "COMMAND N"` whenever the policy asks for N replicas; it must start
    /// replicas 1..=N of the list and stop the others, and return once it has asked for that.
    #[arg(long)]
    scale_command: String,
    /// Read the series of this model only (default: all models).
    #[arg(long)]
    model: Option<String>,
    /// Requests per second one replica sustains (default: what the replicas report as
    /// inferd_capacity_requests_per_second).
    #[arg(long)]
    capacity: Option<f64>,
    /// CPU cores each replica may use, for cpu-hpa's utilisation.
    #[arg(long, default_value_t = 1.0)]
    cpus_per_replica: f64,
    /// Replicas to start with (default: --min-replicas, at least 1); the loop begins once they
    /// are ready.
    #[arg(long)]
    initial_replicas: Option<usize>,
    /// Longest wait for the initial replicas to turn ready, seconds.
    #[arg(long, default_value_t = 120.0)]
    start_timeout_secs: f64,
    /// Stop after this many seconds (default: run until interrupted).
    #[arg(long)]
    duration_secs: Option<f64>,
    /// The path of the metrics page on each replica.
    #[arg(long, default_value = "/metrics")]
    metrics_path: String,
    #[command(flatten)]
    settings: PolicyArgs,
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Readiness and metrics of one replica; `None` when it is not ready or does not answer.
async fn read_slot(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    model: Option<&str>,
) -> SlotReading {
    let ready = http
        .get(format!("{base}/v2/health/ready"))
        .send()
        .await
        .ok()?;
    if !ready.status().is_success() {
        return None;
    }
    let page = http.get(format!("{base}{path}")).send().await.ok()?;
    if !page.status().is_success() {
        return None;
    }
    Some(Reading::from_page(&page.text().await.ok()?, model))
}

/// Runs the scale commands in order on a thread of their own, so a slow one never delays a
/// tick.
fn scaler(command: String) -> mpsc::Sender<usize> {
    let (tx, rx) = mpsc::channel::<usize>();
    std::thread::spawn(move || {
        for n in rx {
            let status = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("{command} {n}"))
                .env("INFERD_REPLICAS", n.to_string())
                .status();
            match status {
                Ok(s) if s.success() => tracing::info!(replicas = n, "scale command done"),
                Ok(s) => tracing::warn!(replicas = n, "scale command failed: {s}"),
                Err(e) => tracing::warn!(replicas = n, "scale command did not start: {e}"),
            }
        }
    });
    tx
}

/// Runs `inferd autoscale control`.
pub(crate) fn run(a: ControlArgs) -> Result<()> {
    let mut settings = a.settings.settings();
    // There are only as many replicas as are listed.
    settings.max_replicas = settings.max_replicas.min(a.replicas.len());
    settings.min_replicas = settings.min_replicas.min(settings.max_replicas);
    let policy = Policy::new(&a.policy, settings.clone())?;
    for url in &a.replicas {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            bail!("--replica '{url}': must start with http:// or https://");
        }
    }
    if let Some(c) = a.capacity
        && !(c.is_finite() && c > 0.0)
    {
        bail!("--capacity: must be a positive number of requests per second");
    }
    if !(a.cpus_per_replica.is_finite() && a.cpus_per_replica > 0.0) {
        bail!("--cpus-per-replica: must be above 0");
    }
    let initial = a
        .initial_replicas
        .unwrap_or(settings.min_replicas.max(1))
        .clamp(settings.min_replicas, settings.max_replicas);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(drive(a, policy, initial))
}

async fn drive(a: ControlArgs, policy: Policy, initial: usize) -> Result<()> {
    let http = crate::http_client::client(Duration::from_millis(800))?;
    let bases: Vec<String> = a
        .replicas
        .iter()
        .map(|u| u.trim_end_matches('/').to_string())
        .collect();
    let model = a.model.as_deref();
    let read_all = || {
        futures::future::join_all(
            bases
                .iter()
                .map(|b| read_slot(&http, b, &a.metrics_path, model)),
        )
    };
    let scale = scaler(a.scale_command.clone());
    let _ = scale.send(initial);
    let deadline = Instant::now() + Duration::from_secs_f64(a.start_timeout_secs.max(0.0));
    loop {
        let slots = read_all().await;
        if slots[..initial].iter().all(Option::is_some) {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the first {initial} replicas were not ready within {} s",
                a.start_timeout_secs
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut controller = Controller::new(policy, initial, a.capacity, a.cpus_per_replica);
    let start = Instant::now();
    println!(
        "{}",
        json!({"event": "start", "unix": unix_now(), "replicas": initial, "policy": a.policy})
    );
    let mut interval = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut second = 0u64;
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
        second += 1;
        let slots = read_all().await;
        // Ticks are counted, not timed, so a replay of the same seconds lines up with them.
        let tick = controller.tick(second as f64, &slots);
        if let Some(n) = tick.decided
            && n != tick.observation.ready + tick.observation.starting
        {
            let _ = scale.send(n);
        }
        let o = &tick.observation;
        println!(
            "{}",
            json!({
                "t": second, "elapsed": start.elapsed().as_secs_f64(), "unix": unix_now(),
                "ready": o.ready, "starting": o.starting, "in_flight": o.in_flight,
                "arrivals": o.arrivals, "busy": o.busy, "capacity": o.capacity,
                "forecast": o.forecast, "decided": tick.decided, "replicas": tick.replicas,
            })
        );
        if a.duration_secs
            .is_some_and(|d| start.elapsed().as_secs_f64() >= d)
        {
            return Ok(());
        }
    }
}
