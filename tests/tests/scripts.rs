//! Transformation scripts end to end: the example integrations fed with real webhook payloads,
//! "run a script" calling the central through the built-in `xMatters` endpoint, failures in the
//! activity stream, and SIGHUP reload — all through the real `xmagent` and `xmcentral` binaries.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use e2e::*;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(20);
const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");

fn example(path: &str) -> PathBuf {
    Path::new(EXAMPLES).join(path)
}

fn payload(name: &str) -> String {
    std::fs::read_to_string(example(&format!("payloads/{name}"))).expect("payload")
}

/// One transform integration per example script, plus the scripts this test writes into `dir`.
fn integrations(dir: &Path) -> String {
    let mut text = String::from(
        "[[users]]\nname = \"svc\"\nroles = [\"REST Web Service User\", \"Agent Administrator\"]\npassword = \"svc-password\"\n",
    );
    for (id, script) in [
        ("alertmanager", example("integrations/alertmanager.js")),
        ("grafana", example("integrations/grafana.js")),
        ("nagios", example("integrations/nagios.js")),
        ("zabbix", example("integrations/zabbix.js")),
        ("generic-json", example("integrations/generic-json.js")),
        ("terminator", dir.join("terminator.js")),
        ("broken", dir.join("broken.js")),
        ("reloadable", dir.join("reloadable.js")),
    ] {
        let action = if id == "terminator" {
            "run_script"
        } else {
            "transform"
        };
        text.push_str(&format!(
            "\n[[integrations]]\nid = \"{id}\"\naction = \"{action}\"\nform = \"Incident Alert\"\n\
             authenticating_user = \"svc\"\nurl_key = \"key-{id}\"\nscript = \"{}\"\n",
            script.display()
        ));
        if id == "terminator" {
            // Its scripts close events of generic-json, which the central allows only when
            // granted here.
            text.push_str("script_events_of = [\"generic-json\"]\n");
        }
        if id == "alertmanager" {
            text.push_str("[integrations.constants]\nDefaultRecipient = \"Ops-Oncall\"\n");
        }
    }
    // The example Flow Designer HTTP trigger, mapped as in examples/agent.toml.
    text.push_str(&format!(
        "\n[[integrations]]\nid = \"flow\"\naction = \"http_trigger\"\nform = \"Incident Alert\"\n\
         authenticating_user = \"svc\"\nurl_key = \"key-flow\"\nscript = \"{}\"\n\
         [integrations.constants]\nDefaultRecipient = \"Ops-Oncall\"\n\
         [integrations.event]\nproperties = {{ Summary = \"Summary\", Source = \"Source\" }}\n\
         recipients = \"Recipients\"\npriority = \"Priority\"\nskip_if = \"Skip\"\n",
        example("integrations/flow-alert.js").display()
    ));
    // A SOAP inbound read with the XML helpers.
    text.push_str(&format!(
        "\n[[integrations]]\nid = \"soap\"\naction = \"transform\"\nform = \"Incident Alert\"\n\
         authenticating_user = \"svc\"\nurl_key = \"key-soap\"\nscript = \"{}\"\n",
        dir.join("soap.js").display()
    ));
    text
}

const SOAP_SCRIPT: &str = r#"
var doc = new XMLUtils.DOMParser().parseFromString(request.body, 'text/xml');
var select = XMLUtils.xpath.useNamespaces({ s: 'http://schemas.xmlsoap.org/soap/envelope/', m: 'urn:monitor' });
var envelope = JXON.parse(request.body)['s:envelope'];
trigger.properties.host = select('string(//m:Alert/m:Host)', doc);
trigger.properties.severity = select('//m:Alert/@severity', doc)[0].value;
trigger.properties.summary = envelope['s:body']['m:alert']['m:summary'];
form.post(trigger);
"#;

const SOAP_BODY: &str = r#"<?xml version="1.0"?>
<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" xmlns:m="urn:monitor">
  <s:Body><m:Alert severity="major"><m:Host>db-7</m:Host><m:Summary>Replication lag</m:Summary></m:Alert></s:Body>
</s:Envelope>"#;

