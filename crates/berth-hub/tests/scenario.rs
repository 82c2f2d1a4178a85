//! A scenario on simulated nodes: services spread over 30 nodes, four nodes fail, the failure
//! detector waits for its threshold, the reconciler moves their replicas, the nodes return and
//! their stale containers go; at every step nothing is duplicated or over-committed.

use berth_hub::scenario::{self, Check, Scenario};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_survived_and_cleaned_on_simulated_nodes() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let scenario: Scenario = yaml_serde::from_str(
        "seed: 7\nnodes: {gpu: 6, cpu: 20, edge: 4}\nservices: 120\nfailure_threshold: 2\n\
         steps:\n  - fail: 4\n  - rounds: 1\n  - rounds: 2\n  - recover: true\n  - rounds: 1\n",
    )
    .expect("scenario");
    let dir = std::env::temp_dir().join(format!("berth-scenario-{}", std::process::id()));
    let mut lines = Vec::new();
    let outcome = scenario::run(&scenario, &dir, &mut |line| lines.push(line.to_owned()))
        .await
        .expect("run");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(outcome.services_created, 120, "{lines:#?}");
    let checks: Vec<Check> = outcome.checks.iter().map(|(_, check)| *check).collect();
    for check in &checks {
        assert_eq!(
            (check.duplicates, check.overcommitted_nodes),
            (0, 0),
            "{lines:#?}"
        );
    }
    assert_eq!(checks[0].down_nodes, 4);
    assert!(
        checks[1].replicas_on_down_nodes > 0,
        "one failed check is not a failure: {lines:#?}"
    );
    assert_eq!(checks[2].replicas_on_down_nodes, 0, "moved: {lines:#?}");
    assert!(
        checks[3].stale_containers > 0,
        "the returned nodes still hold the old replicas: {lines:#?}"
    );
    assert_eq!(checks[4].stale_containers, 0, "cleaned: {lines:#?}");
    assert_eq!(
        outcome.moved, checks[1].replicas_on_down_nodes,
        "{lines:#?}"
    );
    assert_eq!(outcome.removed, checks[3].stale_containers, "{lines:#?}");
}
