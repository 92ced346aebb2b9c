//! The web console end to end: the real `xmcentral` and `xmagent` binaries, plain HTTP for the
//! refusals, and a real headless Chromium driven through WebDriver (`chromedriver`) for what an
//! operator does, including an event's notifications held back by flood control and cancelled
//! by a terminate from the page. The browser test skips, saying why, where Chromium or its
//! driver is missing (`.ci/run` installs both).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use e2e::*;
use fantoccini::{Client, ClientBuilder, Locator};

/// Generous: CI is a loaded two-core machine.
const WAIT: Duration = Duration::from_secs(60);

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
    connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The value of cookie `name` in the answer's `Set-Cookie` headers, with the whole header.
fn set_cookie<'a>(answer: &'a Answer, name: &str) -> Option<(&'a str, &'a str)> {
    answer
        .headers
        .iter()
        .filter(|(header, _)| header == "set-cookie")
        .find_map(|(_, value)| {
            let (pair, _) = value.split_once(';').unwrap_or((value, ""));
            let value_of = pair.strip_prefix(name)?.strip_prefix('=')?;
            Some((value_of, value.as_str()))
        })
}

/// The `value` of the hidden `csrf` field in a page.
fn csrf_field(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").expect("a csrf field") + 19;
    html[at..].split('"').next().unwrap().to_owned()
}

fn body(answer: &Answer) -> String {
    String::from_utf8_lossy(&answer.body).into_owned()
}

/// How a test reaches the central: plain HTTP, or HTTPS trusting the test CA in this file.
#[derive(Clone, Copy)]
enum Via<'a> {
    Plain,
    Tls(&'a Path),
}

impl Via<'_> {
    async fn get(self, central: std::net::SocketAddr, path: &str, cookie: &str) -> Answer {
        self.send(central, "GET", path, &[("cookie", cookie)], String::new())
            .await
    }

    async fn post_form(
        self,
        central: std::net::SocketAddr,
        path: &str,
        cookie: &str,
        form: &str,
    ) -> Answer {
        let headers = [
            ("cookie", cookie),
            ("content-type", "application/x-www-form-urlencoded"),
        ];
        self.send(central, "POST", path, &headers, form.to_owned())
            .await
    }

    async fn send(
        self,
        central: std::net::SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: String,
    ) -> Answer {
        match self {
            Via::Plain => http(central, method, path, headers, body).await,
            Via::Tls(ca) => e2e::tls::https(central, ca, method, path, headers, body).await,
        }
        .expect("central reachable")
    }
}

async fn get(central: std::net::SocketAddr, path: &str, cookie: &str) -> Answer {
    Via::Plain.get(central, path, cookie).await
}

async fn post_form(central: std::net::SocketAddr, path: &str, cookie: &str, form: &str) -> Answer {
    Via::Plain.post_form(central, path, cookie, form).await
}

/// Trigger `integration` with `body`, insist on 202 and return the request id.
async fn request_id_of(
    agent: std::net::SocketAddr,
    integration: &str,
    query: &str,
    event: &str,
) -> String {
    let answer = trigger(agent, integration, query, &[], event).await;
    assert_eq!(answer.status, 202, "{}", body(&answer));
    answer.json()["requestId"].as_str().unwrap().to_owned()
}

/// Fetch the login form, post `user` and `password` with its token, return the answer.
async fn log_in(central: std::net::SocketAddr, user: &str, password: &str) -> Answer {
    log_in_via(Via::Plain, central, user, password).await
}

/// [`log_in`] over plain HTTP or HTTPS.
async fn log_in_via(
    via: Via<'_>,
    central: std::net::SocketAddr,
    user: &str,
    password: &str,
) -> Answer {
    let form = via.get(central, "/console/login", "").await;
    assert_eq!(form.status, 200, "{}", body(&form));
    let (token, cookie) = set_cookie(&form, "xmc_login").expect("login cookie");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert_eq!(
        csrf_field(&body(&form)),
        token,
        "the form carries the cookie's token"
    );
    let fields = form_urlencoded::Serializer::new(String::new())
        .append_pair("csrf", token)
        .append_pair("user", user)
        .append_pair("password", password)
        .finish();
    via.post_form(
        central,
        "/console/login",
        &format!("xmc_login={token}"),
        &fields,
    )
    .await
}

