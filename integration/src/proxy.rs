//! Tunnels through an HTTP proxy with `CONNECT`: how the agent reaches its central when
//! `[central] proxy` is set, both for the relay's websocket and for scripts calling the built-in
//! `xMatters` endpoint.
//!
//! What it does not do: TLS (the tunnel carries whatever the caller speaks) or HTTPS proxies.

use base64::Engine as _;
use http::Uri;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest HTTP response head accepted from a proxy answering CONNECT.
const MAX_PROXY_RESPONSE_HEAD: usize = 8 * 1024;

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

/// Why a tunnel could not be opened. Messages never contain the proxy credentials.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// TCP connect to the proxy failed.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The proxy's `host:port`.
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
}

/// Open a TCP tunnel to `authority` (`host:port`) through `proxy` with `CONNECT`; the relay
/// dials the central this way, and so do scripts calling the built-in `xMatters` endpoint.
pub async fn tunnel(proxy: &Proxy, authority: &str) -> Result<TcpStream, TunnelError> {
    let addr = proxy.authority();
    let fail = |reason: String| TunnelError::Proxy {
        addr: addr.clone(),
        reason,
    };
    let mut tcp = TcpStream::connect((proxy.host.as_str(), proxy.port))
        .await
        .map_err(|source| TunnelError::Connect {
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

/// A host without the brackets of an IPv6 literal.
pub fn unbracket(host: &str) -> &str {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// `host:port`, bracketing an IPv6 host.
pub fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}
