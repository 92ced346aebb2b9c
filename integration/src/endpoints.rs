//! The HTTP client behind scripts' `http.request`: it reaches configured endpoints only.
//!
//! A script names an endpoint (`CMDB`, the built-in `xMatters`) and a path; this module turns that
//! into a real HTTP(S) request to the endpoint's base URL with the endpoint's credentials. Scripts
//! never see the credentials and cannot reach any other host (DESIGN §5 invariant 4), and secrets
//! are never logged or printed by `Debug`.
//!
//! The built-in `xMatters` endpoint does not carry the agent token: each integration's scripts get
//! a credential derived for that integration ([`server::credentials::script_token`], through
//! [`Endpoints::for_integration`]), which the central accepts only for the events of this agent
//! and that integration, and never for the websocket.

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, AUTHORIZATION};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The name scripts use for the central's REST API.
pub const BUILTIN_NAME: &str = "xMatters";
/// Time limit of one call when the endpoint sets none (the run's own budget may be shorter).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest response body handed to a script; larger answers fail the call rather than fill memory.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// Headers a script may not set: the connection machinery owns them.
const HOP_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-connection",
];

/// One `[[endpoints]]` entry of the agent configuration.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// The name scripts pass as `endpoint`.
    pub name: String,
    /// `http(s)://host[:port][/prefix]`; the script's path is appended to it.
    pub base_url: String,
    /// Credentials added to every call.
    #[serde(default)]
    pub auth: EndpointAuth,
    /// Per-call time limit in milliseconds (default 30 s; never longer than the run's budget).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

impl fmt::Debug for EndpointConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointConfig")
            .field("name", &self.name)
            .field("base_url", &self.base_url)
            .field("auth", &self.auth)
            .field("timeout_ms", &self.timeout_ms)
            .finish()
    }
}

/// How the agent authenticates to an endpoint. Secrets may be inline or, better, in a file (read
/// relative to the configuration file's directory).
#[derive(Clone, Default, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum EndpointAuth {
    /// No credentials.
    #[default]
    None,
    /// HTTP Basic.
    Basic {
        /// User name.
        user: String,
        /// Password, inline.
        #[serde(default)]
        password: Option<String>,
        /// File holding the password.
        #[serde(default)]
        password_file: Option<PathBuf>,
    },
    /// `Authorization: Bearer`.
    Bearer {
        /// Token, inline.
        #[serde(default)]
        token: Option<String>,
        /// File holding the token.
        #[serde(default)]
        token_file: Option<PathBuf>,
    },
}

impl fmt::Debug for EndpointAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndpointAuth::None => f.write_str("None"),
            EndpointAuth::Basic {
                user,
                password_file,
                ..
            } => f
                .debug_struct("Basic")
                .field("user", user)
                .field("password", &"<redacted>")
                .field("password_file", password_file)
                .finish(),
            EndpointAuth::Bearer { token_file, .. } => f
                .debug_struct("Bearer")
                .field("token", &"<redacted>")
                .field("token_file", token_file)
                .finish(),
        }
    }
}

/// The built-in `xMatters` endpoint: the central's REST API, called with a per-integration
/// credential derived from the agent token.
#[derive(Clone)]
pub struct BuiltinXmatters {
    /// Base URL of the central's REST API.
    pub base_url: String,
    /// The agent's token; scripts get credentials derived from it, never the token itself.
    pub bearer_token: String,
    /// The relay's TLS settings (system roots plus the `[central] ca_file`), so scripts reach an
    /// HTTPS central with a private CA like the relay does; `None` for plain HTTP.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The `[central] proxy`: calls to the central go through it, as the relay's do.
    pub proxy: Option<crate::proxy::Proxy>,
}

impl fmt::Debug for BuiltinXmatters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BuiltinXmatters")
            .field("base_url", &self.base_url)
            .field("bearer_token", &"<redacted>")
            .finish()
    }
}

/// A resolved endpoint: parsed base URL, ready-made credential header, time limit.
struct Resolved {
    base_url: String,
    authorization: Option<HeaderValue>,
    timeout: Duration,
}

