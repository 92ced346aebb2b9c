//! Behaviour of the engine and the pool: isolation between runs, warm-context reuse, and the limits
//! that keep a runaway script from hurting the agent.

use scripts::{
    run_once, Engine, ErrorKind, HttpCall, HttpClient, HttpReply, Limits, LogLevel, Outcome,
    Program, ProgramSpec, ScriptPool, ScriptRequest, Source,
};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn program(id: &str, code: &str) -> Program {
    program_with(id, code, BTreeMap::new())
}

fn program_with(id: &str, code: &str, libraries: BTreeMap<String, Source>) -> Program {
    Program::compile(ProgramSpec {
        integration_id: id.to_owned(),
        script: Source {
            name: format!("{id}.js"),
            code: code.to_owned(),
        },
        libraries,
        constants: BTreeMap::from([("Team".to_owned(), "Ops".to_owned())]),
    })
    .expect("test program compiles")
}

fn request(body: &str) -> ScriptRequest {
    ScriptRequest {
        method: "POST".into(),
        headers: vec![("Content-Type".into(), "application/json".into())],
        body: body.into(),
        request_id: "r-1".into(),
        integration_uuid: "i-1".into(),
        remote_address: "127.0.0.1".into(),
        ..ScriptRequest::default()
    }
}

/// Answers 200 with the path as body, or fails for endpoint "down"; counts calls.
#[derive(Default)]
struct EchoClient {
    calls: AtomicUsize,
}

impl HttpClient for EchoClient {
    fn send(&self, call: &HttpCall) -> Result<HttpReply, String> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if call.endpoint == "down" {
            return Err("connection refused".into());
        }
        Ok(HttpReply {
            status: 200,
            headers: vec![("X-Reply".into(), "yes".into())],
            body: call.path.clone(),
        })
    }
}

fn client() -> Arc<dyn HttpClient> {
    Arc::new(EchoClient::default())
}

/// One run with an empty JSON body, the echo HTTP client and the default limits.
fn run_plain(program: &Program) -> Outcome {
    run_once(
        program,
        request("{}"),
        &EchoClient::default(),
        &Limits::default(),
    )
}

fn messages(outcome: &Outcome) -> Vec<&str> {
    outcome.logs.iter().map(|l| l.message.as_str()).collect()
}

fn engine(limits: Limits) -> Engine {
    Engine::new(limits).expect("engine starts")
}

/// Run `program` `runs` times in one engine (one warm context) and check that every run logs
/// `expected`: what a run did is invisible to the next. Returns the engine for its counters.
fn runs_log_alike(program: &Program, runs: usize, expected: &[&str]) -> Engine {
    let mut e = engine(Limits::default());
    for run in 0..runs {
        let outcome = e.run(program, request("{}"), client());
        assert!(outcome.is_ok(), "run {run}: {:?}", outcome.error);
        assert_eq!(messages(&outcome), expected, "run {run}");
    }
    e
}

#[test]
fn globals_set_in_one_run_are_gone_in_the_next() {
    let code = r#"
        console.log(typeof leaked, typeof this.viaThis, typeof hidden, JSON.stringify === undefined,
                    typeof globalThis[Symbol.for('stash')], typeof inherited);
        leaked = 1;
        this.viaThis = 2;
        var local = 3;
        Object.defineProperty(globalThis, 'hidden', { value: request.body, enumerable: false, configurable: true });
        globalThis[Symbol.for('stash')] = request.body;
        Object.setPrototypeOf(globalThis, { inherited: request.body });
        console.log(leaked + this.viaThis + local, typeof hidden, inherited);
        JSON = {}; // replaced standard bindings are put back
        delete globalThis.escape;
    "#;
    let e = runs_log_alike(
        &program("iso", code),
        3,
        &[
            "undefined undefined undefined false undefined undefined",
            "6 string {}",
        ],
    );
    assert_eq!(
        e.stats().contexts_created,
        1,
        "the clean-up kept the context warm"
    );
}

