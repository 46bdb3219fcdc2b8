//! Per-request identities and admission: request ids and the concurrency slot.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::h1::RequestHead;

use super::MAX_REQUEST_ID;

/// Counts a proxied request against `maxConcurrentRequests` until dropped.
pub struct InFlight(Arc<AtomicU64>);

impl InFlight {
    /// A slot, or None when `cap` (non-zero) requests are already in flight.
    pub fn acquire(counter: &Arc<AtomicU64>, cap: u64) -> Option<InFlight> {
        let before = counter.fetch_add(1, Ordering::AcqRel);
        if cap > 0 && before >= cap {
            counter.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(InFlight(Arc::clone(counter)))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Generates request ids: a per-worker random prefix and a counter, as 32 hex digits.
pub struct RequestIds {
    prefix: u64,
    counter: u64,
}

impl RequestIds {
    pub fn new(seed: u64) -> RequestIds {
        RequestIds {
            prefix: seed,
            counter: 0,
        }
    }

    pub(super) fn next(&mut self) -> RequestId {
        self.counter = self.counter.wrapping_add(1);
        let mut id = RequestId {
            bytes: [0; MAX_REQUEST_ID],
            len: 32,
        };
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for (i, word) in [self.prefix, self.counter].iter().enumerate() {
            for j in 0..16 {
                id.bytes[i * 16 + j] = HEX[((word >> (60 - 4 * j)) & 0xf) as usize];
            }
        }
        id
    }
}

/// The request id sent upstream and back to the client.
#[derive(Clone, Copy)]
pub(super) struct RequestId {
    bytes: [u8; MAX_REQUEST_ID],
    len: usize,
}

impl RequestId {
    pub(super) const EMPTY: RequestId = RequestId {
        bytes: [0; MAX_REQUEST_ID],
        len: 0,
    };

    pub(super) fn get(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// The client's id when it is short printable ASCII, else a generated one.
    pub(super) fn choose(raw: &[u8], head: &RequestHead, ids: &mut RequestIds) -> RequestId {
        if let Some(value) = head.request_id.clone().and_then(|r| raw.get(r)) {
            if !value.is_empty()
                && value.len() <= MAX_REQUEST_ID
                && value.iter().all(|b| b.is_ascii_graphic())
            {
                let mut id = RequestId {
                    bytes: [0; MAX_REQUEST_ID],
                    len: value.len(),
                };
                id.bytes[..value.len()].copy_from_slice(value);
                return id;
            }
        }
        ids.next()
    }
}
