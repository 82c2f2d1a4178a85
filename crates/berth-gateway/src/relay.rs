//! The relay: the gateway's own HTTP/1.1 forwarding, for the requests nearly all traffic is made
//! of. One task per client connection reads a request head (`httparse`), decides where it goes as
//! the general path does ([`Gateway::locate`], [`Gateway::authorize`], [`Gateway::pick`]),
//! writes the rewritten head and the body to that client connection's own keep-alive connection
//! to the replica, and passes the answer back as it arrives: the head rewritten, the body byte
//! for byte (its framing — length, chunks or close — kept and followed to find its end). No
//! request or answer is buffered whole, and nothing passes between tasks.
//!
//! What it does not handle it hands over before writing a byte for it — the connection, with the
//! bytes already read, goes to hyper ([`Gateway::serve_general`]): HTTP/2, HTTP/1.0, upgrades
//! (WebSockets), chunked request bodies, `Expect`, gRPC, services served over HTTP/2, and heads
//! that do not parse or are too large (hyper answers those with their 4xx).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use hyper::StatusCode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::credentials;
use super::forward::HOP_BY_HOP;
use super::head::{Head, Target};
use super::routes::Endpoint;
use super::{Answer, Gateway, Refusal};

/// Most header lines in a request or an answer (as hyper allows).
const MAX_HEADERS: usize = 100;
/// Largest request or answer head the relay reads; larger ones go to hyper.
const MAX_HEAD: usize = 64 * 1024;
/// Room made in a buffer before each read.
const READ_ROOM: usize = 16 * 1024;
/// How long a client connection may sit idle between requests.
const KEEP_ALIVE: Duration = Duration::from_secs(75);
/// How long connecting to a replica may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request body read and dropped to keep a connection open after refusing its request.
const DISCARD_LIMIT: u64 = 1024 * 1024;
/// How long that may take.
const DISCARD_TIME: Duration = Duration::from_secs(5);
/// Most replicas one client connection keeps a connection to.
const UPSTREAMS_KEPT: usize = 8;

/// Headers the gateway writes itself on the way to the replica.
const REWRITTEN: [&str; 6] = [
    "host",
    "transfer-encoding",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-prefix",
];

/// Serves the client connection `stream` from `peer` until it closes, handing it to hyper at the
/// first request the relay does not handle.
pub(super) async fn serve(
    gateway: Arc<Gateway>,
    stream: TcpStream,
    peer: SocketAddr,
    stopping: watch::Receiver<bool>,
) {
    let mut connection = Connection {
        client: stream,
        peer: peer.ip(),
        peer_ip: peer.ip().to_string(),
        received: BytesMut::new(),
        out: Vec::new(),
        upstreams: Vec::new(),
    };
    if connection.run(&gateway, &stopping).await == Ended::HandOver {
        let Connection {
            client, received, ..
        } = connection;
        let replay = Replay {
            early: received.freeze(),
            stream: client,
        };
        gateway.serve_general(replay, peer, stopping, false).await;
    }
}

/// How a connection's time with the relay ended.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// It is closed (or will be once dropped).
    Closed,
    /// Its next request, not yet answered, is for hyper.
    HandOver,
}

/// What to do after one exchange.
enum After {
    KeepOpen,
    Close,
    HandOver,
}

/// One client connection.
struct Connection {
    client: TcpStream,
    peer: std::net::IpAddr,
    peer_ip: String,
    /// Bytes from the client not yet passed on.
    received: BytesMut,
    /// A head being written (and the first body bytes that go with it).
    out: Vec<u8>,
    /// Idle keep-alive connections to replicas, most recently used last.
    upstreams: Vec<Upstream>,
}

/// A keep-alive connection to a replica.
struct Upstream {
    address: SocketAddr,
    stream: TcpStream,
    /// Bytes from the replica not yet passed on.
    received: BytesMut,
}

/// What the relay needs to know of a request it forwards.
struct Plan {
    /// Body length (`Content-Length`, 0 without).
    body_length: u64,
    /// A `HEAD` request: its answer has no body whatever its headers say.
    head_method: bool,
    /// The client asked to close after this answer.
    close: bool,
}