/// Every run starts clean (issue 11): what one run does to the built-ins, at any depth, is not
/// visible to the next run of the same integration in the same warm context. Each line tries a
/// change, and the next run reports what it sees.
#[test]
fn built_ins_cannot_carry_state_between_runs() {
    let code = r#"
        var seen = [typeof Math.stash, 'a'.toUpperCase(), JSON.parse('1'), typeof ({}).x,
                    [1].push(2), typeof (function () {}).x, typeof Function.prototype.x,
                    typeof String.prototype.shout, typeof Object.prototype.constructor.stash,
                    typeof Array.prototype.push.stash, Array.prototype.length, typeof [][0],
                    typeof Object.keys.stash, typeof Error.prototype.stash,
                    typeof Object.getPrototypeOf([][Symbol.iterator]()).stash];
        console.log(seen.join(' '));
        Math.stash = Math.stash || [];
        try { Math.stash.push(request.body); } catch (e) { /* Math is frozen */ }
        String.prototype.toUpperCase = function () { return 'leaked'; };
        JSON.parse = function () { return 'leaked'; };
        Object.prototype.x = 1;
        Array.prototype.push = function () { return 'leaked'; };
        Function.prototype.x = 1;
        String.prototype.shout = function () { return 'leaked'; };
        Object.prototype.constructor.stash = 1;
        Array.prototype.push.stash = 1;
        Array.prototype.length = 5;
        Object.keys.stash = 1;
        Error.prototype.stash = 1;
        Object.getPrototypeOf([][Symbol.iterator]()).stash = 1;
        try { Object.defineProperty(Object.prototype, 'y', { value: 1 }); } catch (e) { console.log(e.name); }
        (function () { 'use strict';
          try { Math.stash = 1; } catch (e) { console.log(e.name); } })();
    "#;
    let clean = "undefined A 1 undefined 2 undefined undefined undefined undefined undefined 0 undefined undefined undefined undefined";
    let e = runs_log_alike(
        &program("forget", code),
        3,
        &[clean, "TypeError", "TypeError"],
    );
    assert_eq!(e.stats().contexts_created, 1);
}

/// Freezing the built-ins must not break the ES5 idioms that assign over inherited built-in
/// names on the script's own objects (the "override mistake"), nor ordinary globals.
#[test]
fn scripts_still_override_inherited_names_on_their_own_objects() {
    let code = r#"
        function Base(name) { this.name = name; }
        Base.prototype.toString = function () { return 'Base ' + this.name; };
        function Child(name) { Base.call(this, name); }
        Child.prototype = Object.create(Base.prototype);
        Child.prototype.constructor = Child;
        function MyError(message) { this.message = message; }
        MyError.prototype = Object.create(Error.prototype);
        MyError.prototype.name = 'MyError';
        var o = {}; o.valueOf = function () { return 41; }; o.hasOwnProperty = 1;
        var c = new Child('x');
        var counter = 0; total = (typeof total === 'number' ? total : 0) + 1;
        console.log(String(c), c.constructor === Child, new MyError('m').name, o + 1,
                    o.hasOwnProperty, Object.prototype.hasOwnProperty.call(c, 'name'),
                    String(new MyError('boom')), total, ['b', 'a'].sort().join());
    "#;
    runs_log_alike(
        &program("idioms", code),
        2,
        &["Base x true MyError 42 1 true MyError: boom 1 a,b"],
    );
}

/// The leak guard's fast path compares the enumerable names with those after setup; a run that
/// removes one enumerable global and adds another keeps the count but is still cleaned up.
#[test]
fn a_global_swapped_for_another_is_still_removed() {
    let code = "console.log(typeof swapped); delete globalThis.performance; swapped = 1;";
    let e = runs_log_alike(&program("swap", code), 3, &["undefined"]);
    assert_eq!(e.stats().contexts_created, 1);
}

