//! A server process under test: spawned, waited for until it says where it listens, drained,
//! and killed on drop.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::tls::TestCa;

/// How long a server may take to bind and announce itself.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a line the server is expected to print may take to reach us.
const SAID_TIMEOUT: Duration = Duration::from_secs(20);

/// The readiness line: `listening on <url>`, on stderr.
const READY_MARKER: &str = "listening on ";

/// A running server; the process is killed when this is dropped.
pub struct TestServer {
    child: Child,
    url: String,
    /// Everything the server printed so far.
    log: Arc<Mutex<String>>,
}

impl TestServer {
    /// `simplestreams-builder serve -t <dir>` over HTTPS on an ephemeral loopback port, with the
    /// certificate of `ca`.
    pub fn serve(dir: &Path, ca: &TestCa) -> TestServer {
        TestServer::serve_from(dir, dir, ca, &[])
    }

    /// `simplestreams-builder serve -t <root> EXTRA…` run from `cwd` (which decides whether a
    /// tree.yml is picked up), over HTTPS with the certificate of `ca`.
    pub fn serve_from(cwd: &Path, root: &Path, ca: &TestCa, extra: &[&OsStr]) -> TestServer {
        let mut cmd = super::ssb_command(cwd);
        cmd.arg("serve")
            .arg("-t")
            .arg(root)
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .arg("--tls-cert")
            .arg(ca.cert_pem())
            .arg("--tls-key")
            .arg(ca.key_pem());
        TestServer::spawn("ssb-serve", cmd)
    }

