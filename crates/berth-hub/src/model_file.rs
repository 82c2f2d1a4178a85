//! Seed 004's model files (`model_id`, `model_path`, `device`, `batch_size`, `max_memory_mb`) as
//! a service: the hub configuration's `model_runtimes` say which image serves a model and how it
//! is started; the model file is mounted read-only into it from the node (only from under the
//! configured `model_roots`, unless an admin asks); `device: cuda:N` asks for GPU N, `cuda` for
//! any GPU, `cpu` for none; `max_memory_mb` makes it a GPU memory share; `batch_size` reaches the
//! runtime. The request's own fields (image, command, port, environment, limits) win over what
//! the runtime gives.

use std::collections::BTreeMap;
use std::path::{Component, Path};

use berth_http::Problem;
use serde::{Deserialize, Serialize};

/// A model file as seed 004 writes it, plus the runtime to serve it with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    /// The model's name: the service answers to it on the OpenAI-compatible front.
    pub model_id: String,
    /// Where the model is on the node (a file or a directory).
    pub model_path: String,
    /// `cpu`, `cuda` (any GPU) or `cuda:N` (GPU N).
    #[serde(default = "cuda")]
    pub device: String,
    /// Passed to the runtime (`{batch_size}`, `BATCH_SIZE`).
    #[serde(default = "one")]
    pub batch_size: u32,
    /// GPU memory the model may take, MiB: a share of one GPU of that size (rounded up to GiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory_mb: Option<u64>,
    /// Which of the hub's `model_runtimes`; the one marked default (or the only one) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
}

fn cuda() -> String {
    "cuda".to_owned()
}

fn one() -> u32 {
    1
}

/// An image that serves models, from the hub configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelRuntime {
    /// Image reference.
    pub image: String,
    /// The command; `{model_path}` (inside the container), `{model_id}`, `{device}`,
    /// `{batch_size}` and `{port}` are replaced. The image's when absent.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// The directory inside the container the model is mounted under.
    #[serde(default = "models_dir")]
    pub model_dir: String,
    /// The HTTP port it serves on.
    #[serde(default = "port")]
    pub port: u16,
    /// More environment.
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    /// Its readiness path.
    #[serde(default)]
    pub probe_path: Option<String>,
    /// This runtime serves model files that name none.
    #[serde(default)]
    pub default: bool,
}

fn models_dir() -> String {
    "/models".to_owned()
}

fn port() -> u16 {
    8000
}

/// What a model file makes of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expansion {
    /// The runtime's image.
    pub image: String,
    /// Its command with the placeholders filled in.
    pub command: Option<Vec<String>>,
    /// Its environment plus `MODEL_ID`, `MODEL_PATH`, `DEVICE`, `BATCH_SIZE`.
    pub environment: BTreeMap<String, String>,
    /// Its port.
    pub port: u16,
    /// Its readiness path.
    pub probe_path: Option<String>,
    /// The node's path, mounted read-only at `mount.1`.
    pub mount: (String, String),
    /// Whole GPUs (1 for `cuda` without `max_memory_mb`).
    pub gpu_count: i64,
    /// A GPU share, GiB.
    pub gpu_share_gb: Option<i64>,
    /// `cuda:N`'s N.
    pub gpu_index: Option<u32>,
    /// Any GPU (`cuda`): the one with the most free memory, as seed 004's `find_best_device`.
    pub most_free: bool,
}

/// Which GPU `device` asks for: `None` for the CPU, `Some(None)` for any GPU.
fn device_gpu(device: &str) -> Result<Option<Option<u32>>, Problem> {
    match device {
        "cpu" => Ok(None),
        "cuda" | "gpu" => Ok(Some(None)),
        other => other
            .strip_prefix("cuda:")
            .and_then(|index| index.parse::<u32>().ok())
            .map(|index| Some(Some(index)))
            .ok_or_else(|| {
                Problem::invalid_field(
                    "model.device",
                    format!("{other:?} is not cpu, cuda or cuda:N"),
                )
            }),
    }
}

