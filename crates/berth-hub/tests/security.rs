//! The hub as an attacker and a busy operator would try it, on the real engine: no Berth token
//! or console cookie reaches a service through the gateway (relay and hyper paths) and a service
//! cannot plant a console cookie; a private service's port answers only on the address the
//! gateway uses; quotas hold against 30 parallel creates; parallel updates of one user and one
//! node never answer 5xx.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use berth_hub::state::HubSettings;
use reqwest::Method;
use serde_json::{Value, json};
use support::{Hub, add_local_node, start_gateway, start_tls_gateway, start_with, with_cleanup};

const IMAGE: &str = "berth-test/busybox:latest";

/// busybox httpd with `/cgi-bin/env`, which prints the request's headers as CGI sees them and
/// tries to set the console's session cookie beside one of its own.
const ENV_ECHO: &str = r#"mkdir -p /www/cgi-bin
printf '#!/bin/sh\necho "Content-Type: text/plain"\necho "Set-Cookie: berth_session=planted; Path=/"\necho "Set-Cookie: __Host-berth_session=planted; Path=/; Secure"\necho "Set-Cookie: theme=dark; Path=/"\necho\nenv\n' > /www/cgi-bin/env
chmod +x /www/cgi-bin/env
trap 'exit 0' TERM
httpd -f -p 8080 -h /www &
wait"#;

async fn hub_with_gateway(test: &str) -> (Hub, SocketAddr) {
    let hub = start_with(
        test,
        HubSettings {
            max_services_per_user: 50,
            ..HubSettings::default()
        },
    )
    .await;
    add_local_node(&hub).await;
    let gateway = start_gateway(&hub).await;
    (hub, gateway)
}

/// Creates and starts the admin's service `name` running `script` on port 8080; its id.
async fn create_started(hub: &Hub, name: &str, public: bool) -> i64 {
    let (status, created) = hub
        .admin(
            Method::POST,
            "/api/admin/sec/services?wait=60",
            Some(json!({
                "name": name, "image": IMAGE, "memory_limit": "32m", "cpu_limit": 0.1,
                "command": ["sh", "-c", ENV_ECHO], "port": 8080, "start": true,
                "is_public": public,
            })),
        )
        .await;
    assert_eq!(status, 200, "{created}");
    created["service_id"].as_i64().expect("id")
}