impl Resolved {
    fn new(
        name: &str,
        base_url: &str,
        authorization: Option<HeaderValue>,
        timeout: Duration,
    ) -> Result<Resolved, String> {
        let uri: Uri = base_url
            .parse()
            .map_err(|e| format!("endpoint {name:?}: base_url {base_url:?}: {e}"))?;
        let scheme_ok = matches!(uri.scheme_str(), Some("http") | Some("https"));
        if !scheme_ok || uri.host().is_none() {
            return Err(format!(
                "endpoint {name:?}: base_url {base_url:?}: expected http://host or https://host"
            ));
        }
        if uri.query().is_some() {
            return Err(format!(
                "endpoint {name:?}: base_url {base_url:?}: must not have a query"
            ));
        }
        Ok(Resolved {
            base_url: base_url.trim_end_matches('/').to_owned(),
            authorization,
            timeout,
        })
    }

    /// The URL of a call: the script's path appended to the base URL as given (the scripts crate
    /// already applied `autoEncodeURI`).
    fn url_for(&self, path: &str) -> Result<Uri, String> {
        let joined = if path.is_empty() || path.starts_with('/') || path.starts_with('?') {
            format!("{}{path}", self.base_url)
        } else {
            format!("{}/{path}", self.base_url)
        };
        joined
            .parse()
            .map_err(|e| format!("invalid path {path:?}: {e}"))
    }
}

/// Read a secret file, dropping the trailing newline editors add.
fn read_secret(name: &str, key: &str, file: &Path, base_dir: &Path) -> Result<String, String> {
    let path = if file.is_absolute() {
        file.to_owned()
    } else {
        base_dir.join(file)
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("endpoint {name:?}: auth.{key} {}: {e}", path.display()))?;
    let secret = text.trim_end_matches(['\r', '\n']).to_owned();
    if secret.is_empty() {
        return Err(format!(
            "endpoint {name:?}: auth.{key} {} is empty",
            path.display()
        ));
    }
    Ok(secret)
}

/// Exactly one of the inline value and the file must be given.
fn one_secret(
    name: &str,
    key: &str,
    inline: &Option<String>,
    file: &Option<PathBuf>,
    base_dir: &Path,
) -> Result<String, String> {
    match (inline, file) {
        (Some(_), Some(_)) => Err(format!(
            "endpoint {name:?}: auth: give either {key} or {key}_file, not both"
        )),
        (Some(value), None) if !value.is_empty() => Ok(value.clone()),
        (Some(_), None) => Err(format!("endpoint {name:?}: auth.{key} is empty")),
        (None, Some(file)) => read_secret(name, &format!("{key}_file"), file, base_dir),
        (None, None) => Err(format!(
            "endpoint {name:?}: auth: {key} or {key}_file is required"
        )),
    }
}

fn sensitive_header(name: &str, value: String) -> Result<HeaderValue, String> {
    let mut header = HeaderValue::from_str(&value).map_err(|_| {
        format!(
            "endpoint {name:?}: auth: the credential contains characters not allowed in a header"
        )
    })?;
    header.set_sensitive(true);
    Ok(header)
}

fn authorization(
    name: &str,
    auth: &EndpointAuth,
    base_dir: &Path,
) -> Result<Option<HeaderValue>, String> {
    use base64::Engine as _;
    match auth {
        EndpointAuth::None => Ok(None),
        EndpointAuth::Basic {
            user,
            password,
            password_file,
        } => {
            if user.is_empty() || user.contains(':') {
                return Err(format!(
                    "endpoint {name:?}: auth.user must be non-empty and contain no ':'"
                ));
            }
            let password = one_secret(name, "password", password, password_file, base_dir)?;
            let encoded =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            sensitive_header(name, format!("Basic {encoded}")).map(Some)
        }
        EndpointAuth::Bearer { token, token_file } => {
            let token = one_secret(name, "token", token, token_file, base_dir)?;
            sensitive_header(name, format!("Bearer {}", token.trim())).map(Some)
        }
    }
}

type HttpsClient = Client<HttpsConnector<Connector>, Full<Bytes>>;

/// Opens the TCP connections of endpoint calls: directly, except calls to the central when the
/// agent reaches it through `[central] proxy` (an HTTP CONNECT tunnel, as the relay's).
#[derive(Clone)]
struct Connector {
    direct: HttpConnector,
    /// The proxy and the central's `host:port` that goes through it.
    central_via: Option<(crate::proxy::Proxy, String)>,
}