impl ModelFile {
    /// The checks that need nothing but the file; errors name `model.…`.
    pub fn check(&self) -> Result<(), Problem> {
        if self.model_id.is_empty()
            || self.model_id.len() > 200
            || self
                .model_id
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(Problem::invalid_field(
                "model.model_id",
                "1 to 200 characters, no spaces",
            ));
        }
        let path = Path::new(&self.model_path);
        if !path.is_absolute()
            || path
                .components()
                .any(|part| matches!(part, Component::ParentDir))
            || self.model_path.contains(':')
        {
            return Err(Problem::invalid_field(
                "model.model_path",
                format!(
                    "{:?} is not an absolute path on the node without `..` or `:`",
                    self.model_path
                ),
            ));
        }
        device_gpu(&self.device)?;
        if !(1..=65_536).contains(&self.batch_size) {
            return Err(Problem::invalid_field(
                "model.batch_size",
                format!("{} is not between 1 and 65536", self.batch_size),
            ));
        }
        if let Some(megabytes) = self.max_memory_mb {
            if !(1..=1 << 24).contains(&megabytes) {
                return Err(Problem::invalid_field(
                    "model.max_memory_mb",
                    format!("{megabytes} is not between 1 and 16777216"),
                ));
            }
            if self.device == "cpu" {
                return Err(Problem::invalid_field(
                    "model.max_memory_mb",
                    "is GPU memory; a model on the cpu device has none",
                ));
            }
        }
        Ok(())
    }

    /// What this file makes with `runtimes`; `model_path` must lie under one of `roots` unless
    /// `admin`.
    pub fn expand(
        &self,
        runtimes: &BTreeMap<String, ModelRuntime>,
        roots: &[String],
        admin: bool,
    ) -> Result<Expansion, Problem> {
        self.check()?;
        let runtime = match &self.runtime {
            Some(name) => runtimes.get(name).ok_or_else(|| {
                Problem::invalid_field(
                    "model.runtime",
                    format!(
                        "the hub has no model runtime {name:?}; it has {}",
                        known(runtimes)
                    ),
                )
            })?,
            None => default_runtime(runtimes)?,
        };
        let path = Path::new(&self.model_path);
        if !admin && !roots.iter().any(|root| path.starts_with(root)) {
            return Err(Problem::invalid_field(
                "model.model_path",
                if roots.is_empty() {
                    "the hub's model_roots allow no host path to users; ask an admin to add one"
                        .to_owned()
                } else {
                    format!(
                        "{:?} is outside the hub's model_roots ({})",
                        self.model_path,
                        roots.join(", ")
                    )
                },
            ));
        }
        let file_name = path
            .file_name()
            .and_then(|name| name.to_str())
            .unwrap_or("model");
        let inside = format!("{}/{file_name}", runtime.model_dir.trim_end_matches('/'));
        let gpu = device_gpu(&self.device)?;
        let device = if gpu.is_some() { "cuda:0" } else { "cpu" };
        let fill = |text: &str| {
            text.replace("{model_path}", &inside)
                .replace("{model_id}", &self.model_id)
                .replace("{device}", device)
                .replace("{batch_size}", &self.batch_size.to_string())
                .replace("{port}", &runtime.port.to_string())
        };
        let mut environment = runtime.environment.clone();
        environment.extend([
            ("MODEL_ID".to_owned(), self.model_id.clone()),
            ("MODEL_PATH".to_owned(), inside.clone()),
            ("DEVICE".to_owned(), device.to_owned()),
            ("BATCH_SIZE".to_owned(), self.batch_size.to_string()),
        ]);
        let share = self
            .max_memory_mb
            .map(|megabytes| i64::try_from(megabytes.div_ceil(1024)).unwrap_or(i64::MAX));
        Ok(Expansion {
            image: runtime.image.clone(),
            command: runtime
                .command
                .as_ref()
                .map(|argv| argv.iter().map(|part| fill(part)).collect()),
            environment,
            port: runtime.port,
            probe_path: runtime.probe_path.clone(),
            mount: (self.model_path.clone(), inside),
            gpu_count: i64::from(gpu.is_some() && share.is_none()),
            gpu_share_gb: share.filter(|_| gpu.is_some()),
            gpu_index: gpu.flatten(),
            most_free: gpu == Some(None),
        })
    }
}

fn known(runtimes: &BTreeMap<String, ModelRuntime>) -> String {
    if runtimes.is_empty() {
        "none (model_runtimes in the hub configuration)".to_owned()
    } else {
        runtimes.keys().cloned().collect::<Vec<_>>().join(", ")
    }
}

fn default_runtime(runtimes: &BTreeMap<String, ModelRuntime>) -> Result<&ModelRuntime, Problem> {
    let mut defaults = runtimes.values().filter(|runtime| runtime.default);
    if let Some(runtime) = defaults.next() {
        return Ok(runtime);
    }
    if runtimes.len() == 1 {
        return runtimes
            .values()
            .next()
            .ok_or_else(|| unreachable_runtime(runtimes));
    }
    Err(unreachable_runtime(runtimes))
}

