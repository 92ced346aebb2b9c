//! The XML helpers as scripts use them: `JXON` (xMatters' defaults and `config`),
//! `XMLUtils.DOMParser` (XML and lenient HTML) and `XMLUtils.xpath` (namespaces, predicates,
//! `text()`, attributes), on realistic documents: SOAP envelopes, namespaced feeds, HTML pages.

use scripts::{
    run_once, Engine, ErrorKind, HttpCall, HttpClient, HttpReply, Limits, Outcome, Program,
    ProgramSpec, ScriptRequest, Source,
};
use std::collections::BTreeMap;
use std::sync::Arc;

struct NoHttp;

impl HttpClient for NoHttp {
    fn send(&self, _: &HttpCall) -> Result<HttpReply, String> {
        Err("no HTTP in these tests".into())
    }
}

fn program(code: &str) -> Program {
    Program::compile(ProgramSpec {
        integration_id: "xml".into(),
        script: Source {
            name: "xml.js".into(),
            code: code.into(),
        },
        libraries: BTreeMap::new(),
        constants: BTreeMap::new(),
    })
    .expect("test script compiles")
}

fn request(body: &str) -> ScriptRequest {
    ScriptRequest {
        method: "POST".into(),
        headers: vec![("Content-Type".into(), "text/xml".into())],
        body: body.into(),
        ..ScriptRequest::default()
    }
}

fn run_with(code: &str, body: &str, limits: &Limits) -> Outcome {
    run_once(&program(code), request(body), &NoHttp, limits)
}

fn run(code: &str, body: &str) -> Outcome {
    run_with(code, body, &Limits::default())
}

/// The console lines of a run that must have succeeded.
fn logs(code: &str, body: &str) -> Vec<String> {
    let outcome = run(code, body);
    assert!(outcome.is_ok(), "script failed: {:?}", outcome.error);
    outcome.logs.into_iter().map(|l| l.message).collect()
}

const SOAP: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"
    xmlns:inc="urn:example:incident">
  <soapenv:Header/>
  <soapenv:Body>
    <inc:CreateIncident Priority="High">
      <inc:Ticket>16931</inc:Ticket>
      <inc:Summary>Mail server is down &amp; queues grow</inc:Summary>
      <inc:Notes><![CDATA[<b>raw</b> text]]></inc:Notes>
      <inc:Recipients>
        <inc:Username>bsmith</inc:Username>
        <inc:Username>mmcbride</inc:Username>
      </inc:Recipients>
    </inc:CreateIncident>
  </soapenv:Body>
</soapenv:Envelope>"#;

const INCIDENT: &str = r#"<incident importance="High">
    <ticket>16931</ticket>
    <summary>Mail server is down</summary>
    <Closed/>
    <recipients>
        <username>bsmith</username>
        <username>mmcbride</username>
    </recipients>
</incident>"#;

#[test]
fn jxon_lowercases_tag_names_by_default() {
    let out = logs(
        "var d = JXON.parse('<Envelope><Body>x</Body></Envelope>');\n\
         console.log(d.envelope.body === 'x', XMLUtils.JXON.parse('<A><B>y</B></A>').a.b);",
        "",
    );
    assert_eq!(out, ["true y"]);
}

#[test]
fn jxon_builds_attributes_repeats_empty_elements_and_text() {
    let out = logs(
        "var d = JXON.parse(request.body).incident;\n\
         console.log(d['@importance'], d.ticket, d.summary, d.closed, d.recipients.username.join('+'));\n\
         var mixed = JXON.parse('<note lang=\"en\">  Hello <b>big</b> world </note>').note;\n\
         console.log(JSON.stringify(mixed));",
        INCIDENT,
    );
    assert_eq!(
        out,
        [
            "High 16931 Mail server is down true bsmith+mmcbride",
            r#"{"b":"big","@lang":"en","keyValue":"Helloworld"}"#
        ]
    );
}

#[test]
fn jxon_reads_a_soap_envelope_with_prefixed_lowercased_names() {
    let out = logs(
        "var inc = JXON.parse(request.body)['soapenv:envelope']['soapenv:body']['inc:createincident'];\n\
         console.log(inc['@priority'], inc['inc:ticket'], inc['inc:summary']);\n\
         console.log(inc['inc:notes'], inc['inc:recipients']['inc:username'].length);",
        SOAP,
    );
    assert_eq!(
        out,
        [
            "High 16931 Mail server is down & queues grow",
            "<b>raw</b> text 2"
        ]
    );
}

