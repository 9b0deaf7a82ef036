//! Architecture names as LXD and Incus know them (`shared/osarch`). A product whose `arch` the
//! clients do not know is silently dropped by them, so we refuse it up front.

/// Canonical kernel names and the aliases the clients accept for each (Incus 6.0 / LXD 5.0).
const ARCHES: &[(&str, &[&str])] = &[
    ("x86_64", &["amd64", "generic_64"]),
    ("i686", &["i386", "i586", "386", "x86", "generic_32"]),
    ("aarch64", &["arm64", "arm64_generic"]),
    (
        "armv7l",
        &[
            "armhf",
            "armhfp",
            "armv7a_hardfp",
            "armv7",
            "armv7a_vfpv3_hardfp",
        ],
    ),
    ("armv6l", &["armel", "arm"]),
    ("armv8l", &[]),
    ("ppc64le", &["ppc64el"]),
    ("ppc64", &["powerpc64"]),
    ("ppc", &["powerpc"]),
    ("s390x", &[]),
    ("mips", &["mipsel", "mipsle"]),
    ("mips64", &["mips64el", "mips64le"]),
    ("riscv32", &[]),
    ("riscv64", &[]),
    ("loongarch64", &["loong64"]),
];

/// The canonical name of an architecture the clients recognise, or `None`.
pub fn canonical_arch(name: &str) -> Option<&'static str> {
    ARCHES
        .iter()
        .find(|(canon, aliases)| *canon == name || aliases.contains(&name))
        .map(|(canon, _)| *canon)
}

/// Every name the clients accept, for error messages and alias checks.
pub fn all_arch_names() -> impl Iterator<Item = &'static str> {
    ARCHES
        .iter()
        .flat_map(|(canon, aliases)| std::iter::once(*canon).chain(aliases.iter().copied()))
}

/// The Debian name of an architecture (any name [`canonical_arch`] knows), as the layout and
/// images.linuxcontainers.org use it; `None` for one the clients do not know.
pub fn debian_arch(name: &str) -> Option<&'static str> {
    Some(match canonical_arch(name)? {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "i686" => "i386",
        "armv7l" => "armhf",
        "armv6l" => "armel",
        "ppc64le" => "ppc64el",
        "ppc64" => "powerpc64",
        "ppc" => "powerpc",
        "mips64" => "mips64el",
        "mips" => "mipsel",
        "loongarch64" => "loong64",
        other => other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_debian_names_to_kernel_names() {
        assert_eq!(canonical_arch("amd64"), Some("x86_64"));
        assert_eq!(canonical_arch("x86_64"), Some("x86_64"));
        assert_eq!(canonical_arch("arm64"), Some("aarch64"));
        assert_eq!(canonical_arch("ppc64el"), Some("ppc64le"));
        assert_eq!(canonical_arch("sparc64"), None);
        assert_eq!(canonical_arch(""), None);
    }

    #[test]
    fn debian_names_of_kernel_names_and_aliases() {
        for (name, debian) in [
            ("x86_64", "amd64"),
            ("amd64", "amd64"),
            ("aarch64", "arm64"),
            ("armv7l", "armhf"),
            ("armv6l", "armel"),
            ("ppc64le", "ppc64el"),
            ("ppc64", "powerpc64"),
            ("s390x", "s390x"),
            ("riscv64", "riscv64"),
            ("loongarch64", "loong64"),
        ] {
            assert_eq!(debian_arch(name), Some(debian), "{name}");
        }
        assert_eq!(debian_arch("sparc64"), None);
    }
}
