use std::collections::BTreeMap;

use proptest::prelude::*;

use super::sticky::fnv1a_64;
use super::*;
use crate::seeded::SeededRandom;

const REQUESTS: u64 = 10_000;

fn backend(replica: i64) -> Backend {
    Backend {
        replica,
        weight: 1,
        in_flight: 0,
        canary: false,
    }
}

fn backends(count: i64) -> Vec<Backend> {
    (0..count).map(backend).collect()
}

fn request(sequence: u64, roll: u64) -> RequestFacts<'static> {
    RequestFacts {
        sequence,
        roll,
        affinity: None,
    }
}

/// How many of `REQUESTS` sequential requests, with seeded rolls, each backend takes.
fn distribution(policy: &dyn RoutingPolicy, backends: &[Backend], seed: u64) -> Vec<u64> {
    let mut random = SeededRandom::new(seed);
    let mut counts = vec![0; backends.len()];
    for sequence in 0..REQUESTS {
        let index = policy
            .choose(backends, &request(sequence, random.next_u64()))
            .expect("backends are not empty");
        counts[index] += 1;
    }
    counts
}

fn assert_within(count: u64, expected: u64, tolerance: u64, what: &str) {
    assert!(
        count.abs_diff(expected) <= tolerance,
        "{what}: {count} is not within {expected} ± {tolerance}"
    );
}

fn every_policy() -> Vec<Box<dyn RoutingPolicy>> {
    let mut policies: Vec<Box<dyn RoutingPolicy>> = vec![
        Box::new(RoundRobin),
        Box::new(LeastLoaded),
        Box::new(Random),
        Box::new(Weighted),
        Box::new(Sticky),
    ];
    for percent in [0, 10, 100] {
        policies.push(Box::new(Canary {
            percent,
            inner: Box::new(Random),
        }));
        policies.push(Box::new(Canary {
            percent,
            inner: Box::new(Sticky),
        }));
    }
    policies
}

#[test]
fn every_policy_returns_none_without_backends() {
    let keyed = RequestFacts {
        sequence: 7,
        roll: 42,
        affinity: Some("user-1"),
    };
    for policy in every_policy() {
        assert_eq!(policy.choose(&[], &request(0, 0)), None, "{policy:?}");
        assert_eq!(policy.choose(&[], &keyed), None, "{policy:?}");
    }
}

#[test]
fn round_robin_is_exactly_even() {
    let pool = backends(4);
    assert_eq!(distribution(&RoundRobin, &pool, 1), vec![2500; 4]);
    let picks: Vec<_> = (0..6)
        .map(|sequence| RoundRobin.choose(&pool, &request(sequence, 0)))
        .collect();
    assert_eq!(picks, [0, 1, 2, 3, 0, 1].map(Some));
    assert_eq!(
        RoundRobin.choose(&pool, &request(u64::MAX, 0)),
        Some((u64::MAX % 4) as usize)
    );
}

#[test]
fn weighted_is_exactly_proportional() {
    let mut pool = backends(2);
    pool[0].weight = 3;
    pool[1].weight = 1;
    assert_eq!(distribution(&Weighted, &pool, 2), vec![7500, 2500]);

    let mut pool = backends(3);
    pool[0].weight = 2;
    pool[1].weight = 0;
    pool[2].weight = 3;
    assert_eq!(
        distribution(&Weighted, &pool, 3),
        vec![4000, 0, 6000],
        "weight 0 is never chosen"
    );
}

#[test]
fn weighted_with_every_weight_zero_is_round_robin() {
    let mut pool = backends(4);
    for backend in &mut pool {
        backend.weight = 0;
    }
    assert_eq!(distribution(&Weighted, &pool, 4), vec![2500; 4]);
    for sequence in 0..8 {
        assert_eq!(
            Weighted.choose(&pool, &request(sequence, 0)),
            RoundRobin.choose(&pool, &request(sequence, 0))
        );
    }
}

#[test]
fn weighted_handles_huge_weights() {
    let mut pool = backends(3);
    for backend in &mut pool {
        backend.weight = u32::MAX;
    }
    let total = 3 * u64::from(u32::MAX);
    assert_eq!(Weighted.choose(&pool, &request(total - 1, 0)), Some(2));
    assert_eq!(Weighted.choose(&pool, &request(total, 0)), Some(0));
    assert_eq!(
        Weighted.choose(&pool, &request(u64::MAX, 0)).map(|i| i < 3),
        Some(true)
    );
}

