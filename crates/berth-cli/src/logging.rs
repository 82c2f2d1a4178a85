//! Log output: human-readable lines on stderr (coloured only on a terminal), and also to a
//! file when one is configured.

use std::fs::OpenOptions;
use std::io::IsTerminal;
use std::path::Path;
use std::sync::Mutex;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::MakeWriterExt;

/// Sets up logging at `level` (`BERTH_LOG` or `RUST_LOG` override it with a full filter), also
/// appending to `file` (its directory is created) when given.
pub fn init(level: &str, file: Option<&Path>) -> std::io::Result<()> {
    let filter = std::env::var("BERTH_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .map(EnvFilter::new)
        .unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match file {
        Some(path) => {
            if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            let file = OpenOptions::new().create(true).append(true).open(path)?;
            builder
                .with_writer(std::io::stderr.and(Mutex::new(file)))
                .with_ansi(false)
                .init();
        }
        // Colours only for a terminal: stderr redirected to a file gets plain text.
        None => builder
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .init(),
    }
    Ok(())
}
