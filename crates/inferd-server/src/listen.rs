//! The HTTP listener: HTTP/1.1 and HTTP/2 on one port, with the limits a server in front of
//! untrusted clients needs (axum's own `serve` has none of them):
//!
//! - at most `max_connections` connections (HTTP and gRPC share the count); a connection past
//!   it is closed at once, so a flood cannot exhaust file descriptors or memory;
//! - HTTP/1.1: once the first byte of a request head arrives, the whole head must arrive within
//!   `read_timeout`, or the connection is dropped (slowloris); the body has the same deadline,
//!   enforced by the handlers, which answer 408 (`http::read_body`);
//! - a connection with no request in progress for `idle_timeout` is closed (HTTP/2: GOAWAY);
//! - a response the client stops reading (a write blocked for `idle_timeout`) is dropped.
//!
//! The inference slot (`--max-inflight-requests`) is taken only once a body is in, so clients
//! that stall while sending hold a connection, never a slot.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower_service::Service;

/// Connection limits and timeouts of the HTTP port.
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    /// Deadline for a request's head, and (enforced by the handlers) its body.
    pub read_timeout: Duration,
    /// A connection with no request in progress this long is closed.
    pub idle_timeout: Duration,
    /// Concurrent HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_concurrent_streams: 256,
        }
    }
}

