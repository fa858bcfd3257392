//! Admission of inference requests, shared by HTTP and gRPC: a server-wide count of requests
//! being served (`--max-inflight-requests`). A request takes its slot only once its body is in
//! (HTTP) or its message decoded (gRPC), so a client that stalls while sending holds a
//! connection (capped by `--max-connections`), never an inference slot.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The message of a request refused because every slot is taken.
pub const AT_LIMIT: &str = "the server is at its limit of concurrent inference requests (--max-inflight-requests); retry later";

/// Takes one of the server's in-flight inference slots, or says why not.
pub fn admit(inflight: &Arc<Semaphore>) -> Result<OwnedSemaphorePermit, String> {
    inflight
        .clone()
        .try_acquire_owned()
        .map_err(|_| AT_LIMIT.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_slot_is_given_then_refused_then_given_back() {
        let slots = Arc::new(Semaphore::new(1));
        let held = admit(&slots).expect("a free slot");
        let refused = admit(&slots).expect_err("no slot left");
        assert!(refused.contains("--max-inflight-requests"), "{refused}");
        drop(held);
        assert!(admit(&slots).is_ok());
    }
}