impl Plan {
    /// The plan for `request`, or `None` when it is for hyper.
    fn of(request: &httparse::Request<'_, '_>) -> Option<Self> {
        if request.version != Some(1) || !request.path?.starts_with('/') {
            return None;
        }
        let mut plan = Self {
            body_length: 0,
            head_method: request.method? == "HEAD",
            close: false,
        };
        let mut length_seen = false;
        for header in request.headers.iter() {
            let name = header.name;
            if ["transfer-encoding", "upgrade", "expect"]
                .iter()
                .any(|framing| name.eq_ignore_ascii_case(framing))
                || (name.eq_ignore_ascii_case("content-type")
                    && header.value.starts_with(b"application/grpc"))
            {
                return None;
            }
            if name.eq_ignore_ascii_case("content-length") {
                let length = parse_length(header.value)?;
                if length_seen && length != plan.body_length {
                    return None;
                }
                (plan.body_length, length_seen) = (length, true);
            } else if name.eq_ignore_ascii_case("connection") {
                plan.close |=
                    tokens(header.value).any(|token| token.eq_ignore_ascii_case(b"close"));
            }
        }
        Some(plan)
    }
}

/// Why an exchange with a replica failed.
enum Failure {
    /// The client connection failed or closed: nothing more can be said to it.
    Client,
    /// The replica failed (connecting, writing, or answering badly).
    Upstream(String),
    /// The replica took longer than the service's timeout to answer.
    TimedOut,
}

impl Connection {
    async fn run(&mut self, gateway: &Gateway, stopping: &watch::Receiver<bool>) -> Ended {
        // Timers and the stop signal live as long as the connection: arming them once per
        // request would cost more than the rest of the relay's work.
        let idle = tokio::time::sleep(KEEP_ALIVE);
        let mut idle = std::pin::pin!(idle);
        let mut last_active = Instant::now();
        let deadline = tokio::time::sleep(KEEP_ALIVE);
        let mut deadline = std::pin::pin!(deadline);
        let mut stop_signal = stopping.clone();
        let stop = async move { super::stop_requested(&mut stop_signal).await };
        let mut stop = std::pin::pin!(stop);
        loop {
            let head_length = loop {
                if let Some(length) = head_end(&self.received) {
                    break length;
                }
                // Not whole yet: already too large, or not HTTP/1.1 at all (HTTP/2's preface),
                // is hyper's to answer.
                if self.received.len() >= MAX_HEAD
                    || (!self.received.is_empty()
                        && httparse::Request::new(&mut [])
                            .parse(&self.received)
                            .is_err_and(|err| err != httparse::Error::TooManyHeaders))
                {
                    return Ended::HandOver;
                }
                self.received.reserve(READ_ROOM);
                tokio::select! {
                    biased;
                    read = self.client.read_buf(&mut self.received) => match read {
                        Ok(0) | Err(_) => return Ended::Closed,
                        Ok(_) => {}
                    },
                    () = &mut stop, if self.received.is_empty() => {
                        return Ended::Closed;
                    }
                    () = &mut idle => {
                        if last_active.elapsed() >= KEEP_ALIVE {
                            return Ended::Closed;
                        }
                        idle.as_mut().reset((last_active + KEEP_ALIVE).into());
                    }
                }
            };
            let head = self.received.split_to(head_length).freeze();
            match self
                .exchange(gateway, &head, stopping, deadline.as_mut())
                .await
            {
                After::KeepOpen => last_active = Instant::now(),
                After::Close => return Ended::Closed,
                After::HandOver => {
                    // Put the head back in front of what follows it, for hyper to read.
                    let mut whole = BytesMut::with_capacity(head.len() + self.received.len());
                    whole.extend_from_slice(&head);
                    whole.extend_from_slice(&self.received);
                    self.received = whole;
                    return Ended::HandOver;
                }
            }
        }
    }

