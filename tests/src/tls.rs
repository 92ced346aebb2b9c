//! TLS for the end-to-end tests: a certificate authority made in the test with the `openssl`
//! command, a central certificate it signs for `localhost` and `127.0.0.1`, and an HTTPS request
//! that trusts only that CA.
//!
//! What it does not do: ship any key or certificate (everything is made fresh in the test's
//! temporary directory), or skip by itself: callers check [`openssl_available`] and print why
//! they skip.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use bytes::Bytes;

use crate::Answer;

/// Whether the `openssl` command can be run (the CA is made with it).
pub fn openssl_available() -> bool {
    Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Make `ca.pem` (the CA to trust), `central.pem` and `central.key` (the central's certificate
/// for `localhost` and `127.0.0.1`, signed by the CA) in `dir`.
fn make_test_ca(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=xmagent test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "central.key",
            "-out",
            "central.csr",
        ],
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         extendedKeyUsage=serverAuth\n",
    )
    .expect("write ext.cnf");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "central.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "central.pem",
        ],
    );
}

/// Start a central with its data in `dir` that serves TLS with a certificate of a CA made here
/// (`dir/ca.pem` is the CA to trust).
pub fn start_tls_central(dir: &Path) -> crate::Node {
    make_test_ca(dir);
    let config = crate::central_config(dir, 0);
    serve_tls(&config);
    crate::Node::start(
        &crate::binary("xmcentral"),
        &["run", "--config", config.to_str().expect("a UTF-8 path")],
    )
}

/// Have the central configured in `config` (beside the files of [`make_test_ca`]) serve TLS.
fn serve_tls(config: &Path) {
    let text = std::fs::read_to_string(config)
        .expect("read central config")
        .replacen(
            "[central]\n",
            "[central]\ntls_cert_file = \"central.pem\"\ntls_key_file = \"central.key\"\n",
            1,
        );
    std::fs::write(config, text).expect("write central config");
}

/// One HTTPS/1.1 request to `addr` as `localhost`, trusting only the CA in `ca_pem`.
pub async fn https(
    addr: SocketAddr,
    ca_pem: &Path,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> std::io::Result<Answer> {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca_pem)?;
    for certificate in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(certificate?).map_err(std::io::Error::other)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(std::io::Error::other)?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name =
        rustls::pki_types::ServerName::try_from("localhost").map_err(std::io::Error::other)?;
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?;
    crate::exchange(stream, addr, method, path, headers, body.into()).await
}
