//! Gathers a gRPC connection's writes so that an answer, and answers finished together, leave in
//! one write.
//!
//! A unary gRPC answer is three HTTP/2 frames: headers, data and trailers. hyper hands the data
//! to the connection and then waits for send capacity before it polls the body for the trailers;
//! the connection task, which tokio runs next, writes what it has. So each answer took two
//! `writev` calls (headers and data, then the 10-byte trailers; `strace` on the server), two TCP
//! segments and two wake-ups of the client. A batch that finishes several requests of one
//! connection at once likewise wrote once per answer.
//!
//! [`Coalescing`] copies small writes into a buffer. The first flush after new data yields once
//! instead (a deferred wake-up: tokio polls the task again after the tasks that are ready have
//! run), so the trailers, and the other answers of the batch, join the buffer; the next flush
//! writes it all at once. Large writes pass straight through when nothing is buffered, the
//! buffer is written out before it passes 64 KiB, and a drained buffer keeps at most 16 KiB.

use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Writes at least this large pass straight through when nothing is buffered.
const PASS_THROUGH: usize = 16 * 1024;
/// The buffer is written out before it would grow past this.
const HIGH_WATER: usize = 64 * 1024;

/// An I/O object whose writes are gathered until flush (see the module docs).
#[derive(Debug)]
pub struct Coalescing<T> {
    inner: T,
    buf: Vec<u8>,
    /// Bytes of `buf` already written.
    pos: usize,
    /// The pending flush has already yielded once.
    yielded: bool,
}

impl<T> Coalescing<T> {
    /// Wraps `inner`.
    pub fn new(inner: T) -> Self {
        Coalescing {
            inner,
            buf: Vec::new(),
            pos: 0,
            yielded: false,
        }
    }

