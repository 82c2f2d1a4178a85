//! `GET /events`: this agent's containers as a stream of changes (Server-Sent Events), an
//! extension the original mManager does not have.
//!
//! A client without a position first gets `event: snapshot` (`{"seq", "containers": [list
//! items]}`), then `event: container` (`{"seq", "action", "id", "container": list item or
//! null}`) for every change from the engine's events, in order; each event's `id:` is its `seq`.
//! A client that reconnects with `?since=<seq>` (or the `Last-Event-ID` header) gets what it
//! missed, or a new snapshot when the agent no longer holds all of it.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use berth_docker::mirror::MirrorChange;
use futures_util::stream;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use super::containers::list_item;
use super::{Problem, parse_query};
use crate::state::AgentState;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    since: Option<u64>,
}

/// `GET /events?since=`.
pub async fn stream(
    State(state): State<Arc<AgentState>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    let query: EventsQuery = parse_query(raw)?;
    let since = match query.since {
        Some(seq) => Some(seq),
        None => match headers.get("last-event-id") {
            Some(value) => Some(
                value
                    .to_str()
                    .ok()
                    .and_then(|text| text.trim().parse::<u64>().ok())
                    .ok_or_else(|| {
                        Problem::invalid_field("Last-Event-ID", "must be a sequence number")
                    })?,
            ),
            None => None,
        },
    };
    // Subscribe before reading the backlog: nothing falls between them, and what is in both
    // is skipped by its number.
    let changes = state.mirror.subscribe();
    let (first, last) = match since.and_then(|seq| state.mirror.since(seq)) {
        Some(backlog) => {
            let last = backlog
                .last()
                .map_or(since.unwrap_or(0), |change| change.seq);
            (backlog.iter().map(change_event).collect(), last)
        }
        None => {
            let (event, seq) = snapshot_event(&state);
            (vec![event], seq)
        }
    };
    let live = stream::unfold(
        (state, changes, last),
        |(state, mut changes, mut last)| async move {
            loop {
                match changes.recv().await {
                    Ok(change) if change.seq <= last => continue,
                    Ok(change) => {
                        last = change.seq;
                        return Some((change_event(&change), (state, changes, last)));
                    }
                    // Fell behind the broadcast: start over from a snapshot.
                    Err(RecvError::Lagged(_)) => {
                        let (event, seq) = snapshot_event(&state);
                        last = seq;
                        return Some((event, (state, changes, last)));
                    }
                    Err(RecvError::Closed) => return None,
                }
            }
        },
    );
    let events = futures_util::StreamExt::map(
        futures_util::StreamExt::chain(stream::iter(first), live),
        Ok::<_, Infallible>,
    );
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

fn change_event(change: &MirrorChange) -> Event {
    let container = change.container.as_deref().map(list_item);
    Event::default()
        .event("container")
        .id(change.seq.to_string())
        .data(
            json!({"seq": change.seq, "action": change.action, "id": change.id,
                "container": container})
            .to_string(),
        )
}

/// Every container now, with the number of the last change it includes.
fn snapshot_event(state: &AgentState) -> (Event, u64) {
    let (seq, containers) = state.mirror.snapshot();
    let items: Vec<_> = containers
        .iter()
        .map(|inspected| list_item(inspected))
        .collect();
    let event = Event::default().event("snapshot").id(seq.to_string()).data(
        json!({"seq": seq, "synced": state.mirror.is_synced(), "containers": items}).to_string(),
    );
    (event, seq)
}
