//! Run one script file once and print its console output: a quick way to time engine internals in a
//! release build (`cargo run -p scripts --release --example run_file -- FILE.js`).

use scripts::{
    run_once, HttpCall, HttpClient, HttpReply, Limits, Program, ProgramSpec, ScriptRequest, Source,
};
use std::collections::BTreeMap;

struct NoHttp;

impl HttpClient for NoHttp {
    fn send(&self, _call: &HttpCall) -> Result<HttpReply, String> {
        Err("no HTTP here".into())
    }
}

fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: run_file FILE.js");
        std::process::exit(64);
    };
    let code = match std::fs::read_to_string(&path) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{path}: {e}");
            std::process::exit(64);
        }
    };
    let spec = ProgramSpec {
        integration_id: "file".into(),
        script: Source { name: path, code },
        libraries: BTreeMap::new(),
        constants: BTreeMap::new(),
    };
    let outcome = match Program::compile(spec) {
        Ok(program) => run_once(
            &program,
            ScriptRequest::default(),
            &NoHttp,
            &Limits::default(),
        ),
        Err(error) => scripts::Outcome::failed(error),
    };
    for log in &outcome.logs {
        println!("{}", log.message);
    }
    if let Some(error) = outcome.error {
        println!("error: {error}");
    }
}