    /// Answers the request whose head is `head`.
    async fn exchange(
        &mut self,
        gateway: &Gateway,
        head: &[u8],
        stopping: &watch::Receiver<bool>,
        mut deadline: Pin<&mut tokio::time::Sleep>,
    ) -> After {
        let started = Instant::now();
        let mut slots = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut []);
        if !matches!(
            request.parse_with_uninit_headers(head, &mut slots),
            Ok(httparse::Status::Complete(_))
        ) {
            return After::HandOver;
        }
        let Some(plan) = Plan::of(&request) else {
            return After::HandOver;
        };
        let domain = gateway.control.service_domain();
        if gateway.for_front(&request, domain.as_deref()) {
            return After::HandOver;
        }
        let (routes, target) = match gateway.locate(&request, domain.as_deref()) {
            Ok(located) => located,
            Err(refusal) => return self.refuse(&refusal, plan.close, plan.body_length).await,
        };
        if routes.profile().settings.http2 {
            return After::HandOver;
        }
        let routed = match gateway
            .authorize(&request, routes, &target.path_and_query, self.peer)
            .await
        {
            Ok(routed) => routed,
            Err(refusal) => return self.refuse(&refusal, plan.close, plan.body_length).await,
        };
        let routes = routed.routes;
        let profile = routes.profile();
        if profile.settings.http2 {
            // A rule sent it to a service that speaks HTTP/2 to its replicas.
            return After::HandOver;
        }
        let mut answer = Answer::begin(&gateway.control, &routes, started);
        let endpoint = match gateway.pick(&request, &routes, routed.only).await {
            Ok(endpoint) => endpoint,
            Err(refusal) => {
                answer.status = refusal.status.as_u16();
                return self.refuse(&refusal, plan.close, plan.body_length).await;
            }
        };
        answer.serve(&endpoint);
        self.out.clear();
        upstream_head(
            &mut self.out,
            &request,
            &target,
            &endpoint,
            &self.peer_ip,
            !profile.public,
        );
        let in_hand = usize::try_from(plan.body_length)
            .unwrap_or(usize::MAX)
            .min(self.received.len());
        self.out.extend_from_slice(&self.received[..in_hand]);
        self.received.advance(in_hand);
        let mut body_left = plan.body_length - in_hand as u64;
        deadline
            .as_mut()
            .reset(tokio::time::Instant::now() + profile.settings.timeout());
        let sent = tokio::select! {
            biased;
            sent = self.send(endpoint.address, &mut body_left) => sent,
            () = deadline => Err(Failure::TimedOut),
        };
        let (mut upstream, response_head) = match sent {
            Ok(sent) => sent,
            Err(Failure::Client) => return After::Close,
            Err(failure) => {
                let refusal = match failure {
                    Failure::Upstream(reason) => {
                        gateway.upstream_failed(&routes, &endpoint, reason)
                    }
                    _ => gateway.upstream_timed_out(&routes, &endpoint),
                };
                answer.status = refusal.status.as_u16();
                return self.refuse(&refusal, plan.close, body_left).await;
            }
        };
        match self
            .pass_answer(&mut upstream, response_head, &plan, &mut answer, stopping)
            .await
        {
            Ok(PassedOn {
                client_stays,
                upstream_stays,
            }) => {
                if upstream_stays {
                    self.keep(upstream);
                }
                if client_stays {
                    After::KeepOpen
                } else {
                    After::Close
                }
            }
            // The head went to the client already: closing is all that is left to say.
            Err(_) => After::Close,
        }
    }

    /// Sends the request in `out` (and `body_left` more body bytes from the client, counted
    /// down as they go) to the replica at `address`, and reads its answer's head: the connection
    /// and that head. A kept connection the replica closed meanwhile is replaced once, when the
    /// whole request is still in hand.
    async fn send(
        &mut self,
        address: SocketAddr,
        body_left: &mut u64,
    ) -> Result<(Upstream, Bytes), Failure> {
        let whole_in_hand = *body_left == 0;
        let mut kept = self.take(address);
        loop {
            let reused = kept.is_some();
            let mut upstream = match kept.take() {
                Some(upstream) => upstream,
                None => connect(address).await?,
            };
            match self.send_on(&mut upstream, body_left).await {
                Ok(head) => return Ok((upstream, head)),
                Err(Failure::Upstream(_)) if reused && whole_in_hand => {}
                Err(failure) => return Err(failure),
            }
        }
    }

    async fn send_on(
        &mut self,
        upstream: &mut Upstream,
        body_left: &mut u64,
    ) -> Result<Bytes, Failure> {
        upstream
            .stream
            .write_all(&self.out)
            .await
            .map_err(|err| Failure::Upstream(format!("sending the request: {err}")))?;
        while *body_left > 0 {
            if self.received.is_empty() {
                self.received.reserve(READ_ROOM);
                match self.client.read_buf(&mut self.received).await {
                    Ok(0) | Err(_) => return Err(Failure::Client),
                    Ok(_) => {}
                }
            }
            let take = usize::try_from(*body_left)
                .unwrap_or(usize::MAX)
                .min(self.received.len());
            upstream
                .stream
                .write_all(&self.received[..take])
                .await
                .map_err(|err| Failure::Upstream(format!("sending the request body: {err}")))?;
            self.received.advance(take);
            *body_left -= take as u64;
        }
        answer_head(upstream).await
    }

    /// Passes the answer whose head is `head` from `upstream` to the client, body and all.
    async fn pass_answer(
        &mut self,
        upstream: &mut Upstream,
        mut head: Bytes,
        plan: &Plan,
        answer: &mut Answer,
        stopping: &watch::Receiver<bool>,
    ) -> Result<PassedOn, Failure> {
        loop {
            let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut response = httparse::Response::new(&mut slots);
            match response.parse(&head) {
                Ok(httparse::Status::Complete(_)) => {}
                Ok(httparse::Status::Partial) => {
                    return Err(Failure::Upstream(
                        "its answer's head is cut short".to_owned(),
                    ));
                }
                Err(err) => {
                    return Err(Failure::Upstream(format!(
                        "its answer does not parse: {err}"
                    )));
                }
            }
            let code = response.code.unwrap_or_default();
            if code == 101 {
                return Err(Failure::Upstream(
                    "it switched protocols unasked".to_owned(),
                ));
            }
            if (100..200).contains(&code) {
                // An interim answer (103 Early Hints): passed on, and the final one follows.
                self.out.clear();
                downstream_head(&mut self.out, &head, &response, false, false);
                self.client
                    .write_all(&self.out)
                    .await
                    .map_err(|_| Failure::Client)?;
                head = answer_head(upstream).await?;
                continue;
            }
            answer.status = code;
            let mut framing = Framing::of(&response, plan.head_method)?;
            let upstream_stays = response.version == Some(1)
                && !matches!(framing, Framing::UntilClose)
                && !response
                    .headers
                    .iter()
                    .filter(|header| header.name.eq_ignore_ascii_case("connection"))
                    .any(|header| {
                        tokens(header.value).any(|token| token.eq_ignore_ascii_case(b"close"))
                    });
            let client_stays =
                !plan.close && !matches!(framing, Framing::UntilClose) && !*stopping.borrow();
            self.out.clear();
            downstream_head(
                &mut self.out,
                &head,
                &response,
                !client_stays,
                matches!(framing, Framing::Chunked(_)),
            );
            let (take, mut done) = framing.take(&upstream.received)?;
            self.out.extend_from_slice(&upstream.received[..take]);
            upstream.received.advance(take);
            self.client
                .write_all(&self.out)
                .await
                .map_err(|_| Failure::Client)?;
            while !done {
                upstream.received.reserve(READ_ROOM);
                let read = upstream
                    .stream
                    .read_buf(&mut upstream.received)
                    .await
                    .map_err(|err| Failure::Upstream(err.to_string()))?;
                if read == 0 {
                    if matches!(framing, Framing::UntilClose) {
                        break;
                    }
                    return Err(Failure::Upstream(
                        "it closed the connection mid-answer".to_owned(),
                    ));
                }
                let (take, finished) = framing.take(&upstream.received)?;
                done = finished;
                self.client
                    .write_all(&upstream.received[..take])
                    .await
                    .map_err(|_| Failure::Client)?;
                upstream.received.advance(take);
            }
            return Ok(PassedOn {
                client_stays,
                upstream_stays: upstream_stays && upstream.received.is_empty(),
            });
        }
    }

    /// Answers with `refusal`, after reading past the `body_unread` bytes of the request's body
    /// still to come (a small one; after a larger one, or when the client asked, it closes).
    async fn refuse(&mut self, refusal: &Refusal, close_asked: bool, body_unread: u64) -> After {
        let close = close_asked || !self.discard(body_unread).await;
        self.out.clear();
        refusal_answer(&mut self.out, refusal, close);
        if self.client.write_all(&self.out).await.is_err() {
            return After::Close;
        }
        if close {
            let _ = self.client.shutdown().await;
            return After::Close;
        }
        After::KeepOpen
    }

    /// Reads and drops `left` bytes of a request body, if there are few and they come soon.
    async fn discard(&mut self, mut left: u64) -> bool {
        if left > DISCARD_LIMIT {
            return false;
        }
        let discarding = async {
            loop {
                let take = usize::try_from(left)
                    .unwrap_or(usize::MAX)
                    .min(self.received.len());
                self.received.advance(take);
                left -= take as u64;
                if left == 0 {
                    return true;
                }
                self.received.reserve(READ_ROOM);
                if !matches!(self.client.read_buf(&mut self.received).await, Ok(1..)) {
                    return false;
                }
            }
        };
        tokio::time::timeout(DISCARD_TIME, discarding)
            .await
            .unwrap_or(false)
    }

    /// The kept connection to `address`, if there is one.
    fn take(&mut self, address: SocketAddr) -> Option<Upstream> {
        let position = self
            .upstreams
            .iter()
            .rposition(|upstream| upstream.address == address)?;
        Some(self.upstreams.remove(position))
    }

    fn keep(&mut self, upstream: Upstream) {
        if self.upstreams.len() >= UPSTREAMS_KEPT {
            self.upstreams.remove(0);
        }
        self.upstreams.push(upstream);
    }
}

