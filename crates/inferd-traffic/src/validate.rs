//! Checks a route against the repository and the other routes before it may take traffic.
//! Every refusal names the route, the field and the reason; nothing is changed by a refused
//! route (the caller applies a route only after it passes).

use crate::TrafficError;
use crate::spec::{RouteSpec, WeightedTarget};

/// What validation needs to know about the server: which names are models and which are
/// other routes.
pub trait Names {
    /// Whether `name` is a model in the repository.
    fn is_model(&self, name: &str) -> bool;
    /// Whether `name` is a route other than the one being checked.
    fn is_route(&self, name: &str) -> bool;
}

fn invalid(route: &str, field: &str, reason: impl Into<String>) -> TrafficError {
    TrafficError::Invalid {
        route: route.to_string(),
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// Checks route `name` with `spec`.
pub fn validate(name: &str, spec: &RouteSpec, names: &dyn Names) -> Result<(), TrafficError> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(invalid(
            name,
            "name",
            "a route name is letters, digits, '_', '-' and '.' only",
        ));
    }
    // A route named after a model is that model's traffic policy (clients calling the model
    // get the rollout; `/versions/N/` still reaches a version directly), as in the schema's
    // examples. One that sends traffic elsewhere would hide the model: refused.
    if names.is_model(name)
        && let Some((field, t)) = spec.targets().into_iter().find(|(_, t)| t.model != name)
    {
        return Err(invalid(
            name,
            &field,
            format!(
                "the route is named after the model '{name}' but sends traffic to '{}'; a \
                 route may not hide a model of the same name",
                t.model
            ),
        ));
    }
    for (field, target) in spec.targets() {
        if names.is_route(&target.model) {
            return Err(invalid(
                name,
                &field,
                format!(
                    "'{}' is a route; a route's targets are models",
                    target.model
                ),
            ));
        }
        if !names.is_model(&target.model) {
            return Err(invalid(
                name,
                &field,
                format!("no model named '{}' in the repository", target.model),
            ));
        }
    }
    match spec {
        RouteSpec::Split { targets, .. } => weights(name, targets, 1),
        RouteSpec::Ab {
            targets,
            experiment,
            guardrails,
            ..
        } => {
            weights(name, targets, 2)?;
            if let Some(g) = guardrails {
                if g.max_output_psi.is_none_or(|r| r.is_nan() || r <= 0.0) {
                    return Err(invalid(
                        name,
                        "guardrails.max_output_psi",
                        "must be set and above 0",
                    ));
                }
                if g.interval_secs == 0 {
                    return Err(invalid(
                        name,
                        "guardrails.interval_secs",
                        "must be at least 1",
                    ));
                }
            }
            if !matches!(experiment.metric.as_str(), "conversion" | "mean") {
                return Err(invalid(
                    name,
                    "experiment.metric",
                    format!(
                        "'{}' is not a metric kind (conversion or mean)",
                        experiment.metric
                    ),
                ));
            }
            if !(experiment.alpha > 0.0 && experiment.alpha < 1.0) {
                return Err(invalid(name, "experiment.alpha", "must be between 0 and 1"));
            }
            if experiment.min_detectable_effect.is_some_and(|e| e <= 0.0) {
                return Err(invalid(
                    name,
                    "experiment.min_detectable_effect",
                    "must be above 0",
                ));
            }
            Ok(())
        }
        RouteSpec::Shadow {
            primary,
            shadow,
            percent,
            ..
        } => {
            if !(0..=100).contains(percent) {
                return Err(invalid(
                    name,
                    "percent",
                    format!("{percent} is not in 0..=100"),
                ));
            }
            if primary == shadow {
                return Err(invalid(name, "shadow", "the shadow is the primary itself"));
            }
            Ok(())
        }
        RouteSpec::Canary {
            primary,
            canary,
            steps,
            interval_secs,
            threshold,
            guardrails,
            prometheus,
            ..
        } => {
            if primary == canary {
                return Err(invalid(name, "canary", "the canary is the primary itself"));
            }
            if steps.is_empty() {
                return Err(invalid(name, "steps", "a canary needs at least one step"));
            }
            for (i, s) in steps.iter().enumerate() {
                if !(0..=100).contains(&s.weight) {
                    return Err(invalid(
                        name,
                        &format!("steps[{i}].weight"),
                        format!("{} is not in 0..=100", s.weight),
                    ));
                }
            }
            if *interval_secs == 0 {
                return Err(invalid(name, "interval_secs", "must be at least 1"));
            }
            if *threshold == 0 {
                return Err(invalid(name, "threshold", "must be at least 1"));
            }
            if guardrails
                .max_error_rate
                .is_some_and(|r| !(0.0..=1.0).contains(&r))
            {
                return Err(invalid(
                    name,
                    "guardrails.max_error_rate",
                    "is a fraction, in 0..=1",
                ));
            }
            if guardrails
                .max_p99_ratio
                .is_some_and(|r| r.is_nan() || r <= 0.0)
            {
                return Err(invalid(name, "guardrails.max_p99_ratio", "must be above 0"));
            }
            if guardrails
                .max_output_psi
                .is_some_and(|r| r.is_nan() || r <= 0.0)
            {
                return Err(invalid(
                    name,
                    "guardrails.max_output_psi",
                    "must be above 0",
                ));
            }
            for (i, m) in guardrails.metrics.iter().enumerate() {
                let field = |f: &str| format!("guardrails.metrics[{i}].{f}");
                if m.metric.is_empty() {
                    return Err(invalid(
                        name,
                        &field("metric"),
                        "must name a feedback metric",
                    ));
                }
                if m.min_ratio.is_none() && m.max_ratio.is_none() {
                    return Err(invalid(
                        name,
                        &field("min_ratio"),
                        "give min_ratio, max_ratio or both",
                    ));
                }
                for (f, v) in [("min_ratio", m.min_ratio), ("max_ratio", m.max_ratio)] {
                    if v.is_some_and(|r| r.is_nan() || r <= 0.0) {
                        return Err(invalid(name, &field(f), "must be above 0"));
                    }
                }
            }
            if let Some(url) = prometheus
                && !(url.starts_with("http://") || url.starts_with("https://"))
            {
                return Err(invalid(
                    name,
                    "prometheus",
                    format!("'{url}' is not an http:// or https:// URL"),
                ));
            }
            Ok(())
        }
        RouteSpec::Bluegreen { blue, green, .. } => {
            if blue == green {
                return Err(invalid(name, "green", "blue and green are the same target"));
            }
            Ok(())
        }
    }
}

/// The largest weight: shares are relative, and a bound keeps their sum far from overflow.
pub const MAX_WEIGHT: i64 = 1_000_000;

fn weights(name: &str, targets: &[WeightedTarget], least: usize) -> Result<(), TrafficError> {
    if targets.len() < least {
        return Err(invalid(
            name,
            "targets",
            format!("needs at least {least} target(s), has {}", targets.len()),
        ));
    }
    for (i, t) in targets.iter().enumerate() {
        if !(0..=MAX_WEIGHT).contains(&t.weight) {
            return Err(invalid(
                name,
                &format!("targets[{i}].weight"),
                format!("{} is not in 0..={MAX_WEIGHT}", t.weight),
            ));
        }
        if targets[..i].iter().any(|o| o.target() == t.target()) {
            return Err(invalid(
                name,
                &format!("targets[{i}]"),
                format!("{} is named twice", t.target()),
            ));
        }
    }
    if targets.iter().map(|t| t.weight).sum::<i64>() == 0 {
        return Err(invalid(name, "targets", "the weights sum to zero"));
    }
    Ok(())
}
