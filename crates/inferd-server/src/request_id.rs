//! Request ids, for HTTP and gRPC alike (one tower layer on both): every answer carries
//! `x-request-id`, the client's own when it sent a usable one (printable ASCII, at most 128
//! bytes) or else a fresh 128-bit hex id, and every log line written while the request is served
//! sits in a `request` span that names it. A W3C `traceparent` is passed through: logged in the
//! span and echoed on the answer, so a tracing system can stitch inferd into its traces.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::http::{HeaderName, HeaderValue, Request, Response};
use tower_layer::Layer;
use tower_service::Service;
use tracing::Instrument;

/// The header carrying the id.
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// W3C Trace Context's header.
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// Longest client-supplied id kept; longer ones are replaced.
const MAX_ID_LEN: usize = 128;

/// Adds request ids to a service.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestIdLayer;

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestId<S>;

    fn layer(&self, inner: S) -> RequestId<S> {
        RequestId { inner }
    }
}

/// A service whose requests carry an id (see the module docs).
#[derive(Clone, Debug)]
pub struct RequestId<S> {
    inner: S,
}

/// The id a request keeps: the client's, when usable.
pub fn choose(sent: Option<&HeaderValue>) -> HeaderValue {
    sent.filter(|v| {
        let b = v.as_bytes();
        !b.is_empty() && b.len() <= MAX_ID_LEN && b.iter().all(|c| c.is_ascii_graphic())
    })
    .cloned()
    .unwrap_or_else(|| {
        HeaderValue::from_str(&format!("{:032x}", fastrand::u128(..)))
            .unwrap_or_else(|_| HeaderValue::from_static("unset"))
    })
}

impl<S, B, RB> Service<Request<B>> for RequestId<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<RB>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let id = choose(req.headers().get(&REQUEST_ID));
        let traceparent = req
            .headers()
            .get(&TRACEPARENT)
            .filter(|v| v.len() <= 256)
            .cloned();
        // Handlers see the id the answer will carry.
        req.headers_mut().insert(REQUEST_ID.clone(), id.clone());
        let span = tracing::info_span!(
            "request",
            id = id.to_str().unwrap_or_default(),
            traceparent = traceparent.as_ref().and_then(|t| t.to_str().ok()),
        );
        let fut = {
            let _enter = span.enter();
            self.inner.call(req)
        };
        Box::pin(
            async move {
                let mut resp = fut.await?;
                resp.headers_mut().insert(REQUEST_ID.clone(), id);
                if let Some(t) = traceparent {
                    resp.headers_mut().insert(TRACEPARENT.clone(), t);
                }
                Ok(resp)
            }
            .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_usable_client_id_is_kept_and_anything_else_replaced() {
        let mine = HeaderValue::from_static("order-1234");
        assert_eq!(choose(Some(&mine)), mine);
        for bad in [
            HeaderValue::from_static(""),
            HeaderValue::from_static("has space"),
            HeaderValue::from_str(&"x".repeat(200)).expect("ascii"),
        ] {
            let got = choose(Some(&bad));
            assert_ne!(got, bad);
            assert_eq!(got.len(), 32);
        }
        let a = choose(None);
        let b = choose(None);
        assert_ne!(a, b, "fresh ids differ");
        assert!(
            a.to_str()
                .expect("ascii")
                .chars()
                .all(|c| c.is_ascii_hexdigit())
        );
    }
}
