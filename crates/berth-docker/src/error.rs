//! The driver's error type: one variant per failure a caller acts on differently, each keeping
//! the engine's own message.

use berth_core::SpecError;
use thiserror::Error;

/// Why a driver call failed.
#[derive(Debug, Error)]
pub enum DriverError {
    /// The image is not on the node and could not be pulled.
    #[error("image {image:?} not found: {message}")]
    ImageNotFound {
        /// The image reference.
        image: String,
        /// The engine's message.
        message: String,
    },
    /// No container has this id or name.
    #[error("container {container:?} not found: {message}")]
    ContainerNotFound {
        /// The id or name asked for.
        container: String,
        /// The engine's message.
        message: String,
    },
    /// Another container already has this name.
    #[error("container name {name:?} is already in use: {message}")]
    NameConflict {
        /// The name.
        name: String,
        /// The engine's message.
        message: String,
    },
    /// A published host port is taken.
    #[error("a host port of container {container:?} is already in use: {message}")]
    PortInUse {
        /// The container that could not start.
        container: String,
        /// The engine's message.
        message: String,
    },
    /// The engine could not be reached (socket missing, connection refused, timeout).
    #[error("Docker engine at {address} is unreachable: {message}")]
    EngineUnreachable {
        /// The engine address.
        address: String,
        /// What went wrong.
        message: String,
    },
    /// The engine took longer than the call's timeout: busy or slow, not unreachable.
    #[error(
        "the Docker engine at {address} did not answer within the call's timeout; it is slow or busy, not unreachable"
    )]
    EngineSlow {
        /// The engine address.
        address: String,
    },
    /// An image pull stopped making progress.
    #[error(
        "the pull of {image} from the Docker engine at {address} made no progress for {seconds} s; the registry or the engine is stalled — try again, or load the image on the node"
    )]
    PullStalled {
        /// The engine address.
        address: String,
        /// The image.
        image: String,
        /// How long nothing came, seconds.
        seconds: f64,
    },
    /// TLS material was unusable or the TLS handshake was refused.
    #[error("TLS with the Docker engine at {address} failed: {message}")]
    Tls {
        /// The engine address.
        address: String,
        /// What went wrong (never the key material itself).
        message: String,
    },
    /// The spec broke a rule.
    #[error("invalid container spec: {0}")]
    InvalidSpec(#[from] SpecError),
    /// The endpoint configuration is unusable (bad address scheme, missing pieces).
    #[error("invalid Docker endpoint: {0}")]
    InvalidEndpoint(String),
    /// Any other refusal by the engine.
    #[error("the Docker engine refused the request (HTTP {status}): {message}")]
    Engine {
        /// HTTP status code of the engine's answer.
        status: u16,
        /// The engine's message.
        message: String,
    },
}

/// An engine failure before it is given its context (which image, which container).
pub(crate) enum EngineFailure {
    /// The engine answered with this status and message.
    Status(u16, String),
    /// The engine could not be used at all.
    Transport(DriverError),
}

/// Sorts a bollard error into an engine answer or a transport failure at `address`.
pub(crate) fn engine_failure(address: &str, err: bollard::errors::Error) -> EngineFailure {
    use bollard::errors::Error as Bollard;
    match err {
        Bollard::DockerResponseServerError {
            status_code,
            message,
        } => EngineFailure::Status(status_code, message),
        Bollard::RequestTimeoutError => EngineFailure::Transport(DriverError::EngineSlow {
            address: address.to_owned(),
        }),
        other => EngineFailure::Transport(transport_error(address, &other)),
    }
}

/// Turns a failure to talk to the engine into `Tls` or `EngineUnreachable`.
fn transport_error(address: &str, err: &(dyn std::error::Error + 'static)) -> DriverError {
    let message = error_chain(err);
    if is_tls_failure(err) {
        DriverError::Tls {
            address: address.to_owned(),
            message,
        }
    } else {
        DriverError::EngineUnreachable {
            address: address.to_owned(),
            message,
        }
    }
}

/// The error and its sources, joined with `: ` and without repeats.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current = Some(err);
    while let Some(err) = current {
        let text = err.to_string();
        if !parts.iter().any(|part| part.contains(&text)) {
            parts.push(text);
        }
        current = err.source();
    }
    parts.join(": ")
}

fn is_tls_failure(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(err);
    while let Some(err) = current {
        if err.downcast_ref::<rustls::Error>().is_some() || mentions_tls(&err.to_string()) {
            return true;
        }
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            && is_tls_failure(inner)
        {
            return true;
        }
        current = err.source();
    }
    false
}

/// rustls reports through several layers of boxed errors; its messages are recognisable.
fn mentions_tls(message: &str) -> bool {
    [
        "invalid peer certificate",
        "peer sent no certificates",
        "received fatal alert",
        "peer is incompatible",
    ]
    .iter()
    .any(|needle| message.contains(needle))
}

impl DriverError {
    /// An error for a call that concerns a container: 404 is "not found", other statuses stay engine errors.
    pub(crate) fn for_container(
        address: &str,
        container: &str,
        err: bollard::errors::Error,
    ) -> Self {
        match engine_failure(address, err) {
            EngineFailure::Status(404, message) => DriverError::ContainerNotFound {
                container: container.to_owned(),
                message,
            },
            EngineFailure::Status(status, message) => DriverError::Engine { status, message },
            EngineFailure::Transport(err) => err,
        }
    }

    /// An error for a call that is about the engine itself (ping, version, lists).
    pub(crate) fn for_engine(address: &str, err: bollard::errors::Error) -> Self {
        match engine_failure(address, err) {
            EngineFailure::Status(status, message) => DriverError::Engine { status, message },
            EngineFailure::Transport(err) => err,
        }
    }
}
