//! Reads what image files say about themselves: `metadata.yaml` out of a metadata tarball
//! (xz, gzip, zstd or plain tar), read through once and completely so that a truncated or
//! corrupt archive is an error rather than a published image that clients cannot import.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Largest metadata.yaml accepted (the Incus daemon reads at most 1 MiB).
const MAX_METADATA_YAML: u64 = 1 << 20;

/// The fields of metadata.yaml the catalog uses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageMetadata {
    /// Architecture (kernel or Debian name).
    pub architecture: String,
    /// Unix seconds.
    #[serde(default)]
    pub creation_date: i64,
    /// Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiry_date: Option<i64>,
    /// `os`, `release`, `variant`, `description`, `serial`, …
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

impl ImageMetadata {
    /// Why this metadata cannot describe an image of a product for `arch`: an architecture the
    /// clients do not know (they drop such images), or another one than the product's.
    pub fn arch_problem(&self, arch: &str) -> Option<String> {
        let found = crate::format::canonical_arch(&self.architecture);
        let expected = crate::format::canonical_arch(arch);
        match (found, expected) {
            (None, _) => Some(format!(
                "metadata.yaml says architecture `{}`, which LXD and Incus do not know (they drop the image)",
                self.architecture
            )),
            (Some(f), Some(e)) if f != e => Some(format!(
                "metadata.yaml says architecture `{}` but the product's arch is `{arch}`",
                self.architecture
            )),
            _ => None,
        }
    }
}

/// A metadata tarball that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{}: {problem}", path.display())]
pub struct InspectError {
    /// The tarball.
    pub path: PathBuf,
    /// What is wrong.
    pub problem: String,
}

#[derive(Deserialize)]
struct RawMetadata {
    architecture: Option<String>,
    creation_date: Option<i64>,
    expiry_date: Option<i64>,
    #[serde(default)]
    properties: Option<BTreeMap<String, String>>,
}

enum Compression {
    Xz,
    Gzip,
    Zstd,
    None,
}

fn sniff(head: &[u8]) -> Compression {
    match head {
        [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => Compression::Xz,
        [0x1f, 0x8b, ..] => Compression::Gzip,
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Compression::Zstd,
        _ => Compression::None,
    }
}

/// A tarball being read through its decompressor.
pub type Tarball<'a> = tar::Archive<Box<dyn Read + 'a>>;

/// Opens a tarball compressed with xz, gzip or zstd, or not at all, for reading its entries.
/// Also returns the compression's name (`xz`, `gzip`, `zstd`, `tar`). `path` names it in errors.
pub fn open_tarball<'a>(
    reader: impl Read + 'a,
    path: &Path,
) -> Result<(Tarball<'a>, &'static str), InspectError> {
    let fail = |problem: String| InspectError {
        path: path.to_owned(),
        problem,
    };
    let mut buf = BufReader::with_capacity(1 << 16, reader);
    let head = buf
        .fill_buf()
        .map_err(|e| fail(format!("cannot read: {e}")))?
        .to_vec();
    if head.is_empty() {
        return Err(fail("is empty, not a tarball".into()));
    }
    let (decoder, what): (Box<dyn Read + 'a>, &'static str) = match sniff(&head) {
        Compression::Xz => (
            Box::new(liblzma::read::XzDecoder::new_multi_decoder(buf)),
            "xz",
        ),
        Compression::Gzip => (Box::new(flate2::read::MultiGzDecoder::new(buf)), "gzip"),
        Compression::Zstd => (
            Box::new(
                zstd::stream::read::Decoder::with_buffer(buf)
                    .map_err(|e| fail(format!("corrupt zstd data: {e}")))?,
            ),
            "zstd",
        ),
        Compression::None => {
            // An uncompressed tar (POSIX or GNU) has its magic at offset 257.
            if head.get(257..262) != Some(b"ustar".as_slice()) {
                return Err(fail(
                    "not a metadata tarball: neither xz, gzip, zstd nor tar data".into(),
                ));
            }
            (Box::new(buf), "tar")
        }
    };
    Ok((tar::Archive::new(decoder), what))
}

/// Reads metadata.yaml from a metadata tarball given as a reader, consuming the whole archive.
/// `path` names the file in errors.
pub fn read_metadata(reader: impl Read, path: &Path) -> Result<ImageMetadata, InspectError> {
    let fail = |problem: String| InspectError {
        path: path.to_owned(),
        problem,
    };
    let (mut archive, what) = open_tarball(reader, path).map_err(|e| match e.problem.as_str() {
        "is empty, not a tarball" => fail("is empty, not a metadata tarball".into()),
        _ => e,
    })?;
    let entries = archive
        .entries()
        .map_err(|e| fail(format!("not a metadata tarball ({what}): {e}")))?;
    let mut yaml: Option<String> = None;
    let mut count = 0usize;
    let mut lxc_config = false;
    for entry in entries {
        let mut entry = entry
            .map_err(|e| describe_archive_error(what, &e))
            .map_err(fail)?;
        count += 1;
        let name = entry
            .path()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        lxc_config |= name == "config" || name == "./config";
        if name == "metadata.yaml" || name == "./metadata.yaml" {
            if entry.size() > MAX_METADATA_YAML {
                return Err(fail(format!(
                    "metadata.yaml is {} bytes, more than the 1 MiB clients accept",
                    entry.size()
                )));
            }
            let mut text = String::new();
            entry
                .read_to_string(&mut text)
                .map_err(|e| fail(describe_archive_error(what, &e)))?;
            yaml = Some(text);
        } else {
            std::io::copy(&mut entry, &mut std::io::sink())
                .map_err(|e| fail(describe_archive_error(what, &e)))?;
        }
    }
    // Anything after the tar end marker must still decode, so a truncated stream is caught.
    let mut rest = archive.into_inner();
    std::io::copy(&mut rest, &mut std::io::sink())
        .map_err(|e| fail(describe_archive_error(what, &e)))?;
    if count == 0 {
        return Err(fail(format!(
            "not a metadata tarball ({what}): it holds no files"
        )));
    }
    let yaml = yaml.ok_or_else(|| {
        fail(if lxc_config {
            format!(
                "holds no metadata.yaml but an LXC `config`: this is classic LXC's metadata tarball; publish it as {} beside the root tarball, and give LXD and Incus their own metadata tarball",
                crate::tree::names::LXC_META
            )
        } else {
            "holds no metadata.yaml: is this the rootfs instead of the metadata tarball?".into()
        })
    })?;
    parse_metadata_yaml(&yaml, path)
}

