//! The web console in a real browser: headless Chromium driven through chromedriver (Debian's
//! `chromium` and `chromium-driver`) against `berth up` on the real engine. An admin signs in,
//! adds a node and tests it, creates a spec and a service, starts it, reads its logs and a chart
//! point, stops it, rolls it back, reads the operation log, switches the language, creates a
//! user who cannot open the admin's service, and signs out. Screenshots of the main pages go to
//! `target/tmp/console-screenshots/`.

mod processes;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use processes::{IMAGE, LabelledContainers, Process, free_port, fresh_dir, wait_for};
use serde_json::{Value, json};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
/// A client key pasted into the node form; it must never come back in a page.
const PASTED_KEY: &str =
    "-----BEGIN PRIVATE KEY-----\nSECRET-KEY-MATERIAL\n-----END PRIVATE KEY-----";

/// The browser session; the driver process goes with it.
struct Browser {
    client: Client,
    _driver: Process,
    base: String,
    shots: PathBuf,
}

impl Browser {
    async fn start(base: &str) -> Self {
        let port = free_port();
        let driver = Process(
            Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("chromedriver starts"),
        );
        let url = format!("http://127.0.0.1:{port}");
        wait_for(Duration::from_secs(20), "chromedriver answers", || {
            let status = format!("{url}/status");
            async move { reqwest::get(status).await.ok().map(|_| ()) }
        })
        .await;
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".to_owned(),
            json!({
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                    "--disable-dev-shm-usage", "--window-size=1280,900", "--lang=en-US"],
            }),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&url)
            .await
            .expect("a browser session");
        let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
        std::fs::create_dir_all(&shots).expect("screenshot dir");
        Self {
            client,
            _driver: driver,
            base: base.to_owned(),
            shots,
        }
    }

    async fn open(&self, path: &str) {
        self.client
            .goto(&format!("{}{path}", self.base))
            .await
            .expect("navigate");
    }

    /// The element `#id`; a missing one fails the test with the page it was looked for on.
    async fn element(&self, id: &str) -> fantoccini::elements::Element {
        match self.client.find(Locator::Id(id)).await {
            Ok(element) => element,
            Err(err) => {
                let path = self.path().await;
                let source = self.source().await;
                panic!("no #{id} on {path}: {err}\n{source}")
            }
        }
    }

    async fn text(&self, id: &str) -> String {
        self.element(id).await.text().await.expect("text")
    }

    async fn fill(&self, id: &str, value: &str) {
        let field = self.element(id).await;
        field.clear().await.expect("clear");
        field.send_keys(value).await.expect("type");
    }

    /// Clicks `#id` and waits until the page it leads to has loaded.
    async fn click(&self, id: &str) {
        self.click_on(Locator::Id(id), id).await;
    }

    /// Clicks what `locator` finds (`what` names it) and waits until the page it leads to has
    /// loaded.
    async fn click_on(&self, locator: Locator<'_>, what: &str) {
        self.client
            .execute("window.berthPageBefore = true;", vec![])
            .await
            .expect("mark the page");
        self.client
            .find(locator)
            .await
            .unwrap_or_else(|err| panic!("no {what}: {err}"))
            .click()
            .await
            .expect("click");
        let id = what;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let loaded = self
                .client
                .execute(
                    "return window.berthPageBefore === undefined && document.readyState === 'complete';",
                    vec![],
                )
                .await
                .unwrap_or(Value::Bool(false));
            if loaded == Value::Bool(true) {
                return;
            }
            assert!(Instant::now() < deadline, "clicking #{id} led to no page");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Clicks `#id` where that changes nothing but the page itself (a checkbox, a disclosure).
    async fn tick(&self, id: &str) {
        self.element(id).await.click().await.expect("click");
    }

    async fn path(&self) -> String {
        self.client
            .current_url()
            .await
            .map(|url| url.path().to_owned())
            .unwrap_or_default()
    }

    async fn source(&self) -> String {
        self.client.source().await.expect("page source")
    }

    async fn shot(&self, name: &str) {
        let png = self.client.screenshot().await.expect("screenshot");
        std::fs::write(self.shots.join(format!("{name}.png")), png).expect("save screenshot");
    }

    /// Reloads until `id`'s text contains `needle`.
    async fn reload_until(&self, id: &str, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let text = match self.client.find(Locator::Id(id)).await {
                Ok(element) => element.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            if text.contains(needle) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "#{id} never showed {needle:?}; last: {text:?}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
            self.client.refresh().await.expect("reload");
        }
    }

    async fn sign_in(&self, token: &str) {
        self.open("/").await;
        assert_eq!(
            self.path().await,
            "/sign-in",
            "signed out: the sign-in page"
        );
        self.fill("token", token).await;
        self.click("sign-in").await;
    }
}

