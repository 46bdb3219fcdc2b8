//! Heap memory a worker keeps for its next requests, so a proxied request makes no allocator
//! call once the worker has served a few (ARCHITECTURE rule 5).
//!
//! A request's phase state is boxed (`Phase::Body`, `Phase::Proxy`), so an idle connection
//! stays small, and its request chunks are a `Vec`. Freed, those would go back to malloc and
//! be asked for again by the next request: three allocations and three frees per request,
//! ~1.4 k instructions with musl's malloc (the static build), ~0.5 k with glibc's, and the
//! allocator's metadata touched every time (issue 19). Here a finished request's boxes and
//! its emptied chunk list wait for the next one: a pointer popped, a value written.
//!
//! Bounded: at most [`KEEP`] of each kind per worker (a burst's thousands of exchanges go back
//! to the allocator), and chunk lists only up to [`KEEP_CHUNKS`] entries of capacity.

use std::mem::MaybeUninit;

use super::body::BodyRead;
use super::exchange::Exchange;
use super::outbox::Chunk;

/// Boxes and lists kept per kind: enough for the requests a worker usually has in flight.
pub(super) const KEEP: usize = 64;
/// The largest chunk list kept (a big body's list of hundreds of blocks is let go).
pub(super) const KEEP_CHUNKS: usize = 32;

/// Emptied boxes of one type, reused instead of allocated.
pub(super) struct Boxes<T> {
    free: Vec<Box<MaybeUninit<T>>>,
}

impl<T> Default for Boxes<T> {
    fn default() -> Self {
        Boxes { free: Vec::new() }
    }
}

impl<T> Boxes<T> {
    /// `value` on the heap, in a kept box when there is one.
    pub(super) fn boxed(&mut self, value: T) -> Box<T> {
        match self.free.pop() {
            Some(mut spare) => {
                spare.write(value);
                // SAFETY: the line above initialised the box's contents.
                unsafe { spare.assume_init() }
            }
            None => Box::new(value),
        }
    }

    /// Moves the value out of `boxed` and keeps the box for the next [`Boxes::boxed`].
    pub(super) fn unbox(&mut self, boxed: Box<T>) -> T {
        let raw = Box::into_raw(boxed);
        // SAFETY: `raw` comes from a `Box<T>`: valid, aligned and initialised. The value is
        // read out exactly once, here; the allocation is only used as `MaybeUninit<T>`
        // afterwards, which never reads or drops its contents.
        let value = unsafe { raw.read() };
        // SAFETY: the same allocation, made by `Box` for a `T`; `MaybeUninit<T>` has the
        // layout of `T`, so `Box` frees it with the layout it was allocated with.
        self.keep(unsafe { Box::from_raw(raw.cast::<MaybeUninit<T>>()) });
        value
    }

    /// Drops the value in place (no move) and keeps the box.
    pub(super) fn recycle(&mut self, boxed: Box<T>) {
        let raw = Box::into_raw(boxed);
        // SAFETY: `raw` comes from a `Box<T>`: valid and initialised; the value is dropped
        // exactly once, here, and the allocation is only used as `MaybeUninit<T>` after.
        unsafe { raw.drop_in_place() };
        // SAFETY: as in `unbox`.
        self.keep(unsafe { Box::from_raw(raw.cast::<MaybeUninit<T>>()) });
    }

    fn keep(&mut self, spare: Box<MaybeUninit<T>>) {
        if self.free.len() < KEEP {
            if self.free.capacity() == 0 {
                self.free.reserve_exact(KEEP);
            }
            self.free.push(spare);
        }
    }

    #[cfg(test)]
    fn kept(&self) -> usize {
        self.free.len()
    }
}

/// What a worker keeps for its next requests; lent to connections in `Ctx`.
#[derive(Default)]
pub struct Spares {
    pub(super) bodies: Boxes<BodyRead>,
    pub(super) exchanges: Boxes<Exchange>,
    chunk_lists: Vec<Vec<Chunk>>,
}

impl Spares {
    /// An empty chunk list, with room from an earlier request when one was kept.
    pub(super) fn chunk_list(&mut self) -> Vec<Chunk> {
        self.chunk_lists.pop().unwrap_or_default()
    }

    /// Takes back a finished exchange: its box and its (emptied) request chunk list are kept,
    /// everything else it holds is dropped (blocks go back to the pool, the slot is freed).
    pub(super) fn retire_exchange(&mut self, mut ex: Box<Exchange>) {
        let chunks = std::mem::take(&mut ex.to_upstream).into_chunks();
        self.exchanges.recycle(ex);
        self.keep_chunk_list(chunks);
    }

    fn keep_chunk_list(&mut self, mut list: Vec<Chunk>) {
        list.clear();
        if list.capacity() > 0 && list.capacity() <= KEEP_CHUNKS && self.chunk_lists.len() < KEEP {
            if self.chunk_lists.capacity() == 0 {
                self.chunk_lists.reserve_exact(KEEP);
            }
            self.chunk_lists.push(list);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    #[test]
    fn a_kept_box_is_reused_and_values_drop_exactly_once() {
        let mut boxes: Boxes<(Rc<()>, [u8; 64])> = Boxes::default();
        let tracker = Rc::new(());
        let first = boxes.boxed((Rc::clone(&tracker), [1; 64]));
        let address = &*first as *const _ as usize;
        let (rc, bytes) = boxes.unbox(first);
        assert_eq!(bytes, [1; 64]);
        assert_eq!(Rc::strong_count(&tracker), 2);
        drop(rc);
        assert_eq!(Rc::strong_count(&tracker), 1);
        assert_eq!(boxes.kept(), 1);
        let second = boxes.boxed((Rc::clone(&tracker), [2; 64]));
        assert_eq!(
            &*second as *const _ as usize, address,
            "the kept box is reused"
        );
        assert_eq!(boxes.kept(), 0);
        boxes.recycle(second);
        assert_eq!(Rc::strong_count(&tracker), 1, "recycle drops the value");
        assert_eq!(boxes.kept(), 1);
        drop(boxes);
        assert_eq!(Rc::strong_count(&tracker), 1);
    }

    #[test]
    fn at_most_keep_boxes_are_kept() {
        let mut boxes: Boxes<u64> = Boxes::default();
        let many: Vec<Box<u64>> = (0..KEEP as u64 + 10).map(|i| boxes.boxed(i)).collect();
        for b in many {
            boxes.unbox(b);
        }
        assert_eq!(boxes.kept(), KEEP);
    }

    #[test]
    fn chunk_lists_are_kept_empty_and_only_when_small() {
        let mut spares = Spares::default();
        let mut list = spares.chunk_list();
        list.push(Chunk::Static(b"x"));
        spares.keep_chunk_list(list);
        let again = spares.chunk_list();
        assert!(again.is_empty() && again.capacity() > 0);
        spares.keep_chunk_list(Vec::with_capacity(KEEP_CHUNKS + 1));
        assert_eq!(spares.chunk_list().capacity(), 0, "a big list is let go");
    }
}