#[test]
fn jxon_config_switches_options_for_the_run_only() {
    let code = "if (request.body === 'configure') XMLUtils.JXON.config({ lowerCaseTags: false, trueIsEmpty: false, valueKey: '#text', parseValues: false });\n\
                console.log(JSON.stringify(JXON.parse('<Alert n=\"3\"><Empty/><Count>2</Count><Up>true</Up></Alert>')));";
    let program = program(code);
    let mut engine = Engine::new(Limits::default()).expect("engine");
    let http: Arc<dyn HttpClient> = Arc::new(NoHttp);
    let mut line = |body: &str| {
        let outcome = engine.run(&program, request(body), http.clone());
        assert!(outcome.is_ok(), "{:?}", outcome.error);
        outcome.logs[0].message.clone()
    };
    assert_eq!(
        line("configure"),
        r#"{"Alert":{"Empty":"","Count":"2","Up":"true","@n":"3"}}"#
    );
    // The next run in the same warm context starts from the defaults again.
    assert_eq!(
        line("plain"),
        r#"{"alert":{"empty":true,"count":2,"up":true,"@n":3}}"#
    );
    assert_eq!(engine.stats().contexts_created, 1, "the context was reused");
}

#[test]
fn jxon_parses_values_by_default_and_recognises_only_iso_dates() {
    let out = logs(
        "var d = JXON.parse('<A id=\"007\" blank=\"\"><N>16931</N><F>2.5</F><B>TRUE</B><Host>web01</Host>' +\n\
           '<Summary>Server 1</Summary><At>2024-03-01T10:00:00Z</At><Day>2024-03-01</Day><Mail>Mon, 01 Jan 2024</Mail></A>').a;\n\
         console.log(d['@id'], typeof d['@id'], d['@blank'], d.n + 1, d.f, d.b === true, d.host);\n\
         console.log(typeof d.summary, d.at instanceof Date, d.at.toISOString(), d.day instanceof Date, typeof d.mail);\n\
         XMLUtils.JXON.config({ autoDate: false });\n\
         console.log(typeof JXON.parse('<at>2024-03-01T10:00:00Z</at>').at);",
        "",
    );
    assert_eq!(
        out,
        [
            "7 number null 16932 2.5 true web01",
            "string true 2024-03-01T10:00:00.000Z true string",
            "string"
        ]
    );
}