async fn wait_ready(hub: &Hub, id: i64) -> Value {
    for _ in 0..300 {
        let (_, status) = hub
            .admin(Method::GET, &format!("/api/services/{id}/status"), None)
            .await;
        if status["serving"]["ready_replicas"].as_u64() == Some(1) {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("service {id} never became ready");
}

/// What the service saw and what the client got back: the CGI environment and the
/// `Set-Cookie` values that reached the client.
async fn visit(
    client: &reqwest::Client,
    url: &str,
    authorization: &str,
    cookie: &str,
) -> (String, Vec<String>) {
    let response = client
        .get(url)
        .header("authorization", authorization)
        .header("cookie", cookie)
        .send()
        .await
        .expect("the gateway answers");
    assert_eq!(response.status(), 200, "{url}");
    let set_cookies = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|value| value.to_str().expect("text").to_owned())
        .collect();
    (response.text().await.expect("body"), set_cookies)
}

#[tokio::test]
async fn no_berth_credential_reaches_a_service_and_none_can_be_planted() {
    let (hub, gateway) = hub_with_gateway("security-gateway").await;
    with_cleanup(&hub, async {
        let public = create_started(&hub, "open", true).await;
        let private = create_started(&hub, "closed", false).await;
        wait_ready(&hub, public).await;
        wait_ready(&hub, private).await;
        let admin_bearer = format!("Bearer {}", hub.admin);
        let cookies = "theme=light; berth_session=0123abcd; berth_lang=zh; \
                       __Host-berth_session=4567ef; cart=42";
        let http1 = reqwest::Client::new();
        let http2 = reqwest::Client::builder()
            .http2_prior_knowledge()
            .build()
            .expect("client");
        // The same through a gateway serving TLS, where hyper serves HTTP/1.1 and HTTP/2 (ALPN).
        let (tls_gateway, certificate) = start_tls_gateway(&hub).await;
        let trusting = || {
            let _ = rustls::crypto::ring::default_provider().install_default();
            reqwest::Client::builder().add_root_certificate(
                reqwest::Certificate::from_pem(certificate.as_bytes()).expect("certificate"),
            )
        };
        let https1 = trusting().http1_only().build().expect("client");
        let https2 = trusting().build().expect("client");
        let plain = format!("http://{gateway}");
        let tls = format!("https://{tls_gateway}");
        for (path, client, base) in [
            ("relay", &http1, &plain),
            ("hyper", &http2, &plain),
            ("TLS HTTP/1.1", &https1, &tls),
            ("TLS HTTP/2", &https2, &tls),
        ] {
            for service in ["open", "closed"] {
                let url = format!("{base}/s/admin/{service}/cgi-bin/env");
                let (seen, set_cookies) = visit(client, &url, &admin_bearer, cookies).await;
                let context = format!("{service} over the {path} path");
                let proto = if base == &tls { "https" } else { "http" };
                assert!(
                    seen.contains(&format!("HTTP_X_FORWARDED_PROTO={proto}\n")),
                    "{context}: the service is told the scheme:\n{seen}"
                );
                assert!(
                    !seen.contains(&hub.admin),
                    "{context}: the token leaked:\n{seen}"
                );
                assert!(!seen.contains("HTTP_AUTHORIZATION"), "{context}:\n{seen}");
                assert!(
                    !seen.contains("0123abcd"),
                    "{context}: session leaked:\n{seen}"
                );
                assert!(
                    !seen.contains("4567ef"),
                    "{context}: session leaked:\n{seen}"
                );
                assert!(!seen.contains("berth_lang"), "{context}:\n{seen}");
                let cookie_line = seen
                    .lines()
                    .find(|line| line.starts_with("HTTP_COOKIE="))
                    .unwrap_or_else(|| panic!("{context}: other cookies pass:\n{seen}"));
                assert_eq!(cookie_line, "HTTP_COOKIE=theme=light; cart=42", "{context}");
                assert!(
                    set_cookies
                        .iter()
                        .all(|value| !value.contains("berth_session")),
                    "{context}: a service planted a console cookie: {set_cookies:?}"
                );
                assert!(
                    set_cookies
                        .iter()
                        .any(|value| value.starts_with("theme=dark")),
                    "{context}: the service's own cookie passes: {set_cookies:?}"
                );
            }
        }
        // A public service keeps an Authorization that is not a Berth token: its own API key.
        let (seen, _) = visit(
            &http1,
            &format!("http://{gateway}/s/admin/open/cgi-bin/env"),
            "Bearer sk-service-own-key",
            "a=1",
        )
        .await;
        assert!(
            seen.contains("HTTP_AUTHORIZATION=Bearer sk-service-own-key"),
            "{seen}"
        );
    })
    .await;
}

/// An address of this host that is not loopback: the source address of its default route
/// (a connected UDP socket sends nothing).
fn external_address() -> IpAddr {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").expect("udp");
    socket
        .connect("198.51.100.1:9")
        .expect("this host has a route off loopback");
    let ip = socket.local_addr().expect("local address").ip();
    assert!(!ip.is_loopback() && !ip.is_unspecified(), "{ip}");
    ip
}

#[tokio::test]
async fn a_private_service_answers_only_on_the_gateways_address() {
    let (hub, gateway) = hub_with_gateway("security-private").await;
    with_cleanup(&hub, async {
        let private = create_started(&hub, "hidden", false).await;
        let status = wait_ready(&hub, private).await;
        let host_port = status["host_port"]
            .as_u64()
            .unwrap_or_else(|| panic!("a published port: {status}"));
        let host_port = u16::try_from(host_port).expect("port");
        // The gateway reaches it on loopback (the local engine's address)…
        let through_gateway = reqwest::Client::new()
            .get(format!("http://{gateway}/s/admin/hidden/"))
            .bearer_auth(&hub.admin)
            .send()
            .await
            .expect("gateway");
        assert_eq!(through_gateway.status(), 200);
        let url = status["service_url"].as_str().expect("a service URL");
        assert!(
            url.ends_with("/s/admin/hidden/"),
            "the gateway's URL: {url}"
        );
        assert!(
            tokio::net::TcpStream::connect(("127.0.0.1", host_port))
                .await
                .is_ok()
        );
        // …and nothing else does.
        let outside = external_address();
        let reached = tokio::time::timeout(
            Duration::from_secs(3),
            tokio::net::TcpStream::connect((outside, host_port)),
        )
        .await;
        assert!(
            !matches!(reached, Ok(Ok(_))),
            "port {host_port} answers on {outside}, around the gateway"
        );
    })
    .await;
}

#[tokio::test]
async fn thirty_parallel_creates_against_a_quota_of_five_make_exactly_five() {
    let hub = Arc::new(start_with("security-quota", HubSettings::default()).await);
    add_local_node(&hub).await;
    let (_, token) = hub.new_user("racer").await;
    let token = Arc::new(token);
    let attempts: Vec<_> = (0..30)
        .map(|n| {
            let (hub, token) = (Arc::clone(&hub), Arc::clone(&token));
            tokio::spawn(async move {
                let (status, body, _) = hub
                    .call(
                        Some(&token),
                        Method::POST,
                        "/api/racer/race/services?wait=60",
                        Some(json!({
                            "name": format!("s{n}"), "image": IMAGE,
                            "memory_limit": "16m", "cpu_limit": 0.05,
                            "command": ["sleep", "600"],
                        })),
                    )
                    .await;
                (status, body)
            })
        })
        .collect();
    let mut created = 0;
    for attempt in attempts {
        let (status, body) = attempt.await.expect("task");
        match status {
            200 => created += 1,
            403 => assert!(
                body["detail"]
                    .as_str()
                    .is_some_and(|detail| detail.contains("max_services_per_user")),
                "{body}"
            ),
            other => panic!("a create answered {other}: {body}"),
        }
    }
    let (_, listed) = hub.admin(Method::GET, "/api/services?all=true", None).await;
    let hub_ref: &Hub = &hub;
    with_cleanup(hub_ref, async {
        assert_eq!(created, 5, "the quota of 5 held");
        assert_eq!(listed["total"], 5, "{listed}");
    })
    .await;
}

#[tokio::test]
async fn fifty_parallel_updates_of_one_user_and_one_node_are_all_applied() {
    let hub = Arc::new(start_with("security-updates", HubSettings::default()).await);
    let node = add_local_node(&hub).await;
    let (user, _) = hub.new_user("busy").await;
    let updates: Vec<_> = (0..50)
        .map(|n| {
            let hub = Arc::clone(&hub);
            tokio::spawn(async move {
                let (path, body) = if n % 2 == 0 {
                    (format!("/api/users/{user}"), json!({"max_services": n}))
                } else {
                    (
                        format!("/api/nodes/{node}"),
                        json!({"remark": format!("r{n}")}),
                    )
                };
                hub.admin(Method::PUT, &path, Some(body)).await
            })
        })
        .collect();
    for update in updates {
        let (status, body) = update.await.expect("task");
        assert_eq!(status, 200, "{body}");
    }
    let (_, log) = hub
        .admin(Method::GET, "/api/admin/operations?size=500", None)
        .await;
    let logged = |action: &str| {
        log["operations"]
            .as_array()
            .expect("operations")
            .iter()
            .filter(|operation| operation["action"] == action)
            .count()
    };
    assert_eq!(logged("user.update"), 25, "every update is in the log");
    assert_eq!(logged("node.update"), 25, "every update is in the log");
}

#[tokio::test]
async fn tokens_are_listed_without_their_text_revoked_and_expired_everywhere_at_once() {
    let (hub, gateway) = hub_with_gateway("security-tokens").await;
    with_cleanup(&hub, async {
        let (alice_id, alice) = hub.new_user("alice").await;
        let (bob_id, bob) = hub.new_user("bob").await;
        let tokens_path = format!("/api/users/{alice_id}/tokens");
        // Alice issues a token for CI that expires in 30 days.
        let (status, issued, _) = hub
            .call(
                Some(&alice),
                Method::POST,
                &tokens_path,
                Some(json!({"name": "ci", "expires_in_days": 30})),
            )
            .await;
        assert_eq!(status, 201, "{issued}");
        let ci = issued["token"].as_str().expect("token").to_owned();
        let ci_id = issued["id"].as_i64().expect("id");
        let month = issued["expires_at"].as_i64().expect("expiry") - berth_store::now_ms();
        assert!(
            (29 * 86_400_000..=30 * 86_400_000).contains(&month),
            "{issued}"
        );
        for (body, field) in [
            (json!({"expires_in_days": 0}), "expires_in_days"),
            (json!({"expires_in_days": 100000}), "expires_in_days"),
            (json!({"name": ""}), "name"),
        ] {
            let (status, problem, _) = hub
                .call(Some(&alice), Method::POST, &tokens_path, Some(body))
                .await;
            assert_eq!((status, problem["field"].as_str()), (422, Some(field)));
        }
        let (status, me, _) = hub
            .call(Some(&ci), Method::GET, "/api/users/me", None)
            .await;
        assert_eq!((status, me["id"].as_i64()), (200, Some(alice_id)));
        // Listed with name and times, never with the text.
        let (status, listed, text) = hub
            .call(Some(&alice), Method::GET, &tokens_path, None)
            .await;
        assert_eq!(status, 200);
        assert!(!text.contains(&ci) && !text.contains(&alice), "{text}");
        let names: Vec<&str> = listed["tokens"]
            .as_array()
            .expect("tokens")
            .iter()
            .filter_map(|token| token["name"].as_str())
            .collect();
        assert_eq!(names, ["ci", "initial"]);
        assert!(
            listed["tokens"][0]["last_used_at"].as_i64().is_some(),
            "{listed}"
        );
        // Bob can neither see nor revoke Alice's tokens; an admin can see them.
        let revoke_ci = format!("{tokens_path}/{ci_id}");
        for (method, path) in [(Method::GET, &tokens_path), (Method::DELETE, &revoke_ci)] {
            let (status, _, _) = hub.call(Some(&bob), method, path, None).await;
            assert_eq!(status, 403, "{path}");
        }
        let (status, _, _) = hub
            .call(
                Some(&bob),
                Method::DELETE,
                &format!("/api/users/{bob_id}/tokens/{ci_id}"),
                None,
            )
            .await;
        assert_eq!(status, 404, "Alice's token is not Bob's to revoke");
        assert_eq!(hub.admin(Method::GET, &tokens_path, None).await.0, 200);

        // A private service of Alice's through the gateway, with the CI token; then revoked.
        let (status, created, _) = hub
            .call(
                Some(&ci),
                Method::POST,
                "/api/alice/tok/services?wait=60",
                Some(json!({
                    "name": "api", "image": IMAGE, "memory_limit": "32m", "cpu_limit": 0.1,
                    "command": ["sh", "-c", ENV_ECHO], "port": 8080, "start": true,
                })),
            )
            .await;
        assert_eq!(status, 200, "{created}");
        wait_ready(&hub, created["service_id"].as_i64().expect("id")).await;
        let through_gateway = |token: String| async move {
            reqwest::Client::new()
                .get(format!("http://{gateway}/s/alice/api/"))
                .bearer_auth(token)
                .send()
                .await
                .expect("gateway")
                .status()
                .as_u16()
        };
        assert_eq!(through_gateway(ci.clone()).await, 200);
        let (status, _, _) = hub
            .call(Some(&alice), Method::DELETE, &revoke_ci, None)
            .await;
        assert_eq!(status, 204);
        let (status, _, _) = hub
            .call(Some(&ci), Method::GET, "/api/users/me", None)
            .await;
        assert_eq!(status, 401, "revoked: refused by the API at once");
        assert_eq!(through_gateway(ci.clone()).await, 401, "and by the gateway");
        assert_eq!(through_gateway(alice.clone()).await, 200);
        let (_, log) = hub
            .admin(
                Method::GET,
                "/api/admin/operations?action=token.revoke",
                None,
            )
            .await;
        assert_eq!(log["total"], 1, "{log}");

        // An expired token is refused too.
        let expired = {
            let mut connection = hub.state.store.acquire().await.expect("connection");
            berth_store::users::issue_token(
                &mut connection,
                alice_id,
                "old",
                Some(berth_store::now_ms() - 1),
            )
            .await
            .expect("token")
        };
        let (status, _, _) = hub
            .call(Some(&expired.token), Method::GET, "/api/users/me", None)
            .await;
        assert_eq!(status, 401);
        assert_eq!(through_gateway(expired.token.clone()).await, 401);

        // `null` clears a quota; a quota left out keeps its value.
        let user_path = format!("/api/users/{alice_id}");
        let (_, set) = hub
            .admin(
                Method::PUT,
                &user_path,
                Some(json!({"max_services": 2, "max_gpus": 1})),
            )
            .await;
        assert_eq!(
            (
                set["quotas"]["max_services"].as_i64(),
                set["quotas"]["max_gpus"].as_i64()
            ),
            (Some(2), Some(1))
        );
        let (_, cleared) = hub
            .admin(Method::PUT, &user_path, Some(json!({"max_services": null})))
            .await;
        assert_eq!(cleared["quotas"]["max_services"], Value::Null, "{cleared}");
        assert_eq!(cleared["quotas"]["max_gpus"], 1, "{cleared}");
    })
    .await;
}

/// Sends `body` as raw bytes with `content_type`; status, content type and JSON body.
async fn raw_call(
    hub: &Hub,
    method: Method,
    path: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> (u16, String, Value) {
    let mut request = reqwest::Client::new()
        .request(method, format!("http://{}{path}", hub.address))
        .bearer_auth(&hub.admin)
        .body(body);
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    let response = request.send().await.expect("hub answers");
    let status = response.status().as_u16();
    let kind = response
        .headers()
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, kind, body)
}

/// A call that must be refused: method, path, content type, body; the status and the field
/// the problem names.
type RefusedCall = (
    Method,
    String,
    Option<&'static str>,
    Vec<u8>,
    u16,
    Option<&'static str>,
);

#[tokio::test]
async fn every_refusal_is_problem_json_and_changes_nothing() {
    let hub = start_with("security-errors", HubSettings::default()).await;
    let json = Some("application/json");
    let spec =
        |cores: &str| format!(r#"{{"name": "small", "cpu_cores": {cores}, "memory": "64m"}}"#);
    let cases: Vec<RefusedCall> = vec![
        (
            Method::GET,
            "/api/services/abc".into(),
            None,
            vec![],
            400,
            Some("id"),
        ),
        (
            Method::GET,
            "/api/users/99999999999999999999".into(),
            None,
            vec![],
            400,
            Some("id"),
        ),
        (
            Method::DELETE,
            "/api/users/1/tokens/x".into(),
            None,
            vec![],
            400,
            Some("token_id"),
        ),
        (
            Method::POST,
            "/api/specs".into(),
            Some("text/plain"),
            spec("1").into_bytes(),
            415,
            Some("content-type"),
        ),
        (
            Method::POST,
            "/api/specs".into(),
            Some("application/x-www-form-urlencoded"),
            spec("1").into_bytes(),
            415,
            Some("content-type"),
        ),
        (
            Method::POST,
            "/api/specs".into(),
            json,
            format!("{} trailing", spec("1")).into_bytes(),
            422,
            Some("body"),
        ),
        (
            Method::POST,
            "/api/specs".into(),
            json,
            spec("0.005").into_bytes(),
            422,
            Some("cpu_cores"),
        ),
        (
            Method::POST,
            "/api/specs".into(),
            json,
            vec![b' '; 3 << 20],
            413,
            None,
        ),
        (Method::GET, "/api/nowhere".into(), None, vec![], 404, None),
        (Method::PATCH, "/api/specs".into(), None, vec![], 405, None),
    ];
    for (method, path, content_type, body, status, field) in cases {
        let (got, kind, problem) = raw_call(&hub, method.clone(), &path, content_type, body).await;
        assert_eq!(
            (got, kind.as_str(), problem["field"].as_str()),
            (status, "application/problem+json", field),
            "{method} {path}: {problem}"
        );
        assert_eq!(problem["status"], status, "{problem}");
    }
    let (_, specs) = hub.admin(Method::GET, "/api/specs", None).await;
    assert_eq!(
        specs.as_array().map(Vec::len),
        Some(0),
        "nothing was created: {specs}"
    );
    // A service's cpu_limit below Docker's minimum is refused before any engine sees it.
    let (status, problem) = hub
        .admin(
            Method::POST,
            "/api/admin/demo/services",
            Some(
                json!({"name": "tiny", "image": IMAGE, "cpu_limit": 0.005, "memory_limit": "16m"}),
            ),
        )
        .await;
    assert_eq!(
        (status, problem["field"].as_str()),
        (422, Some("cpu_limit")),
        "{problem}"
    );
    // No Content-Type at all is read as JSON (curl --data-binary without -H, scripts).
    let (status, _, _) = raw_call(
        &hub,
        Method::POST,
        "/api/specs",
        None,
        spec("1").into_bytes(),
    )
    .await;
    assert_eq!(status, 201);
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Anyone, without a token.
    Open,
    /// Anyone holding a join token, which the body carries: an API token neither helps nor
    /// is needed.
    ByJoinToken,
    /// Any signed-in user; answers carry only their own data.
    SignedIn,
    /// Admins only.
    Admin,
    /// The user named by `{id}`, or an admin.
    SelfOrAdmin,
    /// The owner of the service `{id}`, or an admin.
    Owner,
    /// The user named by `{username}`, or an admin.
    AsUser,
}

/// The access rule of every route of the API. A route without an entry fails the test.
fn access_of(method: &Method, path: &str) -> Access {
    match (method.as_str(), path) {
        ("GET", "/health") => Access::Open,
        ("POST", "/api/nodes/join") => Access::ByJoinToken,
        (
            "GET",
            "/api/openapi.json" | "/api/users/me" | "/api/services" | "/api/images" | "/api/specs",
        ) => Access::SignedIn,
        (_, "/api/users/{id}" | "/api/users/{id}/tokens" | "/api/users/{id}/tokens/{token_id}")
            if *method != Method::PUT && *method != Method::DELETE
                || path.ends_with("{token_id}") =>
        {
            Access::SelfOrAdmin
        }
        ("POST", "/api/users/{id}/tokens/{token_id}/reissue") => Access::SelfOrAdmin,
        (_, "/metrics" | "/api/users" | "/api/users/{id}") => Access::Admin,
        (_, path)
            if path.starts_with("/api/nodes")
                || path.starts_with("/api/admin/")
                || path.starts_with("/api/gateway/") =>
        {
            Access::Admin
        }
        ("POST" | "PUT" | "DELETE", path)
            if path.starts_with("/api/images") || path.starts_with("/api/specs") =>
        {
            Access::Admin
        }
        (_, path)
            if path.starts_with("/api/services/{id}")
                || path.starts_with("/api/operations/{id}") =>
        {
            Access::Owner
        }
        ("POST", "/api/{username}/{repo}/services") => Access::AsUser,
        _ => panic!("{method} {path} has no entry in the authorization matrix"),
    }
}

#[tokio::test]
async fn the_authorization_matrix_holds_for_every_route() {
    let hub = start_with("security-matrix", HubSettings::default()).await;
    let (alice_id, alice) = hub.new_user("alice").await;
    let (_, bob) = hub.new_user("bob").await;
    // Alice's service, on a simulated node, and a catalog entry of each kind.
    let node = support::add_simulated_node(&hub, "sim").await;
    let (status, service, _) = hub
        .call(
            Some(&alice),
            Method::POST,
            "/api/alice/private/services?wait=30",
            Some(
                json!({"name": "alice-private-svc", "image": IMAGE, "cpu_limit": 0.1,
                        "memory_limit": "16m", "port": 8080,
                        "environment": {"ALICE_SECRET": "s3cr3t-value"}}),
            ),
        )
        .await;
    assert_eq!(status, 200, "{service}");
    assert_eq!(service["state"], "succeeded", "{service}");
    let operation_id = service["id"].as_i64().expect("operation id");
    let service_id = service["service_id"].as_i64().expect("id");
    let (_, issued, _) = hub
        .call(
            Some(&alice),
            Method::POST,
            &format!("/api/users/{alice_id}/tokens"),
            Some(json!({"name": "ci"})),
        )
        .await;
    let token_id = issued["id"].as_i64().expect("token id");
    let (_, image) = hub
        .admin(
            Method::POST,
            "/api/images",
            Some(json!({"name": "busybox", "reference": IMAGE})),
        )
        .await;
    let (_, spec) = hub
        .admin(
            Method::POST,
            "/api/specs",
            Some(json!({"name": "small", "cpu_cores": 1, "memory": "64m"})),
        )
        .await;
    let secrets = ["alice-private-svc", "s3cr3t-value", alice.as_str()];

    let routes = berth_hub::api::route_list();
    assert!(routes.len() >= 50, "the route table: {routes:?}");
    for (method, template) in routes {
        let access = access_of(&method, template);
        let id = if template.starts_with("/api/services/") {
            service_id
        } else if template.starts_with("/api/operations/") {
            operation_id
        } else if template.starts_with("/api/users/") {
            alice_id
        } else if template.starts_with("/api/images/") {
            image["id"].as_i64().expect("image")
        } else if template.starts_with("/api/specs/") {
            spec["id"].as_i64().expect("spec")
        } else {
            node.id
        };
        let path = template
            .replace("{id}", &id.to_string())
            .replace("{token_id}", &token_id.to_string())
            .replace("{username}", "alice")
            .replace("{repo}", "r");
        let body = matches!(method, Method::POST | Method::PUT).then(|| json!({}));
        let call = |token: Option<String>| {
            let (hub, method, path, body) = (&hub, method.clone(), path.clone(), body.clone());
            async move { hub.call(token.as_deref(), method, &path, body).await }
        };
        let route = format!("{method} {template}");

        let (status, problem, _) = call(None).await;
        if access == Access::Open {
            assert_eq!(status, 200, "{route}");
            continue;
        }
        if access == Access::ByJoinToken {
            for token in [None, Some(bob.clone()), Some(hub.admin.clone())] {
                let (status, problem, _) = call(token).await;
                assert_eq!(
                    status, 422,
                    "{route}: the join token is required, whoever calls"
                );
                assert!(
                    problem["detail"]
                        .as_str()
                        .unwrap_or_default()
                        .contains("token"),
                    "{route}: {problem}"
                );
            }
            let (status, problem, _) = hub
                .call(
                    None,
                    method.clone(),
                    &path,
                    Some(
                        json!({"token": "berth_join_guess", "agent_url": "http://127.0.0.1:9",
                        "server_id": "guessed"}),
                    ),
                )
                .await;
            assert_eq!(status, 401, "{route} with a guessed token: {problem}");
            continue;
        }
        assert_eq!(
            (status, problem["status"].as_u64()),
            (401, Some(401)),
            "{route} anonymous"
        );

        let (status, problem, text) = call(Some(bob.clone())).await;
        for secret in secrets {
            assert!(
                !text.contains(secret),
                "{route} showed Bob {secret:?}: {text}"
            );
        }
        let refused_bob = match access {
            Access::Admin | Access::SelfOrAdmin | Access::AsUser => vec![403],
            Access::Owner => vec![404],
            Access::SignedIn | Access::Open | Access::ByJoinToken => vec![],
        };
        if refused_bob.is_empty() {
            assert!(status < 400, "{route} as Bob: {status} {problem}");
        } else {
            assert!(
                refused_bob.contains(&status),
                "{route} as Bob: {status} {problem}"
            );
            assert_eq!(
                problem["status"].as_u64(),
                Some(u64::from(status)),
                "{route}: a problem+json body"
            );
        }

        // Reads by those allowed succeed (past authorization, the exec route asks for the
        // WebSocket upgrade these plain requests lack, and the gateways' token check for the
        // token to check); by Alice, admin routes are refused.
        if method == Method::GET {
            let allowed = |status: u16| {
                status < 400
                    || (template.ends_with("/exec") && status == 426)
                    || (template == "/api/gateway/bearer" && status == 422)
            };
            let (status, problem, _) = call(Some(alice.clone())).await;
            if access == Access::Admin {
                assert_eq!(status, 403, "{route} as Alice: {problem}");
            } else {
                assert!(allowed(status), "{route} as Alice: {status} {problem}");
            }
            let (status, problem, _) = call(Some(hub.admin.clone())).await;
            assert!(allowed(status), "{route} as admin: {status} {problem}");
        }
    }
    // Nothing Bob tried changed anything of Alice's.
    let (status, still, _) = hub
        .call(
            Some(&alice),
            Method::GET,
            &format!("/api/services/{service_id}"),
            None,
        )
        .await;
    assert_eq!(
        (status, still["version"].as_i64()),
        (200, Some(1)),
        "{still}"
    );
    let (_, tokens, _) = hub
        .call(
            Some(&alice),
            Method::GET,
            &format!("/api/users/{alice_id}/tokens"),
            None,
        )
        .await;
    assert_eq!(
        tokens["tokens"].as_array().map(Vec::len),
        Some(2),
        "{tokens}"
    );
    let (_, log) = hub
        .admin(Method::GET, "/api/admin/operations?size=500", None)
        .await;
    let bob_id = hub
        .admin(Method::GET, "/api/users", None)
        .await
        .1
        .as_array()
        .expect("users")
        .iter()
        .find(|user| user["name"] == "bob")
        .and_then(|user| user["id"].as_i64())
        .expect("bob");
    assert!(
        log["operations"]
            .as_array()
            .expect("log")
            .iter()
            .all(|operation| operation["user_id"] != bob_id),
        "Bob changed nothing: {log}"
    );
    let mut transaction = hub.state.store.begin().await.expect("tx");
    berth_store::services::delete(&mut transaction, service_id)
        .await
        .expect("delete");
    transaction.commit().await.expect("commit");
}
