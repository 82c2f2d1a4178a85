//! `berth service exec`: a command in one of a service's containers, over the hub's WebSocket
//! (`GET /api/services/{id}/exec`). With `-t` (or both ends a terminal) the local terminal is
//! put in raw mode and its size follows the window; with `-i` standard input is sent, its end
//! closing the command's input. The process exits with the command's exit code.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::Args;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::Message;

use super::api::HubClient;
use super::names;

/// Options of `berth service exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Service name (yours), OWNER/NAME, or id.
    id: String,
    /// Send standard input to the command.
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Give the command a terminal (default: when standard input and output are terminals).
    #[arg(short = 't', long)]
    tty: bool,
    /// Which replica (default: the first).
    #[arg(long)]
    replica: Option<i64>,
    /// The command and its arguments, after `--` (default: sh).
    #[arg(last = true)]
    command: Vec<String>,
}

/// Leaves the terminal's raw mode when dropped, however the session ends.
struct RawMode;

impl RawMode {
    fn enter() -> Result<Self, String> {
        crossterm::terminal::enable_raw_mode()
            .map(|()| Self)
            .map_err(|err| format!("cannot put the terminal in raw mode: {err}"))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = crossterm::terminal::disable_raw_mode();
    }
}

/// Runs `berth service exec` and returns the command's exit code.
pub async fn run(client: &HubClient, args: ExecArgs) -> Result<ExitCode, String> {
    let id = names::service_id(client, &args.id).await?;
    let tty = args.tty || (std::io::stdin().is_terminal() && std::io::stdout().is_terminal());
    let interactive = args.interactive || tty;
    let command = if args.command.is_empty() {
        "sh".to_owned()
    } else {
        shlex::try_join(args.command.iter().map(String::as_str))
            .map_err(|err| format!("cannot pass the command on: {err}"))?
    };
    let mut query = format!("command={}&tty={tty}", url_encode(&command));
    if let Some(replica) = args.replica {
        query.push_str(&format!("&replica={replica}"));
    }
    let size = tty.then(crossterm::terminal::size).and_then(Result::ok);
    if let Some((cols, rows)) = size {
        query.push_str(&format!("&cols={cols}&rows={rows}"));
    }
    let request = client.websocket_request(&format!("/api/services/{id}/exec?{query}"))?;
    let tls = client.websocket_tls()?;
    let (socket, _) = tokio_tungstenite::connect_async_tls_with_config(request, None, false, tls)
        .await
        .map_err(|err| match err {
            tokio_tungstenite::tungstenite::Error::Http(response) => {
                let body = response.body().as_deref().unwrap_or_default();
                let problem: Value = serde_json::from_slice(body).unwrap_or_default();
                format!(
                    "the hub refused the command (HTTP {}): {}",
                    response.status().as_u16(),
                    problem["detail"].as_str().unwrap_or("no detail")
                )
            }
            other => format!("cannot open the command's connection: {other}"),
        })?;
    // Raw mode only for a local terminal: `-t` with piped input still gets a remote terminal.
    let _raw = if tty && std::io::stdin().is_terminal() {
        Some(RawMode::enter()?)
    } else {
        None
    };
    let (mut sink, mut stream) = socket.split();
    let (to_hub, mut outgoing) = tokio::sync::mpsc::channel::<Message>(16);
    if interactive {
        let to_hub = to_hub.clone();
        tokio::spawn(async move {
            let mut stdin = tokio::io::stdin();
            let mut buffer = vec![0u8; 8192];
            loop {
                match stdin.read(&mut buffer).await {
                    Ok(0) | Err(_) => {
                        let _ = to_hub
                            .send(Message::Text(json!({"eof": true}).to_string().into()))
                            .await;
                        break;
                    }
                    Ok(read) => {
                        let chunk = buffer[..read].to_vec();
                        if to_hub.send(Message::Binary(chunk.into())).await.is_err() {
                            break;
                        }
                    }
                }
            }
        });
    } else {
        let _ = to_hub
            .send(Message::Text(json!({"eof": true}).to_string().into()))
            .await;
    }
    #[cfg(unix)]
    if tty {
        let to_hub = to_hub.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let Ok(mut resized) = signal(SignalKind::window_change()) else {
                return;
            };
            while resized.recv().await.is_some() {
                if let Ok((cols, rows)) = crossterm::terminal::size() {
                    let control = json!({"resize": [cols, rows]}).to_string();
                    if to_hub.send(Message::Text(control.into())).await.is_err() {
                        break;
                    }
                }
            }
        });
    }
    drop(to_hub);
    let sending = tokio::spawn(async move {
        while let Some(message) = outgoing.recv().await {
            if sink.send(message).await.is_err() {
                break;
            }
        }
    });
    let mut exit_code = None;
    let mut stdout = std::io::stdout();
    while let Some(message) = stream.next().await {
        match message {
            Ok(Message::Binary(bytes)) => {
                stdout
                    .write_all(&bytes)
                    .and_then(|()| stdout.flush())
                    .map_err(|err| format!("cannot write the command's output: {err}"))?;
            }
            Ok(Message::Text(text)) => {
                let control: Value = serde_json::from_str(&text).unwrap_or_default();
                if let Some(code) = control["exit_code"].as_i64() {
                    exit_code = Some(code);
                }
            }
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => {}
        }
    }
    sending.abort();
    match exit_code {
        Some(code) => Ok(ExitCode::from(u8::try_from(code).unwrap_or(1))),
        None => Err("the connection ended before the command did".to_owned()),
    }
}

/// `text` as a query value (letters, digits and `-._~` as they are; everything else %XX).
fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(byte).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}
