//! The canary controller: a thin actor that asks [`Traffic::analyse_due`] once a second, so
//! each canary is analysed every `interval_secs` on its own windows. All decisions are the
//! pure rollout's (`inferd_traffic::canary`); this only supplies the clock. A/B routes with a
//! drift guardrail are checked the same way ([`Traffic::guard_ab_due`]). It also saves A/B
//! outcomes that changed, at most once a second.

use std::sync::Arc;
use std::time::Duration;

use super::{Traffic, now};

/// How often the controller looks for due analyses.
const TICK: Duration = Duration::from_secs(1);

/// Starts the controller; it ends when `traffic` is dropped everywhere else.
pub fn spawn(traffic: &Arc<Traffic>) -> tokio::task::JoinHandle<()> {
    let weak = Arc::downgrade(traffic);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(t) = weak.upgrade() else { return };
            t.analyse_due(now()).await;
            t.guard_ab_due(now()).await;
            t.save_outcomes().await;
        }
    })
}
