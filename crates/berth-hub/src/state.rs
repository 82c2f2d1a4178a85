//! The hub's shared state.

use std::time::Duration;

use berth_store::{SecretBox, Store};

use crate::metrics::HubMetrics;

/// Settings the hub runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubSettings {
    /// How often the monitor tests every node.
    pub monitor_interval: Duration,
    /// Services a user may own unless their quota says otherwise.
    pub max_services_per_user: i64,
}

impl Default for HubSettings {
    fn default() -> Self {
        Self {
            monitor_interval: Duration::from_secs(30),
            max_services_per_user: 5,
        }
    }
}

/// What every handler and background loop can reach.
pub struct HubState {
    /// The database.
    pub store: Store,
    /// Seals and opens secrets.
    pub secrets: SecretBox,
    /// HTTP client for agents.
    pub http: reqwest::Client,
    /// Prometheus metrics.
    pub metrics: HubMetrics,
    /// Settings.
    pub settings: HubSettings,
}

impl HubState {
    /// State over an open store.
    pub fn new(store: Store, secrets: SecretBox, settings: HubSettings) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(15))
            .build()
            .unwrap_or_default();
        Self {
            store,
            secrets,
            http,
            metrics: HubMetrics::new(),
            settings,
        }
    }
}
