//! One script thread's QuickJS runtime: warm contexts, the host hooks behind the built-ins, and the
//! translation of JavaScript failures into [`ScriptError`]s.

use crate::uri::encode_uri;
use crate::{
    ErrorKind, HttpCall, HttpClient, HttpExchange, Limits, LogEntry, LogLevel, Outcome, Program,
    ProgramSpec, ScriptError, ScriptRequest, Source,
};
use rquickjs::context::EvalOptions;
use rquickjs::convert::Coerced;
use rquickjs::{Context, Ctx, Exception, Function, Object, Persistent, Runtime, Value};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

const PRELUDE: &str = include_str!("prelude.js");
const PRELUDE_NAME: &str = "<xmagent prelude>";
const XML_HELPERS: &str = include_str!("xml/dom.js");
const XML_HELPERS_NAME: &str = "<xmagent xml>";
const SCRIPT_PARAMS: &str =
    "request, trigger, form, http, console, constants, require, JXON, XMLUtils, output";
const LIBRARY_PARAMS: &str =
    "exports, module, require, console, http, form, constants, JXON, XMLUtils, request, trigger";
/// Recorded HTTP bodies are cut here so the activity stream stays small.
const MAX_RECORDED_BODY: usize = 64 * 1024;
/// Headers whose values are credentials; never recorded.
const SECRET_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-api-key",
    "api-key",
    "x-auth-token",
];

/// Wrap a source as a function expression whose parameters are the built-ins. The wrapper's
/// opening is on the source's first line, so line numbers in errors match the file.
fn wrap(params: &str, code: &str) -> String {
    format!("(function ({params}) {{{code}\n}})")
}

fn eval_options(name: &str) -> EvalOptions {
    let mut options = EvalOptions::default();
    // Integration Builder scripts are sloppy-mode ES5 (Nashorn); strict mode would break them.
    options.strict = false;
    options.global = true;
    options.filename = Some(name.replace('\0', "?"));
    options
}

/// Compile one source as a function; a failure is reported as a syntax error naming the file.
fn compile_fn<'js>(
    ctx: &Ctx<'js>,
    source: &Source,
    params: &str,
    sources: &[String],
) -> Result<Function<'js>, ScriptError> {
    ctx.eval_with_options::<Function, _>(wrap(params, &source.code), eval_options(&source.name))
        .map_err(|e| {
            let mut err = describe_error(ctx, e, sources);
            if err.kind == ErrorKind::Exception {
                err.kind = ErrorKind::Syntax;
            }
            if err.line.is_none() {
                err.message = format!("{} (in {})", err.message, source.name);
            }
            err
        })
}

fn source_names(spec: &ProgramSpec) -> Vec<String> {
    std::iter::once(spec.script.name.clone())
        .chain(spec.libraries.values().map(|s| s.name.clone()))
        .collect()
}

/// Syntax-check a program's script and libraries in a throw-away runtime.
pub(crate) fn syntax_check(spec: &ProgramSpec) -> Result<(), ScriptError> {
    let runtime = Runtime::new().map_err(|e| {
        ScriptError::new(
            ErrorKind::Memory,
            format!("cannot create a JavaScript runtime: {e}"),
        )
    })?;
    runtime.set_memory_limit(Limits::default().memory_bytes * 2);
    let context = Context::full(&runtime).map_err(|e| {
        ScriptError::new(
            ErrorKind::Memory,
            format!("cannot create a JavaScript context: {e}"),
        )
    })?;
    let sources = source_names(spec);
    context.with(|ctx| {
        compile_fn(&ctx, &spec.script, SCRIPT_PARAMS, &sources)?;
        for library in spec.libraries.values() {
            compile_fn(&ctx, library, LIBRARY_PARAMS, &sources)?;
        }
        Ok(())
    })
}

