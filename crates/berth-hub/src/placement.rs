//! A first node choice for a new service: feasible nodes (enabled, connected, enough GPUs), then
//! the lowest priority number, then the least load per unit of weight (seed 000). The scheduler
//! replaces this with full resource accounting; the refusal already says, per reason, how many
//! nodes failed.

use std::collections::{BTreeMap, HashMap};

use berth_store::nodes::NodeRecord;

/// GPUs a node has: the declared count, or what it reported when larger.
fn gpus_of(node: &NodeRecord) -> i64 {
    let observed = node.observed["gpus"]
        .as_array()
        .map_or(0, |gpus| gpus.len() as i64);
    node.gpu_count.max(observed)
}

/// Picks the node for a service needing `gpus` GPUs, given containers per node.
pub fn pick<'a>(
    nodes: &'a [NodeRecord],
    containers: &HashMap<i64, i64>,
    gpus: i64,
) -> Result<&'a NodeRecord, String> {
    let mut refusals: BTreeMap<&'static str, usize> = BTreeMap::new();
    let feasible: Vec<&NodeRecord> = nodes
        .iter()
        .filter(|node| {
            let reason = if !node.enabled {
                Some("disabled")
            } else if node.docker_status != "connected" {
                Some("not connected")
            } else if gpus > 0 && gpus_of(node) < gpus {
                Some("not enough GPUs")
            } else {
                None
            };
            if let Some(reason) = reason {
                *refusals.entry(reason).or_default() += 1;
            }
            reason.is_none()
        })
        .collect();
    feasible
        .into_iter()
        .min_by(|left, right| {
            let load = |node: &NodeRecord| {
                containers.get(&node.id).copied().unwrap_or(0) as f64 / node.weight.max(1) as f64
            };
            left.priority
                .cmp(&right.priority)
                .then(load(left).total_cmp(&load(right)))
                .then(left.id.cmp(&right.id))
        })
        .ok_or_else(|| {
            if nodes.is_empty() {
                return "no compute node is registered".to_owned();
            }
            let reasons: Vec<String> = refusals
                .iter()
                .map(|(reason, count)| {
                    format!(
                        "{count} node{}: {reason}",
                        if *count == 1 { "" } else { "s" }
                    )
                })
                .collect();
            format!("no node can run it ({})", reasons.join("; "))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: i64, priority: i64, weight: i64, gpus: i64) -> NodeRecord {
        let mut node = NodeRecord::new(&format!("n{id}"), "docker");
        node.id = id;
        node.priority = priority;
        node.weight = weight;
        node.gpu_count = gpus;
        node.docker_status = "connected".to_owned();
        node
    }

    #[test]
    fn priority_first_then_load_per_weight() {
        let nodes = vec![node(1, 2, 100, 0), node(2, 1, 100, 0), node(3, 1, 50, 0)];
        let load = HashMap::from([(2, 4), (3, 1)]);
        assert_eq!(
            pick(&nodes, &load, 0).expect("a node").id,
            3,
            "1/50 < 4/100"
        );
        let load = HashMap::from([(2, 1), (3, 1)]);
        assert_eq!(
            pick(&nodes, &load, 0).expect("a node").id,
            2,
            "1/100 < 1/50"
        );
    }

    #[test]
    fn gpus_and_health_filter_and_the_refusal_counts_reasons() {
        let mut disabled = node(1, 1, 100, 8);
        disabled.enabled = false;
        let mut down = node(2, 1, 100, 8);
        down.docker_status = "failed".to_owned();
        let small = node(3, 1, 100, 1);
        let mut observed = node(4, 5, 100, 0);
        observed.observed = serde_json::json!({"gpus": [{}, {}]});
        let nodes = vec![disabled, down, small, observed];
        assert_eq!(
            pick(&nodes, &HashMap::new(), 2).expect("a node").id,
            4,
            "reported GPUs count"
        );
        let refusal = pick(&nodes, &HashMap::new(), 4).expect_err("none fits");
        assert_eq!(
            refusal,
            "no node can run it (1 node: disabled; 1 node: not connected; 2 nodes: not enough GPUs)"
        );
        assert_eq!(
            pick(&[], &HashMap::new(), 0).expect_err("empty"),
            "no compute node is registered"
        );
    }
}