#[test]
fn jxon_config_without_an_argument_answers_the_options_in_force() {
    let out = logs(
        "XMLUtils.JXON.config({ trueIsEmpty: false });\n\
         var c = XMLUtils.JXON.config(); c.lowerCaseTags = false;\n\
         console.log(c.trueIsEmpty, c.parseValues, c.valueKey, JSON.stringify(JXON.parse('<A/>')));",
        "",
    );
    assert_eq!(out, [r#"false true keyValue {"a":""}"#]);
}

#[test]
fn jxon_config_refuses_a_non_object() {
    let outcome = run("XMLUtils.JXON.config('lowerCaseTags');", "");
    let error = outcome.error.expect("config with a string fails");
    assert!(
        error.message.contains("options object"),
        "{}",
        error.message
    );
}

#[test]
fn malformed_xml_is_a_catchable_error_and_uncaught_names_the_line() {
    let out = logs(
        "try { JXON.parse('<a><b></a>'); } catch (e) { console.log(e.name, e.message); }",
        "",
    );
    assert!(
        out[0].starts_with("SyntaxError cannot parse the document: the XML is not well-formed"),
        "{out:?}"
    );
    let outcome = run(
        "var ok = 1;\nvar d = new XMLUtils.DOMParser().parseFromString('<open>', 'text/xml');\n",
        "",
    );
    let error = outcome.error.expect("malformed XML fails the run");
    assert_eq!(error.kind, ErrorKind::Exception);
    assert_eq!(error.line, Some(2), "{}", error.message);
}

#[test]
fn dom_navigates_a_soap_envelope() {
    let out = logs(
        "var doc = new XMLUtils.DOMParser().parseFromString(request.body, 'text/xml');\n\
         var root = doc.documentElement;\n\
         console.log(doc.nodeType, root.nodeName, root.localName, root.prefix, root.namespaceURI);\n\
         var body = root.getElementsByTagName('soapenv:Body')[0];\n\
         var incident = body.getElementsByTagNameNS('urn:example:incident', 'CreateIncident').item(0);\n\
         console.log(incident.getAttribute('Priority'), incident.getAttribute('missing') === '', incident.hasAttribute('Priority'));\n\
         var elements = incident.childNodes.filter(function (n) { return n.nodeType === 1; });\n\
         console.log(elements.length, elements[0].textContent, elements[0].firstChild.nodeValue, elements[0].nextSibling.nodeType);\n\
         console.log(doc.getElementsByTagName('inc:Username').map(function (u) { return u.textContent; }).join(','));\n\
         console.log(doc.getElementsByTagName('inc:Notes')[0].textContent, doc.getElementsByTagName('*').length);\n\
         console.log(elements[0].parentNode === incident, incident.toString().indexOf('<inc:Ticket>16931</inc:Ticket>') !== -1);",
        SOAP,
    );
    assert_eq!(
        out,
        [
            "9 soapenv:Envelope Envelope soapenv http://schemas.xmlsoap.org/soap/envelope/",
            "High true true",
            "4 16931 16931 3",
            "bsmith,mmcbride",
            "<b>raw</b> text 10",
            "true true"
        ]
    );
}

#[test]
fn dom_parses_html_leniently() {
    let html = "<!DOCTYPE html><html><head><title>Status</title></head><body>\
                <table id=status><tr><th>Service<th>State\
                <tr class=bad><td>mail<td>DOWN\
                <tr><td>web<td>UP</table><p>Unclosed <b>bold</body>";
    let out = logs(
        "var doc = new XMLUtils.DOMParser().parseFromString(request.body, 'text/html');\n\
         console.log(doc.documentElement.nodeName, doc.getElementsByTagName('title')[0].textContent);\n\
         var rows = doc.getElementsByTagName('TR');\n\
         console.log(rows.length, rows[1].getAttribute('class'), rows[1].getElementsByTagName('td')[1].textContent);\n\
         console.log(doc.getElementById('status').nodeName, doc.body.getElementsByTagName('b')[0].textContent);\n\
         console.log(XMLUtils.xpath.select('//tr[@class=\"bad\"]/td[1]/text()', doc)[0].nodeValue);\n\
         console.log(XMLUtils.xpath.select('count(//TD)', doc));",
        html,
    );
    assert_eq!(
        out,
        ["HTML Status", "3 bad DOWN", "TABLE bold", "mail", "4"]
    );
}

#[test]
fn xpath_selects_with_namespaces_predicates_text_and_attributes() {
    let out = logs(
        "var doc = new XMLUtils.DOMParser().parseFromString(request.body);\n\
         var select = XMLUtils.xpath.useNamespaces({ s: 'http://schemas.xmlsoap.org/soap/envelope/', i: 'urn:example:incident' });\n\
         console.log(select('/s:Envelope/s:Body/i:CreateIncident/i:Ticket/text()', doc)[0].nodeValue);\n\
         console.log(select('string(//i:CreateIncident/@Priority)', doc), select('//@Priority', doc)[0].value);\n\
         console.log(select('//i:Username[2]', doc)[0].textContent, select('//i:Username[last()]/text()', doc, true).data);\n\
         console.log(select('count(//i:Recipients/*)', doc), select('//i:CreateIncident[@Priority=\"High\"]/i:Ticket = 16931', doc));\n\
         console.log(select('//i:Username[. = \"bsmith\"]/../../i:Summary', doc, true).textContent);\n\
         console.log(select('normalize-space(concat(\"  a \", \"b  \"))', doc), select('//i:Username[contains(., \"mc\")]', doc).length);\n\
         console.log(select('local-name(//i:Ticket/ancestor::*[2])', doc), select('//i:Ticket | //i:Summary', doc).length);\n\
         console.log(select('//i:Ticket/following-sibling::*[1]', doc, true).localName, select('sum(//i:Ticket) + 4', doc));\n\
         console.log(XMLUtils.xpath.select('//Ticket', doc).length, XMLUtils.xpath.select1('//*[local-name()=\"Ticket\"]', doc).textContent);",
        SOAP,
    );
    assert_eq!(
        out,
        [
            "16931",
            "High High",
            "mmcbride mmcbride",
            "2 true",
            "Mail server is down & queues grow",
            "a b 1",
            "Body 2",
            "Summary 16935",
            "0 16931"
        ]
    );
}

#[test]
fn xpath_errors_are_catchable_and_clear() {
    let out = logs(
        "var doc = new XMLUtils.DOMParser().parseFromString('<a:x xmlns:a=\"urn:a\"/>', 'text/xml');\n\
         function attempt(f) { try { f(); console.log('no error'); } catch (e) { console.log(e.message); } }\n\
         attempt(function () { XMLUtils.xpath.select('//a:x', doc); });\n\
         attempt(function () { XMLUtils.xpath.select('//x[', doc); });\n\
         attempt(function () { XMLUtils.xpath.select('frobnicate(1)', doc); });\n\
         attempt(function () { XMLUtils.xpath.select('//x', 'not a node'); });",
        "",
    );
    assert!(out[0].contains("prefix 'a' is not declared"), "{out:?}");
    assert!(out[1].starts_with("xpath: "), "{out:?}");
    assert!(out[2].contains("unknown function frobnicate()"), "{out:?}");
    assert!(out[3].contains("expects a node"), "{out:?}");
}

#[test]
fn documents_over_the_size_or_node_limit_are_refused() {
    let limits = Limits {
        max_markup_bytes: 1000,
        max_markup_nodes: 50,
        ..Limits::default()
    };
    let code = "try { JXON.parse(request.body); console.log('parsed'); } catch (e) { console.log(e.message); }";
    let big = format!("<a>{}</a>", "x".repeat(2000));
    let outcome = run_with(code, &big, &limits);
    assert_eq!(
        outcome.logs[0].message,
        "cannot parse the document: the document is 2007 bytes; the limit is 1000 bytes"
    );
    let many = format!("<a>{}</a>", "<b/>".repeat(60));
    let outcome = run_with(code, &many, &limits);
    assert_eq!(
        outcome.logs[0].message,
        "cannot parse the document: the document has more than 50 nodes"
    );
    let html = format!("<p>{}</p>", "<i>x</i>".repeat(60));
    let outcome = run_with(
        "try { new XMLUtils.DOMParser().parseFromString(request.body, 'text/html'); } catch (e) { console.log(e.message); }",
        &html,
        &limits,
    );
    assert!(outcome.logs[0].message.contains("more than 50 nodes"));
}

#[test]
fn external_entities_are_not_fetched() {
    let xxe =
        r#"<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><r>&x;</r>"#;
    let outcome = run("var d = JXON.parse(request.body); console.log(d.r);", xxe);
    assert!(
        outcome.logs.iter().all(|l| !l.message.contains("root:")),
        "{:?}",
        outcome.logs
    );
    assert!(
        outcome.error.is_some(),
        "an unresolvable entity is an error"
    );
}

#[test]
fn the_helpers_cannot_be_changed_for_later_runs() {
    let code = "try { XMLUtils.DOMParser.prototype.parseFromString = function () { return 'hacked'; }; } catch (e) {}\n\
                try { XMLUtils.xpath.select = null; } catch (e) {}\n\
                var doc = new XMLUtils.DOMParser().parseFromString('<a>1</a>', 'text/xml');\n\
                console.log(typeof doc, XMLUtils.xpath.select('string(/a)', doc));";
    let program = program(code);
    let mut engine = Engine::new(Limits::default()).expect("engine");
    let http: Arc<dyn HttpClient> = Arc::new(NoHttp);
    for _ in 0..2 {
        let outcome = engine.run(&program, request(""), http.clone());
        assert!(outcome.is_ok(), "{:?}", outcome.error);
        assert_eq!(outcome.logs[0].message, "object 1");
    }
}

#[test]
fn deeply_nested_documents_fail_cleanly_and_the_engine_keeps_working() {
    // 20,000 levels: parsed by the host without recursion; JXON's and the DOM's own recursion
    // ends in a catchable error at the JavaScript stack limit instead of crashing the thread.
    let depth = 20_000;
    let deep = format!("{}{}", "<a>".repeat(depth), "</a>".repeat(depth));
    let out = logs(
        "function name(e) { return e instanceof Error ? e.name : String(e); }\n\
         try { JXON.parse(request.body); console.log('parsed'); } catch (e) { console.log(name(e)); }\n\
         var doc = new XMLUtils.DOMParser().parseFromString(request.body, 'text/xml');\n\
         try { console.log(doc.getElementsByTagName('a').length); } catch (e) { console.log(name(e)); }",
        &deep,
    );
    assert_eq!(out.len(), 2, "{out:?}");
    assert!(
        out[0] == "parsed" || out[0] == "RangeError" || out[0] == "InternalError",
        "{out:?}"
    );
    assert!(
        out[1] == "20000" || out[1] == "RangeError" || out[1] == "InternalError",
        "{out:?}"
    );
    // HTML deeper than the tree builder can take in bounded time is refused up front.
    let html = "<div>".repeat(5000);
    let out = logs(
        "try { new XMLUtils.DOMParser().parseFromString(request.body, 'text/html'); } catch (e) { console.log(e.message); }",
        &html,
    );
    assert_eq!(
        out,
        ["cannot parse the document: the HTML nests elements more than 4096 deep"]
    );
}
