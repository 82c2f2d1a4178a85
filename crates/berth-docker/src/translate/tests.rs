//! Tests for the spec → Docker translation, including GPU containers that cannot run here.

use berth_core::ContainerSpec;
use serde_json::json;

use super::*;

fn spec(value: serde_json::Value) -> ContainerSpec {
    ContainerSpec::from_json_value(value).expect("valid spec")
}

fn host(body: &ContainerCreateBody) -> &HostConfig {
    body.host_config.as_ref().expect("host config")
}

fn env_of(body: &ContainerCreateBody) -> Vec<String> {
    body.env.clone().unwrap_or_default()
}

#[test]
fn resources_ports_and_restart_translate() {
    let body = create_body(
        &spec(json!({
            "name": "web", "image": "img:1", "command": "python app.py --port 7860",
            "working_dir": "/app", "environment": {"A": "1"},
            "ports": {"7860/tcp": 7860, "9000": null}, "memory_limit": "2GB", "cpu_limit": 1.5,
            "restart_policy": "on-failure:4", "labels": {"team": "geo"}
        })),
        GpuMode::Nvidia,
        true,
    )
    .expect("translates");
    let host = host(&body);
    assert_eq!(host.memory, Some(2 * 1024 * 1024 * 1024));
    assert_eq!(host.nano_cpus, Some(1_500_000_000));
    let policy = host.restart_policy.as_ref().expect("policy");
    assert_eq!(policy.name, Some(RestartPolicyNameEnum::ON_FAILURE));
    assert_eq!(policy.maximum_retry_count, Some(4));
    let bindings = host.port_bindings.as_ref().expect("bindings");
    let fixed = bindings["7860/tcp"].as_ref().expect("fixed");
    assert_eq!(fixed[0].host_port.as_deref(), Some("7860"));
    let auto = bindings["9000/tcp"].as_ref().expect("auto");
    assert_eq!(auto[0].host_port.as_deref(), Some(""));
    assert_eq!(
        body.cmd,
        Some(vec![
            "python".into(),
            "app.py".into(),
            "--port".into(),
            "7860".into()
        ])
    );
    assert_eq!(body.working_dir.as_deref(), Some("/app"));
    assert_eq!(env_of(&body), vec!["A=1".to_owned()]);
    let labels = body.labels.as_ref().expect("labels");
    assert_eq!(labels.get("team").map(String::as_str), Some("geo"));
    assert_eq!(labels.get(LABEL_MANAGED).map(String::as_str), Some("true"));
    assert!(host.device_requests.is_none());
    assert!(host.storage_opt.is_none());
}

#[test]
fn disks_become_a_storage_option_and_a_data_volume() {
    let disks = spec(
        json!({"name": "vm1", "image": "img", "system_disk": "20g", "data_disk": "100GB",
        "volumes": {"/srv/in": "/in:ro", "cache": "/cache"}}),
    );
    let body = create_body(&disks, GpuMode::Nvidia, true).expect("translates");
    let storage = host(&body).storage_opt.as_ref().expect("storage opt");
    assert_eq!(storage.get("size").map(String::as_str), Some("20g"));
    let binds = host(&body).binds.clone().expect("binds");
    assert!(binds.contains(&"/srv/in:/in:ro".to_owned()), "{binds:?}");
    assert!(binds.contains(&"cache:/cache:rw".to_owned()), "{binds:?}");
    assert!(binds.contains(&"vm1-data:/data:rw".to_owned()), "{binds:?}");
    let labels = body.labels.as_ref().expect("labels");
    assert_eq!(
        labels.get(LABEL_DATA_VOLUME).map(String::as_str),
        Some("vm1-data")
    );

    let retried = create_body(&disks, GpuMode::Nvidia, false).expect("translates");
    assert!(host(&retried).storage_opt.is_none());
}

