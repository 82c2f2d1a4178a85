//! `serving.rules`: custom routing without code. Each rule names conditions — a header, a path
//! prefix, a query parameter, the caller's user name; all that are given must hold — and where
//! a matching request goes: a subset of the service's replicas — by index, by deployment version
//! (while a paused rollout keeps two versions serving) or by the labels of their nodes — chosen
//! among by the service's policy, or another service of the same owner. The first rule that
//! matches decides; a request no rule matches goes to every replica by the policy.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::head::Head;
use super::routes::Endpoint;
use berth_core::SpecError;

/// A header or query parameter and the value it must have.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pair {
    /// Its name (a header's is matched without regard to case).
    pub name: String,
    /// The exact value.
    pub value: String,
}

/// One routing rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteRule {
    /// A header the request carries with this value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<Pair>,
    /// The start of the path below the service (`/v2`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// A query parameter with this value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<Pair>,
    /// The caller's user name (by its Berth token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Send it to these replicas only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<Vec<i64>>,
    /// Send it to the replicas of this deployment version only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    /// Send it to the replicas on nodes carrying all these labels only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_labels: Option<BTreeMap<String, String>>,
    /// Send it to this service of the same owner instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

/// Which of a service's replicas a rule sends requests to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subset {
    /// These replicas, by index.
    Replicas(Vec<i64>),
    /// The replicas of this deployment version.
    Version(i64),
    /// The replicas on nodes carrying all these labels.
    NodeLabels(BTreeMap<String, String>),
}

impl Subset {
    /// Whether `endpoint` is one of them.
    pub fn admits(&self, endpoint: &Endpoint) -> bool {
        match self {
            Self::Replicas(replicas) => replicas.contains(&endpoint.replica),
            Self::Version(version) => endpoint.version == *version,
            Self::NodeLabels(labels) => endpoint.node_carries(labels),
        }
    }
}

/// Where a rule sends a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination<'a> {
    /// These replicas of the service.
    Replicas(Subset),
    /// Another service of the same owner.
    Service(&'a str),
}

impl RouteRule {
    /// Checks one rule (number `index`); the error names the field.
    pub fn validate(&self, index: usize) -> Result<(), SpecError> {
        let field = |name: &str| format!("serving.rules[{index}].{name}");
        if self.header.is_none()
            && self.path_prefix.is_none()
            && self.query.is_none()
            && self.user.is_none()
        {
            return Err(SpecError::new(
                field("header"),
                "give at least one condition: header, path_prefix, query or user",
            ));
        }
        let destinations = usize::from(self.replicas.is_some())
            + usize::from(self.version.is_some())
            + usize::from(self.node_labels.is_some())
            + usize::from(self.service.is_some());
        if destinations != 1 {
            return Err(SpecError::new(
                field("replicas"),
                "give one place matching requests go: replicas (a non-empty list), version, node_labels or service",
            ));
        }
        if self.replicas.as_ref().is_some_and(Vec::is_empty) {
            return Err(SpecError::new(
                field("replicas"),
                "name at least one replica",
            ));
        }
        if let Some(version) = self.version
            && version < 1
        {
            return Err(SpecError::new(
                field("version"),
                format!("{version} is not a deployment version: they count from 1"),
            ));
        }
        if let Some(labels) = &self.node_labels {
            if labels.is_empty() {
                return Err(SpecError::new(
                    field("node_labels"),
                    "name at least one label",
                ));
            }
            berth_core::schedule::validate_labels(&field("node_labels"), labels)?;
        }
        if let Some(service) = &self.service {
            berth_core::spec::validate_name(&field("service"), service)?;
        }
        if let Some(prefix) = &self.path_prefix
            && !prefix.starts_with('/')
        {
            return Err(SpecError::new(
                field("path_prefix"),
                format!("{prefix:?} does not start with /"),
            ));
        }
        if let Some(header) = &self.header
            && hyper::header::HeaderName::from_bytes(header.name.as_bytes()).is_err()
        {
            return Err(SpecError::new(
                field("header.name"),
                format!("{:?} is not a header name", header.name),
            ));
        }
        Ok(())
    }

    /// Whether a request with `head`, `path` (below the service) and caller `user` matches.
    fn matches(&self, head: &impl Head, path: &str, user: Option<&str>) -> bool {
        let path_only = path.split_once('?').map_or(path, |(path, _)| path);
        self.header.as_ref().is_none_or(|pair| {
            head.header_values(&pair.name)
                .any(|value| value == pair.value.as_bytes())
        }) && self
            .path_prefix
            .as_ref()
            .is_none_or(|prefix| path_only.starts_with(prefix.as_str()))
            && self.query.as_ref().is_none_or(|pair| {
                path.split_once('?')
                    .map(|(_, query)| query)
                    .unwrap_or_default()
                    .split('&')
                    .filter_map(|part| part.split_once('='))
                    .any(|(name, value)| name == pair.name && value == pair.value)
            })
            && self
                .user
                .as_ref()
                .is_none_or(|wanted| user == Some(wanted.as_str()))
    }

