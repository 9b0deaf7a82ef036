//! Container images that really boot: a busybox-static rootfs (`/bin/busybox`, a link for every
//! applet, `/sbin/init`, an `/etc/inittab` that keeps init alive, `/etc/os-release` naming the
//! image), packed the ways images are published: squashfs, root.tar.xz, a unified tarball, and
//! the rootfs tarball distrobuilder's `rootfs-http` downloader takes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::command::run_ok;
use super::fixtures::{MetaSpec, mkdir, write_text};

const TOOL_TIMEOUT: Duration = Duration::from_secs(120);

/// The static busybox Debian's `busybox-static` installs.
pub const BUSYBOX: &str = "/bin/busybox";

/// A rootfs folder and the `PRETTY_NAME` its os-release holds.
pub struct BootableRootfs {
    pub path: PathBuf,
    pub pretty_name: String,
}

/// Whether the static busybox is installed.
pub fn have_busybox() -> bool {
    Path::new(BUSYBOX).is_file()
}

/// Says loudly that `what` is skipped and why, or panics when the real programs are required
/// ([`super::clients::REQUIRE_ENV`]).
pub fn skip(what: &str, why: &str) {
    let msg = format!("SKIPPED {what}: {why}");
    assert!(
        std::env::var(super::clients::REQUIRE_ENV).as_deref() != Ok("1"),
        "{msg}"
    );
    eprintln!("{msg}");
}

/// Whether a busybox image can be built with the real distrobuilder here (distrobuilder,
/// mksquashfs, busybox-static, root); says why not through [`skip`].
pub fn can_build_with_distrobuilder(what: &str) -> bool {
    let missing: Vec<&str> = ["distrobuilder", "mksquashfs"]
        .into_iter()
        .filter(|t| {
            !std::process::Command::new("which")
                .arg(t)
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .collect();
    if missing.is_empty() && have_busybox() && super::is_root() {
        return true;
    }
    skip(
        what,
        &format!("missing {missing:?}, busybox-static or root"),
    );
    false
}

/// Makes `<dir>/rootfs`, a busybox system whose os-release says `PRETTY_NAME="<pretty_name>"`.
pub fn busybox_rootfs(dir: &Path, pretty_name: &str) -> BootableRootfs {
    let root = dir.join("rootfs");
    for sub in [
        "bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "tmp", "run", "root",
        "var/log", "mnt",
    ] {
        mkdir(&root.join(sub));
    }
    set_mode(&root.join("tmp"), 0o1777);
    std::fs::copy(BUSYBOX, root.join("bin/busybox")).expect("copy busybox");
    let applets = run_ok(
        assert_cmd::Command::new(BUSYBOX).arg("--list-full"),
        TOOL_TIMEOUT,
    );
    for applet in String::from_utf8_lossy(&applets.stdout).lines() {
        let link = root.join(applet.trim_start_matches('/'));
        if link.symlink_metadata().is_err() {
            std::os::unix::fs::symlink("/bin/busybox", &link)
                .unwrap_or_else(|e| panic!("link {}: {e}", link.display()));
        }
    }
    let init = root.join("sbin/init");
    let _ = std::fs::remove_file(&init);
    std::os::unix::fs::symlink("/bin/busybox", &init).expect("link /sbin/init");
    write_text(
        &root.join("etc/inittab"),
        "::sysinit:/bin/true\n::respawn:/bin/sleep 3600\n::ctrlaltdel:/sbin/reboot\n::shutdown:/bin/true\n",
    );
    write_text(&root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n");
    write_text(&root.join("etc/group"), "root:x:0:\n");
    write_text(&root.join("etc/hostname"), "ssb-boot\n");
    write_text(
        &root.join("etc/os-release"),
        &format!("ID=ssbboot\nNAME=\"SSB boot\"\nVERSION_ID=1\nPRETTY_NAME=\"{pretty_name}\"\n"),
    );
    BootableRootfs {
        path: root,
        pretty_name: pretty_name.to_owned(),
    }
}

/// `mksquashfs ROOTFS OUT -comp xz -all-root`, as distrobuilder packs a container.
pub fn pack_squashfs(rootfs: &BootableRootfs, out: &Path) -> PathBuf {
    run_ok(
        assert_cmd::Command::new("mksquashfs")
            .arg(&rootfs.path)
            .arg(out)
            .args(["-noappend", "-comp", "xz", "-all-root", "-quiet"]),
        TOOL_TIMEOUT,
    );
    out.to_path_buf()
}

/// `tar -C ROOTFS -cJf OUT .` (entries relative to the rootfs, as `pack-lxc` writes them).
pub fn pack_root_tar_xz(rootfs: &BootableRootfs, out: &Path) -> PathBuf {
    tar(&["--numeric-owner", "-cJf"], out, &rootfs.path, &["."]);
    out.to_path_buf()
}

/// The rootfs as a gzip tarball, relative to it: what `downloader: rootfs-http` unpacks.
pub fn pack_root_tar_gz(rootfs: &BootableRootfs, out: &Path) -> PathBuf {
    tar(&["--numeric-owner", "-czf"], out, &rootfs.path, &["."]);
    out.to_path_buf()
}

/// A unified tarball as `incus image export` writes one: `metadata.yaml`, `templates/` and
/// `rootfs/`, gzip-compressed.
pub fn pack_unified(rootfs: &BootableRootfs, spec: &MetaSpec, out: &Path) -> PathBuf {
    let staging = rootfs
        .path
        .parent()
        .expect("the rootfs is in a folder")
        .to_path_buf();
    write_text(&staging.join("metadata.yaml"), &spec.to_yaml());
    write_text(
        &staging.join("templates/hostname.tpl"),
        "{{ instance.name }}\n",
    );
    tar(
        &["--numeric-owner", "-czf"],
        out,
        &staging,
        &["metadata.yaml", "templates", "rootfs"],
    );
    out.to_path_buf()
}

fn tar(flags: &[&str], out: &Path, dir: &Path, members: &[&str]) {
    run_ok(
        assert_cmd::Command::new("tar")
            .args(flags)
            .arg(out)
            .arg("-C")
            .arg(dir)
            .args(members),
        TOOL_TIMEOUT,
    );
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}
