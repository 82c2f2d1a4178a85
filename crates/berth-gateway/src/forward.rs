//! Forwarding one request to one replica: the upstream request (hop-by-hop headers dropped,
//! `X-Forwarded-*` added), HTTP/1.1 over the client connection's own upstream connection or
//! cleartext HTTP/2 through a shared pool, WebSocket and other upgrades spliced byte for byte,
//! and the response body streamed back as it arrives.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use berth_http::listen::ServedOverTls;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::uri::{PathAndQuery, Scheme};
use hyper::{Request, Response, StatusCode, Uri, Version};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::credentials;
use super::openai::UsageMeter;
use super::routes::Endpoint;

/// The body of a gateway answer: a replica's streamed body, or the gateway's own.
pub type GatewayBody = Either<Streamed, Full<Bytes>>;

/// A replica's response body, holding the request's bookkeeping until the last byte, and
/// showing each chunk to a meter on its way, if there is one.
pub struct Streamed {
    inner: Incoming,
    meter: Option<UsageMeter>,
    _until_done: Box<dyn Send + Sync + 'static>,
}

impl Streamed {
    /// Streams `inner`, dropping `until_done` after it ends (or is abandoned).
    pub fn new(inner: Incoming, until_done: Box<dyn Send + Sync + 'static>) -> Self {
        Self {
            inner,
            meter: None,
            _until_done: until_done,
        }
    }

    /// The same, with every chunk shown to `meter` as it passes.
    pub fn metered(
        inner: Incoming,
        meter: UsageMeter,
        until_done: Box<dyn Send + Sync + 'static>,
    ) -> Self {
        Self {
            inner,
            meter: Some(meter),
            _until_done: until_done,
        }
    }
}

impl Body for Streamed {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(context);
        if let (Some(meter), Poll::Ready(Some(Ok(frame)))) = (self.meter.as_mut(), &polled)
            && let Some(data) = frame.data_ref()
        {
            meter.feed(data);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The shared connection pool to replicas that speak cleartext HTTP/2 (gRPC); HTTP/1.1 goes over
/// each client connection's own upstream connections ([`AffineConnection`]).
#[derive(Clone)]
pub struct Upstreams {
    http2: Client<HttpConnector, Incoming>,
    /// HTTP/1.1 connections for requests whose body the gateway read first (the OpenAI front).
    buffered: Client<HttpConnector, Full<Bytes>>,
}

impl Default for Upstreams {
    fn default() -> Self {
        Self::new()
    }
}

/// Why a replica gave no answer.
#[derive(Debug)]
pub enum UpstreamError {
    /// Connecting or the exchange failed.
    Failed(String),
}

impl Upstreams {
    /// An empty pool.
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(std::time::Duration::from_secs(5)));
        let http2 = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build(connector.clone());
        let buffered = Client::builder(TokioExecutor::new()).build(connector);
        Self { http2, buffered }
    }

    /// Sends `request`, whose body is in hand (already rewritten by [`upstream_request`]), over
    /// a pooled HTTP/1.1 connection.
    pub async fn send_buffered(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        self.buffered
            .request(request)
            .await
            .map_err(|err| UpstreamError::Failed(describe(&err)))
    }

    /// Sends `request` (already rewritten by [`upstream_request`]) to its replica: an upgrade
    /// on its own connection, HTTP/2 through the shared pool, HTTP/1.1 over the client
    /// connection's own upstream connection when it goes to the same replica again.
    pub async fn send(
        &self,
        request: Request<Incoming>,
        upgrade: bool,
        affine: &AffineConnection,
        address: SocketAddr,
    ) -> Result<Response<Incoming>, UpstreamError> {
        if upgrade {
            return send_upgrade(request, address).await;
        }
        if request.version() == Version::HTTP_2 {
            return self
                .http2
                .request(request)
                .await
                .map_err(|err| UpstreamError::Failed(describe(&err)));
        }
        let mut sender = match affine.take(address) {
            Some(sender) => sender,
            None => connect_http1(address).await?,
        };
        if sender.ready().await.is_err() {
            sender = connect_http1(address).await?;
        }
        let response = sender
            .send_request(request)
            .await
            .map_err(|err| UpstreamError::Failed(describe(&err)))?;
        affine.keep(address, sender);
        Ok(response)
    }
}

fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// One client connection's upstream connections, one per replica it reached (up to
/// [`AFFINE_REPLICAS`]): HTTP/1.1 answers one request at a time, so the next request of the same
/// client connection finds its replica's connection free, with no shared pool to search and no
/// connection shared between clients. They close with the client connection.
#[derive(Default)]
pub struct AffineConnection {
    kept: std::sync::Mutex<Vec<(SocketAddr, Sender)>>,
}

type Sender = hyper::client::conn::http1::SendRequest<Incoming>;

/// Most upstream connections one client connection keeps.
const AFFINE_REPLICAS: usize = 8;

impl AffineConnection {
    fn take(&self, address: SocketAddr) -> Option<Sender> {
        let mut kept = self.kept.lock().ok()?;
        kept.retain(|(_, sender)| !sender.is_closed());
        // One still streaming an earlier answer (HTTP/2 clients send several at once) is busy.
        let position = kept
            .iter()
            .position(|(kept_for, sender)| *kept_for == address && sender.is_ready())?;
        Some(kept.swap_remove(position).1)
    }

    fn keep(&self, address: SocketAddr, sender: Sender) {
        if let Ok(mut kept) = self.kept.lock() {
            if kept.len() >= AFFINE_REPLICAS {
                kept.remove(0);
            }
            kept.push((address, sender));
        }
    }
}

async fn connect_http1(address: SocketAddr) -> Result<Sender, UpstreamError> {
    let stream = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::net::TcpStream::connect(address),
    )
    .await
    .map_err(|_| UpstreamError::Failed(format!("connecting to {address} timed out")))?
    .map_err(|err| UpstreamError::Failed(format!("connecting to {address}: {err}")))?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|err| UpstreamError::Failed(describe(&err)))?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(error = %err, "An upstream connection ended with an error.");
        }
    });
    Ok(sender)
}

/// An upgrade (WebSocket) gets its own connection, handed over to the client once the replica
/// answers `101 Switching Protocols`; bytes then flow both ways until either side closes.
async fn send_upgrade(
    mut request: Request<Incoming>,
    address: SocketAddr,
) -> Result<Response<Incoming>, UpstreamError> {
    let downstream = hyper::upgrade::on(&mut request);
    let stream = tokio::net::TcpStream::connect(&address)
        .await
        .map_err(|err| UpstreamError::Failed(format!("connecting to {address}: {err}")))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|err| UpstreamError::Failed(describe(&err)))?;
    tokio::spawn(async move {
        if let Err(err) = connection.with_upgrades().await {
            tracing::debug!(error = %err, "An upgraded upstream connection ended with an error.");
        }
    });
    let mut response = sender
        .send_request(request)
        .await
        .map_err(|err| UpstreamError::Failed(describe(&err)))?;
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let upstream = hyper::upgrade::on(&mut response);
        let splice = tokio::spawn(async move {
            let (Ok(client), Ok(replica)) = tokio::join!(downstream, upstream) else {
                return;
            };
            let (mut client, mut replica) = (TokioIo::new(client), TokioIo::new(replica));
            let _ = tokio::io::copy_bidirectional(&mut client, &mut replica).await;
        });
        response
            .extensions_mut()
            .insert(Splice(std::sync::Arc::new(std::sync::Mutex::new(Some(
                splice,
            )))));
    }
    Ok(response)
}

/// On a `101` answer: the task that carries the upgraded connection's bytes, so that whoever
/// answers can keep the request counted as in flight until the connection closes.
#[derive(Clone)]
pub struct Splice(std::sync::Arc<std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>);

impl Splice {
    /// The splicing task (once).
    pub fn take(&self) -> Option<tokio::task::JoinHandle<()>> {
        self.0.lock().ok()?.take()
    }
}

/// Headers that belong to one connection and are never forwarded (RFC 9110 §7.6.1), besides
/// `transfer-encoding` and `upgrade`, which each path treats in its own way: hyper frames bodies
/// anew, the relay passes an answer's framing on as it is.
pub const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
];