#[test]
fn random_is_within_five_percent_of_even() {
    let pool = backends(4);
    for seed in [1, 2, 3] {
        let counts = distribution(&Random, &pool, seed);
        for count in counts {
            assert_within(count, 2500, 125, "random share");
        }
    }
    // Multiply-shift: the roll's high bits pick the backend.
    assert_eq!(Random.choose(&pool, &request(0, 0)), Some(0));
    assert_eq!(Random.choose(&pool, &request(0, u64::MAX)), Some(3));
    assert_eq!(Random.choose(&pool, &request(0, 1 << 63)), Some(2));
}

#[test]
fn least_loaded_picks_the_minimum() {
    let mut pool = backends(4);
    for (backend, in_flight) in pool.iter_mut().zip([5, 2, 7, 3]) {
        backend.in_flight = in_flight;
    }
    for sequence in 0..20 {
        assert_eq!(LeastLoaded.choose(&pool, &request(sequence, 0)), Some(1));
    }
}

#[test]
fn least_loaded_spreads_ties() {
    let pool = backends(4);
    assert_eq!(
        distribution(&LeastLoaded, &pool, 5),
        vec![2500; 4],
        "nothing in flight: even"
    );

    let mut pool = backends(5);
    for (backend, in_flight) in pool.iter_mut().zip([1, 0, 4, 0, 0]) {
        backend.in_flight = in_flight;
    }
    let picks: Vec<_> = (0..6)
        .map(|sequence| LeastLoaded.choose(&pool, &request(sequence, 0)))
        .collect();
    assert_eq!(picks, [1, 3, 4, 1, 3, 4].map(Some));
    let counts = distribution(&LeastLoaded, &pool, 6);
    assert_eq!(counts[0] + counts[2], 0);
    assert!(counts[1].abs_diff(counts[3]) <= 1 && counts[3].abs_diff(counts[4]) <= 1);
}

fn sticky_replica(pool: &[Backend], key: &str) -> i64 {
    let facts = RequestFacts {
        sequence: 0,
        roll: 0,
        affinity: Some(key),
    };
    let index = Sticky.choose(pool, &facts).expect("backends are not empty");
    pool[index].replica
}

#[test]
fn fnv1a_matches_the_reference_vectors() {
    assert_eq!(fnv1a_64(b""), 0xCBF2_9CE4_8422_2325);
    assert_eq!(fnv1a_64(b"a"), 0xAF63_DC4C_8601_EC8C);
    assert_eq!(fnv1a_64(b"foobar"), 0x8594_4171_F739_67E8);
}

#[test]
fn sticky_sends_the_same_key_to_the_same_replica() {
    let pool = backends(5);
    let mut random = SeededRandom::new(9);
    for sequence in 0..100 {
        let facts = RequestFacts {
            sequence,
            roll: random.next_u64(),
            affinity: Some("session-abc"),
        };
        assert_eq!(
            pool[Sticky.choose(&pool, &facts).expect("chosen")].replica,
            sticky_replica(&pool, "session-abc"),
            "sequence and roll do not matter"
        );
    }
    // Whatever the order the backends come in.
    let mut reversed = pool.clone();
    reversed.reverse();
    for key in (0..200).map(|n| format!("user-{n}")) {
        assert_eq!(sticky_replica(&pool, &key), sticky_replica(&reversed, &key));
    }
}

#[test]
fn sticky_is_stable_across_runs_and_processes() {
    // Pinned: the hash has no per-process seed, so these never change (changing them would
    // re-shuffle every session of every deployed service).
    let pool = backends(8);
    let chosen: Vec<i64> = ["alice", "bob", "carol", "session-1", ""]
        .iter()
        .map(|key| sticky_replica(&pool, key))
        .collect();
    assert_eq!(chosen, PINNED_STICKY);
}

const PINNED_STICKY: [i64; 5] = [2, 7, 4, 5, 0];

#[test]
fn sticky_spreads_different_keys_over_every_backend() {
    let pool = backends(5);
    let mut counts = BTreeMap::<i64, u32>::new();
    for key in (0..1000).map(|n| format!("key-{n}")) {
        *counts.entry(sticky_replica(&pool, &key)).or_default() += 1;
    }
    assert_eq!(counts.len(), 5, "{counts:?}");
    for count in counts.values() {
        assert!((120..=280).contains(count), "{counts:?}");
    }
}