/// Find `file:line` of the first stack frame that belongs to one of the program's sources.
fn locate(stack: &str, sources: &[String]) -> Option<(String, u32)> {
    for frame in stack.lines() {
        let frame = frame.trim();
        let Some(rest) = frame.strip_prefix("at ") else {
            continue;
        };
        // "at name (file:line:col)" or "at file:line:col"
        let location = match (rest.rfind('('), rest.ends_with(')')) {
            (Some(open), true) => &rest[open + 1..rest.len() - 1],
            _ => rest,
        };
        let mut parts = location.rsplitn(3, ':');
        let (Some(_col), Some(line), Some(file)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if sources.iter().any(|s| s.replace('\0', "?") == file) {
            if let Ok(line) = line.parse::<u32>() {
                return Some((file.to_owned(), line));
            }
        }
    }
    None
}

/// Turn a thrown JavaScript value into a [`ScriptError`] (kind `Exception` or `Memory`).
fn describe_value<'js>(value: &Value<'js>, sources: &[String]) -> ScriptError {
    if let Some(exception) = value
        .as_object()
        .and_then(|o| Exception::from_object(o.clone()))
    {
        let name = exception
            .as_object()
            .get::<_, Option<Coerced<String>>>("name")
            .ok()
            .flatten()
            .map(|c| c.0)
            .unwrap_or_default();
        let message = exception.message().unwrap_or_default();
        let kind = if message.contains("out of memory") {
            ErrorKind::Memory
        } else {
            ErrorKind::Exception
        };
        let mut text = if name.is_empty() {
            message
        } else {
            format!("{name}: {message}")
        };
        let location = exception.stack().and_then(|s| locate(&s, sources));
        let line = location.as_ref().map(|(_, line)| *line);
        if let Some((file, line)) = location {
            text = format!("{text} (at {file}:{line})");
        }
        return ScriptError {
            kind,
            message: text,
            line,
        };
    }
    if let Some(s) = value.as_string().and_then(|s| s.to_string().ok()) {
        return ScriptError::new(ErrorKind::Exception, s);
    }
    if value.is_null() || value.is_undefined() {
        return ScriptError::new(
            ErrorKind::Exception,
            format!("uncaught exception: {}", value.type_name()),
        );
    }
    let text = value
        .get::<Coerced<String>>()
        .map(|c| c.0)
        .unwrap_or_else(|_| format!("uncaught exception of type {}", value.type_name()));
    ScriptError::new(ErrorKind::Exception, text)
}

fn describe_error<'js>(ctx: &Ctx<'js>, error: rquickjs::Error, sources: &[String]) -> ScriptError {
    match error {
        rquickjs::Error::Exception => describe_value(&ctx.catch(), sources),
        rquickjs::Error::Allocation => ScriptError::new(ErrorKind::Memory, "out of memory"),
        other => ScriptError::new(ErrorKind::Exception, other.to_string()),
    }
}

/// Why the host stopped a run from outside the script's control flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Abort {
    Timeout,
    Limit,
}

/// What one run produced so far; reset at the start of every run.
#[derive(Default)]
struct RunData {
    posts: Vec<serde_json::Value>,
    post_bytes: usize,
    logs: Vec<LogEntry>,
    log_bytes: usize,
    log_truncated: bool,
    http: Vec<HttpExchange>,
    http_calls: u32,
    outputs: serde_json::Map<String, serde_json::Value>,
    client: Option<Arc<dyn HttpClient>>,
    limit_message: Option<String>,
}

/// State shared by the runtime's interrupt handler and the host hooks of every context.
struct RunState {
    limits: Limits,
    deadline: Cell<Option<Instant>>,
    abort: Cell<Option<Abort>>,
    data: RefCell<RunData>,
}

impl RunState {
    fn begin(&self, client: Arc<dyn HttpClient>, deadline: Instant) {
        *self.data.borrow_mut() = RunData {
            client: Some(client),
            ..RunData::default()
        };
        self.abort.set(None);
        self.deadline.set(Some(deadline));
    }

    fn finish(&self) -> RunData {
        self.deadline.set(None);
        std::mem::take(&mut *self.data.borrow_mut())
    }

    /// The interrupt handler: once the deadline passed (or a limit was hit) keep saying "stop"
    /// until the run ends, so a `catch` block cannot keep the script alive.
    fn should_interrupt(&self) -> bool {
        if self.abort.get().is_some() {
            return true;
        }
        match self.deadline.get() {
            Some(deadline) if Instant::now() >= deadline => {
                self.abort.set(Some(Abort::Timeout));
                true
            }
            _ => false,
        }
    }

    /// The error for an aborted run, if the run was aborted.
    fn abort_error(&self) -> Option<ScriptError> {
        match self.abort.get()? {
            Abort::Timeout => Some(ScriptError::new(
                ErrorKind::Timeout,
                format!(
                    "the script ran longer than its time limit of {} ms",
                    self.limits.timeout.as_millis()
                ),
            )),
            Abort::Limit => Some(ScriptError::new(
                ErrorKind::Limit,
                self.data
                    .borrow()
                    .limit_message
                    .clone()
                    .unwrap_or_else(|| "a run limit was exceeded".to_owned()),
            )),
        }
    }

