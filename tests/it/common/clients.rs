//! The real third-party programs the end-to-end tests drive: the Incus and LXD CLIs,
//! python-simplestreams and incus-simplestreams, plus the fixture tools.
//!
//! They run in an isolated environment: a fresh `HOME` per [`Clients`] (so no remote, cache or
//! certificate leaks between tests or from the machine), the test CA as the only extra trust
//! root, and proxies disabled so nothing leaves loopback.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use tempfile::TempDir;

use super::catalog::{ImageInfo, ImageType, ListedImage};
use super::command::run_ok;
use super::tls::TestCa;

/// When set to `1`, a missing program fails the test instead of skipping it (CI sets it).
pub const REQUIRE_ENV: &str = "SSB_REQUIRE_REAL_CLIENTS";

/// Generous: listing or exporting a few tiny images takes well under a second.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);

/// Variables that would point a client at another config, daemon, proxy or trust setting.
const SCRUBBED_ENV: &[&str] = &[
    "INCUS_DIR",
    "INCUS_CONF",
    "INCUS_PROJECT",
    "INCUS_REMOTE",
    "INCUS_INSECURE_TLS",
    "LXD_DIR",
    "LXD_CONF",
    "LXD_INSECURE_TLS",
    "XDG_CONFIG_HOME",
    "XDG_CACHE_HOME",
    "SSL_CERT_DIR",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
];

/// A program a test needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Program {
    Incus,
    Lxc,
    SstreamQuery,
    SstreamMirror,
    IncusSimplestreams,
    Mksquashfs,
    QemuImg,
    QemuIo,
    Python3,
    Distrobuilder,
    /// Classic LXC (`lxc-create`, and `lxc-start`, `lxc-attach`, `lxc-stop`, `lxc-destroy` from
    /// the same package).
    LxcCreate,
    Gpgv,
}

impl Program {
    /// What the end-to-end tests against our server need.
    pub const E2E: &[Program] = &[
        Program::Incus,
        Program::Lxc,
        Program::SstreamQuery,
        Program::SstreamMirror,
        Program::Mksquashfs,
        Program::QemuImg,
        Program::QemuIo,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Program::Incus => "incus",
            Program::Lxc => "lxc",
            Program::SstreamQuery => "sstream-query",
            Program::SstreamMirror => "sstream-mirror",
            Program::IncusSimplestreams => "incus-simplestreams",
            Program::Mksquashfs => "mksquashfs",
            Program::QemuImg => "qemu-img",
            Program::QemuIo => "qemu-io",
            Program::Python3 => "python3",
            Program::Distrobuilder => "distrobuilder",
            Program::LxcCreate => "lxc-create",
            Program::Gpgv => "gpgv",
        }
    }

    /// PATH first; python-simplestreams also lives in its venv, which CI does not put on PATH.
    fn locate(self) -> Option<PathBuf> {
        let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect())
            .unwrap_or_default();
        if matches!(self, Program::SstreamQuery | Program::SstreamMirror) {
            if let Some(venv) = std::env::var_os("SSTREAM_VENV") {
                dirs.push(Path::new(&venv).join("bin"));
            }
            dirs.push("/opt/sstream-venv/bin".into());
        }
        dirs.into_iter()
            .map(|d| d.join(self.name()))
            .find(|p| is_executable(p))
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The two Go simplestreams clients. They share verbs and output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Client {
    /// `incus` (Incus 6.x): reads `incus.tar.xz` and `requirements`.
    Incus,
    /// `lxc` (LXD 5.0.x): reads `lxd.tar.xz` and `lxd_requirements`.
    Lxc,
}

impl Client {
    pub const BOTH: [Client; 2] = [Client::Incus, Client::Lxc];

    /// The client's program name.
    pub fn name(self) -> &'static str {
        self.program().name()
    }

    pub fn program(self) -> Program {
        match self {
            Client::Incus => Program::Incus,
            Client::Lxc => Program::Lxc,
        }
    }
}

/// The located programs and the isolated environment they run in.
pub struct Clients {
    programs: BTreeMap<Program, PathBuf>,
    home: TempDir,
    ca_pem: PathBuf,
}