#[test]
fn removing_a_backend_moves_only_its_keys() {
    let pool = backends(6);
    let keys: Vec<String> = (0..1000).map(|n| format!("visitor-{n:04}")).collect();
    let before: Vec<i64> = keys.iter().map(|key| sticky_replica(&pool, key)).collect();
    for removed in 0..6 {
        let remaining: Vec<Backend> = pool
            .iter()
            .copied()
            .filter(|backend| backend.replica != removed)
            .collect();
        let mut moved = 0;
        for (key, was) in keys.iter().zip(&before) {
            let now = sticky_replica(&remaining, key);
            if *was == removed {
                moved += 1;
                assert_ne!(now, removed);
            } else {
                assert_eq!(now, *was, "{key} moved although replica {was} stayed");
            }
        }
        assert!(moved > 0, "replica {removed} had keys");
    }
}

#[test]
fn sticky_without_a_key_is_round_robin() {
    let pool = backends(3);
    assert_eq!(distribution(&Sticky, &pool, 10), vec![3334, 3333, 3333]);
}

fn canary_pool() -> Vec<Backend> {
    // Canaries at 1 and 4, interleaved so the index mapping is exercised.
    let mut pool = backends(6);
    pool[1].canary = true;
    pool[4].canary = true;
    pool
}

#[test]
fn canary_sends_its_share_to_the_canary_group() {
    let pool = canary_pool();
    let policy = Canary {
        percent: 10,
        inner: Box::new(RoundRobin),
    };
    for seed in [11, 12, 13] {
        let counts = distribution(&policy, &pool, seed);
        let canary = counts[1] + counts[4];
        assert_within(canary, 1000, 200, "canary share");
        assert_eq!(counts.iter().sum::<u64>(), REQUESTS);
        assert!(counts.iter().all(|count| *count > 0), "{counts:?}");
    }
}

#[test]
fn canary_inner_randomness_is_independent_of_the_split() {
    // If the inner policy saw the raw roll, whatever decided the split would skew its pick.
    let pool = canary_pool();
    let policy = Canary {
        percent: 50,
        inner: Box::new(Random),
    };
    let counts = distribution(&policy, &pool, 14);
    assert_within(counts[1] + counts[4], 5000, 250, "canary half");
    for stable in [0, 2, 3, 5] {
        assert_within(counts[stable], 1250, 100, "stable replica");
    }
    for canary in [1, 4] {
        assert_within(counts[canary], 2500, 150, "canary replica");
    }
}

#[test]
fn canary_extremes_and_the_roll_rule() {
    let pool = canary_pool();
    let all_canary = Canary {
        percent: 100,
        inner: Box::new(RoundRobin),
    };
    let no_canary = Canary {
        percent: 0,
        inner: Box::new(RoundRobin),
    };
    let to_canary = distribution(&all_canary, &pool, 15);
    assert_eq!(to_canary, vec![0, 5000, 0, 0, 5000, 0]);
    let to_stable = distribution(&no_canary, &pool, 16);
    assert_eq!(to_stable, vec![2500, 0, 2500, 2500, 0, 2500]);

    let ten = Canary {
        percent: 10,
        inner: Box::new(RoundRobin),
    };
    // roll % 100 < percent → canary.
    assert!(pool[ten.choose(&pool, &request(0, 109)).expect("chosen")].canary);
    assert!(!pool[ten.choose(&pool, &request(0, 110)).expect("chosen")].canary);
}

#[test]
fn canary_falls_back_to_every_backend_when_its_group_is_empty() {
    let pool = backends(4);
    let policy = Canary {
        percent: 10,
        inner: Box::new(RoundRobin),
    };
    let counts = distribution(&policy, &pool, 17);
    assert_eq!(counts.iter().sum::<u64>(), REQUESTS);
    assert!(counts.iter().all(|count| *count > 2000), "{counts:?}");

    let mut only_canaries = backends(3);
    for backend in &mut only_canaries {
        backend.canary = true;
    }
    let stable_only = Canary {
        percent: 0,
        inner: Box::new(RoundRobin),
    };
    assert_eq!(
        distribution(&stable_only, &only_canaries, 18),
        vec![3334, 3333, 3333]
    );
}

