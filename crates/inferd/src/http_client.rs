//! The HTTP client every CLI subcommand that talks to a server uses (`route`, `report`,
//! `drift`, `top`, `autoscale control`): reqwest speaking TLS through rustls with the provider
//! the process installs, ring, as the server's TLS and inferd-store use (deprecated only for
//! lacking post-quantum key exchange).

use std::time::Duration;

use anyhow::{Context, Result, bail};

/// A client whose requests give up after `timeout`.
pub(crate) fn client(timeout: Duration) -> Result<reqwest::Client> {
    #[allow(deprecated)]
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .context("cannot build the HTTP client")
}

/// Refuses a `--url` that is not http(s), naming the flag.
pub(crate) fn check_url(url: &str) -> Result<()> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        bail!("--url '{url}': must start with http:// or https://");
    }
    Ok(())
}
