//! Tests of the Docker driver against the real engine, with the local test image only.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use berth_core::ContainerSpec;
use berth_core::gpu::{GpuDeviceUsage, GpuUsageSource};
use berth_docker::{
    DockerDriver, DockerEndpoint, DriverError, GpuMode, HostGpuView, LogQuery, RemoveOptions,
    Transition,
};
use futures_util::StreamExt;
use serde_json::json;
use support::{TEST_IMAGE, driver, eventually, free_port, test_labels, unique_name, with_cleanup};

fn spec(value: serde_json::Value) -> ContainerSpec {
    ContainerSpec::from_json_value(value).expect("valid spec")
}

fn no_progress() -> impl FnMut(berth_docker::PullProgress) + Send {
    |_| {}
}

const FOREVER: &str = "trap 'exit 0' TERM; while true; do sleep 0.2; done";

#[tokio::test]
async fn every_spec_field_reaches_the_engine() {
    let Some(driver) = driver().await else { return };
    let name = unique_name("fields");
    let host_dir = std::env::temp_dir().join(format!("{name}-bind"));
    std::fs::create_dir_all(&host_dir).expect("bind dir");
    let fixed_port = free_port();
    let named_volume = format!("{name}-cache");
    let container = spec(json!({
        "name": name, "image": TEST_IMAGE,
        "command": ["sh", "-c", FOREVER],
        "working_dir": "/work/app",
        "environment": {"MODEL_ID": "m-1", "GRADIO_SERVER_PORT": "7860"},
        "ports": {"7860/tcp": fixed_port, "9000/tcp": null},
        "volumes": {host_dir.to_str().expect("utf-8"): "/in:ro", named_volume.clone(): "/cache"},
        "memory_limit": "64m", "cpu_limit": 0.5, "restart_policy": "on-failure:3",
        "labels": test_labels("fields"), "system_disk": "1g", "data_disk": "1g"
    }));
    let cleanup_names = [name.as_str()];
    with_cleanup(&driver, &cleanup_names, async {
        let created = driver
            .create(&container, &mut no_progress())
            .await
            .expect("create");
        assert_eq!(created.id.len(), 64);
        if !created.system_disk_applied {
            assert!(
                created
                    .warnings
                    .iter()
                    .any(|warning| warning.contains("system disk")),
                "{:?}",
                created.warnings
            );
        }

        let raw = driver.inspect_raw(&name).await.expect("inspect");
        let host = raw.host_config.clone().expect("host config");
        let config = raw.config.clone().expect("config");
        assert_eq!(host.nano_cpus, Some(500_000_000));
        assert_eq!(host.memory, Some(64 * 1024 * 1024));
        let policy = host.restart_policy.expect("restart policy");
        assert_eq!(
            policy.name.map(|name| name.to_string()),
            Some("on-failure".to_owned())
        );
        assert_eq!(policy.maximum_retry_count, Some(3));
        let bindings = host.port_bindings.expect("port bindings");
        let fixed = bindings["7860/tcp"].clone().expect("fixed binding");
        assert_eq!(fixed[0].host_port, Some(fixed_port.to_string()));
        assert_eq!(config.working_dir.as_deref(), Some("/work/app"));
        assert_eq!(
            config.cmd,
            Some(vec!["sh".into(), "-c".into(), FOREVER.into()])
        );
        let env = config.env.expect("env");
        assert!(env.contains(&"MODEL_ID=m-1".to_owned()), "{env:?}");
        assert!(
            env.contains(&"GRADIO_SERVER_PORT=7860".to_owned()),
            "{env:?}"
        );
        let labels = config.labels.expect("labels");
        assert_eq!(labels.get("berth.test").map(String::as_str), Some("fields"));
        assert_eq!(
            labels.get("berth.managed").map(String::as_str),
            Some("true")
        );
        assert_eq!(
            labels.get("berth.data-volume"),
            Some(&format!("{name}-data"))
        );
        if created.system_disk_applied {
            let storage = host.storage_opt.expect("storage opt");
            assert_eq!(storage.get("size").map(String::as_str), Some("1g"));
        } else {
            assert!(host.storage_opt.is_none_or(|options| options.is_empty()));
        }

        let mounts: HashMap<String, (String, bool)> = raw
            .mounts
            .expect("mounts")
            .into_iter()
            .map(|mount| {
                let source = mount.name.or(mount.source).unwrap_or_default();
                (
                    mount.destination.unwrap_or_default(),
                    (source, mount.rw.unwrap_or(false)),
                )
            })
            .collect();
        assert_eq!(
            mounts.get("/in"),
            Some(&(host_dir.to_string_lossy().into_owned(), false))
        );
        assert_eq!(mounts.get("/cache"), Some(&(named_volume.clone(), true)));
        assert_eq!(mounts.get("/data"), Some(&(format!("{name}-data"), true)));

        assert_eq!(
            driver.start(&name).await.expect("start"),
            Transition::Changed
        );
        let details = driver.inspect(&name).await.expect("inspect");
        assert_eq!(details.status, "running");
        assert_eq!(details.ports.get("7860/tcp"), Some(&fixed_port));
        let auto = details
            .ports
            .get("9000/tcp")
            .copied()
            .expect("auto-assigned port reported");
        assert_ne!(auto, 0);
        let pwd = driver.exec(&name, &["pwd"]).await.expect("exec");
        assert_eq!(pwd.stdout.trim(), "/work/app");
        assert_eq!(pwd.exit_code, Some(0));

        let outcome = driver
            .remove(
                &name,
                RemoveOptions {
                    force: true,
                    keep_data: false,
                },
            )
            .await
            .expect("remove");
        assert!(
            outcome.container_removed && outcome.data_volume_removed,
            "{outcome:?}"
        );
        let engine = bollard::Docker::connect_with_unix_defaults().expect("bollard");
        assert!(
            engine
                .inspect_volume(&format!("{name}-data"))
                .await
                .is_err(),
            "data volume left behind"
        );
        engine
            .remove_volume(
                &named_volume,
                None::<bollard::query_parameters::RemoveVolumeOptions>,
            )
            .await
            .expect("remove named volume");
    })
    .await;
    std::fs::remove_dir_all(&host_dir).ok();
}