/// `form.post` converts plain objects without a JSON round trip; the result must be what
/// `JSON.parse(JSON.stringify(x))` gives, including for values that take the `JSON.stringify`
/// path (`toJSON`, dates, boxed primitives, class instances, proxies).
#[test]
fn posted_objects_match_json_stringify() {
    let code = r#"
        function Point(x) { this.x = x; }
        var withGetter = {};
        Object.defineProperty(withGetter, 'g', { get: function () { return 'got'; }, enumerable: true });
        Object.defineProperty(withGetter, 'hidden', { value: 1, enumerable: false });
        withGetter[Symbol('s')] = 1;
        var cases = [
          { s: 'x"\n\u00e9\ud83d\ude00', n: 1, f: 2.5, neg: -7, zero: -0, big: 9007199254740993,
            huge: 1e21, tiny: 1e-7, nan: NaN, inf: -Infinity, t: true, nul: null, u: undefined,
            fn: function () {}, nested: { a: [1, 'two', null, undefined, function () {}, { b: {} }] } },
          { 2: 'b', 1: 'a', z: 'last', properties: { Summary: 'x' } },
          { when: new Date(0), boxed: new String('s'), num: new Number(3) },
          { p: new Point(1), custom: { toJSON: function () { return 'custom'; } } },
          { headers: request.headers, bare: Object.create(null) },
          withGetter,
          [1, [2, [3]], { k: 'v' }],
          { int: 4 / 2, large: 18446744073709551616, minInt: -9223372036854775808, frac: 0.1 + 0.2,
            p63: 9223372036854775808, mid: 123456789012345680000, neg53: -9007199254740992 }
        ];
        for (var i = 0; i < cases.length; i++) {
          form.post(cases[i]);
          console.log(JSON.stringify(cases[i]));
        }
        var circular = {}; circular.self = circular;
        try { form.post(circular); } catch (e) { console.log(String(e instanceof TypeError)); }
    "#;
    let p = program("posts", code);
    let outcome = run_plain(&p);
    assert!(outcome.is_ok(), "{:?}", outcome.error);
    let logs = messages(&outcome);
    assert_eq!(logs.last(), Some(&"true"));
    assert_eq!(outcome.posts.len(), logs.len() - 1);
    for (posted, text) in outcome.posts.iter().zip(&logs) {
        let expected: serde_json::Value = serde_json::from_str(text).expect("valid JSON");
        assert_eq!(posted, &expected, "{text}");
    }
}

/// The function-valued built-ins are shared by the runs of a context, so a run must not be able
/// to leave anything on them (they are frozen; sloppy-mode writes are silently ignored).
#[test]
fn shared_built_ins_cannot_carry_state_between_runs() {
    let code = r#"
        console.log(typeof form.extra, typeof console.saved, typeof require.cache,
                    typeof http.request.memo, typeof JXON.parse.x, typeof XMLUtils.JXON.y,
                    form.post === form.post, constants.Team, typeof trigger.leftover,
                    request.headers['CONTENT-TYPE'], 'content-type' in request.headers);
        form.extra = 1; console.saved = 2; require.cache = 3; http.request.memo = 4;
        JXON.parse.x = 5; XMLUtils.JXON.y = 6; constants.Team = 'changed';
        trigger.leftover = 7; console.log = function () {};
        (function () { 'use strict';
          try { form.post = null; } catch (e) { console.warn(e instanceof TypeError); } })();
    "#;
    let e = runs_log_alike(
        &program("frozen", code),
        2,
        &[
            "undefined undefined undefined undefined undefined undefined true Ops undefined application/json true",
            "true",
        ],
    );
    assert_eq!(e.stats().contexts_created, 1);
}

#[test]
fn two_programs_do_not_share_state() {
    let writer = program(
        "writer",
        "shared = 'from writer'; console.log(typeof shared);",
    );
    let reader = program("reader", "console.log(typeof shared);");
    let mut e = engine(Limits::default());
    assert_eq!(
        messages(&e.run(&writer, request("{}"), client())),
        ["string"]
    );
    assert_eq!(
        messages(&e.run(&reader, request("{}"), client())),
        ["undefined"]
    );
    assert_eq!(e.stats().warm_contexts, 2);
}

