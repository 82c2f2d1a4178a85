//! Tests for parsing and validating container specs.

use serde_json::json;

use super::*;

fn spec(value: serde_json::Value) -> Result<ContainerSpec, SpecError> {
    ContainerSpec::from_json_value(value)
}

fn error_of(value: serde_json::Value) -> SpecError {
    match spec(value) {
        Ok(spec) => panic!("expected an error, got {spec:?}"),
        Err(err) => err,
    }
}

fn minimal() -> serde_json::Value {
    json!({"name": "web", "image": "berth-test/busybox:latest"})
}

fn with(field: &str, value: serde_json::Value) -> serde_json::Value {
    let mut base = minimal();
    base[field] = value;
    base
}

#[test]
fn the_seed_example_parses() {
    let parsed = ContainerSpec::from_json(
        r#"{
          "name": "geoml-service-example",
          "image": "tensorflow/tensorflow:latest-gpu",
          "command": "python app.py",
          "working_dir": "/app",
          "environment": {"MODEL_ID": "my-model", "GRADIO_SERVER_PORT": "7860"},
          "ports": {"7860/tcp": 7860},
          "volumes": {"/host/data": "/app/data"},
          "memory_limit": "2GB",
          "cpu_limit": 2.0,
          "restart_policy": "unless-stopped"
        }"#,
    )
    .expect("seed example is valid");
    assert_eq!(parsed.memory_limit, Some(ByteSize::from_gib(2)));
    assert_eq!(
        parsed.ports.get(&ContainerPort::tcp(7860)),
        Some(&Some(7860))
    );
    assert_eq!(parsed.restart_policy, Some(RestartPolicy::UnlessStopped));
    assert_eq!(
        parsed.command.as_ref().map(|command| command.argv()),
        Some(Ok(vec!["python".to_owned(), "app.py".to_owned()]))
    );
    assert_eq!(
        parsed.mounts(),
        vec![Mount {
            source: MountSource::Bind("/host/data".into()),
            target: "/app/data".into(),
            read_only: false
        }]
    );
}

#[test]
fn command_splits_like_a_shell() {
    let parsed = spec(with("command", json!("sh -c 'echo a; echo b' \"x y\" z"))).expect("valid");
    let argv = parsed.command.expect("command").argv().expect("splits");
    assert_eq!(argv, ["sh", "-c", "echo a; echo b", "x y", "z"]);

    let parsed = spec(with("command", json!(["echo", "a b"]))).expect("valid");
    assert_eq!(
        parsed.command.expect("command").argv().expect("argv"),
        ["echo", "a b"]
    );
}

#[test]
fn ports_default_to_tcp_and_may_leave_the_host_port_open() {
    let parsed = spec(with(
        "ports",
        json!({"8080": null, "53/udp": 5353, "9000/tcp": 0}),
    ))
    .expect("valid");
    assert_eq!(parsed.ports.get(&ContainerPort::tcp(8080)), Some(&None));
    assert_eq!(parsed.ports.get(&ContainerPort::tcp(9000)), Some(&Some(0)));
    let udp = ContainerPort {
        port: 53,
        protocol: Protocol::Udp,
    };
    assert_eq!(parsed.ports.get(&udp), Some(&Some(5353)));
}

#[test]
fn volumes_know_binds_named_volumes_and_read_only() {
    let parsed = spec(with(
        "volumes",
        json!({
            "/srv/models": "/models:ro",
            "cache": {"target": "/cache", "read_only": false},
            "/srv/out": {"target": "/out", "read_only": true}
        }),
    ))
    .expect("valid");
    let mounts = parsed.mounts();
    assert_eq!(mounts.len(), 3);
    assert!(mounts.contains(&Mount {
        source: MountSource::Volume("cache".into()),
        target: "/cache".into(),
        read_only: false
    }));
    assert!(mounts.contains(&Mount {
        source: MountSource::Bind("/srv/models".into()),
        target: "/models".into(),
        read_only: true
    }));
    assert!(mounts.contains(&Mount {
        source: MountSource::Bind("/srv/out".into()),
        target: "/out".into(),
        read_only: true
    }));
}

#[test]
fn data_disk_adds_the_named_data_volume() {
    let parsed = spec(with("data_disk", json!("50g"))).expect("valid");
    assert_eq!(parsed.data_volume().as_deref(), Some("web-data"));
    assert_eq!(
        parsed.mounts(),
        vec![Mount {
            source: MountSource::Volume("web-data".into()),
            target: "/data".into(),
            read_only: false
        }]
    );
}

#[test]
fn restart_policies_round_trip() {
    for text in [
        "no",
        "always",
        "unless-stopped",
        "on-failure",
        "on-failure:3",
    ] {
        let policy: RestartPolicy = text.parse().expect("known policy");
        assert_eq!(policy.to_string(), text);
    }
    let err = error_of(with("restart_policy", json!("sometimes")));
    assert_eq!(err.field, "restart_policy");
    assert!(err.message.contains("sometimes"), "{err}");
}

#[test]
fn gpu_requests_take_counts_indices_and_all() {
    let count = spec(with("gpus", json!(2))).expect("count");
    assert_eq!(count.gpus, Some(GpuRequest::Count(2)));
    let devices = spec(with("gpus", json!([0, 3]))).expect("devices");
    assert_eq!(devices.gpus, Some(GpuRequest::Devices(vec![0, 3])));
    let all = spec(with("gpus", json!("all"))).expect("all");
    assert_eq!(all.gpus, Some(GpuRequest::All(AllGpus::All)));
}

