//! Fixed-size byte blocks from a per-worker pool with a process-wide byte budget.
//!
//! Memory is bounded by the pool, not by luck (PITFALLS 22): a block is taken when bytes
//! actually arrive and handed back by `Drop`, so no path can leak one, and idle keep-alive
//! connections hold none. When the budget is spent, `take` says no and the caller answers 503.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Size of an ordinary block: one socket read, one SSE burst, a typical request head.
pub const BLOCK_SIZE: usize = 16 * 1024;

/// Blocks a worker keeps (in use plus free) however quiet it is: 1 MiB.
const MIN_KEPT_BLOCKS: usize = 64;

/// The process-wide byte budget shared by every worker's pool.
#[derive(Debug)]
pub struct Budget {
    used: AtomicUsize,
    limit: usize,
}

impl Budget {
    pub fn new(limit: usize) -> Arc<Budget> {
        Arc::new(Budget {
            used: AtomicUsize::new(0),
            limit,
        })
    }

    /// Bytes currently checked out by all pools.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// The budget (`maxBufferBytes`).
    pub fn limit(&self) -> usize {
        self.limit
    }

    fn reserve(&self, bytes: usize) -> bool {
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            let Some(next) = used.checked_add(bytes) else {
                return false;
            };
            if next > self.limit {
                return false;
            }
            match self
                .used
                .compare_exchange_weak(used, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(actual) => used = actual,
            }
        }
    }

    fn release(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// Freed blocks are kept for reuse up to the most this worker had checked out at once in the
/// current and the previous trim window (at least `MIN_KEPT_BLOCKS`): a stream of 10 MiB
/// bodies then reuses warm blocks instead of paying the allocator to zero (and the kernel to
/// fault in) 640 fresh ones per request, and a burst's memory goes back within two windows.
/// The budget bounds blocks in use, so what is kept never exceeds it either.
struct PoolInner {
    free: RefCell<Vec<Box<[u8]>>>,
    budget: Arc<Budget>,
    in_use: Cell<usize>,
    peak: Cell<usize>,
    previous_peak: Cell<usize>,
}

impl PoolInner {
    fn kept(&self) -> usize {
        MIN_KEPT_BLOCKS
            .max(self.peak.get())
            .max(self.previous_peak.get())
    }
}

/// A worker's block pool. Cheap to clone (one `Rc`); not `Send`, like everything a worker owns.
#[derive(Clone)]
pub struct Pool {
    inner: Rc<PoolInner>,
}

impl Pool {
    pub fn new(budget: Arc<Budget>) -> Pool {
        Pool {
            inner: Rc::new(PoolInner {
                free: RefCell::new(Vec::new()),
                budget,
                in_use: Cell::new(0),
                peak: Cell::new(0),
                previous_peak: Cell::new(0),
            }),
        }
    }

    /// A fresh empty block, or None when the byte budget is spent.
    pub fn take(&self) -> Option<Block> {
        if !self.inner.budget.reserve(BLOCK_SIZE) {
            return None;
        }
        let in_use = self.inner.in_use.get() + 1;
        self.inner.in_use.set(in_use);
        if in_use > self.inner.peak.get() {
            self.inner.peak.set(in_use);
        }
        let data = self
            .inner
            .free
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| vec![0u8; BLOCK_SIZE].into_boxed_slice());
        Some(Block {
            data,
            start: 0,
            end: 0,
            pool: Rc::clone(&self.inner),
        })
    }

    /// Charges `bytes` of memory held outside the blocks (an inflater's window, say) to the
    /// byte budget until the returned [`Charge`] is dropped; None when the budget is spent.
    pub fn charge(&self, bytes: usize) -> Option<Charge> {
        if !self.inner.budget.reserve(bytes) {
            return None;
        }
        Some(Charge {
            budget: Arc::clone(&self.inner.budget),
            bytes,
        })
    }

    /// Blocks waiting for reuse in this worker.
    pub fn free_blocks(&self) -> usize {
        self.inner.free.borrow().len()
    }

    /// Ends a trim window (the worker calls this every few seconds): free blocks beyond what
    /// this and the previous window needed go back to the allocator.
    pub fn trim(&self) {
        let inner = &self.inner;
        inner.previous_peak.set(inner.peak.get());
        inner.peak.set(inner.in_use.get());
        let keep_free = inner.kept().saturating_sub(inner.in_use.get());
        let mut free = inner.free.borrow_mut();
        free.truncate(keep_free);
        free.shrink_to(keep_free.max(MIN_KEPT_BLOCKS));
    }
}

