//! TLS on both listeners (`--tls-cert-file`, `--tls-key-file`, PEM), mutual TLS with
//! `--tls-client-ca-file`, through rustls (ring). The certificate is read again on SIGHUP and
//! when its files change (checked every few seconds); a reload that fails keeps the old
//! certificate and says why. Handshakes run per connection, off the accept loop, with the read
//! timeout: a client that speaks plain HTTP, or nothing, to a TLS port is closed.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// Where the PEM files are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates client certificates must chain to; set, a client without one is refused.
    pub client_ca: Option<PathBuf>,
}

/// A TLS file that cannot be used: which file, and why.
#[derive(Debug, thiserror::Error)]
#[error("{}: {reason}", file.display())]
pub struct TlsError {
    /// The file.
    pub file: PathBuf,
    /// Why.
    pub reason: String,
}

fn err(file: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError {
        file: file.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// The two server configurations (HTTP offers h2 and http/1.1, gRPC h2 only), reloadable.
#[derive(Debug)]
pub struct Tls {
    files: TlsFiles,
    http: RwLock<Arc<ServerConfig>>,
    grpc: RwLock<Arc<ServerConfig>>,
    stamp: RwLock<Vec<Option<SystemTime>>>,
}

fn config(files: &TlsFiles, alpn: &[&[u8]]) -> Result<ServerConfig, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| err(&files.cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| err(&files.cert, e))?;
    if chain.is_empty() {
        return Err(err(&files.cert, "no certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| err(&files.key, format!("no usable private key: {e}")))?;
    // ring, deprecated in rustls 0.23.48 only because it lacks post-quantum key exchange:
    // aws-lc-rs would add it at the price of cmake and minutes more of every cold build.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| err(&files.cert, e))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca).map_err(|e| err(ca, e))? {
                roots
                    .add(c.map_err(|e| err(ca, e))?)
                    .map_err(|e| err(ca, e))?;
            }
            if roots.is_empty() {
                return Err(err(ca, "no CA certificate in the file"));
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| err(ca, e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut cfg = builder
        .with_single_cert(chain, key)
        .map_err(|e| err(&files.key, format!("does not match the certificate: {e}")))?;
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(cfg)
}

fn stamps(files: &TlsFiles) -> Vec<Option<SystemTime>> {
    [
        Some(&files.cert),
        Some(&files.key),
        files.client_ca.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
    .collect()
}

impl Tls {
    /// Reads the files; an error names the file and the reason.
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let http = config(&files, &[b"h2", b"http/1.1"])?;
        let grpc = config(&files, &[b"h2"])?;
        Ok(Tls {
            stamp: RwLock::new(stamps(&files)),
            files,
            http: RwLock::new(Arc::new(http)),
            grpc: RwLock::new(Arc::new(grpc)),
        })
    }

    /// Reads the files again; on failure the current certificate stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let http = config(&self.files, &[b"h2", b"http/1.1"])?;
        let grpc = config(&self.files, &[b"h2"])?;
        if let Ok(mut h) = self.http.write() {
            *h = Arc::new(http);
        }
        if let Ok(mut g) = self.grpc.write() {
            *g = Arc::new(grpc);
        }
        if let Ok(mut s) = self.stamp.write() {
            *s = stamps(&self.files);
        }
        Ok(())
    }

    /// The acceptor for new HTTP connections.
    pub fn http_acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(
            self.http
                .read()
                .map(|c| c.clone())
                .unwrap_or_else(|p| p.into_inner().clone()),
        )
    }

    /// The acceptor for new gRPC connections.
    pub fn grpc_acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(
            self.grpc
                .read()
                .map(|c| c.clone())
                .unwrap_or_else(|p| p.into_inner().clone()),
        )
    }

    /// Reloads on SIGHUP and when the files' modification times change.
    pub async fn watch(self: Arc<Self>) {
        #[cfg(unix)]
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        loop {
            #[cfg(unix)]
            let signalled = async {
                match hup.as_mut() {
                    Some(h) => {
                        h.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            #[cfg(not(unix))]
            let signalled = std::future::pending::<()>();
            let why = tokio::select! {
                _ = signalled => "SIGHUP",
                _ = tokio::time::sleep(Duration::from_secs(2)) => {
                    let changed = self.stamp.read().map(|s| *s != stamps(&self.files)).unwrap_or(false);
                    if !changed {
                        continue;
                    }
                    "a changed file"
                }
            };
            match self.reload() {
                Ok(()) => tracing::info!("TLS certificate reloaded ({why})"),
                Err(e) => {
                    // Keep serving with the old one; do not retry until the files change again.
                    if let Ok(mut s) = self.stamp.write() {
                        *s = stamps(&self.files);
                    }
                    tracing::warn!(
                        "TLS reload ({why}) failed, keeping the current certificate: {e}"
                    );
                }
            }
        }
    }
}

/// A gRPC connection, plain or TLS, that tonic can serve (it asks every connection for its
/// peer).
#[derive(Debug)]
pub enum MaybeTls {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<TlsStream<TcpStream>>),
}

macro_rules! both {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            MaybeTls::Plain($s) => {
                let $s = Pin::new($s);
                $e
            }
            MaybeTls::Tls($s) => {
                let $s = Pin::new($s.as_mut());
                $e
            }
        }
    };
}

impl AsyncRead for MaybeTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        both!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for MaybeTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        both!(self, s => s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        both!(self, s => s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            MaybeTls::Plain(s) => s.is_write_vectored(),
            MaybeTls::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        both!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        both!(self, s => s.poll_shutdown(cx))
    }
}

impl tonic::transport::server::Connected for MaybeTls {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        match self {
            MaybeTls::Plain(s) => s.connect_info(),
            MaybeTls::Tls(s) => s.get_ref().0.connect_info(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_garbage_files_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").expect("write");
        let missing = dir.path().join("missing.pem");
        let e = Tls::load(TlsFiles {
            cert: missing.clone(),
            key: junk.clone(),
            client_ca: None,
        })
        .expect_err("missing cert");
        assert_eq!(e.file, missing);
        let e = Tls::load(TlsFiles {
            cert: junk.clone(),
            key: junk.clone(),
            client_ca: None,
        })
        .expect_err("garbage");
        assert_eq!(e.file, junk);
        assert!(e.to_string().contains("junk.pem"), "{e}");
    }
}