const TERMINATOR: &str = r#"
var data = JSON.parse(request.body);
var found = JSON.parse(http.request({ endpoint: 'xMatters', method: 'GET',
  path: '/api/xm/1/events?status=ACTIVE&propertyName=host%23en&propertyValue=' + encodeURIComponent(data.host) }).write().body);
for (var i = 0; i < found.data.length; i++) {
  var r = http.request({ endpoint: 'xMatters', method: 'POST', path: '/api/xm/1/events',
    headers: { 'Content-Type': 'application/json' } }).write({ id: found.data[i].id, status: 'TERMINATED' });
  console.log('terminated ' + found.data[i].id + ': ' + r.statusCode);
}
"#;

const BROKEN: &str =
    "var data = JSON.parse(request.body);\nconsole.warn('about to fail');\nnull.explode();\n";

fn write_scripts(dir: &Path) {
    std::fs::write(dir.join("terminator.js"), TERMINATOR).unwrap();
    std::fs::write(dir.join("soap.js"), SOAP_SCRIPT).unwrap();
    std::fs::write(dir.join("broken.js"), BROKEN).unwrap();
    std::fs::write(
        dir.join("reloadable.js"),
        "trigger.properties.version = 1;\nform.post(trigger);\n",
    )
    .unwrap();
}

async fn post(agent: SocketAddr, id: &str, body: &str) -> String {
    accepted(agent, id, body).await
}

async fn admin_get(agent: SocketAddr, path: &str) -> Value {
    get_json(agent, path, ("svc", "svc-password")).await
}

/// Wait until the request reached a final status; return its record.
async fn finished(agent: SocketAddr, request_id: &str) -> Value {
    eventually(WAIT, &format!("request {request_id} finished"), || async {
        let record = admin_get(agent, &format!("/api/agent/1/requests/{request_id}")).await;
        matches!(
            record["status"].as_str(),
            Some("DELIVERED" | "COMPLETED" | "FAILED")
        )
        .then_some(record)
    })
    .await
}

struct System {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    central: Node,
    agent: Node,
}

