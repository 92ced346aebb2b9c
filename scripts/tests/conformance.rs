//! Runs every conformance case under `tests/conformance/` through the dry-run code path and checks
//! `expect.json` the same way `shared/conformance/run` does, so `cargo test` covers the script API
//! contract without the Python runner.

use scripts::dry_run::{execute, TestScriptArgs};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Instant;

fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance")
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn args_for(dir: &Path) -> TestScriptArgs {
    let optional = |name: &str| Some(dir.join(name)).filter(|p| p.exists());
    let mut libraries = Vec::new();
    let libdir = dir.join("libraries");
    if libdir.is_dir() {
        let mut files: Vec<_> = std::fs::read_dir(&libdir)
            .expect("libraries dir")
            .map(|e| e.expect("dir entry").path())
            .collect();
        files.sort();
        for file in files {
            let stem = file
                .file_stem()
                .and_then(|s| s.to_str())
                .expect("library file name");
            libraries.push(format!("{stem}={}", file.display()));
        }
    }
    let options = optional("options.json").map(|p| read_json(&p));
    let option = |key: &str| options.as_ref().and_then(|o| o[key].as_u64());
    TestScriptArgs {
        script: dir.join("script.js"),
        request: dir.join("request.json"),
        constants: optional("constants.json"),
        libraries,
        http_fixtures: optional("http-fixtures.json"),
        timeout_ms: option("timeout_ms"),
        memory_limit_mb: option("memory_limit_mb").map(|v| usize::try_from(v).expect("small")),
        flow_trigger: false,
        event_mapping: None,
    }
}

/// The checks of the conformance runner's `check()`, returning the list of mismatches.
fn check(out: &Value, wall_ms: u128, exp: &Value) -> Vec<String> {
    let mut errs = Vec::new();
    if let Some(posts) = exp.get("posts") {
        if out.get("posts") != Some(posts) {
            errs.push(format!("posts: expected {posts}, got {}", out["posts"]));
        }
    }
    let logs: Vec<Value> = out["logs"].as_array().cloned().unwrap_or_default();
    if let Some(expected) = exp.get("logs") {
        let got: Vec<Value> = logs.iter().map(|l| l["message"].clone()).collect();
        if Some(&got) != expected.as_array() {
            errs.push(format!("logs: expected {expected}, got {got:?}"));
        }
    }
    if let Some(expected) = exp.get("log_levels") {
        let got: Vec<Value> = logs.iter().map(|l| l["level"].clone()).collect();
        if Some(&got) != expected.as_array() {
            errs.push(format!("log levels: expected {expected}, got {got:?}"));
        }
    }
    if let Some(expected) = exp.get("http").and_then(Value::as_array) {
        let got = out["http"].as_array().cloned().unwrap_or_default();
        if got.len() != expected.len() {
            errs.push(format!(
                "http: expected {} calls, got {}",
                expected.len(),
                got.len()
            ));
        }
        for (e, g) in expected.iter().zip(got.iter()) {
            for key in ["endpoint", "path"] {
                if e[key] != g[key] {
                    errs.push(format!("http {key}: expected {}, got {}", e[key], g[key]));
                }
            }
            let method = |v: &Value| v.as_str().unwrap_or_default().to_uppercase();
            if method(&e["method"]) != method(&g["method"]) {
                errs.push(format!(
                    "http method: expected {}, got {}",
                    e["method"], g["method"]
                ));
            }
            if let Some(json_body) = e.get("json_body") {
                let body: Value = g["body"]
                    .as_str()
                    .and_then(|b| serde_json::from_str(b).ok())
                    .unwrap_or(Value::Null);
                if &body != json_body {
                    errs.push(format!("http body: expected {json_body}, got {body}"));
                }
            }
        }
    }
    if exp.get("error").is_some() || exp.get("error_kind").is_some() {
        let err = &out["error"];
        if out["ok"] != Value::Bool(false) || err.is_null() {
            errs.push("expected the run to fail, it succeeded".to_owned());
        } else {
            let message = err["message"].as_str().unwrap_or_default();
            if let Some(fragment) = exp.get("error").and_then(Value::as_str) {
                if !message.contains(fragment) {
                    errs.push(format!(
                        "error message {message:?} does not contain {fragment:?}"
                    ));
                }
            }
            if let Some(kind) = exp.get("error_kind") {
                if &err["kind"] != kind {
                    errs.push(format!(
                        "error kind: expected {kind}, got {} ({message})",
                        err["kind"]
                    ));
                }
            }
        }
    } else if out["ok"] != Value::Bool(true) {
        errs.push(format!("expected success, got error {}", out["error"]));
    }
    if let Some(max) = exp.get("max_duration_ms").and_then(Value::as_u64) {
        // Debug builds of QuickJS are several times slower than release ones; the runner's wall
        // clock bound is meant for the release binary, so allow a debug build more room.
        let allowed = if cfg!(debug_assertions) { max * 3 } else { max };
        if wall_ms > u128::from(allowed) {
            errs.push(format!("took {wall_ms} ms, limit {allowed} ms"));
        }
    }
    errs
}

#[test]
fn every_conformance_case_passes() {
    let mut names: Vec<PathBuf> = std::fs::read_dir(cases_dir())
        .expect("tests/conformance exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.is_dir())
        .collect();
    names.sort();
    assert_eq!(names.len(), 40, "all forty cases are present");
    let mut failures = Vec::new();
    for dir in &names {
        let args = args_for(dir);
        let started = Instant::now();
        let (out, code) = execute(&args);
        let wall_ms = started.elapsed().as_millis();
        let exp = read_json(&dir.join("expect.json"));
        let mut errs = check(&out, wall_ms, &exp);
        let expected_code = if out["ok"] == Value::Bool(true) { 0 } else { 1 };
        if code != expected_code {
            errs.push(format!("exit code {code}, expected {expected_code}"));
        }
        if !errs.is_empty() {
            failures.push(format!("{}:\n  {}", dir.display(), errs.join("\n  ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn the_checker_can_fail() {
    // Guard against a checker that accepts everything.
    let out =
        serde_json::json!({"ok": true, "posts": [{"a": 1}], "logs": [], "http": [], "error": null});
    let exp = serde_json::json!({"posts": [{"a": 2}], "error_kind": "timeout"});
    assert_eq!(check(&out, 0, &exp).len(), 2);
}
