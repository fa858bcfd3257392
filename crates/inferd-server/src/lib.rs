//! # inferd-server
//!
//! The protocol front-ends over an [`inferd_core::Engine`]: KServe v2 over HTTP (axum) with
//! Triton's extensions, and `inference.GRPCInferenceService` plus the standard gRPC health
//! service over gRPC (tonic). Errors map to one (HTTP status, gRPC code) pair in [`error`].
//!
//! - [`http`]: HTTP routes and the binary tensor codec.
//! - [`grpc`]: the gRPC service.
//! - [`error`]: error -> status mapping.
//! - [`coalesce`]: gathers a gRPC connection's writes: an answer's frames leave in one write.
//! - [`listen`]: the HTTP accept loop: connection cap, head/body/idle timeouts.
//! - [`admission`]: the server-wide count of inference requests in flight.
//! - [`request_id`]: `x-request-id` and `traceparent` on every answer and in every log line.
//! - [`tls`]: TLS and mutual TLS on both listeners, reloaded on SIGHUP or file change.
//! - [`metrics`]: the Prometheus page, on `--metrics-port` and at `/metrics` on the HTTP port.

pub mod admission;
pub mod coalesce;
pub mod error;
pub mod grpc;
pub mod http;
pub mod listen;
pub mod metrics;
pub mod request_id;
pub mod shm;
pub mod signals;
pub mod spin;
pub mod tfserving;
pub mod tls;
pub mod traffic;
pub mod ui;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use inferd_core::Engine;
use tokio::net::TcpListener;

/// Generated protocol types (package `inference`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("inference");
}

/// Protocol extensions this server implements, as listed in server metadata.
pub const SERVER_EXTENSIONS: &[&str] = &[
    "binary_tensor_data",
    "model_repository",
    "model_configuration",
    "statistics",
    "schedule_policy",
];

/// Connections the admin listener holds open at once.
const ADMIN_CONNECTIONS: usize = 64;

/// Front-end settings.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// HTTP listen address (port 0 picks one).
    pub http_addr: SocketAddr,
    /// gRPC listen address (port 0 picks one).
    pub grpc_addr: SocketAddr,
    /// Metrics listen address (port 0 picks one); `None` serves metrics on the HTTP port only.
    pub metrics_addr: Option<SocketAddr>,
    /// TF Serving's REST API listen address (`--tfserving-rest-port`), when wanted.
    pub tfserving_rest_addr: Option<SocketAddr>,
    /// TF Serving's gRPC API listen address (`--tfserving-grpc-port`), when wanted.
    pub tfserving_grpc_addr: Option<SocketAddr>,
    /// Admin listen address (`--admin-port`): when given, the admin API (routes, actions,
    /// reports, repository load/unload) is served there and not on the HTTP port.
    pub admin_addr: Option<SocketAddr>,
    /// Largest request body (HTTP) or message (gRPC) in bytes.
    pub max_body_bytes: usize,
    /// Largest inference request JSON and raw binary input (HTTP), in bytes.
    pub max_input_size: usize,
    /// Inference requests in flight at once (HTTP and gRPC together); 503 / RESOURCE_EXHAUSTED
    /// past it. With the body limit, this bounds the memory requests can pin.
    pub max_inflight: usize,
    /// Connections open at once, HTTP and gRPC together; more are closed as they arrive.
    pub max_connections: usize,
    /// HTTP timeouts and HTTP/2 stream limit.
    pub http: listen::HttpLimits,
    /// gRPC: HTTP/2 keepalive ping interval (a peer that does not answer within
    /// `grpc_keepalive_timeout` is dropped).
    pub grpc_keepalive_time: Duration,
    /// gRPC: how long a keepalive ping may go unanswered.
    pub grpc_keepalive_timeout: Duration,
    /// gRPC: concurrent streams per connection.
    pub grpc_max_concurrent_streams: u32,
    /// After shutdown is asked (readiness turns false at once), the listeners stay open this
    /// long so load balancers stop sending first.
    pub drain_delay: Duration,
    /// After the drain delay, how long admitted requests may take to finish before the process
    /// exits anyway (Triton's `--exit-timeout-secs`).
    pub exit_timeout: Duration,
    /// TLS for the HTTP and gRPC listeners (the metrics listener stays plain).
    pub tls: Option<std::sync::Arc<tls::Tls>>,
    /// After each HTTP request, keep one async worker polling this long instead of parking
    /// (see [`spin`]); zero disables. gRPC does not engage it: measured with perf_analyzer on
    /// the same two cores, it cost gRPC about as much as it gained HTTP.
    pub spin: Duration,
    /// Traffic routes (`--routes-file`, the admin API, `--state-dir`); empty when none.
    pub traffic: std::sync::Arc<traffic::Traffic>,
    /// The demand forecast's horizon (`--forecast-horizon-secs`); `None`: each model's
    /// measured load time.
    pub forecast_horizon: Option<Duration>,
}

