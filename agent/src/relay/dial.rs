//! Opening one websocket to the central: TCP (directly or through an HTTP CONNECT proxy), TLS for
//! `wss://`, then the websocket upgrade carrying the agent token.
//!
//! Kept apart from the streaming loop so the loop only ever sees a ready [`WsStream`] or a
//! [`DialError`] whose message is safe to log (it never contains the token or proxy credentials).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use http::header::AUTHORIZATION;
use http::{HeaderValue, Uri};
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::WebSocketStream;

/// Largest frame the agent accepts from the central. Central frames are small (ack, reject,
/// welcome); the cap bounds memory if a misbehaving central sends something huge.
const MAX_INBOUND_MESSAGE: usize = 1 << 20;

/// Longest HTTP response head accepted from a proxy answering CONNECT.
const MAX_PROXY_RESPONSE_HEAD: usize = 8 * 1024;

/// A byte stream the websocket can run over: plain TCP or TLS over TCP. A trait object keeps the
/// rest of the relay independent of which one was dialled.
pub(super) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// An established, upgraded connection to the central.
pub(super) type WsStream = WebSocketStream<Box<dyn Io>>;

/// Where the central is, as parsed and checked from `central.url`.
#[derive(Debug, Clone)]
pub(super) struct Target {
    /// The full websocket URL used for the upgrade request (path defaulted, see [`Target::parse`]).
    pub uri: Uri,
    /// Host name or IP address without IPv6 brackets, as used for DNS and TLS server names.
    pub host: String,
    /// TCP port (explicit, or 80/443 from the scheme).
    pub port: u16,
    /// `wss://`: wrap the TCP stream in TLS.
    pub tls: bool,
}

impl Target {
    /// Parse and check a central URL. `ws://` is accepted only for loopback hosts, because the
    /// token would otherwise cross the network in clear text. A URL without a path (or with `/`)
    /// gets [`protocol::CONNECT_PATH`], the path every central serves.
    pub fn parse(url: &str) -> Result<Self, String> {
        let uri: Uri = url.parse().map_err(|e| {
            format!("{url:?} is not a valid URL ({e}); expected wss://host[:port]/path")
        })?;
        let tls = match uri.scheme_str() {
            Some("wss") => true,
            Some("ws") => false,
            Some(other) => {
                return Err(format!(
                    "unsupported scheme {other:?}: use wss:// (or ws:// for a loopback central)"
                ))
            }
            None => {
                return Err(format!(
                    "{url:?} has no scheme: use wss://host[:port]{}",
                    protocol::CONNECT_PATH
                ))
            }
        };
        let authority = uri
            .authority()
            .ok_or_else(|| format!("{url:?} has no host"))?;
        if authority.as_str().contains('@') {
            return Err(
                "credentials in the URL are not supported: the agent authenticates with \
                        central.token / central.token_file"
                    .into(),
            );
        }
        let host = unbracket(authority.host()).to_string();
        if host.is_empty() {
            return Err(format!("{url:?} has no host"));
        }
        if !tls && !is_loopback(&host) {
            return Err(format!(
                "ws:// (unencrypted) is only allowed for a loopback central, not {host:?}: use wss:// so the \
                 agent token is not sent in clear text"
            ));
        }
        if tls && ServerName::try_from(host.clone()).is_err() {
            return Err(format!("{host:?} is not a valid TLS server name"));
        }
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let uri = match uri.path_and_query().map(|pq| pq.as_str()) {
            None | Some("") | Some("/") => {
                let with_path = format!(
                    "{}://{}{}",
                    if tls { "wss" } else { "ws" },
                    authority,
                    protocol::CONNECT_PATH
                );
                with_path.parse().map_err(|e| format!("{url:?}: {e}"))?
            }
            Some(_) => uri,
        };
        Ok(Self {
            uri,
            host,
            port,
            tls,
        })
    }

    /// `host:port` as it appears in a CONNECT request line (IPv6 literals bracketed).
    pub fn authority(&self) -> String {
        host_port(&self.host, self.port)
    }
}

