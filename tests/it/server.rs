//! The file server, started in-process on 127.0.0.1:0 and spoken to over real sockets:
//! reqwest for ordinary requests, rustls or a bare TcpStream where we need to send paths a URL
//! library would normalise, or bytes that are not TLS at all.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::blocking::Client;
use reqwest::header;
use simplestreams_builder::server::{
    ServeOptions, ServerError, ServerHandle, TlsMode, serve_with_handle,
};

use crate::common::command::run_ok;

const VERSION_DIR: &str = "images/debian/12/amd64/default/20251123_12:13";
const INDEX_JSON: &str = r#"{"format":"index:1.0","index":{}}"#;
const SQUASHFS: &[u8] = b"0123456789abcdefghij";
const TARBALL: &[u8] = b"xz-compressed metadata, already compressed";

/// A server running in a background thread; stopped (and joined) on drop.
struct TestServer {
    addr: SocketAddr,
    handle: ServerHandle,
    thread: Option<JoinHandle<Result<(), ServerError>>>,
}

impl TestServer {
    fn start(root: &Path, tls: TlsMode) -> Self {
        Self::try_start(root, tls).expect("server failed to start")
    }

    fn try_start(root: &Path, tls: TlsMode) -> Result<Self, ServerError> {
        let handle = ServerHandle::new();
        let (tx, rx) = std::sync::mpsc::channel();
        let opts = ServeOptions {
            root: root.to_owned(),
            listen: "127.0.0.1:0".parse().unwrap(),
            tls,
            index: None,
            writes: Default::default(),
            read_users: None,
        };
        let thread_handle = handle.clone();
        let thread = std::thread::spawn(move || {
            serve_with_handle(opts, thread_handle, |addr| tx.send(addr).unwrap())
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => Ok(Self {
                addr,
                handle,
                thread: Some(thread),
            }),
            // The sender is dropped without sending when serve returns early with an error.
            Err(_) => Err(thread
                .join()
                .unwrap()
                .expect_err("server neither ready nor failed")),
        }
    }

    fn stop(mut self) {
        self.handle.shutdown();
        let result = self.thread.take().unwrap().join().unwrap();
        result.expect("server ended with an error");
    }

    fn https(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.port())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.handle.shutdown();
            let _ = thread.join();
        }
    }
}

/// A small tree with the awkward names a real catalog has, plus things that must stay private.
fn fixture() -> (tempfile::TempDir, tempfile::TempDir) {
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let r = root.path();
    std::fs::create_dir_all(r.join("streams/v1")).unwrap();
    std::fs::create_dir_all(r.join(VERSION_DIR)).unwrap();
    std::fs::create_dir_all(r.join(".cache")).unwrap();
    std::fs::write(r.join("streams/v1/index.json"), INDEX_JSON).unwrap();
    std::fs::write(
        r.join("streams/v1/index.json.gz"),
        gzip(INDEX_JSON.as_bytes()),
    )
    .unwrap();
    std::fs::write(r.join(VERSION_DIR).join("rootfs.squashfs"), SQUASHFS).unwrap();
    std::fs::write(r.join(VERSION_DIR).join("incus.tar.xz"), TARBALL).unwrap();
    // A gzip sibling next to an image must never be served as Content-Encoding.
    std::fs::write(r.join(VERSION_DIR).join("incus.tar.xz.gz"), gzip(TARBALL)).unwrap();
    std::fs::write(r.join(".cache/hashes"), "private").unwrap();
    std::fs::write(outside.path().join("secret"), "outside the root").unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret"), r.join("images/escape")).unwrap();
    std::os::unix::fs::symlink("../.cache/hashes", r.join("images/to-hidden")).unwrap();
    std::os::unix::fs::symlink(
        "debian/12/amd64/default/20251123_12:13/rootfs.squashfs",
        r.join("images/inside"),
    )
    .unwrap();
    (root, outside)
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn cert_pem(root: &Path) -> Vec<u8> {
    std::fs::read(root.join(".ssb/tls/cert.pem")).unwrap()
}

/// A client that trusts only `cert` and sends every request for `localhost` and `extra_host`
/// to the server, like a pinned LXD/Incus remote.
fn client_for(server: &TestServer, cert: &[u8], extra_host: Option<&str>) -> Client {
    let mut builder = Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert).unwrap())
        .resolve("localhost", server.addr)
        .timeout(Duration::from_secs(10));
    if let Some(host) = extra_host {
        builder = builder.resolve(host, server.addr);
    }
    builder.build().unwrap()
}