    /// The wrapped I/O object.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncWrite + Unpin> Coalescing<T> {
    /// Writes the buffered bytes to `inner` until none are left.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while self.pos < self.buf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.pos..]))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.pos += n;
        }
        self.buf.clear();
        self.pos = 0;
        // An idle connection keeps at most a small buffer, whatever its last burst needed.
        self.buf.shrink_to(PASS_THROUGH);
        Poll::Ready(Ok(()))
    }

    /// Makes room for `len` more bytes; `Ok(false)`: nothing is buffered and the write is large,
    /// so it should go straight through.
    fn poll_reserve(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<std::io::Result<bool>> {
        if self.buf.len() - self.pos + len > HIGH_WATER {
            ready!(self.poll_drain(cx))?;
        }
        Poll::Ready(Ok(!(self.buf.is_empty() && len >= PASS_THROUGH)))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalescing<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalescing<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if !ready!(this.poll_reserve(cx, data.len()))? {
            return Pin::new(&mut this.inner).poll_write(cx, data);
        }
        this.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let len = bufs.iter().map(|b| b.len()).sum();
        if !ready!(this.poll_reserve(cx, len))? {
            return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        }
        for b in bufs {
            this.buf.extend_from_slice(b);
        }
        Poll::Ready(Ok(len))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.pos < this.buf.len() && !this.yielded {
            this.yielded = true;
            // A fresh `yield_now` registers a deferred wake-up on its first poll.
            let yield_once = std::pin::pin!(tokio::task::yield_now());
            let _ = yield_once.poll(cx);
            return Poll::Pending;
        }
        ready!(this.poll_drain(cx))?;
        this.yielded = false;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<T: tonic::transport::server::Connected> tonic::transport::server::Connected for Coalescing<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// Records every write and flush that reaches it.
    #[derive(Default)]
    struct Recorder {
        writes: Vec<Vec<u8>>,
        flushes: usize,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.writes.push(data.to_vec());
            Poll::Ready(Ok(data.len()))
        }
        fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            self.flushes += 1;
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// A socket that counts the writes reaching it.
    struct Counting {
        inner: tokio::net::TcpStream,
        writes: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    }

    impl AsyncRead for Counting {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Counting {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let r = Pin::new(&mut self.inner).poll_write(cx, data);
            if matches!(r, Poll::Ready(Ok(_))) {
                self.writes
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            r
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
            if matches!(r, Poll::Ready(Ok(_))) {
                self.writes
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            r
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }
        fn poll_shutdown(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    impl tonic::transport::server::Connected for Counting {
        type ConnectInfo = ();
        fn connect_info(&self) {}
    }

    type HttpRequest = tonic::codegen::http::Request<tonic::body::Body>;
    type HttpResponse = tonic::codegen::http::Response<tonic::body::Body>;

    /// A unary gRPC method, `/test.Answers/Call`, whose answer carries a 2560-byte tensor (a
    /// batch of 64 ten-float rows) and becomes ready on a wake-up from another thread, as an
    /// inference answer does when an executor thread finishes it.
    #[derive(Clone)]
    struct Answers;

    impl tonic::server::NamedService for Answers {
        const NAME: &'static str = "test.Answers";
    }

    struct Call;

    impl tonic::server::UnaryService<crate::pb::ModelInferRequest> for Call {
        type Response = crate::pb::ModelInferResponse;
        type Future = tonic::codegen::BoxFuture<tonic::Response<Self::Response>, tonic::Status>;

        fn call(&mut self, _: tonic::Request<crate::pb::ModelInferRequest>) -> Self::Future {
            Box::pin(async {
                let _ = tokio::task::spawn_blocking(|| ()).await;
                Ok(tonic::Response::new(crate::pb::ModelInferResponse {
                    raw_output_contents: vec![bytes::Bytes::from(vec![7u8; 2560])],
                    ..Default::default()
                }))
            })
        }
    }

    impl tonic::codegen::Service<HttpRequest> for Answers {
        type Response = HttpResponse;
        type Error = std::convert::Infallible;
        type Future = tonic::codegen::BoxFuture<HttpResponse, std::convert::Infallible>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: HttpRequest) -> Self::Future {
            Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
                Ok(grpc.unary(Call, req).await)
            })
        }
    }

    /// Through a real tonic server and client on one worker thread, as `inferd serve` runs
    /// them: each unary answer (headers, data, trailers) reaches the socket in one write.
    /// Without the wrapper, h2 writes an answer's trailers after its (large) data on their own:
    /// two writes per answer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_grpc_answer_leaves_in_one_write() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let writes = Arc::new(AtomicUsize::new(0));
        let counter = writes.clone();
        let incoming = tokio_stream::StreamExt::map(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            move |conn| {
                conn.map(|tcp| {
                    let _ = tcp.set_nodelay(true);
                    Coalescing::new(Counting {
                        inner: tcp,
                        writes: counter.clone(),
                    })
                })
            },
        );
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(Answers)
                .serve_with_incoming(incoming),
        );
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = tonic::client::Grpc::new(channel);
        let mut call = async || {
            client.ready().await.unwrap();
            let answer: tonic::Response<crate::pb::ModelInferResponse> = client
                .unary(
                    tonic::Request::new(crate::pb::ModelInferRequest::default()),
                    tonic::codegen::http::uri::PathAndQuery::from_static("/test.Answers/Call"),
                    tonic_prost::ProstCodec::default(),
                )
                .await
                .unwrap();
            assert_eq!(answer.into_inner().raw_output_contents[0].len(), 2560);
        };
        // The first call also carries the connection's settings exchange.
        call().await;
        let before = writes.load(Ordering::Relaxed);
        const CALLS: usize = 20;
        for _ in 0..CALLS {
            call().await;
        }
        let n = writes.load(Ordering::Relaxed) - before;
        assert!(
            (CALLS..=CALLS + 2).contains(&n),
            "{n} writes for {CALLS} answers"
        );
    }

    #[tokio::test]
    async fn small_writes_leave_in_one_write_on_flush() {
        let mut io = Coalescing::new(Recorder::default());
        io.write_all(b"headers").await.unwrap();
        io.write_all(b"data").await.unwrap();
        assert!(
            io.get_ref().writes.is_empty(),
            "nothing is written before the flush"
        );
        io.flush().await.unwrap();
        assert_eq!(io.get_ref().writes, vec![b"headersdata".to_vec()]);
        assert_eq!(io.get_ref().flushes, 1);
    }

    #[tokio::test]
    async fn a_flush_yields_once_so_the_trailers_join_the_write() {
        let mut io = Coalescing::new(Recorder::default());
        io.write_all(b"headers+data").await.unwrap();
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut io).poll_flush(&mut cx).is_pending());
        assert!(io.get_ref().writes.is_empty());
        // The stream's trailers arrive before the connection task is polled again.
        io.write_all(b"+trailers").await.unwrap();
        assert!(Pin::new(&mut io).poll_flush(&mut cx).is_ready());
        assert_eq!(io.get_ref().writes, vec![b"headers+data+trailers".to_vec()]);
        // The next flush with new data yields again.
        io.write_all(b"next").await.unwrap();
        assert!(Pin::new(&mut io).poll_flush(&mut cx).is_pending());
        io.flush().await.unwrap();
        assert_eq!(io.get_ref().writes.len(), 2);
    }

    #[tokio::test]
    async fn a_flush_with_nothing_buffered_does_not_yield() {
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut io = Coalescing::new(Recorder::default());
        assert!(Pin::new(&mut io).poll_flush(&mut cx).is_ready());
        assert_eq!(io.get_ref().flushes, 1);
    }

    #[tokio::test]
    async fn large_writes_pass_through_and_bytes_keep_their_order() {
        let mut io = Coalescing::new(Recorder::default());
        let big = vec![7u8; PASS_THROUGH];
        io.write_all(&big).await.unwrap();
        assert_eq!(
            io.get_ref().writes.len(),
            1,
            "a large write with nothing buffered goes at once"
        );
        // Mixed sizes: whatever the grouping, the bytes arrive in order and in full, and no
        // write grows past the high-water mark or a passed-through chunk.
        let mut expected = big.clone();
        for i in 0..200u32 {
            let chunk = vec![(i % 251) as u8; (i as usize * 997) % (PASS_THROUGH * 2)];
            io.write_all(&chunk).await.unwrap();
            expected.extend_from_slice(&chunk);
        }
        io.shutdown().await.unwrap();
        assert_eq!(io.get_ref().writes.concat(), expected);
        assert!(
            io.buf.capacity() <= PASS_THROUGH,
            "the drained buffer shrinks back"
        );
        assert!(
            io.get_ref()
                .writes
                .iter()
                .all(|w| w.len() <= HIGH_WATER.max(PASS_THROUGH * 2))
        );
    }
}