fn unreachable_runtime(runtimes: &BTreeMap<String, ModelRuntime>) -> Problem {
    Problem::invalid_field(
        "model.runtime",
        format!(
            "name the runtime to serve it with; the hub has {}",
            known(runtimes)
        ),
    )
}

/// Checks the configuration's runtimes: an image each, at most one default, placeholders known.
pub fn check_runtimes(runtimes: &BTreeMap<String, ModelRuntime>) -> Result<(), String> {
    if runtimes.values().filter(|runtime| runtime.default).count() > 1 {
        return Err("model_runtimes: at most one runtime may be the default".to_owned());
    }
    for (name, runtime) in runtimes {
        if runtime.image.trim().is_empty() || runtime.image.contains(char::is_whitespace) {
            return Err(format!(
                "model_runtimes.{name}.image: {:?} is not an image reference",
                runtime.image
            ));
        }
        if !runtime.model_dir.starts_with('/') {
            return Err(format!(
                "model_runtimes.{name}.model_dir: {:?} is not an absolute path",
                runtime.model_dir
            ));
        }
        if runtime.port == 0 {
            return Err(format!("model_runtimes.{name}.port: 0 is not a port"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed_example() -> ModelFile {
        yaml_serde::from_str(
            "model_id: \"transformer\"\nmodel_path: \"/models/transformer.pt\"\ndevice: \"cuda:0\"\nbatch_size: 32\nmax_memory_mb: 4096\n",
        )
        .expect("seed 004's example reads as written")
    }

    fn runtimes() -> BTreeMap<String, ModelRuntime> {
        BTreeMap::from([(
            "torch".to_owned(),
            ModelRuntime {
                image: "serve/torch:2".to_owned(),
                command: Some(vec![
                    "serve".into(),
                    "--model={model_path}".into(),
                    "--batch={batch_size}".into(),
                    "--device={device}".into(),
                    "--port={port}".into(),
                ]),
                model_dir: "/models".to_owned(),
                port: 9000,
                environment: BTreeMap::from([("THREADS".into(), "4".into())]),
                probe_path: Some("/ping".into()),
                default: false,
            },
        )])
    }

    #[test]
    fn seed_004s_example_becomes_a_gpu_share_on_gpu_0() {
        let roots = ["/models".to_owned()];
        let expansion = seed_example()
            .expand(&runtimes(), &roots, false)
            .expect("expands");
        assert_eq!(expansion.image, "serve/torch:2");
        assert_eq!(
            expansion.command.expect("command"),
            [
                "serve",
                "--model=/models/transformer.pt",
                "--batch=32",
                "--device=cuda:0",
                "--port=9000"
            ]
        );
        assert_eq!(
            expansion.mount,
            (
                "/models/transformer.pt".to_owned(),
                "/models/transformer.pt".to_owned()
            )
        );
        assert_eq!(
            (
                expansion.gpu_count,
                expansion.gpu_share_gb,
                expansion.gpu_index
            ),
            (0, Some(4), Some(0))
        );
        assert_eq!(expansion.environment["BATCH_SIZE"], "32");
        assert_eq!(expansion.environment["THREADS"], "4");
    }

    #[test]
    fn paths_devices_and_runtimes_are_checked() {
        let roots = ["/models".to_owned()];
        let outside = ModelFile {
            model_path: "/etc/shadow".into(),
            ..seed_example()
        };
        let refused = outside
            .expand(&runtimes(), &roots, false)
            .expect_err("outside the roots");
        assert_eq!(refused.field(), Some("model.model_path"));
        assert!(
            outside.expand(&runtimes(), &roots, true).is_ok(),
            "an admin may"
        );
        let climbing = ModelFile {
            model_path: "/models/../etc/shadow".into(),
            ..seed_example()
        };
        assert_eq!(
            climbing.check().expect_err("..").field(),
            Some("model.model_path")
        );
        let device = ModelFile {
            device: "tpu".into(),
            ..seed_example()
        };
        assert_eq!(
            device.check().expect_err("tpu").field(),
            Some("model.device")
        );
        let on_cpu = ModelFile {
            device: "cpu".into(),
            max_memory_mb: None,
            ..seed_example()
        }
        .expand(&runtimes(), &roots, false)
        .expect("cpu");
        assert_eq!((on_cpu.gpu_count, on_cpu.gpu_share_gb), (0, None));
        let named = ModelFile {
            runtime: Some("onnx".into()),
            ..seed_example()
        };
        assert_eq!(
            named
                .expand(&runtimes(), &roots, false)
                .expect_err("no onnx")
                .field(),
            Some("model.runtime")
        );
    }
}