/// `host:port` of a URL, with the scheme's default port filled in.
fn host_port(uri: &Uri) -> Option<String> {
    let authority = uri.authority()?;
    let default = if uri.scheme_str() == Some("https") {
        443
    } else {
        80
    };
    Some(format!(
        "{}:{}",
        authority.host(),
        authority.port_u16().unwrap_or(default)
    ))
}

impl tower_service::Service<Uri> for Connector {
    type Response = hyper_util::rt::TokioIo<tokio::net::TcpStream>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.direct.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, destination: Uri) -> Self::Future {
        match (&self.central_via, host_port(&destination)) {
            (Some((proxy, central)), Some(authority)) if *central == authority => {
                let proxy = proxy.clone();
                Box::pin(async move {
                    let stream = crate::proxy::tunnel(&proxy, &authority)
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok(hyper_util::rt::TokioIo::new(stream))
                })
            }
            _ => {
                let connecting = self.direct.call(destination);
                Box::pin(async move { connecting.await.map_err(Into::into) })
            }
        }
    }
}

/// TLS for endpoints: the `ring` provider and the system's roots. A system without usable roots
/// still gets a client (plain `http://` endpoints keep working) and a warning.
fn tls_config() -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    let loaded = rustls_native_certs::load_native_certs();
    for error in &loaded.errors {
        tracing::warn!(%error, "could not load part of the system certificate store");
    }
    let (added, _ignored) = roots.add_parsable_certificates(loaded.certs);
    if added == 0 {
        tracing::warn!("no system root certificates: https endpoints will fail verification");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS configuration: {e}"))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(config)
}

/// The configured endpoints, and the agent's implementation of [`scripts::HttpClient`].
pub struct Endpoints {
    endpoints: HashMap<String, Resolved>,
    client: HttpsClient,
    runtime: tokio::runtime::Handle,
    /// The agent token, to derive each integration's built-in credential from.
    agent_token: Option<String>,
    /// Credentials derived so far, by scope: deriving one costs two SHA-256 runs, and every
    /// script run of an integration needs the same one.
    minted: std::sync::Mutex<HashMap<Vec<String>, HeaderValue>>,
}

/// Scopes whose derived credential is kept (one per integration in practice).
const MINTED_KEPT: usize = 4096;

/// The endpoints as one integration's scripts reach them: the configured ones, and the built-in
/// `xMatters` with that integration's credential. What the worker hands to a script run.
pub struct IntegrationEndpoints {
    endpoints: Arc<Endpoints>,
    xmatters_authorization: Option<HeaderValue>,
}

impl fmt::Debug for Endpoints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&str> = self.endpoints.keys().map(String::as_str).collect();
        names.sort_unstable();
        f.debug_struct("Endpoints").field("names", &names).finish()
    }
}

impl fmt::Debug for IntegrationEndpoints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IntegrationEndpoints")
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

