//! A served tree whose server owns its catalog (`serve --index`) and takes writes with a bearer
//! token: started, asked with curl, and polled until its catalog says what a test waits for.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use super::server::TestServer;
use super::tls::TestCa;

/// The write token of every [`Site`].
pub const TOKEN: &str = "test-token-0123456789abcdef";
/// How long a test waits for a re-index before calling it lost. A guard against hangs, not a
/// speed check: the 1 s target is measured by bench/upload.sh. Waits end as soon as the catalog
/// is right, so a generous deadline only costs time when something is broken; 5 s was once too
/// short with another test binary compressing beside it on 2 cores.
pub const INDEX_DEADLINE: Duration = Duration::from_secs(30);

/// A served tree with the server owning its catalog. The server is declared first so that it
/// stops before its tree is deleted (fields drop in order).
pub struct Site {
    pub server: TestServer,
    pub dir: TempDir,
    pub www: PathBuf,
    pub ca: TestCa,
}

impl Site {
    pub fn start(extra: &[&str], env: &[(&str, &str)]) -> Site {
        let dir = TempDir::with_prefix("ssb-upload-").unwrap();
        let www = dir.path().join("www");
        std::fs::create_dir_all(&www).unwrap();
        Self::start_in(dir, www, extra, env)
    }

    pub fn start_in(dir: TempDir, www: PathBuf, extra: &[&str], env: &[(&str, &str)]) -> Site {
        let ca = TestCa::generate();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
        let mut cmd = super::ssb_command(dir.path());
        cmd.arg("serve")
            .arg("-t")
            .arg(&www)
            .args(["--listen", "127.0.0.1:0", "--index"])
            .args(extra.iter().filter(|a| **a != "--no-token"));
        if !extra.contains(&"--http") {
            cmd.arg("--tls-cert")
                .arg(ca.cert_pem())
                .arg("--tls-key")
                .arg(ca.key_pem());
        }
        if !extra.contains(&"--allow-anonymous-writes") && !extra.contains(&"--no-token") {
            cmd.arg("--write-token-file").arg(&token_file);
        }
        cmd.envs(env.iter().copied());
        let server = TestServer::spawn("ssb-serve", cmd);
        let site = Site {
            dir,
            www,
            ca,
            server,
        };
        site.wait_for(|_| true, "the start-up scan to publish a catalog");
        site
    }

    pub fn url(&self) -> &str {
        self.server.url()
    }

    /// `curl` with our CA; returns (status, body).
    pub fn curl(&self, args: &[&str]) -> (u16, String) {
        let out = Command::new("curl")
            .args(["-sS", "--noproxy", "*", "--cacert"])
            .arg(self.ca.ca_pem())
            .args(["-w", "\n%{http_code}"])
            .args(args)
            .output()
            .expect("run curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (
            code.trim().parse().unwrap_or_else(|_| {
                panic!(
                    "curl {args:?}: no status: {text} {}",
                    String::from_utf8_lossy(&out.stderr)
                )
            }),
            body.to_owned(),
        )
    }

    pub fn auth() -> String {
        format!("Authorization: Bearer {TOKEN}")
    }

    /// `DELETE /<path>` with the write token; returns (status, body).
    pub fn delete(&self, path: &str) -> (u16, String) {
        self.curl(&[
            "-X",
            "DELETE",
            "-H",
            &Self::auth(),
            &format!("{}/{path}", self.url()),
        ])
    }

    /// The seed's workflow: `curl -F "file=@FILE;filename=PATH" $remote/images/`.
    pub fn post(&self, file: &Path, under_images: &str) -> (u16, Value) {
        let (code, body) = self.curl(&[
            "-H",
            &Self::auth(),
            "-F",
            &format!("file=@{};filename={under_images}", file.display()),
            &format!("{}/images/", self.url()),
        ]);
        (code, serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    pub fn put(&self, file: &Path, path: &str) -> (u16, Value) {
        let (code, body) = self.curl(&[
            "-H",
            &Self::auth(),
            "-T",
            &file.display().to_string(),
            &format!("{}/{path}", self.url()),
        ]);
        (code, serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    pub fn catalog(&self) -> Option<Value> {
        let bytes = std::fs::read(self.www.join("streams/v1/images.json")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Polls images.json until `ok` holds; returns it and how long that took.
    pub fn wait_for(&self, ok: impl Fn(&Value) -> bool, what: &str) -> (Value, Duration) {
        self.wait_within(INDEX_DEADLINE, ok, what)
    }

    pub fn wait_within(
        &self,
        deadline: Duration,
        ok: impl Fn(&Value) -> bool,
        what: &str,
    ) -> (Value, Duration) {
        let start = Instant::now();
        loop {
            if let Some(c) = self.catalog()
                && ok(&c)
            {
                return (c, start.elapsed());
            }
            assert!(
                start.elapsed() < deadline,
                "timed out waiting for {what}; catalog: {:?}",
                self.catalog()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
