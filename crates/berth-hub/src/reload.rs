//! Hot reload of the hub's configuration file. When the file changes (its modification time is
//! polled) or the hub gets SIGHUP, the file is read and checked again. A good file is put in force
//! at once — settings for everything that reads them next, declared controllers synced to the node
//! table — and the report names what changed. A bad file changes nothing: the running
//! configuration stays, and the report says why, with the line.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::bootstrap;
use crate::config::HubConfig;
use crate::state::{HubSettings, HubState};

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// The file did not change.
    Unchanged,
    /// The new file is in force; the keys that changed.
    Applied(Vec<String>),
    /// The file was refused and the running configuration kept; why.
    Refused(String),
}

/// The settings a configuration file gives, on top of `base` (flags the file cannot override:
/// a `--monitor-interval` given on the command line wins).
pub fn settings_from(
    config: &HubConfig,
    base: &HubSettings,
    monitor_interval_flag: Option<u64>,
) -> HubSettings {
    HubSettings {
        monitor_interval: Duration::from_secs(
            monitor_interval_flag.unwrap_or(config.monitor_interval),
        ),
        max_services_per_user: config.max_services_per_user,
        failure_threshold: config.failure_threshold,
        failure_window: Duration::from_secs(config.failure_window),
        recovery_window: Duration::from_secs(config.recovery_window),
        placement_policy: config.placement_policy,
        max_models_per_node: config.max_models_per_node,
        service_domain: config.service_domain.clone(),
        evict_idle_for_capacity: config.evict_idle_for_capacity,
        stats_interval: Duration::from_secs(config.stats_interval),
        model_runtimes: config.model_runtimes.clone(),
        model_roots: config.model_roots.clone(),
        service_idle_timeout: config.idle_timeout(),
        ..base.clone()
    }
}

/// The keys whose values differ between `old` and `new`.
fn changed_keys(old: &HubConfig, new: &HubConfig) -> Vec<String> {
    let mut changed = Vec::new();
    let mut compare = |key: &str, differs: bool| {
        if differs {
            changed.push(key.to_owned());
        }
    };
    compare(
        "mmanager_api_key",
        old.mmanager_api_key != new.mmanager_api_key,
    );
    compare(
        "mmanager_controllers",
        old.mmanager_controllers != new.mmanager_controllers,
    );
    compare(
        "max_services_per_user",
        old.max_services_per_user != new.max_services_per_user,
    );
    compare(
        "monitor_interval",
        old.monitor_interval != new.monitor_interval,
    );
    compare(
        "failure_threshold",
        old.failure_threshold != new.failure_threshold,
    );
    compare("failure_window", old.failure_window != new.failure_window);
    compare(
        "recovery_window",
        old.recovery_window != new.recovery_window,
    );
    compare(
        "placement_policy",
        old.placement_policy != new.placement_policy,
    );
    compare(
        "max_models_per_node",
        old.max_models_per_node != new.max_models_per_node,
    );
    compare("service_domain", old.service_domain != new.service_domain);
    compare(
        "evict_idle_for_capacity",
        old.evict_idle_for_capacity != new.evict_idle_for_capacity,
    );
    compare("stats_interval", old.stats_interval != new.stats_interval);
    compare("model_runtimes", old.model_runtimes != new.model_runtimes);
    compare("model_roots", old.model_roots != new.model_roots);
    compare(
        "mmanager_enabled",
        old.mmanager_enabled != new.mmanager_enabled,
    );
    compare(
        "service_idle_timeout",
        old.service_idle_timeout != new.service_idle_timeout,
    );
    compare(
        "model_watch_dir",
        old.model_watch_dir != new.model_watch_dir,
    );
    changed
}

/// Watches one configuration file.
pub struct ConfigWatcher {
    path: PathBuf,
    current: HubConfig,
    modified: Option<SystemTime>,
    monitor_interval_flag: Option<u64>,
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path)
        .and_then(|meta| meta.modified())
        .ok()
}