#[tokio::test]
async fn the_whole_lifecycle_is_idempotent() {
    let Some(driver) = driver().await else { return };
    let name = unique_name("lifecycle");
    let container = spec(
        json!({"name": name, "image": TEST_IMAGE, "command": ["sh", "-c", FOREVER],
        "labels": test_labels("lifecycle"), "data_disk": "1g"}),
    );
    let cleanup_names = [name.as_str()];
    with_cleanup(&driver, &cleanup_names, async {
        let created = driver
            .create(&container, &mut no_progress())
            .await
            .expect("create");
        assert_eq!(driver.inspect(&created.id).await.expect("by id").name, name);
        assert_eq!(
            driver
                .inspect(&created.id[..12])
                .await
                .expect("by prefix")
                .id,
            created.id
        );
        assert_eq!(
            driver.inspect(&name).await.expect("by name").status,
            "created"
        );

        assert_eq!(
            driver.start(&name).await.expect("start"),
            Transition::Changed
        );
        assert_eq!(
            driver.start(&name).await.expect("start again"),
            Transition::AlreadyThere
        );
        let running = driver.inspect(&name).await.expect("inspect");
        assert_eq!(running.status, "running");
        let usage = driver.gpu_usage(&name).await.expect("gpu usage");
        assert_eq!(usage, None, "a container without GPUs has no GPU usage");
        assert!(running.started_at.is_some());
        assert!(running.finished_at.is_none());

        assert_eq!(
            driver.stop(&name, 5).await.expect("stop"),
            Transition::Changed
        );
        let stopped = driver.inspect(&name).await.expect("inspect");
        assert_eq!(stopped.status, "exited");
        assert_eq!(stopped.exit_code, Some(0), "the TERM trap exits 0");
        assert!(!stopped.oom_killed);
        assert!(stopped.finished_at.is_some());
        assert_eq!(
            driver.stop(&name, 5).await.expect("stop again"),
            Transition::AlreadyThere
        );

        driver.restart(&name, 5).await.expect("restart");
        assert_eq!(
            driver.inspect(&name).await.expect("inspect").status,
            "running"
        );

        let listed = driver
            .list(&["berth.test=lifecycle"], false)
            .await
            .expect("list");
        assert!(
            listed
                .iter()
                .any(|summary| summary.name == name && summary.state == "running"),
            "{listed:?}"
        );

        let refused = driver
            .remove(
                &name,
                RemoveOptions {
                    force: false,
                    keep_data: true,
                },
            )
            .await;
        assert!(
            matches!(refused, Err(DriverError::Engine { status: 409, .. })),
            "{refused:?}"
        );
        let kept = driver
            .remove(
                &name,
                RemoveOptions {
                    force: true,
                    keep_data: true,
                },
            )
            .await
            .expect("remove");
        assert!(kept.container_removed && !kept.data_volume_removed);
        let again = driver
            .remove(
                &name,
                RemoveOptions {
                    force: true,
                    keep_data: false,
                },
            )
            .await
            .expect("remove again");
        assert!(!again.container_removed);
        assert!(matches!(
            driver.inspect(&name).await,
            Err(DriverError::ContainerNotFound { .. })
        ));
        assert!(matches!(
            driver.start(&name).await,
            Err(DriverError::ContainerNotFound { .. })
        ));
        let engine = bollard::Docker::connect_with_unix_defaults().expect("bollard");
        engine
            .remove_volume(
                &format!("{name}-data"),
                None::<bollard::query_parameters::RemoveVolumeOptions>,
            )
            .await
            .expect("the kept data volume exists");
    })
    .await;
}

