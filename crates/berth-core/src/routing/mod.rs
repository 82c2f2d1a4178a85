//! Request routing for the gateway: which replica of a service takes one request.
//!
//! Every policy is a pure function of the replicas it is offered ([`Backend`]) and what the
//! caller knows about the request ([`RequestFacts`]): no clock, no I/O, no hidden state, so equal
//! inputs always give the same choice. What varies between requests comes from the caller: a
//! per-service counter ([`RequestFacts::sequence`]), 64 random bits ([`RequestFacts::roll`]) and
//! an optional sticky key ([`RequestFacts::affinity`]).
//!
//! One file per policy: [`RoundRobin`], [`LeastLoaded`], [`Random`], [`Weighted`], [`Sticky`],
//! and [`Canary`], which splits traffic between a canary group and the rest and runs another
//! policy inside the chosen group. A service's settings ([`RoutingConfig`]) name the policy as
//! written in its YAML/JSON, are checked by [`RoutingConfig::validate`] and turned into a policy
//! by [`RoutingConfig::policy`].

mod canary;
mod least_loaded;
mod random;
mod round_robin;
mod sticky;
#[cfg(test)]
mod tests;
mod weighted;

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

pub use canary::Canary;
pub use least_loaded::LeastLoaded;
pub use random::Random;
pub use round_robin::RoundRobin;
pub use sticky::Sticky;
pub use weighted::Weighted;

use crate::SpecError;

/// One replica that can take a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backend {
    /// Replica number: the stable identity used for sticky hashing and weights.
    pub replica: i64,
    /// Share of traffic under [`Weighted`]; 0 = never chosen unless every weight is 0 (then all
    /// count as 1). Fill it from [`RoutingConfig::weight_of`].
    pub weight: u32,
    /// Requests this replica is serving now, for [`LeastLoaded`].
    pub in_flight: u32,
    /// Whether the replica belongs to the canary group (see [`Canary`]).
    pub canary: bool,
}

/// What the caller knows about one request.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestFacts<'a> {
    /// A per-service counter the caller increments for every request.
    pub sequence: u64,
    /// 64 random bits the caller draws per request.
    pub roll: u64,
    /// The sticky key (header or cookie value) when the request has one.
    pub affinity: Option<&'a str>,
}

/// A routing policy: pure, deterministic for equal inputs.
pub trait RoutingPolicy: Send + Sync + fmt::Debug {
    /// Index into `backends` of the one that takes the request; `None` only when `backends` is
    /// empty.
    fn choose(&self, backends: &[Backend], request: &RequestFacts<'_>) -> Option<usize>;
}

/// Which policy, as written in a service's YAML/JSON (`snake_case`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyName {
    /// `round_robin`: [`RoundRobin`].
    #[default]
    RoundRobin,
    /// `least_loaded`: [`LeastLoaded`].
    LeastLoaded,
    /// `random`: [`Random`].
    Random,
    /// `weighted`: [`Weighted`], with [`RoutingConfig::weights`].
    Weighted,
    /// `sticky`: [`Sticky`], keyed by [`RoutingConfig::affinity`].
    Sticky,
}

/// Where the sticky key comes from: exactly one of a request header or a cookie.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Affinity {
    /// Name of the request header whose value is the key (a token: ASCII letters, digits, `-`,
    /// `_`).
    #[serde(default)]
    pub header: Option<String>,
    /// Name of the cookie whose value is the key.
    #[serde(default)]
    pub cookie: Option<String>,
}

/// Canary split: `percent` of requests go to backends with `canary: true`, the rest to the others.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanarySplit {
    /// Share of requests sent to the canary group, `0..=100`.
    pub percent: u8,
    /// The other deployment whose replicas form the canary group; the caller resolves it (the
    /// hub: a service of the same owner).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

/// A service's routing settings.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingConfig {
    /// The base policy (`round_robin` when absent).
    #[serde(default)]
    pub policy: PolicyName,
    /// Where the sticky key comes from; required by, and only allowed with, `sticky`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Replica → weight for `weighted`; a replica not listed weighs 1.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub weights: BTreeMap<i64, u32>,
    /// A canary split wrapped around the base policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanarySplit>,
}