    fn hit_limit<'js>(&self, ctx: &Ctx<'js>, message: String) -> rquickjs::Error {
        let error = Exception::throw_internal(ctx, &message);
        self.data.borrow_mut().limit_message = Some(message);
        self.abort.set(Some(Abort::Limit));
        error
    }

    fn log(&self, level: &str, message: String) {
        let level = match level {
            "info" => LogLevel::Info,
            "warn" => LogLevel::Warn,
            "error" => LogLevel::Error,
            _ => LogLevel::Log,
        };
        let max = self.limits.max_log_bytes;
        let mut data = self.data.borrow_mut();
        if data.log_truncated {
            return;
        }
        let room = max.saturating_sub(data.log_bytes);
        if message.len() <= room {
            data.log_bytes += message.len();
            data.logs.push(LogEntry { level, message });
            return;
        }
        let mut cut = room;
        while cut > 0 && !message.is_char_boundary(cut) {
            cut -= 1;
        }
        if cut > 0 {
            data.logs.push(LogEntry {
                level,
                message: message[..cut].to_owned(),
            });
        }
        data.log_bytes = max;
        data.log_truncated = true;
        data.logs.push(LogEntry {
            level: LogLevel::Warn,
            message: format!("[console output truncated: the limit is {max} bytes per run]"),
        });
    }

    /// The `output` object of a Flow Designer HTTP trigger, as JSON text once the script returned.
    /// It counts against the run's `form.post` byte budget: outputs become event properties too.
    fn outputs<'js>(&self, ctx: &Ctx<'js>, json: &str) -> rquickjs::Result<()> {
        let max_bytes = self.limits.max_post_bytes;
        let used = self.data.borrow().post_bytes;
        if used.saturating_add(json.len()) > max_bytes {
            return Err(self.hit_limit(
                ctx,
                format!("the outputs exceed the limit of {max_bytes} bytes per run"),
            ));
        }
        let outputs = serde_json::from_str(json)
            .map_err(|e| Exception::throw_type(ctx, &format!("output: {e}")))?;
        self.data.borrow_mut().outputs = outputs;
        Ok(())
    }

    /// `form.post(obj)`: converts the object to JSON data in one walk (see [`Posted`]); only
    /// objects the walk does not handle exactly like `JSON.stringify` go through
    /// `JSON.stringify` and a parse.
    fn post<'js>(
        &self,
        ctx: &Ctx<'js>,
        value: Value<'js>,
        object_prototype: Object<'js>,
    ) -> rquickjs::Result<String> {
        let (max_posts, max_bytes) = (self.limits.max_posts, self.limits.max_post_bytes);
        let (count, bytes) = {
            let data = self.data.borrow();
            (data.posts.len(), data.post_bytes)
        };
        if count >= usize::try_from(max_posts).unwrap_or(usize::MAX) {
            return Err(self.hit_limit(
                ctx,
                format!("too many form.post calls: the limit is {max_posts} per run"),
            ));
        }
        let too_big = || {
            self.hit_limit(
                ctx,
                format!("form.post payloads exceed the limit of {max_bytes} bytes per run"),
            )
        };
        let mut walk = Posted {
            object_prototype,
            room: max_bytes.saturating_sub(bytes),
            size: 0,
        };
        let (converted, size) = match walk.convert(&value, 0) {
            Ok(converted) => (converted.unwrap_or(serde_json::Value::Null), walk.size),
            Err(Unposted::TooBig) => return Err(too_big()),
            Err(Unposted::TooDeep) => {
                return Err(Exception::throw_type(
                    ctx,
                    "form.post: the object is circular or nested too deeply",
                ))
            }
            Err(Unposted::Js(error)) => return Err(error),
            Err(Unposted::Unusual) => {
                let json = ctx
                    .json_stringify(value)?
                    .map(|s| s.to_string())
                    .transpose()?
                    .unwrap_or_else(|| "null".to_owned());
                if bytes.saturating_add(json.len()) > max_bytes {
                    return Err(too_big());
                }
                let converted = serde_json::from_str(&json)
                    .map_err(|e| Exception::throw_type(ctx, &format!("form.post: {e}")))?;
                (converted, json.len())
            }
        };
        let mut data = self.data.borrow_mut();
        data.post_bytes += size;
        data.posts.push(converted);
        Ok(uuid::Uuid::new_v4().to_string())
    }

    /// `http.request(...).write()`: `call` is the plain object the prelude assembled from the
    /// script's options (`endpoint`, `method`, `path`, `headers` as a flat name/value array,
    /// `body`, `autoEncodeURI`); the reply goes back as `{statusCode, body, headers}`.
    fn http<'js>(&self, ctx: &Ctx<'js>, call: Object<'js>) -> rquickjs::Result<Object<'js>> {
        let endpoint: Option<String> = call.get("endpoint")?;
        let method: String = call.get("method")?;
        let js_path: String = call.get("path")?;
        let flat_headers: Vec<String> = call.get("headers")?;
        let body: Option<String> = call.get("body")?;
        let auto_encode_uri: bool = call.get("autoEncodeURI")?;
        let max_calls = self.limits.max_http_calls;
        let client = {
            let mut data = self.data.borrow_mut();
            if data.http_calls >= max_calls {
                drop(data);
                return Err(self.hit_limit(
                    ctx,
                    format!("too many HTTP calls: the limit is {max_calls} per run"),
                ));
            }
            data.http_calls += 1;
            data.client.clone()
        };
        let Some(endpoint) = endpoint else {
            return Err(Exception::throw_type(
                ctx,
                "http.request: the options name no endpoint",
            ));
        };
        let path = if auto_encode_uri {
            encode_uri(&js_path)
        } else {
            js_path
        };
        let mut flat_headers = flat_headers.into_iter();
        let mut headers = Vec::new();
        while let (Some(name), Some(value)) = (flat_headers.next(), flat_headers.next()) {
            headers.push((name, value));
        }
        let now = Instant::now();
        let remaining = self
            .deadline
            .get()
            .map(|d| d.saturating_duration_since(now))
            .unwrap_or(self.limits.timeout);
        let call = HttpCall {
            endpoint,
            method,
            path,
            headers,
            body,
            timeout: remaining,
        };
        let result = match client {
            Some(client) => client.send(&call),
            None => Err("HTTP is not available here".to_owned()),
        };
        let elapsed = now.elapsed();
        self.data
            .borrow_mut()
            .http
            .push(record(&call, &result, elapsed));
        if self.should_interrupt() {
            return Err(Exception::throw_internal(ctx, "interrupted"));
        }
        match result {
            Ok(reply) => {
                let object = Object::new(ctx.clone())?;
                object.set("statusCode", reply.status)?;
                object.set("body", reply.body)?;
                object.set("headers", headers_object(ctx, &reply.headers)?)?;
                Ok(object)
            }
            Err(message) => Err(Exception::throw_message(
                ctx,
                &format!(
                    "HTTP request to endpoint '{}' failed: {message}",
                    call.endpoint
                ),
            )),
        }
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut cut = max;
    while cut > 0 && !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…[truncated, {} bytes]", &text[..cut], text.len())
}

