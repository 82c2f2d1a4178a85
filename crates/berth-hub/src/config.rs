//! The hub's YAML configuration file (`berth hub --config hub.yaml`): seed 000's settings —
//! `mmanager_enabled`, `mmanager_controllers`, `mmanager_api_key`, `max_services_per_user`,
//! `service_domain`, `service_idle_timeout` — the monitor interval, the failure detector's
//! threshold and the placement policy. Seed 000's own `config.py` is read as written too: a
//! file named `*.py` of top-level assignments (`name = value`, `name: type = value`) with
//! Python literals. Every value is checked when the file is read; an error names the line or
//! the field.

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
    /// Seed 000's switch: when false, the declared controllers are not nodes of this hub (the
    /// ones an earlier start made leave the node table unless they run containers).
    #[serde(default = "yes")]
    pub mmanager_enabled: bool,
    /// Seed 000's idle timeout, in minutes, for every service with a port that sets neither
    /// its own `serving.idle_timeout_seconds` nor `serving.autoscale`: idle that long, it is
    /// unloaded (and loaded again by its next request). 0 or absent: never.
    #[serde(default)]
    pub service_idle_timeout: Option<u64>,
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
            mmanager_enabled: true,
            service_idle_timeout: None,
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
    /// Reads and checks the file at `path` (seed 000's Python form when it is named `*.py`).
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|err| format!("cannot read {}: {err}", path.display()))?;
        let parsed = if path.extension().is_some_and(|extension| extension == "py") {
            yaml_of_python(&text).and_then(|yaml| Self::parse(&yaml))
        } else {
            Self::parse(&text)
        };
        parsed.map_err(|err| format!("{}: {err}", path.display()))
    }

    /// The controllers the hub keeps as nodes: none when `mmanager_enabled` is false.
    pub fn controllers(&self) -> &[DeclaredController] {
        if self.mmanager_enabled {
            &self.mmanager_controllers
        } else {
            &[]
        }
    }

    /// The hub-wide idle timeout `service_idle_timeout` gives.
    pub fn idle_timeout(&self) -> Option<std::time::Duration> {
        self.service_idle_timeout
            .filter(|minutes| *minutes > 0)
            .map(|minutes| std::time::Duration::from_secs(minutes * 60))
    }

    /// How the hub reads seed 000's keys this file sets, one line each.
    pub fn seed_mappings(&self) -> Vec<String> {
        let mut said = Vec::new();
        if !self.mmanager_enabled {
            said.push(format!(
                "mmanager_enabled: false — the {} declared controller(s) are not nodes of this hub",
                self.mmanager_controllers.len()
            ));
        } else if !self.mmanager_controllers.is_empty() {
            said.push(format!(
                "mmanager_controllers: {} agent node(s) kept in the node table (origin config), each with mmanager_api_key",
                self.mmanager_controllers.len()
            ));
        }
        if let Some(minutes) = self.service_idle_timeout {
            said.push(if minutes == 0 {
                "service_idle_timeout: 0 — no hub-wide idle unload".to_owned()
            } else {
                format!(
                    "service_idle_timeout: {minutes} min — services with a port that set no idle_timeout_seconds or autoscale are unloaded after {minutes} min without requests"
                )
            });
        }
        if let Some(domain) = &self.service_domain {
            said.push(format!(
                "service_domain: {domain} — the gateway also answers {{service}}.{{user}}.{domain}"
            ));
        }
        said
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

/// Seed 000's `config.py` as YAML, line for line (so a mistake's line is the file's): each
/// top-level assignment `name = value` or `name: type = value` becomes `name: value`, lines that
/// continue a value are indented, and `True`, `False`, `None` outside strings become YAML's.
fn yaml_of_python(text: &str) -> Result<String, String> {
    let mut yaml = String::with_capacity(text.len() + 64);
    for (index, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            yaml.push_str(line);
        } else if line.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
            let Some(equals) = outside_strings(line)
                .find(|(_, c)| *c == '=')
                .map(|(at, _)| at)
            else {
                return Err(format!(
                    "line {}: {trimmed:?} is not an assignment (name = value)",
                    index + 1
                ));
            };
            let name = line[..equals].split(':').next().unwrap_or_default().trim();
            if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("line {}: {name:?} is not a name", index + 1));
            }
            yaml.push_str(name);
            yaml.push_str(": ");
            yaml.push_str(&yaml_literals(line[equals + 1..].trim()));
        } else {
            yaml.push_str("  ");
            yaml.push_str(&yaml_literals(line));
        }
        yaml.push('\n');
    }
    Ok(yaml)
}