/// Budget bytes held by something other than a block; given back on drop.
#[derive(Debug)]
pub struct Charge {
    budget: Arc<Budget>,
    bytes: usize,
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

/// A byte buffer with a read cursor: `start <= end <= data.len()`; `data[start..end]` holds
/// bytes not yet consumed, `data[end..]` is room for the next read.
pub struct Block {
    data: Box<[u8]>,
    start: usize,
    end: usize,
    pool: Rc<PoolInner>,
}

impl Block {
    /// Bytes held and not yet consumed.
    pub fn filled(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    pub fn capacity(&self) -> usize {
        self.data.len()
    }

    /// Whether `spare()` would be non-empty.
    pub fn has_room(&self) -> bool {
        self.end < self.data.len() || self.start > 0
    }

    /// Free room after the filled bytes (compacts first when that makes room).
    pub fn spare(&mut self) -> &mut [u8] {
        if self.end == self.data.len() && self.start > 0 {
            self.compact();
        }
        &mut self.data[self.end..]
    }

    /// Marks `n` bytes of `spare()` as filled.
    pub fn commit(&mut self, n: usize) {
        self.end = (self.end + n).min(self.data.len());
    }

    /// Drops `n` bytes from the front.
    pub fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Keeps only the first `n` filled bytes.
    pub fn truncate(&mut self, n: usize) {
        self.end = self.start + n.min(self.len());
    }

    pub fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
    }

    /// Appends as much of `bytes` as fits; returns how much did.
    pub fn extend(&mut self, bytes: &[u8]) -> usize {
        let room = self.spare();
        let n = room.len().min(bytes.len());
        room[..n].copy_from_slice(&bytes[..n]);
        self.end += n;
        n
    }

    /// Moves the filled bytes to the front so the whole tail is free.
    pub fn compact(&mut self) {
        if self.start > 0 {
            self.data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
    }

    /// Grows the block to `size` bytes (for request heads up to 64 KiB). Charged to the
    /// budget; false when the budget says no.
    pub fn grow(&mut self, size: usize) -> bool {
        let old = self.data.len();
        if size <= old {
            return true;
        }
        if !self.pool.budget.reserve(size - old) {
            return false;
        }
        let mut data = vec![0u8; size].into_boxed_slice();
        let len = self.len();
        data[..len].copy_from_slice(self.filled());
        self.data = data;
        self.start = 0;
        self.end = len;
        true
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        let size = self.data.len();
        let pool = &self.pool;
        pool.budget.release(size);
        let in_use = pool.in_use.get().saturating_sub(1);
        pool.in_use.set(in_use);
        if size == BLOCK_SIZE {
            let mut free = pool.free.borrow_mut();
            if in_use + free.len() < pool.kept() {
                free.push(std::mem::take(&mut self.data));
            }
        }
    }
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Block({} of {})", self.len(), self.capacity())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taking_a_block_charges_the_budget_and_drop_refunds_it() {
        let budget = Budget::new(BLOCK_SIZE * 4);
        let pool = Pool::new(budget.clone());
        let block = pool.take().expect("budget allows one block");
        assert_eq!(budget.used(), BLOCK_SIZE);
        drop(block);
        assert_eq!(budget.used(), 0);
        assert_eq!(pool.free_blocks(), 1);
    }