fn record(
    call: &HttpCall,
    result: &Result<crate::HttpReply, String>,
    elapsed: Duration,
) -> HttpExchange {
    HttpExchange {
        endpoint: call.endpoint.clone(),
        method: call.method.clone(),
        path: call.path.clone(),
        headers: call
            .headers
            .iter()
            .map(|(k, v)| {
                let secret = SECRET_HEADERS.iter().any(|s| k.eq_ignore_ascii_case(s));
                (
                    k.clone(),
                    if secret {
                        "<redacted>".to_owned()
                    } else {
                        v.clone()
                    },
                )
            })
            .collect(),
        body: call.body.as_deref().map(|b| truncate(b, MAX_RECORDED_BODY)),
        status: result.as_ref().ok().map(|r| r.status),
        duration_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
        error: result.as_ref().err().cloned(),
    }
}

/// Posted objects nested deeper than this are taken to be circular (`JSON.stringify` throws on
/// those too).
const MAX_POST_DEPTH: usize = 256;

/// Why a posted value was not converted by [`Posted::convert`].
enum Unposted {
    /// Something `JSON.stringify` treats specially (`toJSON`, a non-plain object such as a `Date`
    /// or a boxed primitive, a proxy, a BigInt): the whole post goes through `JSON.stringify`.
    Unusual,
    /// The run's post budget is used up.
    TooBig,
    /// Circular or absurdly deep.
    TooDeep,
    /// A getter threw.
    Js(rquickjs::Error),
}

impl From<rquickjs::Error> for Unposted {
    fn from(error: rquickjs::Error) -> Self {
        Unposted::Js(error)
    }
}