/// A central whose configuration gets `central_extra` (given the central's port) and an agent
/// with `agent_extra` connected to it, both with their files in `dir`.
fn central_and_agent(
    dir: &Path,
    central_extra: impl FnOnce(u16) -> String,
    agent_extra: &str,
) -> (Node, Node) {
    let central_port = free_port();
    let config = central_config(dir, central_port);
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&central_extra(central_port));
    std::fs::write(&config, text).unwrap();
    let central = Node::start(
        &binary("xmcentral"),
        &["run", "--config", config.to_str().unwrap()],
    );
    let agent = start_agent(&agent_config(dir, central_port, agent_extra));
    (central, agent)
}

/// The session cookie (`xmc_session=...`) of a successful login, after checking its flags.
fn session_of(login: &Answer, secure: bool) -> String {
    assert_eq!(login.status, 303, "{}", body(login));
    let (token, cookie) = set_cookie(login, "xmc_session").expect("session cookie");
    for part in ["HttpOnly", "SameSite=Strict", "Path=/console", "Max-Age="] {
        assert!(cookie.contains(part), "{cookie} lacks {part}");
    }
    assert_eq!(cookie.contains("Secure"), secure, "{cookie}");
    format!("xmc_session={token}")
}

#[tokio::test(flavor = "multi_thread")]
async fn console_refuses_wrong_passwords_missing_csrf_tokens_and_requests_without_a_session() {
    let dir = tempfile::tempdir().unwrap();
    let central = start_central(dir.path(), 0);
    let at = central.addr;

    // Without a session: pages redirect to the login form, everything else is refused.
    let page = get(at, "/console/events", "").await;
    assert_eq!(page.status, 303);
    assert_eq!(page.header("location"), Some("/console/login"));
    assert_eq!(page.header("content-security-policy"), Some(CSP));
    let live = get(at, "/console/events/live", "").await;
    assert_eq!(live.status, 403, "{}", body(&live));
    let forged = get(at, "/console/events", "xmc_session=made-up").await;
    assert_eq!(forged.status, 303, "an unknown session is no session");
    let terminate = post_form(at, "/console/events/x/terminate", "", "csrf=x").await;
    assert_eq!(terminate.status, 403);

    // The assets need no session and are what the policy allows.
    let script = get(at, "/console/assets/console.js", "").await;
    assert_eq!(script.status, 200);
    assert!(script
        .header("content-type")
        .unwrap()
        .starts_with("text/javascript"));

    // A login form posted without its token, or with another one, is refused.
    let no_token = post_form(at, "/console/login", "", "user=admin&password=x").await;
    assert_eq!(no_token.status, 403, "{}", body(&no_token));
    let other = post_form(
        at,
        "/console/login",
        "xmc_login=one",
        "csrf=two&user=admin&password=x",
    )
    .await;
    assert_eq!(other.status, 403);

    // A wrong password: 401, the form again, no session.
    let wrong = log_in(at, CENTRAL_USER.0, "not-the-password").await;
    assert_eq!(wrong.status, 401, "{}", body(&wrong));
    assert!(body(&wrong).contains("Wrong user name or password."));
    assert!(set_cookie(&wrong, "xmc_session").is_none());
    assert!(!body(&wrong).contains("not-the-password"), "never echoed");

    // The right one: a session cookie that scripts cannot read and other sites do not send.
    let right = log_in(at, CENTRAL_USER.0, CENTRAL_USER.1).await;
    assert_eq!(right.header("location"), Some("/console"));
    let session = session_of(&right, false); // plain HTTP: no Secure flag

    let report = get(at, "/console/events", &session).await;
    assert_eq!(report.status, 200, "{}", body(&report));
    assert_eq!(report.header("content-security-policy"), Some(CSP));
    let html = body(&report);
    assert_eq!(
        html.matches("<script").count(),
        html.matches("<script src=\"/console/assets/console.js\"")
            .count(),
        "no inline script"
    );
    assert!(!html.contains("style=\""), "no inline style");
    let csrf = csrf_field(&html);
    let bad = get(at, "/console/events?status=paused", &session).await;
    assert_eq!(bad.status, 400);
    assert!(body(&bad).contains("paused"));
    for page in ["/console", "/console/agents", "/console/integrations"] {
        let answer = get(at, page, &session).await;
        assert_eq!(answer.status, 200, "{page}: {}", body(&answer));
    }
    assert!(body(&get(at, "/console/agents", &session).await).contains("agent-test"));

    // State-changing forms without the session's CSRF token are refused, and change nothing.
    let missing = post_form(at, "/console/logout", &session, "").await;
    assert_eq!(missing.status, 403, "{}", body(&missing));
    let wrong_token = post_form(at, "/console/logout", &session, "csrf=guess").await;
    assert_eq!(wrong_token.status, 403);
    let unknown = post_form(
        at,
        "/console/events/0190a1b2-0000-7000-8000-000000000000/terminate",
        &session,
        "",
    )
    .await;
    assert_eq!(unknown.status, 403, "the token is checked before the event");
    assert_eq!(get(at, "/console/events", &session).await.status, 200);

    // Logout ends the session: the old cookie is refused afterwards.
    let logout = post_form(at, "/console/logout", &session, &format!("csrf={csrf}")).await;
    assert_eq!(logout.status, 303);
    assert_eq!(logout.header("location"), Some("/console/login"));
    let (cleared, _) = set_cookie(&logout, "xmc_session").expect("cookie cleared");
    assert_eq!(cleared, "");
    let after = get(at, "/console/events", &session).await;
    assert_eq!(after.status, 303);
    assert_eq!(after.header("location"), Some("/console/login"));

    // Failed logins are throttled like the API's: per source and user name.
    for _ in 0..central::access::MAX_FAILURES {
        assert_eq!(log_in(at, "ghost", "guess").await.status, 401);
    }
    let throttled = log_in(at, "ghost", "guess").await;
    assert_eq!(throttled.status, 429, "{}", body(&throttled));
    assert!(throttled.header("retry-after").is_some());
}

