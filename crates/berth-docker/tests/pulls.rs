//! Image pulls are bounded by inactivity, not by their length: against an engine on loopback
//! that streams a pull's progress (the registry cannot be reached here), a pull that reports a
//! step every 300 ms for 3 s succeeds with an inactivity bound of 1 s — three times the bound,
//! and past the connection's own 2 s request timeout — with every step reported, while a pull
//! that goes quiet for 3 s is given up with `PullStalled` (it would have ended well after it).

use std::time::{Duration, Instant};

use berth_docker::{DockerDriver, DockerEndpoint, DriverError, PullProgress};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// An engine that answers `/version` and streams `steps` pull steps, `gap` apart, then (when
/// `stall` is set) waits that long before the last one.
async fn fake_engine(steps: usize, gap: Duration, stall: Option<Duration>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                loop {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        match socket.read(&mut byte).await {
                            Ok(1) => head.push(byte[0]),
                            _ => return,
                        }
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    if head.contains("/version") {
                        let body =
                            r#"{"Version":"28.0.0","ApiVersion":"1.45","MinAPIVersion":"1.24"}"#;
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if socket.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    let _ = socket
                        .write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
                        )
                        .await;
                    for step in 0..steps {
                        if step + 1 == steps
                            && let Some(stall) = stall
                        {
                            tokio::time::sleep(stall).await;
                        }
                        let line = format!(
                            "{{\"status\":\"Downloading\",\"id\":\"layer1\",\"progressDetail\":{{\"current\":{},\"total\":{}}}}}\r\n",
                            (step + 1) * 100,
                            steps * 100
                        );
                        let chunk = format!("{:x}\r\n{line}\r\n", line.len());
                        if socket.write_all(chunk.as_bytes()).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(gap).await;
                    }
                    let _ = socket.write_all(b"0\r\n\r\n").await;
                    return;
                }
            });
        }
    });
    format!("tcp://{address}")
}

async fn driver(address: String) -> DockerDriver {
    let mut endpoint = DockerEndpoint::plain(address);
    endpoint.timeout_secs = 2;
    DockerDriver::connect(&endpoint)
        .await
        .expect("connect")
        .with_pull_inactivity(Duration::from_secs(1))
}

#[tokio::test]
async fn a_pull_that_keeps_making_progress_is_never_cut_off() {
    let driver = driver(fake_engine(10, Duration::from_millis(300), None).await).await;
    let mut steps: Vec<PullProgress> = Vec::new();
    let began = Instant::now();
    driver
        .pull_image("example/model:1", None, &mut |step| steps.push(step))
        .await
        .expect("the pull completes");
    assert!(
        began.elapsed() >= Duration::from_millis(2_700),
        "it took its time: {:?}",
        began.elapsed()
    );
    assert_eq!(steps.len(), 10);
    assert_eq!(
        (steps[9].current, steps[9].total, steps[9].layer.as_deref()),
        (Some(1000), Some(1000), Some("layer1"))
    );
}

#[tokio::test]
async fn a_pull_that_goes_quiet_is_given_up_as_stalled() {
    let driver =
        driver(fake_engine(3, Duration::from_millis(100), Some(Duration::from_secs(3))).await)
            .await;
    let began = Instant::now();
    let failed = driver
        .pull_image("example/model:1", None, &mut |_| {})
        .await
        .expect_err("stalled");
    let took = began.elapsed();
    assert!(
        matches!(&failed, DriverError::PullStalled { image, .. } if image == "example/model:1"),
        "{failed:?}"
    );
    assert!(
        took >= Duration::from_secs(1),
        "after the quiet second: {took:?}"
    );
    assert!(failed.to_string().contains("made no progress"), "{failed}");
}
