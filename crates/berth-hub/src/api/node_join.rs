//! A node joins with one command. An admin issues a join token (`POST /api/nodes/join-tokens`,
//! `berth node join-token`): short-lived, single-use, shown once with the exact command to run
//! on the new host. That host's `berth agent --join <hub> --token <t>` presents it to
//! `POST /api/nodes/join` (no API token: the join token is the credential) with the URL the hub
//! reaches it on; the hub creates the node — driver `agent`, that URL, a fresh API key made for
//! this node alone — in the same transaction that uses the token up, answers the key, and tests
//! the node until it answers, learning its hardware from `/capabilities`.
//!
//! An agent that asks for a certificate (`--tls-from-hub`) sends a certificate request with
//! its join; the hub's CA (`DATA_DIR/pki`, as `berth pki init` or `--tls-self-signed` made it)
//! signs it for the host of its `https://` URL alone, and the hub trusts that CA for this node.
//! A host that one of the PKI's other certificates names (the hub's own, say) is refused, so a
//! join token never yields a certificate that passes for the hub.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::{Extension, Json};
use berth_docker::pki;
use berth_http::listen::ServedOverTls;
use berth_http::{Problem, parse_body};
use berth_store::join_tokens;
use berth_store::nodes::{self, NodeRecord};
use berth_store::operations::{self, NewOperation};
use berth_store::secrets::random_hex;
use serde::Deserialize;
use serde_json::{Value, json};

use super::CurrentUser;
use crate::monitor;
use crate::state::HubState;

type Shared = State<Arc<HubState>>;

/// Default life of a join token.
const DEFAULT_TTL_SECONDS: u64 = 900;
/// Longest life of a join token: a day.
const MAX_TTL_SECONDS: u64 = 86_400;
/// How long the hub keeps testing a node that just joined until it answers.
const FIRST_CHECKS: Duration = Duration::from_secs(30);

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    /// Seconds the token works (60 to 86,400; default 900).
    #[serde(default)]
    ttl_seconds: Option<u64>,
    /// The joining node's name; the agent's `SERVER_ID` when absent.
    #[serde(default)]
    name: Option<String>,
}

