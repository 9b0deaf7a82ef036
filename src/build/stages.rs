//! Running distrobuilder: which command set it has, then the stages of one build (one
//! bootstrap, a pack per target) in the partial folder, each checked for its artefacts.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use super::runner::{self, Invocation, RunFailure};
use super::{BuildError, BuildRequest, Stage};
use crate::config::ProductSpec;
use crate::format::{Family, RootfsKind, VersionName};
use crate::tree::FileRole;

/// The distrobuilder command that packs a family's image: `pack-incus` (distrobuilder ≥ 3.0,
/// writes `incus.tar.xz`) or `pack-lxd` (distrobuilder 2.x and canonical's lxd-imagebuilder,
/// writes `lxd.tar.xz`).
pub(super) fn pack_command(family: Family) -> &'static str {
    match family {
        Family::Incus => "pack-incus",
        Family::Lxd => "pack-lxd",
    }
}

/// Asks the builder which command set it has: the family it packs for.
pub fn detect_family(program: &str) -> Result<Family, BuildError> {
    let out = std::process::Command::new(program)
        .arg("--help")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|source| BuildError::BuilderMissing {
            program: program.to_owned(),
            source,
        })?;
    let help = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let has = |cmd: &str| help.split_whitespace().any(|w| w == cmd);
    if has(pack_command(Family::Incus)) {
        Ok(Family::Incus)
    } else if has(pack_command(Family::Lxd)) {
        Ok(Family::Lxd)
    } else {
        Err(BuildError::NotABuilder {
            program: program.to_owned(),
        })
    }
}

fn safe_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

pub(super) fn run_stages(
    req: &BuildRequest<'_>,
    image: &Path,
    program: &str,
    family: Family,
    work: &Path,
    version: &VersionName,
) -> Result<(), BuildError> {
    let p = req.product;
    let cache = req.cache_root.join(safe_name(&p.name));
    let rootfs = work.join("rootfs");
    let mut common: Vec<OsString> = vec!["--cache-dir".into(), cache.clone().into()];
    for (k, v) in &p.build.options {
        common.push("-o".into());
        common.push(format!("{k}={v}").into());
    }
    let compression: Vec<OsString> = p
        .build
        .compression
        .iter()
        .flat_map(|c| ["--compression".into(), c.into()])
        .collect();
    let timeout = p
        .build
        .timeout
        .map(crate::config::expiry::HumanDuration::as_std);
    let run = |stage: Stage, inv: Invocation| -> Result<(), BuildError> {
        if req.interrupted.load(Ordering::Relaxed) {
            return Err(stage_error(
                p,
                stage,
                RunFailure::Interrupted { tail: Vec::new() },
            ));
        }
        (req.stage)(stage);
        tracing::debug!("{}", inv.display());
        runner::run(&inv, timeout, req.interrupted, req.output)
            .map_err(|f| stage_error(p, stage, f))
    };
    let mkdir = |d: &Path| {
        crate::tree::atomic::create_dir_all(d).map_err(|source| BuildError::Io {
            product: p.name.clone(),
            path: d.to_owned(),
            source,
        })
    };
    let builder = |args: Vec<OsString>| Invocation {
        program: program.into(),
        args,
        env: Vec::new(),
    };
    let pack = |cmd: &str, vm: bool, out: &Path| -> Vec<OsString> {
        let mut a: Vec<OsString> = vec![cmd.into()];
        if vm {
            a.push("--vm".into());
        }
        a.extend([image.into(), rootfs.clone().into(), out.into()]);
        a.extend(common.iter().cloned());
        a.extend(compression.iter().cloned());
        a
    };

    // One bootstrap, whatever is packed from it.
    let mut args: Vec<OsString> = vec!["build-dir".into(), image.into(), rootfs.clone().into()];
    args.extend(common.iter().cloned());
    run(Stage::BuildDir, builder(args))?;

    if let Some(hook) = &p.build_script_hook {
        run(
            Stage::Hook,
            Invocation {
                program: hook.into(),
                args: Vec::new(),
                env: vec![
                    ("SSBUILDER_STAGING_DIR".into(), rootfs.clone().into()),
                    ("SSBUILDER_BUILD_PRODUCT".into(), p.name.clone().into()),
                    ("SSBUILDER_VERSION".into(), version.to_string().into()),
                ],
            },
        )?;
    }

    let dest = work.join("version");
    mkdir(&dest)?;
    let mut moves: Vec<(PathBuf, PathBuf)> = Vec::new();
    if !req.skip_lxc {
        let out = work.join("lxc");
        mkdir(&out)?;
        run(Stage::PackLxc, builder(pack("pack-lxc", false, &out)))?;
        require(p, Stage::PackLxc, &out, &["meta.tar.*", "rootfs.tar.*"])?;
        moves.extend(
            files_in(&out)
                .into_iter()
                .map(|f| (out.join(&f), dest.join(&f))),
        );
    }
    if !req.skip_lxd {
        let out = work.join("container");
        mkdir(&out)?;
        run(
            Stage::Pack(family),
            builder(pack(pack_command(family), false, &out)),
        )?;
        let meta = FileRole::meta(family).file_name();
        require(
            p,
            Stage::Pack(family),
            &out,
            &[meta, FileRole::Rootfs(RootfsKind::Squashfs).file_name()],
        )?;
        moves.extend(
            files_in(&out)
                .into_iter()
                .map(|f| (out.join(&f), dest.join(&f))),
        );
        if p.build.vm {
            let out_vm = work.join("vm");
            mkdir(&out_vm)?;
            run(
                Stage::PackVm(family),
                builder(pack(pack_command(family), true, &out_vm)),
            )?;
            let disk = FileRole::Rootfs(RootfsKind::DiskKvm).file_name();
            require(p, Stage::PackVm(family), &out_vm, &[meta, disk])?;
            moves.push((out_vm.join(disk), dest.join(disk)));
            // distrobuilder's VM metadata differs from the container's (creation date,
            // templates): keep it as the VM's own, paired only with the disk.
            let same = files_equal(&out_vm.join(meta), &out.join(meta));
            if !same {
                moves.push((
                    out_vm.join(meta),
                    dest.join(FileRole::vm_meta(family).file_name()),
                ));
            }
        }
    }
    (req.stage)(Stage::Assemble);
    for (from, to) in moves {
        std::fs::rename(&from, &to).map_err(|source| BuildError::Io {
            product: p.name.clone(),
            path: to.clone(),
            source,
        })?;
        let _ = crate::tree::atomic::set_file_mode(&to);
    }
    Ok(())
}

