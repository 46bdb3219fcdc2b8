//! systemd integration without libsystemd: socket activation (`LISTEN_FDS`) and readiness
//! notification (`NOTIFY_SOCKET`).

use std::os::fd::{FromRawFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};

use mio::net::{TcpListener, UnixListener};

use super::Listener;

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

/// Listeners passed by the service manager, or None when not socket-activated.
/// The variables are removed so children never mistake the sockets for theirs.
pub fn listen_fds() -> Option<Result<Vec<Listener>, String>> {
    let pid = std::env::var("LISTEN_PID").ok()?;
    let count = std::env::var("LISTEN_FDS").ok()?;
    std::env::remove_var("LISTEN_PID");
    std::env::remove_var("LISTEN_FDS");
    std::env::remove_var("LISTEN_FDNAMES");
    if pid.trim().parse::<u32>().ok()? != std::process::id() {
        return None;
    }
    let count: RawFd = match count.trim().parse() {
        Ok(n) if n > 0 => n,
        _ => return Some(Err(format!("LISTEN_FDS={count} is not a positive number"))),
    };
    let mut out = Vec::new();
    for fd in LISTEN_FDS_START..LISTEN_FDS_START + count {
        match adopt(fd) {
            Ok(listener) => out.push(listener),
            Err(e) => return Some(Err(e)),
        }
    }
    Some(Ok(out))
}

/// Takes ownership of an inherited listening socket, TCP or unix by its address family.
fn adopt(fd: RawFd) -> Result<Listener, String> {
    // SAFETY: getsockname into a zeroed sockaddr_storage of the right size.
    let family = unsafe {
        let mut addr: libc::sockaddr_storage = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        if libc::getsockname(
            fd,
            (&mut addr as *mut libc::sockaddr_storage).cast(),
            &mut len,
        ) != 0
        {
            return Err(format!("passed descriptor {fd} is not a socket"));
        }
        libc::c_int::from(addr.ss_family)
    };
    // SAFETY: the service manager handed this descriptor to us and nothing else owns it;
    // FD_CLOEXEC keeps it from leaking into children.
    unsafe {
        libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        let flags = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
    match family {
        libc::AF_INET | libc::AF_INET6 => {
            // SAFETY: see above; the descriptor is a listening TCP socket.
            let std = unsafe { std::net::TcpListener::from_raw_fd(fd) };
            Ok(Listener::Tcp(TcpListener::from_std(std)))
        }
        libc::AF_UNIX => {
            // SAFETY: see above; the descriptor is a listening unix socket.
            let std = unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) };
            Ok(Listener::Unix(UnixListener::from_std(std)))
        }
        other => Err(format!(
            "passed descriptor {fd} has unsupported address family {other}"
        )),
    }
}

/// Sends a state line to the service manager when `NOTIFY_SOCKET` is set; a no-op otherwise.
pub fn notify(state: &str) {
    let Ok(path) = std::env::var("NOTIFY_SOCKET") else {
        return;
    };
    let addr = match path.strip_prefix('@') {
        Some(name) => UnixAddr::from_abstract_name(name.as_bytes()),
        None => UnixAddr::from_pathname(&path),
    };
    let Ok(addr) = addr else {
        return;
    };
    if let Ok(socket) = UnixDatagram::unbound() {
        let _ = socket.send_to_addr(state.as_bytes(), &addr);
    }
}

/// `CLOCK_MONOTONIC` in microseconds, for `RELOADING=1` + `MONOTONIC_USEC=`.
pub fn monotonic_usec() -> u64 {
    // SAFETY: clock_gettime into a stack timespec.
    let ts = unsafe {
        let mut ts: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
        ts
    };
    (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_reaches_a_path_socket() {
        let dir = std::env::temp_dir().join(format!("mg-notify-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let server = UnixDatagram::bind(&path).expect("bind");
        let addr = UnixAddr::from_pathname(&path).expect("addr");
        let client = UnixDatagram::unbound().expect("socket");
        client.send_to_addr(b"READY=1", &addr).expect("send");
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"READY=1");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn monotonic_clock_moves_forward() {
        let a = monotonic_usec();
        let b = monotonic_usec();
        assert!(b >= a && a > 0);
    }
}
