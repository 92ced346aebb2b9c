//! Operations end to end: the .deb packages, the systemd unit, the sd_notify protocol (with a
//! fake `NOTIFY_SOCKET`), and the operator commands against a real running agent.
//!
//! Tests that need a tool the machine lacks (cargo-deb, dpkg-deb, systemd-analyze) print why
//! and return without asserting; so does the install lifecycle (dpkg -i/-r/-P in a throwaway
//! overlay of the machine) where no private mount namespace can be made (not root).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use e2e::*;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn have(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn run(program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Output {
    let program = program.as_ref();
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program:?}: {e}"))
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Build both packages from the debug binaries (what `packaging/build-deb --debug` does) and
/// return the path of `NAME_*.deb`.
fn built_package(name: &str) -> Option<PathBuf> {
    if !have("dpkg-deb", &["--version"]) {
        println!("skipped: dpkg-deb is not installed (apt-get install dpkg)");
        return None;
    }
    if !have("cargo", &["deb", "--version"]) {
        println!("skipped: cargo-deb is not installed (cargo install cargo-deb --locked)");
        return None;
    }
    // The binaries the package takes must be the ones this test run built.
    binary("xmagent");
    binary("xmcentral");
    let root = workspace_root();
    // Both package tests share one build (they run in parallel and write the same files).
    static BUILD: OnceLock<Result<String, String>> = OnceLock::new();
    let build = BUILD.get_or_init(|| {
        let build = run(root.join("packaging/build-deb"), &["--debug"]);
        if build.status.success() {
            Ok(text(&build))
        } else {
            Err(text(&build))
        }
    });
    let build = match build {
        Ok(log) => log,
        Err(log) => panic!("packaging/build-deb failed: {log}"),
    };
    let found = std::fs::read_dir(root.join("target/debian"))
        .expect("target/debian")
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| {
            let file = path.file_name().unwrap_or_default().to_string_lossy();
            file.starts_with(&format!("{name}_")) && file.ends_with(".deb")
        });
    Some(found.unwrap_or_else(|| panic!("no {name}_*.deb in target/debian: {build}")))
}

/// Assert that `text` holds every one of `parts`.
fn assert_holds_all(text: &str, parts: &[String]) {
    for part in parts {
        assert!(text.contains(part), "{part} missing from:\n{text}");
    }
}

