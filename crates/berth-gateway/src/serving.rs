//! How the gateway serves a service with a port (a model service, seed 004): routing, probes,
//! warmup, timeouts, flow control, rate limits, model names, autoscaling bounds, rollout pace and
//! routing rules, with the checks that name the field at fault (`serving.…`). A service's
//! definition carries them; the route table holds them for each routable service.

use std::time::Duration;

use berth_core::SpecError;
use berth_core::routing::RoutingConfig;
use serde::{Deserialize, Serialize};

/// How the gateway serves a service with a `port` (a model service, seed 004).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServingSettings {
    /// Which replica takes each request.
    #[serde(default)]
    pub routing: RoutingConfig,
    /// The readiness probe: a `GET` of this path must answer 2xx or 3xx.
    #[serde(default = "root_path")]
    pub probe_path: String,
    /// Seconds between two probes of a ready replica.
    #[serde(default = "two")]
    pub probe_interval_seconds: u64,
    /// Requests a new replica must answer with 2xx before it takes traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup: Option<Warmup>,
    /// Seconds the gateway waits for a replica's response headers before answering 504.
    #[serde(default = "sixty")]
    pub timeout_seconds: u64,
    /// Seconds without requests after which the service is unloaded (scale to zero); never when
    /// absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_seconds: Option<u64>,
    /// Seconds a request to an unloaded service waits for it to become ready.
    #[serde(default = "two_minutes")]
    pub start_timeout_seconds: u64,
    /// Speak HTTP/2 (cleartext) to the replicas, as gRPC servers need; gRPC requests always do.
    #[serde(default)]
    pub http2: bool,
    /// Requests one replica answers at once; the others wait in the queue, in order. Unlimited
    /// (and no queue) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency_per_replica: Option<u32>,
    /// How many requests may wait for a replica; the next one is refused with 429.
    #[serde(default = "hundred")]
    pub queue_size: u32,
    /// Seconds a request waits in the queue before it is refused with 503.
    #[serde(default = "thirty")]
    pub queue_timeout_seconds: u64,
    /// Requests each caller (a user by its token, else an address) may send.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// The model names (aliases too) the gateway's OpenAI-compatible front (`/v1/…`) routes to
    /// this service by a request's `model`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub model_names: Vec<String>,
    /// Replicas from the gateway's load, between `min` and `max`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<Autoscale>,
    /// Seconds a running service's new version has to become ready (every replica past its
    /// probe and warmup) before the rollout is undone and the previous version serves again.
    #[serde(default = "five_minutes")]
    pub rollout_deadline_seconds: u64,
    /// During a rollout, how many new replicas start at a time; as many previous ones leave
    /// once they are ready. All at once when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_surge: Option<u32>,
    /// Ordered routing rules (header, path prefix, query, user → replicas or another service);
    /// a request none matches is routed by the policy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<crate::rules::RouteRule>,
}

/// The most routing rules one service may have.
const MAX_RULES: usize = 64;

/// How the autoscaler sizes a service (one target, in flight or per second).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Autoscale {
    /// Fewest replicas; 0 unloads the service when it has no requests (scale to zero).
    #[serde(default = "one_replica")]
    pub min: u32,
    /// Most replicas.
    pub max: u32,
    /// Requests in flight one replica should carry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_in_flight_per_replica: Option<f64>,
    /// Requests per second one replica should take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_rps_per_replica: Option<f64>,
    /// Seconds the load must ask for more replicas before they are added.
    #[serde(default = "five_seconds")]
    pub scale_up_seconds: u64,
    /// Seconds the load must ask for fewer before replicas are removed (or, with `min: 0`, go
    /// without requests before the service is unloaded).
    #[serde(default = "five_minutes")]
    pub scale_down_delay_seconds: u64,
}

impl Eq for Autoscale {}

fn one_replica() -> u32 {
    1
}

fn five_seconds() -> u64 {
    5
}

fn five_minutes() -> u64 {
    300
}

/// The most model names one service may answer to.
const MAX_MODEL_NAMES: usize = 32;

