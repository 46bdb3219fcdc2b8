//! Fixed-size byte blocks from a per-worker pool with a process-wide byte budget.
//!
//! Memory is bounded by the pool, not by luck (PITFALLS 22): a block is taken when bytes
//! actually arrive and handed back by `Drop`, so no path can leak one, and idle keep-alive
//! connections hold none. When the budget is spent, `take` says no and the caller answers 503.
//!
//! Block memory never comes from the allocator: the pool maps it itself (1 MiB slabs of
//! 16 KiB slots) and decides when pages go back to the kernel, so what the process holds is
//! what the pool says, whatever the C library's malloc keeps (issue 23: glibc kept a burst's
//! 16 KiB blocks in its arenas for good, and RSS stayed at 1.4× the budget). A slot is in
//! one of four places:
//! - in use by a `Block` (counted by `Budget::used`, which `take` checks: admission);
//! - in its worker's local cache (at most `LOCAL_BLOCKS`: the fixed overhead per worker,
//!   reused without any lock);
//! - spare, in the list all workers share: resident pages kept for reuse, and only while
//!   blocks in use plus spare ones stay within the budget, so the process never holds more
//!   block memory than `maxBufferBytes` plus the local caches;
//! - discarded (`MADV_DONTNEED`): mapped but not resident, reused before a new slab is mapped.
//!
//! A worker moves slots between its cache and the shared list `BATCH` at a time (one short
//! lock per 512 KiB of traffic, never per request). Spare slots that no worker took during a
//! whole trim window are discarded at the next trim, so a burst's memory goes back to the
//! kernel within two windows.

use std::cell::{Cell, RefCell};
use std::ptr::NonNull;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Size of an ordinary block: one socket read, one SSE burst, a typical request head.
pub const BLOCK_SIZE: usize = 16 * 1024;

/// Slots a worker keeps for itself, used or not (1 MiB): small requests never take a lock.
const LOCAL_BLOCKS: usize = 64;

/// Slots moved at once between a worker's cache and the shared list (512 KiB).
const BATCH: usize = 32;

/// Spare slots no worker took for a whole window go back to the kernel at the end of the
/// next one: a burst's memory returns within two windows, and a stream of big bodies arriving
/// less than a window apart keeps reusing resident memory.
pub const TRIM_WINDOW: Duration = Duration::from_secs(2);

/// Slots per mapping: a mapping is never unmapped while the budget lives (discarded slots
/// are reused), so the number of mappings stays small.
const SLAB_BLOCKS: usize = 64;

/// The most block memory the process holds beyond `maxBufferBytes`, per worker: its local
/// cache plus one batch on its way to the shared list.
pub const OVERHEAD_PER_WORKER: usize = (LOCAL_BLOCKS + BATCH) * BLOCK_SIZE;

/// One `BLOCK_SIZE` slot inside a slab the budget mapped.
struct Slot(NonNull<u8>);

// SAFETY: a slot is plain memory owned by exactly one list or one block at a time; moving it
// between threads moves that ownership.
unsafe impl Send for Slot {}

/// The kernel calls of block memory. Every pointer passed in came from `map` with that length.
mod pages {
    use std::ptr::NonNull;

    /// An anonymous private mapping of `len` bytes (zero-filled, not resident until touched),
    /// or None when the kernel refuses. Never huge pages: `khugepaged` would make discarded
    /// slots resident again.
    pub fn map(len: usize) -> Option<NonNull<u8>> {
        // SAFETY: a fresh anonymous mapping; no existing memory is touched.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return None;
        }
        // SAFETY: the mapping just made, of `len` bytes. Advice only: failure changes nothing.
        unsafe { libc::madvise(ptr, len, libc::MADV_NOHUGEPAGE) };
        NonNull::new(ptr.cast())
    }

    /// Gives the pages of `[ptr, ptr + len)` back to the kernel; the range stays mapped and
    /// reads as zeros when touched again.
    pub fn discard(ptr: NonNull<u8>, len: usize) {
        // SAFETY: a range inside a live mapping that no block is using.
        unsafe { libc::madvise(ptr.as_ptr().cast(), len, libc::MADV_DONTNEED) };
    }

    pub fn unmap(ptr: NonNull<u8>, len: usize) {
        // SAFETY: the whole mapping `map` returned; nothing refers to it any more.
        unsafe { libc::munmap(ptr.as_ptr().cast(), len) };
    }
}

