//! Opening one websocket to the central: TCP (directly or through an HTTP CONNECT proxy), TLS for
//! `wss://`, then the websocket upgrade carrying the agent token.
//!
//! Kept apart from the streaming loop so the loop only ever sees a ready [`WsStream`] or a
//! [`DialError`] whose message is safe to log (it never contains the token or proxy credentials).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::AUTHORIZATION;
use http::{HeaderValue, Uri};
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::WebSocketStream;

pub use integration::proxy::Proxy;
use integration::proxy::{host_port, unbracket, TunnelError};

/// Largest frame the agent accepts from the central. Central frames are small (ack, reject,
/// welcome); the cap bounds memory if a misbehaving central sends something huge.
const MAX_INBOUND_MESSAGE: usize = 1 << 20;

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
    /// No tunnel through the proxy.
    #[error(transparent)]
    Tunnel(#[from] TunnelError),
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
        Some(proxy) => integration::proxy::tunnel(proxy, &target.authority()).await?,
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

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}