/// Accepts and serves HTTP connections until `shutdown` turns true, then asks every connection
/// to finish its requests and close, and returns when all have.
pub(crate) async fn serve_http(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    connections: Arc<Semaphore>,
    tls: Option<Arc<crate::tls::Tls>>,
    shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    let mut tasks = JoinSet::new();
    let mut stop = shutdown.clone();
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => break,
            accepted = listener.accept() => {
                let tcp = match accepted {
                    Ok((tcp, _)) => tcp,
                    Err(e) => {
                        // Out of descriptors, or a connection reset before accept: keep serving.
                        tracing::warn!("accepting an HTTP connection failed: {e}");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let Some(permit) = admit_connection(&connections) else {
                    continue; // `tcp` drops: closed at once
                };
                // Small request/response exchanges: never wait on Nagle's algorithm.
                let _ = tcp.set_nodelay(true);
                let (app, stop) = (app.clone(), shutdown.clone());
                match &tls {
                    None => {
                        tasks.spawn(serve_connection(tcp, app, limits, permit, stop));
                    }
                    Some(tls) => {
                        let acceptor = tls.http_acceptor();
                        tasks.spawn(async move {
                            // The handshake is part of the head: it gets the read timeout.
                            match tokio::time::timeout(limits.read_timeout, acceptor.accept(tcp)).await {
                                Ok(Ok(stream)) => serve_connection(stream, app, limits, permit, stop).await,
                                Ok(Err(e)) => tracing::debug!("TLS handshake failed: {e}"),
                                Err(_) => tracing::debug!("TLS handshake timed out"),
                            }
                        });
                    }
                }
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// Resolves once the shutdown flag is set (or its sender is gone).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

/// A connection slot, or `None` (with a rate-limited warning) when all are taken.
pub(crate) fn admit_connection(connections: &Arc<Semaphore>) -> Option<OwnedSemaphorePermit> {
    static LAST_WARNED: AtomicU64 = AtomicU64::new(0);
    match connections.clone().try_acquire_owned() {
        Ok(p) => Some(p),
        Err(_) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            if LAST_WARNED.swap(now, Ordering::Relaxed) != now {
                tracing::warn!("refusing connections: all --max-connections slots are in use");
            }
            None
        }
    }
}

async fn serve_connection<I>(
    tcp: I,
    app: Router,
    limits: HttpLimits,
    _permit: OwnedSemaphorePermit,
    mut shutdown: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Tracked {
        inner: tcp,
        activity: activity.clone(),
    });
    let svc_activity = activity.clone();
    let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let guard = svc_activity.request_started();
        let mut app = app.clone();
        async move {
            let resp = match app.call(req.map(Body::new)).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            Ok::<_, Infallible>(resp.map(|inner| Body::new(Guarded { inner, guard })))
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .keep_alive_interval(Some(limits.idle_timeout / 2))
        .keep_alive_timeout(limits.read_timeout);
    let conn = builder.serve_connection_with_upgrades(io, svc);
    tokio::pin!(conn);
    let mut closing = false;
    loop {
        let wake = activity.next_check(limits);
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = activity.head_started.notified() => {}
            _ = stopped(&mut shutdown), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = tokio::time::sleep_until(wake) => match activity.verdict(limits) {
                Verdict::Fine => {}
                Verdict::Idle => {
                    if closing {
                        return; // asked to close an idle time ago and still open: drop it
                    }
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                    activity.mark_idle_close();
                }
                Verdict::Stalled(why) => {
                    tracing::debug!("closing an HTTP connection: {why}");
                    return;
                }
            },
        }
    }
}

/// What a connection's clock says.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Fine,
    /// No request in progress for the idle timeout.
    Idle,
    /// A head that did not arrive in time, or a response the client does not read.
    Stalled(&'static str),
}

const NONE: u64 = u64::MAX;

/// A connection's timestamps, in milliseconds since it was accepted.
#[derive(Debug)]
struct Activity {
    start: Instant,
    /// When the first byte of a request head arrived with no request in progress (HTTP/1.1).
    head_since: AtomicU64,
    /// When the last request finished, or the connection opened.
    idle_since: AtomicU64,
    /// When a write started waiting on the client.
    write_blocked_since: AtomicU64,
    /// Requests in progress (head received, response not yet fully sent).
    active: AtomicUsize,
    /// The connection speaks HTTP/2 (its preface arrived): no head deadline, streams instead.
    h2: AtomicBool,
    /// Whether the first bytes have been looked at.
    sniffed: AtomicBool,
    /// Wakes the connection's watchdog when a head starts: its deadline is nearer than the one
    /// it sleeps toward.
    head_started: tokio::sync::Notify,
}

impl Activity {
    fn new() -> Self {
        Activity {
            start: Instant::now(),
            head_since: AtomicU64::new(NONE),
            idle_since: AtomicU64::new(0),
            write_blocked_since: AtomicU64::new(NONE),
            active: AtomicUsize::new(0),
            h2: AtomicBool::new(false),
            sniffed: AtomicBool::new(false),
            head_started: tokio::sync::Notify::new(),
        }
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn at(&self, ms: u64) -> Instant {
        self.start + Duration::from_millis(ms)
    }

    fn on_read(&self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if !self.sniffed.swap(true, Ordering::Relaxed) && bytes.starts_with(b"PRI * HTTP/2") {
            self.h2.store(true, Ordering::Relaxed);
        }
        if !self.h2.load(Ordering::Relaxed)
            && self.active.load(Ordering::Acquire) == 0
            && self.head_since.load(Ordering::Relaxed) == NONE
        {
            self.head_since.store(self.now(), Ordering::Relaxed);
            self.head_started.notify_one();
        }
    }

    fn on_write(&self, blocked: bool) {
        let v = if blocked {
            if self.write_blocked_since.load(Ordering::Relaxed) != NONE {
                return;
            }
            self.now()
        } else {
            NONE
        };
        self.write_blocked_since.store(v, Ordering::Relaxed);
    }

    fn request_started(self: &Arc<Self>) -> RequestGuard {
        self.active.fetch_add(1, Ordering::AcqRel);
        self.head_since.store(NONE, Ordering::Relaxed);
        RequestGuard {
            activity: self.clone(),
        }
    }

    fn mark_idle_close(&self) {
        self.idle_since.store(self.now(), Ordering::Relaxed);
    }

    /// The next instant a deadline could pass.
    fn next_check(&self, limits: HttpLimits) -> Instant {
        let now = self.now();
        let mut next = now + limits.idle_timeout.as_millis() as u64;
        let head = self.head_since.load(Ordering::Relaxed);
        if head != NONE {
            next = next.min(head + limits.read_timeout.as_millis() as u64);
        }
        if self.active.load(Ordering::Acquire) == 0 {
            next = next.min(
                self.idle_since.load(Ordering::Relaxed) + limits.idle_timeout.as_millis() as u64,
            );
        }
        let blocked = self.write_blocked_since.load(Ordering::Relaxed);
        if blocked != NONE {
            next = next.min(blocked + limits.idle_timeout.as_millis() as u64);
        }
        self.at(next.max(now) + 1)
    }

    fn verdict(&self, limits: HttpLimits) -> Verdict {
        let now = self.now();
        let passed =
            |since: u64, limit: Duration| since != NONE && now >= since + limit.as_millis() as u64;
        if passed(
            self.write_blocked_since.load(Ordering::Relaxed),
            limits.idle_timeout,
        ) {
            return Verdict::Stalled("the client stopped reading its response");
        }
        if passed(self.head_since.load(Ordering::Relaxed), limits.read_timeout) {
            return Verdict::Stalled(
                "a request head did not arrive within --http-read-timeout-secs",
            );
        }
        if self.active.load(Ordering::Acquire) == 0
            && self.head_since.load(Ordering::Relaxed) == NONE
            && passed(self.idle_since.load(Ordering::Relaxed), limits.idle_timeout)
        {
            return Verdict::Idle;
        }
        Verdict::Fine
    }
}

/// Held while a request is in progress; dropped with its response body.
struct RequestGuard {
    activity: Arc<Activity>,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let a = &self.activity;
        a.idle_since.store(a.now(), Ordering::Relaxed);
        a.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that ends its request's [`RequestGuard`] when it is sent or dropped.
struct Guarded {
    inner: Body,
    #[allow(dead_code)] // held for its Drop
    guard: RequestGuard,
}

impl hyper::body::Body for Guarded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        hyper::body::Body::is_end_stream(&self.inner)
    }

    fn size_hint(&self) -> SizeHint {
        hyper::body::Body::size_hint(&self.inner)
    }
}

/// The socket, noting reads and blocked writes in the connection's [`Activity`].
struct Tracked<I> {
    inner: I,
    activity: Arc<Activity>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Tracked<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = res {
            self.activity.on_read(&buf.filled()[before..]);
        }
        res
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Tracked<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.activity.on_write(res.is_pending());
        res
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.activity.on_write(res.is_pending());
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A gRPC connection holding one of the `--max-connections` slots until it closes.
#[derive(Debug)]
pub(crate) struct Counted<T> {
    inner: T,
    _permit: OwnedSemaphorePermit,
}

impl<T> Counted<T> {
    pub(crate) fn new(inner: T, permit: OwnedSemaphorePermit) -> Self {
        Counted {
            inner,
            _permit: permit,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<T: tonic::transport::server::Connected> tonic::transport::server::Connected for Counted<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> HttpLimits {
        HttpLimits {
            read_timeout: Duration::from_millis(100),
            idle_timeout: Duration::from_millis(300),
            max_concurrent_streams: 8,
        }
    }

    fn aged(ms: u64) -> Activity {
        let a = Activity::new();
        let mut a = a;
        a.start -= Duration::from_millis(ms);
        a
    }

    #[test]
    fn a_fresh_connection_is_fine_and_idles_out() {
        assert_eq!(aged(50).verdict(limits()), Verdict::Fine);
        assert_eq!(aged(400).verdict(limits()), Verdict::Idle);
    }

    #[test]
    fn a_head_started_and_not_finished_stalls_after_the_read_timeout() {
        let a = Arc::new(aged(1000));
        a.idle_since.store(990, Ordering::Relaxed);
        a.on_read(b"POST /v2/models/x/infer HTTP/1.1\r\n");
        assert_eq!(a.verdict(limits()), Verdict::Fine);
        a.head_since.store(800, Ordering::Relaxed);
        assert!(matches!(a.verdict(limits()), Verdict::Stalled(_)));
        // The head completes: the request is in progress, no deadline but the handler's.
        let g = a.request_started();
        assert_eq!(a.verdict(limits()), Verdict::Fine);
        drop(g);
        assert_eq!(a.verdict(limits()), Verdict::Fine, "idle clock restarts");
    }

    #[test]
    fn http2_reads_never_start_a_head_deadline() {
        let a = Arc::new(aged(1000));
        a.idle_since.store(990, Ordering::Relaxed);
        a.on_read(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        a.on_read(b"ping frame bytes");
        assert_eq!(a.head_since.load(Ordering::Relaxed), NONE);
    }

    #[test]
    fn a_request_in_progress_is_never_idle() {
        let a = Arc::new(aged(10_000));
        let _g = a.request_started();
        assert_eq!(a.verdict(limits()), Verdict::Fine);
    }

    #[test]
    fn a_write_blocked_past_the_idle_timeout_stalls() {
        let a = Arc::new(aged(1000));
        let _g = a.request_started();
        a.write_blocked_since.store(500, Ordering::Relaxed);
        assert!(matches!(a.verdict(limits()), Verdict::Stalled(_)));
        a.on_write(false);
        assert_eq!(a.verdict(limits()), Verdict::Fine);
    }

    #[test]
    fn next_check_is_the_nearest_deadline() {
        let a = Arc::new(aged(1000));
        a.idle_since.store(1000, Ordering::Relaxed);
        a.head_since.store(1000, Ordering::Relaxed);
        let wake = a.next_check(limits());
        let in_ms = wake.saturating_duration_since(Instant::now()).as_millis();
        assert!((90..=110).contains(&in_ms), "{in_ms}");
    }
}