/// Parses the text of a metadata.yaml; `path` names the tarball it came from.
pub fn parse_metadata_yaml(yaml: &str, path: &Path) -> Result<ImageMetadata, InspectError> {
    let fail = |problem: String| InspectError {
        path: path.to_owned(),
        problem,
    };
    let raw: RawMetadata = serde_saphyr::from_str(yaml)
        .map_err(|e| fail(format!("metadata.yaml: {}", e.without_snippet())))?;
    let architecture = raw
        .architecture
        .filter(|a| !a.trim().is_empty())
        .ok_or_else(|| fail("metadata.yaml has no `architecture`".into()))?;
    Ok(ImageMetadata {
        architecture,
        creation_date: raw.creation_date.unwrap_or(0),
        expiry_date: raw.expiry_date.filter(|&d| d > 0),
        properties: raw.properties.unwrap_or_default(),
    })
}

fn describe_archive_error(what: &str, e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof => format!("truncated {what} data: the file ends early"),
        _ => format!("corrupt {what} data: {e}"),
    }
}

/// Writes a metadata tarball (tar.xz holding metadata.yaml and optional templates), as
/// distrobuilder would. Used by the demo and by tests.
pub fn write_metadata_tarball(
    out: impl std::io::Write,
    metadata_yaml: &str,
    templates: &[(&str, &str)],
    mtime: u64,
) -> std::io::Result<()> {
    let xz = liblzma::write::XzEncoder::new(out, 6);
    let mut tar = tar::Builder::new(xz);
    let mut add = |name: &str, data: &[u8], mode: u32| -> std::io::Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_mtime(mtime);
        h.set_uid(0);
        h.set_gid(0);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        tar.append_data(&mut h, name, data)
    };
    add("metadata.yaml", metadata_yaml.as_bytes(), 0o644)?;
    for (name, body) in templates {
        add(&format!("templates/{name}"), body.as_bytes(), 0o644)?;
    }
    tar.into_inner()?.finish()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = "architecture: x86_64\ncreation_date: 1700000000\nexpiry_date: 1800000000\nproperties:\n  os: Debian\n  release: 12\n  variant: default\n  description: Debian 12 amd64\n";

    fn tarball() -> Vec<u8> {
        let mut out = Vec::new();
        write_metadata_tarball(
            &mut out,
            YAML,
            &[("hostname.tpl", "{{ container.name }}\n")],
            1,
        )
        .unwrap();
        out
    }

    #[test]
    fn reads_metadata_from_xz_gzip_zstd_and_plain_tar() {
        let xz = tarball();
        let plain = {
            let mut v = Vec::new();
            liblzma::read::XzDecoder::new(&xz[..])
                .read_to_end(&mut v)
                .unwrap();
            v
        };
        let gz = {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            std::io::Write::write_all(&mut e, &plain).unwrap();
            e.finish().unwrap()
        };
        let zst = zstd::encode_all(&plain[..], 1).unwrap();
        for bytes in [xz, plain, gz, zst] {
            let m = read_metadata(&bytes[..], Path::new("m")).unwrap();
            assert_eq!(m.architecture, "x86_64");
            assert_eq!(m.creation_date, 1_700_000_000);
            assert_eq!(m.expiry_date, Some(1_800_000_000));
            assert_eq!(m.properties["release"], "12");
        }
    }

    #[test]
    fn accepts_a_dot_slash_entry_name() {
        let mut tar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(YAML.len() as u64);
        h.set_cksum();
        tar.append_data(&mut h, "./metadata.yaml", YAML.as_bytes())
            .unwrap();
        let bytes = tar.into_inner().unwrap();
        assert_eq!(
            read_metadata(&bytes[..], Path::new("m"))
                .unwrap()
                .architecture,
            "x86_64"
        );
    }

    #[test]
    fn bad_input_is_named_and_explained() {
        let err = |bytes: &[u8]| {
            read_metadata(bytes, Path::new("v/lxd.tar.xz"))
                .unwrap_err()
                .to_string()
        };
        let e = err(b"this is not a tarball at all, just some text that goes on");
        assert!(e.starts_with("v/lxd.tar.xz: "), "{e}");
        assert!(e.contains("tarball") || e.contains("corrupt"), "{e}");
        let full = tarball();
        let e = err(&full[..full.len() / 2]);
        assert!(e.contains("truncated xz data"), "{e}");
        assert!(err(b"").contains("is empty"));
        let mut no_meta = Vec::new();
        write_metadata_tarball(&mut no_meta, "x", &[], 0).unwrap();
        // A tarball whose metadata.yaml lacks an architecture.
        assert!(err(&no_meta).contains("metadata.yaml"), "{}", err(&no_meta));
    }
}
