//! Log output on stderr, and also to a file when one is configured: human-readable lines
//! (coloured only on a terminal), or one JSON object per line for log collectors
//! (`--log-format json`).

use std::fs::OpenOptions;
use std::io::IsTerminal;
use std::path::Path;
use std::sync::Mutex;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::{BoxMakeWriter, MakeWriterExt};

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Lines for people.
    #[default]
    Text,
    /// One JSON object per line (time, level, target, message and fields).
    Json,
}

/// Sets up logging at `level` (`BERTH_LOG` or `RUST_LOG` override it with a full filter) in
/// `format`, also appending to `file` (its directory is created) when given.
pub fn init(level: &str, file: Option<&Path>, format: LogFormat) -> std::io::Result<()> {
    let filter = std::env::var("BERTH_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .map(EnvFilter::new)
        .unwrap_or_else(|_| EnvFilter::new(level));
    // Colours only for a terminal: stderr redirected to a file gets plain text.
    let mut ansi = std::io::stderr().is_terminal();
    let writer = match file {
        Some(path) => {
            if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            let file = OpenOptions::new().create(true).append(true).open(path)?;
            ansi = false;
            BoxMakeWriter::new(std::io::stderr.and(Mutex::new(file)))
        }
        None => BoxMakeWriter::new(std::io::stderr),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Text => builder.with_ansi(ansi).init(),
        LogFormat::Json => builder.json().with_current_span(false).init(),
    }
    Ok(())
}
