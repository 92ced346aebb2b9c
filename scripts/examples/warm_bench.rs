//! Measures the per-run cost of warm contexts for a few script shapes:
//! `cargo run -p scripts --release --example warm_bench`.

use scripts::{
    Engine, HttpCall, HttpClient, HttpReply, Limits, Program, ProgramSpec, ScriptRequest, Source,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

struct NoHttp;

impl HttpClient for NoHttp {
    fn send(&self, _call: &HttpCall) -> Result<HttpReply, String> {
        Err("no HTTP in the benchmark".into())
    }
}

fn main() {
    let alert = r#"{"status":"firing","labels":{"alertname":"HighCPU","instance":"web01:9100","severity":"critical","job":"node"},"annotations":{"summary":"CPU above 90% on web01","description":"CPU usage has been above 90% for 5 minutes on web01:9100."},"startsAt":"2026-11-28T10:00:00Z","endsAt":"0001-01-01T00:00:00Z","generatorURL":"http://prometheus:9090/graph?g0.expr=cpu","fingerprint":"a1b2c3d4"}"#;
    let body = format!(
        r#"{{"receiver":"xmatters","status":"firing","alerts":[{}],"commonLabels":{{"env":"prod"}},"externalURL":"http://alertmanager:9093"}}"#,
        [alert; 5].join(",")
    );
    let scripts = [
        ("empty", ";"),
        ("parse", "var data = JSON.parse(request.body);"),
        (
            "alertmanager",
            "var data = JSON.parse(request.body);
             for (var i = 0; i < data.alerts.length; i++) { var a = data.alerts[i];
               form.post({ properties: { Name: a.labels.alertname, Instance: a.labels.instance,
                 Summary: a.annotations.summary, Env: data.commonLabels.env },
                 priority: a.labels.severity === 'critical' ? 'HIGH' : 'LOW' }); }",
        ),
    ];
    let http: Arc<dyn HttpClient> = Arc::new(NoHttp);
    for (name, code) in scripts {
        let program = Program::compile(ProgramSpec {
            integration_id: name.into(),
            script: Source {
                name: format!("{name}.js"),
                code: code.into(),
            },
            libraries: BTreeMap::new(),
            constants: BTreeMap::new(),
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
        let n = 3000u32;
        let started = Instant::now();
        for _ in 0..n {
            let outcome = engine.run(&program, request.clone(), http.clone());
            assert!(outcome.is_ok(), "{:?}", outcome.error);
        }
        println!(
            "{name:>14}: {:>6} µs/run (body {} B, contexts created {})",
            (started.elapsed() / n).as_micros(),
            body.len(),
            engine.stats().contexts_created
        );
    }
}