/// Listeners bound and ready to serve.
pub struct BoundServer {
    engine: Engine,
    opts: ServerOptions,
    http: TcpListener,
    grpc: TcpListener,
    metrics: Option<TcpListener>,
    admin: Option<TcpListener>,
    tfserving_rest: Option<TcpListener>,
    tfserving_grpc: Option<TcpListener>,
}

impl BoundServer {
    /// Binds both listeners; fails if an address is taken.
    pub async fn bind(engine: Engine, opts: ServerOptions) -> std::io::Result<Self> {
        let http = TcpListener::bind(opts.http_addr).await?;
        let grpc = TcpListener::bind(opts.grpc_addr).await?;
        let metrics = match opts.metrics_addr {
            Some(a) => Some(TcpListener::bind(a).await?),
            None => None,
        };
        let admin = match opts.admin_addr {
            Some(a) => Some(TcpListener::bind(a).await?),
            None => None,
        };
        let tfserving_rest = match opts.tfserving_rest_addr {
            Some(a) => Some(TcpListener::bind(a).await?),
            None => None,
        };
        let tfserving_grpc = match opts.tfserving_grpc_addr {
            Some(a) => Some(TcpListener::bind(a).await?),
            None => None,
        };
        Ok(BoundServer {
            engine,
            opts,
            http,
            grpc,
            metrics,
            admin,
            tfserving_rest,
            tfserving_grpc,
        })
    }

    /// The bound HTTP address.
    pub fn http_addr(&self) -> std::io::Result<SocketAddr> {
        self.http.local_addr()
    }

    /// The bound gRPC address.
    pub fn grpc_addr(&self) -> std::io::Result<SocketAddr> {
        self.grpc.local_addr()
    }

    /// The bound metrics address, when metrics have a listener of their own.
    pub fn metrics_addr(&self) -> std::io::Result<Option<SocketAddr>> {
        self.metrics.as_ref().map(|l| l.local_addr()).transpose()
    }

    /// The bound TF Serving REST address, when asked for.
    pub fn tfserving_rest_addr(&self) -> std::io::Result<Option<SocketAddr>> {
        self.tfserving_rest
            .as_ref()
            .map(|l| l.local_addr())
            .transpose()
    }

    /// The bound TF Serving gRPC address, when asked for.
    pub fn tfserving_grpc_addr(&self) -> std::io::Result<Option<SocketAddr>> {
        self.tfserving_grpc
            .as_ref()
            .map(|l| l.local_addr())
            .transpose()
    }

    /// The bound admin address, when the admin API has a listener of its own.
    pub fn admin_addr(&self) -> std::io::Result<Option<SocketAddr>> {
        self.admin.as_ref().map(|l| l.local_addr()).transpose()
    }

