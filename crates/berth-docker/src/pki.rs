//! A small certificate authority for Docker's TLS (`berth pki`): a CA made once in a directory,
//! then certificates it signs for the parts of a fleet — a Docker engine's `tlsverify` listener
//! (`docker-server`), a client of such engines (`client`: the hub), an agent's or the hub's own
//! listener (`agent`, `hub`). Keys are ECDSA P-256, written 0600; certificates last a year, the
//! CA ten.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, CertifiedIssuer,
    DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};
use thiserror::Error;

/// The CA certificate's file in a PKI directory.
pub const CA_CERT: &str = "ca.pem";
/// The CA key's file in a PKI directory.
pub const CA_KEY: &str = "ca-key.pem";
/// The common name of every CA `berth pki init` makes.
const CA_NAME: &str = "Berth CA";

/// What a PKI operation could not do.
#[derive(Debug, Error)]
pub enum PkiError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The directory has a CA already (`init`) or none (`issue`).
    #[error("{0}")]
    State(String),
    /// A name or subject alternative name is not usable.
    #[error("{0}")]
    Invalid(String),
    /// Making or signing a certificate failed.
    #[error("certificate: {0}")]
    Certificate(#[from] rcgen::Error),
}

/// What a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A Docker engine's TLS listener (`dockerd --tlsverify`).
    DockerServer,
    /// A client of Docker engines: the hub.
    Client,
    /// A `berth agent`'s TLS listener.
    Agent,
    /// The hub's own TLS listener.
    Hub,
}

impl Purpose {
    /// The purpose named `name` (`docker-server`, `client`, `agent`, `hub`).
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "docker-server" => Some(Self::DockerServer),
            "client" => Some(Self::Client),
            "agent" => Some(Self::Agent),
            "hub" => Some(Self::Hub),
            _ => None,
        }
    }

    fn usage(self) -> ExtendedKeyUsagePurpose {
        match self {
            Self::Client => ExtendedKeyUsagePurpose::ClientAuth,
            Self::DockerServer | Self::Agent | Self::Hub => ExtendedKeyUsagePurpose::ServerAuth,
        }
    }
}

/// A certificate and its key as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    /// The certificate's file.
    pub cert: PathBuf,
    /// The key's file.
    pub key: PathBuf,
}

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::File {
        path: path.to_owned(),
        source,
    })
}

fn write(path: &Path, text: &str, private: bool) -> Result<(), PkiError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mode = if private { 0o600 } else { 0o644 };
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .and_then(|mut file| file.write_all(text.as_bytes()))
        .map_err(|source| PkiError::File {
            path: path.to_owned(),
            source,
        })
}

/// Now plus `days`.
fn days_from_now(days: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc() + time::Duration::days(days)
}

fn ca_params() -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, CA_NAME);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

/// Makes a CA in `dir` (created 0700 if missing); refuses when one is there.
pub fn init(dir: &Path) -> Result<Issued, PkiError> {
    let (cert, key) = (dir.join(CA_CERT), dir.join(CA_KEY));
    if cert.exists() || key.exists() {
        return Err(PkiError::State(format!(
            "{} has a CA already; remove {CA_CERT} and {CA_KEY} to make a new one (every certificate it signed stops being trusted)",
            dir.display()
        )));
    }
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| PkiError::File {
                path: dir.to_owned(),
                source,
            })?;
    }
    let mut params = ca_params()?;
    params.not_before = days_from_now(-1);
    params.not_after = days_from_now(3650);
    let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
    write(&key, &issuer.key().serialize_pem(), true)?;
    write(&cert, &issuer.pem(), false)?;
    Ok(Issued { cert, key })
}

/// The CA of `dir`, ready to sign.
fn issuer_of(dir: &Path) -> Result<Issuer<'static, KeyPair>, PkiError> {
    let ca_key = dir.join(CA_KEY);
    if !ca_key.exists() {
        return Err(PkiError::State(format!(
            "{} has no CA; run berth pki init first",
            dir.display()
        )));
    }
    let signer = KeyPair::from_pem(&read(&ca_key)?)?;
    Ok(Issuer::new(ca_params()?, signer))
}

/// A year's certificate for `purpose`, named `name`, valid for `names`.
fn leaf_params(
    purpose: Purpose,
    name: &str,
    names: &[String],
) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    for san in names {
        params.subject_alt_names.push(match san.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(san.clone().try_into().map_err(|_| {
                PkiError::Invalid(format!(
                    "--san {san:?} is neither a host name nor an IP address"
                ))
            })?),
        });
    }
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![purpose.usage()];
    params.not_before = days_from_now(-1);
    params.not_after = days_from_now(365);
    Ok(params)
}

/// Signs the certificate request `csr_pem` (PEM; its signature proves the key is held) for an
/// agent's listener with the CA in `dir`: valid for `host` alone, whatever names the request
/// asked for, named `name`. The certificate, PEM; nothing is written.
pub fn sign_agent_request(
    dir: &Path,
    csr_pem: &str,
    name: &str,
    host: &str,
) -> Result<String, PkiError> {
    let issuer = issuer_of(dir)?;
    let mut request = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|err| {
        PkiError::Invalid(format!("the certificate request does not parse: {err}"))
    })?;
    request.params = leaf_params(Purpose::Agent, name, &[host.to_owned()])?;
    Ok(request.signed_by(&issuer)?.pem())
}