#[tokio::test]
async fn logs_and_stats_of_a_busy_container() {
    let Some(driver) = driver().await else { return };
    let name = unique_name("busy");
    // stderr first, then a pause: the engine reads the two pipes separately, so only writes apart
    // in time have a fixed order in the log.
    let script = "echo oops >&2; sleep 0.5; i=0; while [ $i -lt 5 ]; do echo line-$i; i=$((i+1)); done; while :; do :; done";
    let container = spec(
        json!({"name": name, "image": TEST_IMAGE, "command": ["sh", "-c", script],
        "memory_limit": "32m", "cpu_limit": 1, "labels": test_labels("busy")}),
    );
    let cleanup_names = [name.as_str()];
    with_cleanup(&driver, &cleanup_names, async {
        driver
            .create(&container, &mut no_progress())
            .await
            .expect("create");
        driver.start(&name).await.expect("start");
        let all = eventually(10, || async {
            let text = driver.logs_text(&name, &LogQuery::default()).await.ok()?;
            text.contains("line-4").then_some(text)
        })
        .await
        .expect("logs appear");
        assert_eq!(all, "oops\nline-0\nline-1\nline-2\nline-3\nline-4\n");
        let chunks: Vec<_> = driver.logs(&name, &LogQuery::default()).collect().await;
        let first = chunks.first().expect("a chunk").as_ref().expect("readable");
        assert_eq!(
            (first.stream, first.text.as_str()),
            (berth_docker::LogStream::Stderr, "oops\n")
        );
        let tail = driver
            .logs_text(
                &name,
                &LogQuery {
                    tail: Some(2),
                    ..LogQuery::default()
                },
            )
            .await
            .expect("tail");
        assert_eq!(tail, "line-3\nline-4\n");
        let stamped = driver
            .logs_text(
                &name,
                &LogQuery {
                    tail: Some(1),
                    timestamps: true,
                    ..LogQuery::default()
                },
            )
            .await
            .expect("timestamps");
        assert!(
            stamped.starts_with("20") && stamped.contains('T'),
            "{stamped}"
        );
        let future = driver
            .logs_text(
                &name,
                &LogQuery {
                    since: Some(4_000_000_000),
                    ..LogQuery::default()
                },
            )
            .await
            .expect("since");
        assert!(future.is_empty(), "{future}");

        let first = driver.stats(&name).await.expect("stats");
        assert_eq!(
            first.cpu_percent, None,
            "the first sample has nothing to compare with"
        );
        assert_eq!(first.memory_limit_bytes, 32 * 1024 * 1024);
        assert!(first.memory_used_bytes > 0);
        assert!(first.pids >= 1);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let second = driver.stats(&name).await.expect("stats");
        let cpu = second.cpu_percent.expect("second sample has a CPU figure");
        let id = driver.inspect(&name).await.expect("inspect").id;
        let from_cgroup = driver.stats(&id).await.expect("stats by id");
        let from_engine = driver.stats(&name).await.expect("stats by name");
        assert_eq!(
            from_cgroup.memory_limit_bytes,
            from_engine.memory_limit_bytes
        );
        assert_eq!(from_cgroup.pids, from_engine.pids);
        assert_eq!(from_cgroup.online_cpus, from_engine.online_cpus);
        let difference = from_cgroup
            .memory_used_bytes
            .abs_diff(from_engine.memory_used_bytes);
        assert!(
            difference < 1024 * 1024,
            "memory {} vs {}",
            from_cgroup.memory_used_bytes,
            from_engine.memory_used_bytes
        );
        assert!(
            cpu > 30.0 && cpu < 150.0,
            "a busy loop limited to one core shows {cpu}%"
        );
    })
    .await;
}