/// Sends `request` as is (no URL normalisation) and returns the whole response as text.
/// With `cert`, over TLS 1.3 trusting that certificate; without, over plain TCP.
fn raw_request(addr: SocketAddr, cert: Option<&[u8]>, request: &str) -> String {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut response = Vec::new();
    match cert {
        None => {
            tcp.write_all(request.as_bytes()).unwrap();
            tcp.read_to_end(&mut response).unwrap();
        }
        Some(cert) => {
            use rustls::pki_types::pem::PemObject as _;
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(rustls::pki_types::CertificateDer::from_pem_slice(cert).unwrap())
                .unwrap();
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
            let conn =
                rustls::ClientConnection::new(Arc::new(config), "localhost".try_into().unwrap())
                    .unwrap();
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            tls.write_all(request.as_bytes()).unwrap();
            // A peer closing without close_notify is fine here: we only read one response.
            if let Err(e) = tls.read_to_end(&mut response) {
                assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}");
            }
        }
    }
    String::from_utf8_lossy(&response).into_owned()
}

fn raw_get_status(addr: SocketAddr, cert: Option<&[u8]>, path: &str) -> u16 {
    let response = raw_request(
        addr,
        cert,
        &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"),
    );
    let status_line = response.lines().next().unwrap_or_default();
    status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in response to {path}: {response:?}"))
}

/// Paths that must never be served, whichever transport carries them.
fn assert_private_paths_hidden(addr: SocketAddr, cert: Option<&[u8]>) {
    for path in [
        "/.ssb/tls/key.pem",
        "/.ssb/tls/cert.pem",
        "/%2essb/tls/key.pem",
        "/.cache/hashes",
        "/images/../.ssb/tls/key.pem",
        "/images/%2e%2e/.ssb/tls/key.pem",
        "/../../../../etc/passwd",
        "/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/images%2f..%2f.ssb%2ftls%2fkey.pem",
        "/images/escape",
        "/images/to-hidden",
        "/images/",
        "/streams/v1",
        "/images/a%00b",
        "/images\\..\\.ssb\\tls\\key.pem",
    ] {
        assert_eq!(raw_get_status(addr, cert, path), 404, "{path}");
    }
    // The guard must not be so strict that it refuses what a catalog really holds.
    for path in [
        format!("/{VERSION_DIR}/rootfs.squashfs"),
        format!("/{}/rootfs.squashfs", VERSION_DIR.replace(':', "%3A")),
        "/images/inside".to_owned(),
    ] {
        assert_eq!(raw_get_status(addr, cert, &path), 200, "{path}");
    }
}

#[test]
fn serves_a_tree_over_tls() {
    let (root, _outside) = fixture();
    let server = TestServer::start(root.path(), TlsMode::SelfSigned { extra_sans: vec![] });
    let cert = cert_pem(root.path());
    let client = client_for(&server, &cert, None);
    let image = server.https(&format!("/{VERSION_DIR}/rootfs.squashfs"));

    // Plain GET, content type, and no catalog caching rules on images.
    let response = client.get(&image).send().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "application/octet-stream"
    );
    assert!(response.headers().get(header::CACHE_CONTROL).is_none());
    let etag = response.headers()[header::ETAG].clone();
    assert_eq!(response.bytes().unwrap().as_ref(), SQUASHFS);

    // HEAD: headers with the length, no body.
    let response = client.head(&image).send().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::CONTENT_LENGTH],
        SQUASHFS.len().to_string()
    );
    assert!(response.bytes().unwrap().is_empty());

    // Range, as sstream-mirror uses to resume.
    let response = client
        .get(&image)
        .header(header::RANGE, "bytes=10-14")
        .send()
        .unwrap();
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        response.headers()[header::CONTENT_RANGE],
        format!("bytes 10-14/{}", SQUASHFS.len())
    );
    assert_eq!(response.bytes().unwrap().as_ref(), &SQUASHFS[10..15]);
    let response = client
        .get(&image)
        .header(header::RANGE, "bytes=100-")
        .send()
        .unwrap();
    assert_eq!(response.status(), StatusCode::RANGE_NOT_SATISFIABLE);

    // Conditional GET.
    let response = client
        .get(&image)
        .header(header::IF_NONE_MATCH, etag)
        .send()
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_MODIFIED);

    // Only GET and HEAD.
    for method in [
        reqwest::Method::POST,
        reqwest::Method::PUT,
        reqwest::Method::DELETE,
    ] {
        let response = client.request(method.clone(), &image).send().unwrap();
        assert_eq!(
            response.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "{method}"
        );
        assert_eq!(response.headers()[header::ALLOW], "GET, HEAD");
    }

    // The root says what this is, without listing anything.
    let body = client
        .get(server.https("/"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(body.contains("/streams/v1/index.json"), "{body}");
    assert!(!body.contains("images"), "{body}");
    let response = client.head(server.https("/")).send().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.bytes().unwrap().is_empty());

    // Directories and missing files.
    for path in ["/images", "/streams/v1/images.json", "/nope"] {
        let response = client.get(server.https(path)).send().unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
    }

    assert_private_paths_hidden(server.addr, Some(&cert));
    server.stop();
}