    /// Serves until `shutdown` resolves, then stops accepting and lets in-flight requests finish.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let inflight =
            std::sync::Arc::new(tokio::sync::Semaphore::new(self.opts.max_inflight.max(1)));
        let spinner = spin::Spinner::new(self.opts.spin);
        let spin_task = tokio::spawn(spinner.clone().run());
        self.opts.traffic.attach(self.engine.clone());
        let canary_task = traffic::controller::spawn(&self.opts.traffic);
        let guard_spinner = spinner.clone();
        let signals = std::sync::Arc::new(signals::Signals::new(
            self.opts.forecast_horizon.map(|d| d.as_secs_f64()),
            self.opts
                .traffic
                .state_dir()
                .map(|d| d.path().to_path_buf()),
        ));
        let console = std::sync::Arc::new(ui::Console::new(signals.clone()));
        let signals_task = signals::spawn(self.engine.clone(), signals.clone(), console.clone());
        let metrics = std::sync::Arc::new(metrics::Metrics::new(
            self.engine.clone(),
            &self.opts.traffic,
            signals.clone(),
        ));
        let metrics_task = self.metrics.map(|listener| {
            let app = metrics::router(metrics.clone());
            let mut stop = rx.clone();
            tokio::spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = stop.wait_for(|v| *v).await;
                    })
                    .await
            })
        });
        // Shared-memory regions registered over either protocol serve both.
        let shm = std::sync::Arc::new(shm::SharedMemory::new(self.opts.max_body_bytes));
        let state = http::HttpState {
            shm: shm.clone(),
            engine: self.engine.clone(),
            max_body_bytes: self.opts.max_body_bytes,
            max_input_size: self.opts.max_input_size,
            inflight: inflight.clone(),
            read_timeout: self.opts.http.read_timeout,
            metrics,
            traffic: self.opts.traffic.clone(),
            console,
        };
        // The admin listener has its own connection budget, so a flood of inference
        // connections cannot lock operators out (and the reverse).
        let admin_task = self.admin.map(|listener| {
            let app = http::admin_router(state.clone()).layer(request_id::RequestIdLayer);
            tokio::spawn(listen::serve_http(
                listener,
                app,
                self.opts.http,
                std::sync::Arc::new(tokio::sync::Semaphore::new(ADMIN_CONNECTIONS)),
                self.opts.tls.clone(),
                rx.clone(),
            ))
        });
        let app = http::router(state, admin_task.is_none())
            .layer(request_id::RequestIdLayer)
            .layer(axum::middleware::from_fn(
                move |req: axum::extract::Request, next: axum::middleware::Next| {
                    let guard = guard_spinner.guard();
                    async move {
                        let resp = next.run(req).await;
                        drop(guard);
                        resp
                    }
                },
            ));
        let connections = std::sync::Arc::new(tokio::sync::Semaphore::new(
            self.opts.max_connections.max(1),
        ));
        let tfserving_task = self.tfserving_rest.map(|listener| {
            let app = tfserving::rest::router(self.engine.clone(), self.opts.max_body_bytes)
                .layer(request_id::RequestIdLayer);
            tokio::spawn(listen::serve_http(
                listener,
                app,
                self.opts.http,
                connections.clone(),
                self.opts.tls.clone(),
                rx.clone(),
            ))
        });
        let tfserving_grpc_task = self.tfserving_grpc.map(|listener| {
            let tfs = tfserving::grpc::TfServing::new(self.engine.clone(), self.opts.max_body_bytes);
            let incoming = grpc_incoming(
                listener,
                connections.clone(),
                self.opts.tls.clone(),
                self.opts.http.read_timeout,
            );
            let max_body = self.opts.max_body_bytes;
            let mut stop = rx.clone();
            tokio::spawn(async move {
                tonic::transport::Server::builder()
                    .layer(request_id::RequestIdLayer)
                    .add_service(
                        tfserving::grpc::pb::serving::prediction_service_server::PredictionServiceServer::new(tfs.clone())
                            .max_decoding_message_size(max_body),
                    )
                    .add_service(tfserving::grpc::pb::serving::model_service_server::ModelServiceServer::new(tfs))
                    .serve_with_incoming_shutdown(incoming, async move {
                        let _ = stop.wait_for(|v| *v).await;
                    })
                    .await
            })
        });
        let tls_task = self.opts.tls.clone().map(|t| tokio::spawn(t.watch()));
        let http_task = tokio::spawn(listen::serve_http(
            self.http,
            app,
            self.opts.http,
            connections.clone(),
            self.opts.tls.clone(),
            rx.clone(),
        ));

        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        let engine = self.engine.clone();
        let health_task = tokio::spawn(async move {
            let mut last = None;
            loop {
                let ready = engine.is_ready();
                if last != Some(ready) {
                    let st = if ready {
                        tonic_health::ServingStatus::Serving
                    } else {
                        tonic_health::ServingStatus::NotServing
                    };
                    health_reporter.set_service_status("", st).await;
                    health_reporter
                        .set_service_status("inference.GRPCInferenceService", st)
                        .await;
                    last = Some(ready);
                }
                // Readiness is a few atomic reads: follow it closely, so a probe sees SIGTERM
                // (or a model going away) within 50 ms.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let svc = pb::grpc_inference_service_server::GrpcInferenceServiceServer::new(
            grpc::InferenceService::new(
                self.engine.clone(),
                inflight.clone(),
                self.opts.traffic.clone(),
                shm,
            ),
        )
        .max_decoding_message_size(self.opts.max_body_bytes)
        .max_encoding_message_size(usize::MAX);
        // An answer's frames, and answers finished together, leave in one write (see
        // [`coalesce`]).
        // Each connection holds a --max-connections slot until it closes; past the cap it is
        // closed as it arrives. With TLS, handshakes run concurrently off the accept loop.
        let incoming = grpc_incoming(
            self.grpc,
            connections,
            self.opts.tls.clone(),
            self.opts.http.read_timeout,
        );
        let mut rx_grpc = rx.clone();
        let grpc_keepalive_time = self.opts.grpc_keepalive_time;
        let grpc_keepalive_timeout = self.opts.grpc_keepalive_timeout;
        let grpc_max_streams = self.opts.grpc_max_concurrent_streams;
        let grpc_task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .layer(request_id::RequestIdLayer)
                .http2_keepalive_interval(Some(grpc_keepalive_time))
                .http2_keepalive_timeout(Some(grpc_keepalive_timeout))
                .max_concurrent_streams(Some(grpc_max_streams))
                .add_service(health_service)
                .add_service(svc)
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = rx_grpc.wait_for(|v| *v).await;
                })
                .await
        });
        shutdown.await;
        self.engine.begin_shutdown();
        if !self.opts.drain_delay.is_zero() {
            tracing::info!(
                "not ready; still accepting for {:?} (--drain-delay-secs) while load balancers catch up",
                self.opts.drain_delay
            );
            tokio::time::sleep(self.opts.drain_delay).await;
        }
        // New requests are refused (503 / UNAVAILABLE, saying why) while the admitted ones
        // finish, up to --exit-timeout-secs; then the listeners close.
        self.engine.refuse_new_requests();
        let deadline = tokio::time::Instant::now() + self.opts.exit_timeout;
        let waiting = self.engine.inflight();
        if waiting > 0 {
            tracing::info!(
                "refusing new requests; waiting up to {:?} (--exit-timeout-secs) for {waiting} in flight",
                self.opts.exit_timeout
            );
        }
        while self.engine.inflight() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let left = self.engine.inflight();
        if left > 0 {
            tracing::warn!("exit timeout: {left} requests still in flight are dropped");
        }
        tracing::info!("closing the listeners");
        let _ = tx.send(true);
        // Connections close as their last answers go out; past the deadline, they are dropped.
        let grace = deadline
            .saturating_duration_since(tokio::time::Instant::now())
            .max(Duration::from_millis(500));
        let (http_res, grpc_res) =
            match tokio::time::timeout(grace, async { (http_task.await, grpc_task.await) }).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::warn!("connections still open at the exit timeout are dropped");
                    (Ok(Ok(())), Ok(Ok(())))
                }
            };
        health_task.abort();
        spin_task.abort();
        canary_task.abort();
        signals_task.abort();
        let _ = tokio::task::spawn_blocking(move || signals.save()).await;
        if let Some(t) = metrics_task {
            t.abort();
        }
        if let Some(t) = admin_task {
            t.abort();
        }
        if let Some(t) = tfserving_task {
            t.abort();
        }
        if let Some(t) = tfserving_grpc_task {
            t.abort();
        }
        if let Some(t) = tls_task {
            t.abort();
        }
        if let Ok(Err(e)) = http_res {
            return Err(e);
        }
        if let Ok(Err(e)) = grpc_res {
            return Err(std::io::Error::other(e));
        }
        Ok(())
    }
}