/// A caller's request rate: a token bucket of `burst` requests refilled at
/// `requests_per_second`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Requests per second, sustained.
    pub requests_per_second: u32,
    /// Requests at once after a quiet spell; `requests_per_second` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

impl Autoscale {
    /// Checks the bounds and the one target; the error names the field.
    pub fn validate(&self) -> Result<(), SpecError> {
        let most = u32::try_from(berth_core::spec::MAX_REPLICAS).unwrap_or(u32::MAX);
        if !(1..=most).contains(&self.max) {
            return Err(SpecError::new(
                "serving.autoscale.max",
                format!("{} is not between 1 and {most}", self.max),
            ));
        }
        if self.min > self.max {
            return Err(SpecError::new(
                "serving.autoscale.min",
                format!("{} is more than max ({})", self.min, self.max),
            ));
        }
        match (
            self.target_in_flight_per_replica,
            self.target_rps_per_replica,
        ) {
            (Some(target), None) | (None, Some(target)) if target > 0.0 && target.is_finite() => {}
            (Some(_), Some(_)) => {
                return Err(SpecError::new(
                    "serving.autoscale.target_rps_per_replica",
                    "give one target: target_in_flight_per_replica or target_rps_per_replica",
                ));
            }
            _ => {
                return Err(SpecError::new(
                    "serving.autoscale.target_in_flight_per_replica",
                    "give one target above 0: target_in_flight_per_replica or target_rps_per_replica",
                ));
            }
        }
        for (field, value) in [
            ("serving.autoscale.scale_up_seconds", self.scale_up_seconds),
            (
                "serving.autoscale.scale_down_delay_seconds",
                self.scale_down_delay_seconds,
            ),
        ] {
            if value > 86_400 {
                return Err(SpecError::new(field, format!("{value} is more than a day")));
            }
        }
        Ok(())
    }
}

/// Warmup requests (seed 004 runs three forward passes before serving).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Warmup {
    /// Path, with its query.
    pub path: String,
    /// HTTP method.
    #[serde(default = "post")]
    pub method: String,
    /// Request body (sent as `application/json` when it parses as JSON).
    #[serde(default)]
    pub body: String,
    /// How many times, one after another.
    #[serde(default = "three")]
    pub count: u32,
}

fn root_path() -> String {
    "/".to_owned()
}

fn two() -> u64 {
    2
}

fn sixty() -> u64 {
    60
}

fn two_minutes() -> u64 {
    120
}

fn hundred() -> u32 {
    100
}

fn thirty() -> u64 {
    30
}

fn post() -> String {
    "POST".to_owned()
}

fn three() -> u32 {
    3
}

impl Default for ServingSettings {
    fn default() -> Self {
        Self {
            routing: RoutingConfig::default(),
            probe_path: root_path(),
            probe_interval_seconds: two(),
            warmup: None,
            timeout_seconds: sixty(),
            idle_timeout_seconds: None,
            start_timeout_seconds: two_minutes(),
            http2: false,
            max_concurrency_per_replica: None,
            queue_size: hundred(),
            queue_timeout_seconds: thirty(),
            rate_limit: None,
            model_names: Vec::new(),
            autoscale: None,
            rollout_deadline_seconds: five_minutes(),
            max_surge: None,
            rules: Vec::new(),
        }
    }
}

fn check_path(field: &str, path: &str) -> Result<(), SpecError> {
    if !path.starts_with('/') || path.contains(char::is_whitespace) {
        return Err(SpecError::new(
            field,
            format!("{path:?} is not a path starting with /"),
        ));
    }
    Ok(())
}