/// How an exchange ended well.
struct PassedOn {
    client_stays: bool,
    upstream_stays: bool,
}

/// Reads the head of the replica's next answer on `upstream`.
async fn answer_head(upstream: &mut Upstream) -> Result<Bytes, Failure> {
    loop {
        if let Some(length) = head_end(&upstream.received) {
            return Ok(upstream.received.split_to(length).freeze());
        }
        if upstream.received.len() >= MAX_HEAD {
            return Err(Failure::Upstream(format!(
                "its answer's head is larger than {} KiB",
                MAX_HEAD / 1024
            )));
        }
        upstream.received.reserve(READ_ROOM);
        match upstream.stream.read_buf(&mut upstream.received).await {
            Ok(0) => {
                return Err(Failure::Upstream(
                    "it closed the connection without answering".to_owned(),
                ));
            }
            Ok(_) => {}
            Err(err) => return Err(Failure::Upstream(format!("reading the answer: {err}"))),
        }
    }
}

/// Where a head ends in `bytes`: just past its empty line (CRLF or bare LF line endings), once
/// it has arrived. Whether it parses is for the one parse that follows.
fn head_end(bytes: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(offset) = bytes[from..].iter().position(|&byte| byte == b'\n') {
        let at = from + offset;
        match bytes.get(at + 1) {
            Some(b'\n') => return Some(at + 2),
            Some(b'\r') if bytes.get(at + 2) == Some(&b'\n') => return Some(at + 3),
            _ => from = at + 1,
        }
    }
    None
}