#[test]
fn whole_gpus_request_the_nvidia_driver() {
    let by_count = create_body(
        &spec(json!({"name": "g", "image": "i", "gpus": 2})),
        GpuMode::Nvidia,
        true,
    )
    .expect("translates");
    let request = &host(&by_count)
        .device_requests
        .as_ref()
        .expect("device requests")[0];
    assert_eq!(request.driver.as_deref(), Some("nvidia"));
    assert_eq!(request.count, Some(2));
    assert_eq!(request.capabilities, Some(vec![vec!["gpu".to_owned()]]));

    let by_index = create_body(
        &spec(json!({"name": "g", "image": "i", "gpus": [1, 3]})),
        GpuMode::Nvidia,
        true,
    )
    .expect("translates");
    let request = &host(&by_index)
        .device_requests
        .as_ref()
        .expect("device requests")[0];
    assert_eq!(
        request.device_ids,
        Some(vec!["1".to_owned(), "3".to_owned()])
    );
    assert_eq!(request.count, None);

    let all = create_body(
        &spec(json!({"name": "g", "image": "i", "gpus": "all"})),
        GpuMode::Nvidia,
        true,
    )
    .expect("translates");
    assert_eq!(
        host(&all).device_requests.as_ref().expect("requests")[0].count,
        Some(-1)
    );
}

#[test]
fn a_gpu_share_adds_hami_core() {
    let shared = spec(
        json!({"name": "s", "image": "i", "gpus": [2], "environment": {"LD_PRELOAD": "user.so"},
        "gpu_share": {"memory_gb": 8, "gpu_memory_gb": 24, "hami_core_dir": "/opt/hami/build"}}),
    );
    let body = create_body(&shared, GpuMode::Nvidia, true).expect("translates");
    let env = env_of(&body);
    assert!(
        env.contains(&"LD_PRELOAD=/libvgpu/build/libvgpu.so".to_owned()),
        "{env:?}"
    );
    assert!(!env.contains(&"LD_PRELOAD=user.so".to_owned()), "{env:?}");
    assert!(
        env.contains(&"CUDA_DEVICE_MEMORY_LIMIT=8g".to_owned()),
        "{env:?}"
    );
    assert!(
        env.contains(&"CUDA_DEVICE_SM_LIMIT=34".to_owned()),
        "{env:?}"
    );
    let binds = host(&body).binds.clone().expect("binds");
    assert!(
        binds.contains(&"/opt/hami/build:/libvgpu/build:ro".to_owned()),
        "{binds:?}"
    );
    let request = &host(&body)
        .device_requests
        .as_ref()
        .expect("device requests")[0];
    assert_eq!(request.device_ids, Some(vec!["2".to_owned()]));

    let default_dir = spec(json!({"name": "s", "image": "i", "gpu_share": {"memory_gb": 4}}));
    let body = create_body(&default_dir, GpuMode::Nvidia, true).expect("translates");
    let binds = host(&body).binds.clone().expect("binds");
    assert_eq!(
        binds,
        vec!["/root/HAMi-core/build:/libvgpu/build:ro".to_owned()]
    );
    assert_eq!(
        host(&body).device_requests.as_ref().expect("requests")[0].count,
        Some(1)
    );
    assert!(env_of(&body).contains(&"CUDA_DEVICE_SM_LIMIT=100".to_owned()));
}

#[test]
fn simulated_gpus_keep_the_environment_without_devices() {
    let shared = spec(json!({"name": "s", "image": "i", "gpus": [1],
        "gpu_share": {"memory_gb": 6, "gpu_memory_gb": 24}}));
    let body = create_body(&shared, GpuMode::Simulated, true).expect("translates");
    assert!(host(&body).device_requests.is_none());
    assert!(host(&body).binds.is_none());
    let env = env_of(&body);
    assert!(
        env.contains(&"NVIDIA_VISIBLE_DEVICES=1".to_owned()),
        "{env:?}"
    );
    assert!(
        env.contains(&"CUDA_DEVICE_MEMORY_LIMIT=6g".to_owned()),
        "{env:?}"
    );
    assert!(
        env.contains(&"CUDA_DEVICE_SM_LIMIT=25".to_owned()),
        "{env:?}"
    );
}