/// The hub's base URL as the caller reached it: the request's authority (HTTP/2) or `Host`,
/// with `https` when it came over TLS (here, or to a proxy that says so).
fn hub_url(uri: &Uri, headers: &HeaderMap, over_tls: bool) -> String {
    let host = uri
        .authority()
        .map(|authority| authority.as_str().to_owned())
        .or_else(|| {
            headers
                .get(header::HOST)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "localhost:7700".to_owned());
    let proxied_tls = headers
        .get("x-forwarded-proto")
        .and_then(|value| value.to_str().ok())
        == Some("https");
    let scheme = if over_tls || proxied_tls {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{host}")
}

/// `POST /api/nodes/join-tokens` (admin): a join token and the command that uses it.
pub async fn issue(
    State(state): Shared,
    user: CurrentUser,
    over_tls: Option<Extension<ServedOverTls>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), Problem> {
    user.require_admin()?;
    let request: TokenRequest = if body.is_empty() {
        TokenRequest::default()
    } else {
        parse_body(&body)?
    };
    let ttl = request.ttl_seconds.unwrap_or(DEFAULT_TTL_SECONDS);
    if !(60..=MAX_TTL_SECONDS).contains(&ttl) {
        return Err(Problem::invalid_field(
            "ttl_seconds",
            format!("{ttl} is outside 60..={MAX_TTL_SECONDS} seconds"),
        ));
    }
    if let Some(name) = &request.name {
        berth_core::spec::validate_name("name", name)
            .map_err(|err| Problem::invalid_field("name", err.message))?;
    }
    let expires_at = berth_store::now_ms() + i64::try_from(ttl * 1000).unwrap_or(i64::MAX);
    let mut transaction = state.store.begin().await?;
    if let Some(name) = &request.name
        && nodes::find_by_name(&mut transaction, name).await?.is_some()
    {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            format!("a node named {name} exists; choose another name"),
        ));
    }
    let issued = join_tokens::issue(
        &mut transaction,
        user.0.id,
        expires_at,
        request.name.as_deref(),
    )
    .await?;
    operations::commit_with(
        transaction,
        &NewOperation {
            user_id: Some(user.0.id),
            action: "node.join_token".to_owned(),
            target_kind: "join_token".to_owned(),
            target_id: issued.id.to_string(),
            node_id: None,
            service_id: None,
            outcome: "ok".to_owned(),
            detail: json!({"name": request.name, "ttl_seconds": ttl}),
        },
    )
    .await?;
    let hub = hub_url(&uri, &headers, over_tls.is_some());
    let token = issued.token;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "token": token,
            "expires_at": issued.expires_at,
            "name": request.name,
            "hub_url": hub,
            "agent_tls_from_hub": state
                .pki_dir
                .get()
                .is_some_and(|dir| dir.join(pki::CA_KEY).exists()),
            "command": format!("berth agent --join {hub} --token {token}"),
            "docker_run": format!(
                "docker run -d --name berth-agent --restart unless-stopped -p 8000:8000 \
                 -v /var/run/docker.sock:/var/run/docker.sock -v berth-agent:/var/lib/berth-agent \
                 berth/agent:latest agent --data-dir /var/lib/berth-agent --join {hub} --token {token}"
            ),
        })),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinRequest {
    /// The join token.
    token: String,
    /// Where the hub reaches the agent (`http://10.0.0.7:8000`).
    agent_url: String,
    /// The agent's `SERVER_ID`: the node's name unless the token named one.
    server_id: String,
    /// `cpu`, `gpu` or `edge`.
    #[serde(default)]
    server_type: Option<String>,
    /// A certificate request (PEM) for the agent's TLS listener, to be signed by the hub's CA.
    #[serde(default)]
    csr: Option<String>,
}

/// The agent's certificate for `url`'s host signed by the hub's CA from `csr`, and that CA.
fn sign_for_agent(
    state: &HubState,
    csr: &str,
    name: &str,
    url: &reqwest::Url,
) -> Result<(String, String), Problem> {
    if url.scheme() != "https" {
        return Err(Problem::invalid_field(
            "agent_url",
            "a certificate is asked for, so the agent's URL is https://",
        ));
    }
    let dir = state
        .pki_dir
        .get()
        .filter(|dir| dir.join(pki::CA_KEY).exists())
        .ok_or_else(|| {
            Problem::new(
                StatusCode::CONFLICT,
                "this hub has no CA to sign the agent's certificate: run berth pki init --dir DATA_DIR/pki on the hub (or start it with --tls-self-signed), or give the agent --tls-cert/--tls-key",
            )
        })?;
    let host = url
        .host_str()
        .unwrap_or_default()
        .trim_matches(['[', ']'])
        .to_owned();
    if pki::names_in_use(dir).contains(&host) {
        return Err(Problem::invalid_field(
            "agent_url",
            format!(
                "{host} is a name of a certificate of the hub's PKI (the hub's own, say); advertise the agent under an address of its own"
            ),
        ));
    }
    let certificate = pki::sign_agent_request(dir, csr, name, &host)
        .map_err(|err| Problem::invalid_field("csr", err.to_string()))?;
    let ca = pki::ca_pem(dir)
        .map_err(|err| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()))?;
    Ok((certificate, ca))
}

