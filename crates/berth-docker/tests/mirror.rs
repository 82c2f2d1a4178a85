//! The container mirror against the real engine: it lists what is there, follows creates,
//! starts, kills and removals from the event stream in order, lets a subscriber resume from a
//! sequence number, finds nothing on its periodic re-list, and after its event stream is cut
//! (a relay in front of the engine drops every connection) lists again and catches up with what
//! happened meanwhile.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use berth_core::ContainerSpec;
use berth_docker::mirror::{self, ContainerMirror, MirrorChange};
use berth_docker::{DockerDriver, DockerEndpoint};
use serde_json::json;
use support::{TEST_IMAGE, TEST_LABEL, driver, eventually, unique_name, with_cleanup};
use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, UnixStream};
use tokio::sync::watch;

const FOREVER: &str = "trap 'exit 0' TERM; while true; do sleep 0.2; done";

fn spec(name: &str, test: &str) -> ContainerSpec {
    ContainerSpec::from_json_value(json!({
        "name": name, "image": TEST_IMAGE, "command": ["sh", "-c", FOREVER],
        "ports": {"8080/tcp": null}, "labels": {TEST_LABEL: test},
    }))
    .expect("valid spec")
}

fn state_of(mirror: &ContainerMirror, name: &str) -> Option<String> {
    mirror
        .get(name)
        .and_then(|container| container.state.as_ref()?.status)
        .map(|status| status.to_string())
}

/// The actions recorded for container `id`, in order.
fn actions_for(changes: &[MirrorChange], id: &str) -> Vec<String> {
    changes
        .iter()
        .filter(|change| change.id == id)
        .map(|change| change.action.clone())
        .collect()
}

#[tokio::test]
async fn the_mirror_follows_the_engine_in_order_and_resumes_from_a_sequence_number() {
    let Some(driver) = driver().await else { return };
    let driver = Arc::new(driver);
    let test = format!("mirror-{}", std::process::id());
    let (before, during) = (unique_name("mirror-before"), unique_name("mirror-during"));
    let names = [before.as_str(), during.as_str()];
    with_cleanup(&driver, &names, async {
        driver
            .create(&spec(&before, &test), &mut |_| {})
            .await
            .expect("create before");
        let mirror = ContainerMirror::new(format!("{TEST_LABEL}={test}"));
        let follower = tokio::spawn(mirror::follow(
            Arc::clone(&driver),
            Arc::clone(&mirror),
            Duration::from_secs(1),
            Duration::from_millis(200),
        ));
        eventually(10, || async { mirror.is_synced().then_some(()) })
            .await
            .expect("synced");
        assert_eq!(state_of(&mirror, &before).as_deref(), Some("created"));
        let listed_at = mirror.seq();
        let mut changes = mirror.subscribe();

        let created = driver
            .create(&spec(&during, &test), &mut |_| {})
            .await
            .expect("create during");
        driver.start(&during).await.expect("start");
        let running = eventually(10, || async {
            let container = mirror.get(&during)?;
            let port = container
                .network_settings
                .as_ref()?
                .ports
                .as_ref()?
                .get("8080/tcp")?
                .as_ref()?
                .first()?
                .host_port
                .clone()?;
            (state_of(&mirror, &during).as_deref() == Some("running")).then_some(port)
        })
        .await;
        assert!(running.is_some(), "the mirror saw the start and its port");
        driver.stop(&during, 0).await.expect("stop");
        eventually(10, || async {
            let container = mirror.get(&during)?;
            let state = container.state.as_ref()?;
            (state.status?.to_string() == "exited").then_some(state.exit_code)
        })
        .await
        .expect("the mirror saw the stop");
        driver
            .remove(
                &during,
                berth_docker::RemoveOptions {
                    force: true,
                    keep_data: false,
                },
            )
            .await
            .expect("remove");
        eventually(10, || async {
            mirror.get(&created.id).is_none().then_some(())
        })
        .await
        .expect("the mirror saw the removal");

        // The subscriber saw the container's life in the engine's order, numbered in order.
        let mut seen = Vec::new();
        while let Ok(change) = changes.try_recv() {
            seen.push(change);
        }
        assert!(seen.windows(2).all(|pair| pair[1].seq == pair[0].seq + 1));
        let actions = actions_for(&seen, &created.id);
        let position = |action: &str| {
            actions
                .iter()
                .position(|seen| seen == action)
                .unwrap_or_else(|| panic!("no {action} in {actions:?}"))
        };
        assert!(position("create") < position("start"), "{actions:?}");
        assert!(position("start") < position("die"), "{actions:?}");
        assert_eq!(actions.last().map(String::as_str), Some("destroy"));
        assert!(
            seen.last().is_some_and(|change| change.container.is_none()),
            "a destroy carries no container"
        );

        // A subscriber that stopped at the list resumes with exactly what followed.
        let resumed = mirror.since(listed_at).expect("still journaled");
        assert_eq!(
            resumed.iter().map(|change| change.seq).collect::<Vec<_>>(),
            seen.iter().map(|change| change.seq).collect::<Vec<_>>()
        );
        assert!(
            mirror.since(mirror.seq() + 5).is_none(),
            "a future number is a gap"
        );

        // The periodic re-list (every second here) found nothing the events had not said.
        tokio::time::sleep(Duration::from_millis(3500)).await;
        assert_eq!(mirror.differences_found(), 0);
        follower.abort();
    })
    .await;
}

