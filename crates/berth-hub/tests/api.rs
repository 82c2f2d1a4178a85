//! The hub's API in-process on SQLite: roles, users and tokens, nodes (local engine, unreachable,
//! unconfigured, TLS material, a real `berth agent`), secrets never returned, the delete guard,
//! bad input, and the operation log.

mod support;

use std::collections::HashMap;

use reqwest::Method;
use serde_json::{Value, json};
use support::{node, start};

#[tokio::test]
async fn roles_guard_every_route() {
    let hub = start("roles").await;
    let (status, health, _) = hub.call(None, Method::GET, "/health", None).await;
    assert_eq!((status, health["database"].as_str()), (200, Some("ok")));
    for path in [
        "/api/nodes",
        "/api/users/me",
        "/metrics",
        "/api/openapi.json",
        "/api/admin/operations",
    ] {
        let (status, body, _) = hub.call(None, Method::GET, path, None).await;
        assert_eq!(
            (status, body["status"].as_u64()),
            (401, Some(401)),
            "{path}"
        );
    }
    let (status, _, _) = hub
        .call(
            Some("berth_not-a-token"),
            Method::GET,
            "/api/users/me",
            None,
        )
        .await;
    assert_eq!(status, 401);

    let (alice_id, alice) = hub.new_user("alice").await;
    let (status, me, _) = hub
        .call(Some(&alice), Method::GET, "/api/users/me", None)
        .await;
    assert_eq!(
        (status, me["name"].as_str(), me["role"].as_str()),
        (200, Some("alice"), Some("user"))
    );
    for (method, path) in [
        (Method::GET, "/api/nodes"),
        (Method::GET, "/api/users"),
        (Method::POST, "/api/users"),
        (Method::GET, "/api/admin/controllers"),
        (Method::GET, "/api/admin/operations"),
        (Method::GET, "/api/users/1"),
        (Method::POST, "/api/users/1/tokens"),
    ] {
        let (status, body, _) = hub
            .call(
                Some(&alice),
                method.clone(),
                path,
                Some(json!({"name": "x"})),
            )
            .await;
        assert_eq!(status, 403, "{method} {path}: {body}");
    }
    let (status, issued, _) = hub
        .call(
            Some(&alice),
            Method::POST,
            &format!("/api/users/{alice_id}/tokens"),
            None,
        )
        .await;
    assert_eq!(status, 201);
    let second = issued["token"].as_str().expect("token");
    let (status, me, _) = hub
        .call(Some(second), Method::GET, "/api/users/me", None)
        .await;
    assert_eq!((status, me["id"].as_i64()), (200, Some(alice_id)));
    let (status, metrics, text) = hub
        .call(Some(&hub.admin), Method::GET, "/metrics", None)
        .await;
    assert_eq!((status, metrics), (200, Value::Null));
    assert!(
        text.contains(
            "berth_hub_http_requests_total{method=\"GET\",route=\"/api/users/me\",status=\"200\"}"
        ),
        "{text}"
    );
}

#[tokio::test]
async fn users_are_validated_and_admins_cannot_remove_themselves() {
    let hub = start("users").await;
    let (status, body) = hub
        .admin(
            Method::POST,
            "/api/users",
            Some(json!({"name": "bad name"})),
        )
        .await;
    assert_eq!((status, body["field"].as_str()), (422, Some("name")));
    let (status, body) = hub
        .admin(
            Method::POST,
            "/api/users",
            Some(json!({"name": "bob", "role": "root"})),
        )
        .await;
    assert_eq!((status, body["field"].as_str()), (422, Some("role")));
    let (status, body) = hub
        .admin(
            Method::POST,
            "/api/users",
            Some(json!({"name": "bob", "max_services": -1})),
        )
        .await;
    assert_eq!(
        (status, body["field"].as_str()),
        (422, Some("max_services"))
    );
    let (status, created) = hub
        .admin(Method::POST, "/api/users", Some(json!({"name": "bob", "max_services": 3, "max_memory": "16g", "max_cpu_cores": 4.5})))
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["user"]["quotas"]["max_memory_bytes"], 16u64 << 30);
    assert_eq!(created["user"]["quotas"]["max_cpu_millis"], 4500);
    let (status, _) = hub
        .admin(Method::POST, "/api/users", Some(json!({"name": "bob"})))
        .await;
    assert_eq!(status, 409);
    let (_, me) = hub.admin(Method::GET, "/api/users/me", None).await;
    let (status, _) = hub
        .admin(Method::DELETE, &format!("/api/users/{}", me["id"]), None)
        .await;
    assert_eq!(status, 409);
    let bob = created["user"]["id"].as_i64().expect("id");
    let (status, _) = hub
        .admin(Method::DELETE, &format!("/api/users/{bob}"), None)
        .await;
    assert_eq!(status, 204);
    let (status, _, _) = hub
        .call(
            Some(created["token"].as_str().expect("token")),
            Method::GET,
            "/api/users/me",
            None,
        )
        .await;
    assert_eq!(status, 401, "a deleted user's token no longer works");
}

