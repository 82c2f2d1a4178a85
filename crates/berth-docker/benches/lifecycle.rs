//! Create + start + remove of the test container through the driver, against `docker run -d` +
//! `docker rm -f` of the same image, in the same run. Prints the median, minimum and maximum of
//! each. Run with `cargo bench -p berth-docker --bench lifecycle` (`BERTH_BENCH_ROUNDS` sets the
//! number of rounds, default 20). The CLI appears here only as the yardstick.

use std::process::Command;
use std::time::{Duration, Instant};

use berth_core::ContainerSpec;
use berth_docker::{DockerDriver, DockerEndpoint, RemoveOptions};

const IMAGE: &str = "berth-test/busybox:latest";

fn summary(label: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let millis = |duration: Duration| duration.as_secs_f64() * 1000.0;
    let median = millis(samples[samples.len() / 2]);
    let min = millis(samples[0]);
    let max = millis(samples[samples.len() - 1]);
    println!(
        "{label:<44} median {median:7.1} ms   min {min:7.1} ms   max {max:7.1} ms   n={}",
        samples.len()
    );
}

fn docker_cli(args: &[&str]) {
    let status = Command::new("docker")
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("docker CLI");
    assert!(status.success(), "docker {args:?} failed");
}

#[tokio::main]
async fn main() {
    if !std::env::args().any(|arg| arg == "--bench") {
        println!(
            "lifecycle benchmark: built; run it with `cargo bench -p berth-docker --bench lifecycle`"
        );
        return;
    }
    let rounds: usize = std::env::var("BERTH_BENCH_ROUNDS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(20);
    let driver = DockerDriver::connect(&DockerEndpoint::from_docker_host_env())
        .await
        .expect("Docker engine");
    assert!(
        driver.image_exists(IMAGE).await.expect("image lookup"),
        "run scripts/build-test-image first"
    );

    let mut through_driver = Vec::with_capacity(rounds);
    let mut through_cli = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let name = format!("berth-bench-{}-{round}", std::process::id());
        let spec = ContainerSpec::from_json_value(serde_json::json!({
            "name": name, "image": IMAGE, "command": ["sleep", "300"], "labels": {"berth.test": "bench"}
        }))
        .expect("spec");
        let started = Instant::now();
        driver.create(&spec, &mut |_| {}).await.expect("create");
        driver.start(&name).await.expect("start");
        driver
            .remove(
                &name,
                RemoveOptions {
                    force: true,
                    keep_data: false,
                },
            )
            .await
            .expect("remove");
        through_driver.push(started.elapsed());

        let cli_name = format!("{name}-cli");
        let started = Instant::now();
        docker_cli(&[
            "run",
            "-d",
            "--name",
            &cli_name,
            "--label",
            "berth.test=bench",
            IMAGE,
            "sleep",
            "300",
        ]);
        docker_cli(&["rm", "-f", &cli_name]);
        through_cli.push(started.elapsed());
    }
    summary("driver: create + start + remove", through_driver);
    summary("docker CLI: run -d + rm -f", through_cli);
}
