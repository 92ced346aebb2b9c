//! Measures the per-run cost of warm contexts for a few script shapes:
//! `cargo run -p scripts --release --example warm_bench [name...] [--runs N]`.
//! Naming scenarios runs only those (handy under `perf record`).

use scripts::{
    Engine, HttpCall, HttpClient, HttpReply, Limits, Program, ProgramSpec, ScriptRequest, Source,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

/// Answers every call with a small JSON document, like a reference-data endpoint would.
struct Fixture;

impl HttpClient for Fixture {
    fn send(&self, call: &HttpCall) -> Result<HttpReply, String> {
        Ok(HttpReply {
            status: 200,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: format!(
                r#"{{"path":"{}","team":"Ops","oncall":["alice","bob"]}}"#,
                call.path
            ),
        })
    }
}

const LIBRARY: &str = "exports.priority = function (severity) {
  return severity === 'critical' ? 'HIGH' : severity === 'warning' ? 'MEDIUM' : 'LOW';
};
exports.lookup = function (name) {
  var reply = http.request({ endpoint: 'CMDB', method: 'GET', path: '/teams/' + name,
    headers: { 'Accept': 'application/json' } }).write();
  return JSON.parse(reply.body);
};";

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut runs = 3000u32;
    if let Some(at) = args.iter().position(|a| a == "--runs") {
        runs = args
            .get(at + 1)
            .and_then(|n| n.parse().ok())
            .expect("--runs N");
        args.drain(at..at + 2);
    }
    let alert = r#"{"status":"firing","labels":{"alertname":"HighCPU","instance":"web01:9100","severity":"critical","job":"node"},"annotations":{"summary":"CPU above 90% on web01","description":"CPU usage has been above 90% for 5 minutes on web01:9100."},"startsAt":"2026-11-28T10:00:00Z","endsAt":"0001-01-01T00:00:00Z","generatorURL":"http://prometheus:9090/graph?g0.expr=cpu","fingerprint":"a1b2c3d4"}"#;
    let body = format!(
        r#"{{"receiver":"xmatters","status":"firing","alerts":[{}],"commonLabels":{{"env":"prod"}},"externalURL":"http://alertmanager:9093"}}"#,
        [alert; 5].join(",")
    );
    let scripts = [
        ("empty", ";", false),
        ("parse", "var data = JSON.parse(request.body);", false),
        (
            "alertmanager",
            "var data = JSON.parse(request.body);
             for (var i = 0; i < data.alerts.length; i++) { var a = data.alerts[i];
               form.post({ properties: { Name: a.labels.alertname, Instance: a.labels.instance,
                 Summary: a.annotations.summary, Env: data.commonLabels.env },
                 priority: a.labels.severity === 'critical' ? 'HIGH' : 'LOW' }); }",
            false,
        ),
        (
            "require_http",
            "var lib = require('Common');
             var data = JSON.parse(request.body);
             var team = lib.lookup(data.commonLabels.env);
             console.log('team', team.team, request.headers['content-type']);
             trigger.properties.Team = team.team;
             trigger.recipients = team.oncall.map(function (u) { return { targetName: u }; });
             trigger.priority = lib.priority(data.alerts[0].labels.severity);
             form.post(trigger);",
            true,
        ),
    ];
    let http: Arc<dyn HttpClient> = Arc::new(Fixture);
    for (name, code, with_library) in scripts {
        if !args.is_empty() && !args.iter().any(|a| a == name) {
            continue;
        }
        let libraries = if with_library {
            BTreeMap::from([(
                "Common".to_owned(),
                Source {
                    name: "common.js".into(),
                    code: LIBRARY.into(),
                },
            )])
        } else {
            BTreeMap::new()
        };
        let program = Program::compile(ProgramSpec {
            integration_id: name.into(),
            script: Source {
                name: format!("{name}.js"),
                code: code.into(),
            },
            libraries,
            constants: BTreeMap::from([("Team".to_owned(), "Ops".to_owned())]),
        })
        .expect("compiles");
        let mut engine = Engine::new(Limits::default()).expect("engine");
        let request = ScriptRequest {
            method: "POST".into(),
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: body.clone(),
            ..ScriptRequest::default()
        };
        for _ in 0..100 {
            engine.run(&program, request.clone(), http.clone());
        }
        let started = Instant::now();
        for _ in 0..runs {
            let outcome = engine.run(&program, request.clone(), http.clone());
            assert!(outcome.is_ok(), "{:?}", outcome.error);
        }
        println!(
            "{name:>14}: {:>6} µs/run (body {} B, contexts created {})",
            (started.elapsed() / runs).as_micros(),
            body.len(),
            engine.stats().contexts_created
        );
    }
}