fn stage_error(p: &ProductSpec, stage: Stage, f: RunFailure) -> BuildError {
    let (status, tail) = match f {
        RunFailure::Spawn(e) => (format!("cannot start it: {e}"), Vec::new()),
        RunFailure::Exit { status, tail } => (
            status
                .code()
                .map_or_else(|| status.to_string(), |c| format!("exit status {c}")),
            tail,
        ),
        RunFailure::TimedOut { after, tail } => (
            format!("timed out after {}s and was killed", after.as_secs()),
            tail,
        ),
        RunFailure::Interrupted { tail } => ("interrupted".to_owned(), tail),
    };
    BuildError::Stage {
        product: p.name.clone(),
        stage,
        status,
        tail,
        kept: None,
    }
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().is_file())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Checks that `dir` has a file matching each pattern (`*` only as a suffix wildcard).
fn require(p: &ProductSpec, stage: Stage, dir: &Path, patterns: &[&str]) -> Result<(), BuildError> {
    let names = files_in(dir);
    let missing: Vec<&str> = patterns
        .iter()
        .copied()
        .filter(|pat| match pat.strip_suffix('*') {
            Some(prefix) => !names.iter().any(|n| n.starts_with(prefix)),
            None => !names.iter().any(|n| n == pat),
        })
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(BuildError::MissingArtifact {
            product: p.name.clone(),
            stage,
            missing: missing.join(", "),
            dir: dir.to_owned(),
            kept: None,
        })
    }
}

fn files_equal(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(ma), Ok(mb)) if ma.len() == mb.len() => {
            matches!((std::fs::read(a), std::fs::read(b)), (Ok(x), Ok(y)) if x == y)
        }
        _ => false,
    }
}
