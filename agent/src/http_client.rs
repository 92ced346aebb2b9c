//! A minimal HTTP/1.1 client for the CLI's calls to the running agent's admin endpoints.
//!
//! It exists so `xmagent request`, `status`, `queue` and friends need no TLS stack or connection pool: one plain
//! connection to loopback, one request, one answer.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;

/// Send a body-less `method` request for `path_and_query` to `addr`, with an optional bearer
/// token; returns status and body.
pub async fn send(
    addr: SocketAddr,
    method: Method,
    path_and_query: &str,
    bearer: Option<&str>,
    timeout: Duration,
) -> anyhow::Result<(StatusCode, Bytes)> {
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let mut request = Request::builder()
            .method(method)
            .uri(path_and_query)
            .header(hyper::header::HOST, addr.to_string());
        if let Some(token) = bearer {
            request = request.header(
                hyper::header::AUTHORIZATION,
                format!("Bearer {}", token.trim()),
            );
        }
        let response = sender
            .send_request(request.body(Empty::<Bytes>::new())?)
            .await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, body))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .context("timed out")?
}
