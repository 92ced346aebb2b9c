//! `JXON.parse` (XML text to plain objects) in the real script sandbox, as Integration Builder
//! scripts call it on request bodies.
//!
//! Invariants: nothing panics and the engine survives every input; a parse either succeeds (and
//! its result serializes to JSON) or throws the markup reader's "cannot parse the document"
//! error, never anything else: no timeout, no memory error, no internal error on a few KiB.
#![no_main]

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use scripts::dry_run::FixtureClient;
use scripts::{Engine, ErrorKind, Limits, Program, ProgramSpec, ScriptRequest, Source};

const SCRIPT: &str = "form.post({properties: {parsed: JSON.stringify(JXON.parse(request.body))}});";

thread_local! {
    static ENGINE: RefCell<Engine> = RefCell::new(
        Engine::new(Limits { timeout: Duration::from_secs(5), ..Limits::default() })
            .expect("a script engine")
    );
    static PROGRAM: Program = Program::compile(ProgramSpec {
        integration_id: "fuzz-jxon".to_owned(),
        script: Source { name: "jxon.js".to_owned(), code: SCRIPT.to_owned() },
        libraries: BTreeMap::new(),
        constants: BTreeMap::new(),
    })
    .expect("the script compiles");
}

fuzz_target!(|xml: &str| {
    let request = ScriptRequest {
        body: xml.to_owned(),
        ..ScriptRequest::default()
    };
    let outcome = PROGRAM.with(|program| {
        ENGINE.with(|engine| {
            engine
                .borrow_mut()
                .run(program, request, Arc::new(FixtureClient::empty()))
        })
    });
    match &outcome.error {
        None => {
            assert_eq!(outcome.posts.len(), 1);
            let parsed = outcome.posts[0]["properties"]["parsed"].as_str();
            assert!(parsed.is_some(), "{:?}", outcome.posts);
        }
        Some(error) => assert!(
            error.kind == ErrorKind::Exception
                && error.message.contains("cannot parse the document"),
            "not a markup error: {error:?} for {xml:?}"
        ),
    }
});
