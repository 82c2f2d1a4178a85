//! Mutual TLS from PEM text against the real engine: a TLS front that demands client certificates
//! signed by its CA relays to the local engine's unix socket, the way a `tcp://host:2376` daemon
//! with `tlsverify` behaves — with certificates made here, and with `berth pki`'s.

mod support;

use std::sync::Arc;

use berth_core::ConnectionStatus;
use berth_docker::{DockerDriver, DockerEndpoint, DriverError, TlsMaterial};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::{TcpListener, UnixStream};
use tokio_rustls::TlsAcceptor;

struct Authority {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Authority {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let issuer =
            CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("CA");
        Self { issuer }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A certificate and key for `names`, signed by this authority.
    fn issue(&self, names: &[&str]) -> (String, String) {
        let params = CertificateParams::new(
            names
                .iter()
                .map(|name| (*name).to_owned())
                .collect::<Vec<_>>(),
        )
        .expect("params");
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        (cert.pem(), key.serialize_pem())
    }
}

/// Starts a TLS front on 127.0.0.1 that trusts client certificates of `clients` and relays to
/// the engine's unix socket. Returns its address.
async fn tls_front(server: &Authority, clients: &Authority) -> String {
    let (cert_pem, key_pem) = server.issue(&["127.0.0.1", "localhost"]);
    tls_front_with(&cert_pem, &key_pem, &clients.pem()).await
}

/// The same with the front's certificate and key, and the clients' CA, as PEM text: a
/// `dockerd --tlsverify --tlscacert --tlscert --tlskey` listener.
async fn tls_front_with(cert_pem: &str, key_pem: &str, client_ca_pem: &str) -> String {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(client_ca_pem.as_bytes()).expect("client CA"))
        .expect("client CA");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .expect("verifier");
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(cert_pem.as_bytes()).expect("cert")],
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("key"),
        )
        .expect("server config");
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("addr");
    let socket = std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|host| host.strip_prefix("unix://").map(str::to_owned))
        .unwrap_or_else(|| "/var/run/docker.sock".to_owned());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let socket = socket.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut engine) = UnixStream::connect(&socket).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut engine).await;
            });
        }
    });
    format!("tcp://{address}")
}

fn endpoint(address: &str, ca: &Authority, client: &Authority) -> DockerEndpoint {
    let (cert_pem, key_pem) = client.issue(&["berth-hub"]);
    DockerEndpoint {
        address: address.to_owned(),
        tls: Some(TlsMaterial {
            ca_pem: ca.pem(),
            cert_pem,
            key_pem,
        }),
        timeout_secs: 10,
    }
}

#[tokio::test]
async fn mutual_tls_from_pem_text_reaches_the_engine() {
    if support::driver().await.is_none() {
        return;
    }
    let node_ca = Authority::new("node CA");
    let client_ca = Authority::new("client CA");
    let address = tls_front(&node_ca, &client_ca).await;

    let good = endpoint(&address, &node_ca, &client_ca);
    let report = good.test_connection().await;
    assert_eq!(
        report.status,
        ConnectionStatus::Connected,
        "{}",
        report.message
    );
    assert!(report.message.starts_with("Docker "), "{}", report.message);
    let driver = DockerDriver::connect(&good)
        .await
        .expect("connect over TLS");
    assert!(
        driver
            .image_exists(support::TEST_IMAGE)
            .await
            .expect("image lookup over TLS")
    );
    for _ in 0..3 {
        driver
            .list(&["berth.managed"], true)
            .await
            .expect("pooled requests keep working");
    }

    let stranger_ca = Authority::new("some other CA");
    let wrong_ca = endpoint(&address, &stranger_ca, &client_ca);
    let report = wrong_ca.test_connection().await;
    assert_eq!(report.status, ConnectionStatus::Failed);
    assert!(report.message.contains("TLS"), "{}", report.message);
    let refused = DockerDriver::connect(&wrong_ca).await;
    assert!(
        matches!(refused, Err(DriverError::Tls { .. })),
        "{refused:?}"
    );

    let untrusted_client = endpoint(&address, &node_ca, &stranger_ca);
    let report = untrusted_client.test_connection().await;
    assert_eq!(
        report.status,
        ConnectionStatus::Failed,
        "{}",
        report.message
    );
    assert!(
        !report.message.contains("PRIVATE KEY"),
        "{}",
        report.message
    );
}

/// `berth pki`'s CA and certificates as a Docker engine and the hub use them: an engine
/// listening with the CA's `docker-server` certificate and trusting the CA accepts the hub's
/// `client` certificate and refuses one of another CA.
#[tokio::test]
async fn certificates_from_berth_pki_secure_an_engine_and_its_client() {
    use berth_docker::pki::{self, Purpose};
    if support::driver().await.is_none() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("berth-pki-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        pki::issue(&dir, Purpose::Client, "hub", &[]).is_err(),
        "no CA yet"
    );
    let made = pki::init(&dir).expect("CA");
    assert!(pki::init(&dir).is_err(), "a second CA is refused");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&made.key)
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the CA key is private");
    }
    let engine = pki::issue(
        &dir,
        Purpose::DockerServer,
        "engine",
        &["127.0.0.1".to_owned(), "localhost".to_owned()],
    )
    .expect("server certificate");
    let hub = pki::issue(&dir, Purpose::Client, "hub-client", &[]).expect("client certificate");
    assert!(pki::issue(&dir, Purpose::Client, "../x", &[]).is_err());
    let ca = pki::ca_pem(&dir).expect("CA");
    let (engine_cert, engine_key) = pki::read_issued(&engine).expect("read");
    let address = tls_front_with(&engine_cert, &engine_key, &ca).await;

    let (cert_pem, key_pem) = pki::read_issued(&hub).expect("read");
    let trusted = DockerEndpoint {
        address: address.clone(),
        tls: Some(TlsMaterial {
            ca_pem: ca.clone(),
            cert_pem,
            key_pem,
        }),
        timeout_secs: 10,
    };
    let report = trusted.test_connection().await;
    assert_eq!(
        report.status,
        ConnectionStatus::Connected,
        "{}",
        report.message
    );
    let stranger = Authority::new("not the fleet's CA");
    let (cert_pem, key_pem) = stranger.issue(&["berth-hub"]);
    let untrusted = DockerEndpoint {
        address,
        tls: Some(TlsMaterial {
            ca_pem: ca,
            cert_pem,
            key_pem,
        }),
        timeout_secs: 10,
    };
    let report = untrusted.test_connection().await;
    assert_eq!(
        report.status,
        ConnectionStatus::Failed,
        "{}",
        report.message
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn broken_pem_is_refused_before_any_connection() {
    let material = TlsMaterial {
        ca_pem: "not a certificate".into(),
        cert_pem: String::new(),
        key_pem: "-----BEGIN PRIVATE KEY-----\nsecret\n-----END PRIVATE KEY-----\n".into(),
    };
    let endpoint = DockerEndpoint {
        address: "tcp://127.0.0.1:1".into(),
        tls: Some(material),
        timeout_secs: 5,
    };
    let report = endpoint.test_connection().await;
    assert_eq!(report.status, ConnectionStatus::Failed);
    assert!(
        report.message.contains("CA certificate"),
        "{}",
        report.message
    );
    assert!(!report.message.contains("secret"), "{}", report.message);
}
