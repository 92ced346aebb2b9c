//! The HTTP/1.1 accept loop shared by `xmcentral` and `xmagent`.
//!
//! Both daemons serve plain HTTP on a `TcpListener` and must stop the same way on SIGTERM: stop
//! accepting, let every in-flight request finish, then return. Keeping that loop here means the
//! shutdown behaviour is written (and reviewed) once. It also refuses malformed or oversized
//! request heads ([`crate::http_util::check_request_head`]) before any handler runs.
//!
//! What it does NOT do: route requests, authenticate or read bodies (the handler does), or build
//! the TLS configuration (see [`crate::tls`]).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The response body type every handler returns: boxed so handlers can mix full bodies and
/// streams without generic plumbing.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// How long in-flight connections get to finish after shutdown was requested.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a client gets to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Serve `handler` on `listener` until `shutdown` turns true, then drain in-flight connections.
/// `handler` receives the peer address because ingress needs it for the activity stream. With
/// `tls`, every connection first completes a TLS handshake (in its own task, with the header
/// read timeout, so a slow handshake never holds up the accept loop).
///
/// Connections may be upgraded (HTTP `101 Switching Protocols`), which the central needs for the
/// agent websocket on the same listener as its REST API; the agent simply never upgrades.
/// hyper-util's `GracefulShutdown` cannot watch upgradeable HTTP/1 connections, so this loop
/// tracks them itself: on shutdown each connection is asked to finish its current request and
/// close, and the function returns once all have (or after the drain timeout). A connection that
/// was already upgraded has been handed to its handler and is not waited for here; the handler
/// must watch `shutdown` itself.
pub async fn serve<H, F>(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    handler: H,
    mut shutdown: watch::Receiver<bool>,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    // Every connection task holds a clone of `alive`; `recv` returns `None` once all are gone.
    let (alive, mut all_done) = tokio::sync::mpsc::channel::<()>(1);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let service = service_fn(move |request: Request<Incoming>| {
            let outcome =
                crate::http_util::check_request_head(&request).map(|()| handler(request, peer));
            async move {
                Ok::<_, Infallible>(match outcome {
                    Ok(pending) => pending.await,
                    Err(refusal) => *refusal,
                })
            }
        });
        let builder = builder.clone();
        let tls = tls.clone();
        let mut stop = shutdown.clone();
        let alive = alive.clone();
        tokio::spawn(async move {
            let _alive = alive;
            let Some(tls) = tls else {
                serve_connection(&builder, stream, service, &mut stop, peer).await;
                return;
            };
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
                Ok(Ok(stream)) => {
                    serve_connection(&builder, stream, service, &mut stop, peer).await
                }
                Ok(Err(error)) => tracing::debug!(%error, %peer, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
    drop(listener);
    drop(alive);
    if tokio::time::timeout(DRAIN_TIMEOUT, all_done.recv())
        .await
        .is_err()
    {
        tracing::warn!("some connections did not finish within {DRAIN_TIMEOUT:?}; closing them");
    }
}

/// Serve one (plain or TLS) connection until it ends, or ask it to finish on shutdown.
async fn serve_connection<S, IO>(
    builder: &hyper::server::conn::http1::Builder,
    stream: IO,
    service: S,
    stop: &mut watch::Receiver<bool>,
    peer: SocketAddr,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = Body> + Send,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let connection = builder
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = stop_requested(stop) => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, %peer, "connection ended with an error");
    }
}

/// Resolves once `shutdown` is true (or its sender is gone). Unlike awaiting `wait_for` inside a
/// `select!`, it holds no borrow of the channel afterwards, so the future stays `Send`.
async fn stop_requested(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}
