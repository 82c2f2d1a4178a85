//! The route feed between a hub and the gateways that run apart from it: what a hub's route table
//! shows a gateway ([`RouteSnapshot`], served by `GET /api/gateway/routes`), how a gateway
//! process mirrors it into its own table ([`mirror`]), and what a gateway tells the hub of its
//! traffic ([`UsageReport`], `POST /api/gateway/usage`) so that the autoscaler, the idle
//! reclaim, drains and the token history count its requests as the hub's own.
//!
//! A snapshot is the whole table, and its `revision` is a digest of it: a gateway asks for the
//! next snapshot with the revision it holds and the hub answers as soon as the table differs,
//! or after the wait with the same one (a blocking query). Any hub gives the same revision for
//! the same table, so a gateway may move between hubs without reloading anything.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};

use super::routes::{Endpoint, Profile, RouteTable, ServiceRoutes};
use crate::serving::ServingSettings;

/// The header that carries the token a gateway asks the hub about (`GET /api/gateway/bearer`;
/// never the query, which lands in logs).
pub const CHECKED_TOKEN_HEADER: &str = "x-berth-checked-token";

/// The route table as a hub shows it to gateways.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteSnapshot {
    /// A digest of everything below: equal revisions, equal tables.
    pub revision: String,
    /// The domain under which `{service}.{user}.{domain}` names a service.
    pub service_domain: Option<String>,
    /// Every routable service, by id.
    pub services: Vec<ServiceEntry>,
}

/// One routable service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceEntry {
    /// Service id.
    pub id: i64,
    /// Owner's user id.
    pub owner_id: i64,
    /// Owner's name.
    pub owner: String,
    /// Service name.
    pub name: String,
    /// Wanted state (`running`, `unloaded`, …).
    pub wanted: String,
    /// Anyone may call it.
    pub public: bool,
    /// Deployment version.
    pub version: i64,
    /// The port inside its containers.
    pub port: u16,
    /// How it is served.
    pub settings: ServingSettings,
    /// A rollout's handover is under way: `outgoing` still take requests.
    pub handing_over: bool,
    /// Its replicas.
    pub endpoints: Vec<EndpointEntry>,
    /// The previous version's replicas still in rotation during a rollout.
    pub outgoing: Vec<EndpointEntry>,
}

/// One replica as a gateway reaches it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointEntry {
    /// Which replica.
    pub replica: i64,
    /// Its container.
    pub container_id: String,
    /// Its node.
    pub node_id: i64,
    /// Where its port is published.
    pub address: SocketAddr,
    /// Routing weight.
    pub weight: u32,
    /// The deployment version its container was made for.
    pub version: i64,
    /// Passed its probe and warmup (the hub probes; gateways take its word).
    pub ready: bool,
    /// Its node's labels (routing rules may choose by them).
    pub node_labels: BTreeMap<String, String>,
}

fn entry_of(endpoint: &Endpoint) -> EndpointEntry {
    EndpointEntry {
        replica: endpoint.replica,
        container_id: endpoint.container_id.clone(),
        node_id: endpoint.node_id,
        address: endpoint.address,
        weight: endpoint.weight,
        version: endpoint.version,
        ready: endpoint.is_ready(),
        node_labels: endpoint.node_labels(),
    }
}

/// The snapshot of `table`, with the domain services are named under.
pub fn snapshot(table: &RouteTable, service_domain: Option<String>) -> RouteSnapshot {
    let mut services: Vec<ServiceEntry> = table
        .all()
        .iter()
        .map(|routes| {
            let profile = routes.profile();
            ServiceEntry {
                id: routes.id,
                owner_id: routes.owner_id,
                owner: routes.owner.clone(),
                name: routes.name.clone(),
                wanted: routes.wanted(),
                public: profile.public,
                version: profile.version,
                port: profile.port,
                settings: profile.settings.clone(),
                handing_over: routes.is_handing_over(),
                endpoints: routes.endpoints().iter().map(|e| entry_of(e)).collect(),
                outgoing: routes.outgoing().iter().map(|e| entry_of(e)).collect(),
            }
        })
        .collect();
    services.sort_by_key(|service| service.id);
    let mut digest = DefaultHasher::new();
    serde_json::to_vec(&(&service_domain, &services))
        .unwrap_or_default()
        .hash(&mut digest);
    RouteSnapshot {
        revision: format!("{:016x}", digest.finish()),
        service_domain,
        services,
    }
}

