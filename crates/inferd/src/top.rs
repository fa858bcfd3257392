//! `inferd top --url URL`: the console's overview in a terminal (ratatui), refreshing, for an
//! SSH session with no browser. Reads the console's `GET /ui/api/overview` (on the admin
//! listener when the server has one); `q`, Esc or Ctrl-C quits.
//!
//! Parsing ([`Overview::from_json`]) and drawing ([`draw`]) are pure and tested against
//! ratatui's test backend; the loop around them only fetches and waits for keys.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ratatui::Frame;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Paragraph, Row, Sparkline, Table};
use serde_json::Value;

/// `inferd top`'s flags.
#[derive(clap::Args, Debug)]
pub(crate) struct TopArgs {
    /// The server: its admin listener when it has one (`--admin-port`), else its HTTP port.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    url: String,
    /// Seconds between refreshes.
    #[arg(long, default_value_t = 2.0)]
    interval_secs: f64,
}

/// One version's row.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct VersionRow {
    version: String,
    state: String,
    reason: String,
}

/// One model's row.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ModelRow {
    name: String,
    versions: Vec<VersionRow>,
    rps: Option<f64>,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    errors: Option<f64>,
    queue: Option<u64>,
}

/// What the screen shows.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Overview {
    version: String,
    ready: bool,
    live: bool,
    inflight: u64,
    rps: Vec<f64>,
    p99_ms: Vec<f64>,
    models: Vec<ModelRow>,
    routes: Vec<(String, String, String)>,
}

/// Text from the server, made safe for a terminal: control characters (an escape sequence in a
/// model name would otherwise drive the terminal) become `?`.
pub(crate) fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

fn text(v: &Value) -> String {
    printable(v.as_str().unwrap_or_default())
}