#[tokio::test]
async fn nodes_are_tested_and_their_secrets_never_come_back() {
    let hub = start("nodes").await;
    let local_host =
        std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".to_owned());
    let (status, local) = hub
        .admin(
            Method::POST,
            "/api/nodes",
            Some(node(
                "local-engine",
                json!({"docker_address": local_host, "use_tls": false, "gpu_count": 2}),
            )),
        )
        .await;
    assert_eq!(status, 201, "{local}");
    assert_eq!(local["docker_status"], "connected", "{local}");
    assert!(local["observed"]["cpu_cores"].as_i64().expect("cores") >= 1);
    assert!(local["last_checked_at"].as_i64().is_some());

    let (_, refused) = hub
        .admin(
            Method::POST,
            "/api/nodes",
            Some(node(
                "nobody-home",
                json!({"docker_address": "tcp://127.0.0.1:1", "use_tls": false}),
            )),
        )
        .await;
    assert_eq!(refused["docker_status"], "failed", "{refused}");
    let (_, unconfigured) = hub
        .admin(
            Method::POST,
            "/api/nodes",
            Some(node("no-address", json!({}))),
        )
        .await;
    assert_eq!(unconfigured["docker_status"], "unknown", "{unconfigured}");

    let ca = "-----BEGIN CERTIFICATE-----\nTUlJQ0FURVNU\n-----END CERTIFICATE-----\n";
    let key = "-----BEGIN PRIVATE KEY-----\nU0VDUkVUS0VZ\n-----END PRIVATE KEY-----\n";
    let with_secrets = node(
        "tls-node",
        json!({"docker_address": "tcp://127.0.0.1:1", "ca_cert": ca, "client_cert": ca,
        "client_key": key, "ssh_password": "hunter2-password", "ssh_user": "root"}),
    );
    let (status, tls, raw) = hub
        .call(
            Some(&hub.admin),
            Method::POST,
            "/api/nodes",
            Some(with_secrets),
        )
        .await;
    assert_eq!(status, 201, "{tls}");
    assert_eq!(
        (
            tls["ca_cert_set"].as_bool(),
            tls["client_key_set"].as_bool(),
            tls["ssh_password_set"].as_bool()
        ),
        (Some(true), Some(true), Some(true))
    );
    assert_eq!(tls["agent_api_key_set"], false);
    assert_eq!(
        tls["docker_status"], "failed",
        "the TLS material is used: {tls}"
    );
    let id = tls["id"].as_i64().expect("id");
    let (_, _, listed) = hub
        .call(Some(&hub.admin), Method::GET, "/api/nodes", None)
        .await;
    let (_, _, one) = hub
        .call(
            Some(&hub.admin),
            Method::GET,
            &format!("/api/nodes/{id}"),
            None,
        )
        .await;
    let (_, _, operations) = hub
        .call(
            Some(&hub.admin),
            Method::GET,
            "/api/admin/operations?size=500",
            None,
        )
        .await;
    for text in [&raw, &listed, &one, &operations] {
        for secret in [
            "hunter2-password",
            "SECRETKEY",
            "U0VDUkVUS0VZ",
            "PRIVATE KEY",
            "v1:",
        ] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
    }
    let mut connection = hub.state.store.acquire().await.expect("connection");
    let stored = berth_store::nodes::get(&mut connection, id)
        .await
        .expect("stored");
    let sealed = stored.ssh_password_sealed.expect("sealed");
    assert!(!sealed.contains("hunter2"));
    assert_eq!(
        hub.state.secrets.open(&sealed).expect("opens"),
        "hunter2-password"
    );
    drop(connection);

    let (status, cleared) = hub
        .admin(
            Method::PUT,
            &format!("/api/nodes/{id}"),
            Some(json!({"ssh_password": "", "priority": 1})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        (
            cleared["ssh_password_set"].as_bool(),
            cleared["priority"].as_i64()
        ),
        (Some(false), Some(1))
    );
    assert_eq!(
        cleared["ca_cert_set"], true,
        "fields not sent keep their value"
    );

    let (status, body) = hub
        .admin(
            Method::POST,
            "/api/nodes",
            Some(node("local-engine", json!({}))),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    let (status, listed) = hub
        .admin(Method::GET, "/api/nodes?status=connected", None)
        .await;
    assert_eq!((status, listed.as_array().map(Vec::len)), (200, Some(1)));
}

#[tokio::test]
async fn bad_node_input_names_the_field_and_changes_nothing() {
    let hub = start("bad-nodes").await;
    let cases = [
        (json!({"name": "n1", "private_ip": "10.0.0.1"}), "public_ip"),
        (node("n1", json!({"driver": "ssh"})), "driver"),
        (
            node("n1", json!({"docker_address": "10.0.0.5:2376"})),
            "docker_address",
        ),
        (node("n1", json!({"agent_url": "ftp://x"})), "agent_url"),
        (node("n1", json!({"server_type": "tpu"})), "server_type"),
        (node("n1", json!({"ssh_port": 70000})), "ssh_port"),
        (node("n1", json!({"gpu_count": -2})), "gpu_count"),
        (node("n1", json!({"ca_cert": "not pem"})), "ca_cert"),
        (node("n1", json!({"colour": "red"})), "colour"),
        (node("bad name", json!({})), "name"),
        (node("n1", json!({"use_tls": "yes"})), "use_tls"),
    ];
    for (body, field) in cases {
        let (status, problem) = hub
            .admin(Method::POST, "/api/nodes", Some(body.clone()))
            .await;
        assert_eq!(
            (status, problem["field"].as_str()),
            (422, Some(field)),
            "{body}: {problem}"
        );
    }
    let (_, listed) = hub.admin(Method::GET, "/api/nodes", None).await;
    assert_eq!(listed, json!([]), "nothing was created");
    let (status, _) = hub.admin(Method::GET, "/api/nodes/999", None).await;
    assert_eq!(status, 404);
    let (status, _) = hub
        .admin(Method::PUT, "/api/nodes/999", Some(json!({"priority": 1})))
        .await;
    assert_eq!(status, 404);
    let (status, body) = hub
        .admin(Method::GET, "/api/admin/operations?size=0", None)
        .await;
    assert_eq!((status, body["field"].as_str()), (422, Some("size")));
}

#[tokio::test]
async fn an_agent_node_reports_its_hardware() {
    let hub = start("agent-node").await;
    let values: HashMap<&str, &str> = HashMap::from([
        ("MMANAGER_API_KEY", "agent-key-123"),
        ("SERVER_ID", "hub-test-agent"),
        ("SERVER_TYPE", "gpu"),
        ("BERTH_SIMULATED_GPUS", "2xA100-80GB"),
    ]);
    let mut config = berth_agent::AgentConfig::load(|key| {
        values
            .get(key)
            .map(|value| (*value).to_owned())
            .or_else(|| {
                (key == "DOCKER_HOST")
                    .then(|| std::env::var(key).ok())
                    .flatten()
            })
    })
    .expect("agent config");
    config.listen = "127.0.0.1:0".parse().expect("addr");
    let agent = berth_agent::AgentState::connect(config)
        .await
        .expect("agent");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let agent_url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(berth_http::listen::serve(
        listener,
        berth_agent::api::router(agent),
        None,
        std::future::pending(),
    ));

    let body = node(
        "gpu-box",
        json!({"driver": "agent", "agent_url": agent_url, "agent_api_key": "agent-key-123", "server_type": "gpu"}),
    );
    let (status, created) = hub.admin(Method::POST, "/api/nodes", Some(body)).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["docker_status"], "connected", "{created}");
    assert!(
        created["status_message"]
            .as_str()
            .expect("message")
            .contains("hub-test-agent")
    );
    assert_eq!(
        created["observed"]["gpus"].as_array().map(Vec::len),
        Some(2)
    );
    assert_eq!(created["observed"]["simulated"], true);
    assert_eq!(created["agent_api_key_set"], true);
    let id = created["id"].as_i64().expect("id");

    let (status, wrong) = hub
        .admin(
            Method::PUT,
            &format!("/api/nodes/{id}"),
            Some(json!({"agent_api_key": "wrong"})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(wrong["docker_status"], "failed");
    assert!(
        wrong["status_message"]
            .as_str()
            .expect("message")
            .contains("401"),
        "{wrong}"
    );

    let (status, controllers) = hub.admin(Method::GET, "/api/admin/controllers", None).await;
    assert_eq!((status, controllers["total"].as_u64()), (200, Some(1)));
    assert_eq!(controllers["controllers"][0]["url"], agent_url.as_str());
    let (_, disabled) = hub
        .admin(
            Method::POST,
            &format!("/api/admin/controllers/{id}/disable"),
            None,
        )
        .await;
    assert_eq!(disabled["enabled"], false);
    let (_, health) = hub
        .admin(
            Method::GET,
            &format!("/api/admin/controllers/{id}/health"),
            None,
        )
        .await;
    assert_eq!(health["status"], "failed");
}

#[tokio::test]
async fn deleting_a_busy_node_is_refused_and_every_step_is_logged() {
    let hub = start("delete").await;
    let (_, created) = hub
        .admin(Method::POST, "/api/nodes", Some(node("busy", json!({}))))
        .await;
    let id = created["id"].as_i64().expect("id");
    let mut connection = hub.state.store.acquire().await.expect("connection");
    sqlx::query("INSERT INTO containers (node_id, container_id, name, status, created_at) VALUES ($1, 'c1', 'svc', 'running', 0)")
        .bind(id)
        .execute(&mut *connection)
        .await
        .expect("container row");
    let (status, problem) = hub
        .admin(Method::DELETE, &format!("/api/nodes/{id}"), None)
        .await;
    assert_eq!(status, 409, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .expect("detail")
            .contains("service containers")
    );
    sqlx::query("DELETE FROM containers")
        .execute(&mut *connection)
        .await
        .expect("clear");
    drop(connection);
    let (status, _) = hub
        .admin(Method::POST, &format!("/api/nodes/{id}/test"), None)
        .await;
    assert_eq!(status, 200);
    let (status, _) = hub
        .admin(Method::DELETE, &format!("/api/nodes/{id}"), None)
        .await;
    assert_eq!(status, 204);

    let (_, me) = hub.admin(Method::GET, "/api/users/me", None).await;
    let (_, log) = hub
        .admin(
            Method::GET,
            &format!("/api/admin/operations?node_id={id}"),
            None,
        )
        .await;
    let actions: Vec<&str> = log["operations"]
        .as_array()
        .expect("ops")
        .iter()
        .filter_map(|op| op["action"].as_str())
        .collect();
    assert_eq!(
        actions,
        vec!["node.delete", "node.test", "node.test", "node.create"],
        "{log}"
    );
    assert!(
        log["operations"]
            .as_array()
            .expect("ops")
            .iter()
            .all(|op| op["user_id"] == me["id"])
    );
    let (_, only_deletes) = hub
        .admin(
            Method::GET,
            "/api/admin/operations?action=node.delete",
            None,
        )
        .await;
    assert_eq!(only_deletes["total"], 1);
}

#[tokio::test]
async fn controllers_declared_in_the_config_are_kept_in_sync() {
    let hub = start("config-sync").await;
    let (status, _) = hub
        .admin(
            Method::POST,
            "/api/nodes",
            Some(node("hand-made", json!({}))),
        )
        .await;
    assert_eq!(status, 201);
    let first = berth_hub::config::HubConfig::parse(
        "mmanager_api_key: shared-key\nmmanager_controllers:\n\
         \x20 - {id: gpu-01, url: 'http://192.0.2.10:8001', server_type: gpu, priority: 1, weight: 100}\n\
         \x20 - {id: cpu-01, url: 'http://192.0.2.11:8002', priority: 2, weight: 80}\n\
         \x20 - {id: hand-made, url: 'http://192.0.2.12:8000'}\n",
    )
    .expect("config");
    let sync = berth_hub::bootstrap::sync_controllers(&hub.state, &first)
        .await
        .expect("sync");
    assert_eq!(sync.created, vec!["gpu-01".to_owned(), "cpu-01".to_owned()]);
    assert_eq!(sync.skipped, vec!["hand-made".to_owned()]);
    let (_, nodes) = hub
        .admin(Method::GET, "/api/nodes?driver=agent", None)
        .await;
    let gpu = nodes
        .as_array()
        .expect("nodes")
        .iter()
        .find(|node| node["name"] == "gpu-01")
        .expect("gpu-01")
        .clone();
    assert_eq!(
        (
            gpu["origin"].as_str(),
            gpu["priority"].as_i64(),
            gpu["public_ip"].as_str()
        ),
        (Some("config"), Some(1), Some("192.0.2.10"))
    );
    assert_eq!(gpu["agent_api_key_set"], true);

    let again = berth_hub::bootstrap::sync_controllers(&hub.state, &first)
        .await
        .expect("sync");
    assert!(
        again.created.is_empty() && again.updated.is_empty() && again.removed.is_empty(),
        "{again:?}"
    );

    let second = berth_hub::config::HubConfig::parse(
        "mmanager_api_key: shared-key\nmmanager_controllers:\n  - {id: gpu-01, url: 'http://192.0.2.20:8001', server_type: gpu}\n",
    )
    .expect("config");
    let sync = berth_hub::bootstrap::sync_controllers(&hub.state, &second)
        .await
        .expect("sync");
    assert_eq!(
        (sync.updated, sync.removed),
        (vec!["gpu-01".to_owned()], vec!["cpu-01".to_owned()])
    );
    let (_, nodes) = hub.admin(Method::GET, "/api/nodes", None).await;
    let names: Vec<&str> = nodes
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|node| node["name"].as_str())
        .collect();
    assert_eq!(names, vec!["hand-made", "gpu-01"]);
    let (_, log) = hub
        .admin(
            Method::GET,
            "/api/admin/operations?action=node.delete",
            None,
        )
        .await;
    assert_eq!(log["operations"][0]["detail"]["source"], "config");
}

/// A browser without a cookie jar: it carries the cookies it was given by hand.
struct ConsoleVisitor {
    base: String,
    client: reqwest::Client,
    cookies: HashMap<String, String>,
}

impl ConsoleVisitor {
    fn new(hub: &support::Hub) -> Self {
        Self {
            base: format!("http://{}", hub.address),
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            cookies: HashMap::new(),
        }
    }

    async fn send(
        &mut self,
        method: Method,
        path: &str,
        form: &[(&str, &str)],
    ) -> (u16, String, String) {
        let cookie = self
            .cookies
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect::<Vec<_>>()
            .join("; ");
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .header("cookie", cookie);
        if !form.is_empty() {
            let body = form
                .iter()
                .map(|(key, value)| format!("{key}={}", value.replace('/', "%2F")))
                .collect::<Vec<_>>()
                .join("&");
            request = request
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body);
        }
        let response = request.send().await.expect("request");
        for set in response.headers().get_all("set-cookie") {
            let text = set.to_str().expect("cookie");
            let pair = text.split(';').next().unwrap_or_default();
            if let Some((name, value)) = pair.split_once('=') {
                if value.is_empty() {
                    self.cookies.remove(name);
                } else {
                    self.cookies.insert(name.to_owned(), value.to_owned());
                }
            }
        }
        let status = response.status().as_u16();
        let location = response
            .headers()
            .get("location")
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        (status, location, response.text().await.unwrap_or_default())
    }

    /// The CSRF token a page's forms carry.
    fn csrf(page: &str) -> String {
        page.split("name=\"csrf\" value=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("a form with a CSRF token")
            .to_owned()
    }

    async fn sign_in(&mut self, token: &str) {
        let (_, _, page) = self.send(Method::GET, "/sign-in", &[]).await;
        let csrf = Self::csrf(&page);
        let (status, location, _) = self
            .send(
                Method::POST,
                "/sign-in",
                &[("csrf", &csrf), ("token", token), ("next", "/")],
            )
            .await;
        assert_eq!((status, location.as_str()), (303, "/"), "signed in");
    }
}

#[tokio::test]
async fn the_console_needs_a_session_and_every_form_its_csrf_token() {
    let hub = start("console-guard").await;
    let (_, alice) = hub.new_user("alice").await;
    let mut stranger = ConsoleVisitor::new(&hub);
    let (status, location, _) = stranger.send(Method::GET, "/services", &[]).await;
    assert_eq!(
        (status, location.as_str()),
        (303, "/sign-in?next=%2Fservices")
    );
    let (status, location, _) = stranger
        .send(
            Method::POST,
            "/users",
            &[("csrf", "guess"), ("name", "mallory")],
        )
        .await;
    assert_eq!(status, 303, "no session, no form: {location}");

    let mut admin = ConsoleVisitor::new(&hub);
    admin.sign_in(&hub.admin).await;
    let session = admin.cookies["berth_session"].clone();
    assert_eq!(session.len(), 64);
    let (status, _, users_page) = admin.send(Method::GET, "/users", &[]).await;
    assert_eq!(status, 200);
    assert!(!users_page.contains(&hub.admin), "no token in the page");
    let csrf = ConsoleVisitor::csrf(&users_page);
    let (status, _, refused) = admin
        .send(
            Method::POST,
            "/users",
            &[("csrf", "not-the-token"), ("name", "mallory")],
        )
        .await;
    assert_eq!(status, 403, "{refused}");
    let (_, listed) = hub.admin(Method::GET, "/api/users", None).await;
    assert!(
        !listed.to_string().contains("mallory"),
        "a refused form changes nothing"
    );
    let (status, _, page) = admin
        .send(
            Method::POST,
            "/users",
            &[("csrf", &csrf), ("name", "Bad Name")],
        )
        .await;
    assert_eq!(status, 422);
    assert!(page.contains("value=\"Bad Name\""), "the typed value stays");
    assert!(
        page.contains("id=\"user-name-error\""),
        "the error is next to its field"
    );
    let (status, _, _) = admin
        .send(
            Method::POST,
            "/users",
            &[("csrf", &csrf), ("name", "carol")],
        )
        .await;
    assert_eq!(status, 200);
    let (_, listed) = hub.admin(Method::GET, "/api/users", None).await;
    assert!(listed.to_string().contains("carol"));

    // A catalog entry edited on its page: a refused value is marked, a good one saved.
    let (status, spec) = hub
        .admin(
            Method::POST,
            "/api/specs",
            Some(json!({"name": "small", "cpu_cores": 0.5, "memory": "64m"})),
        )
        .await;
    assert_eq!(status, 201, "{spec}");
    let edit = format!("/catalog/specs/{}", spec["id"]);
    let (status, _, form) = admin.send(Method::GET, &edit, &[]).await;
    assert_eq!(status, 200);
    assert!(
        form.contains("value=\"64m\""),
        "the stored memory, as typed"
    );
    let (status, _, refused) = admin
        .send(
            Method::POST,
            &edit,
            &[
                ("csrf", &csrf),
                ("name", "small"),
                ("cpu_cores", "-1"),
                ("memory", "64m"),
            ],
        )
        .await;
    assert_eq!(status, 422);
    assert!(
        refused.contains("id=\"entry-cpu_cores-error\""),
        "{refused}"
    );
    let (status, location, _) = admin
        .send(
            Method::POST,
            &edit,
            &[
                ("csrf", &csrf),
                ("name", "small"),
                ("cpu_cores", "2"),
                ("memory", "1g"),
            ],
        )
        .await;
    assert_eq!((status, location.as_str()), (303, "/catalog"));
    let (_, specs) = hub.admin(Method::GET, "/api/specs", None).await;
    assert_eq!(specs[0]["cpu_millis"], 2000, "{specs}");
    let (status, _, _) = admin.send(Method::GET, "/catalog/flavours/1", &[]).await;
    assert_eq!(status, 404);

    // The session cookie opens the console, not the API.
    let (status, _, _) = admin.send(Method::GET, "/api/users", &[]).await;
    assert_eq!(status, 401);

    // A user is no admin in the console either.
    let mut user = ConsoleVisitor::new(&hub);
    user.sign_in(&alice).await;
    let (status, _, page) = user.send(Method::GET, "/nodes", &[]).await;
    assert_eq!(status, 403, "{page}");
    let (status, _, _) = user.send(Method::GET, "/services", &[]).await;
    assert_eq!(status, 200);

    // Signing out ends the session for good, even for a copied cookie.
    let (status, location, _) = admin
        .send(Method::POST, "/sign-out", &[("csrf", &csrf)])
        .await;
    assert_eq!((status, location.as_str()), (303, "/sign-in"));
    let mut copy = ConsoleVisitor::new(&hub);
    copy.cookies.insert("berth_session".into(), session);
    let (status, location, _) = copy.send(Method::GET, "/", &[]).await;
    assert_eq!((status, location.as_str()), (303, "/sign-in?next=%2F"));
}

#[tokio::test]
async fn console_tokens_are_issued_once_revoked_at_once_and_quotas_cleared() {
    let hub = start("console-tokens").await;
    let (alice_id, alice) = hub.new_user("alice").await;
    // Alice signs in with a token she then issues a second one beside.
    let (_, issued, _) = hub
        .call(
            Some(&alice),
            Method::POST,
            &format!("/api/users/{alice_id}/tokens"),
            Some(json!({"name": "laptop"})),
        )
        .await;
    let laptop = issued["token"].as_str().expect("token").to_owned();
    let laptop_id = issued["id"].as_i64().expect("id");
    let mut visitor = ConsoleVisitor::new(&hub);
    visitor.sign_in(&laptop).await;
    let (status, _, page) = visitor.send(Method::GET, "/tokens", &[]).await;
    assert_eq!(status, 200);
    assert!(
        page.contains("laptop") && page.contains("initial"),
        "{page}"
    );
    assert!(
        !page.contains(&laptop) && !page.contains(&alice),
        "no token text"
    );
    let csrf = ConsoleVisitor::csrf(&page);
    let (status, _, refused) = visitor
        .send(
            Method::POST,
            "/tokens",
            &[("csrf", &csrf), ("name", "ci"), ("expires_in_days", "0")],
        )
        .await;
    assert_eq!(status, 422);
    assert!(
        refused.contains("id=\"token-expires_in_days-error\""),
        "{refused}"
    );
    let (status, _, shown) = visitor
        .send(
            Method::POST,
            "/tokens",
            &[("csrf", &csrf), ("name", "ci"), ("expires_in_days", "30")],
        )
        .await;
    assert_eq!(status, 200);
    let ci = shown
        .split("<code>")
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .expect("the new token, shown once");
    assert!(ci.starts_with("berth_"), "{shown}");
    let (status, me, _) = hub.call(Some(ci), Method::GET, "/api/users/me", None).await;
    assert_eq!((status, me["name"].as_str()), (200, Some("alice")));
    // Another user's tokens are not Alice's to see.
    let (status, _, _) = visitor.send(Method::GET, "/tokens?user=1", &[]).await;
    assert_eq!(status, 403);
    // Revoking the token her session was opened with ends the session too.
    let (status, location, _) = visitor
        .send(
            Method::POST,
            &format!("/tokens/{laptop_id}/revoke"),
            &[("csrf", &csrf), ("user", &alice_id.to_string())],
        )
        .await;
    assert_eq!(status, 303, "{location}");
    let (status, location, _) = visitor.send(Method::GET, "/tokens", &[]).await;
    assert_eq!(
        (status, location.as_str()),
        (303, "/sign-in?next=%2Ftokens")
    );
    let (status, _, _) = hub
        .call(Some(&laptop), Method::GET, "/api/users/me", None)
        .await;
    assert_eq!(status, 401);

    // An admin empties a quota on the users page: it is cleared, the hub's default applies.
    hub.admin(
        Method::PUT,
        &format!("/api/users/{alice_id}"),
        Some(json!({"max_services": 3, "max_gpus": 2})),
    )
    .await;
    let mut admin = ConsoleVisitor::new(&hub);
    admin.sign_in(&hub.admin).await;
    let (_, _, users_page) = admin.send(Method::GET, "/users", &[]).await;
    let csrf = ConsoleVisitor::csrf(&users_page);
    let (status, _, _) = admin
        .send(
            Method::POST,
            &format!("/users/{alice_id}"),
            &[
                ("csrf", &csrf),
                ("role", "user"),
                ("max_services", ""),
                ("max_cpu_cores", ""),
                ("max_memory", ""),
                ("max_gpus", "2"),
            ],
        )
        .await;
    assert_eq!(status, 303);
    let (_, user) = hub
        .admin(Method::GET, &format!("/api/users/{alice_id}"), None)
        .await;
    assert_eq!(user["quotas"]["max_services"], Value::Null, "{user}");
    assert_eq!(user["quotas"]["max_gpus"], 2, "{user}");
}

/// The console's "Add a node with one command": the page shows the command with a fresh token,
/// and its live list shows the node once an agent joins with that token.
#[tokio::test]
async fn the_console_issues_a_join_command_and_lists_the_node_that_joins() {
    let hub = start("console-join").await;
    let mut visitor = ConsoleVisitor::new(&hub);
    visitor.sign_in(&hub.admin).await;
    let (_, _, nodes_page) = visitor.send(Method::GET, "/nodes", &[]).await;
    assert!(
        nodes_page.contains("id=\"join-node\""),
        "the nodes page offers it"
    );
    let csrf = ConsoleVisitor::csrf(&nodes_page);
    let (status, _, page) = visitor
        .send(Method::POST, "/nodes/join", &[("csrf", &csrf)])
        .await;
    assert_eq!(status, 200, "{page}");
    let command = page
        .split("<pre id=\"join-command\"><code>")
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .expect("the command");
    assert!(
        command.starts_with("berth agent --join http://"),
        "{command}"
    );
    let token = command.split_whitespace().last().expect("token").to_owned();
    assert!(page.contains("docker run"), "{page}");
    let source = page
        .split("data-source=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the live list's source")
        .replace("&amp;", "&");
    let (_, _, before) = visitor.send(Method::GET, &source, &[]).await;
    assert!(!before.contains("console-joined"), "{before}");

    let agent = support::start_agent("console-joined", "ignored", "127.0.0.1:0").await;
    let (status, joined, _) = hub
        .call(
            None,
            Method::POST,
            "/api/nodes/join",
            Some(json!({"token": token, "agent_url": agent.url(), "server_id": "console-joined"})),
        )
        .await;
    assert_eq!(status, 201, "{joined}");
    let (_, _, after) = visitor.send(Method::GET, &source, &[]).await;
    assert!(
        after.contains("console-joined") && after.contains("joined-nodes"),
        "{after}"
    );
    agent.kill().await;
}
