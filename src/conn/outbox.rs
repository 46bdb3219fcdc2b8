//! Write queues: what waits to be written to one peer, flushed with `writev`.

use std::io::IoSlice;

use crate::buf::{Block, Pool, BLOCK_SIZE};
use crate::net::Io;
use crate::upstream::Sock;

/// Bytes queued for one peer.
pub(super) enum Chunk {
    Block(Block),
    Owned(Vec<u8>),
    Static(&'static [u8]),
}

impl Chunk {
    pub(super) fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Block(b) => b.filled(),
            Chunk::Owned(v) => v,
            Chunk::Static(s) => s,
        }
    }
}

/// A write queue with a cursor. While `retain` is set, written chunks are kept so the whole
/// request can be sent again on a fresh upstream connection (PITFALLS 15).
#[derive(Default)]
pub(super) struct Outbox {
    chunks: Vec<Chunk>,
    idx: usize,
    off: usize,
    retain: bool,
}

/// Outcome of flushing an outbox.
pub(super) enum Flush {
    /// Wrote `bytes` of queued data (maybe 0: not writable or nothing queued); `moved` also
    /// counts pending TLS ciphertext that went out, which is progress too: a caller that
    /// waited for an event after it would wait for an edge that never comes.
    Wrote {
        bytes: usize,
        moved: bool,
    },
    Failed,
}

impl Outbox {
    /// An empty queue over `chunks` (an emptied list kept from an earlier request, see
    /// `conn/spares.rs`); `retain` keeps written chunks for a resend (see the type).
    pub(super) fn reusing(retain: bool, chunks: Vec<Chunk>) -> Outbox {
        debug_assert!(chunks.is_empty());
        Outbox {
            chunks,
            retain,
            ..Outbox::default()
        }
    }

    /// The chunk list, for keeping (emptied) once the queue is done with.
    pub(super) fn into_chunks(self) -> Vec<Chunk> {
        self.chunks
    }

    /// Written chunks are still kept: the whole request can be sent again.
    pub(super) fn is_retaining(&self) -> bool {
        self.retain
    }

