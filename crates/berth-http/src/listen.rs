//! Serving a router on a TCP listener, in plain HTTP or with TLS (rustls; HTTP/2 or HTTP/1.1 by
//! ALPN), until a shutdown future completes. The certificate and key are read from PEM files
//! and read again when either file changes: a renewed certificate is served from the next
//! connection on, and a pair that does not load keeps the one in use (and is logged).
//!
//! A request that came over TLS carries [`ServedOverTls`] and `X-Forwarded-Proto: https` (set
//! here, whatever the client sent), so code that reads the scheme the way it does behind a TLS
//! proxy — the console's `Secure` cookies — reads it the same way here.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// How long a client may take over its TLS handshake.
const HANDSHAKE_TIME: std::time::Duration = std::time::Duration::from_secs(10);

/// A request extension on every request that came over TLS, so a handler can say its own
/// address with the right scheme.
#[derive(Debug, Clone, Copy)]
pub struct ServedOverTls;

/// Where a listener's certificate chain and key are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenTls {
    /// Certificate chain file, PEM.
    pub cert: PathBuf,
    /// Private key file, PEM.
    pub key: PathBuf,
}

/// A TLS acceptor kept in step with its files.
pub struct TlsFiles {
    files: ListenTls,
    current: RwLock<Loaded>,
}

struct Loaded {
    stamp: (Option<SystemTime>, Option<SystemTime>),
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("TlsFiles")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

fn modified(path: &std::path::Path) -> Option<SystemTime> {
    std::fs::metadata(path)
        .and_then(|meta| meta.modified())
        .ok()
}

fn acceptor_of(files: &ListenTls) -> Result<TlsAcceptor, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|err| format!("TLS certificate {}: {err}", files.cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|err| format!("TLS key {}: {err}", files.key.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|err| err.to_string())?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .map_err(|err| format!("TLS certificate and key do not match: {err}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

impl TlsFiles {
    /// Loads the pair now; an error names the file at fault.
    pub fn load(files: ListenTls) -> Result<Self, String> {
        let stamp = (modified(&files.cert), modified(&files.key));
        let acceptor = acceptor_of(&files)?;
        Ok(Self {
            files,
            current: RwLock::new(Loaded { stamp, acceptor }),
        })
    }

    /// The acceptor for the next connection: loaded again first when a file changed.
    pub fn acceptor(&self) -> TlsAcceptor {
        let stamp = (modified(&self.files.cert), modified(&self.files.key));
        {
            let current = self
                .current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if current.stamp == stamp {
                return current.acceptor.clone();
            }
        }
        let mut current = self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if current.stamp != stamp {
            current.stamp = stamp;
            match acceptor_of(&self.files) {
                Ok(acceptor) => {
                    tracing::info!(cert = %self.files.cert.display(), "TLS certificate loaded again.");
                    current.acceptor = acceptor;
                }
                Err(err) => {
                    tracing::error!(error = %err, "The changed TLS files do not load; the previous certificate stays in use.")
                }
            }
        }
        current.acceptor.clone()
    }
}

/// The TLS side of a client connection `stream` from `peer`, once its handshake completed within
/// 10 s; `None` (logged) when it failed or took longer.
pub async fn handshake(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
) -> Option<TlsStream<TcpStream>> {
    match tokio::time::timeout(HANDSHAKE_TIME, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(err)) => {
            tracing::debug!(%peer, error = %err, "TLS handshake failed.");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake took too long.");
            None
        }
    }
}

/// Marks a request that came over TLS.
async fn mark_tls(mut request: axum::extract::Request) -> axum::extract::Request {
    request.extensions_mut().insert(ServedOverTls);
    request.headers_mut().insert(
        "x-forwarded-proto",
        axum::http::HeaderValue::from_static("https"),
    );
    request
}

/// Serves `router` on `listener` until `shutdown` completes; with `tls`, every connection is TLS.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<Arc<TlsFiles>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let Some(tls) = tls else {
        return axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await;
    };
    let router = router.layer(axum::middleware::map_request(mark_tls));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => accepted?,
            () = &mut shutdown => return Ok(()),
        };
        let acceptor = tls.acceptor();
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let Some(stream) = handshake(&acceptor, stream, peer).await else {
                return;
            };
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(err) = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, error = %err, "Connection ended with an error.");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(files: &ListenTls, name: &str) {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("certificate");
        std::fs::write(&files.cert, cert.pem()).expect("cert");
        std::fs::write(&files.key, key.serialize_pem()).expect("key");
    }

    #[test]
    fn a_changed_pair_is_loaded_again_and_a_broken_one_keeps_the_last() {
        let dir = std::env::temp_dir().join(format!("berth-listen-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let files = ListenTls {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        };
        write_pair(&files, "first.example.org");
        let tls = TlsFiles::load(files.clone()).expect("loaded");
        let first = tls.acceptor();
        assert!(
            Arc::ptr_eq(first.config(), tls.acceptor().config()),
            "unchanged files, the same configuration"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
        write_pair(&files, "second.example.org");
        let second = tls.acceptor();
        assert!(
            !Arc::ptr_eq(first.config(), second.config()),
            "loaded again"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&files.key, "not a key").expect("write");
        assert!(
            Arc::ptr_eq(second.config(), tls.acceptor().config()),
            "a broken pair keeps the last good one"
        );
        assert!(
            TlsFiles::load(files).is_err(),
            "and does not load by itself"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