#[test]
fn config_builds_the_policy_it_names() {
    let pool = canary_pool();
    let config = RoutingConfig {
        policy: PolicyName::Weighted,
        weights: BTreeMap::from([(0, 3), (2, 0)]),
        ..RoutingConfig::default()
    };
    assert_eq!(config.weight_of(0), 3);
    assert_eq!(config.weight_of(2), 0);
    assert_eq!(config.weight_of(1), 1, "default weight");
    let weighted: Vec<Backend> = pool
        .iter()
        .map(|backend| Backend {
            weight: config.weight_of(backend.replica),
            ..*backend
        })
        .collect();
    // Weights 3, 1, 0, 1, 1, 1: total 7.
    let counts = distribution(config.policy().as_ref(), &weighted, 19);
    // 10,000 = 1,428 rounds of 7 plus positions 0..4 (backend 0 three times, backend 1 once).
    assert_eq!(counts, vec![4287, 1429, 0, 1428, 1428, 1428]);

    let with_canary = RoutingConfig {
        canary: Some(CanarySplit {
            percent: 100,
            service: None,
        }),
        ..RoutingConfig::default()
    };
    let counts = distribution(with_canary.policy().as_ref(), &pool, 20);
    assert_eq!(counts, vec![0, 5000, 0, 0, 5000, 0]);
    assert!(format!("{:?}", with_canary.policy()).contains("RoundRobin"));
}

fn sticky_with(header: Option<&str>, cookie: Option<&str>) -> RoutingConfig {
    RoutingConfig {
        policy: PolicyName::Sticky,
        affinity: Some(Affinity {
            header: header.map(str::to_owned),
            cookie: cookie.map(str::to_owned),
        }),
        ..RoutingConfig::default()
    }
}

#[test]
fn validate_accepts_good_configs() {
    let good = [
        RoutingConfig::default(),
        sticky_with(Some("X-Session-Id"), None),
        sticky_with(Some("x_user"), None),
        sticky_with(None, Some("berth_session")),
        RoutingConfig {
            policy: PolicyName::Weighted,
            weights: BTreeMap::from([(0, 3), (1, 1), (2, 0)]),
            ..RoutingConfig::default()
        },
        RoutingConfig {
            policy: PolicyName::Weighted,
            ..RoutingConfig::default()
        },
        RoutingConfig {
            policy: PolicyName::LeastLoaded,
            canary: Some(CanarySplit {
                percent: 0,
                service: None,
            }),
            ..RoutingConfig::default()
        },
        RoutingConfig {
            canary: Some(CanarySplit {
                percent: 100,
                service: None,
            }),
            ..sticky_with(None, Some("sid"))
        },
    ];
    for config in good {
        assert_eq!(config.validate(), Ok(()), "{config:?}");
    }
}

#[test]
fn validate_names_the_field_of_each_bad_config() {
    let bad = [
        (
            RoutingConfig {
                policy: PolicyName::Sticky,
                ..RoutingConfig::default()
            },
            "routing.affinity",
        ),
        (sticky_with(None, None), "routing.affinity"),
        (sticky_with(Some("X-User"), Some("sid")), "routing.affinity"),
        (sticky_with(Some(""), None), "routing.affinity.header"),
        (sticky_with(Some("X User"), None), "routing.affinity.header"),
        (
            sticky_with(Some("X-User:"), None),
            "routing.affinity.header",
        ),
        (sticky_with(Some("X-Üser"), None), "routing.affinity.header"),
        (sticky_with(None, Some("")), "routing.affinity.cookie"),
        (sticky_with(None, Some("sid=1")), "routing.affinity.cookie"),
        (sticky_with(None, Some("a b")), "routing.affinity.cookie"),
        (
            RoutingConfig {
                policy: PolicyName::RoundRobin,
                ..sticky_with(Some("X-User"), None)
            },
            "routing.affinity",
        ),
        (
            RoutingConfig {
                canary: Some(CanarySplit {
                    percent: 101,
                    service: None,
                }),
                ..RoutingConfig::default()
            },
            "routing.canary.percent",
        ),
        (
            RoutingConfig {
                weights: BTreeMap::from([(0, 2)]),
                ..RoutingConfig::default()
            },
            "routing.weights",
        ),
        (
            RoutingConfig {
                policy: PolicyName::Weighted,
                weights: BTreeMap::from([(-1, 2), (0, 1)]),
                ..RoutingConfig::default()
            },
            "routing.weights",
        ),
    ];
    for (config, field) in bad {
        let error = config.validate().expect_err("invalid");
        assert_eq!(error.field, field, "{config:?}: {}", error.message);
        assert!(!error.message.is_empty());
    }
}