#[test]
fn warm_context_is_reused_and_recycled_after_failure_and_reload() {
    let p = program(
        "warm",
        "if (JSON.parse(request.body).fail) throw new Error('no'); form.post(trigger);",
    );
    let mut e = engine(Limits::default());
    for _ in 0..5 {
        assert!(e.run(&p, request("{}"), client()).is_ok());
    }
    assert_eq!(e.stats().contexts_created, 1);
    assert_eq!(e.stats().runs, 5);
    let failed = e.run(&p, request(r#"{"fail":true}"#), client());
    assert_eq!(failed.error.map(|e| e.kind), Some(ErrorKind::Exception));
    assert!(e.run(&p, request("{}"), client()).is_ok());
    assert_eq!(
        e.stats().contexts_created,
        2,
        "a failure recycles the context"
    );
    // A recompiled program (configuration reload) gets a new context.
    let reloaded = program("warm", "form.post(trigger);");
    assert_ne!(reloaded.generation(), p.generation());
    assert!(e.run(&reloaded, request("{}"), client()).is_ok());
    assert_eq!(e.stats().contexts_created, 3);
}

#[test]
fn contexts_are_recycled_after_max_runs_and_evicted_when_too_many() {
    let limits = Limits {
        max_runs_per_context: 3,
        max_warm_contexts: 2,
        ..Limits::default()
    };
    let mut e = engine(limits);
    let p = program("a", "form.post(trigger);");
    for _ in 0..6 {
        assert!(e.run(&p, request("{}"), client()).is_ok());
    }
    assert_eq!(e.stats().contexts_created, 2);
    for id in ["b", "c", "d"] {
        assert!(e.run(&program(id, ";"), request("{}"), client()).is_ok());
    }
    assert_eq!(e.stats().warm_contexts, 2);
}

#[test]
fn timeout_cannot_be_swallowed_by_catch_or_finally() {
    let limits = Limits {
        timeout: Duration::from_millis(200),
        ..Limits::default()
    };
    for code in [
        "for (;;) { try { while (true) {} } catch (e) { console.log('caught ' + e); } }",
        "try { while (true) {} } finally { for (;;) {} }",
        "Promise.resolve().then(function () { for (;;) {} });",
    ] {
        let p = program("spin", code);
        let started = Instant::now();
        let outcome = run_once(&p, request("{}"), &EchoClient::default(), &limits);
        assert_eq!(
            outcome.error.as_ref().map(|e| e.kind),
            Some(ErrorKind::Timeout),
            "{code}: {:?}",
            outcome.error
        );
        assert!(outcome.logs.is_empty(), "{code}: the catch block never ran");
        assert!(started.elapsed() < Duration::from_secs(3), "{code}");
    }
}

#[test]
fn memory_limit_fails_the_run_and_the_engine_recovers() {
    let limits = Limits {
        memory_bytes: 16 * 1024 * 1024,
        ..Limits::default()
    };
    let mut e = engine(limits);
    let bomb = program(
        "bomb",
        "var keep = []; while (true) { keep.push(new Array(100000).join('x')); }",
    );
    let outcome = e.run(&bomb, request("{}"), client());
    assert_eq!(outcome.error.map(|e| e.kind), Some(ErrorKind::Memory));
    let fine = program("fine", "form.post({properties: {ok: true}});");
    let after = e.run(&fine, request("{}"), client());
    assert!(after.is_ok(), "{:?}", after.error);
    assert_eq!(after.posts.len(), 1);
}

#[test]
fn stack_overflow_is_a_catchable_exception() {
    let p = program(
        "deep",
        "function f(n) { return f(n + 1) + 1; } try { f(0); } catch (e) { console.log('caught', e instanceof RangeError); }",
    );
    let outcome = run_plain(&p);
    assert!(outcome.is_ok(), "{:?}", outcome.error);
    assert_eq!(messages(&outcome), ["caught true"]);
}

#[test]
fn http_call_limit_is_enforced_even_when_the_script_catches() {
    let limits = Limits {
        max_http_calls: 2,
        ..Limits::default()
    };
    let p = program(
        "calls",
        "for (var i = 0; i < 5; i++) { try { http.request({endpoint: 'e', path: '/' + i}).write(); } catch (e) {} } form.post(trigger);",
    );
    let http = EchoClient::default();
    let outcome = run_once(&p, request("{}"), &http, &limits);
    let error = outcome.error.expect("the run fails");
    assert_eq!(error.kind, ErrorKind::Limit);
    assert!(error.message.contains("HTTP calls"), "{}", error.message);
    assert_eq!(http.calls.load(Ordering::SeqCst), 2);
    assert_eq!(outcome.http.len(), 2);
}

#[test]
fn post_limit_is_enforced() {
    let limits = Limits {
        max_posts: 3,
        ..Limits::default()
    };
    let p = program(
        "posts",
        "for (var i = 0; i < 10; i++) { try { form.post({properties: {i: i}}); } catch (e) {} }",
    );
    let outcome = run_once(&p, request("{}"), &EchoClient::default(), &limits);
    assert_eq!(outcome.error.map(|e| e.kind), Some(ErrorKind::Limit));
    assert_eq!(outcome.posts.len(), 3);

    let limits = Limits {
        max_post_bytes: 1000,
        ..Limits::default()
    };
    for shape in ["{s: big}", "{d: new Date(0), s: big}"] {
        let p = program(
            "post-bytes",
            &format!("var big = new Array(400).join('x'); for (var i = 0; i < 5; i++) {{ try {{ form.post({shape}); }} catch (e) {{}} }}"),
        );
        let outcome = run_once(&p, request("{}"), &EchoClient::default(), &limits);
        assert_eq!(
            outcome.error.map(|e| e.kind),
            Some(ErrorKind::Limit),
            "{shape}"
        );
        assert_eq!(outcome.posts.len(), 2, "{shape}");
    }
}

#[test]
fn console_output_is_capped() {
    let limits = Limits {
        max_log_bytes: 100,
        ..Limits::default()
    };
    let p = program(
        "chatty",
        "for (var i = 0; i < 50; i++) console.log('0123456789');",
    );
    let outcome = run_once(&p, request("{}"), &EchoClient::default(), &limits);
    assert!(outcome.is_ok());
    let (note, kept) = outcome.logs.split_last().expect("some logs");
    assert!(note.message.contains("truncated"), "{}", note.message);
    assert_eq!(note.level, LogLevel::Warn);
    assert_eq!(kept.iter().map(|l| l.message.len()).sum::<usize>(), 100);
}

#[test]
fn http_failures_and_replies_reach_the_script() {
    let p = program(
        "http",
        r#"
        try { http.request({endpoint: 'down', path: '/x'}).write(); } catch (e) { console.log('failed: ' + e.message); }
        var r = http.request({endpoint: 'cmdb', path: '/ci/a b?q=ü', method: 'post'}).write({a: 1});
        console.log(r.statusCode, r.body, r.headers['x-reply']);
        var raw = http.request({endpoint: 'cmdb', path: '/a b', autoEncodeURI: false}).write();
        console.log(raw.body);
        "#,
    );
    let outcome = run_plain(&p);
    assert!(outcome.is_ok(), "{:?}", outcome.error);
    assert_eq!(
        messages(&outcome),
        [
            "failed: HTTP request to endpoint 'down' failed: connection refused",
            "200 /ci/a%20b?q=%C3%BC yes",
            "/a b"
        ]
    );
    assert_eq!(outcome.http[1].method, "POST");
    assert_eq!(outcome.http[1].body.as_deref(), Some(r#"{"a":1}"#));
    assert_eq!(outcome.http[0].error.as_deref(), Some("connection refused"));
}

#[test]
fn jxon_handles_attributes_entities_and_cdata() {
    let p = program(
        "xml",
        r#"
        var x = XMLUtils.JXON.parse('<?xml version="1.0"?><!-- c --><a id="1" kind=\'x\'><b>1 &lt; 2</b><c><![CDATA[<raw>]]></c><d/><e n="2">text</e></a>');
        console.log(JSON.stringify(x));
        try { JXON.parse('<a><b></a>'); } catch (e) { console.log(e.name); }
        "#,
    );
    let outcome = run_plain(&p);
    assert!(outcome.is_ok(), "{:?}", outcome.error);
    assert_eq!(
        messages(&outcome),
        [
            // Child elements first, then attributes, as xMatters' JXON orders them.
            // Values are parsed: numbers become numbers.
            r#"{"a":{"b":"1 < 2","c":"<raw>","d":true,"e":{"@n":2,"keyValue":"text"},"@id":1,"@kind":"x"}}"#,
            "SyntaxError"
        ]
    );
}

#[test]
fn libraries_share_the_run_and_syntax_errors_name_the_library() {
    let libs = BTreeMap::from([(
        "util".to_owned(),
        Source {
            name: "libs/util.js".into(),
            code: "exports.team = function () { return constants.Team; };".into(),
        },
    )]);
    let p = program_with("lib", "console.log(require('util').team());", libs);
    let outcome = run_plain(&p);
    assert_eq!(messages(&outcome), ["Ops"]);

    let broken = BTreeMap::from([(
        "bad".to_owned(),
        Source {
            name: "libs/bad.js".into(),
            code: "\nexports.x = function ( {;".into(),
        },
    )]);
    let error = Program::compile(ProgramSpec {
        integration_id: "x".into(),
        script: Source {
            name: "s.js".into(),
            code: ";".into(),
        },
        libraries: broken,
        constants: BTreeMap::new(),
    })
    .expect_err("library does not compile");
    assert_eq!(error.kind, ErrorKind::Syntax);
    assert!(error.message.contains("libs/bad.js"), "{}", error.message);
    assert_eq!(error.line, Some(2));
}

#[test]
fn script_cannot_see_host_hooks() {
    let p = program(
        "probe",
        "console.log(typeof native, typeof run, typeof libraries, typeof registerLibrary, Object.keys(arguments).length);",
    );
    let outcome = run_plain(&p);
    assert_eq!(
        messages(&outcome),
        ["undefined undefined undefined undefined 10"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_keeps_serving_after_a_runaway_script() {
    let limits = Limits {
        timeout: Duration::from_millis(200),
        ..Limits::default()
    };
    let pool = ScriptPool::new(1, 1, limits);
    let runaway = Arc::new(program("runaway", "while (true) {}"));
    let good = Arc::new(program(
        "good",
        "form.post({properties: {n: JSON.parse(request.body).n}});",
    ));
    let outcome = pool.run(runaway.clone(), request("{}"), client()).await;
    assert_eq!(outcome.error.map(|e| e.kind), Some(ErrorKind::Timeout));
    let mut handles = Vec::new();
    let pool = Arc::new(pool);
    for n in 0..20 {
        let pool = pool.clone();
        let good = good.clone();
        handles.push(tokio::spawn(async move {
            pool.run(good, request(&format!("{{\"n\":{n}}}")), client())
                .await
        }));
    }
    for (n, handle) in handles.into_iter().enumerate() {
        let outcome = handle.await.expect("task");
        assert!(outcome.is_ok(), "{:?}", outcome.error);
        assert_eq!(outcome.posts[0]["properties"]["n"], serde_json::json!(n));
    }
    let pool = Arc::into_inner(pool).expect("sole owner");
    pool.shutdown();
}

/// Per-run cost of a warm context for an Alertmanager-like transform (2 KiB JSON body, one
/// form.post per alert). Run with `cargo test -p scripts --release --test engine -- --ignored
/// --nocapture warm_run_cost`.
#[test]
#[ignore]
fn warm_run_cost() {
    let alert = r#"{"status":"firing","labels":{"alertname":"HighCPU","instance":"web01:9100","severity":"critical","job":"node"},"annotations":{"summary":"CPU above 90% on web01","description":"CPU usage has been above 90% for 5 minutes on web01:9100."},"startsAt":"2026-11-28T10:00:00Z","endsAt":"0001-01-01T00:00:00Z","generatorURL":"http://prometheus:9090/graph?g0.expr=cpu","fingerprint":"a1b2c3d4"}"#;
    let alerts = [alert; 5].join(",");
    let body = format!(
        r#"{{"receiver":"xmatters","status":"firing","alerts":[{alerts}],"groupLabels":{{"alertname":"HighCPU"}},"commonLabels":{{"env":"prod"}},"externalURL":"http://alertmanager:9093","version":"4"}}"#
    );
    assert!(body.len() >= 2000, "body is {} bytes", body.len());
    let code = r#"
        var data = JSON.parse(request.body);
        for (var i = 0; i < data.alerts.length; i++) {
          var a = data.alerts[i];
          if (a.status !== 'firing') continue;
          form.post({ properties: { Name: a.labels.alertname, Instance: a.labels.instance,
            Summary: a.annotations.summary, Env: data.commonLabels.env },
            priority: a.labels.severity === 'critical' ? 'HIGH' : 'LOW' });
        }
    "#;
    let p = program("bench", code);
    let mut e = engine(Limits::default());
    let http = client();
    for _ in 0..200 {
        assert!(e.run(&p, request(&body), http.clone()).is_ok());
    }
    let n = 5000u32;
    let started = Instant::now();
    for _ in 0..n {
        let outcome = e.run(&p, request(&body), http.clone());
        assert_eq!(outcome.posts.len(), 5);
    }
    let warm = started.elapsed() / n;
    let cold_started = Instant::now();
    for _ in 0..50 {
        let fresh = program("bench", code);
        assert!(e.run(&fresh, request(&body), http.clone()).is_ok());
    }
    let cold = cold_started.elapsed() / 50;
    println!(
        "warm run: {} µs/run ({} B body, 5 posts); cold (new context): {} µs/run; contexts created: {}",
        warm.as_micros(),
        body.len(),
        cold.as_micros(),
        e.stats().contexts_created
    );
}

/// Fair script threads (issue 11): with two threads and a share of one, four runaway runs of one
/// integration hold one thread at a time and queue for it; another integration's run goes
/// through the other thread at once, long before the runaway runs time out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_integration_cannot_hold_every_thread() {
    let limits = Limits {
        timeout: Duration::from_millis(800),
        ..Limits::default()
    };
    let pool = Arc::new(ScriptPool::new(2, scripts::default_share(2), limits));
    assert_eq!(scripts::default_share(2), 1);
    assert_eq!(scripts::default_share(1), 1);
    assert_eq!(scripts::default_share(5), 3);
    let runaway = Arc::new(program("runaway", "while (true) {}"));
    let good = Arc::new(program("good", "form.post(trigger);"));
    let started = Instant::now();
    let loops: Vec<_> = (0..4)
        .map(|_| {
            let (pool, runaway) = (pool.clone(), runaway.clone());
            tokio::spawn(async move { pool.run(runaway, request("{}"), client()).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let outcome = pool.run(good.clone(), request("{}"), client()).await;
    let neighbour = started.elapsed();
    assert!(outcome.is_ok(), "{:?}", outcome.error);
    assert!(
        neighbour < Duration::from_millis(600),
        "the neighbour waited {neighbour:?} behind runaway scripts"
    );
    let mut finished = Vec::new();
    for handle in loops {
        let outcome = handle.await.expect("task");
        assert_eq!(outcome.error.map(|e| e.kind), Some(ErrorKind::Timeout));
        finished.push(started.elapsed());
    }
    // One at a time: the last runaway run ends after four time limits, not two.
    assert!(
        finished[3] >= Duration::from_millis(4 * 800),
        "runaway runs overlapped: {finished:?}"
    );
}

/// Promise jobs a failed or aborted run left queued belong to that run: they must not act (post,
/// log) during the next run of the thread, which may be another integration's.
#[test]
fn jobs_left_by_a_failed_run_do_not_act_in_the_next() {
    let limits = Limits {
        timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let mut e = engine(limits);
    for code in [
        "Promise.resolve().then(function () { form.post({properties: {leaked: 1}}); console.log('leaked'); });\nthrow new Error('fail');",
        "Promise.resolve().then(function again() { form.post({properties: {leaked: 1}}); return Promise.resolve().then(again); });\nwhile (true) {}",
    ] {
        let failing = program("failing", code);
        let failed = e.run(&failing, request("{}"), client());
        assert!(failed.error.is_some(), "{code}");
        assert!(failed.posts.is_empty(), "{code}");
        let good = program("good", "form.post({properties: {mine: 1}});");
        let outcome = e.run(&good, request("{}"), client());
        assert!(outcome.is_ok(), "{code}: {:?}", outcome.error);
        assert_eq!(outcome.posts.len(), 1, "{code}: {:?}", outcome.posts);
        assert!(outcome.logs.is_empty(), "{code}: {:?}", outcome.logs);
    }
}
