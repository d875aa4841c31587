//! The confirm and unsubscribe pages in a real browser: headless Chromium, driven through
//! chromedriver's W3C WebDriver HTTP API, opens the links taken from received emails and presses
//! the buttons, as a reader would.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`scripts/setup.sh --with-chromium`, which
//! `make test` runs).

use crate::helpers::*;
use crate::newsletter::{link_to, newsletter, simple_sections, status_of, subscribe};
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The W3C name of an element reference in WebDriver answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn on_path(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    })
}

/// chromedriver on a free local port; stopped when dropped.
pub(crate) struct Chromedriver {
    child: Child,
    port: u16,
    base: String,
    http: reqwest::Client,
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        // Asked to shut down first, chromedriver closes the browsers it started, so a test that
        // fails half-way leaves no browser behind; then it is stopped for sure. Blocking, as
        // drop cannot wait on a future.
        let _ = blocking_get(self.port, "/shutdown");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A bare HTTP/1.1 GET with a short time limit, for use where nothing async can run.
fn blocking_get(port: u16, path: &str) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    Ok(())
}

impl Chromedriver {
    pub(crate) async fn start() -> Chromedriver {
        let program = on_path("chromedriver")
            .expect("chromedriver is not installed: run scripts/setup.sh --with-chromium");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(program)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let driver = Chromedriver {
            child,
            port,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
        };
        eventually(
            Duration::from_secs(20),
            "chromedriver to be ready",
            || async {
                let r = driver
                    .http
                    .get(format!("{}/status", driver.base))
                    .send()
                    .await
                    .ok()?;
                let v: Value = r.json().await.ok()?;
                (v["value"]["ready"] == true).then_some(())
            },
        )
        .await;
        driver
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer = request.send().await.unwrap();
        let status = answer.status();
        let v: Value = answer.json().await.unwrap();
        assert!(status.is_success(), "WebDriver {path}: {status} {v}");
        v["value"].clone()
    }

    /// A headless Chromium with a fresh profile, no network but this machine's.
    pub(crate) async fn session(&self, profile: &std::path::Path) -> Browser<'_> {
        let chromium = on_path("chromium")
            .or_else(|| on_path("chromium-browser"))
            .expect("chromium is not installed: run scripts/setup.sh --with-chromium");
        let args = [
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--no-first-run".into(),
            format!("--user-data-dir={}", profile.display()),
        ];
        let v = self
            .call(
                reqwest::Method::POST,
                "/session",
                Some(json!({"capabilities": {"alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {"binary": chromium, "args": args}
                }}})),
            )
            .await;
        Browser {
            driver: self,
            id: v["sessionId"].as_str().expect("a session id").to_owned(),
        }
    }
}

pub(crate) struct Browser<'a> {
    driver: &'a Chromedriver,
    id: String,
}