/// Brings a gateway's own `table` in step with a hub's snapshot `services`: entries are added,
/// changed and removed; a replica already known (same container, same address) keeps its
/// counters; one taken out while it answers requests finishes them.
pub fn mirror(table: &RouteTable, services: &[ServiceEntry]) {
    let mut keep = HashSet::with_capacity(services.len());
    for service in services {
        keep.insert(service.id);
        let profile = || Profile {
            public: service.public,
            version: service.version,
            port: service.port,
            policy: service.settings.routing.policy(),
            settings: service.settings.clone(),
        };
        let routes = match table.get(service.id) {
            Some(routes) => {
                let current = routes.profile();
                if current.public != service.public
                    || current.version != service.version
                    || current.port != service.port
                    || current.settings != service.settings
                {
                    routes.set_profile(profile());
                }
                routes.set_wanted(&service.wanted);
                routes
            }
            None => table.insert(ServiceRoutes::new(
                service.id,
                service.owner_id,
                service.owner.clone(),
                service.name.clone(),
                service.wanted.clone(),
                profile(),
            )),
        };
        mirror_endpoints(&routes, service);
    }
    for gone in table.all() {
        if !keep.contains(&gone.id) {
            table.remove(gone.id);
        }
    }
}

fn mirror_endpoints(routes: &ServiceRoutes, service: &ServiceEntry) {
    if service.handing_over && !routes.is_handing_over() {
        routes.begin_handover();
    }
    let known: Vec<Arc<Endpoint>> = routes
        .endpoints()
        .into_iter()
        .chain(routes.outgoing())
        .collect();
    let reuse = |entry: &EndpointEntry| -> Arc<Endpoint> {
        let endpoint = known
            .iter()
            .find(|known| {
                known.container_id == entry.container_id && known.address == entry.address
            })
            .cloned()
            .unwrap_or_else(|| {
                Arc::new(
                    Endpoint::new(
                        entry.replica,
                        entry.container_id.clone(),
                        entry.node_id,
                        entry.address,
                        entry.weight,
                    )
                    .of_version(entry.version),
                )
            });
        endpoint.set_node_labels(entry.node_labels.clone());
        endpoint
    };
    let endpoints: Vec<Arc<Endpoint>> = service.endpoints.iter().map(reuse).collect();
    let outgoing: Vec<Arc<Endpoint>> = service.outgoing.iter().map(reuse).collect();
    let unchanged = {
        let current = routes.endpoints();
        current.len() == endpoints.len()
            && current
                .iter()
                .zip(&endpoints)
                .all(|(a, b)| Arc::ptr_eq(a, b))
    };
    if !unchanged {
        routes.set_endpoints(endpoints.clone());
    }
    let leaving: Vec<String> = routes
        .outgoing()
        .iter()
        .filter(|old| !outgoing.iter().any(|new| Arc::ptr_eq(new, old)))
        .map(|old| old.container_id.clone())
        .collect();
    if !leaving.is_empty() {
        routes.stop_outgoing(&leaving);
    }
    let current = routes.outgoing();
    if outgoing
        .iter()
        .any(|new| !current.iter().any(|old| Arc::ptr_eq(old, new)))
    {
        routes.add_outgoing(outgoing.clone());
    }
    if !service.handing_over && routes.is_handing_over() {
        routes.end_handover();
    }
    for (endpoint, entry) in endpoints
        .iter()
        .zip(&service.endpoints)
        .chain(outgoing.iter().zip(&service.outgoing))
    {
        routes.set_ready(endpoint, entry.ready);
    }
}

/// What one gateway tells the hub of its traffic, every second.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageReport {
    /// The gateway process (its name and a start-up nonce): counters are per process.
    pub gateway: String,
    /// Every service it knows.
    pub services: Vec<ServiceUsage>,
}

/// One service's traffic at one gateway, counted since the gateway started.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceUsage {
    /// Service id.
    pub id: i64,
    /// Requests answered.
    #[serde(default)]
    pub requests: u64,
    /// Requests in flight now.
    #[serde(default)]
    pub in_flight: u32,
    /// When its last request arrived, ms since the epoch (0: never).
    #[serde(default)]
    pub last_used_ms: u64,
    /// Prompt tokens counted through the OpenAI-compatible front.
    #[serde(default)]
    pub prompt_tokens: u64,
    /// Completion tokens.
    #[serde(default)]
    pub completion_tokens: u64,
    /// Requests in flight by container, for drains (containers with none left out).
    #[serde(default)]
    pub in_flight_by_container: BTreeMap<String, u32>,
}

/// The traffic of every service in `table`, as this gateway counted it.
pub fn usage_of(table: &RouteTable, gateway: &str) -> UsageReport {
    let services = table
        .all()
        .iter()
        .map(|routes| {
            let usage = &routes.usage;
            let mut in_flight_by_container = BTreeMap::new();
            for endpoint in routes.endpoints().iter().chain(&routes.outgoing()) {
                let count = endpoint.in_flight.load(Ordering::Acquire);
                if count > 0 {
                    in_flight_by_container.insert(endpoint.container_id.clone(), count);
                }
            }
            ServiceUsage {
                id: routes.id,
                requests: usage.requests.load(Ordering::Relaxed),
                in_flight: usage.in_flight.load(Ordering::Acquire),
                last_used_ms: usage.last_used_ms.load(Ordering::Relaxed),
                prompt_tokens: usage.prompt_tokens.load(Ordering::Relaxed),
                completion_tokens: usage.completion_tokens.load(Ordering::Relaxed),
                in_flight_by_container,
            }
        })
        .collect();
    UsageReport {
        gateway: gateway.to_owned(),
        services,
    }
}