/// An HTTP proxy the agent tunnels through with CONNECT.
#[derive(Clone)]
pub struct Proxy {
    /// Proxy host (no brackets).
    pub host: String,
    /// Proxy port (explicit, or 80).
    pub port: u16,
    /// Ready-made `Proxy-Authorization` value when the proxy URL carried `user:password@`.
    authorization: Option<String>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("host", &self.host)
            .field("port", &self.port)
            .field(
                "authorization",
                &self.authorization.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl Proxy {
    /// Parse `http://[user:password@]host[:port]`. Only plain-HTTP proxies are supported (the
    /// tunnelled connection itself is still TLS end to end for `wss://`).
    pub fn parse(url: &str) -> Result<Self, String> {
        // Do not echo the URL back: it may carry a proxy password.
        let uri: Uri = url
            .parse()
            .map_err(|_| "not a valid URL; expected http://host:port".to_string())?;
        match uri.scheme_str() {
            Some("http") => {}
            _ => {
                return Err(
                    "only http:// proxies (HTTP CONNECT) are supported; expected http://host:port"
                        .into(),
                )
            }
        }
        let authority = uri
            .authority()
            .ok_or_else(|| "the proxy URL has no host".to_string())?;
        let (userinfo, _) = match authority.as_str().rsplit_once('@') {
            Some((user, rest)) => (Some(user), rest),
            None => (None, authority.as_str()),
        };
        let host = unbracket(authority.host()).to_string();
        if host.is_empty() {
            return Err("the proxy URL has no host".into());
        }
        let authorization = userinfo.map(|info| {
            let decoded = percent_encoding::percent_decode_str(info).decode_utf8_lossy();
            let encoded = base64::engine::general_purpose::STANDARD.encode(decoded.as_bytes());
            format!("Basic {encoded}")
        });
        let port = uri.port_u16().unwrap_or(80);
        Ok(Self {
            host,
            port,
            authorization,
        })
    }

    /// `host:port` for log lines (never the credentials).
    pub fn authority(&self) -> String {
        host_port(&self.host, self.port)
    }
}

/// Why a connection attempt failed. Messages are written for the operator and never contain the
/// agent token or proxy credentials.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DialError {
    /// TCP connect (to the central or the proxy) failed.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// `host:port` that was dialled.
        addr: String,
        /// The socket error.
        source: std::io::Error,
    },
    /// The proxy refused or botched the CONNECT tunnel.
    #[error("proxy {addr}: {reason}")]
    Proxy {
        /// The proxy's `host:port`.
        addr: String,
        /// What went wrong.
        reason: String,
    },
    /// The TLS handshake failed (untrusted certificate, wrong name, protocol mismatch...).
    #[error("TLS handshake with {host} failed: {source}")]
    Tls {
        /// The server name that was verified.
        host: String,
        /// The error from rustls, wrapped in I/O by tokio-rustls.
        source: std::io::Error,
    },
    /// The central refused the token.
    #[error(
        "authentication failed: the central answered HTTP {status} to the websocket upgrade; check \
         central.token / central.token_file (retrying)"
    )]
    Unauthorized {
        /// 401 or 403.
        status: u16,
    },
    /// The central (or something in front of it) answered the upgrade with another status.
    #[error("the central answered HTTP {status} to the websocket upgrade instead of 101 Switching Protocols")]
    HttpStatus {
        /// The HTTP status received.
        status: u16,
    },
    /// The websocket handshake failed for another reason (bad response, I/O error...).
    #[error("websocket handshake failed: {0}")]
    Handshake(WsError),
    /// The whole attempt (connect, proxy, TLS, upgrade) took too long.
    #[error("connection attempt timed out after {0:?}")]
    Timeout(Duration),
}

/// Everything needed to dial, borrowed from the relay settings.
pub(super) struct DialParams<'a> {
    /// The central.
    pub target: &'a Target,
    /// Optional CONNECT proxy.
    pub proxy: Option<&'a Proxy>,
    /// TLS client configuration; required when `target.tls`.
    pub tls: Option<&'a Arc<ClientConfig>>,
    /// `Bearer <token>` (marked sensitive).
    pub authorization: HeaderValue,
    /// Bound for the whole attempt.
    pub timeout: Duration,
}