impl Browser<'_> {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        self.driver
            .call(method, &format!("/session/{}{path}", self.id), body)
            .await
    }

    pub(crate) async fn open(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    /// Runs `script` (a function body) in the page and returns what it returns.
    pub(crate) async fn execute(&self, script: &str) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// A Chrome DevTools Protocol command, through chromedriver.
    pub(crate) async fn devtools(&self, cmd: &str, params: Value) -> Value {
        self.call(
            reqwest::Method::POST,
            "/goog/cdp/execute",
            Some(json!({"cmd": cmd, "params": params})),
        )
        .await
    }

    async fn title(&self) -> String {
        self.call(reqwest::Method::GET, "/title", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    async fn find(&self, css: &str) -> String {
        let v = self
            .call(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_owned()
    }

    async fn text_of(&self, css: &str) -> String {
        let element = self.find(css).await;
        self.call(
            reqwest::Method::GET,
            &format!("/element/{element}/text"),
            None,
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    async fn click(&self, css: &str) {
        let element = self.find(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{element}/click"),
            Some(json!({})),
        )
        .await;
    }

    /// Waits until the page's main heading reads `heading` (a click's navigation has landed).
    /// While the old page is being replaced, finding or reading the heading can fail (a stale
    /// element, or none yet): that is "not yet", not a failure.
    async fn wait_for_heading(&self, heading: &str) {
        eventually(Duration::from_secs(20), heading, || async {
            let h1 = self.try_text_of("h1").await?;
            (h1 == heading).then_some(())
        })
        .await;
    }

    /// The text of the first element matching `css`, or None if WebDriver cannot give it now.
    async fn try_text_of(&self, css: &str) -> Option<String> {
        let base = format!("{}/session/{}", self.driver.base, self.id);
        let http = &self.driver.http;
        let found: Value = http
            .post(format!("{base}/element"))
            .json(&json!({"using": "css selector", "value": css}))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let element = found["value"][ELEMENT].as_str()?;
        let text: Value = http
            .get(format!("{base}/element/{element}/text"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        text["value"].as_str().map(str::to_owned)
    }

    pub(crate) async fn close(self) {
        self.call(reqwest::Method::DELETE, "", None).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_confirms_and_unsubscribes_in_a_real_browser() {
    let app = spawn_app().await;
    let reader = "dsl@primary.example.org";
    app.publish(&subscribe(reader, Some("Morgan Lee"), &["north-west"]))
        .await;
    let mails = app.mails(1).await;
    let confirm = link_to(&mails[0].text(), "/subscriptions/confirm");

    let driver = Chromedriver::start().await;
    let profile = tempfile::tempdir().unwrap();
    let browser = driver.session(profile.path()).await;

    browser.open(&confirm).await;
    assert!(browser
        .title()
        .await
        .starts_with("Confirm your subscription"));
    assert_eq!(browser.text_of("h1").await, "Confirm your subscription");
    assert_eq!(
        browser.text_of("form button[type=submit]").await,
        "Confirm subscription"
    );
    assert_eq!(
        status_of(&app.pool, reader, "north-west").await.as_deref(),
        Some("pending"),
        "opening the page changes nothing"
    );
    browser.click("form button[type=submit]").await;
    browser.wait_for_heading("Subscription confirmed").await;
    assert!(browser
        .text_of("main")
        .await
        .contains("You are now subscribed to the North-West regional Prevent newsletter."));
    assert_eq!(
        status_of(&app.pool, reader, "north-west").await.as_deref(),
        Some("confirmed")
    );

    app.publish(&newsletter("nw-1", "north-west", simple_sections()))
        .await;
    let mails = app.mails(2).await;
    let unsubscribe = link_to(&mails[1].text(), "/unsubscribe");
    browser.open(&unsubscribe).await;
    assert_eq!(
        browser.text_of("h1").await,
        "Unsubscribe from the newsletter"
    );
    assert_eq!(
        status_of(&app.pool, reader, "north-west").await.as_deref(),
        Some("confirmed"),
        "opening the page changes nothing"
    );
    browser.click("form button[type=submit]").await;
    browser.wait_for_heading("You have unsubscribed").await;
    assert_eq!(
        status_of(&app.pool, reader, "north-west").await.as_deref(),
        Some("unsubscribed")
    );

    // An altered link shows the error page, in the browser too.
    let mut altered = confirm.clone();
    let last = altered.len() - 1;
    let c = if &altered[last..] == "A" { "B" } else { "A" };
    altered.replace_range(last.., c);
    browser.open(&altered).await;
    assert_eq!(browser.text_of("h1").await, "This link does not work");

    browser.close().await;
    drop(driver);
    app.stop().await;
}

/// A coordinator claims an enquiry from the link in their copy, in a real browser, before its
/// deadline: no escalation or reminder is ever sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_claims_an_enquiry_in_a_real_browser_and_it_is_never_escalated() {
    use crate::claims::{assert_not_escalated, complex_case, enquiry_id, NORTH_WEST};
    let app = spawn_app_with(Options::at("2025-03-25T10:00:00Z")).await;
    let event = complex_case();
    let id = enquiry_id(&event);
    app.publish(&event).await;
    let mails = app.mails(2).await;
    let copy = mails
        .iter()
        .find(|m| m.envelope_to == [NORTH_WEST])
        .expect("the coordinator's copy");
    let claim = link_to(&copy.text(), "/enquiries/claim");
    let claimed_by = || async {
        sqlx::query_scalar::<_, Option<String>>(
            "SELECT claimed_by FROM enquiries WHERE enquiry_id = $1",
        )
        .bind(&id)
        .fetch_one(&app.pool)
        .await
        .unwrap()
    };

    let driver = Chromedriver::start().await;
    let profile = tempfile::tempdir().unwrap();
    let browser = driver.session(profile.path()).await;
    browser.open(&claim).await;
    assert!(browser.title().await.starts_with("Claim this enquiry"));
    assert_eq!(
        browser.text_of("h1").await,
        format!("Will you answer enquiry {id}?")
    );
    assert_eq!(claimed_by().await, None, "opening the page changes nothing");
    // An hour before the deadline.
    app.set_time("2025-03-25T11:00:00Z");
    browser.click("form button[type=submit]").await;
    browser
        .wait_for_heading(&format!("You have claimed enquiry {id}"))
        .await;
    assert!(browser
        .text_of("main")
        .await
        .contains("taken by rpec.north-west@example.org on Tuesday 25 March 2025, 11:00am"));
    assert_eq!(claimed_by().await.as_deref(), Some(NORTH_WEST));
    // Opened again: who has it.
    browser.open(&claim).await;
    assert_eq!(
        browser.text_of("h1").await,
        format!("Enquiry {id} is already claimed")
    );
    browser.close().await;
    drop(driver);

    // Past the first deadline and the second notice.
    app.set_time("2025-03-27T12:00:00Z");
    assert_not_escalated(&app, &id).await;
    app.stop().await;
}
