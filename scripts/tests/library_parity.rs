//! Edges of the library API where scripts depend on xMatters' exact behaviour: a `require` of a
//! library that is not there, a constant that is not defined, `http.request` without a path, and
//! errors that must name the script (or library) line in the activity stream.

use scripts::{
    run_once, ErrorKind, HttpCall, HttpClient, HttpReply, Limits, Outcome, Program, ProgramSpec,
    ScriptRequest, Source,
};
use std::collections::BTreeMap;
use std::sync::Mutex;

/// Answers 200 and remembers the paths it was asked for.
#[derive(Default)]
struct Recorder {
    paths: Mutex<Vec<(String, String)>>,
}

impl HttpClient for Recorder {
    fn send(&self, call: &HttpCall) -> Result<HttpReply, String> {
        self.paths
            .lock()
            .unwrap()
            .push((call.endpoint.clone(), call.path.clone()));
        Ok(HttpReply {
            status: 200,
            headers: vec![],
            body: "{}".into(),
        })
    }
}

fn run(code: &str, libraries: &[(&str, &str)], http: &Recorder) -> Outcome {
    let program = Program::compile(ProgramSpec {
        integration_id: "parity".into(),
        script: Source {
            name: "script.js".into(),
            code: code.into(),
        },
        libraries: libraries
            .iter()
            .map(|(name, code)| {
                (
                    (*name).to_owned(),
                    Source {
                        name: format!("lib/{name}.js"),
                        code: (*code).to_owned(),
                    },
                )
            })
            .collect(),
        constants: BTreeMap::from([("Defined".to_owned(), "yes".to_owned())]),
    })
    .expect("compiles");
    run_once(
        &program,
        ScriptRequest {
            body: "{}".into(),
            ..ScriptRequest::default()
        },
        http,
        &Limits::default(),
    )
}

#[test]
fn require_of_a_missing_library_names_it_and_the_line() {
    let outcome = run(
        "var a = 1;\nvar lib = require('Missing Lib');\n",
        &[],
        &Recorder::default(),
    );
    let error = outcome.error.expect("fails");
    assert_eq!(error.kind, ErrorKind::Exception);
    assert!(error.message.contains("'Missing Lib'"), "{}", error.message);
    assert_eq!(error.line, Some(2));
    assert!(error.message.contains("script.js:2"), "{}", error.message);
}

#[test]
fn a_missing_library_can_be_caught() {
    let outcome = run(
        "try { require('Nope'); } catch (e) { console.log('caught'); }",
        &[],
        &Recorder::default(),
    );
    assert!(outcome.is_ok());
    assert_eq!(outcome.logs[0].message, "caught");
}

#[test]
fn an_undefined_constant_is_undefined_and_using_it_names_the_line() {
    let outcome = run(
        "console.log(constants.Defined, constants.Undefined === undefined, 'Undefined' in constants);\n\
         var x = constants.Undefined.trim();\n",
        &[],
        &Recorder::default(),
    );
    assert_eq!(outcome.logs[0].message, "yes true false");
    let error = outcome.error.expect("fails");
    assert!(error.message.starts_with("TypeError"), "{}", error.message);
    assert_eq!(error.line, Some(2));
}

#[test]
fn http_request_without_path_calls_the_endpoint_base() {
    let http = Recorder::default();
    let outcome = run(
        "var r = http.request({ endpoint: 'CMDB', method: 'GET' }).write();\nconsole.log(r.statusCode);",
        &[],
        &http,
    );
    assert!(outcome.is_ok(), "{:?}", outcome.error);
    assert_eq!(
        *http.paths.lock().unwrap(),
        [("CMDB".to_owned(), String::new())]
    );
    assert_eq!(outcome.http[0].path, "");
}

#[test]
fn http_request_without_endpoint_is_a_clear_error() {
    let outcome = run(
        "\n\nhttp.request({ path: '/x' }).write();",
        &[],
        &Recorder::default(),
    );
    let error = outcome.error.expect("fails");
    assert!(error.message.contains("no endpoint"), "{}", error.message);
    assert_eq!(error.line, Some(3));
}

#[test]
fn an_error_inside_a_library_names_the_library_line() {
    let outcome = run(
        "var lib = require('Helpers');\nlib.explode();\n",
        &[(
            "Helpers",
            "exports.explode = function () {\n  null.x();\n};\n",
        )],
        &Recorder::default(),
    );
    let error = outcome.error.expect("fails");
    assert!(
        error.message.contains("lib/Helpers.js:2"),
        "{}",
        error.message
    );
    assert_eq!(error.line, Some(2));
}