/// `POST /api/nodes/join` (the join token is the credential): creates the node and answers its
/// API key, once.
pub async fn join(State(state): Shared, body: Bytes) -> Result<(StatusCode, Json<Value>), Problem> {
    let request: JoinRequest = parse_body(&body)?;
    // The token first: without a good one nothing else is looked at. A refusal below rolls the
    // transaction back, so the token stays usable after a mistake.
    let mut transaction = state.store.begin().await?;
    let Some(redeemed) =
        join_tokens::redeem(&mut transaction, &request.token, berth_store::now_ms()).await?
    else {
        return Err(Problem::new(
            StatusCode::UNAUTHORIZED,
            "the join token is unknown, used or expired; issue a new one with berth node join-token",
        ));
    };
    let url = reqwest::Url::parse(&request.agent_url)
        .ok()
        .filter(|url| matches!(url.scheme(), "http" | "https") && url.host_str().is_some())
        .ok_or_else(|| {
            Problem::invalid_field(
                "agent_url",
                format!(
                    "{:?} is not an http:// or https:// URL with a host",
                    request.agent_url
                ),
            )
        })?;
    let server_type = request.server_type.unwrap_or_else(|| "cpu".to_owned());
    if !matches!(server_type.as_str(), "cpu" | "gpu" | "edge") {
        return Err(Problem::invalid_field(
            "server_type",
            format!("{server_type:?} is not cpu, gpu or edge"),
        ));
    }
    let name = redeemed
        .node_name
        .clone()
        .unwrap_or_else(|| request.server_id.clone());
    berth_core::spec::validate_name("server_id", &name)
        .map_err(|err| Problem::invalid_field("server_id", err.message))?;
    if nodes::find_by_name(&mut transaction, &name)
        .await?
        .is_some()
    {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            format!(
                "a node named {name} exists; start the agent with another SERVER_ID, or issue a token naming the node"
            ),
        ));
    }
    let signed = request
        .csr
        .as_deref()
        .map(|csr| sign_for_agent(&state, csr, &name, &url))
        .transpose()?;
    let api_key = random_hex::<32>()?;
    let host = url.host_str().unwrap_or_default().to_owned();
    let mut record = NodeRecord::new(&name, "agent");
    record.agent_url = request.agent_url.trim_end_matches('/').to_owned();
    record.agent_key_sealed = Some(state.secrets.seal(&api_key)?);
    record.server_type = server_type;
    record.public_ip = host.clone();
    record.private_ip = host;
    record.use_tls = url.scheme() == "https";
    if let Some((_, ca)) = &signed {
        record.ca_cert_sealed = Some(state.secrets.seal(ca)?);
    }
    record.origin = "join".to_owned();
    let stored = nodes::insert(&mut transaction, &record).await?;
    join_tokens::record_node(&mut transaction, redeemed.id, stored.id).await?;
    operations::commit_with(
        transaction,
        &NewOperation {
            user_id: redeemed.created_by,
            action: "node.join".to_owned(),
            target_kind: "node".to_owned(),
            target_id: stored.id.to_string(),
            node_id: Some(stored.id),
            service_id: None,
            outcome: "ok".to_owned(),
            detail: json!({
                "name": stored.name, "url": stored.agent_url, "token": redeemed.id,
                "certificate_signed": signed.is_some(),
            }),
        },
    )
    .await?;
    state.placements_changed();
    tokio::spawn(first_checks(Arc::clone(&state), stored.clone()));
    let mut answer = json!({"node_id": stored.id, "name": stored.name, "api_key": api_key});
    if let Some((certificate, ca)) = signed {
        answer["certificate"] = json!(certificate);
        answer["ca"] = json!(ca);
    }
    Ok((StatusCode::CREATED, Json(answer)))
}

/// Tests a node that just joined every half second until it answers (its agent starts serving
/// once it has its key), so it shows up connected, with its hardware, at once.
async fn first_checks(state: Arc<HubState>, node: NodeRecord) {
    let began = std::time::Instant::now();
    while began.elapsed() < FIRST_CHECKS {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let current = match state.store.acquire().await {
            Ok(mut connection) => match nodes::get(&mut connection, node.id).await {
                Ok(current) => current,
                Err(_) => return,
            },
            Err(_) => continue,
        };
        if current.docker_status == "connected" {
            return;
        }
        if let Ok(check) = monitor::check_and_record(&state, &current, None).await
            && check.report.status == berth_core::ConnectionStatus::Connected
        {
            return;
        }
    }
}