fn start() -> System {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    write_scripts(&path);
    let central = start_central(&path, 0);
    let agent = start_agent(&agent_config(
        &path,
        central.addr.port(),
        &integrations(&path),
    ));
    System {
        _dir: dir,
        dir: path,
        central,
        agent,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn example_integrations_turn_real_payloads_into_events() {
    let sys = start();
    let (agent, central) = (sys.agent.addr, sys.central.addr);

    // Alertmanager: one event per firing alert; a resolved alert makes none.
    let id = post(agent, "alertmanager", &payload("prometheus-1.json")).await;
    assert_eq!(finished(agent, &id).await["status"], "DELIVERED");
    let events = central_events(central, &id).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["properties"]["alertname"], "InstanceDown");
    assert_eq!(
        events[0]["properties"]["instance"],
        "web-03.example.com:9100"
    );
    assert_eq!(events[0]["priority"], "HIGH");
    assert_eq!(
        events[0]["recipients"],
        json!([{"targetName": "Checkout-Oncall"}])
    );
    assert_eq!(events[0]["form"]["name"], "Incident Alert");
    let id = post(agent, "alertmanager", &payload("prometheus-2.json")).await;
    finished(agent, &id).await;
    assert_eq!(
        central_events(central, &id).await.len(),
        1,
        "only the firing alert of the mixed group"
    );

    // Grafana, legacy and unified alerting.
    let id = post(agent, "grafana", &payload("grafana-1.json")).await;
    finished(agent, &id).await;
    let event = &central_events(central, &id).await[0];
    assert_eq!(event["properties"]["ruleName"], "DB CPU high");
    assert_eq!(event["priority"], "HIGH");
    let id = post(agent, "grafana", &payload("grafana-2.json")).await;
    assert_eq!(finished(agent, &id).await["status"], "DELIVERED");

    // Nagios: a PROBLEM becomes an event, an ACKNOWLEDGEMENT does not.
    let id = post(agent, "nagios", &payload("nagios-1.json")).await;
    finished(agent, &id).await;
    let event = &central_events(central, &id).await[0];
    assert_eq!(event["properties"]["summary"], "edge-router-01 is DOWN");
    assert_eq!(
        event["recipients"],
        json!([{"targetName": "edge-router-01"}])
    );
    let id = post(agent, "nagios", &payload("nagios-2.json")).await;
    assert_eq!(finished(agent, &id).await["status"], "COMPLETED");
    assert!(central_events(central, &id).await.is_empty());

    // Zabbix.
    let id = post(agent, "zabbix", &payload("zabbix-1.json")).await;
    finished(agent, &id).await;
    let event = &central_events(central, &id).await[0];
    assert_eq!(event["properties"]["severity"], "High");
    assert_eq!(event["properties"]["host_name"], "app-srv-14");
    assert_eq!(event["priority"], "HIGH");

    // Generic JSON mapper: nested fields flattened.
    let id = post(agent, "generic-json", &payload("datadog-1.json")).await;
    finished(agent, &id).await;
    let event = &central_events(central, &id).await[0];
    let properties = event["properties"].as_object().unwrap();
    assert!(properties.len() > 3, "{properties:?}");
    assert!(
        properties.keys().all(|k| !properties[k].is_object()),
        "not flattened: {properties:?}"
    );

    // The activity stream records the script's console output.
    let logs = admin_get(agent, "/api/xm/1/integrations/alertmanager/logs").await;
    let newest = &logs["data"][0];
    assert_eq!(newest["status"], "DELIVERED");
    assert_eq!(newest["eventIds"].as_array().unwrap().len(), 1);
    assert!(
        newest["log"][0]["message"]
            .as_str()
            .unwrap()
            .contains("1 event(s) of 2 alert(s)"),
        "{newest}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn flow_trigger_outputs_become_an_event_or_none() {
    let sys = start();
    let (agent, central) = (sys.agent.addr, sys.central.addr);
    let expected = [
        (
            "prometheus-1.json",
            "Alertmanager",
            "Checkout-Oncall",
            "HIGH",
        ),
        ("grafana-1.json", "Grafana", "dba", "HIGH"),
        ("datadog-1.json", "Datadog", "payments", "HIGH"),
        ("azure-devops-1.json", "Azure DevOps", "fabrikam", "MEDIUM"),
        ("keptn-1.json", "Keptn", "sockshop", "MEDIUM"),
        ("nagios-1.json", "Nagios", "edge-router-01", "HIGH"),
    ];
    for (file, source, recipient, priority) in expected {
        let id = post(agent, "flow", &payload(file)).await;
        assert_eq!(finished(agent, &id).await["status"], "DELIVERED", "{file}");
        let events = central_events(central, &id).await;
        assert_eq!(events.len(), 1, "{file}");
        assert_eq!(events[0]["properties"]["Source"], source, "{file}");
        assert_eq!(
            events[0]["properties"].as_object().unwrap().len(),
            2,
            "only the mapped properties: {}",
            events[0]
        );
        assert_eq!(events[0]["recipients"], json!([{"targetName": recipient}]));
        assert_eq!(events[0]["priority"], priority, "{file}");
        assert_eq!(events[0]["form"]["name"], "Incident Alert");
    }
    // The filter output says "no event" for a Nagios acknowledgement.
    let id = post(agent, "flow", &payload("nagios-2.json")).await;
    assert_eq!(finished(agent, &id).await["status"], "COMPLETED");
    assert!(central_events(central, &id).await.is_empty());
    let logs = admin_get(agent, "/api/xm/1/integrations/flow/logs").await;
    let entry = &logs["data"][0];
    assert_eq!(entry["events"], 0);
    assert_eq!(entry["outputs"]["Skip"], true, "{entry}");
    assert!(
        entry["skipped"].as_str().unwrap().contains("Skip"),
        "{entry}"
    );
    // A payload the trigger does not know fails with the script line in the activity stream.
    let id = post(agent, "flow", r#"{"something": "else"}"#).await;
    assert_eq!(finished(agent, &id).await["status"], "FAILED");
    let logs = admin_get(agent, "/api/xm/1/integrations/flow/logs").await;
    let entry = &logs["data"][0];
    assert!(entry["error"]["line"].as_u64().is_some(), "{entry}");
    assert!(entry["error"]["message"]
        .as_str()
        .unwrap()
        .contains("flow-alert.js:"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_soap_body_is_read_with_the_xml_helpers() {
    let sys = start();
    let (agent, central) = (sys.agent.addr, sys.central.addr);
    let id = post(agent, "soap", SOAP_BODY).await;
    assert_eq!(finished(agent, &id).await["status"], "DELIVERED");
    let events = central_events(central, &id).await;
    assert_eq!(
        events[0]["properties"],
        json!({"host": "db-7", "severity": "major", "summary": "Replication lag"})
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn run_script_calls_the_central_through_the_builtin_endpoint() {
    let sys = start();
    let (agent, central) = (sys.agent.addr, sys.central.addr);
    // Two events about host db-9, one about another host.
    let mut ids = Vec::new();
    for host in ["db-9", "db-9", "web-1"] {
        let answer = trigger(
            agent,
            "generic-json",
            "?apiKey=key-generic-json",
            &[],
            &json!({"host": host}).to_string(),
        )
        .await;
        let id = answer.json()["requestId"].as_str().unwrap().to_owned();
        finished(agent, &id).await;
        ids.push(id);
    }
    let id = post(agent, "terminator", r#"{"host": "db-9"}"#).await;
    let record = finished(agent, &id).await;
    assert_eq!(record["status"], "COMPLETED", "{record}");
    for (request, expected) in ids.iter().zip(["TERMINATED", "TERMINATED", "ACTIVE"]) {
        assert_eq!(
            central_events(central, request).await[0]["status"],
            expected
        );
    }
    let logs = admin_get(agent, "/api/xm/1/integrations/terminator/logs").await;
    let entry = &logs["data"][0];
    assert_eq!(entry["http"].as_array().unwrap().len(), 3, "{entry}");
    assert_eq!(entry["http"][0]["endpoint"], "xMatters");
    assert_eq!(entry["http"][1]["status"], 202);
    assert!(entry["log"][0]["message"]
        .as_str()
        .unwrap()
        .ends_with(": 202"));
    assert!(
        !logs.to_string().contains(AGENT_TOKEN),
        "the agent token leaked into the activity stream"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_script_fails_its_request_with_the_line_and_the_agent_keeps_serving() {
    let sys = start();
    let agent = sys.agent.addr;
    let id = post(agent, "broken", "{}").await;
    let record = finished(agent, &id).await;
    assert_eq!(record["status"], "FAILED");
    assert!(
        record["reason"].as_str().unwrap().contains("line 3")
            || record["reason"].as_str().unwrap().contains(":3"),
        "{record}"
    );
    let logs = admin_get(agent, "/api/xm/1/integrations/broken/logs").await;
    let entry = &logs["data"][0];
    assert_eq!(entry["status"], "FAILED");
    assert_eq!(entry["log"][0]["level"], "warn");
    assert_eq!(entry["error"]["kind"], "exception");
    assert_eq!(entry["error"]["line"], 3);
    // Invalid JSON body: the script's JSON.parse throws; the request fails, others still work.
    let id = post(agent, "alertmanager", "not json").await;
    assert_eq!(finished(agent, &id).await["status"], "FAILED");
    let id = post(agent, "alertmanager", &payload("prometheus-1.json")).await;
    assert_eq!(finished(agent, &id).await["status"], "DELIVERED");
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_scripts_and_refuses_a_broken_config() {
    let sys = start();
    let (agent, central) = (sys.agent.addr, sys.central.addr);
    let id = post(agent, "reloadable", "{}").await;
    finished(agent, &id).await;
    assert_eq!(
        central_events(central, &id).await[0]["properties"]["version"],
        1
    );

    // A new version of the script, picked up on SIGHUP while requests keep arriving: none of them
    // is refused or fails.
    std::fs::write(
        sys.dir.join("reloadable.js"),
        "trigger.properties.version = 2;\nform.post(trigger);\n",
    )
    .unwrap();
    let during = tokio::spawn(async move {
        let mut ids = Vec::new();
        for _ in 0..40 {
            ids.push(post(agent, "alertmanager", &payload("prometheus-1.json")).await);
        }
        ids
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    sys.agent.signal("HUP");
    for id in during.await.unwrap() {
        assert_eq!(
            finished(agent, &id).await["status"],
            "DELIVERED",
            "request {id} during the reload"
        );
    }
    let version = eventually(WAIT, "reloaded script in use", || async {
        let id = post(agent, "reloadable", "{}").await;
        finished(agent, &id).await;
        let version = central_events(central, &id).await[0]["properties"]["version"].clone();
        (version == 2).then_some(version)
    })
    .await;
    assert_eq!(version, 2);

    // A syntax error is refused: the log names the file and the previous script keeps running.
    std::fs::write(
        sys.dir.join("reloadable.js"),
        "trigger.properties.version = ;\n",
    )
    .unwrap();
    sys.agent.signal("HUP");
    eventually(WAIT, "reload refusal logged", || async {
        sys.agent.log().contains("reload refused").then_some(())
    })
    .await;
    assert!(
        sys.agent.log().contains("reloadable.js"),
        "the refusal must name the file"
    );
    let id = post(agent, "reloadable", "{}").await;
    finished(agent, &id).await;
    assert_eq!(
        central_events(central, &id).await[0]["properties"]["version"],
        2
    );
}

/// Run `xmagent check` on a config that must be refused: exit 78; answers its stderr.
fn check_refused(config: &Path) -> String {
    let out = std::process::Command::new(binary("xmagent"))
        .args(["check", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    stderr
}

#[test]
fn check_reports_a_script_syntax_error_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    write_scripts(dir.path());
    std::fs::write(dir.path().join("broken.js"), "var a = 1;\nvar b = ;\n").unwrap();
    let config = agent_config(dir.path(), 9, &integrations(dir.path()));
    let stderr = check_refused(&config);
    assert!(stderr.contains("broken.js"), "{stderr}");
    assert!(stderr.contains("integrations[6].script"), "{stderr}");
    assert!(stderr.contains('2'), "no line number: {stderr}");
}

#[test]
fn check_refuses_an_event_mapping_outside_http_trigger_and_empty_names() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("t.js"), "output.a = 1;\n").unwrap();
    let script = dir.path().join("t.js");
    for (action, mapping, key, reason) in [
        (
            "transform",
            "recipients = \"R\"",
            "].event: ",
            "only action \"http_trigger\"",
        ),
        (
            "http_trigger",
            "properties = { Summary = \"\" }",
            "].event.properties: ",
            "must not be empty",
        ),
    ] {
        let extra = format!(
            "{STANDARD_AGENT}\n[[integrations]]\nid = \"t\"\naction = \"{action}\"\n\
             script = \"{}\"\n[integrations.event]\n{mapping}\n",
            script.display()
        );
        let stderr = check_refused(&agent_config(dir.path(), 9, &extra));
        assert!(stderr.contains("agent.toml"), "{stderr}");
        assert!(stderr.contains(key), "{key}: {stderr}");
        assert!(stderr.contains(reason), "{reason}: {stderr}");
    }
}

/// A script integration accepts no faster than its scripts run: with room for one waiting
/// request, a second request's 202 comes only after the first one was processed.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_script_backlog_makes_ingress_wait_for_the_worker() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("slow.js"),
        "var until = Date.now() + 400;\nwhile (Date.now() < until) {}\nform.post(trigger);\n",
    )
    .unwrap();
    let central = start_central(dir.path(), 0);
    let extra = format!(
        "[scripts]\nthreads = 1\nbacklog_kib = 1\n\n{STANDARD_AGENT}\n\
         [[integrations]]\nid = \"slow\"\naction = \"transform\"\nauthenticating_user = \"svc\"\n\
         url_key = \"key-slow\"\nscript = \"{}\"\n",
        dir.path().join("slow.js").display()
    );
    let agent = start_agent(&agent_config(dir.path(), central.addr.port(), &extra));
    let first = post(agent.addr, "slow", "{\"n\": 1}").await;
    let second = post(agent.addr, "slow", "{\"n\": 2}").await;
    let record = admin_get(agent.addr, &format!("/api/agent/1/requests/{first}")).await;
    assert_ne!(
        record["status"], "ACCEPTED",
        "the second request was accepted while the first still waited: {record}"
    );
    assert_eq!(finished(agent.addr, &second).await["status"], "DELIVERED");
}
