//! Three `berth hub` processes on one PostgreSQL database: one leads, the others serve the API
//! and pass changes to it; the leader killed (SIGKILL) during 30 concurrent changes made
//! through the followers, a follower leads and every acknowledged change is there; a leader
//! paused past its lease (SIGSTOP) finds another leading when it is let go (SIGCONT) and
//! follows it. Three hubs started together on an empty database make one first admin and one
//! identity. The store's own test shows the fencing of the old term's writes.

mod processes;

use std::time::Duration;

use processes::{free_port, fresh_dir, leader_among, leadership, postgres_database, wait_for};
use serde_json::{Value, json};

/// The users the hub on `port` lists, as JSON text.
async fn users(client: &reqwest::Client, port: u16, token: &str) -> String {
    let listed: Value = client
        .get(format!("http://127.0.0.1:{port}/api/users"))
        .bearer_auth(token)
        .send()
        .await
        .expect("users")
        .json()
        .await
        .expect("json");
    listed.to_string()
}

/// Creates user `name` through the hub on `port`, trying again while no hub takes changes; the
/// status that acknowledged it (201, or 409 when an earlier try had been taken).
async fn create_user(client: &reqwest::Client, port: u16, token: &str, name: &str) -> u16 {
    for _ in 0..100 {
        let answer = client
            .post(format!("http://127.0.0.1:{port}/api/users"))
            .bearer_auth(token)
            .json(&json!({"name": name}))
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        match answer.map(|answer| answer.status().as_u16()) {
            Ok(status @ (201 | 409)) => return status,
            Ok(502 | 503) | Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            Ok(other) => panic!("creating {name} through {port}: HTTP {other}"),
        }
    }
    panic!("{name} was never acknowledged");
}

#[tokio::test]
async fn a_follower_takes_over_from_a_killed_or_paused_leader_and_no_acknowledged_change_is_lost() {
    let Some(database) = postgres_database("ha").await else {
        return;
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = fresh_dir("ha");
    let client = reqwest::Client::new();
    let ports = [free_port(), free_port(), free_port()];
    let start_hub = |name: &str, port: u16| {
        processes::start_elected_hub(&database, &dir.join(name), (port, free_port()), 2, "")
    };
    let mut hubs = vec![start_hub("a", ports[0])];
    let (first, term) = leader_among(&client, &ports[..1], "the first hub leads").await;
    assert_eq!((first, term), (ports[0], 1));
    let token = std::fs::read_to_string(dir.join("a").join("admin-token")).expect("admin token");
    let token = token.trim().to_owned();
    for (name, port) in [("b", ports[1]), ("c", ports[2])] {
        hubs.push(start_hub(name, port));
    }
    for port in &ports[1..] {
        let lead = wait_for(Duration::from_secs(30), "a follower answers", || {
            leadership(&client, *port)
        })
        .await;
        assert_eq!(lead["leading"], false, "{lead}");
        assert_eq!(lead["mode"], "elected", "{lead}");
    }
    for port in &ports[1..] {
        wait_for(
            Duration::from_secs(10),
            "followers know the leader",
            || async {
                let lead = leadership(&client, *port).await?;
                (lead["leader_url"] == format!("http://127.0.0.1:{}", ports[0])).then_some(())
            },
        )
        .await;
    }

    // A change through a follower is made by the leader and seen everywhere.
    assert_eq!(
        create_user(&client, ports[1], &token, "through-b").await,
        201
    );
    let listed = users(&client, ports[2], &token).await;
    assert!(listed.contains("through-b"), "{listed}");

    // 30 changes at once through the followers; the leader is killed while they run.
    let changes: Vec<_> = (0..30)
        .map(|number| {
            let (client, token) = (client.clone(), token.clone());
            let port = ports[1 + number % 2];
            tokio::spawn(async move {
                let name = format!("during-{number}");
                create_user(&client, port, &token, &name).await;
                name
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(30)).await;
    hubs[0].kill();
    let mut acknowledged = Vec::new();
    for change in changes {
        acknowledged.push(change.await.expect("a change"));
    }
    let (second, term) = leader_among(&client, &ports[1..], "a follower leads").await;
    assert_eq!(term, 2, "one takeover, one new term");
    let text = users(&client, second, &token).await;
    for name in &acknowledged {
        assert_eq!(
            text.matches(&format!("\"{name}\"")).count(),
            1,
            "{name} acknowledged, so there once: {text}"
        );
    }

    // The new leader paused past its lease: the other follower takes over; let go, the paused
    // one follows it, and changes through it reach the newest leader.
    let (paused, other) = if second == ports[1] {
        (&hubs[1], ports[2])
    } else {
        (&hubs[2], ports[1])
    };
    paused.pause_for(Duration::from_secs(5)).await;
    let (third, term) = leader_among(&client, &[other], "the other follower leads").await;
    assert_eq!((third, term), (other, 3));
    wait_for(
        Duration::from_secs(10),
        "the paused hub follows",
        || async {
            let lead = leadership(&client, second).await?;
            (lead["leading"] == false && lead["leader_url"] == format!("http://127.0.0.1:{third}"))
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        create_user(&client, second, &token, "after-pause").await,
        201
    );
    let log = std::fs::read_to_string(
        dir.join(if second == ports[1] { "b" } else { "c" })
            .join("hub.log"),
    )
    .unwrap_or_default();
    assert!(log.contains("This hub no longer leads."), "{log}");
}

#[tokio::test]
async fn hubs_started_together_on_an_empty_database_set_it_up_once() {
    let Some(database) = postgres_database("ha_together").await else {
        return;
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = fresh_dir("ha-together");
    let client = reqwest::Client::new();
    let ports = [free_port(), free_port(), free_port()];
    let _hubs: Vec<_> = ["a", "b", "c"]
        .iter()
        .zip(ports)
        .map(|(name, port)| {
            processes::start_elected_hub(&database, &dir.join(name), (port, free_port()), 2, "")
        })
        .collect();
    for port in ports {
        wait_for(Duration::from_secs(30), "every hub answers", || {
            leadership(&client, port)
        })
        .await;
    }
    // One hub made the first admin and wrote its token; the others found it made.
    let tokens: Vec<String> = ["a", "b", "c"]
        .iter()
        .filter_map(|name| std::fs::read_to_string(dir.join(name).join("admin-token")).ok())
        .collect();
    assert_eq!(tokens.len(), 1, "one first admin");
    let listed: Value =
        serde_json::from_str(&users(&client, ports[0], tokens[0].trim()).await).expect("users");
    let names: Vec<&str> = listed
        .as_array()
        .expect("users")
        .iter()
        .filter_map(|user| user["name"].as_str())
        .collect();
    assert_eq!(names, ["admin"], "{listed}");
    // And one identity, which every container of these hubs is labelled with.
    let store = berth_store::Store::connect(&database).await.expect("store");
    let mut connection = store.acquire().await.expect("connection");
    let identities: Vec<(String,)> = sqlx::query_as("SELECT id FROM hub_identity")
        .fetch_all(&mut *connection)
        .await
        .expect("identities");
    assert_eq!(identities.len(), 1, "{identities:?}");
}