impl Clients {
    /// Locates `needed`. When one is missing, says so loudly and returns `None` so the test can
    /// return early, or panics if [`REQUIRE_ENV`] is `1`.
    pub fn detect(ca: &TestCa, needed: &[Program]) -> Option<Clients> {
        let mut programs = BTreeMap::new();
        let mut missing = Vec::new();
        for &program in needed {
            match program.locate() {
                Some(path) => {
                    programs.insert(program, path);
                }
                None => missing.push(program.name()),
            }
        }
        if !missing.is_empty() {
            let test = std::thread::current()
                .name()
                .unwrap_or("this test")
                .to_owned();
            let missing = missing.join(", ");
            if std::env::var(REQUIRE_ENV).as_deref() == Ok("1") {
                panic!("{REQUIRE_ENV}=1 but real clients are missing: {missing}");
            }
            // Straight to the process's stderr: libtest captures `eprintln!` of passing tests,
            // and a skip nobody sees is a silent pass.
            let _ = writeln!(
                std::io::stderr(),
                "\n********************************************************************\n\
                 SKIPPED {test}: real clients missing ({missing});\n\
                 set up with ../shared/ci/install-real-clients.sh, or set {REQUIRE_ENV}=1\n\
                 to make this a failure.\n\
                 ********************************************************************"
            );
            return None;
        }

        let home = TempDir::with_prefix("ssb-client-home-").expect("create client HOME");
        for dir in [".config/incus", ".config/lxc", ".cache"] {
            super::fixtures::mkdir(&home.path().join(dir));
        }
        Some(Clients {
            programs,
            home,
            ca_pem: ca.ca_pem(),
        })
    }

    /// A command for `program` in the isolated environment.
    pub fn command(&self, program: Program) -> assert_cmd::Command {
        let path = self
            .programs
            .get(&program)
            .unwrap_or_else(|| panic!("{} was not asked for in Clients::detect", program.name()));
        let mut cmd = assert_cmd::Command::new(path);
        for var in SCRUBBED_ENV {
            cmd.env_remove(var);
        }
        cmd.env("HOME", self.home.path())
            .env("SSL_CERT_FILE", &self.ca_pem)
            .env("REQUESTS_CA_BUNDLE", &self.ca_pem)
            .env("NO_PROXY", "*")
            .env("no_proxy", "*")
            .current_dir(self.home.path());
        cmd
    }

    /// Runs `program args…` and panics with its output unless it succeeds.
    pub fn run<I, S>(&self, program: Program, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run_ok(self.command(program).args(args), CLIENT_TIMEOUT)
    }

    /// `incus …` / `lxc …`, which must succeed.
    pub fn client<I, S>(&self, client: Client, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.run(client.program(), args)
    }

