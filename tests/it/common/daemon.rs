//! A real LXD or Incus daemon in a temp folder: started without systemd, cut off from the
//! internet and from the machine's own client configuration, given a `dir` storage pool, and
//! stopped with every container when dropped, whatever happened. What the tests prove on it is
//! what users do: `remote add`, `image copy`, `launch`, `exec`, `image import <direct URL>`.
//!
//! Facts this relies on (tried by hand on Incus 6.0.4 and LXD 5.0.2 from Debian):
//! - the unprivileged container's root (uid 1000000) needs `x` on every parent folder of the
//!   daemon's folder, and `mktemp` makes 0700 folders: they are opened up to 0711;
//! - both daemons try to fetch instance types from the internet at start: a proxy on a closed
//!   loopback port stops that (`no_proxy` keeps our server reachable);
//! - the daemon itself fetches a direct-URL import, and trusts the Go system pool, which
//!   `SSL_CERT_FILE` sets: the daemon gets the test CA there, the system store is not touched;
//! - the Incus client caches simplestreams catalogs under `$HOME/.cache`: each daemon has its
//!   own `HOME`;
//! - a clean shutdown removes the daemon's mounts (`shmounts`, `devlxd`/`guestapi`); after a
//!   crash they, the `lxc monitor` processes and liblxc's lock folders are cleaned up here.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::clients::REQUIRE_ENV;
use super::tls::TestCa;

/// How long a daemon may take to start (it takes about half a second).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Any one client call; launches and copies of the tiny test images take about a second.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// A closed loopback port: the proxy that makes every internet request of the daemon fail.
const DEAD_PROXY: &str = "http://127.0.0.1:9";

/// Which daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Incus 6.0.4 (`/usr/libexec/incus/incusd`, client `incus`).
    Incus,
    /// LXD 5.0.2 (`/usr/bin/lxd`, client `lxc`).
    Lxd,
}

impl Kind {
    fn daemon(self) -> &'static str {
        match self {
            Kind::Incus => "/usr/libexec/incus/incusd",
            Kind::Lxd => "/usr/bin/lxd",
        }
    }

    /// The client program.
    pub fn client(self) -> &'static str {
        match self {
            Kind::Incus => "incus",
            Kind::Lxd => "lxc",
        }
    }

    fn dir_var(self) -> &'static str {
        match self {
            Kind::Incus => "INCUS_DIR",
            Kind::Lxd => "LXD_DIR",
        }
    }

    fn conf_var(self) -> &'static str {
        match self {
            Kind::Incus => "INCUS_CONF",
            Kind::Lxd => "LXD_CONF",
        }
    }

    /// `incus admin <verb>` / `lxd <verb>`: the daemon's own subcommands.
    fn admin(self, verb: &str) -> Vec<String> {
        match self {
            Kind::Incus => vec!["incus".into(), "admin".into(), verb.into()],
            Kind::Lxd => vec!["lxd".into(), verb.into()],
        }
    }
}

/// A running daemon of its own; stopped, with its containers, mounts and processes, on drop.
pub struct Daemon {
    kind: Kind,
    dir: Option<TempDir>,
    child: Child,
    ca_pem: PathBuf,
    /// Every container name starts with it: unique across daemons running at once (containers
    /// get cgroups `lxc.payload.<name>`).
    prefix: String,
    containers: Mutex<Vec<String>>,
}

