//! A real S3 server for the tests: SeaweedFS (`weed mini`, installed by the CI installer under
//! /opt/seaweedfs), started on free loopback ports in a temp folder, with the bucket `images`;
//! killed on drop. Skips loudly without `weed`, fails then under SSB_REQUIRE_REAL_CLIENTS=1.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use simplestreams_builder::bucket::{Bucket, BucketUrl, Condition, ObjectKind, S3Settings};
use tempfile::TempDir;

/// Where the CI installer puts SeaweedFS.
const WEED: &str = "/opt/seaweedfs/bin/weed";

pub const ACCESS_KEY: &str = "ssb-test-key";
pub const SECRET_KEY: &str = "ssb-test-secret";

/// The bucket every instance starts with.
pub const BUCKET: &str = "images";

/// Runs a future of the library's bucket code to its end.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(f)
}

pub struct Seaweed {
    child: Option<Child>,
    dir: TempDir,
    ports: Vec<u16>,
    /// Started without credentials: every request is allowed, signed or not (a public-read
    /// bucket).
    public: bool,
}

fn free_ports(n: usize) -> Vec<u16> {
    // Held together so that no two are the same; released just before weed binds them.
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free port"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().expect("bound").port())
        .collect()
}

impl Seaweed {
    /// Starts an instance, or says why not and returns `None` (a failure when real clients are
    /// required).
    pub fn start(test: &str) -> Option<Seaweed> {
        Self::start_with(test, false)
    }

    /// An instance that takes anonymous requests, as a public-read bucket does.
    pub fn start_public(test: &str) -> Option<Seaweed> {
        Self::start_with(test, true)
    }

    fn start_with(test: &str, public: bool) -> Option<Seaweed> {
        if !Path::new(WEED).is_file() {
            if std::env::var("SSB_REQUIRE_REAL_CLIENTS").as_deref() == Ok("1") {
                panic!("SSB_REQUIRE_REAL_CLIENTS=1 but {WEED} is missing ({test})");
            }
            eprintln!(
                "SKIPPED {test}: {WEED} (SeaweedFS) is missing; run ../shared/ci/install-real-clients.sh, or set SSB_REQUIRE_REAL_CLIENTS=1 to make this a failure"
            );
            return None;
        }
        let mut s = Seaweed {
            child: None,
            dir: TempDir::with_prefix("ssb-seaweed-").expect("temp dir"),
            ports: free_ports(10),
            public,
        };
        // The ports are free when chosen, but another test may take one before weed binds it
        // (a CI run once lost the volume server's gRPC port so): then new ones.
        s.launch_retrying(|s| s.ports = free_ports(10));
        Some(s)
    }

    /// Launches weed, and when it stops at once because a port is taken, calls `before_retry`
    /// and tries again (three tries in all); panics with weed's log otherwise.
    fn launch_retrying(&mut self, before_retry: impl Fn(&mut Self)) {
        const TRIES: u32 = 3;
        for attempt in 1..=TRIES {
            match self.launch() {
                Ok(()) => return,
                Err(said) if attempt < TRIES && said.contains("address already in use") => {
                    eprintln!("weed found a port taken (try {attempt} of {TRIES}), again");
                    before_retry(self);
                }
                Err(said) => panic!("weed exited before it was ready:\n{said}"),
            }
        }
    }

    /// Starts weed and waits until it is ready; `Err` with what it printed this time if it
    /// exits first.
    fn launch(&mut self) -> Result<(), String> {
        let p = &self.ports;
        let data = self.dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("weed.log"))
            .unwrap();
        let said_before = self.log().len();
        let child = Command::new(WEED)
            .arg("mini")
            .arg(format!("-dir={}", data.display()))
            .args([
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-master.telemetry=false",
                "-webdav=false",
                "-admin.ui=false",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
            ])
            .arg(format!("-bucket={BUCKET}"))
            .arg(format!("-master.port={}", p[0]))
            .arg(format!("-master.port.grpc={}", p[1]))
            .arg(format!("-volume.port={}", p[2]))
            .arg(format!("-volume.port.grpc={}", p[3]))
            .arg(format!("-filer.port={}", p[4]))
            .arg(format!("-filer.port.grpc={}", p[5]))
            .arg(format!("-s3.port={}", p[6]))
            .arg(format!("-s3.port.grpc={}", p[7]))
            .arg(format!("-admin.port={}", p[8]))
            .arg(format!("-admin.port.grpc={}", p[9]))
            // A test runner's own AWS_* never reach weed: the keys are these, or none.
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .envs(
                [
                    ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
                    ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
                ]
                .into_iter()
                .filter(|_| !self.public),
            )
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start weed");
        self.child = Some(child);
        self.wait_ready().map_err(|()| {
            self.child = None;
            self.log().get(said_before..).unwrap_or_default().to_owned()
        })
    }

    /// Ready once an object can be written and read back: after a restart weed lists keys
    /// before its volume server is back, and a read of a file then fails with a 500. `Err`
    /// when weed exits first.
    fn wait_ready(&mut self) -> Result<(), ()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let bucket = self.bucket("ready-probe");
        let probe = bytes::Bytes::from_static(b"ready");
        loop {
            let round_trip = block_on(async {
                bucket
                    .put(
                        "probe",
                        probe.clone(),
                        ObjectKind::State,
                        Condition::Overwrite,
                    )
                    .await?;
                bucket.get("probe").await
            });
            if matches!(round_trip, Ok(Some((ref got, _))) if *got == probe) {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                eprintln!("weed exited ({status}) before it was ready");
                return Err(());
            }
            assert!(
                Instant::now() < deadline,
                "weed was not ready within 60 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// What weed printed.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("weed.log")).unwrap_or_default()
    }

    /// The S3 endpoint, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports[6])
    }

    /// Where weed keeps its data (to watch an upload land).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `s3://images/PREFIX`.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{BUCKET}/{prefix}")
    }

    /// The credentials and endpoint, as the binary takes them.
    pub fn vars(&self) -> [(&'static str, String); 3] {
        [
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_owned()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_owned()),
            ("AWS_ENDPOINT_URL", self.endpoint()),
        ]
    }

    /// A client of the tree at `s3://images/PREFIX`, through the library.
    pub fn bucket(&self, prefix: &str) -> Bucket {
        Bucket::open(
            BucketUrl::parse(&self.url(prefix)).unwrap().unwrap(),
            &S3Settings {
                access_key_id: Some(ACCESS_KEY.into()),
                secret_access_key: Some(SECRET_KEY.into()),
                endpoint: Some(self.endpoint()),
                ..S3Settings::default()
            },
        )
        .unwrap()
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same data and ports (the clients keep its address): when one
    /// is taken meanwhile, tries again a second later.
    pub fn restart(&mut self) {
        self.kill();
        self.launch_retrying(|_| std::thread::sleep(Duration::from_secs(1)));
    }
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        self.kill();
    }
}
