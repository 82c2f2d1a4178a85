//! Container logs: tail, timestamps, since, and follow as a stream.

use bollard::container::LogOutput;
use bollard::query_parameters::LogsOptions;
use futures_util::{Stream, StreamExt};
use serde::Serialize;

use crate::{DockerDriver, DriverError};

/// Which logs to read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogQuery {
    /// Only the last `n` lines; all when `None`.
    pub tail: Option<u64>,
    /// Prefix each line with its RFC 3339 timestamp.
    pub timestamps: bool,
    /// Only lines since this Unix time (seconds).
    pub since: Option<i64>,
    /// Keep the stream open and send new lines as they come.
    pub follow: bool,
}

/// Which output a log chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// A chunk of log output (usually one line, with its newline).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogChunk {
    /// Stdout or stderr.
    pub stream: LogStream,
    /// The text (lossy UTF-8).
    pub text: String,
}

impl DockerDriver {
    /// The logs of `container` as a stream of chunks; with `follow` it ends when the container stops.
    pub fn logs(
        &self,
        container: &str,
        query: &LogQuery,
    ) -> impl Stream<Item = Result<LogChunk, DriverError>> + Send + use<> {
        let options = LogsOptions {
            follow: query.follow,
            stdout: true,
            stderr: true,
            since: query
                .since
                .map(|since| i32::try_from(since).unwrap_or(i32::MAX))
                .unwrap_or(0),
            until: 0,
            timestamps: query.timestamps,
            tail: query
                .tail
                .map(|tail| tail.to_string())
                .unwrap_or_else(|| "all".to_owned()),
        };
        let address = self.address.clone();
        let container = container.to_owned();
        self.docker
            .logs(&container, Some(options))
            .filter_map(move |item| {
                let chunk = match item {
                    Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => {
                        Some(Ok(LogChunk {
                            stream: LogStream::Stdout,
                            text: String::from_utf8_lossy(&message).into_owned(),
                        }))
                    }
                    Ok(LogOutput::StdErr { message }) => Some(Ok(LogChunk {
                        stream: LogStream::Stderr,
                        text: String::from_utf8_lossy(&message).into_owned(),
                    })),
                    Ok(LogOutput::StdIn { .. }) => None,
                    Err(err) => Some(Err(DriverError::for_container(&address, &container, err))),
                };
                std::future::ready(chunk)
            })
    }

    /// The logs of `container` collected into one text (stdout and stderr interleaved as written).
    /// `follow` is ignored: this returns what exists now.
    pub async fn logs_text(
        &self,
        container: &str,
        query: &LogQuery,
    ) -> Result<String, DriverError> {
        let query = LogQuery {
            follow: false,
            ..query.clone()
        };
        let mut stream = std::pin::pin!(self.logs(container, &query));
        let mut text = String::new();
        while let Some(chunk) = stream.next().await {
            text.push_str(&chunk?.text);
        }
        Ok(text)
    }
}