/// A new key and a certificate request for it (PEM each), for [`sign_agent_request`].
pub fn agent_request(name: &str) -> Result<(String, String), PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    let request = params.serialize_request(&key)?;
    Ok((key.serialize_pem(), request.pem()?))
}

/// The host names and IP addresses the certificates in `dir` (other than the CA's) are valid
/// for: names an agent's certificate must not take.
pub fn names_in_use(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let file = path
            .file_name()
            .and_then(|name| name.to_str())
            .unwrap_or("");
        if file == CA_CERT || !file.ends_with(".pem") || file.ends_with("-key.pem") {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let Ok((_, block)) = x509_parser::pem::parse_x509_pem(text.as_bytes()) else {
            continue;
        };
        let Ok(certificate) = block.parse_x509() else {
            continue;
        };
        let Ok(Some(alternatives)) = certificate.subject_alternative_name() else {
            continue;
        };
        for general in &alternatives.value.general_names {
            match general {
                x509_parser::extensions::GeneralName::DNSName(name) => {
                    names.push((*name).to_owned());
                }
                x509_parser::extensions::GeneralName::IPAddress(bytes) => {
                    let ip = match bytes.len() {
                        4 => <[u8; 4]>::try_from(*bytes).ok().map(IpAddr::from),
                        16 => <[u8; 16]>::try_from(*bytes).ok().map(IpAddr::from),
                        _ => None,
                    };
                    names.extend(ip.map(|ip| ip.to_string()));
                }
                _ => {}
            }
        }
    }
    names
}

/// Signs a certificate for `purpose` named `name` (its common name and file names) valid for
/// `sans` (host names or IP addresses; `name` too when none is given) with the CA in `dir`.
pub fn issue(
    dir: &Path,
    purpose: Purpose,
    name: &str,
    sans: &[String],
) -> Result<Issued, PkiError> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(PkiError::Invalid(format!(
            "--name {name:?}: letters, digits, '-', '_' and '.' only (it names the files)"
        )));
    }
    let issuer = issuer_of(dir)?;
    let names: Vec<String> = if sans.is_empty() {
        vec![name.to_owned()]
    } else {
        sans.to_vec()
    };
    let params = leaf_params(purpose, name, &names)?;
    let key = KeyPair::generate()?;
    let certificate = params.signed_by(&key, &issuer)?;
    let issued = Issued {
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}-key.pem")),
    };
    write(&issued.key, &key.serialize_pem(), true)?;
    write(&issued.cert, &certificate.pem(), false)?;
    Ok(issued)
}

/// The CA certificate of `dir`, PEM.
pub fn ca_pem(dir: &Path) -> Result<String, PkiError> {
    read(&dir.join(CA_CERT))
}

/// A certificate's and its key's PEM text.
pub fn read_issued(issued: &Issued) -> Result<(String, String), PkiError> {
    Ok((read(&issued.cert)?, read(&issued.key)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_request_is_signed_for_the_host_the_hub_names_alone() {
        let dir = std::env::temp_dir().join(format!("berth-pki-sign-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        init(&dir).expect("CA");
        issue(&dir, Purpose::Hub, "hub", &["hub.example.org".to_owned()]).expect("hub");
        assert_eq!(names_in_use(&dir), vec!["hub.example.org".to_owned()]);

        // A request asking for the hub's name gets the host the hub chose, nothing else.
        let key = KeyPair::generate().expect("key");
        let asked = CertificateParams::new(vec!["hub.example.org".to_owned()])
            .expect("params")
            .serialize_request(&key)
            .expect("request")
            .pem()
            .expect("pem");
        let pem = sign_agent_request(&dir, &asked, "gpu-7", "10.0.0.7").expect("signed");
        let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("pem");
        let certificate = block.parse_x509().expect("certificate");
        let names = &certificate
            .subject_alternative_name()
            .expect("extension")
            .expect("names")
            .value
            .general_names;
        assert_eq!(names.len(), 1, "{names:?}");
        assert!(
            matches!(names[0], x509_parser::extensions::GeneralName::IPAddress(ip) if ip == [10, 0, 0, 7]),
            "{names:?}"
        );
        assert_eq!(
            certificate.issuer().to_string(),
            format!("CN={CA_NAME}"),
            "signed by the CA"
        );

        // A request whose signature does not hold (the key is not held) is refused.
        let (_, own) = agent_request("gpu-8").expect("request");
        let mut lines: Vec<String> = own.lines().map(str::to_owned).collect();
        let tail = lines.len() - 2;
        let flipped: String = lines[tail]
            .chars()
            .enumerate()
            .map(|(at, c)| match (at, c) {
                (0, 'A') => 'B',
                (0, _) => 'A',
                _ => c,
            })
            .collect();
        lines[tail] = flipped;
        let tampered = lines.join("\n");
        assert!(sign_agent_request(&dir, &tampered, "gpu-8", "10.0.0.8").is_err());
        assert!(sign_agent_request(&dir, &own, "gpu-8", "10.0.0.8").is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
