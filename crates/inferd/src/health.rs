//! `inferd health URL`: a container HEALTHCHECK for images without curl (inferd's has no shell).
//! Plain HTTP GET; exit 0 on a 200 answer, 1 otherwise.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// `host:port` and path of an `http://` URL.
pub(crate) fn split_url(url: &str) -> Result<(String, String)> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("'{url}': only http:// URLs are checked"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        bail!("'{url}': no host");
    }
    let authority = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    Ok((authority, path.to_string()))
}

/// Whether `url` answers 200 within `timeout`.
pub(crate) fn check(url: &str, timeout: Duration) -> Result<bool> {
    let (authority, path) = split_url(url)?;
    let addr = authority
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve '{authority}'"))?
        .next()
        .with_context(|| format!("no address for '{authority}'"))?;
    let mut s = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("cannot connect to {addr}"))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).context("no answer")?;
    Ok(head.starts_with(b"HTTP/1.") && &head[8..12] == b" 200")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_authority_and_path() {
        let (a, p) = split_url("http://127.0.0.1:8000/v2/health/ready").expect("url");
        assert_eq!(
            (a.as_str(), p.as_str()),
            ("127.0.0.1:8000", "/v2/health/ready")
        );
        let (a, p) = split_url("http://localhost").expect("url");
        assert_eq!((a.as_str(), p.as_str()), ("localhost:80", "/"));
        assert!(split_url("https://x/").is_err());
        assert!(split_url("http:///x").is_err());
    }
}