/// Converts a posted object straight to JSON data, for the plain objects, arrays and primitives
/// scripts post. It yields what `JSON.parse(JSON.stringify(value))` would (own enumerable string
/// keys; `undefined`, functions and symbols skipped in objects and `null` in arrays; non-finite
/// numbers as `null`; integral numbers as integers) without building and re-parsing the text.
/// `size` counts the bytes of the compact JSON text, escapes aside, against `room`.
struct Posted<'js> {
    object_prototype: Object<'js>,
    room: usize,
    size: usize,
}

impl<'js> Posted<'js> {
    fn grow(&mut self, bytes: usize) -> Result<(), Unposted> {
        self.size = self.size.saturating_add(bytes);
        if self.size > self.room {
            return Err(Unposted::TooBig);
        }
        Ok(())
    }

    fn number(&mut self, n: f64) -> Result<serde_json::Value, Unposted> {
        self.grow(8)?;
        // JSON.stringify writes integral numbers below 1e21 without a fraction or exponent, and
        // serde_json reads those back as integers when they fit. Exact up to 2^53; above, both
        // JavaScript and Rust print the shortest round-trip digits padded with zeros, so that text
        // decides, as it did when posts went through JSON.
        if n.fract() == 0.0 && n.abs() < 1e21 {
            if n.abs() <= 9_007_199_254_740_992.0 {
                return Ok(if n < 0.0 {
                    serde_json::Value::from(n as i64)
                } else {
                    serde_json::Value::from(n as u64)
                });
            }
            if let Ok(number) = serde_json::from_str(&n.to_string()) {
                return Ok(number);
            }
        }
        Ok(serde_json::Number::from_f64(n)
            .map_or(serde_json::Value::Null, serde_json::Value::Number))
    }

    /// Convert one value; `None` means "omitted" (undefined, a function or a symbol).
    fn convert(
        &mut self,
        value: &Value<'js>,
        depth: usize,
    ) -> Result<Option<serde_json::Value>, Unposted> {
        use rquickjs::Type;
        let converted = match value.type_of() {
            Type::Undefined
            | Type::Uninitialized
            | Type::Function
            | Type::Constructor
            | Type::Symbol => return Ok(None),
            Type::Null => {
                self.grow(4)?;
                serde_json::Value::Null
            }
            Type::Bool => {
                self.grow(5)?;
                serde_json::Value::Bool(value.as_bool().unwrap_or(false))
            }
            Type::Int => {
                self.grow(8)?;
                serde_json::Value::from(value.as_int().unwrap_or(0))
            }
            Type::Float => self.number(value.as_float().unwrap_or(f64::NAN))?,
            Type::String => {
                let text = value
                    .as_string()
                    .map(|s| s.to_string())
                    .transpose()?
                    .unwrap_or_default();
                self.grow(text.len() + 2)?;
                serde_json::Value::String(text)
            }
            Type::Array => {
                if depth >= MAX_POST_DEPTH {
                    return Err(Unposted::TooDeep);
                }
                let Some(array) = value.as_array() else {
                    return Err(Unposted::Unusual);
                };
                if has_to_json(array.as_object())? {
                    return Err(Unposted::Unusual);
                }
                self.grow(2)?;
                let mut items = Vec::with_capacity(array.len());
                for item in array.iter::<Value>() {
                    let item = self.convert(&item?, depth + 1)?;
                    self.grow(1)?;
                    items.push(item.unwrap_or(serde_json::Value::Null));
                }
                serde_json::Value::Array(items)
            }
            Type::Object => {
                if depth >= MAX_POST_DEPTH {
                    return Err(Unposted::TooDeep);
                }
                let Some(object) = value.as_object() else {
                    return Err(Unposted::Unusual);
                };
                let plain = object
                    .get_prototype()
                    .is_none_or(|p| p == self.object_prototype);
                if !plain || has_to_json(object)? {
                    return Err(Unposted::Unusual);
                }
                self.grow(2)?;
                let mut map = serde_json::Map::new();
                for key in object.keys::<String>() {
                    let key = key?;
                    let item: Value = object.get(key.as_str())?;
                    if let Some(item) = self.convert(&item, depth + 1)? {
                        self.grow(key.len() + 4)?;
                        map.insert(key, item);
                    }
                }
                serde_json::Value::Object(map)
            }
            _ => return Err(Unposted::Unusual),
        };
        Ok(Some(converted))
    }
}

/// Whether `JSON.stringify` would call a `toJSON` method of this object.
fn has_to_json(object: &Object<'_>) -> rquickjs::Result<bool> {
    Ok(object.get::<_, Value>("toJSON")?.is_function())
}

