//! Following an operation from the terminal: the hub answers a change with its operation at
//! once; unless told `--detach`, the CLI follows the operation's live stream, drawing its steps
//! and pulled bytes as a progress bar on a terminal (nothing when standard error is not one),
//! and ends with the service as it stands, or with the operation's error.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use super::api::HubClient;

/// What the operation in `accepted` (a change's answer) came to: with `detach`, the accepted
/// operation itself, after saying how to follow it; otherwise the operation once it ended —
/// an error naming what failed unless it succeeded.
pub async fn follow(client: &HubClient, accepted: Value, detach: bool) -> Result<Value, String> {
    let id = accepted["id"].as_i64().unwrap_or_default();
    if detach || is_finished(&accepted) {
        if !is_finished(&accepted) {
            eprintln!(
                "operation {id} ({}) accepted; follow it with: berth ops show {id} --wait",
                accepted["kind"].as_str().unwrap_or("change")
            );
        }
        return ended(accepted);
    }
    let bar = spinner("");
    let mut last = accepted.clone();
    draw(&bar, &last);
    client
        .follow_events(&format!("/api/operations/{id}/events"), |operation| {
            draw(&bar, &operation);
            let done = is_finished(&operation);
            last = operation;
            !done
        })
        .await?;
    bar.finish_and_clear();
    if !is_finished(&last) {
        // The stream ended early (a hub restart): ask once more, waiting.
        last = client
            .call(
                reqwest::Method::GET,
                &format!("/api/operations/{id}?wait=600"),
                None,
            )
            .await?;
    }
    ended(last)
}

/// A spinner with `message` on a terminal's standard error, for a call that takes time.
pub fn spinner(message: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_message(message.to_owned());
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

fn is_finished(operation: &Value) -> bool {
    matches!(
        operation["state"].as_str(),
        Some("succeeded" | "failed" | "cancelled")
    )
}

fn ended(operation: Value) -> Result<Value, String> {
    let id = operation["id"].as_i64().unwrap_or_default();
    let kind = operation["kind"].as_str().unwrap_or("change");
    match operation["state"].as_str() {
        Some("failed") => Err(format!(
            "operation {id} ({kind}) failed: {}",
            operation["error"].as_str().unwrap_or("no reason given")
        )),
        Some("cancelled") => Err(format!(
            "operation {id} ({kind}) was cancelled: {}",
            operation["error"].as_str().unwrap_or("no reason given")
        )),
        _ => Ok(operation),
    }
}

/// Draws the operation's progress: steps as a bar's position, the step's words and the bytes
/// pulled as its message.
fn draw(bar: &ProgressBar, operation: &Value) {
    let progress = &operation["progress"];
    let total = progress["steps_total"].as_u64().unwrap_or(0);
    if total > 0 && bar.length() != Some(total) {
        bar.set_length(total);
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
    }
    bar.set_position(progress["steps_done"].as_u64().unwrap_or(0));
    let mut message = progress["step"]
        .as_str()
        .unwrap_or(operation["kind"].as_str().unwrap_or_default())
        .to_owned();
    let (done, all) = (
        progress["bytes_done"].as_u64().unwrap_or(0),
        progress["bytes_total"].as_u64().unwrap_or(0),
    );
    if all > 0 {
        message.push_str(&format!(
            " ({} / {})",
            indicatif::HumanBytes(done),
            indicatif::HumanBytes(all)
        ));
    }
    bar.set_message(message);
}