impl ServingSettings {
    /// Checks every value; the error names the field (`serving.…`).
    pub fn validate(&self) -> Result<(), SpecError> {
        self.routing.validate()?;
        // A canary without a service splits a paused rollout between the new version's
        // replicas and the previous one's.
        if let Some(service) = self
            .routing
            .canary
            .as_ref()
            .and_then(|canary| canary.service.as_ref())
        {
            berth_core::spec::validate_name("serving.routing.canary.service", service)?;
        }
        check_path("serving.probe_path", &self.probe_path)?;
        for (field, value, most) in [
            (
                "serving.probe_interval_seconds",
                self.probe_interval_seconds,
                3600,
            ),
            ("serving.timeout_seconds", self.timeout_seconds, 86_400),
            (
                "serving.start_timeout_seconds",
                self.start_timeout_seconds,
                3600,
            ),
            (
                "serving.idle_timeout_seconds",
                self.idle_timeout_seconds.unwrap_or(1),
                30 * 86_400,
            ),
            (
                "serving.queue_timeout_seconds",
                self.queue_timeout_seconds,
                3600,
            ),
            (
                "serving.rollout_deadline_seconds",
                self.rollout_deadline_seconds,
                86_400,
            ),
        ] {
            if !(1..=most).contains(&value) {
                return Err(SpecError::new(
                    field,
                    format!("{value} is not between 1 and {most} seconds"),
                ));
            }
        }
        let rate = self.rate_limit;
        for (field, value, least, most) in [
            (
                "serving.max_concurrency_per_replica",
                self.max_concurrency_per_replica.unwrap_or(1),
                1,
                100_000,
            ),
            // 0: no queue, a request finding every replica busy is refused at once.
            ("serving.queue_size", self.queue_size, 0, 100_000),
            (
                "serving.max_surge",
                self.max_surge.unwrap_or(1),
                1,
                u32::try_from(berth_core::spec::MAX_REPLICAS).unwrap_or(u32::MAX),
            ),
            (
                "serving.rate_limit.requests_per_second",
                rate.map_or(1, |limit| limit.requests_per_second),
                1,
                1_000_000,
            ),
            (
                "serving.rate_limit.burst",
                rate.and_then(|limit| limit.burst).unwrap_or(1),
                1,
                1_000_000,
            ),
        ] {
            if !(least..=most).contains(&value) {
                return Err(SpecError::new(
                    field,
                    format!("{value} is not between {least} and {most}"),
                ));
            }
        }
        if let Some(rule) = &self.autoscale {
            rule.validate()?;
        }
        if self.rules.len() > MAX_RULES {
            return Err(SpecError::new(
                "serving.rules",
                format!("at most {MAX_RULES} rules"),
            ));
        }
        for (index, rule) in self.rules.iter().enumerate() {
            rule.validate(index)?;
        }
        if self.model_names.len() > MAX_MODEL_NAMES {
            return Err(SpecError::new(
                "serving.model_names",
                format!("at most {MAX_MODEL_NAMES} names"),
            ));
        }
        for name in &self.model_names {
            if name.is_empty()
                || name.len() > 200
                || name.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(SpecError::new(
                    "serving.model_names",
                    format!("{name:?} is not a model name: 1 to 200 characters, no spaces"),
                ));
            }
        }
        if let Some(warmup) = &self.warmup {
            check_path("serving.warmup.path", &warmup.path)?;
            if !matches!(
                warmup.method.as_str(),
                "GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS"
            ) {
                return Err(SpecError::new(
                    "serving.warmup.method",
                    format!("{:?} is not an HTTP method (GET, POST, …)", warmup.method),
                ));
            }
            if !(1..=100).contains(&warmup.count) {
                return Err(SpecError::new(
                    "serving.warmup.count",
                    format!("{} is not between 1 and 100", warmup.count),
                ));
            }
        }
        Ok(())
    }

    /// The gateway's wait for response headers.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_seconds)
    }

    /// How long a request to an unloaded service waits for it.
    pub fn start_timeout(&self) -> Duration {
        Duration::from_secs(self.start_timeout_seconds)
    }

    /// How long a new version has to become ready.
    pub fn rollout_deadline(&self) -> Duration {
        Duration::from_secs(self.rollout_deadline_seconds)
    }

    /// How long a request waits in the queue.
    pub fn queue_timeout(&self) -> Duration {
        Duration::from_secs(self.queue_timeout_seconds)
    }

    /// The time without requests after which the service is unloaded.
    pub fn idle_timeout(&self) -> Option<Duration> {
        self.idle_timeout_seconds.map(Duration::from_secs)
    }
}