/// Slots no worker holds.
#[derive(Default)]
struct Shared {
    /// Freed slots still resident, reused first.
    spare: Vec<Slot>,
    /// Discarded slots: mapped, not resident.
    discarded: Vec<Slot>,
    /// Whether a worker took spare slots since the current window began (they are wanted).
    spare_taken: bool,
    /// When the current trim window began.
    window_start: Option<Instant>,
    /// Every slab mapped, unmapped when the budget goes.
    slabs: Vec<Slot>,
}

/// The process-wide byte budget shared by every worker's pool, and the slots no worker holds.
pub struct Budget {
    used: AtomicUsize,
    limit: usize,
    shared: Mutex<Shared>,
}

impl std::fmt::Debug for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Budget({} of {})", self.used(), self.limit)
    }
}

impl Budget {
    pub fn new(limit: usize) -> Arc<Budget> {
        Arc::new(Budget {
            used: AtomicUsize::new(0),
            limit,
            shared: Mutex::new(Shared::default()),
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

    /// Bytes of freed blocks kept resident for reuse in the shared list.
    pub fn spare(&self) -> usize {
        self.lock().spare.len() * BLOCK_SIZE
    }

    /// Bytes of block memory mapped (resident or not).
    pub fn mapped(&self) -> usize {
        self.lock().slabs.len() * SLAB_BLOCKS * BLOCK_SIZE
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        // A panic while holding the lock cannot leave the lists inconsistent (each push or
        // pop is whole), so a poisoned lock is used as is.
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
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

    /// Up to `BATCH` slots for a worker's cache: spare ones first, then discarded ones, then
    /// a new slab. Empty only when the kernel refuses to map more.
    fn refill(&self, into: &mut Vec<Slot>) {
        let mut shared = self.lock();
        let from_spare = shared.spare.len().min(BATCH);
        if from_spare > 0 {
            shared.spare_taken = true;
            let at = shared.spare.len() - from_spare;
            into.extend(shared.spare.drain(at..));
            return;
        }
        let from_discarded = shared.discarded.len().min(BATCH);
        if from_discarded > 0 {
            let at = shared.discarded.len() - from_discarded;
            into.extend(shared.discarded.drain(at..));
            return;
        }
        let Some(base) = pages::map(SLAB_BLOCKS * BLOCK_SIZE) else {
            return;
        };
        shared.slabs.push(Slot(base));
        let slots = (0..SLAB_BLOCKS).map(|i| {
            // SAFETY: `i * BLOCK_SIZE` is inside the slab just mapped.
            Slot(unsafe { NonNull::new_unchecked(base.as_ptr().add(i * BLOCK_SIZE)) })
        });
        // A fresh slab is not resident: its slots count as discarded.
        let mut slots: Vec<Slot> = slots.collect();
        into.extend(slots.drain(SLAB_BLOCKS - BATCH..));
        shared.discarded.append(&mut slots);
    }

    /// Takes back slots a worker's cache overflowed with: kept as spare while blocks in use
    /// plus spare ones fit in the budget, discarded otherwise.
    fn spill(&self, slots: Vec<Slot>) {
        let mut shared = self.lock();
        let spare_after = (shared.spare.len() + slots.len()) * BLOCK_SIZE;
        if self.used().saturating_add(spare_after) <= self.limit {
            shared.spare.extend(slots);
            return;
        }
        drop(shared);
        self.discard(slots);
    }

    /// Returns the pages of `slots` to the kernel, then lists them as discarded. The kernel
    /// call happens outside the lock and before any other worker can take them.
    fn discard(&self, slots: Vec<Slot>) {
        for run in runs(&slots) {
            pages::discard(run.0, run.1);
        }
        self.lock().discarded.extend(slots);
    }

    /// Ends the trim window when `TRIM_WINDOW` has passed: spare slots no worker took during
    /// it are discarded. Every worker calls this; the window is the process's, not theirs.
    /// True when this call ended a window.
    fn trim(&self, now: Instant) -> bool {
        let mut shared = self.lock();
        match shared.window_start {
            Some(start) if now.saturating_duration_since(start) < TRIM_WINDOW => return false,
            _ => shared.window_start = Some(now),
        }
        if std::mem::take(&mut shared.spare_taken) || shared.spare.is_empty() {
            return true;
        }
        let mut idle = std::mem::take(&mut shared.spare);
        drop(shared);
        idle.sort_unstable_by_key(|slot| slot.0.as_ptr() as usize);
        self.discard(idle);
        true
    }
}

impl Drop for Budget {
    fn drop(&mut self) {
        let shared = self.shared.get_mut().unwrap_or_else(|e| e.into_inner());
        for slab in shared.slabs.drain(..) {
            pages::unmap(slab.0, SLAB_BLOCKS * BLOCK_SIZE);
        }
    }
}

/// Adjacent slots as (start, length) runs, so one kernel call covers each run (`slots` in
/// address order gives the fewest runs).
fn runs(slots: &[Slot]) -> impl Iterator<Item = (NonNull<u8>, usize)> + '_ {
    let mut i = 0;
    std::iter::from_fn(move || {
        let first = slots.get(i)?;
        let mut len = BLOCK_SIZE;
        i += 1;
        while let Some(next) = slots.get(i) {
            if next.0.as_ptr() as usize != first.0.as_ptr() as usize + len {
                break;
            }
            len += BLOCK_SIZE;
            i += 1;
        }
        Some((first.0, len))
    })
}

/// A worker's side of the pool: its cache of slots and its share of the budget.
struct PoolInner {
    local: RefCell<Vec<Slot>>,
    budget: Arc<Budget>,
    in_use: Cell<usize>,
}

impl PoolInner {
    /// A freed slot goes back to the cache; a full cache sends its oldest batch to the
    /// shared list.
    fn give_back(&self, slot: Slot) {
        let mut local = self.local.borrow_mut();
        local.push(slot);
        if local.len() > LOCAL_BLOCKS {
            let batch: Vec<Slot> = local.drain(..BATCH).collect();
            drop(local);
            self.budget.spill(batch);
        }
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
                local: RefCell::new(Vec::with_capacity(LOCAL_BLOCKS + 1)),
                budget,
                in_use: Cell::new(0),
            }),
        }
    }