impl ConfigWatcher {
    /// Watches `path`, whose `current` contents are in force now.
    pub fn new(path: &Path, current: HubConfig, monitor_interval_flag: Option<u64>) -> Self {
        Self {
            path: path.to_owned(),
            current,
            modified: modified(path),
            monitor_interval_flag,
        }
    }

    /// Reloads when the file's modification time moved since the last look.
    pub async fn poll(&mut self, state: &HubState) -> Reload {
        let now = modified(&self.path);
        if now == self.modified {
            return Reload::Unchanged;
        }
        self.modified = now;
        self.reload(state).await
    }

    /// Reads and checks the file, and puts it in force if it is good.
    pub async fn reload(&mut self, state: &HubState) -> Reload {
        let next = match HubConfig::load(&self.path) {
            Ok(next) => next,
            Err(reason) => return Reload::Refused(reason),
        };
        let changed = changed_keys(&self.current, &next);
        if changed.is_empty() {
            return Reload::Unchanged;
        }
        if changed.iter().any(|key| key.starts_with("mmanager_"))
            && let Err(err) = bootstrap::sync_controllers(state, &next).await
        {
            return Reload::Refused(format!("syncing the declared controllers failed: {err}"));
        }
        state.replace_settings(settings_from(
            &next,
            &state.settings(),
            self.monitor_interval_flag,
        ));
        self.current = next;
        let changed = changed
            .into_iter()
            .map(|key| {
                if key == "monitor_interval" && self.monitor_interval_flag.is_some() {
                    "monitor_interval (not in force: --monitor-interval overrides it until a restart without the flag)".to_owned()
                } else if key == "model_watch_dir" {
                    "model_watch_dir (not in force until a restart: the watcher starts with the hub)".to_owned()
                } else {
                    key
                }
            })
            .collect();
        Reload::Applied(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_core::schedule::Policy;
    use berth_store::{SecretBox, Store};

    #[tokio::test]
    async fn a_good_file_is_put_in_force_and_a_bad_one_keeps_the_running_configuration() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = std::env::temp_dir().join(format!("berth-reload-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let store = Store::connect(&format!("sqlite://{}", dir.join("berth.db").display()))
            .await
            .expect("store");
        let secrets = SecretBox::load_or_create(None, &dir.join("secret.key")).expect("key");
        let path = dir.join("hub.yaml");
        std::fs::write(&path, "max_services_per_user: 5\n").expect("write");
        let first = HubConfig::load(&path).expect("valid");
        let state = HubState::new(
            store,
            secrets,
            settings_from(&first, &HubSettings::default(), None),
        )
        .await
        .expect("state");
        let mut watcher = ConfigWatcher::new(&path, first, None);
        assert_eq!(watcher.poll(&state).await, Reload::Unchanged);

        std::fs::write(
            &path,
            "max_services_per_user: 9\nplacement_policy: binpack\nmax_models_per_node: 3\n",
        )
        .expect("write");
        assert_eq!(
            watcher.reload(&state).await,
            Reload::Applied(vec![
                "max_services_per_user".into(),
                "placement_policy".into(),
                "max_models_per_node".into()
            ])
        );
        let settings = state.settings();
        assert_eq!(
            (
                settings.max_services_per_user,
                settings.placement_policy,
                settings.max_models_per_node
            ),
            (9, Policy::Binpack, 3)
        );

        std::fs::write(
            &path,
            "max_services_per_user: 9\nplacement_policy: tetris\n",
        )
        .expect("write");
        let Reload::Refused(reason) = watcher.reload(&state).await else {
            panic!("a bad file is refused");
        };
        assert!(reason.contains("line 2"), "{reason}");
        assert_eq!(state.settings().placement_policy, Policy::Binpack, "kept");
        assert_eq!(state.settings().max_models_per_node, 3, "kept");

        std::fs::write(&path, "max_services_per_user: 9\nmonitor_interval: 0\n").expect("write");
        let Reload::Refused(reason) = watcher.reload(&state).await else {
            panic!("an invalid value is refused");
        };
        assert!(reason.contains("monitor_interval"), "{reason}");
        assert_eq!(state.settings().monitor_interval, Duration::from_secs(3));
    }
}