/// The host hooks the prelude receives as `native`.
fn native_object<'js>(ctx: &Ctx<'js>, state: &Rc<RunState>) -> rquickjs::Result<Object<'js>> {
    let native = Object::new(ctx.clone())?;
    let st = state.clone();
    native.set(
        "log",
        Function::new(ctx.clone(), move |level: String, message: String| {
            st.log(&level, message)
        })?,
    )?;
    let st = state.clone();
    native.set(
        "post",
        Function::new(
            ctx.clone(),
            move |ctx: Ctx<'js>, value: Value<'js>, object_prototype: Object<'js>| {
                st.post(&ctx, value, object_prototype)
            },
        )?,
    )?;
    let st = state.clone();
    native.set(
        "outputs",
        Function::new(ctx.clone(), move |ctx: Ctx<'js>, json: String| {
            st.outputs(&ctx, &json)
        })?,
    )?;
    let st = state.clone();
    native.set(
        "markup",
        Function::new(
            ctx.clone(),
            move |ctx: Ctx<'js>, text: String, mime: String| {
                let limits = &st.limits;
                crate::xml::parse(
                    &text,
                    crate::xml::Syntax::from_mime(&mime),
                    limits.max_markup_bytes,
                    limits.max_markup_nodes,
                )
                .map_err(|e| {
                    Exception::throw_syntax(&ctx, &format!("cannot parse the document: {e}"))
                })
            },
        )?,
    )?;
    native.set(
        "xmlHelpers",
        Function::new(ctx.clone(), |ctx: Ctx<'js>| {
            ctx.eval_with_options::<Function, _>(XML_HELPERS, eval_options(XML_HELPERS_NAME))
        })?,
    )?;
    let st = state.clone();
    native.set(
        "http",
        Function::new(ctx.clone(), move |ctx: Ctx<'js>, call: Object<'js>| {
            st.http(&ctx, call)
        })?,
    )?;
    Ok(native)
}

/// A context set up for one program generation. Field order matters: the saved functions must be
/// released before the context that owns them.
struct Warm {
    run: Saved,
    cleanup: Saved,
    context: Context,
    generation: u64,
    runs: u32,
    last_used: u64,
}

/// Counters describing an [`Engine`]'s context reuse; used by tests and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Contexts set up since the engine started (a cold start or a recycle each).
    pub contexts_created: u64,
    /// Runs executed.
    pub runs: u64,
    /// Warm contexts currently kept.
    pub warm_contexts: usize,
}

/// One script thread's QuickJS runtime with its warm contexts.
///
/// The pool owns one per thread; it is public so a host can embed a single-threaded runner (and so
/// benchmarks can measure a warm run without the pool's queue). Not `Send`: it stays on the thread
/// that created it, which keeps QuickJS's stack checks valid.
pub struct Engine {
    warm: HashMap<String, Warm>,
    state: Rc<RunState>,
    stats: EngineStats,
    clock: u64,
    runtime: Runtime,
}

impl Engine {
    /// Create a runtime with the limits applied (memory, stack, interrupt-based timeout).
    pub fn new(limits: Limits) -> Result<Engine, ScriptError> {
        let runtime = Runtime::new().map_err(|e| {
            ScriptError::new(
                ErrorKind::Memory,
                format!("cannot create a JavaScript runtime: {e}"),
            )
        })?;
        runtime.set_memory_limit(limits.memory_bytes);
        runtime.set_max_stack_size(limits.stack_bytes);
        let state = Rc::new(RunState {
            limits,
            deadline: Cell::new(None),
            abort: Cell::new(None),
            data: RefCell::new(RunData::default()),
        });
        let handler_state = state.clone();
        runtime.set_interrupt_handler(Some(Box::new(move || handler_state.should_interrupt())));
        Ok(Engine {
            warm: HashMap::new(),
            state,
            stats: EngineStats::default(),
            clock: 0,
            runtime,
        })
    }

    /// Context reuse counters.
    pub fn stats(&self) -> EngineStats {
        EngineStats {
            warm_contexts: self.warm.len(),
            ..self.stats
        }
    }

