//! `GET /api/services/{id}/exec`: a command in one of the service's containers, carried over a
//! WebSocket — `berth service exec` and the console's terminal. The command starts before the
//! upgrade, so every refusal is an HTTP problem. Then binary messages are the command's stdin
//! and its output; a text message from the client is a control (`{"resize": [cols, rows]}`,
//! `{"eof": true}`), and the last text message from the hub is `{"exit_code": N}`. Owner or
//! admin; each session is an operation in the log (`service.exec`, with the command).

use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use berth_docker::ExecSession;
use berth_http::{Path, Problem, parse_query};
use berth_store::nodes;
use berth_store::operations;
use berth_store::services::ServiceRecord;
use berth_store::users::User;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use super::CurrentUser;
use super::services::owned;
use crate::node_client::NodeClient;
use crate::replicas;
use crate::state::HubState;

type Shared = State<Arc<HubState>>;

/// What to run, where, and how.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecQuery {
    /// Which replica (default: the first).
    #[serde(default)]
    pub replica: Option<i64>,
    /// The command, split like a shell would (default `sh`).
    #[serde(default)]
    pub command: Option<String>,
    /// Give it a terminal (default true; false for piped input and output).
    #[serde(default)]
    pub tty: Option<bool>,
    /// Terminal width, columns.
    #[serde(default)]
    pub cols: Option<u16>,
    /// Terminal height, rows.
    #[serde(default)]
    pub rows: Option<u16>,
}

/// A command started in a container, with the engine that runs it.
pub struct OpenExec {
    engine: Arc<NodeClient>,
    session: ExecSession,
}

/// Starts the command `query` asks for in a container of `service` as `user` and logs it.
pub async fn open(
    state: &HubState,
    user: &User,
    service: &ServiceRecord,
    query: &ExecQuery,
) -> Result<OpenExec, Problem> {
    let argv = match query.command.as_deref().map(str::trim) {
        None | Some("") => vec!["sh".to_owned()],
        Some(text) => berth_core::spec::Command::Shell(text.to_owned()).argv()?,
    };
    let allocations = replicas::allocations_of(state, service.id).await?;
    let allocation = match query.replica {
        Some(replica) => allocations
            .iter()
            .find(|allocation| allocation.replica == replica)
            .ok_or_else(|| {
                Problem::invalid_field(
                    "replica",
                    format!("service {} has no replica {replica}", service.name),
                )
            })?,
        None => allocations.first().ok_or_else(|| {
            Problem::new(
                StatusCode::CONFLICT,
                format!(
                    "service {} has no container to run a command in; start it first",
                    service.name
                ),
            )
        })?,
    };
    if allocation.container_id.is_empty() {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            format!(
                "replica {} of {} has no container yet (it is being placed or created); try again once it runs",
                allocation.replica, service.name
            ),
        ));
    }
    let node = nodes::get(&mut *state.store.acquire().await?, allocation.node_id).await?;
    let engine = state.node_client(&node).await?;
    let NodeClient::Docker(driver) = &*engine else {
        return Err(Problem::new(
            StatusCode::NOT_IMPLEMENTED,
            format!(
                "node {} is reached through an agent; a command can be run only on a node the hub reaches over Docker directly",
                node.name
            ),
        ));
    };
    let tty = query.tty.unwrap_or(true);
    let size = query.cols.zip(query.rows);
    let session = driver
        .open_exec(&allocation.container_id, &argv, tty, size)
        .await
        .map_err(|err| {
            Problem::new(
                StatusCode::CONFLICT,
                format!(
                    "cannot run {:?} in replica {} of {}: {err}",
                    argv.join(" "),
                    allocation.replica,
                    service.name
                ),
            )
        })?;
    let detail = json!({"replica": allocation.replica, "node_id": node.id, "command": argv,
        "tty": tty});
    let entry = replicas::service_operation(Some(user.id), "service.exec", service, "ok", detail);
    operations::commit_with(state.store.begin().await?, &entry).await?;
    Ok(OpenExec { engine, session })
}

/// `GET /api/services/{id}/exec?replica=&command=&tty=&cols=&rows=` with a WebSocket upgrade.
pub async fn exec(
    State(state): Shared,
    user: CurrentUser,
    Path(id): Path<i64>,
    RawQuery(raw): RawQuery,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, Problem> {
    let query: ExecQuery = parse_query(raw)?;
    let service = owned(&state, &user.0, id).await?;
    let upgrade = upgrade.map_err(|_| {
        Problem::new(
            StatusCode::UPGRADE_REQUIRED,
            "connect with a WebSocket (Connection: Upgrade, Upgrade: websocket); `berth service exec` does",
        )
    })?;
    let opened = open(&state, &user.0, &service, &query).await?;
    Ok(upgrade.on_upgrade(move |socket| relay(socket, opened)))
}

/// Carries one session: the client's binary messages to the command's stdin, its output back,
/// then its exit code; a client that goes away ends the command's stdin.
pub async fn relay(socket: WebSocket, opened: OpenExec) {
    let OpenExec { engine, session } = opened;
    let ExecSession {
        id,
        mut output,
        mut input,
    } = session;
    let (mut sink, mut stream) = socket.split();
    let resizer = Arc::clone(&engine);
    let exec_id = id.clone();
    let mut from_client = tokio::spawn(async move {
        while let Some(Ok(message)) = stream.next().await {
            match message {
                Message::Binary(bytes) => {
                    if input.write_all(&bytes).await.is_err() {
                        break;
                    }
                    let _ = input.flush().await;
                }
                Message::Text(text) => {
                    let control: Value = serde_json::from_str(&text).unwrap_or_default();
                    if control["eof"] == true {
                        let _ = input.shutdown().await;
                    }
                    let size = control["resize"]
                        .as_array()
                        .and_then(|size| Some((size.first()?.as_u64()?, size.get(1)?.as_u64()?)));
                    if let (Some((cols, rows)), NodeClient::Docker(driver)) = (size, &*resizer) {
                        let size = (
                            u16::try_from(cols).unwrap_or(u16::MAX),
                            u16::try_from(rows).unwrap_or(u16::MAX),
                        );
                        let _ = driver.resize_exec(&exec_id, size).await;
                    }
                }
                Message::Close(_) => break,
                Message::Ping(_) | Message::Pong(_) => {}
            }
        }
    });
    let to_client = async {
        while let Some(chunk) = output.next().await {
            let Ok(bytes) = chunk else { break };
            if sink.send(Message::Binary(bytes.into())).await.is_err() {
                return;
            }
        }
        let exit_code = match &*engine {
            NodeClient::Docker(driver) => driver.exec_exit_code(&id).await.ok().flatten(),
            _ => None,
        };
        let _ = sink
            .send(Message::Text(
                json!({"exit_code": exit_code}).to_string().into(),
            ))
            .await;
        let _ = sink
            .send(Message::Close(Some(CloseFrame {
                code: axum::extract::ws::close_code::NORMAL,
                reason: "the command ended".into(),
            })))
            .await;
    };
    tokio::select! {
        () = to_client => from_client.abort(),
        _ = &mut from_client => {}
    }
}