    /// A fresh empty block, or None when the byte budget is spent (or no memory can be mapped).
    pub fn take(&self) -> Option<Block> {
        let inner = &self.inner;
        if !inner.budget.reserve(BLOCK_SIZE) {
            return None;
        }
        let mut local = inner.local.borrow_mut();
        if local.is_empty() {
            inner.budget.refill(&mut local);
        }
        let Some(slot) = local.pop() else {
            inner.budget.release(BLOCK_SIZE);
            return None;
        };
        drop(local);
        inner.in_use.set(inner.in_use.get() + 1);
        Some(Block {
            data: slot.0,
            capacity: BLOCK_SIZE,
            start: 0,
            end: 0,
            pool: Rc::clone(inner),
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

    /// Slots in this worker's cache (not in use).
    pub fn free_blocks(&self) -> usize {
        self.inner.local.borrow().len()
    }

    /// Blocks of this worker in use.
    pub fn in_use(&self) -> usize {
        self.inner.in_use.get()
    }

    /// Called by every worker about once a second: when the process's trim window has
    /// ended, spare memory no worker reused during it goes back to the kernel. True when this
    /// call ended the window (once per window in the whole process).
    pub fn trim(&self, now: Instant) -> bool {
        self.inner.budget.trim(now)
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

/// A byte buffer with a read cursor: `start <= end <= capacity`; `[start, end)` holds bytes
/// not yet consumed, `[end, capacity)` is room for the next read. The memory is a pool slot
/// (`capacity == BLOCK_SIZE`) or, once grown, a mapping of its own.
pub struct Block {
    data: NonNull<u8>,
    capacity: usize,
    start: usize,
    end: usize,
    pool: Rc<PoolInner>,
}

impl Block {
    fn bytes(&self) -> &[u8] {
        // SAFETY: `data` points to `capacity` bytes of mapped memory (always initialised:
        // anonymous pages read as zeros) that only this block uses.
        unsafe { std::slice::from_raw_parts(self.data.as_ptr(), self.capacity) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.data.as_ptr(), self.capacity) }
    }

    /// Bytes held and not yet consumed.
    pub fn filled(&self) -> &[u8] {
        &self.bytes()[self.start..self.end]
    }

    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Whether `spare()` would be non-empty.
    pub fn has_room(&self) -> bool {
        self.end < self.capacity || self.start > 0
    }

    /// Free room after the filled bytes (compacts first when that makes room).
    pub fn spare(&mut self) -> &mut [u8] {
        if self.end == self.capacity && self.start > 0 {
            self.compact();
        }
        let end = self.end;
        &mut self.bytes_mut()[end..]
    }

    /// Marks `n` bytes of `spare()` as filled.
    pub fn commit(&mut self, n: usize) {
        self.end = (self.end + n).min(self.capacity);
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
            let (start, end) = (self.start, self.end);
            self.bytes_mut().copy_within(start..end, 0);
            self.end -= start;
            self.start = 0;
        }
    }

    /// Grows the block to at least `size` bytes (for request heads up to 64 KiB): a mapping of
    /// its own, whole pages, charged to the budget; false when the budget (or the kernel) says
    /// no.
    pub fn grow(&mut self, size: usize) -> bool {
        let old = self.capacity;
        if size <= old {
            return true;
        }
        let new = size.div_ceil(PAGE) * PAGE;
        if !self.pool.budget.reserve(new - old) {
            return false;
        }
        let Some(data) = pages::map(new) else {
            self.pool.budget.release(new - old);
            return false;
        };
        let len = self.len();
        // SAFETY: `data` is a fresh mapping of `new >= len` bytes, disjoint from ours.
        unsafe { std::ptr::copy_nonoverlapping(self.filled().as_ptr(), data.as_ptr(), len) };
        self.free_memory();
        self.data = data;
        self.capacity = new;
        self.start = 0;
        self.end = len;
        true
    }

    /// Hands the memory back: a slot to the pool, a grown block's mapping to the kernel.
    /// The caller replaces or forgets `data` afterwards.
    fn free_memory(&self) {
        if self.capacity == BLOCK_SIZE {
            self.pool.give_back(Slot(self.data));
        } else {
            pages::unmap(self.data, self.capacity);
        }
    }
}

/// Page size grown blocks are rounded to (mappings are whole pages anyway).
const PAGE: usize = 4096;

impl Drop for Block {
    fn drop(&mut self) {
        let pool = &self.pool;
        pool.budget.release(self.capacity);
        pool.in_use.set(pool.in_use.get().saturating_sub(1));
        self.free_memory();
    }
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Block({} of {})", self.len(), self.capacity())
    }
}

/// Called once per buffer trim window (by one worker): glibc's malloc keeps freed memory of
/// its arenas (connection state after 10k requests: a few MiB) until told; `malloc_trim`
/// gives the free pages back. musl's malloc returns memory by itself. Block memory is not
/// malloc's.
pub fn release_allocator_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory of the allocator; no pointer changes.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take_n(pool: &Pool, n: usize) -> Vec<Block> {
        (0..n).filter_map(|_| pool.take()).collect()
    }

    #[test]
    fn taking_a_block_charges_the_budget_and_drop_refunds_it() {
        let budget = Budget::new(BLOCK_SIZE * 4);
        let pool = Pool::new(budget.clone());
        let block = pool.take().expect("budget allows one block");
        assert_eq!(budget.used(), BLOCK_SIZE);
        assert_eq!(pool.in_use(), 1);
        drop(block);
        assert_eq!(budget.used(), 0);
        assert_eq!(pool.in_use(), 0);
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
    fn blocks_do_not_share_memory() {
        let pool = Pool::new(Budget::new(usize::MAX));
        let mut blocks = take_n(&pool, 3 * SLAB_BLOCKS);
        for (i, block) in blocks.iter_mut().enumerate() {
            let fill = vec![i as u8; BLOCK_SIZE];
            assert_eq!(block.extend(&fill), BLOCK_SIZE);
        }
        for (i, block) in blocks.iter().enumerate() {
            assert!(block.filled().iter().all(|&b| b == i as u8), "block {i}");
        }
    }

    #[test]
    fn grow_keeps_bytes_and_is_charged_in_whole_pages() {
        let budget = Budget::new(usize::MAX);
        let pool = Pool::new(budget.clone());
        let mut block = pool.take().expect("block");
        let cached = pool.free_blocks();
        block.extend(b"abc");
        block.consume(1);
        assert!(block.grow(64 * 1024 + 1));
        assert_eq!(block.filled(), b"bc");
        assert_eq!(block.capacity(), 68 * 1024);
        assert_eq!(budget.used(), 68 * 1024);
        assert_eq!(block.extend(&vec![1u8; 70 * 1024]), 68 * 1024 - 2);
        drop(block);
        assert_eq!(budget.used(), 0);
        assert_eq!(
            pool.free_blocks(),
            cached + 1,
            "the slot it grew from went back to the cache"
        );
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

    #[test]
    fn a_worker_cache_holds_at_most_its_fixed_share() {
        let budget = Budget::new(usize::MAX);
        let pool = Pool::new(budget.clone());
        drop(take_n(&pool, 500));
        assert!(pool.free_blocks() <= LOCAL_BLOCKS);
        assert!(
            budget.spare() / BLOCK_SIZE + pool.free_blocks() >= 500,
            "the rest is spare in the shared list"
        );
    }

    #[test]
    fn spare_memory_of_one_worker_serves_another() {
        let budget = Budget::new(usize::MAX);
        let a = Pool::new(budget.clone());
        let b = Pool::new(budget.clone());
        drop(take_n(&a, 1000));
        let mapped = budget.mapped();
        let held = take_n(&b, 900);
        assert_eq!(held.len(), 900);
        assert_eq!(
            budget.mapped(),
            mapped,
            "no new memory while spare slots exist"
        );
    }

    #[test]
    fn blocks_in_use_plus_spare_never_exceed_the_budget() {
        // Two workers, 100 blocks of budget: what one frees while the other is busy is kept
        // only as far as blocks in use plus spare ones fit the budget.
        let budget = Budget::new(100 * BLOCK_SIZE);
        let a = Pool::new(budget.clone());
        let b = Pool::new(budget.clone());
        let held_a = take_n(&a, 100);
        assert_eq!(held_a.len(), 100);
        drop(held_a);
        let held_b = take_n(&b, 100);
        assert_eq!(held_b.len(), 100);
        let caches = a.free_blocks() + b.free_blocks();
        assert!(budget.used() + budget.spare() <= 100 * BLOCK_SIZE);
        assert!(caches <= 2 * LOCAL_BLOCKS);
        drop(held_b);
        assert!(budget.used() + budget.spare() <= 100 * BLOCK_SIZE);
    }

    #[test]
    fn spare_memory_goes_back_after_a_window_nobody_used_it() {
        let budget = Budget::new(usize::MAX);
        let pool = Pool::new(budget.clone());
        let t0 = Instant::now();
        assert!(pool.trim(t0), "the first call starts the first window");
        drop(take_n(&pool, 400));
        assert!(budget.spare() > 0);
        assert!(!pool.trim(t0 + TRIM_WINDOW / 2), "the window has not ended");
        assert!(pool.trim(t0 + TRIM_WINDOW));
        assert_eq!(budget.spare(), 0, "nobody took spare slots in that window");
        // Discarded slots are reused before new memory is mapped.
        let mapped = budget.mapped();
        drop(take_n(&pool, 400));
        assert_eq!(budget.mapped(), mapped);
    }

    #[test]
    fn spare_memory_in_use_during_a_window_is_kept_for_the_next() {
        let budget = Budget::new(usize::MAX);
        let pool = Pool::new(budget.clone());
        let t0 = Instant::now();
        pool.trim(t0);
        drop(take_n(&pool, 400));
        drop(take_n(&pool, 400)); // reuses spare slots: they are wanted
        assert!(pool.trim(t0 + TRIM_WINDOW));
        assert!(
            budget.spare() > 0,
            "kept: a worker took spare slots in the window"
        );
        assert!(pool.trim(t0 + 2 * TRIM_WINDOW));
        assert_eq!(budget.spare(), 0, "a quiet window later they go back");
    }

    #[test]
    fn runs_merge_adjacent_slots() {
        let budget = Budget::new(usize::MAX);
        let pool = Pool::new(budget.clone());
        let blocks = take_n(&pool, 4);
        let mut slots: Vec<Slot> = blocks.iter().map(|b| Slot(b.data)).collect();
        slots.sort_unstable_by_key(|s| s.0.as_ptr() as usize);
        let merged: Vec<(NonNull<u8>, usize)> = runs(&slots).collect();
        assert_eq!(merged.len(), 1, "one slab, adjacent slots");
        assert_eq!(merged[0].1, 4 * BLOCK_SIZE);
        slots.remove(1);
        assert_eq!(runs(&slots).count(), 2);
    }
}