/// `berth up` on its own data dir and ports, with a fast stats sampler.
fn berth_up(dir: &std::path::Path) -> (Process, String, u16) {
    let port = free_port();
    let gateway = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["up", "--data-dir"])
        .arg(dir)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--gateway-listen", &format!("127.0.0.1:{gateway}")])
        .args(["--stats-interval", "1"])
        .env("BERTH_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("berth up starts");
    (Process(child), format!("http://127.0.0.1:{port}"), gateway)
}

async fn api(base: &str, token: &str, method: reqwest::Method, path: &str, body: Value) -> Value {
    let request = reqwest::Client::new()
        .request(method, format!("{base}{path}"))
        .bearer_auth(token);
    let request = if body.is_null() {
        request
    } else {
        request.json(&body)
    };
    let response = request.send().await.expect("API call");
    assert!(
        response.status().is_success(),
        "{path}: {}",
        response.status()
    );
    response.json().await.unwrap_or(Value::Null)
}

#[tokio::test]
async fn the_console_in_a_real_browser() {
    if !std::path::Path::new(CHROMEDRIVER).exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromedriver is missing; scripts/test installs chromium and chromium-driver"
        );
        eprintln!("console browser test skipped: {CHROMEDRIVER} is missing");
        return;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = fresh_dir("console");
    let (_hub, base, gateway) = berth_up(&dir);
    let token_file = dir.join("admin-token");
    let admin_token = wait_for(Duration::from_secs(30), "berth up answers", || {
        let health = format!("{base}/health");
        let token_file = token_file.clone();
        async move {
            reqwest::get(health)
                .await
                .ok()?
                .status()
                .is_success()
                .then_some(())?;
            std::fs::read_to_string(&token_file)
                .ok()
                .map(|token| token.trim().to_owned())
        }
    })
    .await;
    let hub_id = {
        let store =
            berth_store::Store::connect(&format!("sqlite://{}", dir.join("berth.db").display()))
                .await
                .expect("the hub's database");
        let id = berth_store::allocations::hub_id(&mut store.acquire().await.expect("connection"))
            .await
            .expect("hub id");
        store.close().await;
        id
    };
    let _containers = LabelledContainers(vec![format!("berth.hub={hub_id}")]);
    let browser = Browser::start(&base).await;

    // Sign in; a wrong token is refused on the page.
    browser.sign_in("berth_not-a-token").await;
    assert!(browser.text("token-error").await.contains("not valid"));
    browser.fill("token", &admin_token).await;
    browser.click("sign-in").await;
    assert!(
        browser.text("signed-in-as").await.starts_with("admin"),
        "signed in"
    );
    assert_eq!(browser.path().await, "/");
    // The first key press reaches the skip link.
    browser
        .client
        .find(Locator::Css("body"))
        .await
        .expect("body")
        .send_keys("\u{e004}")
        .await
        .expect("tab");
    let focused = browser
        .client
        .execute("return document.activeElement.className", vec![])
        .await
        .expect("script");
    assert_eq!(
        focused,
        json!("skip"),
        "keyboard users can skip to the content"
    );
    browser.shot("overview").await;

    // A node: a refused value keeps what was typed, never the secret, and names the field.
    browser.open("/nodes").await;
    browser.click("new-node").await;
    browser.fill("node-name", "edge-1").await;
    browser.fill("node-public_ip", "203.0.113.7").await;
    browser.fill("node-private_ip", "10.0.0.7").await;
    browser.fill("node-ssh_port", "70000").await;
    browser
        .fill("node-docker_address", "unix:///run/berth-test-no-such.sock")
        .await;
    browser.fill("node-client_key", PASTED_KEY).await;
    browser.click("save-node").await;
    assert!(browser.text("node-ssh_port-error").await.contains("70000"));
    let refused = browser.source().await;
    assert!(refused.contains("edge-1"), "what was typed stays");
    assert!(
        !refused.contains("SECRET-KEY-MATERIAL"),
        "a secret is never sent back"
    );
    browser.fill("node-ssh_port", "22").await;
    browser.fill("node-client_key", PASTED_KEY).await;
    browser.click("save-node").await;
    assert!(browser.path().await.starts_with("/nodes/"), "saved");
    assert_eq!(browser.text("node-status").await, "failed");
    browser.click("test-node").await;
    let result = browser.text("test-result").await;
    assert!(result.contains("failed"), "{result}");
    let node_page = browser.source().await;
    assert!(!node_page.contains("SECRET-KEY-MATERIAL"));
    assert!(
        node_page.contains("Client key</dt><dd>set"),
        "shown only as set"
    );
    browser.shot("node").await;
    browser.click("toggle-enabled").await;
    assert_eq!(browser.text("node-enabled").await, "no");
    browser.tick("confirm-delete").await;
    browser.click("delete-node").await;
    assert_eq!(browser.path().await, "/nodes");
    let nodes = browser.text("node-table").await;
    assert!(
        nodes.contains("local") && !nodes.contains("edge-1"),
        "{nodes}"
    );
    browser.shot("nodes").await;

    // A spec, then a service from it.
    browser.open("/catalog").await;
    browser.tick("new-spec").await;
    browser.fill("spec-name", "small").await;
    browser.fill("spec-cpu_cores", "0.5").await;
    browser.fill("spec-memory", "64m").await;
    browser.click("create-spec").await;
    assert!(browser.text("spec-table").await.contains("small"));
    browser.shot("catalog").await;
    browser.open("/services/new").await;
    browser.fill("service-name", "web").await;
    browser.fill("service-image", IMAGE).await;
    browser
        .client
        .execute(
            "const s = document.getElementById('service-spec_id'); s.selectedIndex = 1;",
            vec![],
        )
        .await
        .expect("pick the spec");
    browser.fill("service-port", "8080").await;
    // Serving settings from the same form.
    browser
        .fill("service-serving-idle_timeout_seconds", "900")
        .await;
    browser.fill("service-serving-probe_path", "/").await;
    browser
        .fill(
            "service-command",
            "sh -c \"echo hello-console; trap 'exit 0' TERM; httpd -f -v -p 8080 -h / & wait\"",
        )
        .await;
    browser.click("create-service").await;
    let service_path = browser.path().await;
    let service_id: i64 = service_path
        .strip_prefix("/services/")
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("on the service page, not {service_path}"));
    assert_eq!(browser.text("service-status").await, "running");
    let declared = api(
        &base,
        &admin_token,
        reqwest::Method::GET,
        &format!("/api/services/{service_id}"),
        Value::Null,
    )
    .await;
    assert_eq!(
        declared["definition"]["serving"]["idle_timeout_seconds"], 900,
        "{declared}"
    );
    assert!(
        browser
            .text("gateway-url")
            .await
            .contains(&format!("127.0.0.1:{gateway}/s/admin/web/"))
    );
    browser
        .reload_until("log-lines", "hello-console", Duration::from_secs(15))
        .await;
    // Live logs: follow, and a request to the service shows up without a reload; search
    // narrows the lines; pause holds them.
    browser.tick("logs-follow").await;
    let through_gateway = browser.text("gateway-url").await;
    wait_for(
        Duration::from_secs(15),
        "the followed log shows a request",
        || {
            let browser = &browser;
            let through_gateway = through_gateway.clone();
            let admin_token = admin_token.clone();
            async move {
                let _ = reqwest::Client::new()
                    .get(through_gateway)
                    .bearer_auth(admin_token)
                    .send()
                    .await;
                let lines = browser.text("log-lines").await;
                lines.contains("response:").then_some(())
            }
        },
    )
    .await;
    browser.fill("logs-search", "hello").await;
    let found = browser.text("log-lines").await;
    assert!(
        found.contains("hello-console") && !found.contains("response:"),
        "{found}"
    );
    browser.fill("logs-search", "").await;
    browser.tick("logs-pause").await;
    assert_eq!(browser.text("logs-pause").await, "Resume");
    browser.tick("logs-pause").await;
    let charts = browser
        .reload_until("charts", "latest", Duration::from_secs(20))
        .await;
    assert!(
        charts.contains("CPU") && charts.contains("Memory"),
        "{charts}"
    );
    let points = browser
        .client
        .find_all(Locator::Css("#charts rect.point"))
        .await
        .expect("points");
    assert!(!points.is_empty(), "a chart point is drawn");
    browser.shot("service").await;
    // Another range: the page and its refreshed charts show 6 hours.
    browser.click("range-6h").await;
    let chosen = browser
        .element("range-6h")
        .await
        .attr("aria-current")
        .await
        .expect("attribute");
    assert_eq!(chosen.as_deref(), Some("true"));
    let source = browser
        .element("charts")
        .await
        .attr("data-source")
        .await
        .expect("attribute")
        .unwrap_or_default();
    assert!(source.ends_with("?range=6h"), "{source}");
    assert!(browser.text("charts").await.contains("CPU"));

    // A terminal on the replica: type a command, read its output; the session is logged.
    assert!(
        browser
            .client
            .find(Locator::Id("service-start"))
            .await
            .is_err(),
        "a running service offers no Start"
    );
    browser.click("terminal-0").await;
    wait_for(Duration::from_secs(15), "the shell's prompt", || {
        let browser = &browser;
        async move {
            let shown = browser.text("terminal").await;
            (shown.contains('#') || shown.contains('$')).then_some(())
        }
    })
    .await;
    browser
        .client
        .find(Locator::Css("body"))
        .await
        .expect("body")
        .send_keys("echo term-$((6*7))\n")
        .await
        .expect("type");
    wait_for(Duration::from_secs(15), "the command's output", || {
        let browser = &browser;
        async move {
            browser
                .text("terminal")
                .await
                .contains("term-42")
                .then_some(())
        }
    })
    .await;
    browser.shot("terminal").await;
    let exec_log = api(
        &base,
        &admin_token,
        reqwest::Method::GET,
        "/api/admin/operations?action=service.exec",
        Value::Null,
    )
    .await;
    assert_eq!(
        exec_log["operations"][0]["action"], "service.exec",
        "{exec_log}"
    );
    browser.open(&service_path).await;

    // Stop; version 2 through the API; roll back to 1 on the page.
    browser.click("service-stop").await;
    assert_eq!(browser.text("service-status").await, "stopped");
    let specs = api(
        &base,
        &admin_token,
        reqwest::Method::GET,
        "/api/specs",
        Value::Null,
    )
    .await;
    let spec_id = specs["specs"][0]["id"].clone();
    api(
        &base,
        &admin_token,
        reqwest::Method::PUT,
        &format!("/api/services/{service_id}"),
        json!({"name": "web", "image": IMAGE, "spec_id": spec_id, "port": 8080,
            "command": ["sh", "-c", "echo version-two; sleep 600"]}),
    )
    .await;
    browser.open(&service_path).await;
    assert_eq!(browser.text("service-version").await, "2");
    browser.click("rollback-1").await;
    assert_eq!(browser.text("service-version").await, "3");
    assert!(
        browser
            .text("deployment-table")
            .await
            .contains("rollback to version 1")
    );

    // Bulk: start the checked services with one submit; each one's outcome is listed.
    browser.open("/services").await;
    browser.tick(&format!("pick-{service_id}")).await;
    browser
        .client
        .execute(
            "document.getElementById('bulk-action').value = 'start';",
            vec![],
        )
        .await
        .expect("choose start");
    browser.click("bulk-apply").await;
    let outcomes = browser.text("bulk-outcomes").await;
    assert!(
        outcomes.contains("web") && outcomes.contains("accepted"),
        "{outcomes}"
    );
    wait_for(Duration::from_secs(30), "the bulk start", || {
        let (base, admin_token) = (&base, &admin_token);
        async move {
            let service = api(
                base,
                admin_token,
                reqwest::Method::GET,
                &format!("/api/services/{service_id}"),
                Value::Null,
            )
            .await;
            (service["status"] == "running").then_some(())
        }
    })
    .await;
    browser.shot("services-bulk").await;

    // Edit: a new environment from the service page, deployed as the next version.
    browser.open(&service_path).await;
    browser
        .client
        .find(Locator::Css("#edit-service summary"))
        .await
        .expect("the edit disclosure")
        .click()
        .await
        .expect("open it");
    browser.fill("edit-environment", "STAGE=edited").await;
    browser.click("edit-apply").await;
    assert_eq!(browser.text("service-version").await, "4");
    let edited = api(
        &base,
        &admin_token,
        reqwest::Method::GET,
        &format!("/api/services/{service_id}"),
        Value::Null,
    )
    .await;
    assert_eq!(
        edited["definition"]["environment"]["STAGE"], "edited",
        "{edited}"
    );

    // The node's images: the list, a pull that fails (no registry here) with its reason in the
    // node's history, and a removal refused while a container uses the image.
    browser.open("/nodes/1").await;
    assert!(
        browser.text("image-table").await.contains(IMAGE),
        "the node lists the test image"
    );
    // The node's resource charts, from the services placed on it, over a chosen range.
    browser.click("range-15m").await;
    let node_charts = browser.text("node-charts").await;
    assert!(
        node_charts.contains("CPU") && node_charts.contains("Memory"),
        "{node_charts}"
    );
    let points = browser
        .client
        .find_all(Locator::Css("#node-charts rect.point"))
        .await
        .expect("points");
    assert!(
        !points.is_empty(),
        "the node's chart has the service's samples"
    );
    browser.fill("pull-image", "berth-test/absent:none").await;
    browser.click("pull-button").await;
    wait_for(
        Duration::from_secs(60),
        "the pull's end in the history",
        || {
            let browser = &browser;
            async move {
                browser.open("/nodes/1").await;
                let page = browser.source().await;
                (page.contains("node.image_pull") && page.contains("outcome-failed")).then_some(())
            }
        },
    )
    .await;
    browser.shot("node-images").await;
    browser
        .click_on(
            Locator::Css(&format!("button[aria-label='Remove {IMAGE}']")),
            "the image's Remove button",
        )
        .await;
    let refused = browser.source().await;
    assert!(refused.contains("in use"), "{refused}");

    // The operation log, filtered by action.
    browser.open("/operations?action=service.rollback").await;
    let log = browser.source().await;
    assert!(log.contains("service.rollback") && !log.contains("service.create"));
    browser.shot("operations").await;

    // Chinese, then English again.
    browser.click("lang-zh").await;
    assert!(browser.source().await.contains("计算节点"));
    assert_eq!(browser.path().await, "/operations");
    browser.shot("operations-zh").await;
    browser.click("lang-en").await;
    assert!(browser.source().await.contains("Compute nodes"));

    // A phone-width screen: no page scrolls sideways (wide tables scroll inside their box).
    browser
        .client
        .set_window_size(390, 844)
        .await
        .expect("resize");
    for page in [
        "/",
        "/nodes",
        "/catalog",
        "/services",
        "/operations",
        "/users",
        "/nodes/1",
        service_path.as_str(),
        &format!("{service_path}/terminal"),
    ] {
        browser.open(page).await;
        let overflow = browser
            .client
            .execute(
                "return document.documentElement.scrollWidth - window.innerWidth",
                vec![],
            )
            .await
            .expect("script");
        assert!(
            overflow.as_i64() <= Some(0),
            "{page} overflows by {overflow}"
        );
        // Operation details are phrases with the JSON folded away: no page grows into a
        // scroll of many thousands of pixels (the service page, with logs, four charts, the
        // edit form, deployments and its last operations, stays near 4,000).
        let height = browser
            .client
            .execute("return document.documentElement.scrollHeight", vec![])
            .await
            .expect("script");
        let parts = browser
            .client
            .execute(
                "return [...document.querySelectorAll('main > *')].map(e => e.tagName + '#' + e.id + ':' + e.offsetHeight).join(' ')",
                vec![],
            )
            .await
            .expect("script");
        assert!(
            height.as_i64().is_some_and(|height| height < 4400),
            "{page} is {height} px tall at 390 px wide: {parts}"
        );
    }
    browser.shot("service-phone").await;
    browser
        .client
        .set_window_size(1280, 900)
        .await
        .expect("resize");

    // A user, whose token is shown once; they cannot open the admin's service.
    browser.open("/users").await;
    browser.fill("user-name", "bob").await;
    browser.click("create-user").await;
    let issued = browser.text("issued-token").await;
    let bob_token = issued
        .split_whitespace()
        .find(|word| word.starts_with("berth_"))
        .expect("the new token")
        .to_owned();
    browser.shot("users").await;
    browser.click("sign-out").await;
    assert_eq!(browser.path().await, "/sign-in");
    browser.open(&service_path).await;
    assert_eq!(browser.path().await, "/sign-in", "signed out: no pages");
    browser.fill("token", &bob_token).await;
    browser.click("sign-in").await;
    assert_eq!(
        browser.path().await,
        service_path,
        "back where they were going"
    );
    assert!(browser.text("error-detail").await.contains("no service"));
    assert!(!browser.source().await.contains("hello-console"));
    browser.open("/services").await;
    assert!(browser.source().await.contains("No service yet"));
    browser.open("/nodes").await;
    assert!(browser.text("error-detail").await.contains("admins"));
    browser.click("sign-out").await;

    api(
        &base,
        &admin_token,
        reqwest::Method::DELETE,
        &format!("/api/services/{service_id}?wait=60"),
        Value::Null,
    )
    .await;
    browser.client.close().await.expect("close the browser");
}