    /// A static HTTPS file server in Python (TLS 1.3 only) over `dir`: a reference server, to
    /// check fixtures and client helpers without depending on ours.
    pub fn python_https(dir: &Path, ca: &TestCa) -> TestServer {
        const SCRIPT: &str = r#"
import functools, http.server, ssl, sys
root, cert, key = sys.argv[1:4]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.minimum_version = ssl.TLSVersion.TLSv1_3
ctx.load_cert_chain(cert, key)
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=root)
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
server.socket = ctx.wrap_socket(server.socket, server_side=True)
print(f"listening on https://127.0.0.1:{server.server_address[1]}", file=sys.stderr, flush=True)
server.serve_forever()
"#;
        let mut cmd = Command::new("python3");
        cmd.arg("-c")
            .arg(SCRIPT)
            .arg(dir)
            .arg(ca.cert_pem())
            .arg(ca.key_pem());
        TestServer::spawn("python-https", cmd)
    }

    /// Spawns `cmd` and waits until a stderr line announces `listening on <url>`. Both output
    /// streams are forwarded to the test output, prefixed with `label`, for the server's whole
    /// life. Panics with everything the server said if it exits or stays silent too long.
    pub fn spawn(label: &str, mut cmd: Command) -> TestServer {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {label} ({cmd:?}): {e}"));
        let log = Arc::new(Mutex::new(String::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        forward(
            label,
            child.stdout.take().expect("stdout is piped"),
            &log,
            None,
        );
        forward(
            label,
            child.stderr.take().expect("stderr is piped"),
            &log,
            Some(ready_tx),
        );

        let failure = match ready_rx.recv_timeout(READY_TIMEOUT) {
            Ok(url) => {
                return TestServer {
                    child,
                    url: url.trim_end_matches('/').to_owned(),
                    log,
                };
            }
            Err(RecvTimeoutError::Timeout) => {
                format!("did not say `{READY_MARKER}<url>` within {READY_TIMEOUT:?}")
            }
            // The stderr reader ended: the process closed stderr, almost always by exiting.
            Err(RecvTimeoutError::Disconnected) => "exited before it was ready".to_owned(),
        };
        let _ = child.kill();
        let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
        let said = log.lock().expect("log lock").clone();
        panic!("{label} {failure} ({status}); it said:\n{said}");
    }

    /// What the server has printed so far, both streams.
    pub fn said(&self) -> String {
        self.log.lock().expect("log lock").clone()
    }

    /// Waits long enough for the server's file watcher (which reports a path after 300 ms of
    /// quiet) and the re-index runs it or the writes asked for to have been logged.
    pub fn settle(&self) {
        std::thread::sleep(Duration::from_millis(1500));
    }

    /// The re-index runs logged after the first `from` bytes of the server's output (a
    /// `said().len()` taken earlier), read once [`TestServer::settle`] has passed: each line
    /// with what triggered it and what it hashed.
    pub fn settled_runs_since(&self, from: usize) -> Vec<String> {
        self.settle();
        self.said()[from..]
            .lines()
            .filter(|l| l.contains("re-indexed ("))
            .map(str::to_owned)
            .collect()
    }

    /// Waits until the server has printed every one of `needles` and returns all it said. Its
    /// output reaches us through a pipe and a reader thread (and the server logs off the
    /// request path), so a line about a request can land after the response: read the log
    /// through this, not `said`, whenever a line is expected. Panics with the log after
    /// [`SAID_TIMEOUT`].
    pub fn wait_said(&self, needles: &[&str]) -> String {
        let deadline = std::time::Instant::now() + SAID_TIMEOUT;
        loop {
            let said = self.said();
            if needles.iter().all(|n| said.contains(n)) {
                return said;
            }
            if std::time::Instant::now() >= deadline {
                let missing: Vec<&&str> = needles.iter().filter(|n| !said.contains(**n)).collect();
                panic!(
                    "the server did not say {missing:?} within {SAID_TIMEOUT:?}; it said:\n{said}"
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Base URL, e.g. `https://127.0.0.1:40123`, without a trailing slash.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The server's peak resident memory so far (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        peak_rss_kib(self.child.id())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The peak resident memory (`VmHWM`) of a running process, in KiB; 0 once it is gone.
pub fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Copies lines of `stream` to the test output and to `log`; with `ready`, sends the URL of the
/// first readiness line. The thread ends when the stream closes.
fn forward(
    label: &str,
    stream: impl Read + Send + 'static,
    log: &Arc<Mutex<String>>,
    mut ready: Option<mpsc::Sender<String>>,
) {
    let label = label.to_owned();
    let log = Arc::clone(log);
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            let line = strip_ansi(&line);
            eprintln!("[{label}] {line}");
            {
                let mut log = log.lock().expect("log lock");
                log.push_str(&line);
                log.push('\n');
            }
            if let Some(url) = ready_url(&line)
                && let Some(tx) = ready.take()
            {
                let _ = tx.send(url);
            }
        }
    });
}

/// The URL of a `listening on http(s)://…` line.
fn ready_url(line: &str) -> Option<String> {
    let (_, rest) = line.split_once(READY_MARKER)?;
    let url = rest.split_whitespace().next()?;
    (url.starts_with("https://") || url.starts_with("http://")).then(|| url.to_owned())
}

/// Removes ANSI escape sequences (`ESC [ … letter`), in case a logger colours its output.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_url_in_plain_and_coloured_readiness_lines() {
        let plain = "2025-01-01T00:00:00Z  INFO listening on https://127.0.0.1:4443 (tls)";
        assert_eq!(ready_url(plain).as_deref(), Some("https://127.0.0.1:4443"));
        let coloured =
            "\u{1b}[32m INFO\u{1b}[0m listening on \u{1b}[3mhttps://localhost:1/\u{1b}[0m";
        assert_eq!(
            ready_url(&strip_ansi(coloured)).as_deref(),
            Some("https://localhost:1/")
        );
        assert_eq!(ready_url("listening on 127.0.0.1:80"), None);
        assert_eq!(ready_url("starting"), None);
    }

    fn sh(script: &str) -> Command {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]);
        cmd
    }

    #[test]
    fn waits_for_the_readiness_line_and_kills_on_drop() {
        let server = TestServer::spawn(
            "sh",
            sh("echo starting >&2; echo 'listening on https://127.0.0.1:9/' >&2; exec sleep 60"),
        );
        assert_eq!(server.url(), "https://127.0.0.1:9");
    }

    #[test]
    #[should_panic(expected = "exited before it was ready (exit status: 3); it said:\nboom")]
    fn reports_what_a_server_said_when_it_dies_early() {
        TestServer::spawn("sh", sh("echo boom >&2; exit 3"));
    }
}