#[tokio::test]
async fn follow_streams_new_lines() {
    let Some(driver) = driver().await else { return };
    let name = unique_name("follow");
    let script = "i=0; while true; do echo tick-$i; i=$((i+1)); sleep 0.2; done";
    let container = spec(
        json!({"name": name, "image": TEST_IMAGE, "command": ["sh", "-c", script],
        "labels": test_labels("follow")}),
    );
    let cleanup_names = [name.as_str()];
    with_cleanup(&driver, &cleanup_names, async {
        driver
            .create(&container, &mut no_progress())
            .await
            .expect("create");
        driver.start(&name).await.expect("start");
        let stream = driver.logs(
            &name,
            &LogQuery {
                follow: true,
                tail: Some(0),
                ..LogQuery::default()
            },
        );
        let chunks: Vec<_> =
            tokio::time::timeout(Duration::from_secs(10), stream.take(4).collect::<Vec<_>>())
                .await
                .expect("four lines arrive while following");
        let text: String = chunks
            .into_iter()
            .map(|chunk| chunk.expect("chunk").text)
            .collect();
        assert_eq!(text.matches("tick-").count(), 4, "{text}");
    })
    .await;
}

#[tokio::test]
async fn failures_come_back_typed() {
    let Some(driver) = driver().await else { return };
    let name = unique_name("errors");
    let other = unique_name("errors-port");
    let port = free_port();
    let first = spec(
        json!({"name": name, "image": TEST_IMAGE, "command": ["sh", "-c", FOREVER],
        "ports": {"80/tcp": port}, "labels": test_labels("errors")}),
    );
    let second = spec(
        json!({"name": other, "image": TEST_IMAGE, "command": ["sh", "-c", FOREVER],
        "ports": {"80/tcp": port}, "labels": test_labels("errors")}),
    );
    let cleanup_names = [name.as_str(), other.as_str()];
    with_cleanup(&driver, &cleanup_names, async {
        driver
            .create(&first, &mut no_progress())
            .await
            .expect("create");
        let conflict = driver.create(&first, &mut no_progress()).await;
        assert!(
            matches!(conflict, Err(DriverError::NameConflict { .. })),
            "{conflict:?}"
        );

        driver.start(&name).await.expect("start");
        driver
            .create(&second, &mut no_progress())
            .await
            .expect("create second");
        let busy = driver.start(&other).await;
        assert!(
            matches!(busy, Err(DriverError::PortInUse { .. })),
            "{busy:?}"
        );

        let absent =
            spec(json!({"name": unique_name("absent"), "image": "127.0.0.1:1/berth/absent:1"}));
        let mut steps = 0;
        let missing = driver.create(&absent, &mut |_| steps += 1).await;
        assert!(
            matches!(missing, Err(DriverError::ImageNotFound { .. })),
            "{missing:?}"
        );

        let mut invalid = first.clone();
        invalid.cpu_limit = Some(-1.0);
        let refused = driver.create(&invalid, &mut no_progress()).await;
        assert!(
            matches!(&refused, Err(DriverError::InvalidSpec(err)) if err.field == "cpu_limit"),
            "{refused:?}"
        );
    })
    .await;

    let unreachable =
        DockerDriver::connect(&DockerEndpoint::plain("unix:///nonexistent/docker.sock")).await;
    assert!(matches!(
        unreachable,
        Err(DriverError::EngineUnreachable { .. })
    ));
}