/// A gRPC connection: counted against `--max-connections`, TLS when configured.
type GrpcConn = coalesce::Coalescing<listen::Counted<tls::MaybeTls>>;

/// The gRPC listener's accepted connections, ready for tonic.
fn grpc_incoming(
    listener: TcpListener,
    connections: std::sync::Arc<tokio::sync::Semaphore>,
    tls: Option<std::sync::Arc<tls::Tls>>,
    handshake_timeout: Duration,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<GrpcConn>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let tcp = match listener.accept().await {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    tracing::warn!("accepting a gRPC connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            };
            let Some(slot) = listen::admit_connection(&connections) else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            match &tls {
                None => {
                    let conn = listen::Counted::new(tls::MaybeTls::Plain(tcp), slot);
                    if tx.send(Ok(coalesce::Coalescing::new(conn))).await.is_err() {
                        return;
                    }
                }
                Some(tls) => {
                    let acceptor = tls.grpc_acceptor();
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                            Ok(Ok(stream)) => {
                                let conn = listen::Counted::new(
                                    tls::MaybeTls::Tls(Box::new(stream)),
                                    slot,
                                );
                                let _ = tx.send(Ok(coalesce::Coalescing::new(conn))).await;
                            }
                            Ok(Err(e)) => tracing::debug!("gRPC TLS handshake failed: {e}"),
                            Err(_) => tracing::debug!("gRPC TLS handshake timed out"),
                        }
                    });
                }
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