    /// Run the program once for one request, in the program's warm context (set up on first use).
    pub fn run(
        &mut self,
        program: &Program,
        request: ScriptRequest,
        http: Arc<dyn HttpClient>,
    ) -> Outcome {
        let started = Instant::now();
        self.state.begin(http, started + self.state.limits.timeout);
        let error = self.execute(program, &request).err();
        let data = self.state.finish();
        self.stats.runs += 1;
        if self.runtime.is_job_pending() {
            self.discard_pending_jobs();
        }
        if error.is_some() {
            // A failed run's context was dropped; give its memory back before the next run.
            self.runtime.run_gc();
        }
        Outcome {
            posts: data.posts,
            outputs: data.outputs,
            logs: data.logs,
            http: data.http,
            error,
            duration: started.elapsed(),
        }
    }

    fn execute(&mut self, program: &Program, request: &ScriptRequest) -> Result<(), ScriptError> {
        self.clock += 1;
        let key = program.integration_id();
        let reusable = self
            .warm
            .get(key)
            .is_some_and(|w| w.generation == program.generation());
        if !reusable {
            self.warm.remove(key);
            self.evict_if_full();
            let warm = self.create(program)?;
            self.warm.insert(key.to_owned(), warm);
        }
        let max_runs = self.state.limits.max_runs_per_context;
        let state = &self.state;
        let Some(warm) = self.warm.get_mut(key) else {
            return Err(ScriptError::new(
                ErrorKind::Exception,
                "internal error: warm context vanished",
            ));
        };
        warm.runs += 1;
        warm.last_used = self.clock;
        let result = warm
            .context
            .with(|ctx| run_in(&ctx, warm, request, state, program.spec()));
        let recycle = match &result {
            Ok(clean) => !clean || warm.runs >= max_runs,
            Err(_) => true,
        };
        if recycle {
            self.warm.remove(key);
        }
        result.map(|_| ())
    }

    /// Drop the promise jobs a failed or aborted run left queued without letting them act in a
    /// later run: with the abort flag set every job stops at its first interrupt check, and
    /// what a job still records before that goes into data that is thrown away. A run that keeps
    /// queueing jobs gets the whole runtime (and its warm contexts) replaced instead.
    fn discard_pending_jobs(&mut self) {
        self.state.abort.set(Some(Abort::Limit));
        let mut discarded = 0;
        while self.runtime.is_job_pending() && discarded < MAX_DISCARDED_JOBS {
            let _ = self.runtime.execute_pending_job();
            discarded += 1;
        }
        self.state.finish();
        self.state.abort.set(None);
        if self.runtime.is_job_pending() {
            tracing::warn!(
                "a script left promise jobs that keep queueing; its runtime was replaced"
            );
            match Engine::new(self.state.limits.clone()) {
                Ok(replacement) => {
                    let stats = self.stats;
                    *self = replacement;
                    self.stats = stats;
                }
                Err(error) => tracing::error!(%error, "cannot replace a script runtime"),
            }
        }
    }

    fn evict_if_full(&mut self) {
        let max = self.state.limits.max_warm_contexts.max(1);
        while self.warm.len() >= max {
            let oldest = self
                .warm
                .iter()
                .min_by_key(|(_, w)| w.last_used)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(key) => {
                    self.warm.remove(&key);
                }
                None => break,
            }
        }
    }

    fn create(&mut self, program: &Program) -> Result<Warm, ScriptError> {
        let context = Context::full(&self.runtime).map_err(|e| {
            ScriptError::new(
                ErrorKind::Memory,
                format!("cannot create a JavaScript context: {e}"),
            )
        })?;
        let state = self.state.clone();
        let (run, cleanup) = context.with(|ctx| setup(&ctx, program, &state))?;
        self.stats.contexts_created += 1;
        Ok(Warm {
            run,
            cleanup,
            context,
            generation: program.generation(),
            runs: 0,
            last_used: self.clock,
        })
    }
}

type Saved = Persistent<Function<'static>>;

/// Most promise jobs a failed run may leave that are discarded in place (see
/// [`Engine::discard_pending_jobs`]).
const MAX_DISCARDED_JOBS: usize = 1000;

/// Describe a failure during setup or a run: an abort (timeout, limit) wins over what JS saw.
fn run_error<'js>(
    ctx: &Ctx<'js>,
    error: rquickjs::Error,
    state: &RunState,
    sources: &[String],
) -> ScriptError {
    let described = describe_error(ctx, error, sources);
    state.abort_error().unwrap_or(described)
}