    fn destination(&self) -> Option<Destination<'_>> {
        if let Some(replicas) = &self.replicas {
            Some(Destination::Replicas(Subset::Replicas(replicas.clone())))
        } else if let Some(version) = self.version {
            Some(Destination::Replicas(Subset::Version(version)))
        } else if let Some(labels) = &self.node_labels {
            Some(Destination::Replicas(Subset::NodeLabels(labels.clone())))
        } else {
            self.service.as_deref().map(Destination::Service)
        }
    }
}

/// Where the first of `rules` that matches sends the request; `None`: by the policy.
pub fn route<'a>(
    rules: &'a [RouteRule],
    head: &impl Head,
    path: &str,
    user: Option<&str>,
) -> Option<Destination<'a>> {
    rules
        .iter()
        .find(|rule| rule.matches(head, path, user))
        .and_then(RouteRule::destination)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Vec<RouteRule> {
        serde_json::from_value(serde_json::json!([
            {"header": {"name": "X-Tier", "value": "gold"}, "replicas": [0]},
            {"path_prefix": "/v2", "query": {"name": "beta", "value": "1"}, "service": "next"},
            {"user": "alice", "replicas": [1, 2]},
            {"header": {"name": "X-Tier", "value": "silver"}, "version": 3},
            {"user": "bob", "node_labels": {"gpu": "a100"}},
        ]))
        .expect("rules")
    }

    fn request(path: &str, tier: Option<&str>) -> hyper::Request<()> {
        let mut builder = hyper::Request::get(format!("/s/o/s{path}"));
        if let Some(tier) = tier {
            builder = builder.header("x-tier", tier);
        }
        builder.body(()).expect("request")
    }

    #[test]
    fn the_first_matching_rule_decides_and_every_condition_must_hold() {
        let rules = rules();
        for (index, rule) in rules.iter().enumerate() {
            rule.validate(index).expect("valid");
        }
        let gold = request("/predict", Some("gold"));
        assert_eq!(
            route(&rules, &gold, "/predict", Some("alice")),
            Some(Destination::Replicas(Subset::Replicas(vec![0])))
        );
        let beta = request("/v2/predict?beta=1", None);
        assert_eq!(
            route(&rules, &beta, "/v2/predict?beta=1", None),
            Some(Destination::Service("next"))
        );
        let not_beta = request("/v2/predict?beta=0", None);
        assert_eq!(route(&rules, &not_beta, "/v2/predict?beta=0", None), None);
        assert_eq!(
            route(&rules, &not_beta, "/v2/predict?beta=0", Some("alice")),
            Some(Destination::Replicas(Subset::Replicas(vec![1, 2])))
        );
        let silver = request("/predict", Some("silver"));
        let Some(Destination::Replicas(by_version)) = route(&rules, &silver, "/predict", None)
        else {
            panic!("silver goes to a version");
        };
        let Some(Destination::Replicas(by_label)) = route(&rules, &not_beta, "/", Some("bob"))
        else {
            panic!("bob goes to labelled nodes");
        };
        let endpoint = |version: i64, gpu: &str| {
            let endpoint = Endpoint::new(0, "c".into(), 1, "127.0.0.1:9".parse().expect("addr"), 1)
                .of_version(version);
            endpoint.set_node_labels(BTreeMap::from([
                ("gpu".to_owned(), gpu.to_owned()),
                ("zone".to_owned(), "a".to_owned()),
            ]));
            endpoint
        };
        assert!(by_version.admits(&endpoint(3, "t4")));
        assert!(!by_version.admits(&endpoint(2, "a100")));
        assert!(by_label.admits(&endpoint(2, "a100")));
        assert!(!by_label.admits(&endpoint(3, "t4")));
        let no_condition: RouteRule =
            serde_json::from_value(serde_json::json!({"replicas": [0]})).expect("rule");
        assert_eq!(
            no_condition.validate(3).expect_err("no condition").field,
            "serving.rules[3].header"
        );
        for (rule, field) in [
            (
                serde_json::json!({"user": "a", "version": 2, "service": "b"}),
                "serving.rules[0].replicas",
            ),
            (
                serde_json::json!({"user": "a", "version": 0}),
                "serving.rules[0].version",
            ),
            (
                serde_json::json!({"user": "a", "node_labels": {}}),
                "serving.rules[0].node_labels",
            ),
        ] {
            let rule: RouteRule = serde_json::from_value(rule).expect("rule");
            assert_eq!(rule.validate(0).expect_err("refused").field, field);
        }
    }
}