/// A file from the package's control archive (conffiles, postinst, ...).
fn control_file(package: &Path, name: &str) -> String {
    let scratch = tempfile::tempdir().expect("tempdir");
    let out = run(
        "dpkg-deb",
        &[
            "--control",
            package.to_str().unwrap(),
            scratch.path().to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "dpkg-deb --control: {}", text(&out));
    std::fs::read_to_string(scratch.path().join(name))
        .unwrap_or_else(|e| panic!("{name} missing from the control archive: {e}"))
}

/// `systemd-analyze verify` of a unit whose binary lives under `root` (the unpacked package);
/// `None` when systemd-analyze is missing.
fn verify_unit(root: &Path, unit: &str, binary_name: &str) -> Option<Output> {
    if !have("systemd-analyze", &["--version"]) {
        println!(
            "skipped unit verification: systemd-analyze is not installed (apt-get install systemd)"
        );
        return None;
    }
    let text = std::fs::read_to_string(root.join("usr/lib/systemd/system").join(unit))
        .expect("unit file in the package");
    let unpacked_binary = root.join("usr/bin").join(binary_name);
    let local_unit = root.join(unit);
    std::fs::write(
        &local_unit,
        text.replace(
            &format!("/usr/bin/{binary_name}"),
            unpacked_binary.to_str().unwrap(),
        ),
    )
    .expect("write unit");
    Some(run(
        "systemd-analyze",
        &["verify", "--man=no", local_unit.to_str().unwrap()],
    ))
}

/// Build package `name`, check that it holds the binary, the unit and `conffile` (declared as
/// the only conffile), unpack it into a scratch root and verify the unit there. Returns the
/// package and the root; `None` when a tool is missing.
fn checked_package(name: &str, conffile: &str) -> Option<(PathBuf, tempfile::TempDir)> {
    let package = built_package(name)?;
    let listing = text(&run("dpkg-deb", &["-c", package.to_str().unwrap()]));
    assert_holds_all(
        &listing,
        &[
            format!("./usr/bin/{name}"),
            format!("./usr/lib/systemd/system/{name}.service"),
            format!(".{conffile}"),
            format!("./usr/share/doc/{name}/README.md"),
        ],
    );
    assert_eq!(control_file(&package, "conffiles").trim(), conffile);
    let root = tempfile::tempdir().expect("tempdir");
    let unpack = run(
        "dpkg-deb",
        &[
            "-x",
            package.to_str().unwrap(),
            root.path().to_str().unwrap(),
        ],
    );
    assert!(unpack.status.success(), "dpkg-deb -x: {}", text(&unpack));
    let unit = format!("{name}.service");
    if let Some(verified) = verify_unit(root.path(), &unit, name) {
        assert!(
            verified.status.success() && text(&verified).trim().is_empty(),
            "systemd-analyze verify: {}",
            text(&verified)
        );
    }
    Some((package, root))
}

#[test]
fn xmagent_package_has_binary_unit_conffile_and_a_config_that_checks() {
    let Some((package, root)) = checked_package("xmagent", "/etc/xmagent/agent.toml") else {
        return;
    };
    let postinst = control_file(&package, "postinst");
    assert!(postinst.contains("adduser --system --group"), "{postinst}");
    assert!(
        postinst.contains("chown xmagent:xmagent /var/lib/xmagent"),
        "{postinst}"
    );
    assert!(
        postinst.contains("deb-systemd-helper enable xmagent.service"),
        "enabled on install: {postinst}"
    );
    assert!(
        postinst.contains("try-restart xmagent.service"),
        "restarted on upgrade: {postinst}"
    );
    assert!(
        !postinst.contains("deb-systemd-invoke start"),
        "must not start on first install: {postinst}"
    );

    let unit = std::fs::read_to_string(root.path().join("usr/lib/systemd/system/xmagent.service"))
        .expect("unit");
    assert!(unit.contains("Type=notify"));
    assert!(unit.contains("WatchdogSec="));
    assert!(unit.contains("RestartPreventExitStatus=78"));
    assert!(
        !unit.lines().any(|l| l.starts_with("ExecStartPre=")),
        "a failing ExecStartPre restart-loops: RestartPreventExitStatus only sees the main process"
    );

    // The packaged binary checks the packaged configuration: as shipped it names the missing
    // token file (exit 78); with the token in place it passes.
    let xmagent = root.path().join("usr/bin/xmagent");
    let shipped = root.path().join("etc/xmagent/agent.toml");
    let refused = run(&xmagent, &["check", "--config", shipped.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(78), "{}", text(&refused));
    assert!(text(&refused).contains("token_file"), "{}", text(&refused));

    let etc = root.path().join("etc/xmagent");
    let config = std::fs::read_to_string(&shipped)
        .expect("conffile")
        .replace("/etc/xmagent", etc.to_str().unwrap())
        .replace(
            "/var/lib/xmagent",
            root.path().join("var/lib/xmagent").to_str().unwrap(),
        );
    std::fs::write(etc.join("agent.token"), "scratch-token-0123456789\n").expect("token");
    let scratch_config = etc.join("agent-scratch.toml");
    std::fs::write(&scratch_config, config).expect("config");
    let checked = run(
        &xmagent,
        &["check", "--config", scratch_config.to_str().unwrap()],
    );
    assert!(checked.status.success(), "{}", text(&checked));
    assert!(text(&checked).contains("config OK"), "{}", text(&checked));
}

#[test]
fn xmcentral_package_has_binary_unit_and_conffile() {
    let Some((package, _root)) = checked_package("xmcentral", "/etc/xmcentral/central.toml") else {
        return;
    };
    let postinst = control_file(&package, "postinst");
    assert!(
        postinst.contains("chown xmcentral:xmcentral /var/lib/xmcentral"),
        "{postinst}"
    );
    assert!(!postinst.contains("deb-systemd-invoke start"), "{postinst}");
}

/// Install, upgrade, remove and purge package `name` with dpkg in a throwaway overlay of this
/// machine (`tests/scripts/package-lifecycle.sh` in a private mount namespace); the section of
/// its report for each step, or `None` when the machine cannot make such a copy (not root, no
/// overlayfs), with the reason printed.
fn package_lifecycle(
    name: &str,
    conffile: &str,
) -> Option<std::collections::HashMap<String, String>> {
    let package = built_package(name)?;
    if !have("unshare", &["--version"]) {
        println!("skipped the install lifecycle: unshare is not installed (util-linux)");
        return None;
    }
    // What the maintainer scripts call on a Debian system: without them dpkg cannot configure
    // the package (adduser is a dependency) or enable the unit.
    for tool in ["/usr/sbin/adduser", "/usr/bin/deb-systemd-helper"] {
        if !Path::new(tool).exists() {
            println!("skipped the install lifecycle: {tool} is missing (apt-get install adduser init-system-helpers)");
            return None;
        }
    }
    let scratch = tempfile::tempdir().expect("tempdir");
    let script = workspace_root().join("tests/scripts/package-lifecycle.sh");
    let out = run(
        "unshare",
        &[
            "--mount",
            script.to_str().unwrap(),
            scratch.path().to_str().unwrap(),
            package.to_str().unwrap(),
            name,
            conffile,
        ],
    );
    let report = text(&out);
    if !out.status.success() {
        // 99: the script could not mount its overlay; unshare itself fails without privilege.
        println!("skipped the install lifecycle: no private overlay of / here ({report})");
        return None;
    }
    assert!(
        report.contains("== end"),
        "the lifecycle stopped early:\n{report}"
    );
    let steps = report
        .split("== ")
        .skip(1)
        .filter_map(|step| step.split_once('\n'))
        .map(|(title, body)| (title.trim().to_owned(), body.to_owned()))
        .collect();
    Some(steps)
}

#[test]
fn packages_install_enabled_not_started_restart_on_upgrade_and_purge_clean() {
    for (name, conffile) in [
        ("xmagent", "/etc/xmagent/agent.toml"),
        ("xmcentral", "/etc/xmcentral/central.toml"),
    ] {
        let Some(steps) = package_lifecycle(name, conffile) else {
            return;
        };
        let unit = format!("{name}.service");
        let install = &steps["install"];
        assert!(
            install.contains(&format!("preset {unit}"))
                || steps["state"].contains("enabled by symlink"),
            "not enabled on first install:\n{install}{}",
            steps["state"]
        );
        assert!(
            !install.contains(&format!("start {unit}")) && !install.contains("restart"),
            "started on first install:\n{install}"
        );
        assert!(!install.contains("Warning"), "{install}");
        assert_holds_all(
            &steps["state"],
            &[
                format!("user {name} exists"),
                format!("drwxr-x--- {name}:{name} /var/lib/{name}"),
                format!("drwxr-x--- root:{name} /etc/{name}"),
                format!("-rw-r----- root:{name} {conffile}"),
            ],
        );
        // As shipped the configuration names a secret file the operator must write: exit 78.
        let check = &steps["check"];
        assert!(check.contains("exit 78"), "{check}");
        assert!(check.contains(&format!("{conffile}: ")), "{check}");

        let upgrade = &steps["upgrade"];
        assert!(
            upgrade.contains(&format!("try-restart {unit}")),
            "not restarted on upgrade:\n{upgrade}"
        );
        assert!(upgrade.contains("operator edits kept: 1"), "{upgrade}");
        let remove = &steps["remove"];
        assert!(remove.contains(&format!("stop {unit}")), "{remove}");
        assert!(
            remove.contains(&format!("/var/lib/{name}/store/kept"))
                && !remove.contains("No such file"),
            "remove must keep the store and the configuration:\n{remove}"
        );
        assert!(remove.contains(&format!("user {name} exists")), "{remove}");
        let purge = &steps["purge"];
        assert!(
            purge.contains(&format!("cannot access '/var/lib/{name}'"))
                && purge.contains(&format!("cannot access '{conffile}'")),
            "purge must delete the store and the configuration:\n{purge}"
        );
        assert!(purge.contains(&format!("user {name} gone")), "{purge}");
    }
}

/// A fake systemd: the datagram socket named by `NOTIFY_SOCKET`.
struct FakeSystemd {
    socket: std::os::unix::net::UnixDatagram,
    seen: Vec<String>,
}

impl FakeSystemd {
    fn bind(path: &Path) -> FakeSystemd {
        let socket = std::os::unix::net::UnixDatagram::bind(path).expect("bind NOTIFY_SOCKET");
        socket
            .set_read_timeout(Some(std::time::Duration::from_secs(20)))
            .expect("timeout");
        FakeSystemd {
            socket,
            seen: Vec::new(),
        }
    }

    /// The next notification that satisfies `wanted` (earlier ones are kept for the message).
    fn wait_for(&mut self, what: &str, wanted: impl Fn(&str) -> bool) -> String {
        let mut buffer = [0u8; 4096];
        loop {
            let n = self
                .socket
                .recv(&mut buffer)
                .unwrap_or_else(|e| panic!("no {what} notification ({e}); seen: {:#?}", self.seen));
            let message = String::from_utf8_lossy(&buffer[..n]).into_owned();
            self.seen.push(message.clone());
            if wanted(&message) {
                return message;
            }
        }
    }
}

#[test]
fn systemd_hears_ready_status_watchdog_reloading_and_stopping() {
    let dir = tempfile::tempdir().expect("tempdir");
    let central = start_central(dir.path(), 0);
    let config = agent_config(dir.path(), central.addr.port(), STANDARD_AGENT);
    let socket_path = dir.path().join("notify.sock");
    let mut systemd = FakeSystemd::bind(&socket_path);
    let agent = Node::start_with_env(
        &binary("xmagent"),
        &["run", "--config", config.to_str().unwrap()],
        &[
            ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "1000000"),
        ],
    );

    let ready = systemd.wait_for("READY=1", |m| m.contains("READY=1"));
    assert!(ready.contains("STATUS=central"), "{ready}");
    assert!(ready.contains("queue 0"), "{ready}");
    let ping = systemd.wait_for("a watchdog ping once connected", |m| {
        m.contains("WATCHDOG=1") && m.contains("STATUS=central connected")
    });
    assert!(ping.contains("waiting for the central"), "{ping}");

    agent.signal("HUP");
    let reloading = systemd.wait_for("RELOADING=1", |m| m.contains("RELOADING=1"));
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    systemd.wait_for("READY=1 after the reload", |m| m.contains("READY=1"));

    assert_eq!(agent.terminate(), Some(0));
    systemd.wait_for("STOPPING=1", |m| m.contains("STOPPING=1"));
}

/// `xmagent ARGS --config CONFIG`: (exit code, stdout, stderr).
fn xmagent(config: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(binary("xmagent"))
        .args(args)
        .args(["--config", config.to_str().unwrap()])
        .output()
        .expect("run xmagent");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `xmagent ARGS --json` that must succeed, parsed.
fn xmagent_json(config: &Path, args: &[&str]) -> serde_json::Value {
    let (code, stdout, stderr) = xmagent(config, &[args, &["--json"]].concat());
    assert_eq!(code, 0, "xmagent {args:?}: {stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|_| panic!("not JSON: {stdout}"))
}

/// The standard agent plus `refused`, whose script posts an event the central refuses for good
/// (an unknown priority), so every request to it ends as a dead letter.
fn agent_with_a_refused_integration(dir: &Path, central_port: u16, extra: &str) -> PathBuf {
    let script = dir.join("refused.js");
    std::fs::write(
        &script,
        "form.post({properties: {summary: 'x'}, priority: 'urgent'});\n",
    )
    .expect("script");
    let integration = format!(
        "\n[[integrations]]\nid = \"refused\"\naction = \"run_script\"\n\
         authenticating_user = \"svc\"\nurl_key = \"key-refused\"\nscript = \"{}\"\n",
        script.display()
    );
    agent_config(
        dir,
        central_port,
        &format!("{extra}{STANDARD_AGENT}{integration}"),
    )
}

const WAIT: std::time::Duration = std::time::Duration::from_secs(20);

async fn dead_letters(config: &Path, at_least: u64) -> serde_json::Value {
    let config = config.to_path_buf();
    eventually(WAIT, "dead letters", || {
        let config = config.clone();
        async move {
            let status = xmagent_json(&config, &["status"]);
            (status["deadLetters"].as_u64() >= Some(at_least)).then_some(status)
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn status_and_queue_tools_show_and_repair_dead_letters() {
    let dir = tempfile::tempdir().expect("tempdir");
    let central = start_central(dir.path(), 0);
    let config = agent_with_a_refused_integration(dir.path(), central.addr.port(), "");
    let agent = start_agent(&config);

    let answer = trigger(agent.addr, "refused", "?apiKey=key-refused", &[], "{}").await;
    assert_eq!(answer.status, 202, "{answer:?}");
    let status = dead_letters(&config, 1).await;
    assert_eq!(status["deadLetters"], 1);
    assert_eq!(status["central"]["connected"], true);
    // One naming style in the JSON tools read, nested objects included.
    assert_eq!(status["central"]["inFlight"], 0, "{status}");
    assert!(status["central"]["lastError"].is_null(), "{status}");
    assert_eq!(status["restartNeeded"], serde_json::json!([]));
    assert!(status["version"].as_str().is_some_and(|v| !v.is_empty()));

    let (code, text, _) = xmagent(&config, &["status"]);
    assert_eq!(code, 0);
    assert!(text.contains("central:         connected"), "{text}");
    assert!(text.contains("dead letters:    1"), "{text}");
    assert!(text.contains("restart needed:  no"), "{text}");

    let listed = xmagent_json(&config, &["queue", "list", "--state", "dead"]);
    assert_eq!(listed["count"], 1, "{listed}");
    let letter = &listed["data"][0];
    assert_eq!(letter["integrationId"], "refused");
    assert!(
        letter["reason"].as_str().unwrap().contains("priority"),
        "{letter}"
    );
    // A dead letter keeps no acceptance time: tools read null, not an empty date.
    assert!(letter["receivedAt"].is_null(), "{letter}");
    let id = letter["id"].as_u64().unwrap().to_string();
    let none = xmagent_json(&config, &["queue", "list", "--integration", "any"]);
    assert_eq!(none["count"], 0, "{none}");
    let (_, table, _) = xmagent(&config, &["queue", "list"]);
    assert!(table.starts_with("ID"), "{table}");
    assert!(table.contains("dead      refused"), "{table}");

    // Purge wants a confirmation; without it nothing is deleted.
    let (code, _, stderr) = xmagent(&config, &["queue", "purge", "--dead"]);
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("--yes"), "{stderr}");
    assert_eq!(xmagent_json(&config, &["status"])["deadLetters"], 1);

    // An unknown id is refused with the agent's reason, told once as one plain line.
    let (code, _, stderr) = xmagent(&config, &["queue", "retry", "987654321"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("404") && stderr.contains("no dead letter"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("xmagent: "), "{stderr}");

    // Retry sends it again: the central refuses it again, so it comes back as a new letter.
    let retried = xmagent_json(&config, &["queue", "retry", &id]);
    assert_eq!(retried["retried"], 1, "{retried}");
    let again = eventually(WAIT, "the retried event refused again", || {
        let config = config.clone();
        let id = id.clone();
        async move {
            let listed = xmagent_json(&config, &["queue", "list", "--state", "dead"]);
            let ids: Vec<String> = listed["data"]
                .as_array()?
                .iter()
                .map(|e| e["id"].to_string())
                .collect();
            (ids.len() == 1 && ids[0] != id).then_some(listed)
        }
    })
    .await;
    assert_eq!(again["data"][0]["integrationId"], "refused");

    let (code, text, stderr) = xmagent(&config, &["queue", "purge", "--dead", "--yes"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(text, "purged 1 dead letter(s)\n");
    assert_eq!(xmagent_json(&config, &["status"])["deadLetters"], 0);

    // The admin endpoints want the admin credential.
    for (method, path) in [
        ("GET", "/api/agent/1/status"),
        ("GET", "/api/agent/1/queue"),
        ("POST", "/api/agent/1/queue/retry?allDead=true"),
        ("POST", "/api/agent/1/queue/purge?dead=true&confirm=yes"),
    ] {
        let answer = http(agent.addr, method, path, &[], "").await.expect("http");
        assert_eq!(answer.status, 401, "{method} {path}: {answer:?}");
        let keyed = format!(
            "{path}{}apiKey=url-key-any",
            if path.contains('?') { "&" } else { "?" }
        );
        let answer = http(agent.addr, method, &keyed, &[], "")
            .await
            .expect("http");
        assert_eq!(
            answer.status, 401,
            "the public URL key opens {method} {path}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn activity_follow_prints_new_requests_as_they_come() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let central = start_central(dir.path(), port);
    let config = agent_config(dir.path(), port, STANDARD_AGENT);
    let agent = start_agent(&config);
    let mut follow = Command::new(binary("xmagent"))
        .args([
            "activity",
            "any",
            "--follow",
            "--config",
            config.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("xmagent activity --follow");
    let stdout = follow.stdout.take().expect("stdout");
    let (lines_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines_tx.send(line);
        }
    });
    // Lines until one shows `request_id` with `status`.
    let printed = |request_id: &str, status: &str| {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) if line.contains(request_id) && line.contains(status) => return line,
                Ok(_) => {}
                Err(_) => panic!("--follow printed no {status} line for {request_id}"),
            }
        }
    };
    let addr = agent.addr;
    let send = |n: u32| async move {
        let body = format!("{{\"properties\": {{\"n\": {n}}}}}");
        let answer = trigger(addr, "any", "?apiKey=url-key-any", &[], &body).await;
        assert_eq!(answer.status, 202, "{answer:?}");
        answer.json()["requestId"].as_str().unwrap().to_owned()
    };
    let delivered = send(0).await;
    printed(&delivered, "DELIVERED");
    // With the central away the request waits, and is shown again once it is delivered.
    central.kill();
    let waiting = send(1).await;
    printed(&waiting, "QUEUED");
    let _central = start_central(dir.path(), port);
    printed(&waiting, "DELIVERED");
    let _ = follow.kill();
    let _ = follow.wait();
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_applies_bounds_and_central_live_and_flags_restart_only_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let central = start_central(dir.path(), 0);
    let config = agent_config(dir.path(), central.addr.port(), STANDARD_AGENT);
    let agent = start_agent(&config);
    let accepted = trigger(agent.addr, "any", "?apiKey=url-key-any", &[], "{}").await;
    assert_eq!(accepted.status, 202);

    // A store bound of one byte, a new listen address and new relay back-off settings.
    let original = std::fs::read_to_string(&config).unwrap();
    let changed = original
        .replace("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:1\"")
        .replace("backoff_initial_ms = 50", "backoff_initial_ms = 60")
        .replace("[oauth]", "[store]\nmax_bytes = 1\n\n[oauth]");
    assert_ne!(original, changed);
    std::fs::write(&config, changed).unwrap();
    agent.signal("HUP");
    let status = eventually(WAIT, "restart needed after the reload", || {
        let config = config.clone();
        async move {
            let status = xmagent_json(&config, &["status"]);
            (status["restartNeeded"] != serde_json::json!([])).then_some(status)
        }
    })
    .await;
    assert_eq!(status["restartNeeded"], serde_json::json!(["agent.listen"]));
    let (_, text, _) = xmagent(&config, &["status"]);
    assert!(
        text.contains("restart needed:  yes (agent.listen"),
        "{text}"
    );
    // The running listener stays; the new bound applies at once.
    let full = trigger(agent.addr, "any", "?apiKey=url-key-any", &[], "{}").await;
    assert_eq!(full.status, 503, "{full:?}");
    assert!(full.header("retry-after").is_some());
    // [central] changed: the relay reconnects and is connected again.
    eventually(WAIT, "relay reconnected after the reload", || async {
        agent
            .log()
            .contains("[central] changed: reconnecting")
            .then_some(())
    })
    .await;
    // The new relay's connection counts as a reconnect: it is the process's second.
    eventually(WAIT, "connected again, counted as a reconnect", || {
        let config = config.clone();
        async move {
            let status = xmagent_json(&config, &["status"]);
            let reconnects = status["central"]["reconnects"].as_u64().unwrap_or(0);
            (status["central"]["connected"] == true && reconnects >= 1).then_some(())
        }
    })
    .await;
    // A broken file is refused whole; status says why and the running configuration stays.
    std::fs::write(
        &config,
        format!("{original}\n[[integrations]]\nid = \"broken\"\naction = \"explode\"\n"),
    )
    .unwrap();
    agent.signal("HUP");
    let refused = eventually(WAIT, "the refused reload in status", || {
        let config = config.clone();
        async move {
            let status = xmagent_json(&config, &["status"]);
            status["reloadError"].as_str().map(str::to_owned)
        }
    })
    .await;
    assert!(
        refused.contains("agent.toml") && refused.contains("explode"),
        "{refused}"
    );
    assert_eq!(
        trigger(agent.addr, "any", "?apiKey=url-key-any", &[], "{}")
            .await
            .status,
        503,
        "the reloaded bound still applies"
    );
    // Back to the original file: the bound is lifted, nothing waits for a restart.
    std::fs::write(&config, original).unwrap();
    agent.signal("HUP");
    eventually(WAIT, "restart no longer needed", || {
        let config = config.clone();
        async move {
            let status = xmagent_json(&config, &["status"]);
            (status["restartNeeded"] == serde_json::json!([]) && status["reloadError"].is_null())
                .then_some(())
        }
    })
    .await;
    let accepted = trigger(agent.addr, "any", "?apiKey=url-key-any", &[], "{}").await;
    assert_eq!(accepted.status, 202, "{accepted:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn under_journald_lines_carry_priorities_one_outcome_line_per_trigger_and_metrics_count() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let central = start_central(dir.path(), 0);
    let config = agent_config(dir.path(), central.addr.port(), STANDARD_AGENT);
    // The journal is a file here: JOURNAL_STREAM names the stderr it was opened as.
    let journal_path = dir.path().join("journal");
    let journal = std::fs::File::create(&journal_path).expect("journal file");
    let meta = journal.metadata().expect("metadata");
    let stream = format!("{}:{}", meta.dev(), meta.ino());
    let mut agent = Command::new(binary("xmagent"))
        .args(["run", "--config", config.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .env("JOURNAL_STREAM", &stream)
        .stderr(journal)
        .spawn()
        .expect("start xmagent");
    let addr: std::net::SocketAddr = eventually(WAIT, "listening line", || async {
        let log = std::fs::read_to_string(&journal_path).ok()?;
        let rest = log.split("listening on ").nth(1)?;
        rest.split_whitespace()
            .next()?
            .trim_matches('"')
            .parse()
            .ok()
    })
    .await;

    let accepted = trigger(
        addr,
        "any",
        "?apiKey=url-key-any",
        &[],
        "{\"properties\": {}}",
    )
    .await;
    assert_eq!(accepted.status, 202);
    let request_id = accepted.json()["requestId"].as_str().unwrap().to_owned();
    let refused = trigger(addr, "any", "?apiKey=wrong-key-123", &[], "{}").await;
    assert_eq!(refused.status, 401);
    let unknown = trigger(addr, "no-such-integration", "", &[], "{}").await;
    assert_eq!(unknown.status, 404);

    let metrics = eventually(WAIT, "the event acknowledged", || async {
        let metrics = http(addr, "GET", "/metrics", &[], "").await.ok()?;
        let metrics = String::from_utf8_lossy(&metrics.body).into_owned();
        metrics
            .contains("xmagent_relay_acked_total 1\n")
            .then_some(metrics)
    })
    .await;
    for series in [
        "xmagent_requests_total{integration=\"any\",status=\"202\"} 1\n",
        "xmagent_requests_total{integration=\"any\",status=\"401\"} 1\n",
        "xmagent_requests_total{integration=\"unknown\",status=\"404\"} 1\n",
        "xmagent_auth_failures_total{integration=\"any\"} 1\n",
        "xmagent_request_duration_seconds_count 3\n",
        "# TYPE xmagent_script_duration_seconds histogram\n",
        "# TYPE xmagent_queue_oldest_age_seconds gauge\n",
        "xmagent_dead_letters 0\n",
        "xmagent_relay_ack_latency_seconds_count 1\n",
        "# TYPE xmagent_store_flush_duration_seconds histogram\n",
        "xmagent_restart_needed 0\n",
    ] {
        assert!(
            metrics.contains(series),
            "{series} missing from:\n{metrics}"
        );
    }

    let _ = Command::new("kill")
        .args(["-TERM", &agent.id().to_string()])
        .status();
    let _ = agent.wait();
    let log = std::fs::read_to_string(&journal_path).expect("journal");
    for line in log.lines() {
        assert!(
            line.starts_with("<3>")
                || line.starts_with("<4>")
                || line.starts_with("<6>")
                || line.starts_with("<7>"),
            "a journal line without a priority: {line}\n{log}"
        );
        assert!(
            !line[3..].starts_with("20"),
            "a timestamp journald would duplicate: {line}"
        );
    }
    let outcome = log
        .lines()
        .find(|l| l.contains("trigger answered") && l.contains(&request_id))
        .unwrap_or_else(|| panic!("no outcome line for {request_id}:\n{log}"));
    assert!(outcome.starts_with("<6>"), "{outcome}");
    for field in ["integration=\"any\"", "status=202", "duration_ms="] {
        assert!(outcome.contains(field), "{field} missing: {outcome}");
    }
    assert!(
        log.lines()
            .any(|l| l.contains("trigger answered") && l.contains("status=401")),
        "{log}"
    );
    for secret in ["url-key-any", "wrong-key-123", AGENT_TOKEN] {
        assert!(
            !log.contains(secret),
            "a secret in the log: {secret}\n{log}"
        );
    }
}

/// `xmagent run` with a configuration whose token file is missing; `journal` makes stderr a file
/// named by `JOURNAL_STREAM`, as systemd does. Returns the exit code and stderr.
fn run_with_a_bad_config(dir: &Path, args: &[&str], journal: bool) -> (Option<i32>, String) {
    use std::os::unix::fs::MetadataExt;
    let config = agent_config(dir, 9, "");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        &format!("token = \"{AGENT_TOKEN}\""),
        "token_file = \"missing.token\"",
    );
    std::fs::write(&config, text).unwrap();
    let stderr_path = dir.join("stderr");
    let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
    let stream = stderr
        .metadata()
        .map(|m| format!("{}:{}", m.dev(), m.ino()));
    let mut command = Command::new(binary("xmagent"));
    command
        .args(args)
        .args(["run", "--config", config.to_str().unwrap()])
        .env_remove("JOURNAL_STREAM")
        .stderr(stderr);
    if journal {
        command.env("JOURNAL_STREAM", stream.expect("metadata"));
    }
    let status = command.status().expect("run xmagent");
    (
        status.code(),
        std::fs::read_to_string(stderr_path).expect("stderr"),
    )
}

#[test]
fn a_bad_configuration_stops_run_with_exit_78_and_one_error_in_the_log_format() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Under systemd: one line, at the error priority, naming file and key (no second copy
    // without a priority, which journald would file as INFO).
    let (code, journal) = run_with_a_bad_config(dir.path(), &[], true);
    assert_eq!(code, Some(78), "{journal}");
    assert_eq!(journal.lines().count(), 1, "{journal}");
    assert!(journal.starts_with("<3>"), "{journal}");
    assert!(
        journal.contains("agent.toml: central.token_file"),
        "{journal}"
    );
    // For log shippers: every line is JSON, and the error is one of them.
    let (code, json) = run_with_a_bad_config(dir.path(), &["--log-format", "json"], false);
    assert_eq!(code, Some(78), "{json}");
    let lines: Vec<serde_json::Value> = json
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    assert_eq!(lines.len(), 1, "{json}");
    assert_eq!(lines[0]["level"], "ERROR", "{json}");
    assert!(
        lines[0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("central.token_file")),
        "{json}"
    );
}
