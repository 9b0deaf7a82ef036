//! Decoding and vetting request paths before any file is touched.
//!
//! `ServeDir` already refuses `..`, but it would happily serve hidden files (our private
//! `.ssb/` state, including the TLS key) and it decodes `%2F` into a separator. This guard is
//! deliberately stricter than needed for valid catalogs: a simplestreams tree only ever holds
//! plain names, so anything odd is answered with a 404 that reveals nothing.

use std::path::PathBuf;

/// A request path that passed the guard: decoded, non-empty segments with no separators,
/// no hidden names, and no `.`/`..`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RequestPath {
    segments: Vec<String>,
}

impl RequestPath {
    /// Parses the path part of a request URI (no query). `None` means "answer 404".
    pub(crate) fn parse(raw: &str) -> Option<Self> {
        // Classic LXC's download template asks for `https://HOST/` + a path that already starts
        // with `/`, and joins `<folder>/` + `/rootfs.tar.xz`: runs of slashes are collapsed, as
        // every web server does. Nothing else changes: an empty last segment (a folder) is
        // still refused, and `%2F` is still not a separator.
        let collapsed;
        let raw = if raw.contains("//") {
            collapsed = collapse_slashes(raw);
            collapsed.as_str()
        } else {
            raw
        };
        let rest = raw.strip_prefix('/')?;
        if rest.is_empty() {
            return Some(Self { segments: vec![] });
        }
        // An empty segment (`a//b`, or a trailing `/` asking for a directory) never names a
        // file in a catalog; we never list directories, so refuse early.
        let last = rest.split('/').count() - 1;
        let segments = rest
            .split('/')
            .enumerate()
            .map(|(i, raw_segment)| {
                let decoded = percent_decode(raw_segment)?;
                is_served_segment(&decoded, i == last).then_some(decoded)
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Self { segments })
    }

    /// True for `/`, which gets a short note instead of a listing.
    pub(crate) fn is_root(&self) -> bool {
        self.segments.is_empty()
    }

    /// The path relative to the served root.
    pub(crate) fn to_relative(&self) -> PathBuf {
        self.segments.iter().collect()
    }

    /// The path relative to the served root, `/`-separated.
    pub(crate) fn to_relative_string(&self) -> String {
        self.segments.join("/")
    }

    /// The last segment, which decides content type and caching.
    pub(crate) fn file_name(&self) -> Option<&str> {
        self.segments.last().map(String::as_str)
    }

    /// True for the catalog files under `streams/`, which change on every publish.
    pub(crate) fn is_catalog_json(&self) -> bool {
        self.segments
            .first()
            .is_some_and(|s| s == crate::tree::names::STREAMS_TOP)
            && self
                .file_name()
                .is_some_and(|n| n.ends_with(".json") || n.ends_with(".json.gz"))
    }
}

/// `raw` with every run of `/` made one.
pub(crate) fn collapse_slashes(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        if c == '/' && out.ends_with('/') {
            continue;
        }
        out.push(c);
    }
    out
}

/// A path segment we serve: a plain name, or, as the last segment, a cached unified tarball
/// (hidden from the scans, but handed out by the direct-URL import; see [`crate::direct`]).
/// Nothing else hidden is ever served.
pub(crate) fn is_served_segment(name: &str, last: bool) -> bool {
    is_plain_name(name) || (last && crate::direct::is_cache_name(name))
}

pub(crate) use crate::tree::is_plain_name;

/// Strict percent-decoding of one segment: a malformed escape or a result that is not UTF-8
/// is refused rather than passed through, so what we vet is what the file system sees.
fn percent_decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_catalog_and_image_paths() {
        let cases = [
            ("/streams/v1/index.json", "streams/v1/index.json"),
            ("/streams/v1/images.json.gz", "streams/v1/images.json.gz"),
            (
                "/images/debian/12/amd64/default/20251123_12:13/rootfs.squashfs",
                "images/debian/12/amd64/default/20251123_12:13/rootfs.squashfs",
            ),
            (
                "/images/debian/12/amd64/default/20251123_12%3A13/incus.tar.xz",
                "images/debian/12/amd64/default/20251123_12:13/incus.tar.xz",
            ),
            ("/a%20b/c", "a b/c"),
            ("/x..y/file..name", "x..y/file..name"),
            ("/caf%C3%A9", "café"),
            (
                "/under_score-dash+plus~tilde",
                "under_score-dash+plus~tilde",
            ),
            // What classic LXC's download template asks for.
            ("//meta/1.0/index-system", "meta/1.0/index-system"),
            (
                "//images/alpine/3.20/amd64/default/20240101_00:00//rootfs.tar.xz",
                "images/alpine/3.20/amd64/default/20240101_00:00/rootfs.tar.xz",
            ),
            ("//etc/passwd", "etc/passwd"),
            ("/images///debian", "images/debian"),
        ];
        for (raw, expected) in cases {
            let parsed = RequestPath::parse(raw).unwrap_or_else(|| panic!("{raw} refused"));
            assert_eq!(parsed.to_relative(), PathBuf::from(expected), "{raw}");
            assert!(!parsed.is_root(), "{raw}");
        }
    }

    #[test]
    fn root_is_root() {
        assert!(RequestPath::parse("/").unwrap().is_root());
    }

    #[test]
    fn refuses_escapes_and_odd_names() {
        let cases = [
            "",
            "relative/path",
            "/..",
            "/../etc/passwd",
            "/images/../../etc/passwd",
            "/images/..",
            "/%2e%2e/etc/passwd",
            "/%2E%2E/etc/passwd",
            "/.%2e/x",
            "/images/%2e",
            "/.",
            "/./streams/v1/index.json",
            "/images%2F..%2F..%2Fetc%2Fpasswd",
            "/images%2fdebian",
            "/.ssb/tls/key.pem",
            "/%2essb/tls/key.pem",
            "/images/.hidden",
            "/images/.git/config",
            "/images\\..\\secret",
            "/images/a%5cb",
            "/images/a%00b",
            "/images/a%0ab",
            "/images/a%7fb",
            "/images/",
            "//images//",
            "//.ssb/tls/key.pem",
            "//images/..//x",
            "/images/%2F/debian",
            "/streams/v1/",
            "/images/%",
            "/images/%2",
            "/images/%zz",
            "/images/%C3",
            "/images/%ff%fe",
        ];
        for raw in cases {
            assert_eq!(RequestPath::parse(raw), None, "{raw:?} should be refused");
        }
    }

    #[test]
    fn catalog_json_detection() {
        let yes = [
            "/streams/v1/index.json",
            "/streams/v1/images.json",
            "/streams/v1/images.json.gz",
        ];
        let no = [
            "/",
            "/images/x.json",
            "/streams/v1/images.json.xz",
            "/streams",
        ];
        for raw in yes {
            assert!(RequestPath::parse(raw).unwrap().is_catalog_json(), "{raw}");
        }
        for raw in no {
            assert!(!RequestPath::parse(raw).unwrap().is_catalog_json(), "{raw}");
        }
    }

    #[test]
    fn plain_names() {
        assert!(is_plain_name("20251123_12:13"));
        assert!(is_plain_name("rootfs.squashfs"));
        for bad in ["", ".", "..", ".ssb", "a/b", "a\\b", "a\0b", "a\tb"] {
            assert!(!is_plain_name(bad), "{bad:?}");
        }
    }
}
