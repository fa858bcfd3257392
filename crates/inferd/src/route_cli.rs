//! `inferd route ...` and `inferd report ROUTE`: the admin API from a shell. Each command is
//! one call (or, for `apply`, one `PUT` per route in the file, in name order); the answer's
//! JSON goes to stdout, pretty-printed. Exit code: 0 done, 1 the server refused (its status
//! and message on stderr), 2 usage, file or connection errors.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde_json::Value;

/// Where the admin API is, and the token for it.
#[derive(Args, Debug, Clone)]
pub(crate) struct Endpoint {
    /// The server's admin API: its HTTP port, or --admin-port when it has one.
    #[arg(long, env = "INFERD_URL", default_value = "http://127.0.0.1:8000")]
    url: String,
    /// An admin token (`SECRET`, or `NAME:SECRET` as given to the server), sent as
    /// `Authorization: Bearer SECRET`.
    #[arg(long, env = "INFERD_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Why (recorded in the audit log with the token's name).
    #[arg(long)]
    reason: Option<String>,
    /// Seconds to wait for each answer.
    #[arg(long, default_value_t = 30.0)]
    timeout_secs: f64,
}

/// `inferd route ...`.
#[derive(Subcommand, Debug)]
pub(crate) enum RouteCommand {
    /// Every route with its state.
    List(Endpoint),
    /// One route: weights, state, step, analyses, reason.
    Get {
        /// The route.
        name: String,
        #[command(flatten)]
        at: Endpoint,
    },
    /// Create or replace every route of a routes file (TOML `[routes.NAME]` tables, the
    /// `--routes-file` schema), one PUT each, in name order.
    Apply {
        /// The routes file.
        file: PathBuf,
        #[command(flatten)]
        at: Endpoint,
    },
    /// Delete a route.
    Delete {
        /// The route.
        name: String,
        #[command(flatten)]
        at: Endpoint,
    },
    /// Promote a canary now.
    Promote {
        /// The route.
        name: String,
        #[command(flatten)]
        at: Endpoint,
    },
    /// Roll a canary back now.
    Abort {
        /// The route.
        name: String,
        #[command(flatten)]
        at: Endpoint,
    },
    /// Hold a canary at its step.
    Pause {
        /// The route.
        name: String,
        #[command(flatten)]
        at: Endpoint,
    },
    /// Resume a paused canary.
    Resume {
        /// The route.
        name: String,
        #[command(flatten)]
        at: Endpoint,
    },
    /// Switch a blue-green route to its other side.
    Switch {
        /// The route.
        name: String,
        #[command(flatten)]
        at: Endpoint,
    },
}

/// Why a call failed.
enum Failure {
    /// The server answered with an error status.
    Refused(u16, String),
    /// Anything else: usage, file, connection.
    Other(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Other(e)
    }
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    reason: Option<String>,
}