impl Daemon {
    /// Starts a daemon trusting `ca`, with a `dir` pool as the default profile's root disk.
    /// Without the daemon, its client or root, says so loudly and returns `None`, or panics
    /// when [`REQUIRE_ENV`] is `1`.
    pub fn start(kind: Kind, ca: &TestCa) -> Option<Daemon> {
        let missing: Vec<&str> = [kind.daemon(), kind.client()]
            .into_iter()
            .filter(|p| which(p).is_none())
            .collect();
        let why = if !missing.is_empty() {
            Some(format!("missing {}", missing.join(", ")))
        } else if !super::is_root() {
            Some("the daemons need root".to_owned())
        } else {
            None
        };
        if let Some(why) = why {
            let test = std::thread::current().name().unwrap_or("?").to_owned();
            if std::env::var(REQUIRE_ENV).as_deref() == Ok("1") {
                panic!("{REQUIRE_ENV}=1 but {test} cannot run the {kind:?} daemon: {why}");
            }
            let _ = writeln!(
                std::io::stderr(),
                "\n********************************************************************\n\
                 SKIPPED {test}: no {kind:?} daemon ({why});\n\
                 set up with ../shared/ci/install-real-clients.sh and run as root, or set\n\
                 {REQUIRE_ENV}=1 to make this a failure.\n\
                 ********************************************************************"
            );
            return None;
        }
        static RUNS: AtomicU32 = AtomicU32::new(0);
        let run = RUNS.fetch_add(1, Ordering::Relaxed);
        let prefix = format!(
            "ssb{}x{}{}",
            std::process::id(),
            run,
            match kind {
                Kind::Incus => "i",
                Kind::Lxd => "l",
            }
        );
        let dir = TempDir::with_prefix("ssb-daemon-").expect("create the daemon's folder");
        for sub in ["var", "conf/servercerts", "home"] {
            super::fixtures::mkdir(&dir.path().join(sub));
        }
        for open in [dir.path().to_owned(), dir.path().join("var")] {
            chmod(&open, 0o711);
        }
        // Only the local daemon: no `images:` remote on the internet, no first-run message.
        std::fs::write(
            dir.path().join("conf/config.yml"),
            "default-remote: local\nremotes:\n  local:\n    addr: unix://\n    public: false\naliases: {}\n",
        )
        .expect("write the client config");
        let log = std::fs::File::create(dir.path().join("daemon.out")).expect("daemon output");
        let mut cmd = Command::new(kind.daemon());
        isolate(&mut cmd, kind, dir.path(), &ca.ca_pem());
        cmd.args(["--group", "root", "--logfile"])
            .arg(dir.path().join("daemon.log"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("daemon output"))
            .stderr(log);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", kind.daemon()));
        let mut daemon = Daemon {
            kind,
            dir: Some(dir),
            child,
            ca_pem: ca.ca_pem(),
            prefix,
            containers: Mutex::new(Vec::new()),
        };
        let started = Instant::now();
        let ready = daemon.admin(&["waitready", "--timeout", "60"], START_TIMEOUT);
        if !ready.status.success() || daemon.child.try_wait().ok().flatten().is_some() {
            panic!(
                "{kind:?} daemon did not start: {}\n{}",
                String::from_utf8_lossy(&ready.stderr),
                daemon.logs()
            );
        }
        eprintln!(
            "{kind:?} daemon ready in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        daemon.ok(&["storage", "create", "default", "dir"]);
        daemon.ok(&[
            "profile",
            "device",
            "add",
            "default",
            "root",
            "disk",
            "path=/",
            "pool=default",
        ]);
        Some(daemon)
    }

    /// Which daemon this is.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    fn path(&self) -> &Path {
        self.dir
            .as_ref()
            .expect("the folder lives as long as the daemon")
            .path()
    }

    /// The client, talking to this daemon only.
    fn client(&self) -> Command {
        let mut cmd = Command::new(self.kind.client());
        isolate(&mut cmd, self.kind, self.path(), &self.ca_pem);
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Runs the client with `args`, bounded by `timeout`.
    pub fn run(&self, args: &[&str], timeout: Duration) -> Output {
        let mut cmd = self.client();
        cmd.args(args);
        output_within(cmd, timeout)
    }

    fn admin(&self, args: &[&str], timeout: Duration) -> Output {
        let mut words = self.kind.admin(args[0]);
        words.extend(args[1..].iter().map(|a| (*a).to_owned()));
        let mut cmd = Command::new(&words[0]);
        isolate(&mut cmd, self.kind, self.path(), &self.ca_pem);
        cmd.args(&words[1..]).stdin(Stdio::null());
        output_within(cmd, timeout)
    }

    /// Runs the client with `args`; its stdout, or a panic with everything it and the daemon said.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args, CALL_TIMEOUT);
        if !out.status.success() {
            panic!(
                "`{} {}` failed ({}):\n{}{}\n{}",
                self.kind.client(),
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.logs()
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `remote add NAME URL --protocol simplestreams`, trusting the test CA for it.
    pub fn remote_add(&self, name: &str, url: &str) {
        let pinned = self.path().join(format!("conf/servercerts/{name}.crt"));
        std::fs::copy(&self.ca_pem, &pinned).expect("pin the test CA for the remote");
        self.ok(&["remote", "add", name, url, "--protocol", "simplestreams"]);
    }

    /// `launch IMAGE <name>`; returns the container's name (prefixed, so unique).
    pub fn launch(&self, image: &str, name: &str) -> String {
        let name = format!("{}-{name}", self.prefix);
        self.containers.lock().unwrap().push(name.clone());
        self.ok(&["-q", "launch", image, &name]);
        name
    }

    /// `exec NAME -- ARGS…`, retried for a few seconds while the container's init comes up.
    pub fn exec(&self, name: &str, args: &[&str]) -> String {
        let mut all = vec!["exec", name, "--"];
        all.extend_from_slice(args);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = self.run(&all, CALL_TIMEOUT);
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout).into_owned();
            }
            if Instant::now() > deadline {
                panic!(
                    "`{} {}` failed: {}\n{}",
                    self.kind.client(),
                    all.join(" "),
                    String::from_utf8_lossy(&out.stderr),
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Empties the daemon's cache of remote catalogs (`var/cache/<sha256 of the remote>/`, with
    /// its index.json and images.json, kept an hour), so its next look at a remote reads the
    /// catalog as published now.
    pub fn forget_remote_catalogs(&self) {
        let cache = self.path().join("var/cache");
        for e in std::fs::read_dir(&cache).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }

    /// The daemon's log and output, for failure messages.
    pub fn logs(&self) -> String {
        let read = |name: &str| std::fs::read_to_string(self.path().join(name)).unwrap_or_default();
        format!(
            "--- {:?} daemon log ---\n{}\n--- daemon output ---\n{}",
            self.kind,
            read("daemon.log"),
            read("daemon.out")
        )
    }

    /// Containers first, then a clean shutdown, then whatever a crash leaves behind.
    fn stop(&mut self) {
        let names = std::mem::take(&mut *self.containers.lock().unwrap_or_else(|e| e.into_inner()));
        if self.child.try_wait().ok().flatten().is_none() {
            if !names.is_empty() {
                let mut args = vec!["delete", "-f"];
                args.extend(names.iter().map(String::as_str));
                let _ = self.run(&args, CALL_TIMEOUT);
            }
            let _ = self.admin(&["shutdown", "--timeout", "30"], Duration::from_secs(60));
            let deadline = Instant::now() + Duration::from_secs(10);
            while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            if self.child.try_wait().ok().flatten().is_none() {
                let _ = self.child.kill();
            }
        }
        let _ = self.child.wait();
        let base = self.path().to_owned();
        kill_leftovers(&base, &self.prefix);
        unmount_under(&base);
        let locks = Path::new("/run/lxc/lock").join(base.strip_prefix("/").unwrap_or(&base));
        remove_empty_dirs(&locks);
        if let Some(dir) = self.dir.take() {
            let _ = dir.close();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The environment of the daemon and its clients: their own folders and `HOME`, no internet,
/// and the test CA as the only trusted root.
fn isolate(cmd: &mut Command, kind: Kind, dir: &Path, ca_pem: &Path) {
    for var in [
        "INCUS_DIR",
        "INCUS_CONF",
        "INCUS_SOCKET",
        "LXD_DIR",
        "LXD_CONF",
        "LXD_SOCKET",
        "SSL_CERT_DIR",
    ] {
        cmd.env_remove(var);
    }
    cmd.env(kind.dir_var(), dir.join("var"))
        .env(kind.conf_var(), dir.join("conf"))
        .env("HOME", dir.join("home"))
        .env("SSL_CERT_FILE", ca_pem)
        .env("https_proxy", DEAD_PROXY)
        .env("http_proxy", DEAD_PROXY)
        .env("HTTPS_PROXY", DEAD_PROXY)
        .env("HTTP_PROXY", DEAD_PROXY)
        .env("no_proxy", "127.0.0.1,localhost")
        .env("NO_PROXY", "127.0.0.1,localhost");
}

/// Runs `cmd`, killing it after `timeout`.
fn output_within(mut cmd: Command, timeout: Duration) -> Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => out.unwrap_or_else(|e| panic!("{cmd:?}: {e}")),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("{cmd:?} did not finish within {timeout:?}");
        }
    }
}

fn which(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        return Path::new(program).is_file().then(|| PathBuf::from(program));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// Kills what a crashed daemon leaves: processes naming its folder (`lxc monitor`, forkstart)
/// and the processes of its containers (cgroups `lxc.payload.<prefix>…`).
fn kill_leftovers(base: &Path, prefix: &str) {
    let base = format!("{}/", base.display());
    let me = std::process::id().to_string();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in procs.flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if pid == me || !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let read = |f: &str| std::fs::read(entry.path().join(f)).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&read("cmdline")).replace('\0', " ");
        let cgroup = String::from_utf8_lossy(&read("cgroup")).into_owned();
        let ours = cmdline.contains(&base)
            || cgroup.contains(&format!("lxc.payload.{prefix}"))
            || cgroup.contains(&format!("lxc.monitor.{prefix}"));
        if ours {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
        }
    }
}

/// Unmounts everything mounted under `base`, deepest first.
fn unmount_under(base: &Path) {
    let base = format!("{}/", base.display());
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .filter(|m| m.starts_with(&base))
        .collect();
    points.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in points {
        let ok = Command::new("umount")
            .arg(m)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").args(["-l", m]).status();
        }
    }
}

/// Removes the empty folders under `dir`, and `dir` when it ends up empty.
fn remove_empty_dirs(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_empty_dirs(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}