impl Endpoints {
    /// Resolve the configured endpoints (reading secret files relative to `base_dir`) and add the
    /// built-in `xMatters` endpoint. Errors name the endpoint and the key. Calls run on `runtime`,
    /// driven from the (non-tokio) script threads.
    pub fn new(
        configs: &[EndpointConfig],
        base_dir: &Path,
        xmatters: Option<BuiltinXmatters>,
        runtime: tokio::runtime::Handle,
    ) -> Result<Endpoints, String> {
        let mut endpoints = HashMap::new();
        for config in configs {
            let name = config.name.as_str();
            if name.is_empty() {
                return Err("endpoint with an empty name".to_owned());
            }
            if name == BUILTIN_NAME && xmatters.is_some() {
                return Err(format!(
                    "endpoint {name:?}: the name is reserved (built in)"
                ));
            }
            let timeout = match config.timeout_ms {
                Some(0) => return Err(format!("endpoint {name:?}: timeout_ms must be above 0")),
                Some(ms) => Duration::from_millis(ms),
                None => DEFAULT_TIMEOUT,
            };
            let auth = authorization(name, &config.auth, base_dir)?;
            let resolved = Resolved::new(name, &config.base_url, auth, timeout)?;
            if endpoints.insert(name.to_owned(), resolved).is_some() {
                return Err(format!("endpoint {name:?}: defined twice"));
            }
        }
        let mut agent_token = None;
        // The relay's trust (system roots + its CA file) covers the configured endpoints too: the
        // operator trusts that CA already, and one client serves every endpoint.
        let tls = match xmatters.as_ref().and_then(|b| b.tls.as_deref()) {
            Some(relay_tls) => relay_tls.clone(),
            None => tls_config()?,
        };
        let mut direct = HttpConnector::new();
        direct.enforce_http(false);
        let central_via = xmatters.as_ref().and_then(|builtin| {
            let uri: Uri = builtin.base_url.parse().ok()?;
            Some((builtin.proxy.clone()?, host_port(&uri)?))
        });
        if let Some(builtin) = xmatters {
            let resolved = Resolved::new(BUILTIN_NAME, &builtin.base_url, None, DEFAULT_TIMEOUT)?;
            endpoints.insert(BUILTIN_NAME.to_owned(), resolved);
            agent_token = Some(builtin.bearer_token.trim().to_owned());
        }
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(Connector {
                direct,
                central_via,
            });
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(Endpoints {
            endpoints,
            client,
            runtime,
            agent_token,
            minted: std::sync::Mutex::default(),
        })
    }

    /// The endpoints for the scripts of one integration: the built-in `xMatters` endpoint
    /// authenticates with a credential for the events of `integrations` only (the integration's
    /// own id first, then those its `script_events_of` grants).
    pub fn for_integration(self: &Arc<Self>, integrations: &[String]) -> IntegrationEndpoints {
        let xmatters_authorization = self.agent_token.as_deref().and_then(|token| {
            let mut minted = self.minted.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(header) = minted.get(integrations) {
                return Some(header.clone());
            }
            let credential = server::credentials::script_token(token, integrations);
            let header = sensitive_header(BUILTIN_NAME, format!("Bearer {credential}")).ok()?;
            if minted.len() < MINTED_KEPT {
                minted.insert(integrations.to_vec(), header.clone());
            }
            Some(header)
        });
        IntegrationEndpoints {
            endpoints: Arc::clone(self),
            xmatters_authorization,
        }
    }