/// How long a curl of a test file may take.
const CURL_TIMEOUT: Duration = Duration::from_secs(30);

/// `len` bytes in which no run repeats at a power-of-two distance: a byte sent twice, dropped
/// or out of place shows.
fn scrambled(len: u32) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

/// An image file over HTTP/2 with TLS (what curl, browsers and the daemons pick) goes out in
/// DATA frames cut to TLS records: every byte must still arrive, in order, whole or in a range.
#[test]
fn serves_image_files_over_http2_byte_exact() {
    let (root, _outside) = fixture();
    let big = scrambled(300_001);
    let path = root.path().join(VERSION_DIR).join("big.squashfs");
    std::fs::write(&path, &big).unwrap();
    let server = TestServer::start(root.path(), TlsMode::SelfSigned { extra_sans: vec![] });
    let cert = root.path().join(".ssb/tls/cert.pem");
    let out_dir = tempfile::tempdir().unwrap();
    let url = server.https(&format!("/{VERSION_DIR}/big.squashfs"));
    let resolve = format!("localhost:{}:127.0.0.1", server.addr.port());
    let fetch = |name: &str, extra: &[&str]| -> (String, Vec<u8>) {
        let out_file = out_dir.path().join(name);
        let mut curl = assert_cmd::Command::new("curl");
        curl.args(["-sS", "--http2", "--noproxy", "*", "--resolve", &resolve])
            .arg("--cacert")
            .arg(&cert)
            .arg("-o")
            .arg(&out_file)
            .args(["-w", "%{http_version} %{http_code}"])
            .args(extra)
            .arg(&url);
        let said = String::from_utf8(run_ok(&mut curl, CURL_TIMEOUT).stdout).unwrap();
        (said, std::fs::read(&out_file).unwrap())
    };

    let (said, body) = fetch("whole", &[]);
    assert_eq!(said, "2 200", "HTTP version and status");
    assert!(
        body == big,
        "{} bytes back of {}, or not in order",
        body.len(),
        big.len()
    );

    // A range that starts and ends inside frames.
    let (said, body) = fetch("range", &["-r", "16370-70000"]);
    assert_eq!(said, "2 206");
    assert!(body == big[16_370..=70_000], "{} bytes back", body.len());
    server.stop();
}

/// An image file over plain HTTP/1.1 goes out with sendfile, its body's chunks stand-ins
/// that the connection swaps for the file: every byte must arrive, in order, answer after
/// answer on one connection, whole or in a range.
#[test]
fn serves_image_files_over_plain_http1_byte_exact() {
    let (root, _outside) = fixture();
    let big = scrambled(1_000_003);
    std::fs::write(root.path().join(VERSION_DIR).join("big.squashfs"), &big).unwrap();
    let server = TestServer::start(root.path(), TlsMode::Http);
    let out_dir = tempfile::tempdir().unwrap();
    let url = |name: &str| format!("http://{}/{VERSION_DIR}/{name}", server.addr);
    let curl = |args: &[&str]| -> String {
        let mut curl = assert_cmd::Command::new("curl");
        curl.args(["-sS", "--http1.1", "--noproxy", "*"])
            .args(args)
            .current_dir(out_dir.path());
        String::from_utf8(run_ok(&mut curl, CURL_TIMEOUT).stdout).unwrap()
    };
    let read = |name: &str| std::fs::read(out_dir.path().join(name)).unwrap();

    // Three answers on one connection: the big file, the small tarball, the big file again.
    let said = curl(&[
        "-w",
        "%{http_code} %{num_connects};",
        "-o",
        "a",
        &url("big.squashfs"),
        "-o",
        "b",
        &url("incus.tar.xz"),
        "-o",
        "c",
        &url("big.squashfs"),
    ]);
    assert_eq!(said, "200 1;200 0;200 0;", "one connection");
    assert!(
        read("a") == big && read("c") == big,
        "the big file, byte for byte"
    );
    assert_eq!(read("b"), TARBALL);

    // A range that starts and ends inside the sendfile spans.
    let said = curl(&[
        "-w",
        "%{http_code}",
        "-r",
        "262000-600000",
        "-o",
        "r",
        &url("big.squashfs"),
    ]);
    assert_eq!(said, "206");
    assert!(read("r") == big[262_000..=600_000]);

    let said = curl(&[
        "-I",
        "-w",
        "%{http_code}",
        "-o",
        "/dev/null",
        &url("big.squashfs"),
    ]);
    assert_eq!(said, "200");

    // HTTP/1.0: the connection closes after the answer.
    let said = curl(&[
        "--http1.0",
        "-w",
        "%{http_code}",
        "-o",
        "h",
        &url("big.squashfs"),
    ]);
    assert_eq!(said, "200");
    assert!(read("h") == big);
    server.stop();
}

