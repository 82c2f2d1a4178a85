//! The hub's shared state.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use berth_http::Problem;
use berth_store::nodes::NodeRecord;
use berth_store::{SecretBox, Store};

use crate::metrics::HubMetrics;
use crate::node_client::NodeClient;

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
    /// One connection per node, kept until the node's record changes.
    node_clients: tokio::sync::Mutex<HashMap<i64, (i64, Arc<NodeClient>)>>,
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
            node_clients: Default::default(),
        }
    }

    /// The connection to `node`: the kept one while the node's record is unchanged, else a new one.
    pub async fn node_client(&self, node: &NodeRecord) -> Result<Arc<NodeClient>, Problem> {
        if let Some((version, client)) = self.node_clients.lock().await.get(&node.id)
            && *version == node.updated_at
        {
            return Ok(Arc::clone(client));
        }
        // Connect without holding the lock: an unreachable node must not stall the others.
        let client = Arc::new(NodeClient::connect(node, &self.secrets, &self.http).await?);
        self.node_clients
            .lock()
            .await
            .insert(node.id, (node.updated_at, Arc::clone(&client)));
        Ok(client)
    }
}