    /// The endpoint names scripts may use.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.endpoints.keys().cloned().collect();
        names.sort_unstable();
        names
    }

    fn build_request(
        &self,
        endpoint: &Resolved,
        authorization: Option<&HeaderValue>,
        call: &scripts::HttpCall,
    ) -> Result<Request<Full<Bytes>>, String> {
        let method = Method::from_bytes(call.method.as_bytes())
            .map_err(|_| format!("invalid HTTP method {:?}", call.method))?;
        let uri = endpoint.url_for(&call.path)?;
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .body(Full::new(Bytes::from(
                call.body.clone().unwrap_or_default(),
            )))
            .map_err(|e| format!("invalid request: {e}"))?;
        let headers = request.headers_mut();
        for (name, value) in &call.headers {
            if HOP_HEADERS.iter().any(|h| name.eq_ignore_ascii_case(h)) {
                continue;
            }
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("invalid header name {name:?}"))?;
            let value = HeaderValue::from_str(value)
                .map_err(|_| format!("invalid value for header {name}"))?;
            headers.append(name, value);
        }
        if let Some(auth) = authorization {
            // The endpoint's credential wins over anything the script set.
            headers.insert(AUTHORIZATION, auth.clone());
        }
        Ok(request)
    }

    async fn exchange(&self, request: Request<Full<Bytes>>) -> Result<scripts::HttpReply, String> {
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| describe_client_error(&e))?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    format!("response body larger than {MAX_RESPONSE_BYTES} bytes")
                } else {
                    format!("reading the response failed: {e}")
                }
            })?
            .to_bytes();
        Ok(scripts::HttpReply {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}

/// A client error with its cause chain (hyper-util's top-level message alone says little).
fn describe_client_error(error: &hyper_util::client::legacy::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl scripts::HttpClient for IntegrationEndpoints {
    fn send(&self, call: &scripts::HttpCall) -> Result<scripts::HttpReply, String> {
        let authorization = if call.endpoint == BUILTIN_NAME {
            self.xmatters_authorization.as_ref()
        } else {
            None
        };
        self.endpoints.send(call, authorization)
    }
}

impl Endpoints {
    /// Make `call`; `builtin_authorization` is the credential of the built-in endpoint (other
    /// endpoints carry their own).
    fn send(
        &self,
        call: &scripts::HttpCall,
        builtin_authorization: Option<&HeaderValue>,
    ) -> Result<scripts::HttpReply, String> {
        let endpoint = self.endpoints.get(&call.endpoint).ok_or_else(|| {
            format!(
                "unknown endpoint '{}' (configured: {})",
                call.endpoint,
                self.names().join(", ")
            )
        })?;
        let timeout = endpoint.timeout.min(call.timeout);
        if timeout.is_zero() {
            return Err("no time left in the script's budget".to_owned());
        }
        let authorization = endpoint.authorization.as_ref().or(builtin_authorization);
        let request = self.build_request(endpoint, authorization, call)?;
        if tokio::runtime::Handle::try_current().is_ok() {
            // block_on would panic inside a runtime; scripts run on their own threads.
            return Err("internal error: endpoint called from an async context".to_owned());
        }
        let started = Instant::now();
        let result = self
            .runtime
            // The timer must be created inside the runtime, hence the async block.
            .block_on(async { tokio::time::timeout(timeout, self.exchange(request)).await })
            .unwrap_or_else(|_| Err(format!("timed out after {} ms", timeout.as_millis())));
        let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        match &result {
            Ok(reply) => tracing::debug!(
                endpoint = %call.endpoint, method = %call.method, status = reply.status, elapsed_ms,
                "script HTTP call"
            ),
            Err(error) => tracing::debug!(
                endpoint = %call.endpoint, method = %call.method, %error, elapsed_ms,
                "script HTTP call failed"
            ),
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scripts::{HttpCall, HttpClient};
    use std::convert::Infallible;

    /// A loopback server answering with what it received: `METHOD PATH|AUTHORIZATION|BODY`.
    /// `/slow` waits two seconds; `/big` answers 2 MiB.
    fn start_server(rt: &tokio::runtime::Runtime) -> std::net::SocketAddr {
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        rt.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        |req: hyper::Request<hyper::body::Incoming>| async move {
                            let path = req
                                .uri()
                                .path_and_query()
                                .map(|p| p.as_str().to_owned())
                                .unwrap_or_default();
                            let auth = req
                                .headers()
                                .get(AUTHORIZATION)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("-")
                                .to_owned();
                            let method = req.method().to_string();
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            if path == "/slow" {
                                tokio::time::sleep(Duration::from_secs(2)).await;
                            }
                            let text = if path == "/big" {
                                "x".repeat(2 * MAX_RESPONSE_BYTES)
                            } else {
                                format!("{method} {path}|{auth}|{}", String::from_utf8_lossy(&body))
                            };
                            Ok::<_, Infallible>(
                                hyper::Response::builder()
                                    .status(if path.starts_with("/missing") {
                                        404
                                    } else {
                                        200
                                    })
                                    .header("X-Test", "1")
                                    .body(Full::new(Bytes::from(text)))
                                    .expect("response"),
                            )
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        addr
    }

    fn call(endpoint: &str, method: &str, path: &str, body: Option<&str>) -> HttpCall {
        HttpCall {
            endpoint: endpoint.into(),
            method: method.into(),
            path: path.into(),
            headers: vec![
                ("Content-Type".into(), "application/json".into()),
                ("Authorization".into(), "Basic forged".into()),
            ],
            body: body.map(str::to_owned),
            timeout: Duration::from_secs(5),
        }
    }

    fn configs(toml_text: &str) -> Vec<EndpointConfig> {
        #[derive(Deserialize)]
        struct File {
            endpoints: Vec<EndpointConfig>,
        }
        toml::from_str::<File>(toml_text)
            .expect("valid endpoints")
            .endpoints
    }

    /// The endpoints of integration `alerts`, with the built-in one at `central`.
    fn test_endpoints(
        rt: &tokio::runtime::Runtime,
        list: &[EndpointConfig],
        dir: &std::path::Path,
        central: std::net::SocketAddr,
        proxy: Option<crate::proxy::Proxy>,
    ) -> IntegrationEndpoints {
        let builtin = BuiltinXmatters {
            base_url: format!("http://{central}"),
            bearer_token: "agent-token".into(),
            tls: None,
            proxy,
        };
        Arc::new(
            Endpoints::new(list, dir, Some(builtin), rt.handle().clone())
                .expect("endpoints resolve"),
        )
        .for_integration(&["alerts".to_owned()])
    }

    /// An HTTP CONNECT proxy on loopback that tunnels every connection and records the
    /// targets it was asked for.
    fn start_connect_proxy(
        rt: &tokio::runtime::Runtime,
    ) -> (std::net::SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let targets = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = targets.clone();
        rt.spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        client.read_exact(&mut byte).await.expect("CONNECT head");
                        head.push(byte[0]);
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let target = head.split_whitespace().nth(1).unwrap_or("").to_owned();
                    seen.lock().unwrap().push(target.clone());
                    let mut upstream = tokio::net::TcpStream::connect(target).await.expect("up");
                    client
                        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                        .await
                        .expect("answer CONNECT");
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                });
            }
        });
        (addr, targets)
    }

    #[test]
    fn the_builtin_endpoint_goes_through_the_central_proxy_and_others_do_not() {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let addr = start_server(&rt);
        let (proxy_addr, targets) = start_connect_proxy(&rt);
        let dir = tempfile::tempdir().expect("tempdir");
        let list = configs(&format!(
            r#"
            [[endpoints]]
            name = "CMDB"
            base_url = "http://localhost:{}"
            "#,
            addr.port()
        ));
        let proxy = crate::proxy::Proxy::parse(&format!("http://{proxy_addr}")).expect("proxy");
        let endpoints = test_endpoints(&rt, &list, dir.path(), addr, Some(proxy));
        let reply = endpoints
            .send(&call("xMatters", "GET", "/api/xm/1/events", None))
            .expect("the central answers through the proxy");
        assert_eq!(reply.status, 200);
        assert!(
            reply.body.starts_with("GET /api/xm/1/events|Bearer "),
            "{}",
            reply.body
        );
        let reply = endpoints
            .send(&call("CMDB", "GET", "/ci", None))
            .expect("CMDB answers directly");
        assert_eq!(reply.status, 200);
        assert_eq!(*targets.lock().unwrap(), vec![addr.to_string()]);
    }

    #[test]
    fn calls_carry_the_endpoint_credentials_and_fail_cleanly() {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let addr = start_server(&rt);
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("cmdb.pw"), "s3cret\n").expect("write secret");
        let list = configs(&format!(
            r#"
            [[endpoints]]
            name = "CMDB"
            base_url = "http://{addr}/api/"
            auth = {{ type = "basic", user = "svc", password_file = "cmdb.pw" }}
            [[endpoints]]
            name = "Tickets"
            base_url = "http://{addr}"
            auth = {{ type = "bearer", token = "tok-1" }}
            [[endpoints]]
            name = "Open"
            base_url = "http://{addr}"
            timeout_ms = 200
            "#
        ));
        let endpoints = test_endpoints(&rt, &list, dir.path(), addr, None);

        let reply = endpoints
            .send(&call("CMDB", "GET", "/ci/web01?x=1", None))
            .expect("CMDB answers");
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, "GET /api/ci/web01?x=1|Basic c3ZjOnMzY3JldA==|");
        assert!(reply.headers.iter().any(|(k, v)| k == "x-test" && v == "1"));

        let reply = endpoints
            .send(&call("Tickets", "POST", "/t", Some("{\"a\":1}")))
            .expect("Tickets answers");
        assert_eq!(reply.body, "POST /t|Bearer tok-1|{\"a\":1}");

        let reply = endpoints
            .send(&call("xMatters", "GET", "/api/xm/1/events", None))
            .expect("built-in answers");
        let credential = server::credentials::script_token("agent-token", &["alerts".to_owned()]);
        assert_eq!(
            reply.body,
            format!("GET /api/xm/1/events|Bearer {credential}|"),
            "the built-in endpoint carries the integration's credential, not the agent token"
        );

        let reply = endpoints
            .send(&call("Open", "GET", "/missing", None))
            .expect("an error status is an answer");
        assert_eq!(reply.status, 404);
        assert!(
            reply.body.ends_with("|Basic forged|"),
            "no endpoint auth: the script's header stays"
        );

        let started = Instant::now();
        let error = endpoints
            .send(&call("Open", "GET", "/slow", None))
            .expect_err("times out");
        assert!(error.contains("timed out"), "{error}");
        assert!(started.elapsed() < Duration::from_secs(1));

        let mut short = call("Tickets", "GET", "/slow", None);
        short.timeout = Duration::from_millis(100);
        assert!(endpoints
            .send(&short)
            .expect_err("run budget")
            .contains("timed out"));

        let error = endpoints
            .send(&call("Open", "GET", "/big", None))
            .expect_err("body too large");
        assert!(error.contains("larger than"), "{error}");

        let error = endpoints
            .send(&call("Nowhere", "GET", "/", None))
            .expect_err("unknown endpoint");
        assert!(error.contains("unknown endpoint 'Nowhere'"), "{error}");
        assert!(!format!("{endpoints:?}").contains("tok-1"));
    }

    #[test]
    fn connection_errors_are_reported() {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        // Bind then drop a listener to get a port nobody listens on.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port");
        let list = configs(&format!(
            "[[endpoints]]\nname = \"Gone\"\nbase_url = \"http://{addr}\"\n"
        ));
        let endpoints = Arc::new(
            Endpoints::new(&list, Path::new("."), None, rt.handle().clone()).expect("resolve"),
        )
        .for_integration(&["alerts".to_owned()]);
        let error = endpoints
            .send(&call("Gone", "GET", "/", None))
            .expect_err("refused");
        assert!(!error.is_empty());
    }

    #[test]
    fn configuration_errors_name_the_endpoint_and_key() {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let dir = tempfile::tempdir().expect("tempdir");
        let cases = [
            (
                r#"[[endpoints]]
                name = "A"
                base_url = "http://h"
                auth = { type = "basic", user = "u", password = "p", password_file = "f" }"#,
                "not both",
            ),
            (
                r#"[[endpoints]]
                name = "B"
                base_url = "http://h"
                auth = { type = "bearer", token_file = "missing.token" }"#,
                "auth.token_file",
            ),
            (
                r#"[[endpoints]]
                name = "C"
                base_url = "ftp://h""#,
                "base_url",
            ),
            (
                r#"[[endpoints]]
                name = "xMatters"
                base_url = "http://h""#,
                "reserved",
            ),
        ];
        for (text, expected) in cases {
            let error = Endpoints::new(
                &configs(text),
                dir.path(),
                Some(BuiltinXmatters {
                    base_url: "http://central".into(),
                    bearer_token: "t".into(),
                    tls: None,
                    proxy: None,
                }),
                rt.handle().clone(),
            )
            .expect_err(text);
            assert!(error.contains(expected), "{error}");
            assert!(error.starts_with("endpoint "), "{error}");
        }
        #[derive(Deserialize)]
        #[allow(dead_code)]
        struct File {
            endpoints: Vec<EndpointConfig>,
        }
        let unknown = toml::from_str::<File>(
            "[[endpoints]]\nname = \"D\"\nbase_url = \"http://h\"\nretries = 3\n",
        );
        assert!(unknown.is_err(), "unknown keys are rejected");
        let unknown_auth = toml::from_str::<File>(
            "[[endpoints]]\nname = \"D\"\nbase_url = \"http://h\"\nauth = { type = \"bearer\", token = \"t\", extra = 1 }\n",
        );
        assert!(unknown_auth.is_err(), "unknown auth keys are rejected");
    }

    #[test]
    fn debug_output_hides_secrets() {
        let config = EndpointConfig {
            name: "A".into(),
            base_url: "http://h".into(),
            auth: EndpointAuth::Basic {
                user: "u".into(),
                password: Some("hunter2".into()),
                password_file: None,
            },
            timeout_ms: None,
        };
        let builtin = BuiltinXmatters {
            base_url: "http://c".into(),
            bearer_token: "agent-secret".into(),
            tls: None,
            proxy: None,
        };
        let text = format!("{config:?} {builtin:?}");
        assert!(
            !text.contains("hunter2") && !text.contains("agent-secret"),
            "{text}"
        );
    }
}