#[test]
fn serde_round_trip() {
    let text = r#"{
        "policy": "sticky",
        "affinity": { "header": "X-Session-Id" },
        "canary": { "percent": 10 }
    }"#;
    let config: RoutingConfig = serde_json::from_str(text).expect("parses");
    assert_eq!(
        config,
        RoutingConfig {
            canary: Some(CanarySplit {
                percent: 10,
                service: None
            }),
            ..sticky_with(Some("X-Session-Id"), None)
        }
    );
    assert_eq!(config.validate(), Ok(()));
    let value = serde_json::to_value(&config).expect("serialises");
    assert_eq!(
        value,
        serde_json::json!({
            "policy": "sticky",
            "affinity": { "header": "X-Session-Id", "cookie": null },
            "canary": { "percent": 10 }
        })
    );
    let again: RoutingConfig = serde_json::from_value(value).expect("parses again");
    assert_eq!(again, config);

    let weighted: RoutingConfig =
        serde_json::from_str(r#"{"policy": "weighted", "weights": {"0": 3, "1": 1}}"#)
            .expect("parses");
    assert_eq!(weighted.weights, BTreeMap::from([(0, 3), (1, 1)]));
    let text = serde_json::to_string(&weighted).expect("serialises");
    assert_eq!(
        serde_json::from_str::<RoutingConfig>(&text).expect("parses again"),
        weighted
    );

    let empty: RoutingConfig = serde_json::from_str("{}").expect("parses");
    assert_eq!(empty, RoutingConfig::default());
    assert_eq!(
        serde_json::to_value(&empty).expect("serialises"),
        serde_json::json!({ "policy": "round_robin" })
    );
    for (name, policy) in [
        ("round_robin", PolicyName::RoundRobin),
        ("least_loaded", PolicyName::LeastLoaded),
        ("random", PolicyName::Random),
        ("weighted", PolicyName::Weighted),
        ("sticky", PolicyName::Sticky),
    ] {
        assert_eq!(
            serde_json::to_value(policy).expect("serialises"),
            serde_json::json!(name)
        );
    }
}

#[test]
fn serde_rejects_unknown_fields_and_policies() {
    for text in [
        r#"{"policy": "sticky", "afinity": {"header": "X-User"}}"#,
        r#"{"policy": "sticky", "affinity": {"header": "X-User", "path": "/"}}"#,
        r#"{"canary": {"percent": 10, "group": "v2"}}"#,
        r#"{"policy": "fastest"}"#,
        r#"{"policy": "RoundRobin"}"#,
        r#"{"canary": {"percent": 300}}"#,
        r#"{"policy": "weighted", "weights": {"a": 1}}"#,
    ] {
        assert!(
            serde_json::from_str::<RoutingConfig>(text).is_err(),
            "{text}"
        );
    }
}

fn arb_backend() -> impl Strategy<Value = Backend> {
    (
        prop_oneof![0i64..16, any::<i64>()],
        prop_oneof![0u32..4, any::<u32>()],
        0u32..4,
        any::<bool>(),
    )
        .prop_map(|(replica, weight, in_flight, canary)| Backend {
            replica,
            weight,
            in_flight,
            canary,
        })
}

fn arb_policy() -> impl Strategy<Value = Box<dyn RoutingPolicy>> {
    let base = prop_oneof![
        Just(PolicyName::RoundRobin),
        Just(PolicyName::LeastLoaded),
        Just(PolicyName::Random),
        Just(PolicyName::Weighted),
        Just(PolicyName::Sticky),
    ];
    (base, prop::option::of(any::<u8>())).prop_map(|(policy, canary)| {
        RoutingConfig {
            policy,
            canary: canary.map(|percent| CanarySplit {
                percent,
                service: None,
            }),
            ..RoutingConfig::default()
        }
        .policy()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn every_policy_returns_an_index_in_range(
        pool in prop::collection::vec(arb_backend(), 1..24),
        policy in arb_policy(),
        sequence in any::<u64>(),
        roll in any::<u64>(),
        affinity in prop::option::of(".{0,12}"),
    ) {
        let facts = RequestFacts { sequence, roll, affinity: affinity.as_deref() };
        let chosen = policy.choose(&pool, &facts);
        prop_assert!(matches!(chosen, Some(index) if index < pool.len()), "{:?}", chosen);
        prop_assert_eq!(chosen, policy.choose(&pool, &facts), "deterministic");
        prop_assert_eq!(policy.choose(&[], &facts), None);
    }
}