async fn connect(address: SocketAddr) -> Result<Upstream, Failure> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address))
        .await
        .map_err(|_| Failure::Upstream(format!("connecting to {address} timed out")))?
        .map_err(|err| Failure::Upstream(format!("connecting to {address}: {err}")))?;
    let _ = stream.set_nodelay(true);
    Ok(Upstream {
        address,
        stream,
        received: BytesMut::new(),
    })
}

/// Where an answer's body ends.
#[derive(Debug)]
enum Framing {
    /// After this many more bytes.
    Length(u64),
    /// At its last chunk.
    Chunked(Chunks),
    /// When the replica closes the connection.
    UntilClose,
}

impl Framing {
    fn of(response: &httparse::Response<'_, '_>, head_method: bool) -> Result<Self, Failure> {
        let code = response.code.unwrap_or_default();
        if head_method || code == 204 || code == 304 {
            return Ok(Self::Length(0));
        }
        let mut codings = response
            .headers
            .iter()
            .filter(|header| header.name.eq_ignore_ascii_case("transfer-encoding"))
            .flat_map(|header| tokens(header.value))
            .peekable();
        if codings.peek().is_some() {
            return Ok(
                if codings
                    .last()
                    .is_some_and(|last| last.eq_ignore_ascii_case(b"chunked"))
                {
                    Self::Chunked(Chunks::default())
                } else {
                    Self::UntilClose
                },
            );
        }
        let mut length = None;
        for header in response.headers.iter() {
            if header.name.eq_ignore_ascii_case("content-length") {
                let value = parse_length(header.value);
                if value.is_none() || (length.is_some() && length != value) {
                    return Err(Failure::Upstream(
                        "its answer has an invalid Content-Length".to_owned(),
                    ));
                }
                length = value;
            }
        }
        Ok(length.map_or(Self::UntilClose, Self::Length))
    }

    /// How much of `available` belongs to the body, and whether the body ends there.
    fn take(&mut self, available: &[u8]) -> Result<(usize, bool), Failure> {
        match self {
            Self::Length(left) => {
                let take = usize::try_from(*left)
                    .unwrap_or(usize::MAX)
                    .min(available.len());
                *left -= take as u64;
                Ok((take, *left == 0))
            }
            Self::Chunked(chunks) => match chunks.scan(available) {
                Ok(Some(end)) => Ok((end, true)),
                Ok(None) => Ok((available.len(), false)),
                Err(reason) => Err(Failure::Upstream(reason.to_owned())),
            },
            Self::UntilClose => Ok((available.len(), false)),
        }
    }
}

