//! The store against SQLite and, when `BERTH_TEST_POSTGRES_URL` names a server (always in CI),
//! PostgreSQL: the same scenarios on both.

use berth_store::nodes::{self, NodeRecord};
use berth_store::operations::{self, NewOperation, OperationFilter};
use berth_store::users::{self, Quotas, Role};
use berth_store::{Store, StoreError};
use serde_json::json;

/// A fresh, empty database per scenario and backend.
async fn databases(scenario: &str) -> Vec<Store> {
    let mut stores = Vec::new();
    for url in database_urls(scenario).await {
        stores.push(Store::connect(&url).await.expect("a test database"));
    }
    stores
}

/// The URLs of a fresh, empty database per scenario and backend.
async fn database_urls(scenario: &str) -> Vec<String> {
    let mut urls = Vec::new();
    let dir = std::env::temp_dir().join(format!("berth-store-{}-{scenario}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    urls.push(format!("sqlite://{}", dir.join("berth.db").display()));
    match std::env::var("BERTH_TEST_POSTGRES_URL") {
        Ok(base) => {
            let admin = Store::connect(&base).await.expect("PostgreSQL");
            let name = format!("berth_{}_{scenario}", std::process::id());
            let mut connection = admin.acquire().await.expect("connection");
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name}"
            )))
            .execute(&mut *connection)
            .await
            .expect("drop");
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&mut *connection)
                .await
                .expect("create database");
            let url = match base.rfind('/') {
                Some(slash)
                    if base[..slash].contains("://")
                        && slash > base.find("://").unwrap_or(0) + 2 =>
                {
                    format!("{}/{name}", &base[..slash])
                }
                _ => panic!("BERTH_TEST_POSTGRES_URL must end in /DATABASE"),
            };
            urls.push(url);
        }
        Err(_) if std::env::var_os("CI").is_some() => {
            panic!("BERTH_TEST_POSTGRES_URL is not set; scripts/test starts PostgreSQL and sets it")
        }
        Err(_) => eprintln!("PostgreSQL scenarios skipped: BERTH_TEST_POSTGRES_URL is not set"),
    }
    urls
}

#[tokio::test]
async fn users_and_tokens() {
    for store in databases("users").await {
        let mut connection = store.acquire().await.expect("connection");
        let quotas = Quotas {
            max_services: Some(5),
            ..Quotas::default()
        };
        let admin = users::create_user(&mut connection, "admin", Role::Admin, &quotas)
            .await
            .expect("create");
        assert_eq!(
            (admin.role, admin.quotas.max_services),
            (Role::Admin, Some(5))
        );
        let taken =
            users::create_user(&mut connection, "admin", Role::User, &Quotas::default()).await;
        assert!(matches!(taken, Err(StoreError::Conflict(_))), "{taken:?}");

        let issued = users::issue_token(&mut connection, admin.id, "cli", None)
            .await
            .expect("token");
        assert!(issued.token.starts_with("berth_") && issued.token.len() > 40);
        let found = users::user_for_token(&mut connection, &issued.token)
            .await
            .expect("lookup");
        assert_eq!(
            found.map(|bearer| (bearer.user.id, bearer.token_id)),
            Some((admin.id, issued.id))
        );
        // Its use is recorded; an expired token and a revoked one are refused.
        let listed = users::list_tokens(&mut connection, admin.id)
            .await
            .expect("tokens");
        assert_eq!(listed.len(), 1);
        assert!(listed[0].last_used_at.is_some(), "{listed:?}");
        let past = berth_store::now_ms() - 1;
        let expired = users::issue_token(&mut connection, admin.id, "old", Some(past))
            .await
            .expect("token");
        assert_eq!(
            users::user_for_token(&mut connection, &expired.token)
                .await
                .expect("lookup"),
            None
        );
        let soon = users::issue_token(&mut connection, admin.id, "ci", Some(past + 3_600_000))
            .await
            .expect("token");
        assert!(
            users::user_for_token(&mut connection, &soon.token)
                .await
                .expect("lookup")
                .is_some()
        );
        assert!(matches!(
            users::revoke_token(&mut connection, admin.id + 1, soon.id).await,
            Err(StoreError::NotFound(_))
        ));
        users::revoke_token(&mut connection, admin.id, soon.id)
            .await
            .expect("revoke");
        assert_eq!(
            users::user_for_token(&mut connection, &soon.token)
                .await
                .expect("lookup"),
            None
        );
        let wrong = users::user_for_token(&mut connection, "berth_0000")
            .await
            .expect("lookup");
        assert_eq!(wrong, None);

        let alice = users::create_user(&mut connection, "alice", Role::User, &Quotas::default())
            .await
            .expect("alice");
        assert_eq!(users::count_users(&mut connection).await.expect("count"), 2);
        let token = users::issue_token(&mut connection, alice.id, "laptop", None)
            .await
            .expect("token");
        users::delete_user(&mut connection, alice.id)
            .await
            .expect("delete");
        assert_eq!(
            users::user_for_token(&mut connection, &token.token)
                .await
                .expect("lookup"),
            None
        );
        assert!(matches!(
            users::get_user(&mut connection, alice.id).await,
            Err(StoreError::NotFound(_))
        ));
        let listed: Vec<String> = users::list_users(&mut connection)
            .await
            .expect("list")
            .into_iter()
            .map(|user| user.name)
            .collect();
        assert_eq!(listed, vec!["admin".to_owned()]);
    }
}

