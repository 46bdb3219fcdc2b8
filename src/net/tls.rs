//! rustls driven by edge-triggered readiness (PITFALLS 7).
//!
//! Plaintext is always drained before more ciphertext is read, so "received plaintext buffer
//! full" cannot happen and no decrypted bytes sit unseen without an edge to announce them.
//! Ciphertext that could not be written (socket full) stays inside rustls; callers flush it on
//! the next writable edge ([`TlsStream::flush`]) and only consider a peer drained when
//! [`TlsStream::wants_write`] is false. An EOF without close_notify is reported as `Eof`
//! like any other: whether that truncated a message is the HTTP framing's call.

use std::io::{self, IoSlice, Read, Write};
use std::path::Path;
use std::sync::Arc;

use mio::net::TcpStream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, Connection, RootCertStore, ServerConfig};

use super::{FailKind, Io};

/// Plaintext rustls may buffer per connection: one pool block, like a plain socket's share.
const TLS_BUFFER: usize = 16 * 1024;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The client config for `https://` upstreams: webpki roots, or the PEM bundle `ca_file`
/// instead. ALPN `http/1.1`; verification cannot be turned off.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, String> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_root_certificates(roots(ca_file)?)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The client config for a `rediss://` store: webpki roots or `ca_file`, and a client
/// certificate when the server asks for one (`client_cert`: PEM chain and key). No ALPN:
/// Redis and Valkey do not negotiate one.
pub fn store_client_config(
    ca_file: Option<&Path>,
    client_cert: Option<(&Path, &Path)>,
) -> Result<Arc<ClientConfig>, String> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_root_certificates(roots(ca_file)?);
    let config = match client_cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let (chain, key) = cert_and_key(cert, key)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("client certificate and key do not match: {e}"))?
        }
    };
    Ok(Arc::new(config))
}

/// webpki roots, or the certificates of the PEM bundle `ca_file` instead.
fn roots(ca_file: Option<&Path>) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("cannot read CA file {}: {e}", path.display()))?;
            for cert in certs {
                let cert =
                    cert.map_err(|e| format!("bad certificate in {}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("bad CA certificate in {}: {e}", path.display()))?;
            }
            if roots.is_empty() {
                return Err(format!("no certificate in CA file {}", path.display()));
            }
        }
    }
    Ok(roots)
}

/// A PEM certificate chain and its private key.
fn cert_and_key(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("cannot read certificate {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad certificate in {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("no certificate in {}", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read private key {}: {e}", key.display()))?;
    Ok((chain, key))
}

/// The server config for a TLS listener (PEM certificate chain and key; TLS 1.2 and 1.3).
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, String> {
    let (chain, key) = cert_and_key(cert, key)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("certificate and key do not match: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The name to verify and send as SNI.
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(host.to_owned()).map_err(|_| format!("invalid TLS server name {host}"))
}

/// A TCP socket with a rustls session on top.
#[derive(Debug)]
pub struct TlsStream {
    pub(super) tcp: TcpStream,
    conn: Connection,
    /// The peer sent FIN on the TCP level.
    tcp_eof: bool,
    /// For log lines about failed handshakes (client side only).
    peer_name: Option<Box<str>>,
}

impl TlsStream {
    pub fn client(
        tcp: TcpStream,
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
    ) -> Result<TlsStream, FailKind> {
        let peer_name = Some(name.to_str().into_owned().into_boxed_str());
        let mut conn = ClientConnection::new(config, name).map_err(|_| FailKind::Other)?;
        conn.set_buffer_limit(Some(TLS_BUFFER));
        Ok(TlsStream {
            tcp,
            conn: Connection::Client(conn),
            tcp_eof: false,
            peer_name,
        })
    }

    pub fn server(tcp: TcpStream, config: Arc<ServerConfig>) -> Result<TlsStream, FailKind> {
        let mut conn = rustls::ServerConnection::new(config).map_err(|_| FailKind::Other)?;
        conn.set_buffer_limit(Some(TLS_BUFFER));
        Ok(TlsStream {
            tcp,
            conn: Connection::Server(conn),
            tcp_eof: false,
            peer_name: None,
        })
    }

    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Ciphertext is waiting to be written.
    pub fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    pub fn read(&mut self, buf: &mut [u8]) -> Io {
        if buf.is_empty() {
            return Io::Done(0);
        }
        loop {
            // Plaintext first: it may be there without any new edge.
            match self.conn.reader().read(buf) {
                Ok(0) => return Io::Eof,
                Ok(n) => return Io::Done(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Io::Eof,
                Err(_) => return Io::Failed(FailKind::Other),
            }
            if self.tcp_eof {
                return Io::Eof;
            }
            match self.conn.read_tls(&mut self.tcp) {
                Ok(0) => self.tcp_eof = true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Handshake messages produced earlier may still need to go out.
                    return match self.flush() {
                        Io::Failed(kind) => Io::Failed(kind),
                        _ => Io::WouldBlock,
                    };
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return super::classify(&e),
            }
            if let Err(e) = self.conn.process_new_packets() {
                if let Some(name) = &self.peer_name {
                    eprintln!("modelgate: TLS with upstream {name} failed: {e}");
                }
                // Last gasp: tell the peer why (PITFALLS 7F).
                let _ = self.conn.write_tls(&mut self.tcp);
                return Io::Failed(FailKind::Tls);
            }
            if let Io::Failed(kind) = self.flush() {
                return Io::Failed(kind);
            }
        }
    }

    pub fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> Io {
        match self.flush() {
            Io::Failed(kind) => return Io::Failed(kind),
            _ if self.conn.wants_write() => return Io::WouldBlock,
            _ => {}
        }
        let n = match self.conn.writer().write_vectored(bufs) {
            Ok(n) => n,
            Err(_) => return Io::Failed(FailKind::Other),
        };
        if n == 0 {
            // rustls' buffer is full: the socket must drain first.
            return Io::WouldBlock;
        }
        if let Io::Failed(kind) = self.flush() {
            return Io::Failed(kind);
        }
        Io::Done(n)
    }

    /// Writes pending ciphertext until none is left (`Done(0)`) or the socket is full.
    pub fn flush(&mut self) -> Io {
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut self.tcp) {
                Ok(0) => return Io::Failed(FailKind::Other),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Io::WouldBlock,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return super::classify(&e),
            }
        }
        Io::Done(0)
    }

    /// close_notify, then FIN (PITFALLS 7E).
    pub fn close(&mut self) {
        self.conn.send_close_notify();
        let _ = self.flush();
        let _ = self.tcp.shutdown(std::net::Shutdown::Write);
    }
}