#[test]
fn catalog_json_is_gzipped_on_request_and_never_cached_blindly() {
    let (root, _outside) = fixture();
    let server = TestServer::start(root.path(), TlsMode::SelfSigned { extra_sans: vec![] });
    let client = client_for(&server, &cert_pem(root.path()), None);
    let index = server.https("/streams/v1/index.json");

    let response = client
        .get(&index)
        .header(header::ACCEPT_ENCODING, "gzip")
        .send()
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[header::CONTENT_ENCODING], "gzip");
    assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
    assert_eq!(response.headers()[header::CACHE_CONTROL], "no-cache");
    assert_eq!(gunzip(&response.bytes().unwrap()), INDEX_JSON.as_bytes());

    let response = client.get(&index).send().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().get(header::CONTENT_ENCODING).is_none());
    assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
    assert_eq!(response.headers()[header::CACHE_CONTROL], "no-cache");
    assert_eq!(response.text().unwrap(), INDEX_JSON);

    // Images are already compressed: a `.gz` sibling is not a reason to add an encoding.
    let response = client
        .get(server.https(&format!("/{VERSION_DIR}/incus.tar.xz")))
        .header(header::ACCEPT_ENCODING, "gzip")
        .send()
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().get(header::CONTENT_ENCODING).is_none());
    assert_eq!(response.headers()[header::CONTENT_TYPE], "application/x-xz");
    assert_eq!(response.bytes().unwrap().as_ref(), TARBALL);
    server.stop();
}

#[test]
fn refuses_tls_1_2() {
    let (root, _outside) = fixture();
    let server = TestServer::start(root.path(), TlsMode::SelfSigned { extra_sans: vec![] });
    let client = Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&cert_pem(root.path())).unwrap())
        .resolve("localhost", server.addr)
        .max_tls_version(reqwest::tls::Version::TLS_1_2)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let result = client.get(server.https("/streams/v1/index.json")).send();
    assert!(result.is_err(), "a TLS 1.2 client got {result:?}");
    server.stop();
}

/// LXD and Incus first try `http://` on the HTTPS port for every image: that must fail at
/// once rather than hang until a timeout.
#[test]
fn plain_http_on_the_tls_port_fails_fast() {
    let (root, _outside) = fixture();
    let server = TestServer::start(root.path(), TlsMode::SelfSigned { extra_sans: vec![] });
    let started = Instant::now();
    let mut tcp = TcpStream::connect(server.addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let mut response = Vec::new();
    let result = tcp.read_to_end(&mut response);
    let elapsed = started.elapsed();
    if let Err(e) = &result {
        assert!(
            !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "connection left open: {e}"
        );
    }
    assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
    assert!(
        !response.starts_with(b"HTTP/"),
        "plain HTTP got an HTTP answer: {:?}",
        String::from_utf8_lossy(&response)
    );
    server.stop();
}

/// A client that connects and never starts the handshake must not stall everyone else.
#[test]
fn silent_client_does_not_block_others() {
    let (root, _outside) = fixture();
    let server = TestServer::start(root.path(), TlsMode::SelfSigned { extra_sans: vec![] });
    let _silent: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(server.addr).unwrap())
        .collect();
    let client = client_for(&server, &cert_pem(root.path()), None);
    let started = Instant::now();
    let response = client
        .get(server.https("/streams/v1/index.json"))
        .send()
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(started.elapsed() < Duration::from_secs(2));
    server.stop();
}

