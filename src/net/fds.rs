//! The process's file descriptors as modelgate spends them (issue 23): running out must be
//! shed at the edge, never reported as the upstream's fault.
//!
//! Every socket a worker holds is counted (`upstream::Sock` reports its birth and its drop),
//! and every client connection counts once more, for the upstream socket it may still need:
//! a worker accepts only while those, plus a reserve (descriptors open before the workers
//! started, each worker's own, and headroom for the health, discovery and resolver threads),
//! fit under the soft `RLIMIT_NOFILE`. What was accepted can then always open its upstream;
//! a kernel that refuses anyway (`EMFILE`, `ENFILE`: another process, or a limit lowered
//! behind our back) gets 503 `overloaded`, not 502.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::OnceLock;

static OPEN: AtomicUsize = AtomicUsize::new(0);
static CLIENTS: AtomicUsize = AtomicUsize::new(0);
/// (soft limit, reserve), set once at startup; unset: accepting is never gated.
static LIMITS: OnceLock<(usize, usize)> = OnceLock::new();

/// Descriptors kept free for what is not a counted socket: threads' probes, reloads reading
/// files, the access log, and a failover's second socket before the first is closed.
const HEADROOM: usize = 32;

/// Reads the limit once the server raised it (`raise_fd_limit`), and takes what is open now
/// (stdio, listeners, the server's own descriptors) plus `per_worker` for each worker's
/// epoll and waker as the reserve.
pub fn init(workers: usize, per_worker: usize) {
    let open_now = lowest_free_fd().unwrap_or(64);
    let _ = LIMITS.set((soft_limit(), open_now + workers * per_worker + HEADROOM));
}

/// A worker socket was created (counted until `closed`).
pub fn opened() {
    OPEN.fetch_add(1, Relaxed);
}

pub fn closed() {
    OPEN.fetch_sub(1, Relaxed);
}

/// A client connection was accepted: it holds one more descriptor in reserve.
pub fn client_accepted() {
    CLIENTS.fetch_add(1, Relaxed);
}

pub fn client_closed() {
    CLIENTS.fetch_sub(1, Relaxed);
}

/// Whether one more client (its socket and the upstream socket it may need) fits.
pub fn may_accept() -> bool {
    match LIMITS.get() {
        Some(&(limit, reserve)) => in_use() + 2 + reserve <= limit,
        None => true,
    }
}

/// Counted descriptors: open sockets plus one per client connection.
pub fn in_use() -> usize {
    OPEN.load(Relaxed) + CLIENTS.load(Relaxed)
}

/// The soft limit and the reserve, once known.
pub fn limits() -> Option<(usize, usize)> {
    LIMITS.get().copied()
}

/// The soft `RLIMIT_NOFILE` (usize::MAX when unlimited or unknown).
pub fn soft_limit() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct on the stack.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0
        || lim.rlim_cur == libc::RLIM_INFINITY
    {
        return usize::MAX;
    }
    usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX)
}

/// The lowest descriptor number not in use (the kernel hands out the lowest free one), i.e.
/// how many are open when nothing was closed in between: no `/proc` needed (the static build
/// runs in an empty root).
fn lowest_free_fd() -> Option<usize> {
    // SAFETY: duplicates fd 0 into the lowest free slot; the copy is closed at once.
    let fd = unsafe { libc::fcntl(0, libc::F_DUPFD_CLOEXEC, 0) };
    if fd < 0 {
        // No fd 0 to duplicate (stdin closed): a new socket takes the lowest free slot too.
        // SAFETY: a plain socket() call; closed at once.
        let s = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if s < 0 {
            return None;
        }
        // SAFETY: the descriptor just created.
        unsafe { libc::close(s) };
        return usize::try_from(s).ok();
    }
    // SAFETY: the descriptor just created.
    unsafe { libc::close(fd) };
    usize::try_from(fd).ok()
}

/// The name of a descriptor shortage errno, for logs.
pub fn errno_name(code: i32) -> &'static str {
    match code {
        libc::EMFILE => "EMFILE",
        libc::ENFILE => "ENFILE",
        libc::ENOBUFS => "ENOBUFS",
        libc::ENOMEM => "ENOMEM",
        _ => "out of resources",
    }
}