#[test]
fn gpu_share_derives_its_sm_limit_from_the_memory_fraction() {
    let parsed = spec(with(
        "gpu_share",
        json!({"memory_gb": 6, "gpu_memory_gb": 24}),
    ))
    .expect("valid");
    let share = parsed.gpu_share.expect("share");
    assert_eq!(share.effective_sm_limit(), 25);
    assert_eq!(share.hami_core_dir(), DEFAULT_HAMI_CORE_DIR);
    let odd = GpuShare {
        memory_gb: 1,
        gpu_memory_gb: Some(3),
        sm_limit_percent: None,
        hami_core_dir: None,
    };
    assert_eq!(odd.effective_sm_limit(), 34);
    let unknown_total = GpuShare {
        gpu_memory_gb: None,
        ..odd.clone()
    };
    assert_eq!(unknown_total.effective_sm_limit(), 100);
    let explicit = GpuShare {
        sm_limit_percent: Some(40),
        ..odd
    };
    assert_eq!(explicit.effective_sm_limit(), 40);
}

#[test]
fn bad_input_names_the_field_and_the_value() {
    let cases = [
        (with("memory_limit", json!("2x")), "memory_limit", "2x"),
        (with("memory_limit", json!("1k")), "memory_limit", "1k"),
        (with("cpu_limit", json!(-1.0)), "cpu_limit", "-1"),
        (with("cpu_limit", json!(0)), "cpu_limit", "0"),
        (
            with("ports", json!({"7860/tcp": 70000})),
            "ports.7860/tcp",
            "70000",
        ),
        (
            with("ports", json!({"7860/tcp": -1})),
            "ports.7860/tcp",
            "-1",
        ),
        (with("ports", json!({"0/tcp": 80})), "ports", "0"),
        (with("ports", json!({"80/icmp": 80})), "ports", "icmp"),
        (with("name", json!("-web")), "name", "-web"),
        (with("name", json!("we b")), "name", "we b"),
        (with("image", json!("")), "image", "empty"),
        (with("image", json!("bad image")), "image", "bad image"),
        (with("working_dir", json!("app")), "working_dir", "app"),
        (
            with("command", json!("echo 'unterminated")),
            "command",
            "unterminated",
        ),
        (with("command", json!("")), "command", "empty"),
        (
            with("environment", json!({"A=B": "x"})),
            "environment.A=B",
            "A=B",
        ),
        (
            with("environment", json!({"PORT": 7860})),
            "environment.PORT",
            "7860",
        ),
        (
            with("volumes", json!({"./data": "/data"})),
            "volumes../data",
            "./data",
        ),
        (
            with("volumes", json!({"/srv": "relative"})),
            "volumes./srv",
            "relative",
        ),
        (with("gpus", json!(0)), "gpus", "0"),
        (with("gpus", json!([1, 1])), "gpus", "[1, 1]"),
        (with("system_disk", json!("0g")), "system_disk", "0"),
        (
            with("gpu_share", json!({"memory_gb": 30, "gpu_memory_gb": 24})),
            "gpu_share.memory_gb",
            "30",
        ),
        (
            with("gpu_share", json!({"memory_gb": 4, "sm_limit_percent": 0})),
            "gpu_share.sm_limit_percent",
            "0",
        ),
        (with("nickname", json!("x")), "nickname", "nickname"),
    ];
    for (input, field, value) in cases {
        let err = error_of(input.clone());
        assert!(
            err.field.starts_with(field),
            "for {input}: field {:?} is not {field:?} ({err})",
            err.field
        );
        assert!(
            err.to_string().contains(value),
            "for {input}: {err} does not mention {value:?}"
        );
    }
}

#[test]
fn conflicts_between_fields_are_refused() {
    let twice = json!({"name": "w", "image": "i", "ports": {"80/tcp": 8080, "81/tcp": 8080}});
    assert!(error_of(twice).message.contains("8080"));

    let data_clash =
        json!({"name": "w", "image": "i", "data_disk": "1g", "volumes": {"v": "/data"}});
    assert_eq!(error_of(data_clash).field, "data_disk");

    let share_on_two = json!({"name": "w", "image": "i", "gpus": 2, "gpu_share": {"memory_gb": 4}});
    assert_eq!(error_of(share_on_two).field, "gpu_share");
}

#[test]
fn a_spec_survives_a_json_round_trip() {
    let original = spec(json!({
        "name": "full", "image": "img:1", "command": ["run", "--fast"], "working_dir": "/w",
        "environment": {"A": "1"}, "ports": {"80/tcp": null, "53/udp": 53},
        "volumes": {"/h": "/c:ro"}, "memory_limit": "1536m", "cpu_limit": 1.5,
        "restart_policy": "on-failure:2", "labels": {"team": "geo"}, "system_disk": "20g",
        "data_disk": "100g", "gpus": [1], "gpu_share": {"memory_gb": 8, "gpu_memory_gb": 24},
        "network_mode": "bridge"
    }))
    .expect("valid");
    let text = serde_json::to_string(&original).expect("serializes");
    assert_eq!(ContainerSpec::from_json(&text), Ok(original));
}