impl Client {
    fn new(at: &Endpoint) -> Result<Client> {
        if !(at.url.starts_with("http://") || at.url.starts_with("https://")) {
            bail!("--url '{}': must start with http:// or https://", at.url);
        }
        let http = crate::http_client::client(Duration::from_secs_f64(
            at.timeout_secs.clamp(0.001, 3600.0),
        ))?;
        Ok(Client {
            http,
            base: at.url.trim_end_matches('/').to_string(),
            // The server splits NAME:SECRET at the first colon; the secret is what is sent.
            token: at
                .token
                .as_deref()
                .map(|t| t.split_once(':').map_or(t, |(_, s)| s).to_string()),
            reason: at.reason.clone(),
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, Failure> {
        let mut url = reqwest::Url::parse(&format!("{}{path}", self.base))
            .with_context(|| format!("'{}{path}' is not a URL", self.base))?;
        if let Some(r) = &self.reason {
            url.query_pairs_mut().append_pair("reason", r);
        }
        let mut req = self.http.request(method.clone(), url.clone());
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(b.to_string());
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {url}"))?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .with_context(|| format!("{method} {url}: reading the answer"))?;
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if !status.is_success() {
            let msg = v
                .get("error")
                .and_then(Value::as_str)
                .map_or_else(|| v.to_string(), str::to_string);
            return Err(Failure::Refused(status.as_u16(), msg));
        }
        Ok(v)
    }
}

/// The routes of a routes file as JSON objects, in name order, each named.
fn routes_of(file: &Path) -> Result<Vec<(String, Value)>> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let doc: toml::Table = text
        .parse()
        .with_context(|| format!("{}: not TOML", file.display()))?;
    let Some(routes) = doc.get("routes") else {
        bail!("{}: no [routes.NAME] tables", file.display());
    };
    let toml::Value::Table(routes) = routes else {
        bail!(
            "{}: 'routes' must hold [routes.NAME] tables",
            file.display()
        );
    };
    routes
        .iter()
        .map(|(name, spec)| {
            let v = serde_json::to_value(spec)
                .with_context(|| format!("{}: route '{name}'", file.display()))?;
            Ok((name.clone(), v))
        })
        .collect()
}

fn path_of(name: &str) -> String {
    format!("/v2/routes/{}", url_segment(name))
}

/// Percent-encodes one path segment.
fn url_segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn run_route(cmd: RouteCommand) -> Result<Value, Failure> {
    use reqwest::Method;
    let action = |name: String, at: Endpoint, what: &'static str| async move {
        Client::new(&at)?
            .call(Method::POST, &format!("{}/{what}", path_of(&name)), None)
            .await
    };
    match cmd {
        RouteCommand::List(at) => {
            Client::new(&at)?
                .call(Method::GET, "/v2/routes", None)
                .await
        }
        RouteCommand::Get { name, at } => {
            Client::new(&at)?
                .call(Method::GET, &path_of(&name), None)
                .await
        }
        RouteCommand::Delete { name, at } => {
            Client::new(&at)?
                .call(Method::DELETE, &path_of(&name), None)
                .await
        }
        RouteCommand::Apply { file, at } => {
            let client = Client::new(&at)?;
            let mut applied = Vec::new();
            for (name, spec) in routes_of(&file)? {
                match client.call(Method::PUT, &path_of(&name), Some(spec)).await {
                    Ok(v) => applied.push(v),
                    Err(Failure::Refused(code, msg)) => {
                        let done: Vec<&str> =
                            applied.iter().filter_map(|v| v["name"].as_str()).collect();
                        return Err(Failure::Refused(
                            code,
                            format!(
                                "route '{name}': {msg} (applied before it: {done:?}; later routes not sent)"
                            ),
                        ));
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(Value::Array(applied))
        }
        RouteCommand::Promote { name, at } => action(name, at, "promote").await,
        RouteCommand::Abort { name, at } => action(name, at, "abort").await,
        RouteCommand::Pause { name, at } => action(name, at, "pause").await,
        RouteCommand::Resume { name, at } => action(name, at, "resume").await,
        RouteCommand::Switch { name, at } => action(name, at, "switch").await,
    }
}

fn finish(r: Result<Value, Failure>, what: &str) -> u8 {
    match r {
        Ok(v) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&v).unwrap_or_else(|_| v.to_string())
            );
            0
        }
        Err(Failure::Refused(code, msg)) => {
            eprintln!("inferd {what}: refused ({code}): {msg}");
            1
        }
        Err(Failure::Other(e)) => {
            eprintln!("inferd {what}: {e:#}");
            2
        }
    }
}

fn block_on<F: std::future::Future>(f: F) -> Result<F::Output> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(f))
}

/// Runs `inferd route ...`; the exit code.
pub(crate) fn route(cmd: RouteCommand) -> u8 {
    match block_on(run_route(cmd)) {
        Ok(r) => finish(r, "route"),
        Err(e) => finish(Err(Failure::Other(e)), "route"),
    }
}

/// Runs `inferd report ROUTE`; the exit code.
pub(crate) fn report(name: &str, at: &Endpoint) -> u8 {
    let r = block_on(async {
        Client::new(at)?
            .call(
                reqwest::Method::GET,
                &format!("{}/report", path_of(name)),
                None,
            )
            .await
    });
    match r {
        Ok(r) => finish(r, "report"),
        Err(e) => finish(Err(Failure::Other(e)), "report"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_routes_file_becomes_one_json_object_per_route_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("routes.toml");
        std::fs::write(
            &f,
            "[routes.b]\nkind = \"split\"\ntargets = [ { model = \"m\", version = 1, weight = 9 } ]\n\n\
             [routes.a]\nkind = \"bluegreen\"\nblue = { model = \"m\" }\ngreen = { model = \"n\" }\n",
        )
        .unwrap();
        let routes = routes_of(&f).unwrap();
        let names: Vec<&str> = routes.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(routes[1].1["targets"][0]["weight"], 9);
        std::fs::write(&f, "[models]\nx = 1\n").unwrap();
        assert!(format!("{:#}", routes_of(&f).unwrap_err()).contains("no [routes.NAME]"));
    }

    #[test]
    fn route_names_are_escaped_in_paths() {
        assert_eq!(path_of("a b/c"), "/v2/routes/a%20b%2Fc");
        assert_eq!(path_of("fraud-v2_x.y"), "/v2/routes/fraud-v2_x.y");
    }
}