/// Follows a chunked body (RFC 9112 §7.1) as its bytes pass, to find where it ends.
#[derive(Debug, Default)]
struct Chunks {
    state: ChunkState,
    size: u64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Reading a chunk size's hex digits.
    #[default]
    Size,
    /// Skipping a chunk extension.
    Extension,
    /// After the size line's CR.
    SizeLf,
    /// Inside a chunk's data, `size` bytes left.
    Data,
    /// After a chunk's data: CR.
    DataCr,
    /// After a chunk's data: LF.
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    /// Inside a trailer line.
    Trailer,
    /// After the final empty line's CR.
    EndLf,
}

impl Chunks {
    /// Follows `bytes`: `Some(n)` when the body ends after the first `n` of them.
    fn scan(&mut self, bytes: &[u8]) -> Result<Option<usize>, &'static str> {
        let mut at = 0;
        while at < bytes.len() {
            if self.state == ChunkState::Data {
                let skip = usize::try_from(self.size)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len() - at);
                at += skip;
                self.size -= skip as u64;
                if self.size == 0 {
                    self.state = ChunkState::DataCr;
                }
                continue;
            }
            let byte = bytes[at];
            at += 1;
            self.state = match (self.state, byte) {
                (ChunkState::Size, b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F') => {
                    let digit = u64::from(char::from(byte).to_digit(16).unwrap_or(0));
                    self.size = self
                        .size
                        .checked_mul(16)
                        .map(|size| size + digit)
                        .ok_or("a chunk size overflows")?;
                    ChunkState::Size
                }
                (ChunkState::Size, b';' | b' ' | b'\t') => ChunkState::Extension,
                (ChunkState::Size | ChunkState::Extension, b'\r') => ChunkState::SizeLf,
                (ChunkState::Size | ChunkState::Extension | ChunkState::SizeLf, b'\n') => {
                    if self.size == 0 {
                        ChunkState::TrailerStart
                    } else {
                        ChunkState::Data
                    }
                }
                (ChunkState::Extension, _) => ChunkState::Extension,
                (ChunkState::DataCr, b'\r') => ChunkState::DataLf,
                (ChunkState::DataCr | ChunkState::DataLf, b'\n') => ChunkState::Size,
                (ChunkState::TrailerStart, b'\r') => ChunkState::EndLf,
                (ChunkState::TrailerStart | ChunkState::EndLf, b'\n') => {
                    *self = Self::default();
                    return Ok(Some(at));
                }
                (ChunkState::Trailer, b'\n') => ChunkState::TrailerStart,
                (ChunkState::TrailerStart | ChunkState::Trailer, _) => ChunkState::Trailer,
                _ => return Err("its chunked body is malformed"),
            };
        }
        Ok(None)
    }
}