    pub(super) fn push(&mut self, chunk: Chunk) {
        if !chunk.bytes().is_empty() {
            self.chunks.push(chunk);
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.idx >= self.chunks.len()
    }

    pub(super) fn rewind(&mut self) {
        self.idx = 0;
        self.off = 0;
    }

    /// Queues `chunk` before everything else (the request head of a request that waited for
    /// a replica; nothing has been written yet).
    pub(super) fn prepend(&mut self, chunk: Chunk) {
        if !chunk.bytes().is_empty() && self.idx == 0 && self.off == 0 {
            self.chunks.insert(0, chunk);
        }
    }

    /// Adds a chunk when there is one.
    pub(super) fn extend(&mut self, chunk: Option<Chunk>) {
        if let Some(chunk) = chunk {
            self.push(chunk);
        }
    }

    /// Swaps the first chunk (the request head) for a resend to another replica; only
    /// meaningful while retaining and rewound.
    pub(super) fn replace_first(&mut self, chunk: Chunk) {
        if let Some(first) = self.chunks.first_mut() {
            *first = chunk;
        }
    }

    /// The bytes of the queued chunks from `from` on (a request's body, after its head).
    pub(super) fn bytes_from(&self, from: usize) -> Vec<&[u8]> {
        self.chunks.iter().skip(from).map(Chunk::bytes).collect()
    }

    /// Takes the chunks from `from` on, putting `body` in their place: a request's body
    /// swapped for another replica's version of it (only meaningful while rewound).
    pub(super) fn swap_from(&mut self, from: usize, body: Vec<Chunk>) -> Vec<Chunk> {
        let old = self.chunks.split_off(from.min(self.chunks.len()));
        self.chunks
            .extend(body.into_iter().filter(|c| !c.bytes().is_empty()));
        old
    }

    /// Stops keeping written chunks (a response byte arrived: no retry any more).
    pub(super) fn release_written(&mut self) {
        self.retain = false;
        self.chunks.drain(..self.idx);
        self.idx = 0;
    }

    pub(super) fn advance(&mut self, mut n: usize) {
        while n > 0 && self.idx < self.chunks.len() {
            let left = self.chunks[self.idx].bytes().len() - self.off;
            if n >= left {
                n -= left;
                self.idx += 1;
                self.off = 0;
            } else {
                self.off += n;
                n = 0;
            }
        }
        if !self.retain && self.idx > 0 {
            self.chunks.drain(..self.idx);
            self.idx = 0;
        }
    }

    /// Everything queued (and the stream block `tail`) is out of our hands, TLS ciphertext
    /// included.
    pub(super) fn drained(&self, sock: &Sock, tail: Option<&Block>) -> bool {
        self.is_empty() && tail.is_none_or(|t| t.is_empty()) && !sock.stream.wants_write()
    }

    /// Writes until everything is out or `WouldBlock`, several chunks per syscall. `tail` is
    /// the exchange's own stream block (body bytes being relayed): written after the queued
    /// chunks and consumed as it goes, so it can be refilled.
    pub(super) fn flush(&mut self, sock: &mut Sock, mut tail: Option<&mut Block>) -> Flush {
        let mut total = 0;
        let mut moved = false;
        if sock.writable && sock.stream.wants_write() {
            match sock.stream.flush() {
                Io::WouldBlock => sock.writable = false,
                Io::Eof | Io::Failed(_) => return Flush::Failed,
                Io::Done(_) => moved = true,
            }
        }
        loop {
            let tail_len = tail.as_ref().map_or(0, |t| t.len());
            if (self.is_empty() && tail_len == 0) || !sock.writable {
                return Flush::Wrote {
                    bytes: total,
                    moved: moved || total > 0,
                };
            }
            let mut slices = [IoSlice::new(&[]); 16];
            let mut count = 0;
            for (i, chunk) in self.chunks[self.idx..].iter().take(15).enumerate() {
                let bytes = chunk.bytes();
                slices[i] = IoSlice::new(if i == 0 { &bytes[self.off..] } else { bytes });
                count += 1;
            }
            if count < 15 {
                if let Some(t) = tail.as_ref().filter(|t| !t.is_empty()) {
                    slices[count] = IoSlice::new(t.filled());
                    count += 1;
                }
            }
            let offered: usize = slices[..count].iter().map(|s| s.len()).sum();
            match sock.stream.write_vectored(&slices[..count]) {
                Io::Done(n) => {
                    // A short write means the socket buffer is full: the next write would
                    // only say EAGAIN, and space freeing up raises a new writable edge.
                    if n < offered && !sock.stream.is_tls() {
                        sock.writable = false;
                    }
                    total += n;
                    let queued = self.queued_bytes();
                    self.advance(n.min(queued));
                    if n > queued {
                        if let Some(t) = tail.as_mut() {
                            t.consume(n - queued);
                        }
                    }
                }
                Io::WouldBlock => sock.writable = false,
                Io::Eof | Io::Failed(_) => return Flush::Failed,
            }
        }
    }

    /// Bytes of queued chunks not yet written.
    pub(super) fn queued_bytes(&self) -> usize {
        self.chunks[self.idx.min(self.chunks.len())..]
            .iter()
            .map(|c| c.bytes().len())
            .sum::<usize>()
            .saturating_sub(self.off)
    }
}

/// Copies a written head into a pooled block (or an owned buffer when it does not fit one).
pub(super) fn copy_chunk(bytes: &[u8], pool: &Pool) -> Chunk {
    if bytes.len() <= BLOCK_SIZE {
        if let Some(mut block) = pool.take() {
            block.extend(bytes);
            return Chunk::Block(block);
        }
    }
    Chunk::Owned(bytes.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buf::Budget;
    use crate::net::Stream;
    use std::io::Read;

    fn pair() -> (Sock, std::os::unix::net::UnixStream) {
        let (a, b) = std::os::unix::net::UnixStream::pair().expect("pair");
        a.set_nonblocking(true).expect("nonblocking");
        let mut sock = Sock::new(Stream::Unix(mio::net::UnixStream::from_std(a)), 0);
        sock.writable = true;
        (sock, b)
    }

    fn read_all(peer: &mut std::os::unix::net::UnixStream, n: usize) -> Vec<u8> {
        let mut out = vec![0u8; n];
        peer.read_exact(&mut out).expect("read");
        out
    }

    #[test]
    fn queued_chunks_then_the_tail_go_out_in_order_and_the_tail_is_consumed() {
        let pool = Pool::new(Budget::new(usize::MAX));
        let (mut sock, mut peer) = pair();
        let mut out = Outbox::default();
        out.push(Chunk::Static(b"head "));
        out.push(Chunk::Owned(b"more ".to_vec()));
        let mut tail = pool.take().expect("block");
        tail.extend(b"body");
        assert!(matches!(
            out.flush(&mut sock, Some(&mut tail)),
            Flush::Wrote { bytes: 14, .. }
        ));
        assert!(out.drained(&sock, Some(&tail)));
        assert_eq!(read_all(&mut peer, 14), b"head more body");
    }

    #[test]
    fn a_retaining_queue_can_be_sent_again_after_rewind() {
        let (mut sock, mut peer) = pair();
        let mut out = Outbox::reusing(true, Vec::new());
        out.push(Chunk::Static(b"POST / HTTP/1.1\r\n\r\n"));
        assert!(matches!(
            out.flush(&mut sock, None),
            Flush::Wrote { bytes: 19, .. }
        ));
        assert!(out.is_empty());
        out.rewind();
        assert!(!out.is_empty());
        assert!(matches!(
            out.flush(&mut sock, None),
            Flush::Wrote { bytes: 19, .. }
        ));
        assert_eq!(
            read_all(&mut peer, 38),
            b"POST / HTTP/1.1\r\n\r\nPOST / HTTP/1.1\r\n\r\n"
        );
        out.release_written();
        assert!(!out.is_retaining());
    }

    #[test]
    fn empty_chunks_are_not_queued() {
        let mut out = Outbox::default();
        out.push(Chunk::Static(b""));
        assert!(out.is_empty());
    }
}