/// Whether `request` asks to switch protocols (a WebSocket handshake) over HTTP/1.1.
pub fn is_upgrade<B>(request: &Request<B>) -> bool {
    request.version() == Version::HTTP_11
        && request.headers().contains_key(header::UPGRADE)
        && request
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .filter(|name| !(keep_upgrade && name == header::UPGRADE))
        .collect();
    let trailers = headers
        .get(header::TE)
        .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"trailers"));
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(header::TRANSFER_ENCODING);
    if trailers {
        // gRPC needs `te: trailers` to reach the replica.
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// Where and how one request goes.
pub struct Destination<'a> {
    /// The replica.
    pub endpoint: &'a Endpoint,
    /// Path and query at the replica.
    pub path_and_query: &'a str,
    /// The client's address.
    pub peer: SocketAddr,
    /// The path prefix the gateway removed (`/s/alice/flood`), or empty for host routing.
    pub prefix: &'a str,
    /// Speak HTTP/2 to the replica.
    pub http2: bool,
    /// Remove `Authorization` whatever it holds: a private service's carried the caller's hub
    /// token (a public service's is removed only when it is a Berth token).
    pub drop_authorization: bool,
}

/// The request to send to the replica.
pub fn upstream_request<B>(
    request: Request<B>,
    to: &Destination<'_>,
) -> Result<Request<B>, String> {
    let upgrade = is_upgrade(&request);
    let (mut parts, body) = request.into_parts();
    let proto = if parts.extensions.get::<ServedOverTls>().is_some() {
        "https"
    } else {
        "http"
    };
    let original_host = parts.headers.get(header::HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|authority| HeaderValue::from_str(authority.as_str()).ok())
    });
    let path_and_query = PathAndQuery::try_from(to.path_and_query)
        .map_err(|err| format!("{:?} is not a valid path: {err}", to.path_and_query))?;
    // HTTP/2 names the replica in the URI; HTTP/1.1 sends the path alone, with `Host`.
    parts.uri = if to.http2 {
        Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(to.endpoint.authority.clone())
            .path_and_query(path_and_query)
            .build()
            .map_err(|err| format!("{:?} is not a valid path: {err}", to.path_and_query))?
    } else {
        Uri::from(path_and_query)
    };
    let headers = &mut parts.headers;
    strip_hop_by_hop(headers, upgrade);
    remove_credentials(headers, to.drop_authorization);
    let forwarded_for = match headers
        .get("x-forwarded-for")
        .and_then(|value| value.to_str().ok())
    {
        Some(earlier) => format!("{earlier}, {}", to.peer.ip()),
        None => to.peer.ip().to_string(),
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
        headers.insert("x-forwarded-for", value);
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static(proto));
    if let Some(host) = original_host {
        headers.insert("x-forwarded-host", host);
    }
    if !to.prefix.is_empty()
        && let Ok(prefix) = HeaderValue::from_str(to.prefix)
    {
        headers.insert("x-forwarded-prefix", prefix);
    }
    if to.http2 {
        headers.remove(header::HOST);
        parts.version = Version::HTTP_2;
    } else {
        headers.insert(header::HOST, to.endpoint.host.clone());
        parts.version = Version::HTTP_11;
    }
    Ok(Request::from_parts(parts, body))
}

/// Takes Berth's credentials out of a request for a replica: `Authorization` when it carries a
/// Berth token (or always, for a private service), and the console's cookies.
fn remove_credentials(headers: &mut HeaderMap, drop_authorization: bool) {
    if drop_authorization
        || headers
            .get(header::AUTHORIZATION)
            .is_some_and(|value| credentials::is_hub_authorization(value.as_bytes()))
    {
        headers.remove(header::AUTHORIZATION);
    }
    rewrite_values(headers, header::COOKIE, |value| {
        let cookies = credentials::cookies_for_service(value.as_bytes())?;
        HeaderValue::from_bytes(&cookies).ok()
    });
}

/// Replaces each value of header `name` by what `rewrite` makes of it (`None` drops it).
fn rewrite_values(
    headers: &mut HeaderMap,
    name: HeaderName,
    rewrite: impl FnMut(HeaderValue) -> Option<HeaderValue>,
) {
    if let header::Entry::Occupied(entry) = headers.entry(name.clone()) {
        let (_, values) = entry.remove_entry_mult();
        let kept: Vec<HeaderValue> = values.filter_map(rewrite).collect();
        for value in kept {
            headers.append(name.clone(), value);
        }
    }
}

/// The replica's response made fit for the client: hop-by-hop headers dropped (kept for a 101),
/// and no `Set-Cookie` of a console cookie.
pub fn downstream_response(response: &mut Response<Incoming>) {
    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    strip_hop_by_hop(headers, switching);
    rewrite_values(headers, header::SET_COOKIE, |value| {
        (!credentials::sets_console_cookie(value.as_bytes())).then_some(value)
    });
}
