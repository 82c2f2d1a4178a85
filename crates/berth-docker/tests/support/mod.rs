//! Shared set-up for tests against the real Docker engine: the driver, the test image, unique
//! names, labels that make leftovers findable, and clean-up that runs even when a test fails.

#![allow(dead_code)]

use std::future::Future;
use std::panic::AssertUnwindSafe;

use berth_docker::{DockerDriver, DockerEndpoint, RemoveOptions};
use futures_util::FutureExt;

/// The image every engine test uses; `scripts/build-test-image` builds it.
pub const TEST_IMAGE: &str = "berth-test/busybox:latest";
/// Label on everything the tests create.
pub const TEST_LABEL: &str = "berth.test";

/// Connects to the local engine. Fails the test when the engine is unreachable, unless
/// `BERTH_SKIP_DOCKER_TESTS` is set outside CI, in which case it returns `None`.
pub async fn driver() -> Option<DockerDriver> {
    let endpoint = DockerEndpoint::from_docker_host_env();
    match DockerDriver::connect(&endpoint).await {
        Ok(driver) => {
            let present = driver.image_exists(TEST_IMAGE).await.expect("image lookup");
            assert!(
                present,
                "{TEST_IMAGE} is missing: run scripts/build-test-image"
            );
            Some(driver)
        }
        Err(err)
            if std::env::var_os("BERTH_SKIP_DOCKER_TESTS").is_some()
                && std::env::var_os("CI").is_none() =>
        {
            eprintln!("skipping: Docker unreachable ({err})");
            None
        }
        Err(err) => panic!(
            "Docker engine unreachable ({err}); set BERTH_SKIP_DOCKER_TESTS=1 to skip outside CI"
        ),
    }
}

/// A container name unique to this test process and `test`.
pub fn unique_name(test: &str) -> String {
    format!("berth-it-{}-{test}", std::process::id())
}

/// The labels every test container carries.
pub fn test_labels(test: &str) -> serde_json::Value {
    serde_json::json!({ TEST_LABEL: test })
}

/// Runs `body`, then removes (forcefully, with data volumes) every container named in `names`,
/// whether the body passed or panicked, and re-raises a panic.
pub async fn with_cleanup<F>(driver: &DockerDriver, names: &[&str], body: F)
where
    F: Future<Output = ()>,
{
    let outcome = AssertUnwindSafe(body).catch_unwind().await;
    for name in names {
        let removed = driver
            .remove(
                name,
                RemoveOptions {
                    force: true,
                    keep_data: false,
                },
            )
            .await;
        if let Err(err) = removed {
            eprintln!("clean-up of {name} failed: {err}");
        }
    }
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// Polls `check` every 100 ms until it returns `Some`, for at most `seconds`.
pub async fn eventually<T, F, Fut>(seconds: u64, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    while std::time::Instant::now() < deadline {
        if let Some(value) = check().await {
            return Some(value);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    None
}

/// A TCP port that was free a moment ago on all interfaces.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("0.0.0.0:0").expect("bind");
    listener.local_addr().expect("addr").port()
}
