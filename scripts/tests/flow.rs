//! Flow Designer HTTP triggers: the `output` object, modern JavaScript, the example trigger
//! (`examples/integrations/flow-alert.js`) fed with real webhook payloads and mapped to events,
//! and the dry run's `--flow-trigger` output.

use scripts::dry_run::{execute, TestScriptArgs};
use scripts::flow::{EventMapping, FlowEvent};
use scripts::{
    run_once, ErrorKind, HttpCall, HttpClient, HttpReply, Limits, Outcome, Program, ProgramSpec,
    ScriptRequest, Source,
};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

struct NoHttp;

impl HttpClient for NoHttp {
    fn send(&self, _: &HttpCall) -> Result<HttpReply, String> {
        Err("no HTTP in these tests".into())
    }
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn program(name: &str, code: &str) -> Program {
    Program::compile(ProgramSpec {
        integration_id: "flow".into(),
        script: Source {
            name: name.into(),
            code: code.into(),
        },
        libraries: BTreeMap::new(),
        constants: BTreeMap::from([("DefaultRecipient".to_owned(), "Ops-Oncall".to_owned())]),
    })
    .expect("test script compiles")
}

fn run_with(code: &str, body: &str, limits: &Limits) -> Outcome {
    let request = ScriptRequest {
        method: "POST".into(),
        headers: vec![("Content-Type".into(), "application/json".into())],
        body: body.into(),
        ..ScriptRequest::default()
    };
    run_once(&program("trigger.js", code), request, &NoHttp, limits)
}

fn run(code: &str, body: &str) -> Outcome {
    run_with(code, body, &Limits::default())
}

#[test]
fn outputs_keep_the_values_the_script_set() {
    let outcome = run(
        "output['Alert Name'] = 'CPU'; output.count = 3; output.flag = false; output.list = ['a', 1];\n\
         output.when = new Date(0); output.skipped = undefined; output.nested = { a: { b: null } };",
        "{}",
    );
    assert!(outcome.is_ok(), "{:?}", outcome.error);
    assert_eq!(
        Value::Object(outcome.outputs),
        json!({
            "Alert Name": "CPU", "count": 3, "flag": false, "list": ["a", 1],
            "when": "1970-01-01T00:00:00.000Z", "nested": {"a": {"b": null}}
        })
    );
    assert!(outcome.posts.is_empty());
}

#[test]
fn modern_javascript_runs() {
    let code = r#"
        const { groups: { host, port } } = /(?<host>[\w.-]+):(?<port>\d+)/.exec(request.body);
        const price = /(?<=\$)\d+(\.\d+)?/.exec('cost: $42.50')[0];
        const dotAll = /a.b/s.test('a\nb');
        const entries = Object.entries({ x: 1, y: 2 }).map(([k, v]) => `${k}=${v}`).join('&');
        const merged = { ...{ a: 1 }, b: 2 };
        const missing = request.nothing?.deeper ?? 'fallback';
        class Alert { #secret = 1; get doubled() { return this.#secret * 2; } }
        output.summary = `${host} port ${port}`;
        output.details = [price, dotAll, entries, Object.keys(merged).join(''), missing, new Alert().doubled].join(' ');
        output.async = typeof (async () => 1)();
    "#;
    let outcome = run(code, "db-01.example.com:5432");
    assert!(outcome.is_ok(), "{:?}", outcome.error);
    assert_eq!(
        Value::Object(outcome.outputs),
        json!({
            "summary": "db-01.example.com port 5432",
            "details": "42.50 true x=1&y=2 ab fallback 2",
            "async": "object"
        })
    );
}

#[test]
fn a_failed_trigger_keeps_no_outputs_and_names_the_line() {
    let outcome = run(
        "output.a = 1;\nconst p = JSON.parse(request.body);\n",
        "not json",
    );
    let error = outcome.error.expect("bad JSON fails the run");
    assert_eq!(error.kind, ErrorKind::Exception);
    assert_eq!(error.line, Some(2), "{}", error.message);
    assert!(outcome.outputs.is_empty());
}

#[test]
fn outputs_over_the_byte_limit_fail_the_run() {
    let limits = Limits {
        max_post_bytes: 100,
        ..Limits::default()
    };
    let outcome = run_with("output.big = 'x'.repeat(200);", "{}", &limits);
    let error = outcome.error.expect("too big");
    assert_eq!(error.kind, ErrorKind::Limit);
    assert!(
        error.message.contains("outputs exceed"),
        "{}",
        error.message
    );
}

/// The mapping examples/agent.toml gives the example trigger.
fn example_mapping() -> EventMapping {
    EventMapping {
        properties: ["Summary", "Severity", "Source", "Details", "Link"]
            .into_iter()
            .map(|p| (p.to_owned(), p.to_owned()))
            .collect(),
        recipients: Some("Recipients".into()),
        priority: Some("Priority".into()),
        skip_if: Some("Skip".into()),
    }
}

fn example_event(payload: &str) -> FlowEvent {
    let code = std::fs::read_to_string(examples().join("integrations/flow-alert.js")).unwrap();
    let body = std::fs::read_to_string(examples().join("payloads").join(payload)).unwrap();
    let outcome = run(&code, &body);
    assert!(outcome.is_ok(), "{payload}: {:?}", outcome.error);
    example_mapping().event(&outcome.outputs)
}

fn created(payload: &str) -> Value {
    match example_event(payload) {
        FlowEvent::Create(event) => event,
        other => panic!("{payload}: expected an event, got {other:?}"),
    }
}

#[test]
fn example_trigger_maps_real_payloads_to_events() {
    let alertmanager = created("prometheus-1.json");
    assert_eq!(alertmanager["properties"]["Source"], "Alertmanager");
    assert_eq!(
        alertmanager["properties"]["Summary"],
        "Instance web-03.example.com:9100 down"
    );
    assert_eq!(alertmanager["priority"], "HIGH");
    assert_eq!(
        alertmanager["recipients"],
        json!([{"targetName": "Checkout-Oncall"}])
    );

    let grafana = created("grafana-1.json");
    assert_eq!(
        grafana["properties"]["Details"],
        "cpu_usage_idle{host=db-02}=97.3"
    );
    assert_eq!(grafana["recipients"], json!([{"targetName": "dba"}]));
    let unified = created("grafana-2.json");
    assert_eq!(
        unified["properties"]["Summary"],
        "Disk almost full on fs-07"
    );
    assert_eq!(unified["recipients"], json!([{"targetName": "Ops-Oncall"}]));

    // Datadog: named groups read the priority, the tags give the team.
    let datadog = created("datadog-1.json");
    assert_eq!(
        datadog["properties"]["Summary"],
        "High error rate on checkout"
    );
    assert_eq!(datadog["properties"]["Severity"], "critical");
    assert_eq!(datadog["recipients"], json!([{"targetName": "payments"}]));

    // Azure DevOps: a lookbehind takes the organisation out of the URL.
    let work_item = created("azure-devops-1.json");
    assert_eq!(work_item["recipients"], json!([{"targetName": "fabrikam"}]));
    let gate = created("azure-devops-2.json");
    assert_eq!(gate["properties"]["Source"], "Azure DevOps (fabrikam)");
    assert_eq!(
        gate["recipients"],
        json!([{"targetName": "Release-Approvers"}])
    );

    let keptn = created("keptn-1.json");
    assert_eq!(keptn["properties"]["Summary"], "Response time degradation");
    let evaluation = created("keptn-2.json");
    assert_eq!(
        evaluation["properties"]["Summary"],
        "Evaluation of carts in staging: fail"
    );

    let nagios = created("nagios-1.json");
    assert_eq!(nagios["properties"]["Summary"], "edge-router-01 is DOWN");
    assert_eq!(nagios["priority"], "HIGH");
}

#[test]
fn example_trigger_creates_no_event_when_its_filter_says_so() {
    // A Nagios acknowledgement is not a problem: the trigger sets Skip.
    assert_eq!(
        example_event("nagios-2.json"),
        FlowEvent::Skipped {
            output: "Skip".into()
        }
    );
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn dry_run_prints_outputs_and_the_mapped_event() {
    let dir = std::env::temp_dir().join(format!("xmagent-flow-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let body = std::fs::read_to_string(examples().join("payloads/nagios-1.json")).unwrap();
    let request = write(
        &dir,
        "request.json",
        &json!({"method": "POST", "body": body}).to_string(),
    );
    let constants = write(&dir, "constants.json", r#"{"DefaultRecipient":"Ops"}"#);
    let mapping = write(
        &dir,
        "mapping.json",
        r#"{"properties":{"Summary":"Summary"},"recipients":"Recipients","skip_if":"Skip"}"#,
    );
    let mut args = TestScriptArgs {
        script: examples().join("integrations/flow-alert.js"),
        request,
        constants: Some(constants),
        libraries: vec![],
        http_fixtures: None,
        timeout_ms: None,
        memory_limit_mb: None,
        flow_trigger: true,
        event_mapping: None,
    };
    let (printed, code) = execute(&args);
    assert_eq!(code, 0, "{printed}");
    assert_eq!(printed["outputs"]["Summary"], "edge-router-01 is DOWN");
    assert_eq!(printed["outputs"]["Skip"], false);
    assert!(printed.get("event").is_none());

    args.event_mapping = Some(mapping);
    let (printed, _) = execute(&args);
    assert_eq!(
        printed["event"],
        json!({"properties": {"Summary": "edge-router-01 is DOWN"},
               "recipients": [{"targetName": "edge-router-01"}]})
    );

    args.flow_trigger = false;
    args.event_mapping = None;
    let (printed, _) = execute(&args);
    assert!(
        printed.get("outputs").is_none(),
        "plain runs keep the old shape"
    );

    args.flow_trigger = true;
    args.event_mapping = Some(write(&dir, "bad.json", r#"{"propertiez":{}}"#));
    let (printed, code) = execute(&args);
    assert_eq!(code, 64, "a bad mapping file is an input error: {printed}");
    assert!(printed["error"]["message"]
        .as_str()
        .unwrap()
        .contains("propertiez"));
    std::fs::remove_dir_all(&dir).ok();
}
