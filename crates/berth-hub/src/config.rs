//! The hub's YAML configuration file (`berth hub --config hub.yaml`): seed 000's settings —
//! `mmanager_controllers`, `mmanager_api_key`, `max_services_per_user` — the monitor interval, the
//! failure detector's threshold and the placement policy.
//! Every value is checked when the file is read; an error names the line or the field.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use berth_core::schedule::Policy;
use serde::Deserialize;

use crate::model_file::{ModelRuntime, check_runtimes};

/// One controller declared in the file, as seed 000 writes it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeclaredController {
    /// The node's name.
    pub id: String,
    /// The agent's URL.
    pub url: String,
    /// `gpu`, `cpu` or `edge`.
    #[serde(default = "cpu")]
    pub server_type: String,
    /// Takes new work.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Lower is tried first.
    #[serde(default = "hundred")]
    pub priority: i64,
    /// Share of work within a priority.
    #[serde(default = "hundred")]
    pub weight: i64,
}

fn cpu() -> String {
    "cpu".to_owned()
}

fn yes() -> bool {
    true
}

fn hundred() -> i64 {
    100
}

fn five() -> i64 {
    5
}

fn three() -> u64 {
    3
}

fn two() -> u64 {
    2
}

fn ten() -> u64 {
    10
}

fn three_checks() -> u32 {
    3
}

/// The whole file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubConfig {
    /// The key every declared controller accepts.
    #[serde(default)]
    pub mmanager_api_key: Option<String>,
    /// Controllers to keep in the node table.
    #[serde(default)]
    pub mmanager_controllers: Vec<DeclaredController>,
    /// Services a user may own unless their quota says otherwise.
    #[serde(default = "five")]
    pub max_services_per_user: i64,
    /// Seconds between two node checks (and reconciler rounds).
    #[serde(default = "three")]
    pub monitor_interval: u64,
    /// Failed checks in a row after which a node may be declared down.
    #[serde(default = "three_checks")]
    pub failure_threshold: u32,
    /// Seconds a node's checks must keep failing before it is down and its services move (a
    /// failed check or a broken event stream starts probes every 0.5 s); 0: on the threshold.
    #[serde(default = "three")]
    pub failure_window: u64,
    /// Seconds a down node's checks must keep passing before it is up again; 0: on one pass.
    #[serde(default = "two")]
    pub recovery_window: u64,
    /// `spread` (least load per weight) or `binpack` (fullest node per weight).
    #[serde(default)]
    pub placement_policy: Policy,
    /// Model services loaded at once per node (seed 004's `max_models`); 0: no limit.
    #[serde(default)]
    pub max_models_per_node: u32,
    /// Also route `{service}.{user}.{service_domain}` by host (seed 000's `service_domain`).
    #[serde(default)]
    pub service_domain: Option<String>,
    /// A placement that does not fit may evict the least recently used idle model services
    /// (unloaded, or idle past their idle timeout), releasing their reservations.
    #[serde(default)]
    pub evict_idle_for_capacity: bool,
    /// Seconds between two samples of every running service's resource use (kept 24 h for the
    /// console's charts); 0 turns sampling off.
    #[serde(default = "ten")]
    pub stats_interval: u64,
    /// Images that serve seed 004's model files, by name.
    #[serde(default)]
    pub model_runtimes: BTreeMap<String, ModelRuntime>,
    /// Host directories a user's model file may mount its `model_path` from.
    #[serde(default)]
    pub model_roots: Vec<String>,
    /// A directory of model files (seed 004's) the hub applies as the first admin: a new or
    /// changed file is applied, a removed one's service unloaded. Read at start.
    #[serde(default)]
    pub model_watch_dir: Option<String>,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            mmanager_api_key: None,
            mmanager_controllers: Vec::new(),
            max_services_per_user: five(),
            monitor_interval: three(),
            failure_threshold: three_checks(),
            failure_window: three(),
            recovery_window: two(),
            placement_policy: Policy::Spread,
            max_models_per_node: 0,
            service_domain: None,
            evict_idle_for_capacity: false,
            stats_interval: ten(),
            model_runtimes: BTreeMap::new(),
            model_roots: Vec::new(),
            model_watch_dir: None,
        }
    }
}

