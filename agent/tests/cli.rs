//! The `xmagent` command line as an operator meets it: `check` names the file, the key and the
//! reason of a bad config and exits 78; helpers print usable secrets.

use std::process::Command;

fn xmagent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_xmagent"))
}

const GOOD: &str = r#"
[agent]
id = "a1"
listen = "127.0.0.1:0"
data_dir = "data"

[central]
url = "ws://127.0.0.1:9/api/agent/1/connect"
token = "t"

[[users]]
name = "svc"
roles = ["REST Web Service User"]
password = "p"

[[integrations]]
id = "i1"
action = "create_event"
authenticating_user = "svc"
url_key = "k"
"#;

fn check(config: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, config).unwrap();
    let out = xmagent()
        .args(["check", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_good_config_checks_ok() {
    let (code, stdout, stderr) = check(GOOD);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("config OK"), "{stdout}");
}

#[test]
fn config_errors_name_file_key_and_reason_and_exit_78() {
    let cases = [
        (
            GOOD.replace("action = \"create_event\"", "action = \"explode\""),
            "action",
            "explode",
        ),
        (
            GOOD.replace("listen = \"127.0.0.1:0\"", "listen = \"nowhere\""),
            "agent.listen",
            "nowhere",
        ),
        (
            GOOD.replace("roles = [\"REST Web Service User\"]", "roles = []"),
            "authenticating_user",
            "REST Web Service User",
        ),
        (
            GOOD.replace(
                "authenticating_user = \"svc\"",
                "authenticating_user = \"ghost\"",
            ),
            "authenticating_user",
            "ghost",
        ),
        (
            GOOD.replace("action = \"create_event\"", "action = \"transform\""),
            "script",
            "script",
        ),
        (
            format!("{GOOD}\n[[integrations]]\nid = \"i1\"\naction = \"create_event\"\n"),
            "integrations[1].id",
            "twice",
        ),
        (
            GOOD.replace("[agent]", "[agent]\nbogus = 1"),
            "agent",
            "bogus",
        ),
    ];
    for (config, key, reason) in cases {
        let (code, _, stderr) = check(&config);
        assert_eq!(code, 78, "expected exit 78 for {key}: {stderr}");
        assert!(stderr.contains("agent.toml"), "no file name in: {stderr}");
        assert!(stderr.contains(key), "no key {key:?} in: {stderr}");
        assert!(stderr.contains(reason), "no reason {reason:?} in: {stderr}");
    }
}

#[test]
fn a_missing_config_file_is_a_config_error() {
    let out = xmagent()
        .args(["check", "--config", "/nonexistent/agent.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/agent.toml"));
}

#[test]
fn gen_key_prints_distinct_long_keys() {
    let one = xmagent().arg("gen-key").output().unwrap();
    let two = xmagent().arg("gen-key").output().unwrap();
    let (one, two) = (
        String::from_utf8_lossy(&one.stdout),
        String::from_utf8_lossy(&two.stdout),
    );
    assert!(one.trim().len() >= 32, "{one}");
    assert_ne!(one, two);
}

/// `xmagent ARGS --config DIR/agent.toml` with the good config and no agent running.
fn operator(args: &[&str]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, GOOD).unwrap();
    let out = xmagent()
        .args(args)
        .args(["--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn purging_dead_letters_wants_a_confirmation() {
    let (code, stderr) = operator(&["queue", "purge", "--dead"]);
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("--yes"), "{stderr}");
    // Only dead letters can be purged: the flag is required.
    let (code, stderr) = operator(&["queue", "purge", "--yes"]);
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("--dead"), "{stderr}");
}

#[test]
fn retry_wants_an_id_or_all_dead_but_not_both() {
    // Usage errors exit 64 (EX_USAGE), as the README says, not clap's 2.
    let (code, stderr) = operator(&["queue", "retry"]);
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("<ID|--all-dead>"), "{stderr}");
    let (code, stderr) = operator(&["queue", "retry", "7", "--all-dead"]);
    assert_eq!(code, 64, "{stderr}");
    let (code, stderr) = operator(&["queue", "retry", "not-a-number"]);
    assert_eq!(code, 64, "{stderr}");
}

#[test]
fn operator_commands_say_when_no_agent_runs() {
    for args in [
        &["status"][..],
        &["queue", "list", "--state", "dead"],
        &["activity", "i1", "--follow"],
    ] {
        let (code, stderr) = operator(args);
        assert_eq!(code, 70, "{args:?}: {stderr}");
        assert!(
            stderr.contains("is the agent running"),
            "{args:?}: {stderr}"
        );
    }
    let (code, stderr) = operator(&["queue", "list", "--state", "lost"]);
    assert_eq!(code, 64, "{stderr}");
}

#[test]
fn help_and_version_print_on_stdout_and_exit_0() {
    for (flag, expected) in [("--help", "Usage: xmagent"), ("--version", "xmagent ")] {
        let out = xmagent().arg(flag).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{flag}: {stdout}");
        assert!(stdout.contains(expected), "{flag}: {stdout}");
    }
}