#[test]
fn self_signed_cert_is_reused_and_regenerated_for_new_names() {
    let (root, _outside) = fixture();
    let tls_dir = root.path().join(".ssb/tls");
    let no_extra = || TlsMode::SelfSigned { extra_sans: vec![] };

    let server = TestServer::start(root.path(), no_extra());
    let first_cert = cert_pem(root.path());
    let first_key = std::fs::read(tls_dir.join("key.pem")).unwrap();
    let mode = |name: &str| {
        std::fs::metadata(tls_dir.join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("key.pem"), 0o600);
    assert_eq!(mode("cert.pem"), 0o644);
    // The certificate does not cover a name it was not made for: verification is real.
    let client = client_for(&server, &first_cert, Some("images.test"));
    let url = format!("https://images.test:{}/", server.addr.port());
    assert!(client.get(&url).send().is_err());
    server.stop();

    // Same options: same certificate, so pinned clients keep working.
    let server = TestServer::start(root.path(), no_extra());
    assert_eq!(cert_pem(root.path()), first_cert);
    assert_eq!(std::fs::read(tls_dir.join("key.pem")).unwrap(), first_key);
    let response = client_for(&server, &first_cert, None)
        .get(server.https("/"))
        .send()
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    server.stop();

    // A new name: a new certificate that covers it, and still `localhost`.
    let server = TestServer::start(
        root.path(),
        TlsMode::SelfSigned {
            extra_sans: vec!["images.test".into(), "10.11.12.13".into()],
        },
    );
    let second_cert = cert_pem(root.path());
    assert_ne!(second_cert, first_cert);
    let client = client_for(&server, &second_cert, Some("images.test"));
    let url = format!("https://images.test:{}/", server.addr.port());
    assert_eq!(client.get(&url).send().unwrap().status(), StatusCode::OK);
    assert_eq!(
        client.get(server.https("/")).send().unwrap().status(),
        StatusCode::OK
    );
    server.stop();

    // And that one is reused in turn, also when fewer names are asked for.
    let server = TestServer::start(root.path(), no_extra());
    assert_eq!(cert_pem(root.path()), second_cert);
    server.stop();
}

#[test]
fn damaged_self_signed_cert_is_replaced() {
    let (root, _outside) = fixture();
    TestServer::start(root.path(), TlsMode::SelfSigned { extra_sans: vec![] }).stop();
    let tls_dir = root.path().join(".ssb/tls");
    std::fs::write(tls_dir.join("cert.pem"), "not a certificate").unwrap();
    let server = TestServer::start(root.path(), TlsMode::SelfSigned { extra_sans: vec![] });
    let cert = cert_pem(root.path());
    let response = client_for(&server, &cert, None)
        .get(server.https("/"))
        .send()
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    server.stop();
}

#[test]
fn serves_with_user_certificate_files() {
    let (root, _outside) = fixture();
    let certs = tempfile::tempdir().unwrap();
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert_path = certs.path().join("server.crt");
    let key_path = certs.path().join("server.key");
    std::fs::write(&cert_path, generated.cert.pem()).unwrap();
    std::fs::write(&key_path, generated.signing_key.serialize_pem()).unwrap();

    let server = TestServer::start(
        root.path(),
        TlsMode::Files {
            cert: cert_path.clone(),
            key: key_path.clone(),
        },
    );
    let client = client_for(&server, generated.cert.pem().as_bytes(), None);
    let response = client
        .get(server.https("/streams/v1/index.json"))
        .send()
        .unwrap();
    assert_eq!(response.text().unwrap(), INDEX_JSON);
    // Files mode leaves the tree alone.
    assert!(!root.path().join(".ssb/tls").exists());
    server.stop();

    // A key that does not belong to the certificate is refused up front, naming the files.
    let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let wrong_key = certs.path().join("other.key");
    std::fs::write(&wrong_key, other.signing_key.serialize_pem()).unwrap();
    let error = TestServer::try_start(
        root.path(),
        TlsMode::Files {
            cert: cert_path.clone(),
            key: wrong_key,
        },
    )
    .err()
    .expect("mismatched key accepted");
    assert!(matches!(error, ServerError::TlsConfig { .. }), "{error:?}");
    assert!(error.to_string().contains("server.crt"), "{error}");

    let error = TestServer::try_start(
        root.path(),
        TlsMode::Files {
            cert: certs.path().join("missing.crt"),
            key: key_path,
        },
    )
    .err()
    .expect("missing certificate accepted");
    assert!(
        matches!(&error, ServerError::ReadPem { path, .. } if path.ends_with("missing.crt")),
        "{error:?}"
    );
}

#[test]
fn serves_plain_http_behind_a_proxy() {
    let (root, _outside) = fixture();
    let server = TestServer::start(root.path(), TlsMode::Http);
    let client = Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let base = format!("http://{}", server.addr);
    let response = client
        .get(format!("{base}/streams/v1/index.json"))
        .send()
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().unwrap(), INDEX_JSON);
    let response = client
        .post(format!("{base}/streams/v1/index.json"))
        .send()
        .unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    // No certificate is made in HTTP mode.
    assert!(!root.path().join(".ssb/tls").exists());
    assert_private_paths_hidden(server.addr, None);
    server.stop();
}

