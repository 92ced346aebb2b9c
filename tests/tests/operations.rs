//! Operations end to end: the .deb packages, the systemd unit, the sd_notify protocol (with a
//! fake `NOTIFY_SOCKET`), and the operator commands against a real running agent.
//!
//! Tests that need a tool the machine lacks (cargo-deb, dpkg-deb, systemd-analyze) print why
//! and return without asserting.

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

#[test]
fn xmagent_package_has_binary_unit_conffile_and_a_config_that_checks() {
    let Some(package) = built_package("xmagent") else {
        return;
    };
    let listing = text(&run("dpkg-deb", &["-c", package.to_str().unwrap()]));
    for path in [
        "./usr/bin/xmagent",
        "./usr/lib/systemd/system/xmagent.service",
        "./etc/xmagent/agent.toml",
        "./usr/share/doc/xmagent/README.md",
    ] {
        assert!(listing.contains(path), "{path} missing from:\n{listing}");
    }
    assert_eq!(
        control_file(&package, "conffiles").trim(),
        "/etc/xmagent/agent.toml"
    );
    let postinst = control_file(&package, "postinst");
    assert!(postinst.contains("adduser --system --group"), "{postinst}");
    assert!(postinst.contains("install -d -o xmagent"), "{postinst}");
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
    let unit = std::fs::read_to_string(root.path().join("usr/lib/systemd/system/xmagent.service"))
        .expect("unit");
    assert!(unit.contains("Type=notify"));
    assert!(unit.contains("WatchdogSec="));
    assert!(unit.contains("RestartPreventExitStatus=78"));
    assert!(
        !unit.lines().any(|l| l.starts_with("ExecStartPre=")),
        "a failing ExecStartPre restart-loops: RestartPreventExitStatus only sees the main process"
    );
    if let Some(verified) = verify_unit(root.path(), "xmagent.service", "xmagent") {
        assert!(
            verified.status.success() && text(&verified).trim().is_empty(),
            "systemd-analyze verify: {}",
            text(&verified)
        );
    }

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
    let Some(package) = built_package("xmcentral") else {
        return;
    };
    let listing = text(&run("dpkg-deb", &["-c", package.to_str().unwrap()]));
    for path in [
        "./usr/bin/xmcentral",
        "./usr/lib/systemd/system/xmcentral.service",
        "./etc/xmcentral/central.toml",
    ] {
        assert!(listing.contains(path), "{path} missing from:\n{listing}");
    }
    assert_eq!(
        control_file(&package, "conffiles").trim(),
        "/etc/xmcentral/central.toml"
    );
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
    if let Some(verified) = verify_unit(root.path(), "xmcentral.service", "xmcentral") {
        assert!(
            verified.status.success() && text(&verified).trim().is_empty(),
            "systemd-analyze verify: {}",
            text(&verified)
        );
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