/// The characters of `line` outside quoted strings and comments, with their byte offsets.
fn outside_strings(line: &str) -> impl Iterator<Item = (usize, char)> + '_ {
    let mut quote: Option<char> = None;
    let mut escaped = false;
    let mut comment = false;
    line.char_indices().filter(move |(_, c)| {
        if comment {
            return false;
        }
        match quote {
            Some(open) => {
                if escaped {
                    escaped = false;
                } else if *c == '\\' {
                    escaped = true;
                } else if *c == open {
                    quote = None;
                }
                false
            }
            None if *c == '"' || *c == '\'' => {
                quote = Some(*c);
                false
            }
            None if *c == '#' => {
                comment = true;
                false
            }
            None => true,
        }
    })
}

/// `text` with Python's `True`, `False` and `None` outside strings written as YAML's.
fn yaml_literals(text: &str) -> String {
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let outside: Vec<(usize, char)> = outside_strings(text).collect();
    let mut translated = String::with_capacity(text.len());
    let (mut copied, mut index) = (0, 0);
    while let Some(&(from, first)) = outside.get(index) {
        index += 1;
        if !is_word(first) {
            continue;
        }
        // The run of adjacent word characters from here.
        let mut end = from + first.len_utf8();
        while let Some(&(at, next)) = outside.get(index)
            && at == end
            && is_word(next)
        {
            end += next.len_utf8();
            index += 1;
        }
        let replacement = match &text[from..end] {
            "True" => "true",
            "False" => "false",
            "None" => "null",
            _ => continue,
        };
        translated.push_str(&text[copied..from]);
        translated.push_str(replacement);
        copied = end;
    }
    translated.push_str(&text[copied..]);
    translated
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
    fn seed_000s_config_py_reads_as_written() {
        let example = include_str!("../../../deploy/hub/config.py.example");
        let config = HubConfig::parse(&yaml_of_python(example).expect("translated"))
            .expect("the seed's config.py is valid");
        assert!(config.mmanager_enabled);
        assert_eq!(
            config.mmanager_api_key.as_deref(),
            Some("mmanager-secure-key-12345")
        );
        assert_eq!(config.controllers().len(), 2);
        assert_eq!(config.mmanager_controllers[1].weight, 80);
        assert_eq!(config.mmanager_controllers[0].server_type, "gpu");
        assert_eq!(config.service_domain.as_deref(), Some("your-domain.com"));
        assert_eq!(config.max_services_per_user, 5);
        assert_eq!(
            config.idle_timeout(),
            Some(std::time::Duration::from_secs(30 * 60))
        );
        let said = config.seed_mappings().join("\n");
        assert!(said.contains("service_idle_timeout: 30 min"), "{said}");

        let off = HubConfig::parse(
            &yaml_of_python(
                "mmanager_enabled: bool = False\nnote = \"True # not a comment\"  # True\n",
            )
            .expect("translated"),
        );
        // An unknown key is refused, whatever the syntax; the literals inside strings stay.
        let refused = off.expect_err("note is not a key");
        assert!(refused.contains("note"), "{refused}");
        let off = HubConfig::parse(
            &yaml_of_python("mmanager_enabled: bool = False\nservice_domain = 'True.example'\n")
                .expect("translated"),
        )
        .expect("valid");
        assert!(!off.mmanager_enabled && off.controllers().is_empty());
        assert_eq!(off.service_domain.as_deref(), Some("True.example"));
        let broken = yaml_of_python("x = 1\nprint(x)\n").expect_err("not an assignment");
        assert!(broken.starts_with("line 2"), "{broken}");
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