#[test]
fn reports_the_address_it_cannot_bind() {
    let (root, _outside) = fixture();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let handle = ServerHandle::new();
    let opts = ServeOptions {
        root: root.path().to_owned(),
        listen: addr,
        tls: TlsMode::Http,
        index: None,
        writes: Default::default(),
        read_users: None,
    };
    let error = serve_with_handle(opts, handle, |_| panic!("ready despite bind failure"))
        .expect_err("bound a taken port");
    assert!(
        matches!(error, ServerError::Bind { addr: a, .. } if a == addr),
        "{error:?}"
    );
    assert!(error.to_string().contains(&addr.to_string()), "{error}");
}

#[test]
fn refuses_a_missing_root() {
    let error = TestServer::try_start(Path::new("/nonexistent/tree"), TlsMode::Http)
        .err()
        .expect("served a missing root");
    assert!(
        matches!(&error, ServerError::Root { path, .. } if path == &PathBuf::from("/nonexistent/tree")),
        "{error:?}"
    );
}

/// The catalog comes from memory: a strong ETag per representation, 304 on `If-None-Match`,
/// HEAD and Range, and a catalog rewritten by another process (as `publish` does: a new file
/// renamed into place) is served as soon as it is there, without a restart.
#[test]
fn the_catalog_is_served_from_memory_and_follows_a_publish() {
    let (root, _outside) = fixture();
    let server = TestServer::start(root.path(), TlsMode::SelfSigned { extra_sans: vec![] });
    let client = client_for(&server, &cert_pem(root.path()), None);
    let index = server.https("/streams/v1/index.json");

    let first = client.get(&index).send().unwrap();
    let etag = first.headers()[header::ETAG].clone();
    assert!(etag.to_str().unwrap().starts_with('"'), "a strong ETag");
    let gz = client
        .get(&index)
        .header(header::ACCEPT_ENCODING, "gzip")
        .send()
        .unwrap();
    assert_ne!(
        gz.headers()[header::ETAG],
        etag,
        "one ETag per representation"
    );
    let again = client
        .get(&index)
        .header(header::IF_NONE_MATCH, etag.clone())
        .send()
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(again.headers()[header::ETAG], etag);
    let part = client
        .get(&index)
        .header(header::RANGE, "bytes=0-8")
        .send()
        .unwrap();
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(part.text().unwrap(), &INDEX_JSON[..9]);
    let head = client.head(&index).send().unwrap();
    assert_eq!(
        head.headers()[header::CONTENT_LENGTH],
        INDEX_JSON.len().to_string().as_str()
    );

    // Another process publishes: a new index renamed into place.
    let new_index = r#"{"format":"index:1.0","index":{},"updated":"later"}"#;
    let tmp = root.path().join("streams/v1/.tmp-index");
    std::fs::write(&tmp, new_index).unwrap();
    std::fs::rename(&tmp, root.path().join("streams/v1/index.json")).unwrap();
    // A guard against a hang, not a speed check: a file system event brings it at once, the
    // poll within a second.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let body = client.get(&index).send().unwrap().text().unwrap();
        if body == new_index {
            break;
        }
        assert!(Instant::now() < deadline, "still serving {body}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let stale = client
        .get(&index)
        .header(header::IF_NONE_MATCH, etag)
        .send()
        .unwrap();
    assert_eq!(
        stale.status(),
        StatusCode::OK,
        "the old ETag no longer matches"
    );
    server.stop();
}