/// Over HTTPS (the central serves a certificate of a CA made in the test) the session cookie is
/// `Secure`, so a browser never sends it over plain HTTP; the session works over HTTPS.
#[tokio::test(flavor = "multi_thread")]
async fn the_session_cookie_is_secure_over_https() {
    if !e2e::tls::openssl_available() {
        println!("SKIPPED: the `openssl` command is not available to make a test CA");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let central = e2e::tls::start_tls_central(dir.path());
    let tls = Via::Tls(&dir.path().join("ca.pem"));
    let form = tls.get(central.addr, "/console/login", "").await;
    let (_, login_cookie) = set_cookie(&form, "xmc_login").expect("login cookie");
    assert!(login_cookie.contains("Secure"), "{login_cookie}");
    let login = log_in_via(tls, central.addr, CENTRAL_USER.0, CENTRAL_USER.1).await;
    let session = session_of(&login, true);
    let agents = tls.get(central.addr, "/console/agents", &session).await;
    assert_eq!(agents.status, 200, "{}", body(&agents));
    assert!(body(&agents).contains("agent-test"));
    let (_, cookie) = set_cookie(&login, "xmc_session").unwrap();
    println!(
        "HTTPS login sets the session cookie with:{}",
        cookie.split_once(';').map_or("", |(_, flags)| flags)
    );
}

/// A central with one plan and form: an event for any other form is refused for good, so the
/// agent keeps it as a dead letter.
const ONE_PLAN: &str = r#"
[[plans]]
name = "Operations"
[[plans.forms]]
name = "Incident Alert"
"#;

/// An integration whose events name a form the central does not have.
const LOST_FORM: &str = r#"
[[integrations]]
id = "lost-form"
action = "create_event"
form = "No Such Form"
auth = "url"
authenticating_user = "svc"
url_key = "key-lost-form"
"#;

/// The agents page shows what the agent reports: its software version, its queue (a dead
/// letter the central refused) and the integrations it serves.
#[tokio::test(flavor = "multi_thread")]
async fn the_agents_page_shows_the_version_queue_and_integrations_the_agent_reports() {
    let dir = tempfile::tempdir().unwrap();
    let (central, agent) = central_and_agent(
        dir.path(),
        |_| ONE_PLAN.to_owned(),
        &format!("{STANDARD_AGENT}{LOST_FORM}"),
    );
    let session = session_of(
        &log_in(central.addr, CENTRAL_USER.0, CENTRAL_USER.1).await,
        false,
    );

    let version = env!("CARGO_PKG_VERSION");
    let reported = eventually(WAIT, "the agent's first status", || async {
        let html = body(&get(central.addr, "/console/agents", &session).await);
        html.contains("class=\"queue-depth\">0<").then_some(html)
    })
    .await;
    assert!(
        reported.contains(&format!("<code>{version}</code>")),
        "{reported}"
    );
    assert!(reported.contains("connected"));

    // An event the central refuses for good: the agent reports a dead letter soon after.
    accepted(agent.addr, "lost-form", "{}").await;
    let page = eventually(WAIT, "the dead letter reported", || async {
        let html = body(&get(central.addr, "/console/agents", &session).await);
        html.contains("class=\"dead-letters\">1<").then_some(html)
    })
    .await;
    for id in ["any", "api_key", "basic", "lost-form", "oauth", "url"] {
        assert!(
            page.contains(&format!("href=\"/console/integrations/{id}\">{id}</a>")),
            "{id} in {page}"
        );
    }
    assert!(page.contains("class=\"queue-depth\">0<"), "{page}");
    assert!(page.contains("class=\"oldest-pending\">none<"), "{page}");
    assert!(!page.contains(">stale<"));
    assert!(!page.contains("protocol version 1 carries"));
    let row = page.split("data-agent=\"agent-test\"").nth(1).unwrap_or("");
    println!(
        "agents page row: {}",
        row.split("</tr>").next().unwrap_or("").replace('\n', " ")
    );
}

/// The rows of the events table of a report page: (event id, request id).
fn report_rows(html: &str) -> Vec<(String, String)> {
    html.split("<tr data-id=\"")
        .skip(1)
        .map(|row| {
            let id = row.split('"').next().unwrap().to_owned();
            let request = row
                .split("<code class=\"request-id\">")
                .nth(1)
                .and_then(|rest| rest.split('<').next())
                .unwrap_or_default()
                .to_owned();
            (id, request)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_events_report_searches_pages_and_terminates_with_the_sessions_token() {
    let dir = tempfile::tempdir().unwrap();
    let central = start_central(dir.path(), 0);
    let agent = start_agent(&agent_config(
        dir.path(),
        central.addr.port(),
        STANDARD_AGENT,
    ));
    let at = central.addr;

    let mut requests = Vec::new();
    for n in 0..27 {
        let event = format!(r#"{{"properties": {{"host": "db{}", "n": {n}}}}}"#, n % 3);
        requests.push(request_id_of(agent.addr, "any", "?apiKey=url-key-any", &event).await);
    }
    let last = requests.last().unwrap().clone();
    eventually(WAIT, "all 27 events at the central", || async {
        (!central_events(at, &last).await.is_empty()).then_some(())
    })
    .await;

    let login = log_in(at, CENTRAL_USER.0, CENTRAL_USER.1).await;
    let (token, _) = set_cookie(&login, "xmc_session").expect("session");
    let session = format!("xmc_session={token}");
    let report = |query: String| {
        let session = session.clone();
        async move {
            let answer = get(at, &format!("/console/events{query}"), &session).await;
            assert_eq!(answer.status, 200, "{query}: {}", body(&answer));
            body(&answer)
        }
    };

    // Newest first, 25 a page, and an "Older" link to the rest.
    let first = report(String::new()).await;
    assert!(first.contains("27 events match."));
    let rows = report_rows(&first);
    assert_eq!(rows.len(), 25);
    assert_eq!(rows[0].1, last, "newest first");
    assert!(
        first.contains("href=\"/console/events?offset=25\""),
        "{first}"
    );
    let second = report("?offset=25".to_owned()).await;
    let older: Vec<_> = report_rows(&second).into_iter().map(|(_, r)| r).collect();
    assert_eq!(older, [requests[1].clone(), requests[0].clone()]);
    assert!(second.contains("rel=\"prev\""));

    // Filters: request id, property, time range.
    let by_request = report(format!("?requestId={}", requests[4])).await;
    assert_eq!(report_rows(&by_request).len(), 1);
    let by_property = report("?propertyName=host&propertyValue=db1".to_owned()).await;
    assert!(by_property.contains("9 events match."), "{by_property}");
    let future = report("?from=2999-01-01T00:00".to_owned()).await;
    assert!(future.contains("0 events match."));
    let past = report("?to=2000-01-01T00:00".to_owned()).await;
    assert!(past.contains("0 events match."));
    let everything = report("?from=2000-01-01T00:00&to=2999-01-01T00:00".to_owned()).await;
    assert!(everything.contains("27 events match."));
    let bad = get(at, "/console/events?from=yesterday", &session).await;
    assert_eq!(bad.status, 400);
    assert!(body(&bad).contains("`from` must be a date and time"));

    // Terminate from the event page's form: needs the session's token; REST agrees after.
    let (event_id, _) = rows[0].clone();
    let page = get(at, &format!("/console/events/{event_id}"), &session).await;
    assert_eq!(page.status, 200);
    let csrf = csrf_field(&body(&page));
    let path = format!("/console/events/{event_id}/terminate");
    assert_eq!(
        post_form(at, &path, &session, "csrf=wrong").await.status,
        403
    );
    assert_eq!(
        central_events(at, &last).await[0]["status"],
        "ACTIVE",
        "unchanged"
    );
    let done = post_form(at, &path, &session, &format!("csrf={csrf}")).await;
    assert_eq!(done.status, 303, "{}", body(&done));
    assert_eq!(central_events(at, &last).await[0]["status"], "TERMINATED");
    let missing = post_form(
        at,
        "/console/events/0190a1b2-0000-7000-8000-000000000000/terminate",
        &session,
        &format!("csrf={csrf}"),
    )
    .await;
    assert_eq!(missing.status, 404);

    // The activity stream filters by outcome; its live fragment sends only what is newer.
    let terminated = get(at, "/console/integrations/any?status=TERMINATED", &session).await;
    assert_eq!(terminated.status, 200);
    assert_eq!(body(&terminated).matches("<li data-id=").count(), 1);
    let live = get(
        at,
        &format!("/console/integrations/any/live?after={}", rows[1].0),
        &session,
    )
    .await;
    assert_eq!(live.status, 200);
    assert_eq!(
        body(&live).matches("<li data-id=").count(),
        1,
        "{}",
        body(&live)
    );
    assert!(body(&live).contains(&last));
    let integrations = body(&get(at, "/console/integrations", &session).await);
    assert!(integrations.contains(">27<"), "{integrations}");
    assert!(integrations.contains("agent-test"));
}

/// `chromedriver` on a free port, ended when dropped.
struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Chromium and its driver, or why the browser test cannot run here.
fn browser() -> Result<(PathBuf, PathBuf), String> {
    let find = |names: &[&str]| {
        names.iter().find_map(|name| {
            std::env::var_os("PATH").and_then(|path| {
                std::env::split_paths(&path)
                    .map(|dir| dir.join(name))
                    .find(|candidate| candidate.is_file())
            })
        })
    };
    let chromium = find(&["chromium", "chromium-browser", "google-chrome"])
        .ok_or("no chromium on PATH (apt-get install chromium)")?;
    let driver = find(&["chromedriver"])
        .ok_or("no chromedriver on PATH (apt-get install chromium-driver)")?;
    Ok((chromium, driver))
}

async fn start_driver(driver: &Path) -> Driver {
    let port = free_port();
    let child = Command::new(driver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let driver = Driver { child, port };
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    eventually(WAIT, "chromedriver answering /status", || async {
        http(addr, "GET", "/status", &[], "")
            .await
            .ok()
            .filter(|answer| answer.status == 200)
    })
    .await;
    driver
}

async fn open_browser(chromium: &Path, driver: &Driver) -> Client {
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".to_owned(),
        serde_json::json!({
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--window-size=1280,1000"],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a WebDriver session")
}

/// Wait for an element with `css` whose text contains `text`.
async fn wait_for_text(client: &Client, css: &str, text: &str) {
    eventually(WAIT, &format!("`{text}` in {css}"), || async {
        let elements = client.find_all(Locator::Css(css)).await.ok()?;
        for element in elements {
            if element.text().await.ok()?.contains(text) {
                return Some(());
            }
        }
        None
    })
    .await;
}

/// Type `text` into the element with `css`.
async fn type_into(client: &Client, css: &str, text: &str) {
    let element = client.find(Locator::Css(css)).await.expect(css);
    element.send_keys(text).await.expect(css);
}

/// Click the element with `css`.
async fn click(client: &Client, css: &str) {
    let element = client.find(Locator::Css(css)).await.expect(css);
    element.click().await.expect(css);
}

async fn screenshot(client: &Client, name: &str) {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot directory");
    let png = client.screenshot().await.expect("screenshot");
    let path = dir.join(format!("{name}.png"));
    std::fs::write(&path, png).expect("write screenshot");
    println!("screenshot: {}", path.display());
}

/// Wait until the browser shows the login form (`what` names the moment in a failure).
async fn on_login_form(client: &Client, what: &str) {
    client
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Css("#user"))
        .await
        .expect(what);
    let url = client.current_url().await.expect("url");
    assert_eq!(url.path(), "/console/login", "{what}");
}

/// A small directory for the browser test: `oncall` with an SMS (delivered by the log deliverer)
/// and an email device whose webhook is the central's own listener at a path that is no webhook,
/// so every email attempt fails and waits ten minutes for its retry: it is still PENDING when
/// the operator terminates its event. Flood control takes its defaults.
fn flood_demo_directory(central_port: u16) -> String {
    format!(
        r#"
{ONCALL_PERSON}
[notifications]
retry_initial_ms = 600000
retry_max_ms = 600000
[notifications.webhooks]
EMAIL = "http://127.0.0.1:{central_port}/not-a-webhook"
"#
    )
}

/// The `flood-demo` integration: flood control on, events to `oncall`.
const FLOOD_DEMO: &str = r#"
[[integrations]]
id = "flood-demo"
action = "create_event"
flood_control = true
auth = "url"
authenticating_user = "svc"
url_key = "key-flood-demo"
"#;

/// The central's notifications of `event_id` as (device type, status), once `ready` holds.
async fn notifications_when(
    central: std::net::SocketAddr,
    event_id: &str,
    ready: fn(&[(String, String)]) -> bool,
) -> Vec<(String, String)> {
    let path = format!("/api/xm/1/events/{event_id}/notifications");
    eventually(WAIT, &format!("notifications of {event_id}"), || async {
        let listed = get_json(central, &path, CENTRAL_USER).await;
        let kinds: Vec<(String, String)> = listed["data"]
            .as_array()?
            .iter()
            .map(|n| {
                let text = |value: &serde_json::Value| value.as_str().unwrap_or("?").to_owned();
                (text(&n["device"]["deviceType"]), text(&n["status"]))
            })
            .collect();
        ready(&kinds).then_some(kinds)
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_follows_a_request_from_trigger_to_terminated_event_in_a_browser() {
    let (chromium, driver) = match browser() {
        Ok(found) => found,
        Err(reason) => {
            println!("SKIPPED: the browser test needs Chromium and chromedriver: {reason}");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let (central, agent) = central_and_agent(
        dir.path(),
        flood_demo_directory,
        &format!("{STANDARD_AGENT}{FLOOD_DEMO}"),
    );
    let driver = start_driver(&driver).await;
    let client = open_browser(&chromium, &driver).await;
    let console = format!("http://{}/console", central.addr);

    // Log in: the console sends us to the form first.
    client.goto(&console).await.expect("open the console");
    on_login_form(&client, "the login form").await;
    type_into(&client, "#user", CENTRAL_USER.0).await;
    type_into(&client, "#password", CENTRAL_USER.1).await;
    click(&client, "form.login button").await;
    wait_for_text(&client, "header", "Signed in as admin").await;

    // Open the integration's activity stream, then trigger it: the request appears without a
    // reload (the marker set on this page survives).
    client
        .goto(&format!("{console}/integrations/any"))
        .await
        .unwrap();
    client
        .execute("window.loadedOnce = 'still here'; return null;", vec![])
        .await
        .unwrap();
    let request_id = request_id_of(
        agent.addr,
        "any",
        "?apiKey=url-key-any",
        r#"{"properties": {"summary": "Disk <full>", "host": "db1"}, "priority": "high"}"#,
    )
    .await;
    wait_for_text(&client, "#activity code.request-id", &request_id).await;
    let marker = client
        .execute("return window.loadedOnce || null;", vec![])
        .await
        .unwrap();
    assert_eq!(
        marker,
        serde_json::json!("still here"),
        "the page was not reloaded"
    );
    screenshot(&client, "activity").await;
    client.goto(&console).await.unwrap();
    wait_for_text(&client, "main h2", "Events per minute").await;
    screenshot(&client, "overview").await;

    // The events report's first page is live too.
    client.goto(&format!("{console}/events")).await.unwrap();
    wait_for_text(&client, "#events code.request-id", &request_id).await;
    let second = request_id_of(
        agent.addr,
        "url",
        "?apiKey=url-key-url",
        r#"{"properties": {"summary": "CPU high", "host": "web2"}}"#,
    )
    .await;
    wait_for_text(&client, "#events code.request-id", &second).await;
    wait_for_text(&client, "#result-count", "2 events match.").await;
    screenshot(&client, "events").await;

    // Find the first event in the events report by its request id, and open it.
    type_into(&client, "#requestId", &request_id).await;
    click(&client, "form.search button").await;
    wait_for_text(&client, "#result-count", "1 event matches.").await;
    wait_for_text(&client, "#events code.request-id", &request_id).await;
    click(&client, "#events a[href^='/console/events/']").await;
    wait_for_text(&client, "#event-status", "ACTIVE").await;
    wait_for_text(&client, "table.properties", "Disk <full>").await;

    // Terminate it from the page; the central's REST API agrees.
    click(&client, "#terminate").await;
    wait_for_text(&client, "#event-status", "TERMINATED").await;
    screenshot(&client, "event").await;
    let event = central_events(central.addr, &request_id).await;
    assert_eq!(event[0]["status"], "TERMINATED");

    // Three events in a row through `flood-demo` to `oncall`: the first SMS goes, the next two
    // are held back by flood control; the emails wait for a retry.
    let mut flood_events = Vec::new();
    for n in 1..=3 {
        let body = format!(
            r#"{{"properties": {{"summary": "Link down {n}"}}, "recipients": ["oncall"]}}"#
        );
        let request = accepted(agent.addr, "flood-demo", &body).await;
        let event = eventually(WAIT, &format!("flood-demo event {n}"), || async {
            central_events(central.addr, &request)
                .await
                .into_iter()
                .next()
        })
        .await;
        flood_events.push(event["id"].as_str().unwrap().to_owned());
    }
    let second = &flood_events[1];
    let kinds = notifications_when(central.addr, second, |kinds| {
        kinds.len() == 2
            && kinds
                .iter()
                .any(|(kind, status)| kind == "TEXT_PHONE" && status == "SUPPRESSED")
    })
    .await;
    assert!(
        kinds.contains(&("EMAIL".to_owned(), "PENDING".to_owned())),
        "{kinds:?}"
    );

    // Open the second one: its SMS is SUPPRESSED with the rule that held it back, its email is
    // PENDING. Terminate it from the page: the email is CANCELLED, the SMS stays SUPPRESSED.
    client
        .goto(&format!("{console}/events/{second}"))
        .await
        .unwrap();
    wait_for_text(&client, "table.notifications", "SUPPRESSED").await;
    wait_for_text(&client, "table.notifications", "Mobile (TEXT_PHONE)").await;
    wait_for_text(&client, "table.notifications", "Work Email (EMAIL)").await;
    wait_for_text(
        &client,
        "table.notifications",
        "flood control: more than 1 notification(s) to MOBILE_APP/TEXT_PHONE/VOICE devices within 300 s",
    )
    .await;
    wait_for_text(&client, "table.notifications", "PENDING").await;
    click(&client, "#terminate").await;
    wait_for_text(&client, "#event-status", "TERMINATED").await;
    wait_for_text(&client, "table.notifications", "CANCELLED").await;
    wait_for_text(&client, "table.notifications", "SUPPRESSED").await;
    screenshot(&client, "event-notifications").await;
    let after = notifications_when(central.addr, second, |_| true).await;
    assert_eq!(
        after,
        [
            ("EMAIL".to_owned(), "CANCELLED".to_owned()),
            ("TEXT_PHONE".to_owned(), "SUPPRESSED".to_owned())
        ],
        "the REST API agrees"
    );

    // The overview draws them per integration, delivered against suppressed (once the first
    // event's SMS went out).
    notifications_when(central.addr, &flood_events[0], |kinds| {
        kinds.contains(&("TEXT_PHONE".to_owned(), "DELIVERED".to_owned()))
    })
    .await;
    client.goto(&console).await.unwrap();
    wait_for_text(&client, "main", "flood-demo suppressed").await;
    wait_for_text(&client, "main", "flood-demo delivered").await;
    screenshot(&client, "overview-notifications").await;

    // /metrics counts them by status and device type.
    let metrics = http(central.addr, "GET", "/metrics", &[], "")
        .await
        .unwrap();
    let metrics = body(&metrics);
    for line in [
        "xmcentral_notifications_total{status=\"SUPPRESSED\",device_type=\"TEXT_PHONE\"} 2",
        "xmcentral_notifications_total{status=\"DELIVERED\",device_type=\"TEXT_PHONE\"} 1",
        "xmcentral_notifications_total{status=\"CANCELLED\",device_type=\"EMAIL\"} 1",
        "xmcentral_notifications_flood_suppressed_total{integration=\"flood-demo\"} 2",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }

    // The agents page names the agent's software version and the integrations it serves.
    client.goto(&format!("{console}/agents")).await.unwrap();
    wait_for_text(&client, "td.version", env!("CARGO_PKG_VERSION")).await;
    wait_for_text(&client, "td.integrations", "flood-demo").await;
    screenshot(&client, "agents").await;

    // Log out, and be refused: the console sends us back to the login form.
    click(&client, "form.logout button").await;
    on_login_form(&client, "the login form after logout").await;
    client.goto(&format!("{console}/events")).await.unwrap();
    on_login_form(&client, "refused after logout").await;

    client.close().await.expect("close the browser");
}