fn setup<'js>(
    ctx: &Ctx<'js>,
    program: &Program,
    state: &Rc<RunState>,
) -> Result<(Saved, Saved), ScriptError> {
    let spec = program.spec();
    let sources = source_names(spec);
    let fail = |e: rquickjs::Error| run_error(ctx, e, state, &sources);
    let native = native_object(ctx, state).map_err(fail)?;
    let prelude: Function = ctx
        .eval_with_options(PRELUDE, eval_options(PRELUDE_NAME))
        .map_err(fail)?;
    let constants = serde_json::to_string(&spec.constants)
        .map_err(|e| ScriptError::new(ErrorKind::Exception, format!("constants: {e}")))?;
    let api: Object = prelude.call((native, constants)).map_err(fail)?;
    let register: Function = api.get("registerLibrary").map_err(fail)?;
    for (name, source) in &spec.libraries {
        let library = compile_fn(ctx, source, LIBRARY_PARAMS, &sources)?;
        register
            .call::<_, ()>((name.as_str(), library))
            .map_err(fail)?;
    }
    let script = compile_fn(ctx, &spec.script, SCRIPT_PARAMS, &sources)?;
    let set_script: Function = api.get("setScript").map_err(fail)?;
    set_script.call::<_, ()>((script,)).map_err(fail)?;
    let snapshot: Function = api.get("snapshot").map_err(fail)?;
    snapshot.call::<_, ()>(()).map_err(fail)?;
    let run: Function = api.get("run").map_err(fail)?;
    let cleanup: Function = api.get("cleanup").map_err(fail)?;
    Ok((Persistent::save(ctx, run), Persistent::save(ctx, cleanup)))
}

/// Headers as one object: names keep their first spelling, repeated names (in any case) are
/// joined with ", " as HTTP allows.
fn headers_object<'js>(
    ctx: &Ctx<'js>,
    headers: &[(String, String)],
) -> rquickjs::Result<Object<'js>> {
    let mut merged: Vec<(&str, String)> = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        match merged
            .iter_mut()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            Some((_, existing)) => {
                existing.push_str(", ");
                existing.push_str(value);
            }
            None => merged.push((name.as_str(), value.clone())),
        }
    }
    let object = Object::new(ctx.clone())?;
    for (name, value) in merged {
        object.set(name, value)?;
    }
    Ok(object)
}

fn parameters_object<'js>(
    ctx: &Ctx<'js>,
    parameters: &std::collections::BTreeMap<String, String>,
) -> rquickjs::Result<Object<'js>> {
    let object = Object::new(ctx.clone())?;
    for (name, value) in parameters {
        object.set(name.as_str(), value.as_str())?;
    }
    Ok(object)
}

/// One run inside a warm context. `Ok(false)` means the leak guard could not undo what the run did
/// to the globals, so the context must not be reused.
fn run_in<'js>(
    ctx: &Ctx<'js>,
    warm: &Warm,
    request: &ScriptRequest,
    state: &RunState,
    spec: &ProgramSpec,
) -> Result<bool, ScriptError> {
    let fail = |e: rquickjs::Error| run_error(ctx, e, state, &source_names(spec));
    let run = warm.run.clone().restore(ctx).map_err(fail)?;
    let headers = headers_object(ctx, &request.headers).map_err(fail)?;
    let parameters = parameters_object(ctx, &request.parameters).map_err(fail)?;
    // `run` calls the script and then the leak guard, in one call into the context.
    let mut clean: bool = run
        .call((
            request.method.as_str(),
            request.body.as_str(),
            headers,
            parameters,
            request.request_id.as_str(),
            request.integration_uuid.as_str(),
            request.remote_address.as_str(),
        ))
        .map_err(fail)?;
    // Promise jobs the script queued belong to this run; what they change is cleaned up again.
    let mut ran_jobs = false;
    while state.abort.get().is_none() && ctx.execute_pending_job() {
        ran_jobs = true;
    }
    if let Some(error) = state.abort_error() {
        return Err(error);
    }
    if ran_jobs {
        let cleanup = warm.cleanup.clone().restore(ctx).map_err(fail)?;
        clean = cleanup.call(()).map_err(fail)? && clean;
    }
    Ok(clean)
}

#[cfg(test)]
mod tests {
    use super::locate;

    #[test]
    fn locate_finds_user_frames_only() {
        let sources = vec!["script.js".to_owned(), "lib/a b.js".to_owned()];
        let stack = "    at <anonymous> (<xmagent prelude>:3:4)\n    at f (lib/a b.js:7:2)\n    at script.js:2:1\n";
        assert_eq!(locate(stack, &sources), Some(("lib/a b.js".to_owned(), 7)));
        assert_eq!(locate("    at x (other.js:1:1)", &sources), None);
    }
}