impl Overview {
    /// Reads `GET /ui/api/overview`'s body.
    pub(crate) fn from_json(v: &Value) -> Overview {
        let series = |k: &str| -> Vec<f64> {
            v["series"]
                .as_array()
                .map(|a| a.iter().map(|p| p[k].as_f64().unwrap_or(0.0)).collect())
                .unwrap_or_default()
        };
        let models = v["models"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|m| ModelRow {
                        name: text(&m["name"]),
                        versions: m["versions"]
                            .as_array()
                            .map(|vs| {
                                vs.iter()
                                    .map(|x| VersionRow {
                                        version: text(&x["version"]),
                                        state: text(&x["state"]),
                                        reason: text(&x["reason"]),
                                    })
                                    .collect()
                            })
                            .unwrap_or_default(),
                        rps: m["now"]["rps"].as_f64(),
                        p50_ms: m["now"]["p50_ms"].as_f64(),
                        p99_ms: m["now"]["p99_ms"].as_f64(),
                        errors: m["now"]["errors"].as_f64(),
                        queue: m["now"]["queue"].as_u64(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let routes = v["routes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|r| (text(&r["name"]), text(&r["kind"]), text(&r["state"])))
                    .collect()
            })
            .unwrap_or_default();
        Overview {
            version: text(&v["server"]["version"]),
            ready: v["server"]["ready"].as_bool().unwrap_or(false),
            live: v["server"]["live"].as_bool().unwrap_or(false),
            inflight: v["server"]["inflight"].as_u64().unwrap_or(0),
            rps: series("rps"),
            p99_ms: series("p99_ms"),
            models,
            routes,
        }
    }
}

fn num(x: Option<f64>) -> String {
    x.map_or("-".into(), |x| {
        if x >= 100.0 {
            format!("{x:.0}")
        } else {
            format!("{x:.2}")
        }
    })
}

fn state_style(state: &str) -> Style {
    match state {
        "READY" | "promoted" => Style::default().fg(Color::Green),
        "LOADING" | "UNLOADING" | "progressing" | "paused" => Style::default().fg(Color::Yellow),
        _ => Style::default().fg(Color::Red),
    }
}

/// Draws `o` (fetched at `at`, or the last fetch's error) on the whole frame.
pub(crate) fn draw(f: &mut Frame, url: &str, o: &Overview, status: &str) {
    let [head, charts, table, routes, foot] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(5),
        Constraint::Min(4),
        Constraint::Length(if o.routes.is_empty() { 0 } else { 3 }),
        Constraint::Length(1),
    ])
    .areas(f.area());
    let health = if o.ready {
        Span::styled("ready", Style::default().fg(Color::Green))
    } else if o.live {
        Span::styled("live, not ready", Style::default().fg(Color::Yellow))
    } else {
        Span::styled("not live", Style::default().fg(Color::Red))
    };
    f.render_widget(
        Paragraph::new(Line::from(vec![
            Span::styled("inferd top ", Style::default().add_modifier(Modifier::BOLD)),
            Span::raw(format!("{url}  v{}  ", o.version)),
            health,
            Span::raw(format!(
                "  {} in flight  {} models",
                o.inflight,
                o.models.len()
            )),
        ])),
        head,
    );
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(charts);
    let to_u64 = |v: &[f64], scale: f64| -> Vec<u64> {
        v.iter()
            .map(|x| (x * scale).round().max(0.0) as u64)
            .collect()
    };
    let last = |v: &[f64]| v.last().copied();
    let width = left.width.saturating_sub(2) as usize;
    let tail = |v: &[f64]| v[v.len().saturating_sub(width)..].to_vec();
    f.render_widget(
        Sparkline::default()
            .block(
                Block::default()
                    .borders(Borders::ALL)
                    .title(format!("requests/s {} (15 min)", num(last(&o.rps)))),
            )
            .data(to_u64(&tail(&o.rps), 100.0)),
        left,
    );
    f.render_widget(
        Sparkline::default()
            .block(
                Block::default()
                    .borders(Borders::ALL)
                    .title(format!("p99 ms {}", num(last(&o.p99_ms)))),
            )
            .style(Style::default().fg(Color::Red))
            .data(to_u64(&tail(&o.p99_ms), 100.0)),
        right,
    );
    let rows = o.models.iter().map(|m| {
        let versions: Vec<Span> = m
            .versions
            .iter()
            .flat_map(|v| {
                [
                    Span::styled(format!("v{} {}", v.version, v.state), state_style(&v.state)),
                    Span::raw(if v.reason.is_empty() {
                        " ".to_string()
                    } else {
                        format!(" ({}) ", v.reason)
                    }),
                ]
            })
            .collect();
        Row::new(vec![
            Cell::from(m.name.clone()),
            Cell::from(Line::from(versions)),
            Cell::from(num(m.rps)),
            Cell::from(num(m.p50_ms)),
            Cell::from(num(m.p99_ms)),
            Cell::from(num(m.errors)),
            Cell::from(m.queue.map_or("-".into(), |q| q.to_string())),
        ])
    });
    f.render_widget(
        Table::new(
            rows,
            [
                Constraint::Percentage(22),
                Constraint::Percentage(38),
                Constraint::Length(8),
                Constraint::Length(8),
                Constraint::Length(8),
                Constraint::Length(8),
                Constraint::Length(6),
            ],
        )
        .header(
            Row::new([
                "model", "versions", "req/s", "p50 ms", "p99 ms", "err/s", "queue",
            ])
            .style(Style::default().add_modifier(Modifier::BOLD)),
        )
        .block(Block::default().borders(Borders::ALL).title("models")),
        table,
    );
    if !o.routes.is_empty() {
        let spans: Vec<Span> = o
            .routes
            .iter()
            .flat_map(|(n, k, s)| {
                [
                    Span::raw(format!("{n} ({k}) ")),
                    Span::styled(s.clone(), state_style(s)),
                    Span::raw("   "),
                ]
            })
            .collect();
        f.render_widget(
            Paragraph::new(Line::from(spans))
                .block(Block::default().borders(Borders::ALL).title("routes")),
            routes,
        );
    }
    f.render_widget(
        Paragraph::new(format!("{status}   q quits")).style(Style::default().fg(Color::Gray)),
        foot,
    );
}

async fn fetch(http: &reqwest::Client, url: &str) -> Result<Overview> {
    let full = format!("{}/ui/api/overview", url.trim_end_matches('/'));
    let resp = http
        .get(&full)
        .send()
        .await
        .with_context(|| format!("GET {full}"))?;
    let status = resp.status();
    let bytes = resp
        .bytes()
        .await
        .with_context(|| format!("GET {full}: reading the answer"))?;
    let body: Value = serde_json::from_slice(&bytes)
        .with_context(|| format!("GET {full}: the answer is not JSON (is this inferd?)"))?;
    if !status.is_success() {
        bail!(
            "GET {full}: {} {}",
            status.as_u16(),
            printable(body["error"].as_str().unwrap_or_default())
        );
    }
    Ok(Overview::from_json(&body))
}

