//! `demo`: a complete tree from nothing. Builds a small container image in-process (metadata
//! tarball + root.tar.xz, no distrobuilder or mksquashfs needed), publishes it in the layout and
//! serves it, so a new user sees the whole flow with `incus image list` in a minute.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use tracing::info;

use super::publish::publish_layout;
use super::serve::serve_static;
use crate::cli::settings::Demo;
use simplestreams_builder::format::arch::debian_arch;
use simplestreams_builder::format::{Family, RootfsKind, VersionName};
use simplestreams_builder::tree::FileRole;

/// The Debian name of this machine's architecture, as the layout wants it: the running
/// kernel's, which is what the LXD or Incus daemon here reports and filters images by (a 32-bit
/// build of this program on a 64-bit kernel still makes a 64-bit image).
fn host_arch() -> Result<&'static str> {
    let uname = rustix::system::uname();
    let machine = uname.machine().to_string_lossy();
    debian_arch(&machine).with_context(|| {
        format!("this machine's architecture `{machine}` is not one LXD or Incus know")
    })
}

/// Writes a tiny root filesystem as an xz tarball with entries relative to the rootfs.
fn write_rootfs(out: impl Write, mtime: u64) -> std::io::Result<()> {
    let xz = liblzma::write::XzEncoder::new(out, 6);
    let mut tar = tar::Builder::new(xz);
    let dirs = [
        "./",
        "./etc/",
        "./root/",
        "./tmp/",
        "./usr/",
        "./usr/bin/",
        "./var/",
    ];
    for d in dirs {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(if d == "./tmp/" { 0o1777 } else { 0o755 });
        h.set_mtime(mtime);
        h.set_size(0);
        h.set_cksum();
        tar.append_data(&mut h, d, std::io::empty())?;
    }
    let files: [(&str, &str, u32); 3] = [
        (
            "./etc/os-release",
            "NAME=\"simplestreams-builder demo\"\nID=ssb-demo\nVERSION_ID=1.0\nPRETTY_NAME=\"simplestreams-builder demo 1.0\"\n",
            0o644,
        ),
        ("./etc/hostname", "ssb-demo\n", 0o644),
        (
            "./etc/motd",
            "This image was built by `simplestreams-builder demo`.\n",
            0o644,
        ),
    ];
    for (name, body, mode) in files {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(mode);
        h.set_mtime(mtime);
        h.set_size(body.len() as u64);
        h.set_cksum();
        tar.append_data(&mut h, name, body.as_bytes())?;
    }
    tar.into_inner()?.finish()?;
    Ok(())
}

/// Builds the demo image into `target` unless one is there already; returns its folder.
pub fn build_demo_image(target: &Path) -> Result<std::path::PathBuf> {
    let arch = host_arch()?;
    let product = target.join(format!("images/ssb-demo/1.0/{arch}/default"));
    if product.is_dir() {
        let mut w = Vec::new();
        if let Some(v) = simplestreams_builder::tree::scan_product(&product, &mut w)?
            .into_iter()
            .last()
        {
            info!("demo image already built: {}", v.path.display());
            return Ok(v.path);
        }
    }
    let now = jiff::Timestamp::now();
    let version =
        VersionName::from_datetime(now.to_zoned_datetime(jiff::tz::TimeZone::UTC).datetime());
    let dir = product.join(version.as_str());
    simplestreams_builder::tree::atomic::create_dir_all(&dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let secs = now.as_second();
    let metadata = format!(
        "architecture: {arch}\ncreation_date: {secs}\nexpiry_date: {}\nproperties:\n  architecture: {arch}\n  os: ssb-demo\n  release: \"1.0\"\n  variant: default\n  description: simplestreams-builder demo 1.0 {arch} ({version})\n  serial: \"{version}\"\ntemplates:\n  /etc/hostname:\n    when: [create, copy]\n    template: hostname.tpl\n",
        secs + 30 * 86_400
    );
    simplestreams_builder::tree::atomic::write_with(
        &dir.join(FileRole::meta(Family::Incus).file_name()),
        |w| {
            simplestreams_builder::image::metadata::write_metadata_tarball(
                w,
                &metadata,
                &[("hostname.tpl", "{{ container.name }}\n")],
                secs as u64,
            )
        },
    )?;
    simplestreams_builder::tree::atomic::write_with(
        &dir.join(FileRole::Rootfs(RootfsKind::RootTarXz).file_name()),
        |w| write_rootfs(w, secs as u64),
    )?;
    info!("built the demo image in {}", dir.display());
    Ok(dir)
}

/// Runs the demo.
pub fn run(s: &Demo) -> Result<()> {
    build_demo_image(&s.target)?;
    publish_layout(&s.target, &s.shared)?;
    if !s.serve {
        return Ok(());
    }
    serve_static(s.target.clone(), s.listen)
}
