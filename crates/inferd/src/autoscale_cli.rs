//! `inferd autoscale simulate`: replays a traffic trace against scaling policies with
//! replicas modelled on measured figures, and reports what each would cost and break.

use std::path::PathBuf;

use anyhow::{Context, Result};
use inferd_autoscale::policy::{Policy, Settings};
use inferd_autoscale::profile::ServiceProfile;
use inferd_autoscale::sim::{Outcome, SimConfig, simulate};
use inferd_autoscale::trace::Trace;

/// `inferd autoscale` subcommands.
#[derive(clap::Subcommand, Debug)]
pub(crate) enum AutoscaleCommand {
    /// Replay a trace against scaling policies: SLO violations, drops, replica-hours, cold
    /// starts, and a plot. Exit code 0, or 2 for a mistake in the arguments or files.
    Simulate(SimulateArgs),
    /// Follow a policy live: read running replicas' readiness and metrics once a second and
    /// run a scale command with the count the policy asks for (processes, podman, systemd:
    /// anything outside Kubernetes). Prints one JSON line per second.
    Control(crate::autoscale_control::ControlArgs),
}

/// Output formats.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SimFormat {
    /// A table.
    Human,
    /// A JSON list with one object per policy.
    Json,
}

#[derive(clap::Args, Debug)]
pub(crate) struct SimulateArgs {
    /// A shipped trace (diurnal, spike, bursty, daily-spike) or a CSV file of
    /// `timestamp,count` rows.
    #[arg(long)]
    trace: String,
    /// A policy to replay (repeatable): cpu-hpa, queue-hpa, keda, kpa, forecast.
    #[arg(long = "policy", required = true)]
    policies: Vec<String>,
    /// The latency objective in milliseconds.
    #[arg(long, default_value_t = 500.0)]
    slo_ms: f64,
    /// A JSON file with the replica's figures (base_secs, per_item_secs, log_sigma,
    /// max_batch, batch_delay_secs, max_queue, start_phases, overhead_secs); default: a 100 ms model with
    /// batches of 4 that starts in 30 s.
    #[arg(long)]
    service_profile: Option<PathBuf>,
    /// Draw load, replicas and p99 per policy into this PNG.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = SimFormat::Human)]
    format: SimFormat,
    #[command(flatten)]
    settings: PolicyArgs,
    /// Print a per-second series (`seconds`: ready and total replicas, requests in flight)
    /// with each policy's JSON.
    #[arg(long)]
    per_second: bool,
    /// Replicas ready when the replay begins (default: what the first minute needs at the
    /// target utilisation).
    #[arg(long)]
    initial_replicas: Option<usize>,
    /// Seed for the shipped traces and service-time noise.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Longest a request waits at the balancer for a replica to start, seconds.
    #[arg(long, default_value_t = 30.0)]
    cold_start_wait_secs: f64,
}

/// The policies' settings, shared by `simulate` and `control`.
#[derive(clap::Args, Debug)]
pub(crate) struct PolicyArgs {
    /// Fewest replicas (0 lets kpa and keda scale to zero).
    #[arg(long, default_value_t = 1)]
    min_replicas: usize,
    /// Most replicas.
    #[arg(long, default_value_t = 50)]
    max_replicas: usize,
    /// Spare replicas every policy keeps on top of what it asks (over-provisioning).
    #[arg(long, default_value_t = 0)]
    spare: usize,
    /// Target utilisation (CPU for cpu-hpa, of capacity for keda and forecast).
    #[arg(long, default_value_t = 0.7)]
    target_utilisation: f64,
    /// Requests queued or running per replica that queue-hpa aims at.
    #[arg(long, default_value_t = 4.0)]
    queue_target: f64,
    /// Requests in flight per replica that kpa aims at.
    #[arg(long, default_value_t = 4.0)]
    kpa_concurrency: f64,
    /// Seconds the HPA-style policies wait, holding their highest recent recommendation,
    /// before scaling down (Kubernetes' scaleDown stabilizationWindowSeconds).
    #[arg(long, default_value_t = 300.0)]
    scale_down_stabilisation_secs: f64,
}