/// The request head for the replica: the path without the gateway's prefix, `Host` naming the
/// replica, hop-by-hop headers and Berth's credentials (a private service's `Authorization`, any
/// Berth token, the console's cookies) left out, and
/// `X-Forwarded-For`/`-Proto`/`-Host`/`-Prefix` added.
fn upstream_head(
    out: &mut Vec<u8>,
    request: &httparse::Request<'_, '_>,
    target: &Target<'_>,
    endpoint: &Endpoint,
    peer_ip: &str,
    drop_authorization: bool,
) {
    out.extend_from_slice(request.method.unwrap_or("GET").as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.path_and_query.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(endpoint.host.as_bytes());
    out.extend_from_slice(b"\r\n");
    let listed = connection_listed(request.headers);
    for header in request.headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("te") && header.value.eq_ignore_ascii_case(b"trailers") {
            out.extend_from_slice(b"te: trailers\r\n");
            continue;
        }
        if is_hop_by_hop(name)
            || REWRITTEN
                .iter()
                .any(|other| name.eq_ignore_ascii_case(other))
            || (name.eq_ignore_ascii_case("authorization")
                && (drop_authorization || credentials::is_hub_authorization(header.value)))
            || is_listed(&listed, name)
        {
            continue;
        }
        if name.eq_ignore_ascii_case("cookie") {
            if let Some(cookies) = credentials::cookies_for_service(header.value) {
                header_line(out, name, &cookies);
            }
            continue;
        }
        header_line(out, name, header.value);
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    for earlier in request.header_values("x-forwarded-for") {
        out.extend_from_slice(earlier);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(peer_ip.as_bytes());
    out.extend_from_slice(b"\r\nx-forwarded-proto: http\r\n");
    if let Some(host) = request.header("host") {
        header_line(out, "x-forwarded-host", host);
    }
    if !target.prefix.is_empty() {
        header_line(out, "x-forwarded-prefix", target.prefix.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// The answer head for the client: the replica's, without hop-by-hop headers or a `Set-Cookie`
/// of a console cookie, with
/// `Connection: close` when the client connection closes after it.
fn downstream_head(
    out: &mut Vec<u8>,
    head: &[u8],
    response: &httparse::Response<'_, '_>,
    close: bool,
    chunked: bool,
) {
    use std::io::Write as _;
    // An HTTP/1.1 status line passes as it is.
    match head.iter().position(|&byte| byte == b'\n') {
        Some(end) if response.version == Some(1) && head[..end].ends_with(b"\r") => {
            out.extend_from_slice(&head[..=end]);
        }
        _ => {
            let _ = write!(
                out,
                "HTTP/1.1 {} {}\r\n",
                response.code.unwrap_or(502),
                response.reason.unwrap_or("")
            );
        }
    }
    let listed = connection_listed(response.headers);
    for header in response.headers.iter() {
        let name = header.name;
        if is_hop_by_hop(name)
            || (chunked && name.eq_ignore_ascii_case("content-length"))
            || is_listed(&listed, name)
            || (name.eq_ignore_ascii_case("set-cookie")
                && credentials::sets_console_cookie(header.value))
        {
            continue;
        }
        header_line(out, name, header.value);
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// The gateway's own answer: problem+json.
fn refusal_answer(out: &mut Vec<u8>, refusal: &Refusal, close: bool) {
    use std::io::Write as _;
    let body = refusal.body();
    let status: StatusCode = refusal.status;
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\ncontent-type: application/problem+json\r\ncontent-length: {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    if let Some(challenge) = refusal.challenge() {
        header_line(out, "www-authenticate", challenge.as_bytes());
    }
    if let Some(seconds) = refusal.retry_after {
        header_line(out, "retry-after", seconds.to_string().as_bytes());
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&body);
}

fn header_line(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The comma-separated tokens of a header value, trimmed.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&byte| byte == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|token| !token.is_empty())
}

/// The headers `Connection` names besides the usual `keep-alive`, `close` and `upgrade`: they
/// are hop-by-hop too. Usually none, and then nothing is allocated.
fn connection_listed<'a>(headers: &[httparse::Header<'a>]) -> Vec<&'a [u8]> {
    headers
        .iter()
        .filter(|header| header.name.eq_ignore_ascii_case("connection"))
        .flat_map(|header| tokens(header.value))
        .filter(|token| {
            !(token.eq_ignore_ascii_case(b"keep-alive")
                || token.eq_ignore_ascii_case(b"close")
                || token.eq_ignore_ascii_case(b"upgrade"))
        })
        .collect()
}

/// Whether `name` belongs to one connection. `transfer-encoding` is not among them: the relay
/// writes its own on requests ([`REWRITTEN`]) and passes an answer's on with its framing.
fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP
        .iter()
        .chain(&["upgrade"])
        .any(|other| name.eq_ignore_ascii_case(other))
}

fn is_listed(listed: &[&[u8]], name: &str) -> bool {
    listed
        .iter()
        .any(|token| token.eq_ignore_ascii_case(name.as_bytes()))
}

/// A `Content-Length` value: digits only.
fn parse_length(value: &[u8]) -> Option<u64> {
    let value = value.trim_ascii();
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// A client connection handed to hyper: the bytes the relay read first, then the socket.
struct Replay {
    early: Bytes,
    stream: TcpStream,
}

impl AsyncRead for Replay {
    fn poll_read(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.early.is_empty() {
            return Pin::new(&mut self.stream).poll_read(context, buf);
        }
        let take = self.early.len().min(buf.remaining());
        buf.put_slice(&self.early[..take]);
        self.early.advance(take);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Replay {
    fn poll_write(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(context, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(context, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(context)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(context)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_in_pieces(body: &[u8], piece: usize) -> Result<Option<usize>, &'static str> {
        let mut chunks = Chunks::default();
        let mut offset = 0;
        for part in body.chunks(piece) {
            if let Some(end) = chunks.scan(part)? {
                return Ok(Some(offset + end));
            }
            offset += part.len();
        }
        Ok(None)
    }

    #[test]
    fn a_chunked_body_ends_at_its_last_chunk_however_its_bytes_arrive() {
        let body = b"5\r\nhello\r\n1A;name=value\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\ngrpc-status: 0\r\n\r\n";
        let mut with_next = body.to_vec();
        with_next.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        for piece in [1, 2, 3, 7, 64, 1024] {
            assert_eq!(
                scan_in_pieces(&with_next, piece),
                Ok(Some(body.len())),
                "in pieces of {piece}"
            );
        }
        assert_eq!(scan_in_pieces(b"0\r\n\r\n", 1), Ok(Some(5)));
        assert_eq!(scan_in_pieces(b"0\n\n", 1), Ok(Some(3)), "bare LF");
        assert_eq!(scan_in_pieces(b"5\r\nhel", 2), Ok(None), "not yet");
        assert!(scan_in_pieces(b"zz\r\n", 4).is_err());
        assert!(
            scan_in_pieces(b"3\r\nabcX\r\n", 4).is_err(),
            "data longer than its size"
        );
        assert!(
            scan_in_pieces(b"ffffffffffffffffff\r\n", 64).is_err(),
            "overflow"
        );
    }

    #[test]
    fn a_head_ends_at_its_empty_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: h\r\n\r\nbody"), Some(27));
        assert_eq!(head_end(b"GET / HTTP/1.1\nHost: h\n\nbody"), Some(24));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: h\r\n"), None);
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: h\r\n\r"), None);
        assert_eq!(head_end(b""), None);
    }

    fn parsed<'h, 'b>(
        raw: &'b [u8],
        slots: &'h mut [httparse::Header<'b>],
    ) -> httparse::Request<'h, 'b> {
        let mut request = httparse::Request::new(slots);
        assert!(request.parse(raw).expect("parses").is_complete());
        request
    }

    #[test]
    fn only_plain_http11_requests_are_relayed() {
        let mut slots = [httparse::EMPTY_HEADER; 16];
        let plain = parsed(
            b"POST /s/a/b/ HTTP/1.1\r\nHost: h\r\nContent-Length: 12\r\nConnection: keep-alive, close\r\n\r\n",
            &mut slots,
        );
        let plan = Plan::of(&plain).expect("relayed");
        assert_eq!(
            (plan.body_length, plan.close, plan.head_method),
            (12, true, false)
        );
        for other in [
            &b"GET / HTTP/1.0\r\n\r\n"[..],
            b"GET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Type: application/grpc\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        ] {
            let mut slots = [httparse::EMPTY_HEADER; 16];
            let request = parsed(other, &mut slots);
            assert!(
                Plan::of(&request).is_none(),
                "{}",
                String::from_utf8_lossy(other)
            );
        }
    }

    #[test]
    fn the_upstream_head_is_rewritten_for_the_replica() {
        let raw = b"GET /s/alice/flood/predict?x=1 HTTP/1.1\r\nHost: hub:7701\r\n\
            Authorization: Bearer secret\r\nConnection: keep-alive, X-Private\r\nX-Private: 1\r\n\
            Keep-Alive: timeout=5\r\nTE: trailers\r\nX-Forwarded-For: 10.0.0.1\r\nAccept: */*\r\n\r\n";
        let mut slots = [httparse::EMPTY_HEADER; 16];
        let request = parsed(raw, &mut slots);
        let target = super::super::head::target_of(&request, None).expect("target");
        let endpoint = Endpoint::new(0, "c".into(), 1, "127.0.0.1:9000".parse().expect("addr"), 1);
        let mut out = Vec::new();
        upstream_head(&mut out, &request, &target, &endpoint, "192.0.2.7", true);
        assert_eq!(
            String::from_utf8(out).expect("text"),
            "GET /predict?x=1 HTTP/1.1\r\nhost: 127.0.0.1:9000\r\nte: trailers\r\nAccept: */*\r\n\
             x-forwarded-for: 10.0.0.1, 192.0.2.7\r\nx-forwarded-proto: http\r\n\
             x-forwarded-host: hub:7701\r\nx-forwarded-prefix: /s/alice/flood\r\n\r\n"
        );
    }

    #[test]
    fn the_answer_head_loses_hop_by_hop_headers_and_keeps_its_framing() {
        let raw = b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\
            Transfer-Encoding: chunked\r\nContent-Length: 10\r\nX-Model: v2\r\n\r\n";
        let mut slots = [httparse::EMPTY_HEADER; 16];
        let mut response = httparse::Response::new(&mut slots);
        assert!(response.parse(raw).expect("parses").is_complete());
        assert!(matches!(
            Framing::of(&response, false),
            Ok(Framing::Chunked(_))
        ));
        assert!(matches!(
            Framing::of(&response, true),
            Ok(Framing::Length(0))
        ));
        let mut out = Vec::new();
        downstream_head(&mut out, raw, &response, true, true);
        assert_eq!(
            String::from_utf8(out).expect("text"),
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Model: v2\r\nconnection: close\r\n\r\n"
        );
    }
}