struct TwoHostGpus;

impl HostGpuView for TwoHostGpus {
    fn devices(&self) -> Vec<GpuDeviceUsage> {
        (0..2)
            .map(|index| GpuDeviceUsage {
                index: Some(index),
                memory_used_mib: Some(1000 * u64::from(index + 1)),
                memory_total_mib: 24576,
                utilization_percent: Some(10.0),
            })
            .collect()
    }
}

#[tokio::test]
async fn gpu_usage_walks_the_fallback_chain() {
    let Some(plain) = driver().await else { return };
    let endpoint = DockerEndpoint::from_docker_host_env();
    let simulated = DockerDriver::connect_with(&endpoint, GpuMode::Simulated, None)
        .await
        .expect("connect");
    let with_host_view =
        DockerDriver::connect_with(&endpoint, GpuMode::Simulated, Some(Arc::new(TwoHostGpus)))
            .await
            .expect("connect");
    let name = unique_name("gpu");
    let container = spec(
        json!({"name": name, "image": TEST_IMAGE, "command": ["sh", "-c", FOREVER],
        "gpus": [1], "gpu_share": {"memory_gb": 8, "gpu_memory_gb": 24}, "labels": test_labels("gpu")}),
    );
    let cleanup_names = [name.as_str()];
    with_cleanup(&plain, &cleanup_names, async {
        simulated.create(&container, &mut no_progress()).await.expect("create on a simulated GPU node");
        simulated.start(&name).await.expect("start");

        let host_view = with_host_view.gpu_usage(&name).await.expect("usage").expect("some usage");
        assert_eq!(host_view.source, GpuUsageSource::HostView);
        assert_eq!(host_view.devices.len(), 1);
        assert_eq!(host_view.devices[0].index, Some(1));
        assert_eq!(host_view.devices[0].memory_used_mib, Some(2000));

        let from_env = simulated.gpu_usage(&name).await.expect("usage").expect("some usage");
        assert_eq!(from_env.source, GpuUsageSource::EnvironmentLimit);
        assert_eq!(from_env.devices[0].memory_total_mib, 8192);

        let fake_smi = "mkdir -p /usr/local/bin && printf '#!/bin/sh\\necho \"1, 3000, 8192, 55\"\\n' \
            > /usr/local/bin/nvidia-smi && chmod +x /usr/local/bin/nvidia-smi";
        let installed = plain.exec(&name, &["sh", "-c", fake_smi]).await.expect("exec");
        assert_eq!(installed.exit_code, Some(0), "{installed:?}");
        let from_smi = plain.gpu_usage(&name).await.expect("usage").expect("some usage");
        assert_eq!(from_smi.source, GpuUsageSource::ContainerSmi);
        assert_eq!(from_smi.devices[0].memory_used_mib, Some(3000));
        assert_eq!(from_smi.devices[0].utilization_percent, Some(55.0));

        plain.exec(&name, &["rm", "/usr/local/bin/nvidia-smi"]).await.expect("exec");
        let cached = plain.gpu_usage(&name).await.expect("usage").expect("some usage");
        assert_eq!(cached.source, GpuUsageSource::ContainerSmi, "answers are cached for 30 s");
        let cached_env = simulated.gpu_usage(&name).await.expect("usage").expect("some usage");
        assert_eq!(cached_env.source, GpuUsageSource::EnvironmentLimit);
    })
    .await;
}