#[tokio::test]
async fn nodes_are_stored_with_sealed_secrets_and_guarded_deletes() {
    for store in databases("nodes").await {
        let mut connection = store.acquire().await.expect("connection");
        let mut record = NodeRecord::new("gpu-01", "docker");
        record.docker_address = "tcp://10.0.0.5:2376".into();
        record.client_key_sealed = Some("v1:abcdef".into());
        record.gpu_count = 4;
        record.gpu_memory_gb = 24;
        let stored = nodes::insert(&mut connection, &record)
            .await
            .expect("insert");
        assert!(stored.id > 0);
        assert_eq!(
            (
                stored.ssh_port,
                stored.use_tls,
                stored.enabled,
                stored.listed
            ),
            (22, true, true, true)
        );
        assert_eq!(stored.client_key_sealed.as_deref(), Some("v1:abcdef"));
        assert_eq!(stored.docker_status, "unknown");

        let duplicate = nodes::insert(&mut connection, &record).await;
        assert!(
            matches!(duplicate, Err(StoreError::Conflict(_))),
            "{duplicate:?}"
        );

        let mut changed = stored.clone();
        changed.enabled = false;
        changed.priority = 1;
        let updated = nodes::update(&mut connection, &changed)
            .await
            .expect("update");
        assert_eq!((updated.enabled, updated.priority), (false, 1));

        nodes::set_status(
            &mut connection,
            stored.id,
            "connected",
            "Docker 20.10",
            Some(&json!({"cpus": 8})),
        )
        .await
        .expect("status");
        let checked = nodes::get(&mut connection, stored.id).await.expect("get");
        assert_eq!(
            (
                checked.docker_status.as_str(),
                checked.observed["cpus"].as_i64()
            ),
            ("connected", Some(8))
        );
        assert!(checked.last_checked_at.is_some());
        assert_eq!(
            nodes::find_by_name(&mut connection, "gpu-01")
                .await
                .expect("find")
                .map(|node| node.id),
            Some(stored.id)
        );

        sqlx::query("INSERT INTO containers (node_id, container_id, name, status, created_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(stored.id)
            .bind("abc")
            .bind("svc-1")
            .bind("running")
            .bind(0_i64)
            .execute(&mut *connection)
            .await
            .expect("container row");
        let refused = nodes::delete(&mut connection, stored.id).await;
        assert!(
            matches!(&refused, Err(StoreError::Conflict(message)) if message.contains("1 service containers")),
            "{refused:?}"
        );
        sqlx::query("DELETE FROM containers")
            .execute(&mut *connection)
            .await
            .expect("clear");
        nodes::delete(&mut connection, stored.id)
            .await
            .expect("delete");
        assert!(matches!(
            nodes::get(&mut connection, stored.id).await,
            Err(StoreError::NotFound(_))
        ));
    }
}

#[tokio::test]
async fn a_change_and_its_operation_commit_together() {
    for store in databases("operations").await {
        let operation = |action: &str, node_id: i64| NewOperation {
            user_id: Some(7),
            action: action.to_owned(),
            target_kind: "node".to_owned(),
            target_id: node_id.to_string(),
            node_id: Some(node_id),
            service_id: None,
            outcome: "ok".to_owned(),
            detail: json!({"why": "test"}),
        };
        let mut transaction = store.begin().await.expect("begin");
        let node = nodes::insert(&mut transaction, &NodeRecord::new("rolled-back", "agent"))
            .await
            .expect("insert");
        operations::record(&mut transaction, &operation("node.create", node.id))
            .await
            .expect("record");
        transaction.rollback().await.expect("rollback");
        let mut connection = store.acquire().await.expect("connection");
        assert!(
            nodes::find_by_name(&mut connection, "rolled-back")
                .await
                .expect("find")
                .is_none()
        );
        let (none, total) = operations::list(
            &mut connection,
            &OperationFilter {
                page: 1,
                size: 10,
                ..OperationFilter::default()
            },
        )
        .await
        .expect("list");
        assert_eq!((none.len(), total), (0, 0));
        drop(connection);

        let mut transaction = store.begin().await.expect("begin");
        let node = nodes::insert(&mut transaction, &NodeRecord::new("kept", "agent"))
            .await
            .expect("insert");
        for action in ["node.create", "node.update", "node.test"] {
            operations::record(&mut transaction, &operation(action, node.id))
                .await
                .expect("record");
        }
        transaction.commit().await.expect("commit");

        let mut connection = store.acquire().await.expect("connection");
        let all = OperationFilter {
            page: 1,
            size: 2,
            ..OperationFilter::default()
        };
        let (page, total) = operations::list(&mut connection, &all).await.expect("list");
        assert_eq!(total, 3);
        assert_eq!(
            page.iter().map(|op| op.action.as_str()).collect::<Vec<_>>(),
            vec!["node.test", "node.update"]
        );
        assert_eq!(page[0].detail["why"], "test");
        let (second, _) = operations::list(
            &mut connection,
            &OperationFilter {
                page: 2,
                ..all.clone()
            },
        )
        .await
        .expect("page 2");
        assert_eq!(second.len(), 1);
        let filtered = OperationFilter {
            action: Some("node.update".into()),
            node_id: Some(node.id),
            user_id: Some(7),
            page: 1,
            size: 50,
            service_id: None,
            visible_to: None,
        };
        let (only, total) = operations::list(&mut connection, &filtered)
            .await
            .expect("filtered");
        assert_eq!((only.len(), total), (1, 1));
        let other_node = OperationFilter {
            node_id: Some(node.id + 1000),
            ..filtered
        };
        assert_eq!(
            operations::list(&mut connection, &other_node)
                .await
                .expect("none")
                .1,
            0
        );
    }
}

#[tokio::test]
async fn migrations_apply_once_and_bad_urls_are_refused() {
    let dir = std::env::temp_dir().join(format!("berth-store-{}-reopen", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let url = format!("sqlite://{}", dir.join("berth.db").display());
    let first = Store::connect(&url).await.expect("first");
    let mut connection = first.acquire().await.expect("connection");
    users::create_user(&mut connection, "kept", Role::User, &Quotas::default())
        .await
        .expect("user");
    {
        use std::os::unix::fs::PermissionsExt;
        for file in ["berth.db", "berth.db-wal"] {
            let mode = std::fs::metadata(dir.join(file))
                .expect("the database's files")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{file} is its owner's only");
        }
    }
    drop(connection);
    first.close().await;
    let second = Store::connect(&url).await.expect("reopened");
    let mut connection = second.acquire().await.expect("connection");
    assert_eq!(
        users::count_users(&mut connection).await.expect("count"),
        1,
        "data survives a restart"
    );
    let bad = Store::connect("mysql://root:pw@db/berth").await;
    assert!(
        matches!(&bad, Err(StoreError::Invalid(message)) if !message.contains("pw")),
        "{bad:?}"
    );
}

#[tokio::test]
async fn allocations_are_per_replica_and_fenced_by_generation() {
    use berth_store::allocations::{self, Allocation, ReplicaRef};
    for store in databases("allocations").await {
        let mut connection = store.acquire().await.expect("connection");
        let first_id = allocations::hub_id(&mut connection).await.expect("hub id");
        assert_eq!(first_id.len(), 16);
        assert_eq!(
            allocations::hub_id(&mut connection).await.expect("hub id"),
            first_id,
            "made once"
        );
        let gpu = nodes::insert(&mut connection, &NodeRecord::new("gpu-1", "agent"))
            .await
            .expect("node")
            .id;
        let other = nodes::insert(&mut connection, &NodeRecord::new("gpu-2", "agent"))
            .await
            .expect("node")
            .id;
        let replica = |replica: i64, node: i64, generation: i64| Allocation {
            id: 0,
            service_id: 42,
            replica,
            node_id: node,
            generation,
            container_id: String::new(),
            name: format!("svc-r{replica}-g{generation}"),
            status: "creating".to_owned(),
            cpu_millis: 500,
            memory_bytes: 1 << 30,
            disk_bytes: 0,
            gpu_indices: vec![1, 3],
            gpu_memory_bytes: 0,
            created_at: 0,
        };
        let recorded = allocations::record(&mut connection, &replica(0, gpu, 1))
            .await
            .expect("record");
        assert_eq!(recorded.gpu_indices, vec![1, 3]);
        allocations::record(&mut connection, &replica(1, gpu, 1))
            .await
            .expect("record");
        let at = |generation| ReplicaRef {
            service_id: 42,
            replica: 0,
            generation,
        };
        assert!(
            !allocations::set_container(&mut connection, at(2), "abc", "running")
                .await
                .expect("update"),
            "a different generation is fenced off"
        );
        assert!(
            allocations::set_container(&mut connection, at(1), "abc", "running")
                .await
                .expect("update")
        );
        // Moving replica 0 replaces its row; replica 1 stays.
        allocations::record(&mut connection, &replica(0, other, 2))
            .await
            .expect("move");
        assert!(
            !allocations::set_container(&mut connection, at(1), "stale", "running")
                .await
                .expect("update"),
            "the old generation cannot come back"
        );
        // Replica 1 has no container yet: the first adopter wins, a later (stale) one does not.
        let second = ReplicaRef {
            replica: 1,
            ..at(1)
        };
        assert!(
            allocations::adopt_container(&mut connection, second, "launched", "running")
                .await
                .expect("adopt")
        );
        assert!(
            !allocations::adopt_container(&mut connection, second, "seen-earlier", "running")
                .await
                .expect("adopt"),
            "a recorded container is not replaced"
        );
        assert_eq!(
            allocations::for_replica(&mut connection, 42, 1)
                .await
                .expect("read")
                .map(|allocation| allocation.container_id),
            Some("launched".to_owned())
        );
        let both = allocations::for_service(&mut connection, 42)
            .await
            .expect("list");
        assert_eq!(
            both.iter()
                .map(|allocation| (
                    allocation.replica,
                    allocation.node_id,
                    allocation.generation
                ))
                .collect::<Vec<_>>(),
            vec![(0, other, 2), (1, gpu, 1)]
        );
        assert_eq!(
            allocations::on_node(&mut connection, gpu)
                .await
                .expect("node")
                .len(),
            1
        );
        let counts = allocations::count_per_node(&mut connection)
            .await
            .expect("counts");
        assert_eq!((counts.get(&gpu), counts.get(&other)), (Some(&1), Some(&1)));
        allocations::remove(&mut connection, 42, 1)
            .await
            .expect("remove");
        allocations::remove(&mut connection, 42, 1)
            .await
            .expect("again: fine");
        assert_eq!(
            allocations::for_service(&mut connection, 42)
                .await
                .expect("list")
                .len(),
            1
        );
        let duplicate = allocations::record(&mut connection, &replica(0, gpu, 3)).await;
        assert!(duplicate.is_ok(), "re-recording a replica replaces it");
        assert_eq!(
            allocations::list(&mut connection).await.expect("all").len(),
            1
        );
    }
}

#[tokio::test]
async fn console_sessions_expire_end_and_follow_their_user() {
    use berth_store::sessions;
    for store in databases("sessions").await {
        let mut connection = store.acquire().await.expect("connection");
        let user = users::create_user(&mut connection, "ada", Role::User, &Quotas::default())
            .await
            .expect("user");
        let token = users::issue_token(&mut connection, user.id, "console", None)
            .await
            .expect("token");
        let started = sessions::start(&mut connection, user.id, token.id, 60_000)
            .await
            .expect("session");
        assert_eq!(started.id.len(), 64);
        assert_ne!(started.id, started.csrf_token);
        let found = sessions::find(&mut connection, &started.id)
            .await
            .expect("find")
            .expect("live session");
        assert_eq!(found.user.name, "ada");
        assert_eq!(found.csrf_token, started.csrf_token);
        assert!(
            sessions::find(&mut connection, &started.csrf_token)
                .await
                .expect("find")
                .is_none(),
            "only the session id opens it"
        );
        let expired = sessions::start(&mut connection, user.id, token.id, -1)
            .await
            .expect("session");
        assert!(
            sessions::find(&mut connection, &expired.id)
                .await
                .expect("find")
                .is_none(),
            "an expired session is refused"
        );
        sessions::end(&mut connection, &started.id)
            .await
            .expect("end");
        sessions::end(&mut connection, &started.id)
            .await
            .expect("ending twice is fine");
        assert!(
            sessions::find(&mut connection, &started.id)
                .await
                .expect("find")
                .is_none()
        );
        // A session ends with the token it was opened with.
        let short = users::issue_token(&mut connection, user.id, "short", None)
            .await
            .expect("token");
        let with_short = sessions::start(&mut connection, user.id, short.id, 60_000)
            .await
            .expect("session");
        users::revoke_token(&mut connection, user.id, short.id)
            .await
            .expect("revoke");
        assert!(
            sessions::find(&mut connection, &with_short.id)
                .await
                .expect("find")
                .is_none(),
            "revoking the token ended its session"
        );
        let again = sessions::start(&mut connection, user.id, token.id, 60_000)
            .await
            .expect("session");
        users::delete_user(&mut connection, user.id)
            .await
            .expect("delete user");
        assert!(
            sessions::find(&mut connection, &again.id)
                .await
                .expect("find")
                .is_none(),
            "a deleted user's sessions end"
        );
    }
}

#[tokio::test]
async fn stats_history_keeps_raw_samples_then_buckets_then_nothing() {
    use berth_store::services;
    use berth_store::stats_history::{self, Retention, StatsSample};
    for store in databases("stats").await {
        let mut connection = store.acquire().await.expect("connection");
        let owner = users::create_user(&mut connection, "ada", Role::User, &Quotas::default())
            .await
            .expect("user");
        let service = insert_service(&mut connection, owner.id, "svc").await;
        let retention = Retention {
            raw_ms: 60_000,
            bucket_ms: 10_000,
            total_ms: 300_000,
        };
        let sample = |at_ms: i64, cpu: f64, gpu: Option<i64>| StatsSample {
            at_ms,
            resolution_ms: 0,
            cpu_percent: cpu,
            memory_bytes: (at_ms / 1000) * 1_000_000,
            memory_limit_bytes: 1 << 30,
            pids: 3,
            gpu_memory_bytes: gpu.map(|_| 2_000_000),
            gpu_utilization_percent: gpu,
            prompt_tokens: 7,
            completion_tokens: at_ms % 10_000 / 1_000,
        };
        let now = 1_000_000;
        // Two samples in each 10 s bucket from 400 s ago until now, every 5 s.
        for at in (now - 400_000..=now).step_by(5_000) {
            let cpu = if at % 10_000 == 0 { 10.0 } else { 30.0 };
            stats_history::record(
                &mut connection,
                service.id,
                &sample(at, cpu, (at > now - 100_000).then_some(50)),
            )
            .await
            .expect("record");
        }
        stats_history::compact(&mut connection, now, retention)
            .await
            .expect("compact");
        let points = stats_history::since(&mut connection, service.id, 0)
            .await
            .expect("history");
        assert!(
            points.iter().all(|point| point.at_ms >= now - 300_000),
            "nothing past the retention"
        );
        let (buckets, raw): (Vec<_>, Vec<_>) =
            points.iter().partition(|point| point.resolution_ms > 0);
        assert!(raw.iter().all(|point| point.at_ms >= now - 60_000));
        assert_eq!(raw.len(), 13, "the last minute stays raw, every 5 s");
        assert_eq!(buckets.len(), 24, "240 s before it in 10 s buckets");
        for bucket in &buckets {
            assert_eq!(bucket.resolution_ms, 10_000);
            assert!((bucket.cpu_percent - 20.0).abs() < 1e-9, "{bucket:?}");
            assert_eq!(
                bucket.memory_bytes,
                bucket.at_ms / 1000 * 1_000_000 + 2_500_000
            );
            assert_eq!(
                (bucket.prompt_tokens, bucket.completion_tokens),
                (14, 5),
                "tokens are summed over a bucket"
            );
        }
        let recent_bucket = buckets.last().expect("bucket");
        assert_eq!(recent_bucket.gpu_utilization_percent, Some(50));
        assert_eq!(buckets[0].gpu_utilization_percent, None);
        assert!(
            points.windows(2).all(|pair| pair[0].at_ms <= pair[1].at_ms),
            "oldest first"
        );
        // Compacting again changes nothing.
        stats_history::compact(&mut connection, now, retention)
            .await
            .expect("compact");
        assert_eq!(
            stats_history::since(&mut connection, service.id, 0)
                .await
                .expect("history"),
            points
        );
        services::delete(&mut connection, service.id)
            .await
            .expect("delete");
        assert!(
            stats_history::since(&mut connection, service.id, 0)
                .await
                .expect("history")
                .is_empty()
        );
    }
}

/// A running service of `owner` named `name`.
async fn insert_service(
    connection: &mut berth_store::Conn,
    owner: i64,
    name: &str,
) -> berth_store::services::ServiceRecord {
    use berth_store::services::{self, ServiceRecord};
    services::insert(
        connection,
        &ServiceRecord {
            id: 0,
            owner_id: owner,
            repo: "demo".into(),
            name: name.into(),
            image: "berth-test".into(),
            spec_id: None,
            cpu_millis: 500,
            memory_bytes: 1 << 30,
            gpu_count: 0,
            definition: json!({}),
            is_public: false,
            status: "running".into(),
            node_id: None,
            container_id: None,
            container_name: None,
            version: 1,
            generation: 0,
            pinned: false,
            replicas: 1,
            error: String::new(),
            created_at: 0,
            updated_at: 0,
        },
    )
    .await
    .expect("service")
}

#[tokio::test]
async fn a_user_sees_their_own_operations_and_those_on_their_services() {
    for store in databases("visible").await {
        let mut connection = store.acquire().await.expect("connection");
        let ada = users::create_user(&mut connection, "ada", Role::User, &Quotas::default())
            .await
            .expect("user");
        let bob = users::create_user(&mut connection, "bob", Role::User, &Quotas::default())
            .await
            .expect("user");
        let adas = insert_service(&mut connection, ada.id, "model").await;
        let bobs = insert_service(&mut connection, bob.id, "other").await;
        let on = |user: Option<i64>, action: &str, service: i64| NewOperation {
            user_id: user,
            action: action.to_owned(),
            target_kind: "service".to_owned(),
            target_id: service.to_string(),
            node_id: None,
            service_id: Some(service),
            outcome: "ok".to_owned(),
            detail: json!({}),
        };
        for operation in [
            on(Some(ada.id), "service.start", adas.id),
            on(None, "service.failover", adas.id),
            on(Some(bob.id), "service.start", bobs.id),
            on(None, "service.failover", bobs.id),
        ] {
            operations::record(&mut connection, &operation)
                .await
                .expect("record");
        }
        let (seen, total) = operations::list(
            &mut connection,
            &OperationFilter {
                visible_to: Some(ada.id),
                page: 1,
                size: 50,
                ..OperationFilter::default()
            },
        )
        .await
        .expect("list");
        assert_eq!(total, 2);
        assert!(
            seen.iter()
                .all(|operation| operation.service_id == Some(adas.id))
        );
        let (failovers, _) = operations::list(
            &mut connection,
            &OperationFilter {
                visible_to: Some(ada.id),
                action: Some("service.failover".into()),
                page: 1,
                size: 50,
                ..OperationFilter::default()
            },
        )
        .await
        .expect("list");
        assert_eq!(failovers.len(), 1, "the hub's failover of her service");
    }
}

#[tokio::test]
async fn a_locked_user_makes_thirty_parallel_quota_checks_one_at_a_time() {
    for store in databases("quota_lock").await {
        let owner = {
            let mut connection = store.acquire().await.expect("connection");
            users::create_user(&mut connection, "racer", Role::User, &Quotas::default())
                .await
                .expect("user")
        };
        let attempts: Vec<_> = (0..30)
            .map(|n| {
                let store = store.clone();
                tokio::spawn(async move {
                    let mut transaction = store.begin().await.expect("begin");
                    users::lock_for_change(&mut transaction, owner.id)
                        .await
                        .expect("lock");
                    let usage = berth_store::services::usage(&mut transaction, owner.id)
                        .await
                        .expect("usage");
                    if usage.services >= 5 {
                        return false;
                    }
                    // Give the others every chance to read the same count.
                    tokio::task::yield_now().await;
                    insert_service(&mut transaction, owner.id, &format!("s{n}")).await;
                    transaction.commit().await.expect("commit");
                    true
                })
            })
            .collect();
        let mut inserted = 0;
        for attempt in attempts {
            inserted += usize::from(attempt.await.expect("task"));
        }
        let mut connection = store.acquire().await.expect("connection");
        let usage = berth_store::services::usage(&mut connection, owner.id)
            .await
            .expect("usage");
        assert_eq!((inserted, usage.services), (5, 5), "{:?}", store.backend());
    }
}

#[tokio::test]
async fn creates_written_together_keep_their_order_names_and_keys() {
    use berth_store::allocations::{self, Allocation};
    use berth_store::services::{self, Deployment};
    for store in databases("batch").await {
        let mut connection = store.acquire().await.expect("connection");
        let owner = users::create_user(&mut connection, "ann", Role::User, &Quotas::default())
            .await
            .expect("user")
            .id;
        let other = users::create_user(&mut connection, "bob", Role::User, &Quotas::default())
            .await
            .expect("user")
            .id;
        let existing = insert_service(&mut connection, owner, "taken").await;
        let template = services::get(&mut connection, existing.id)
            .await
            .expect("get");
        // 250 services: more than one statement's worth of rows.
        let records: Vec<_> = (0..250)
            .map(|at| services::ServiceRecord {
                id: 0,
                name: format!("svc-{at}"),
                replicas: 1 + at % 3,
                cpu_millis: 100 + at,
                ..template.clone()
            })
            .collect();
        let ids = services::insert_all(&mut connection, &records)
            .await
            .expect("insert all");
        assert_eq!(ids.len(), 250);
        for (record, id) in records.iter().zip(&ids) {
            let stored = services::get(&mut connection, *id).await.expect("get");
            assert_eq!(
                (stored.name.as_str(), stored.cpu_millis, stored.replicas),
                (record.name.as_str(), record.cpu_millis, record.replicas),
                "ids come back in the order of the records"
            );
        }

        let taken = services::names_taken(
            &mut connection,
            &[
                (owner, "taken".to_owned()),
                (other, "taken".to_owned()),
                (owner, "svc-7".to_owned()),
                (owner, "free".to_owned()),
            ],
        )
        .await
        .expect("names");
        assert_eq!(
            taken,
            [(owner, "taken".to_owned()), (owner, "svc-7".to_owned())]
                .into_iter()
                .collect(),
            "a name is taken per owner"
        );
        let twice = services::insert_all(
            &mut connection,
            &[services::ServiceRecord {
                name: "svc-3".into(),
                ..template.clone()
            }],
        )
        .await;
        assert!(
            matches!(&twice, Err(StoreError::Conflict(message)) if message.contains("svc-3")),
            "{twice:?}"
        );

        let named: Vec<(i64, String)> = ids.iter().map(|id| (*id, format!("c-{id}"))).collect();
        services::set_container_names(&mut connection, &named)
            .await
            .expect("names");
        let last = services::get(&mut connection, ids[249]).await.expect("get");
        assert_eq!(last.container_name, Some(format!("c-{}", ids[249])));
        assert_eq!(
            services::get(&mut connection, existing.id)
                .await
                .expect("get")
                .container_name,
            None,
            "only the named services change"
        );

        let deployment = Deployment {
            version: 1,
            definition: json!({"image": "x"}),
            node_id: None,
            user_id: Some(owner),
            note: "created".into(),
            created_at: 0,
        };
        let deployments: Vec<(i64, &Deployment)> =
            ids.iter().map(|id| (*id, &deployment)).collect();
        services::add_deployments(&mut connection, &deployments)
            .await
            .expect("deployments");
        assert_eq!(
            services::deployments(&mut connection, ids[120])
                .await
                .expect("history")
                .len(),
            1
        );

        let node = nodes::insert(&mut connection, &NodeRecord::new("n-1", "agent"))
            .await
            .expect("node")
            .id;
        let placed: Vec<Allocation> = ids
            .iter()
            .map(|id| Allocation {
                id: 0,
                service_id: *id,
                replica: 0,
                node_id: node,
                generation: 1,
                container_id: String::new(),
                name: format!("c-{id}"),
                status: "creating".to_owned(),
                cpu_millis: 100,
                memory_bytes: 1 << 20,
                disk_bytes: 0,
                gpu_indices: vec![2],
                gpu_memory_bytes: 0,
                created_at: 0,
            })
            .collect();
        allocations::insert_all_new(&mut connection, &placed)
            .await
            .expect("allocations");
        assert_eq!(
            allocations::on_node(&mut connection, node)
                .await
                .expect("on node")
                .len(),
            250
        );

        let opened: Vec<(NewOperation, Option<&str>)> = ids
            .iter()
            .enumerate()
            .map(|(at, id)| {
                (
                    NewOperation {
                        user_id: Some(owner),
                        action: "service.create".into(),
                        target_kind: "service".into(),
                        target_id: id.to_string(),
                        node_id: Some(node),
                        service_id: Some(*id),
                        outcome: "running".into(),
                        detail: json!({"at": at}),
                    },
                    (at % 2 == 0).then_some("key-even"),
                )
            })
            .collect();
        let clash = operations::open_all(&mut connection, &opened).await;
        assert!(
            matches!(
                clash,
                Err(StoreError::Conflict(_) | StoreError::Database(_))
            ),
            "one key used twice by one user is refused: {clash:?}"
        );
        let keyed: Vec<(NewOperation, Option<&str>)> = opened
            .into_iter()
            .map(|(operation, key)| (operation, key.filter(|_| false)))
            .collect();
        let operation_ids = operations::open_all(&mut connection, &keyed)
            .await
            .expect("operations");
        for (at, id) in operation_ids.iter().enumerate().step_by(37) {
            let operation = operations::get(&mut connection, *id).await.expect("get");
            assert_eq!(operation.service_id, Some(ids[at]));
            assert_eq!(operation.detail["at"], json!(at));
            assert_eq!(operation.state, operations::State::Running);
        }
        let same_service =
            operations::open_all(&mut connection, &[keyed[0].clone(), keyed[0].clone()]).await;
        assert!(
            matches!(same_service, Err(StoreError::Invalid(_))),
            "{same_service:?}"
        );
    }
}

#[tokio::test]
async fn a_join_token_works_once_and_not_after_it_expires() {
    use berth_store::join_tokens;
    for store in databases("join_tokens").await {
        let mut connection = store.acquire().await.expect("connection");
        let admin = users::create_user(&mut connection, "root", Role::Admin, &Quotas::default())
            .await
            .expect("user");
        let now = berth_store::now_ms();
        let issued = join_tokens::issue(&mut connection, admin.id, now + 60_000, Some("gpu-07"))
            .await
            .expect("issued");
        assert!(issued.token.starts_with(join_tokens::JOIN_TOKEN_PREFIX));
        let later = join_tokens::issue(&mut connection, admin.id, now + 1_000, None)
            .await
            .expect("issued");
        assert_eq!(
            join_tokens::redeem(&mut connection, &later.token, now + 2_000)
                .await
                .expect("read"),
            None,
            "expired"
        );
        assert_eq!(
            join_tokens::redeem(&mut connection, "berth_join_guess", now)
                .await
                .expect("read"),
            None
        );
        let redeemed = join_tokens::redeem(&mut connection, &issued.token, now)
            .await
            .expect("read")
            .expect("redeemed");
        assert_eq!(
            (redeemed.created_by, redeemed.node_name.as_deref()),
            (Some(admin.id), Some("gpu-07"))
        );
        assert_eq!(
            join_tokens::redeem(&mut connection, &issued.token, now)
                .await
                .expect("read"),
            None,
            "used"
        );
    }
}

/// Two hubs on one database: the first to ask leads, the other takes over only once the lease
/// expired, with the next term; a write transaction of a hub that does not hold the lease in
/// its term is refused, and a takeover waits for the holder's open transaction to end.
#[tokio::test]
async fn the_leader_lease_goes_to_one_hub_and_fences_the_others_writes() {
    use berth_store::leases;
    for url in database_urls("leases").await {
        let first = Store::connect(&url).await.expect("first hub");
        let second = Store::connect(&url).await.expect("second hub");
        let backend = first.backend();
        for store in [&first, &second] {
            store.fence().arm();
        }
        let lead = |store: &Store, ttl_ms: i64| {
            let store = store.clone();
            async move {
                let mut connection = store.acquire().await.expect("connection");
                let holder = store.fence().holder().to_owned();
                leases::lead(&mut connection, backend, &holder, "http://hub", ttl_ms)
                    .await
                    .expect("asked")
            }
        };
        let held = lead(&first, 60_000).await.expect("the first to ask leads");
        assert_eq!(held.term, 1);
        assert_eq!(
            lead(&second, 60_000).await,
            None,
            "{backend:?}: a live lease is kept"
        );
        assert_eq!(
            lead(&first, 60_000).await.map(|held| held.term),
            Some(1),
            "renewed"
        );
        first.fence().hold(1);
        first
            .begin()
            .await
            .expect("the leader writes")
            .commit()
            .await
            .expect("commit");
        assert!(
            matches!(second.begin().await, Err(StoreError::Fenced(_))),
            "{backend:?}: a follower's write is refused"
        );

        // The first hub's lease runs out (it was paused): the second takes over, term 2, and
        // the first's writes in term 1 are refused from then on.
        assert!(lead(&first, 200).await.is_some());
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let taken = lead(&second, 60_000)
            .await
            .expect("an expired lease is taken over");
        assert_eq!(taken.term, 2);
        second.fence().hold(2);
        assert!(
            matches!(first.begin().await, Err(StoreError::Fenced(_))),
            "{backend:?}: the old leader cannot write after its term"
        );
        let mut connection = first.acquire().await.expect("connection");
        let leader = leases::leader(&mut connection, backend)
            .await
            .expect("read")
            .expect("a leader");
        assert_eq!(
            (leader.holder.as_str(), leader.term, leader.live),
            (second.fence().holder(), 2, true)
        );
        drop(connection);

        // A takeover waits for the holder's open transaction: no write of term 2 can land
        // after term 3 began.
        assert!(lead(&second, 500).await.is_some());
        let open = second.begin().await.expect("the leader writes");
        tokio::time::sleep(std::time::Duration::from_millis(600)).await;
        let takeover = tokio::spawn(lead(&first, 60_000));
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(!takeover.is_finished(), "{backend:?}: the takeover waits");
        open.commit().await.expect("the open transaction commits");
        let taken = takeover
            .await
            .expect("task")
            .expect("then the lease is taken");
        assert_eq!(taken.term, 3);

        let mut connection = first.acquire().await.expect("connection");
        leases::resign(&mut connection, first.fence().holder())
            .await
            .expect("resign");
        let leader = leases::leader(&mut connection, backend)
            .await
            .expect("read")
            .expect("row");
        assert!(!leader.live, "a resigned lease is free at once");
    }
}