    #[test]
    fn an_exhausted_budget_refuses_blocks_until_one_returns() {
        let budget = Budget::new(BLOCK_SIZE * 2);
        let pool = Pool::new(budget);
        let a = pool.take();
        let b = pool.take();
        assert!(a.is_some() && b.is_some());
        assert!(pool.take().is_none());
        drop(a);
        assert!(pool.take().is_some());
    }

    #[test]
    fn consume_and_spare_keep_the_cursor_invariant() {
        let pool = Pool::new(Budget::new(usize::MAX));
        let mut block = pool.take().expect("block");
        assert_eq!(block.extend(b"hello world"), 11);
        block.consume(6);
        assert_eq!(block.filled(), b"world");
        block.consume(5);
        assert!(block.is_empty());
        assert_eq!(block.spare().len(), BLOCK_SIZE);
    }

    #[test]
    fn extend_stops_at_capacity() {
        let pool = Pool::new(Budget::new(usize::MAX));
        let mut block = pool.take().expect("block");
        let big = vec![7u8; BLOCK_SIZE + 10];
        assert_eq!(block.extend(&big), BLOCK_SIZE);
        assert_eq!(block.extend(b"x"), 0);
    }

    #[test]
    fn grow_keeps_bytes_and_is_charged() {
        let budget = Budget::new(usize::MAX);
        let pool = Pool::new(budget.clone());
        let mut block = pool.take().expect("block");
        block.extend(b"abc");
        block.consume(1);
        assert!(block.grow(64 * 1024));
        assert_eq!(block.filled(), b"bc");
        assert_eq!(budget.used(), 64 * 1024);
        drop(block);
        assert_eq!(budget.used(), 0);
        assert_eq!(pool.free_blocks(), 0, "grown blocks are not pooled");
    }

    #[test]
    fn freed_blocks_are_kept_up_to_the_recent_peak_then_trimmed() {
        let pool = Pool::new(Budget::new(usize::MAX));
        let burst: Vec<Block> = (0..200).filter_map(|_| pool.take()).collect();
        assert_eq!(burst.len(), 200);
        drop(burst);
        assert_eq!(
            pool.free_blocks(),
            200,
            "the burst's blocks are reused, not re-zeroed"
        );
        let again: Vec<Block> = (0..200).filter_map(|_| pool.take()).collect();
        assert_eq!(pool.free_blocks(), 0);
        drop(again);
        pool.trim();
        assert_eq!(
            pool.free_blocks(),
            200,
            "the previous window still needed them"
        );
        pool.trim();
        assert_eq!(
            pool.free_blocks(),
            MIN_KEPT_BLOCKS,
            "two quiet windows give them back"
        );
    }

    #[test]
    fn a_quiet_pool_keeps_at_most_the_minimum() {
        let pool = Pool::new(Budget::new(usize::MAX));
        for _ in 0..3 {
            let one = pool.take();
            drop(one);
        }
        assert_eq!(pool.free_blocks(), 1);
        pool.trim();
        pool.trim();
        assert_eq!(pool.free_blocks(), 1);
    }

    #[test]
    fn a_charge_holds_budget_until_dropped() {
        let budget = Budget::new(BLOCK_SIZE * 2);
        let pool = Pool::new(budget.clone());
        let charge = pool.charge(BLOCK_SIZE + 1).expect("within budget");
        assert_eq!(budget.used(), BLOCK_SIZE + 1);
        assert!(pool.take().is_none(), "a block no longer fits");
        assert!(pool.charge(BLOCK_SIZE).is_none());
        drop(charge);
        assert_eq!(budget.used(), 0);
        assert!(pool.take().is_some());
    }

    #[test]
    fn grow_refused_over_budget() {
        let pool = Pool::new(Budget::new(BLOCK_SIZE + 100));
        let mut block = pool.take().expect("block");
        assert!(!block.grow(BLOCK_SIZE * 2));
        assert_eq!(block.capacity(), BLOCK_SIZE);
    }
}