/// Counts `report` into the hub's `table`: what the gateway answered since its last report is
/// added to each service's counters, and its requests in flight are held until a newer
/// report (or until they grow stale). Services the hub does not route are passed over.
pub fn count_report(table: &RouteTable, report: &UsageReport) -> usize {
    let by_id: HashMap<i64, &ServiceUsage> = report
        .services
        .iter()
        .map(|service| (service.id, service))
        .collect();
    let mut counted = 0;
    for (id, usage) in by_id {
        if let Some(routes) = table.get(id) {
            routes.usage.count_remote(&report.gateway, usage);
            counted += 1;
        }
    }
    counted
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table, with the TLS provider its probe client needs.
    fn table() -> RouteTable {
        let _ = rustls::crypto::ring::default_provider().install_default();
        RouteTable::default()
    }

    fn entry(id: i64, ready: bool) -> ServiceEntry {
        ServiceEntry {
            id,
            owner_id: 1,
            owner: "ada".to_owned(),
            name: format!("svc{id}"),
            wanted: "running".to_owned(),
            public: false,
            version: 3,
            port: 8080,
            settings: serde_json::from_value(serde_json::json!({})).expect("defaults"),
            handing_over: false,
            endpoints: vec![EndpointEntry {
                replica: 0,
                container_id: format!("c{id}"),
                node_id: 1,
                address: "127.0.0.1:9000".parse().expect("address"),
                weight: 1,
                version: 3,
                ready,
                node_labels: BTreeMap::new(),
            }],
            outgoing: Vec::new(),
        }
    }

    #[test]
    fn a_mirrored_table_shows_the_same_snapshot_and_keeps_its_counters() {
        let hub = table();
        mirror(&hub, &[entry(1, true), entry(2, false)]);
        let shown = snapshot(&hub, Some("models.example".to_owned()));
        let gateway = table();
        mirror(&gateway, &shown.services);
        assert_eq!(snapshot(&gateway, Some("models.example".to_owned())), shown);
        let endpoint = gateway.get(1).expect("service 1").endpoints()[0].clone();
        endpoint.in_flight.store(2, Ordering::Release);
        // The replica leaves rotation, then service 2 goes: the revision moves each time.
        mirror(&gateway, &[entry(1, false), entry(2, false)]);
        let after = snapshot(&gateway, Some("models.example".to_owned()));
        assert_ne!(after.revision, shown.revision);
        let kept = gateway.get(1).expect("service 1").endpoints()[0].clone();
        assert!(
            Arc::ptr_eq(&kept, &endpoint),
            "the same replica keeps its counters"
        );
        assert!(!kept.is_ready());
        mirror(&gateway, &[entry(1, false)]);
        assert!(gateway.get(2).is_none());
        assert_eq!(
            gateway
                .get(1)
                .expect("service 1")
                .in_flight_on(&["c1".to_owned()]),
            2
        );
    }

    #[test]
    fn reports_add_what_was_answered_since_the_last_and_hold_requests_in_flight() {
        let hub = table();
        mirror(&hub, &[entry(1, true)]);
        let report = |requests, in_flight, prompt| UsageReport {
            gateway: "edge-a".to_owned(),
            services: vec![ServiceUsage {
                id: 1,
                requests,
                in_flight,
                last_used_ms: 1_000,
                prompt_tokens: prompt,
                completion_tokens: 0,
                in_flight_by_container: BTreeMap::from([("c1".to_owned(), in_flight)]),
            }],
        };
        assert_eq!(count_report(&hub, &report(10, 2, 5)), 1);
        count_report(&hub, &report(25, 1, 9));
        let routes = hub.get(1).expect("service 1");
        assert_eq!(routes.usage.requests.load(Ordering::Relaxed), 25);
        assert_eq!(routes.usage.prompt_tokens.load(Ordering::Relaxed), 9);
        assert_eq!(routes.usage.in_flight_total(), 1);
        assert_eq!(routes.in_flight_on(&["c1".to_owned()]), 1);
        assert_eq!(routes.usage.last_used_ms.load(Ordering::Relaxed), 1_000);
        // The gateway restarted: its counters began again, and all it reports is new.
        count_report(&hub, &report(4, 0, 0));
        assert_eq!(routes.usage.requests.load(Ordering::Relaxed), 29);
        assert_eq!(routes.usage.in_flight_total(), 0);
    }
}
