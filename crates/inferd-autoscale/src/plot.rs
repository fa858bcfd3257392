//! The simulation drawn as a PNG (plotters): per policy, one panel with the load (requests/s)
//! and the replicas over the replayed minutes, and under it the minute's p99 latency against
//! the objective. Labels need a TrueType font: the usual system paths are searched (Debian's
//! `fonts-dejavu-core` provides one).

use plotters::prelude::*;

use crate::Error;
use crate::sim::Outcome;

const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
];

fn register_font() -> Result<(), Error> {
    static DONE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let bytes = FONT_PATHS
            .iter()
            .find_map(|p| std::fs::read(p).ok())
            .ok_or_else(|| {
                format!(
                    "no TrueType font for the plot's labels (looked in {}); install fonts-dejavu-core",
                    FONT_PATHS.join(", ")
                )
            })?;
        // plotters keeps fonts for the life of the process.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| "the font file could not be read".to_string())
    })
    .clone()
    .map_err(Error::Io)
}

fn draw_err(e: impl std::fmt::Display) -> Error {
    Error::Io(format!("cannot draw the plot: {e}"))
}

/// Draws `outcomes` (one per policy, same trace) into a PNG at `path`, with the objective
/// `slo_ms` marked.
pub fn draw(path: &std::path::Path, outcomes: &[Outcome], slo_ms: f64) -> Result<(), Error> {
    register_font()?;
    let rows = outcomes.len().max(1);
    let root = BitMapBackend::new(path, (1400, 360 * rows as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err)?;
    let panels = root.split_evenly((rows, 1));
    for (panel, o) in panels.iter().zip(outcomes) {
        let (top, bottom) = panel.split_vertically(230);
        let minutes = o.minutes.len().max(1) as f64;
        let max_load = o.minutes.iter().map(|m| m.load).fold(1.0, f64::max) * 1.1;
        let max_replicas = o
            .minutes
            .iter()
            .map(|m| m.replicas)
            .max()
            .unwrap_or(1)
            .max(1) as f64
            * 1.2;
        let mut chart = ChartBuilder::on(&top)
            .caption(
                format!(
                    "{} on {}: {} SLO violations ({} dropped), {:.1} replica-hours, {} cold starts",
                    o.policy, o.trace, o.slo_violations, o.dropped, o.replica_hours, o.cold_starts
                ),
                ("sans-serif", 18),
            )
            .margin(8)
            .x_label_area_size(20)
            .y_label_area_size(50)
            .right_y_label_area_size(50)
            .build_cartesian_2d(0f64..minutes, 0f64..max_load)
            .map_err(draw_err)?
            .set_secondary_coord(0f64..minutes, 0f64..max_replicas);
        chart
            .configure_mesh()
            .y_desc("requests/s")
            .disable_x_mesh()
            .draw()
            .map_err(draw_err)?;
        chart
            .configure_secondary_axes()
            .y_desc("replicas")
            .draw()
            .map_err(draw_err)?;
        chart
            .draw_series(LineSeries::new(
                o.minutes.iter().map(|m| (m.minute as f64, m.load)),
                &BLUE,
            ))
            .map_err(draw_err)?
            .label("load")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], BLUE));
        chart
            .draw_secondary_series(LineSeries::new(
                o.minutes
                    .iter()
                    .map(|m| (m.minute as f64, m.replicas as f64)),
                &RED,
            ))
            .map_err(draw_err)?
            .label("replicas")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], RED));
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(draw_err)?;
        let max_p99 = o
            .minutes
            .iter()
            .map(|m| m.p99_ms)
            .fold(slo_ms * 1.5, f64::max);
        let mut lat = ChartBuilder::on(&bottom)
            .margin(8)
            .x_label_area_size(25)
            .y_label_area_size(50)
            .right_y_label_area_size(50)
            .build_cartesian_2d(0f64..minutes, 0f64..max_p99)
            .map_err(draw_err)?;
        lat.configure_mesh()
            .y_desc("p99 ms")
            .x_desc("minute")
            .disable_x_mesh()
            .draw()
            .map_err(draw_err)?;
        lat.draw_series(LineSeries::new(
            o.minutes.iter().map(|m| (m.minute as f64, m.p99_ms)),
            &BLACK,
        ))
        .map_err(draw_err)?;
        lat.draw_series(LineSeries::new(
            [(0.0, slo_ms), (minutes, slo_ms)],
            RED.mix(0.6).stroke_width(1),
        ))
        .map_err(draw_err)?;
    }
    root.present().map_err(draw_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Policy, Settings};
    use crate::profile::ServiceProfile;
    use crate::sim::{SimConfig, simulate};
    use crate::trace::Trace;

    #[test]
    fn a_plot_is_a_png_with_a_panel_per_policy() {
        let trace = Trace {
            name: "t".into(),
            counts: (0..1200).map(|s| if s > 600 { 60 } else { 10 }).collect(),
            history: 0,
            instants: Vec::new(),
        };
        let p = ServiceProfile::default();
        let outs: Vec<_> = ["queue-hpa", "forecast"]
            .iter()
            .map(|n| {
                simulate(
                    &trace,
                    Policy::new(n, Settings::default()).unwrap(),
                    &p,
                    &SimConfig::default(),
                )
            })
            .collect();
        let dir = std::env::temp_dir().join(format!("inferd-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("p.png");
        draw(&path, &outs, 500.0).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        // Width 1400, height 360 per policy (IHDR).
        let h = u32::from_be_bytes([bytes[20], bytes[21], bytes[22], bytes[23]]);
        assert_eq!(h, 720);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