    /// `incus …`, which must succeed.
    pub fn incus<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.client(Client::Incus, args)
    }

    /// `lxc …`, which must succeed.
    pub fn lxc<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.client(Client::Lxc, args)
    }

    /// `remote add NAME URL --protocol simplestreams`. No certificate prompt: simplestreams
    /// remotes verify against the system roots, i.e. our `SSL_CERT_FILE`.
    pub fn remote_add(&self, client: Client, name: &str, url: &str) {
        self.client(
            client,
            ["remote", "add", name, url, "--protocol", "simplestreams"],
        );
    }

    /// [`Clients::remote_add`] for Incus.
    pub fn incus_remote_add(&self, name: &str, url: &str) {
        self.remote_add(Client::Incus, name, url);
    }

    /// [`Clients::remote_add`] for LXD.
    pub fn lxc_remote_add(&self, name: &str, url: &str) {
        self.remote_add(Client::Lxc, name, url);
    }

    /// `image list REMOTE: --format json`.
    pub fn image_list(&self, client: Client, remote: &str) -> Vec<ListedImage> {
        let out = self.client(
            client,
            ["image", "list", &format!("{remote}:"), "--format", "json"],
        );
        ListedImage::parse_list(&out.stdout)
            .unwrap_or_else(|e| panic!("{client:?} image list {remote}: {e}"))
    }

    /// `image info REMOTE:NAME [--vm]`.
    pub fn image_info(
        &self,
        client: Client,
        remote: &str,
        name: &str,
        image_type: ImageType,
    ) -> ImageInfo {
        let mut args = vec![
            "image".to_owned(),
            "info".into(),
            format!("{remote}:{name}"),
        ];
        args.extend(image_type.vm_flag().map(String::from));
        let out = self.client(client, &args);
        ImageInfo::parse(&String::from_utf8_lossy(&out.stdout))
            .unwrap_or_else(|e| panic!("{client:?} image info {remote}:{name}: {e}"))
    }

    /// `image export REMOTE:NAME DIR [--vm]`; returns the files written, by name.
    pub fn image_export(
        &self,
        client: Client,
        remote: &str,
        name: &str,
        image_type: ImageType,
        dir: &Path,
    ) -> BTreeMap<String, PathBuf> {
        super::fixtures::mkdir(dir);
        let mut args = vec![
            "image".into(),
            "export".into(),
            "-q".into(),
            format!("{remote}:{name}").into(),
            dir.as_os_str().to_owned(),
        ];
        args.extend(image_type.vm_flag().map(Into::into));
        self.client::<_, std::ffi::OsString>(client, args);
        std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
            .map(|e| {
                let e = e.expect("read dir entry");
                (e.file_name().to_string_lossy().into_owned(), e.path())
            })
            .collect()
    }

    /// `lxc-create -t download` of `dist`/`release`/`arch` from our server at `url`
    /// (`https://HOST:PORT`) into `lxcpath`, without network devices (no bridge here). wget, which
    /// the template downloads with, trusts the test CA through a `WGETRC` of this environment
    /// (GnuTLS ignores SSL_CERT_FILE), so the system store is left alone; the template's cache is
    /// in the HOME too.
    pub fn lxc_download(&self, url: &str, lxcpath: &Path, name: &str, image: [&str; 3]) -> Output {
        let home = self.home.path();
        let wgetrc = home.join(".wgetrc-ssb");
        std::fs::write(
            &wgetrc,
            format!("ca_certificate = {}\n", self.ca_pem.display()),
        )
        .unwrap();
        let no_net = home.join("lxc-no-network.conf");
        std::fs::write(&no_net, "lxc.net.0.type = empty\n").unwrap();
        let server = url.trim_start_matches("https://");
        let [dist, release, arch] = image;
        let mut cmd = self.command(Program::LxcCreate);
        cmd.env("WGETRC", &wgetrc)
            .env("LXC_CACHE_PATH", home.join(".cache/lxc"))
            .arg("-P")
            .arg(lxcpath)
            .arg("-f")
            .arg(&no_net)
            .args(["-n", name, "-t", "download", "--"])
            .args(["--server", server, "-d", dist, "-r", release, "-a", arch]);
        run_ok(&mut cmd, CLIENT_TIMEOUT)
    }

    /// `gpgv --keyring KEYRING SIG FILE`, which must succeed.
    pub fn gpgv(&self, keyring: &Path, file: &Path) {
        let mut sig = file.as_os_str().to_owned();
        sig.push(".asc");
        self.run(
            Program::Gpgv,
            [
                OsStr::new("--keyring"),
                keyring.as_os_str(),
                sig.as_os_str(),
                file.as_os_str(),
            ],
        );
    }

    /// `sstream-query --json INDEX_URL`: every item, flattened with its product and version keys.
    pub fn sstream_query(&self, index_url: &str) -> Vec<serde_json::Value> {
        let out = self.run(Program::SstreamQuery, ["--json", index_url]);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "sstream-query --json {index_url} printed no JSON list ({e}):\n{}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// `sstream-mirror INDEX_URL OUT`, which checks sizes and checksums as it copies.
    pub fn sstream_mirror(&self, index_url: &str, out_dir: &Path) -> Output {
        self.run(
            Program::SstreamMirror,
            [OsStr::new(index_url), out_dir.as_os_str()],
        )
    }

    /// `incus-simplestreams ARGS…` with `dir` as its working tree.
    pub fn incus_simplestreams<I, S>(&self, dir: &Path, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run_ok(
            self.command(Program::IncusSimplestreams)
                .current_dir(dir)
                .args(args),
            CLIENT_TIMEOUT,
        )
    }
}