impl RoutingConfig {
    /// Checks the settings; the error names the field, e.g. `routing.affinity`,
    /// `routing.affinity.header`, `routing.canary.percent` or `routing.weights`.
    pub fn validate(&self) -> Result<(), SpecError> {
        self.validate_affinity()?;
        if let Some(canary) = &self.canary
            && canary.percent > 100
        {
            return Err(SpecError::new(
                "routing.canary.percent",
                format!("{} is not a percentage (0 to 100)", canary.percent),
            ));
        }
        if !self.weights.is_empty() && self.policy != PolicyName::Weighted {
            return Err(SpecError::new(
                "routing.weights",
                format!(
                    "weights only apply to the `weighted` policy, not `{}`",
                    policy_label(self.policy)
                ),
            ));
        }
        if let Some(replica) = self.weights.keys().find(|replica| **replica < 0) {
            return Err(SpecError::new(
                "routing.weights",
                format!("replica {replica} is negative; replica numbers start at 0"),
            ));
        }
        Ok(())
    }

    fn validate_affinity(&self) -> Result<(), SpecError> {
        let Some(affinity) = &self.affinity else {
            if self.policy == PolicyName::Sticky {
                return Err(SpecError::new(
                    "routing.affinity",
                    "the `sticky` policy needs an affinity: a `header` or a `cookie`",
                ));
            }
            return Ok(());
        };
        if self.policy != PolicyName::Sticky {
            return Err(SpecError::new(
                "routing.affinity",
                format!(
                    "an affinity only applies to the `sticky` policy, not `{}`",
                    policy_label(self.policy)
                ),
            ));
        }
        match (&affinity.header, &affinity.cookie) {
            (Some(header), None) => {
                if header.is_empty() {
                    return Err(SpecError::new(
                        "routing.affinity.header",
                        "the header name is empty",
                    ));
                }
                if !header
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
                {
                    return Err(SpecError::new(
                        "routing.affinity.header",
                        format!(
                            "{header:?} is not a header name (ASCII letters, digits, `-` and `_`)"
                        ),
                    ));
                }
                Ok(())
            }
            (None, Some(cookie)) => {
                if cookie.is_empty() {
                    return Err(SpecError::new(
                        "routing.affinity.cookie",
                        "the cookie name is empty",
                    ));
                }
                if !cookie.bytes().all(is_cookie_name_byte) {
                    return Err(SpecError::new(
                        "routing.affinity.cookie",
                        format!(
                            "{cookie:?} is not a cookie name (visible ASCII without separators \
                             such as `=`, `;`, `,` or spaces)"
                        ),
                    ));
                }
                Ok(())
            }
            (Some(_), Some(_)) => Err(SpecError::new(
                "routing.affinity",
                "give either `header` or `cookie`, not both",
            )),
            (None, None) => Err(SpecError::new(
                "routing.affinity",
                "give a `header` or a `cookie` to take the sticky key from",
            )),
        }
    }

    /// The policy these settings describe (the canary split wrapping the base policy when set).
    ///
    /// [`Weighted`] reads [`Backend::weight`], which the caller fills from
    /// [`RoutingConfig::weight_of`]; [`Sticky`] reads [`RequestFacts::affinity`], which the caller
    /// takes from the header or cookie named by [`RoutingConfig::affinity`].
    pub fn policy(&self) -> Box<dyn RoutingPolicy> {
        let base: Box<dyn RoutingPolicy> = match self.policy {
            PolicyName::RoundRobin => Box::new(RoundRobin),
            PolicyName::LeastLoaded => Box::new(LeastLoaded),
            PolicyName::Random => Box::new(Random),
            PolicyName::Weighted => Box::new(Weighted),
            PolicyName::Sticky => Box::new(Sticky),
        };
        match &self.canary {
            Some(split) => Box::new(Canary {
                percent: split.percent,
                inner: base,
            }),
            None => base,
        }
    }

    /// The weight of `replica` (from `weights`, default 1).
    pub fn weight_of(&self, replica: i64) -> u32 {
        self.weights.get(&replica).copied().unwrap_or(1)
    }
}

/// The policy's name as written in YAML/JSON, for messages.
fn policy_label(policy: PolicyName) -> &'static str {
    match policy {
        PolicyName::RoundRobin => "round_robin",
        PolicyName::LeastLoaded => "least_loaded",
        PolicyName::Random => "random",
        PolicyName::Weighted => "weighted",
        PolicyName::Sticky => "sticky",
    }
}

/// A byte allowed in a cookie name (an RFC 7230 `tchar`, as RFC 6265 requires).
fn is_cookie_name_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

/// Round robin over `len` backends by `sequence`; `None` when `len` is 0.
fn rotate(sequence: u64, len: usize) -> Option<usize> {
    let len = u64::try_from(len).ok().filter(|len| *len > 0)?;
    usize::try_from(sequence % len).ok()
}