/// Open and upgrade one connection to the central, bounded by `params.timeout`.
pub(super) async fn dial(params: DialParams<'_>) -> Result<WsStream, DialError> {
    let timeout = params.timeout;
    tokio::time::timeout(timeout, dial_inner(params))
        .await
        .map_err(|_| DialError::Timeout(timeout))?
}

async fn dial_inner(params: DialParams<'_>) -> Result<WsStream, DialError> {
    let target = params.target;
    let tcp = match params.proxy {
        Some(proxy) => tunnel(proxy, &target.authority()).await?,
        None => {
            let addr = target.authority();
            TcpStream::connect((target.host.as_str(), target.port))
                .await
                .map_err(|source| DialError::Connect { addr, source })?
        }
    };
    // Frames are small and latency-sensitive (acks gate the window); do not let Nagle batch them.
    let _ = tcp.set_nodelay(true);

    let io: Box<dyn Io> = match (target.tls, params.tls) {
        (true, Some(config)) => {
            let name = ServerName::try_from(target.host.clone()).map_err(|e| DialError::Tls {
                host: target.host.clone(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
            })?;
            let connector = tokio_rustls::TlsConnector::from(Arc::clone(config));
            let stream = connector
                .connect(name, tcp)
                .await
                .map_err(|source| DialError::Tls {
                    host: target.host.clone(),
                    source,
                })?;
            Box::new(stream)
        }
        (true, None) => {
            return Err(DialError::Tls {
                host: target.host.clone(),
                source: std::io::Error::other("no TLS client configuration for a wss:// URL"),
            })
        }
        (false, _) => Box::new(tcp),
    };

    let mut request = target
        .uri
        .clone()
        .into_client_request()
        .map_err(DialError::Handshake)?;
    request
        .headers_mut()
        .insert(AUTHORIZATION, params.authorization);
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_INBOUND_MESSAGE))
        .max_frame_size(Some(MAX_INBOUND_MESSAGE));
    match tokio_tungstenite::client_async_with_config(request, io, Some(config)).await {
        Ok((ws, _response)) => Ok(ws),
        Err(WsError::Http(response)) => {
            let status = response.status().as_u16();
            if status == 401 || status == 403 {
                Err(DialError::Unauthorized { status })
            } else {
                Err(DialError::HttpStatus { status })
            }
        }
        Err(e) => Err(DialError::Handshake(e)),
    }
}

/// Open a TCP tunnel to `authority` (`host:port`) through `proxy` with `CONNECT`; the relay
/// dials the central this way, and so do scripts calling the built-in `xMatters` endpoint.
pub(crate) async fn tunnel(proxy: &Proxy, authority: &str) -> Result<TcpStream, DialError> {
    let addr = proxy.authority();
    let fail = |reason: String| DialError::Proxy {
        addr: addr.clone(),
        reason,
    };
    let mut tcp = TcpStream::connect((proxy.host.as_str(), proxy.port))
        .await
        .map_err(|source| DialError::Connect {
            addr: addr.clone(),
            source,
        })?;
    let mut head = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
    if let Some(auth) = &proxy.authorization {
        head.push_str("Proxy-Authorization: ");
        head.push_str(auth);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    tcp.write_all(head.as_bytes())
        .await
        .map_err(|e| fail(format!("sending CONNECT: {e}")))?;

    // Read the response head one byte at a time so nothing after it (the start of the tunnelled
    // stream) is consumed here. It is a few hundred bytes, once per connection.
    let mut response = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    while !response.ends_with(b"\r\n\r\n") {
        if response.len() >= MAX_PROXY_RESPONSE_HEAD {
            return Err(fail("response head to CONNECT is too long".into()));
        }
        let n = tcp
            .read(&mut byte)
            .await
            .map_err(|e| fail(format!("reading the CONNECT response: {e}")))?;
        if n == 0 {
            return Err(fail("closed the connection during CONNECT".into()));
        }
        response.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&response);
    let status_line = text.lines().next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| fail(format!("unexpected CONNECT response {status_line:?}")))?;
    match status {
        200..=299 => Ok(tcp),
        407 => Err(fail(
            "proxy authentication required (407): check the user:password in central.proxy".into(),
        )),
        other => Err(fail(format!("CONNECT {authority} answered HTTP {other}"))),
    }
}

fn unbracket(host: &str) -> &str {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}
