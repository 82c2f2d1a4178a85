//! An interactive command inside a container: the engine's exec with stdin attached (and a
//! terminal when asked), its output as a stream, resizing, and the exit code once it ended —
//! what `berth service exec` and the console's terminal are carried over.

use std::pin::Pin;

use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, ResizeExecOptions, StartExecOptions, StartExecResults};
use futures_util::{Stream, StreamExt};
use tokio::io::AsyncWrite;

use crate::{DockerDriver, DriverError};

/// One running exec: write to `input`, read `output` until it ends.
pub struct ExecSession {
    /// The engine's id of the exec (for resizing and the exit code).
    pub id: String,
    /// What the command writes (stdout and stderr merged when it has a terminal).
    pub output: Pin<Box<dyn Stream<Item = Result<Vec<u8>, DriverError>> + Send>>,
    /// The command's standard input.
    pub input: Pin<Box<dyn AsyncWrite + Send>>,
}

impl DockerDriver {
    /// Starts `argv` in the running `container` with stdin attached, in a terminal of
    /// `size` (columns, rows) when `tty`.
    pub async fn open_exec(
        &self,
        container: &str,
        argv: &[String],
        tty: bool,
        size: Option<(u16, u16)>,
    ) -> Result<ExecSession, DriverError> {
        let failed = |err| DriverError::for_container(&self.address, container, err);
        let options = CreateExecOptions {
            cmd: Some(argv.to_vec()),
            attach_stdin: Some(true),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(tty),
            env: tty.then(|| vec!["TERM=xterm-256color".to_owned()]),
            ..Default::default()
        };
        let created = self
            .docker
            .create_exec(container, options)
            .await
            .map_err(failed)?;
        let started = self
            .docker
            .start_exec(
                &created.id,
                Some(StartExecOptions {
                    detach: false,
                    tty,
                    output_capacity: None,
                }),
            )
            .await
            .map_err(failed)?;
        let StartExecResults::Attached { output, input } = started else {
            return Err(DriverError::Engine {
                status: 500,
                message: "the engine started the exec detached".to_owned(),
            });
        };
        if let (true, Some(size)) = (tty, size) {
            // A resize before the terminal exists is refused by some engines: best effort.
            let _ = self.resize_exec(&created.id, size).await;
        }
        let address = self.address.clone();
        let container = container.to_owned();
        let output = output.map(move |chunk| {
            chunk
                .map(|output| match output {
                    LogOutput::StdOut { message }
                    | LogOutput::StdErr { message }
                    | LogOutput::Console { message }
                    | LogOutput::StdIn { message } => message.to_vec(),
                })
                .map_err(|err| DriverError::for_container(&address, &container, err))
        });
        Ok(ExecSession {
            id: created.id,
            output: Box::pin(output),
            input,
        })
    }

    /// Resizes the terminal of exec `id` to `size` (columns, rows).
    pub async fn resize_exec(&self, id: &str, size: (u16, u16)) -> Result<(), DriverError> {
        self.docker
            .resize_exec(
                id,
                ResizeExecOptions {
                    width: size.0,
                    height: size.1,
                },
            )
            .await
            .map_err(|err| DriverError::for_container(&self.address, id, err))
    }

    /// The exit code of exec `id`, once it ended.
    pub async fn exec_exit_code(&self, id: &str) -> Result<Option<i64>, DriverError> {
        let inspected = self
            .docker
            .inspect_exec(id)
            .await
            .map_err(|err| DriverError::for_container(&self.address, id, err))?;
        Ok(inspected.exit_code)
    }
}