/// A TCP relay to the engine's socket; while `down` is true it drops every connection, open
/// or new.
async fn cuttable_relay() -> (String, watch::Sender<bool>) {
    let socket = std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|host| host.strip_prefix("unix://").map(str::to_owned))
        .unwrap_or_else(|| "/var/run/docker.sock".to_owned());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let (down, watching) = watch::channel(false);
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            if *watching.borrow() {
                continue;
            }
            let (socket, mut watching) = (socket.clone(), watching.clone());
            tokio::spawn(async move {
                let Ok(mut engine) = UnixStream::connect(&socket).await else {
                    return;
                };
                tokio::select! {
                    _ = copy_bidirectional(&mut client, &mut engine) => {}
                    _ = watching.wait_for(|down| *down) => {}
                }
            });
        }
    });
    (format!("tcp://{address}"), down)
}

#[tokio::test]
async fn a_cut_event_stream_is_followed_by_a_relist_that_catches_up() {
    let Some(direct) = driver().await else { return };
    let (address, down) = cuttable_relay().await;
    let relayed = DockerDriver::connect(&DockerEndpoint {
        timeout_secs: 5,
        ..DockerEndpoint::plain(&address)
    })
    .await
    .expect("relayed driver");
    let test = format!("mirror-cut-{}", std::process::id());
    let (first, meanwhile) = (unique_name("cut-first"), unique_name("cut-meanwhile"));
    let names = [first.as_str(), meanwhile.as_str()];
    with_cleanup(&direct, &names, async {
        let mirror = ContainerMirror::new(format!("{TEST_LABEL}={test}"));
        let follower = tokio::spawn(mirror::follow(
            Arc::new(relayed),
            Arc::clone(&mirror),
            Duration::from_secs(3600),
            Duration::from_millis(200),
        ));
        eventually(10, || async { mirror.is_synced().then_some(()) })
            .await
            .expect("synced");
        direct
            .create(&spec(&first, &test), &mut |_| {})
            .await
            .expect("create first");
        eventually(10, || async { mirror.get(&first).map(|_| ()) })
            .await
            .expect("first seen through the stream");

        down.send_replace(true);
        eventually(10, || async { (!mirror.is_synced()).then_some(()) })
            .await
            .expect("the mirror noticed the cut");
        // While the stream is cut: one container started, another created.
        direct.start(&first).await.expect("start first");
        let made = direct
            .create(&spec(&meanwhile, &test), &mut |_| {})
            .await
            .expect("create meanwhile");
        assert!(mirror.get(&meanwhile).is_none(), "not seen while cut");
        down.send_replace(false);

        eventually(15, || async {
            (mirror.is_synced()
                && state_of(&mirror, &first).as_deref() == Some("running")
                && mirror.get(&made.id).is_some())
            .then_some(())
        })
        .await
        .expect("the re-list caught up");
        let resyncs: HashMap<String, usize> = mirror
            .since(0)
            .expect("journal")
            .into_iter()
            .filter(|change| change.action == "resync")
            .fold(HashMap::new(), |mut counts, change| {
                *counts.entry(change.id).or_default() += 1;
                counts
            });
        assert_eq!(resyncs.get(&made.id), Some(&1), "{resyncs:?}");
        assert_eq!(
            mirror.differences_found(),
            0,
            "a re-list after a cut is not a periodic difference"
        );
        follower.abort();
    })
    .await;
}