/// Runs `inferd top` until the operator quits. Exit code: 0, or 2 when the server cannot be
/// reached at the start.
pub(crate) fn run(args: TopArgs) -> Result<u8> {
    crate::http_client::check_url(&args.url)?;
    let interval = Duration::from_secs_f64(args.interval_secs.clamp(0.2, 3600.0));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let http = crate::http_client::client(Duration::from_secs(5))?;
    // A server that cannot be read at all is an error before the screen is taken over.
    let mut overview = rt.block_on(fetch(&http, &args.url))?;
    let mut status = format!("updated {}", clock());
    let mut terminal = ratatui::init();
    let result = (|| -> Result<()> {
        loop {
            terminal.draw(|f| draw(f, &args.url, &overview, &status))?;
            let next = Instant::now() + interval;
            while let Some(wait) = next.checked_duration_since(Instant::now()) {
                if event::poll(wait)?
                    && let Event::Key(k) = event::read()?
                {
                    let ctrl_c =
                        k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
                    if k.kind == KeyEventKind::Press
                        && (matches!(k.code, KeyCode::Char('q') | KeyCode::Esc) || ctrl_c)
                    {
                        return Ok(());
                    }
                }
            }
            match rt.block_on(fetch(&http, &args.url)) {
                Ok(o) => {
                    overview = o;
                    status = format!("updated {}", clock());
                }
                Err(e) => {
                    status = format!("{} (showing the last answer)", printable(&format!("{e:#}")))
                }
            }
        }
    })();
    ratatui::restore();
    result.map(|()| 0)
}

/// The time of day (UTC), for the status line.
fn clock() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!(
        "{:02}:{:02}:{:02} UTC",
        secs / 3600 % 24,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;
    use serde_json::json;

    fn sample() -> Value {
        json!({
            "server": {"version": "0.1.0", "live": true, "ready": true, "inflight": 3},
            "series": [{"t": 1.0, "rps": 0.0, "p99_ms": 0.0}, {"t": 3.0, "rps": 12.5, "p99_ms": 4.0}],
            "models": [
                {"name": "add_sub", "versions": [{"version": "1", "state": "READY", "reason": ""}],
                 "now": {"rps": 12.5, "p50_ms": 0.8, "p99_ms": 4.0, "errors": 0.0, "queue": 2}},
                {"name": "broken\u{1b}[2J", "versions": [{"version": "1", "state": "UNAVAILABLE",
                 "reason": "no model file"}], "now": null},
            ],
            "routes": [{"name": "fraud", "kind": "canary", "state": "progressing"}],
        })
    }

    fn screen(o: &Overview) -> String {
        let mut t = Terminal::new(TestBackend::new(120, 20)).unwrap();
        t.draw(|f| draw(f, "http://x:8000", o, "updated now"))
            .unwrap();
        let buf = t.backend().buffer().clone();
        (0..buf.area.height)
            .map(|y| {
                (0..buf.area.width)
                    .map(|x| buf[(x, y)].symbol().to_string())
                    .collect::<String>()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn the_screen_shows_every_model_its_states_and_numbers() {
        let o = Overview::from_json(&sample());
        let s = screen(&o);
        assert!(s.contains("add_sub"), "{s}");
        assert!(s.contains("v1 READY"), "{s}");
        assert!(s.contains("12.50"), "{s}");
        assert!(s.contains("v1 UNAVAILABLE (no model file)"), "{s}");
        assert!(s.contains("fraud (canary) progressing"), "{s}");
        assert!(s.contains("ready") && s.contains("3 in flight"), "{s}");
    }

    #[test]
    fn control_characters_from_the_server_never_reach_the_terminal() {
        let o = Overview::from_json(&sample());
        assert_eq!(o.models[1].name, "broken?[2J");
        assert!(!screen(&o).contains('\u{1b}'));
    }

    #[test]
    fn a_partial_answer_is_read_without_panicking() {
        let o = Overview::from_json(&json!({"models": [{"name": 7}]}));
        assert_eq!(o.models.len(), 1);
        assert!(!o.ready);
        screen(&o);
    }
}
