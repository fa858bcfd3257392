//! A monitor's resident memory stays flat whatever the traffic: after the reference and one
//! window are full, a million more sampled requests (16 input features, 4 outputs) add
//! nothing measurable. Its own test binary, so no other test's allocations
//! move the process's RSS while it measures.

use inferd_drift::monitor::Values;
use inferd_drift::{DriftConfig, Monitor, TensorKind};

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[test]
fn rss_stays_flat_over_a_million_sampled_requests() {
    let mut m = Monitor::new(DriftConfig {
        reference_requests: 1000,
        window_secs: 600.0,
        ..Default::default()
    });
    let mut rng = fastrand::Rng::with_seed(7);
    let mut feed = |m: &mut Monitor, from: u64, n: u64| {
        for i in from..from + n {
            let x: Vec<f64> = (0..16).map(|_| rng.f64()).collect();
            let y: Vec<f64> = (0..4).map(|_| rng.f64()).collect();
            // 1,000 requests a second: the 600 s window holds 600,000 of them.
            m.observe(
                i as f64 / 1000.0,
                &[
                    (TensorKind::Input, "input", Values::Float(x), 1),
                    (TensorKind::Output, "output", Values::Float(y), 1),
                ],
            );
        }
    };
    // Reference, then a full window and one slide, so every structure has its size.
    feed(&mut m, 0, 700_000);
    let _ = m.report();
    let before = rss_kib();
    feed(&mut m, 700_000, 1_000_000);
    let _ = m.report();
    let after = rss_kib();
    assert!(
        after <= before + 1024,
        "RSS grew from {before} KiB to {after} KiB over a million sampled requests"
    );
}