impl PolicyArgs {
    /// As the policies take them.
    pub(crate) fn settings(&self) -> Settings {
        Settings {
            min_replicas: self.min_replicas,
            max_replicas: self.max_replicas,
            spare: self.spare,
            target_utilisation: self.target_utilisation,
            queue_target: self.queue_target,
            kpa_concurrency: self.kpa_concurrency,
            scale_down_stabilisation_secs: self.scale_down_stabilisation_secs,
        }
    }
}

fn table(outs: &[Outcome], slo_ms: f64) -> String {
    let mut s = format!(
        "{:<10} {:>10} {:>14} {:>9} {:>13} {:>11} {:>8} {:>8} {:>6}\n",
        "policy",
        "requests",
        format!("over {slo_ms}ms"),
        "dropped",
        "replica-hours",
        "cold starts",
        "p50 ms",
        "p99 ms",
        "peak"
    );
    for o in outs {
        s.push_str(&format!(
            "{:<10} {:>10} {:>14} {:>9} {:>13.1} {:>11} {:>8.0} {:>8.0} {:>6}\n",
            o.policy,
            o.requests,
            o.slo_violations,
            o.dropped,
            o.replica_hours,
            o.cold_starts,
            o.p50_ms,
            o.p99_ms,
            o.peak_replicas
        ));
    }
    s
}

/// Runs `inferd autoscale simulate`.
pub(crate) fn run(cmd: AutoscaleCommand) -> Result<()> {
    let a = match cmd {
        AutoscaleCommand::Simulate(a) => a,
        AutoscaleCommand::Control(c) => return crate::autoscale_control::run(c),
    };
    if !(a.slo_ms.is_finite() && a.slo_ms > 0.0) {
        anyhow::bail!("--slo-ms: must be a positive number of milliseconds");
    }
    let trace = if inferd_autoscale::trace::SCENARIOS.contains(&a.trace.as_str()) {
        Trace::scenario(&a.trace, a.seed)?
    } else {
        let text = std::fs::read_to_string(&a.trace).with_context(|| {
            format!(
                "--trace: '{}' is neither a shipped trace ({}) nor a readable file",
                a.trace,
                inferd_autoscale::trace::SCENARIOS.join(", ")
            )
        })?;
        Trace::from_csv(&a.trace, &text)?
    };
    let profile = match &a.service_profile {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("--service-profile: cannot read {}", p.display()))?;
            ServiceProfile::from_json(&p.display().to_string(), &text)?
        }
        None => ServiceProfile::default(),
    };
    let settings = a.settings.settings();
    let policies = a
        .policies
        .iter()
        .map(|p| Policy::new(p, settings.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    let cfg = SimConfig {
        slo_secs: a.slo_ms / 1e3,
        cold_start_wait_secs: a.cold_start_wait_secs,
        seed: a.seed,
        per_second: a.per_second,
        initial_replicas: a.initial_replicas,
        ..SimConfig::default()
    };
    // Policies replay side by side, one thread each.
    let outs: Vec<Outcome> = std::thread::scope(|s| {
        let handles: Vec<_> = policies
            .into_iter()
            .map(|p| {
                let (trace, profile, cfg) = (&trace, &profile, &cfg);
                s.spawn(move || simulate(trace, p, profile, cfg))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| anyhow::anyhow!("a simulation panicked"))
            })
            .collect::<Result<Vec<_>>>()
    })?;
    if let Some(path) = &a.plot {
        inferd_autoscale::plot::draw(path, &outs, a.slo_ms)?;
    }
    match a.format {
        SimFormat::Human => {
            println!(
                "trace {} ({} requests replayed{}), objective {} ms, replicas {}..={}, spare {}",
                trace.name,
                trace.requests(),
                if trace.history > 0 {
                    format!(", after {} s of history", trace.history)
                } else {
                    String::new()
                },
                a.slo_ms,
                settings.min_replicas,
                settings.max_replicas,
                settings.spare
            );
            print!("{}", table(&outs, a.slo_ms));
        }
        SimFormat::Json => {
            let list: Vec<serde_json::Value> = outs
                .iter()
                .map(|o| {
                    let mut v = serde_json::to_value(o).unwrap_or_default();
                    if let Some(m) = v.as_object_mut() {
                        m.remove("minutes");
                        m.insert("slo_ms".into(), a.slo_ms.into());
                    }
                    v
                })
                .collect();
            println!("{}", serde_json::Value::Array(list));
        }
    }
    Ok(())
}