impl HubConfig {
    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|err| format!("cannot read {}: {err}", path.display()))?;
        Self::parse(&text).map_err(|err| format!("{}: {err}", path.display()))
    }

    /// Parses and checks YAML text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let config: HubConfig = yaml_serde::from_str(text).map_err(|err| located(text, &err))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        if self.max_services_per_user < 0 {
            return Err("max_services_per_user: must not be negative".to_owned());
        }
        if self.monitor_interval == 0 {
            return Err("monitor_interval: must be at least 1 second".to_owned());
        }
        if self.failure_threshold == 0 {
            return Err("failure_threshold: must be at least 1 check".to_owned());
        }
        if let Some(domain) = &self.service_domain {
            let valid = !domain.is_empty()
                && domain.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                });
            if !valid {
                return Err(format!(
                    "service_domain: {domain:?} is not a domain name such as models.example.org"
                ));
            }
        }
        check_runtimes(&self.model_runtimes)?;
        for root in &self.model_roots {
            if !root.starts_with('/') || root.split('/').any(|part| part == "..") || root == "/" {
                return Err(format!(
                    "model_roots: {root:?} is not an absolute directory other than /"
                ));
            }
        }
        if let Some(dir) = &self.model_watch_dir
            && !dir.starts_with('/')
        {
            return Err(format!(
                "model_watch_dir: {dir:?} is not an absolute directory"
            ));
        }
        let mut seen = HashSet::new();
        for (index, controller) in self.mmanager_controllers.iter().enumerate() {
            let field = |name: &str| format!("mmanager_controllers[{index}].{name}");
            berth_core::spec::validate_name(&field("id"), &controller.id)
                .map_err(|err| err.to_string())?;
            if !seen.insert(controller.id.as_str()) {
                return Err(format!(
                    "{}: {:?} is declared twice",
                    field("id"),
                    controller.id
                ));
            }
            if !(controller.url.starts_with("http://") || controller.url.starts_with("https://")) {
                return Err(format!(
                    "{}: {:?} is not an http:// or https:// URL",
                    field("url"),
                    controller.url
                ));
            }
            if !matches!(controller.server_type.as_str(), "gpu" | "cpu" | "edge") {
                return Err(format!(
                    "{}: {:?} is not gpu, cpu or edge",
                    field("server_type"),
                    controller.server_type
                ));
            }
            if controller.priority < 0 || controller.weight < 0 {
                return Err(format!(
                    "{}: priority and weight must not be negative",
                    field("priority")
                ));
            }
        }
        if !self.mmanager_controllers.is_empty()
            && self.mmanager_api_key.as_deref().is_none_or(str::is_empty)
        {
            return Err(
                "mmanager_api_key: is required when mmanager_controllers are declared".to_owned(),
            );
        }
        Ok(())
    }
}

/// The parser's message with a line number: its own location when it has one, else the line
/// where the unknown key it names stands.
fn located(text: &str, err: &yaml_serde::Error) -> String {
    let message = err.to_string();
    if message.contains("line ") {
        return message;
    }
    if let Some(location) = err.location() {
        return format!(
            "line {}, column {}: {message}",
            location.line(),
            location.column()
        );
    }
    let key = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next());
    let line = key.and_then(|key| {
        text.lines().position(|line| {
            line.trim_start()
                .trim_start_matches("- ")
                .starts_with(&format!("{key}:"))
        })
    });
    match line {
        Some(index) => format!("line {}: {message}", index + 1),
        None => message,
    }
}

/// The host part of a URL, for a node's IP fields.
pub fn url_host(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or(rest);
    match authority.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host.to_owned(),
        _ => authority.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_example_reads() {
        let config = HubConfig::parse(
            "mmanager_api_key: mmanager-secure-key-12345\n\
             mmanager_controllers:\n\
             \x20 - id: mmanager-gpu-01\n    url: http://192.168.1.10:8001\n    server_type: gpu\n    enabled: true\n    priority: 1\n    weight: 100\n\
             \x20 - id: mmanager-cpu-01\n    url: http://192.168.1.11:8002\n    server_type: cpu\n    priority: 2\n    weight: 80\n\
             max_services_per_user: 5\n",
        )
        .expect("valid");
        assert_eq!(config.mmanager_controllers.len(), 2);
        assert_eq!(config.mmanager_controllers[1].weight, 80);
        assert!(config.mmanager_controllers[1].enabled);
        assert_eq!(config.monitor_interval, 3);
        assert_eq!(
            url_host(&config.mmanager_controllers[0].url),
            "192.168.1.10"
        );
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let example = include_str!("../../../deploy/hub/hub.yaml.example");
        let config = HubConfig::parse(example).expect("the example parses");
        assert_eq!(config.mmanager_controllers.len(), 2);
    }

    #[test]
    fn mistakes_point_at_the_line_or_the_field() {
        let typo = HubConfig::parse("mmanager_controlers: []\n").expect_err("unknown key");
        assert!(
            typo.contains("mmanager_controlers") && typo.contains("line 1"),
            "{typo}"
        );
        let bad_type = HubConfig::parse("max_services_per_user: 5\nmonitor_interval: soon\n")
            .expect_err("bad value");
        assert!(bad_type.contains("line 2"), "{bad_type}");
        let no_key = HubConfig::parse("mmanager_controllers:\n  - id: a\n    url: http://h:1\n")
            .expect_err("no key");
        assert!(no_key.starts_with("mmanager_api_key"), "{no_key}");
        let twice = HubConfig::parse("mmanager_api_key: k\nmmanager_controllers:\n  - {id: a, url: 'http://h:1'}\n  - {id: a, url: 'http://h:2'}\n")
            .expect_err("duplicate");
        assert!(twice.starts_with("mmanager_controllers[1].id"), "{twice}");
        let kind = HubConfig::parse("mmanager_api_key: k\nmmanager_controllers:\n  - {id: a, url: 'http://h:1', server_type: tpu}\n")
            .expect_err("type");
        assert!(
            kind.starts_with("mmanager_controllers[0].server_type"),
            "{kind}"
        );
    }
}
