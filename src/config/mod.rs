//! `tree.yml`: the schema of the original tool (every key, same meaning) plus `variant`,
//! `release_codename`, `requirements` and `expiry`, loaded with file:line:column errors and
//! validated into [`TreeConfig`]. Unknown keys are warnings, as a typo should not stop a
//! nightly pipeline, but every rule the clients depend on is an error.
//!
//! The raw schema and the key inventory are in `schema`, the checks in `parse`, the `mirrors:`
//! section in `mirrors`, support durations in [`expiry`]. [`Overrides`] replace the top-level
//! keys (the `SSBUILDER_<KEY>` variables, resolved by the binary).

pub mod expiry;
mod mirrors;
mod parse;
mod schema;

pub use mirrors::{Filters, MirrorSpec};

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::config::expiry::HumanDuration;
use crate::format::{Requirements, arch};

/// Where a product was declared, for error messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A product of a tree.yml.
    TreeYml {
        /// The file.
        file: PathBuf,
        /// 1-based line.
        line: u64,
        /// 1-based column.
        column: u64,
    },
    /// A product found in the lxd-image-server layout.
    Layout {
        /// The product folder.
        dir: PathBuf,
    },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::TreeYml { file, line, column } => {
                write!(f, "{}:{line}:{column}", file.display())
            }
            Origin::Layout { dir } => write!(f, "{}", dir.display()),
        }
    }
}

/// A validated product declaration. Empty display fields are `None` and are filled from the
/// images' metadata.yaml when the catalog is built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProductSpec {
    /// Product id (`os:release:arch:variant` by convention).
    pub name: String,
    /// Architecture, a name the clients know.
    pub arch: String,
    /// Release.
    pub release: Option<String>,
    /// OS display name.
    pub os: Option<String>,
    /// Release title.
    pub release_title: Option<String>,
    /// Product folder, relative to the source/target dir and to `prefix_path`.
    pub directory: String,
    /// Product version (image property `version`).
    pub version: Option<String>,
    /// Where the product's ssb.json is fetched from, instead of the local tree.
    pub prefix_path: Option<String>,
    /// Executable run on the rootfs before packing (build-product).
    pub build_script_hook: Option<String>,
    /// Left out of images.json and index.json.
    pub hidden: bool,
    /// How many versions build-product keeps (the original's name).
    pub days: u32,
    /// Deltas per version (`deltas:`): from each of this many earlier versions. `None`: the
    /// tree's default ([`TreeConfig::deltas`]).
    pub deltas: Option<u32>,
    /// Aliases, validated.
    pub aliases: Vec<String>,
    /// Variant.
    pub variant: Option<String>,
    /// Release codename.
    pub release_codename: Option<String>,
    /// Requirements (written as both `requirements` and `lxd_requirements`).
    pub requirements: Option<Requirements>,
    /// Support duration from the newest build.
    pub expiry: Option<HumanDuration>,
    /// How build-product builds it.
    pub build: BuildSpec,
    /// Where it was declared.
    pub origin: Origin,
}

/// The build settings of a product (build-product).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BuildSpec {
    /// The distrobuilder definition's file name (default `image.yaml`).
    pub image_file: Option<String>,
    /// Also build a VM image into the same version.
    pub vm: bool,
    /// `--compression` for the pack commands.
    pub compression: Option<String>,
    /// distrobuilder `-o key=value` overrides.
    pub options: BTreeMap<String, String>,
    /// Time limit of one build.
    pub timeout: Option<HumanDuration>,
    /// Versions older than this are purged.
    pub max_age: Option<HumanDuration>,
    /// The builder binary for this product.
    pub distrobuilder: Option<String>,
}

/// Values that replace tree.yml's top-level keys, whatever the file says (the original took them
/// from `SSBUILDER_<KEY>`, as its viper did). An empty `prefix` counts (it makes item paths
/// relative); the other keys ignore empty values.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `prefix`.
    pub prefix: Option<String>,
    /// `images_path`.
    pub images_path: Option<String>,
    /// `datatype`.
    pub datatype: Option<String>,
    /// `format`.
    pub format: Option<String>,
    /// `distrobuilder`.
    pub distrobuilder: Option<String>,
    /// `deltas`.
    pub deltas: Option<u32>,
    /// `delta_max_percent`.
    pub delta_max_percent: Option<u8>,
}

/// A validated tree.yml, or the configuration of a layout-mode tree.
#[derive(Clone, Debug)]
pub struct TreeConfig {
    /// The tree.yml it was read from; `None` in layout mode (products found on disk).
    pub file: Option<PathBuf>,
    /// Prefix of item paths (a path or a URL); empty for relative paths.
    pub prefix: String,
    /// Where the products file goes, relative to the target dir (`streams/v1`).
    pub images_path: String,
    /// Index datatype (`image-downloads`).
    pub datatype: String,
    /// Products file format (`products:1.0`).
    pub format: String,
    /// The products, in file order.
    pub products: Vec<ProductSpec>,
    /// The builder binary for every product (`distrobuilder:`; env `SSBUILDER_DISTROBUILDER`).
    pub distrobuilder: Option<String>,
    /// Remotes to mirror (`mirrors:`), in file order.
    pub mirrors: Vec<MirrorSpec>,
    /// Deltas per version for products that do not say (`deltas:`; env `SSBUILDER_DELTAS`,
    /// `--deltas`); 0: none.
    pub deltas: u32,
    /// The largest delta published, as a percentage of the full squashfs
    /// (`delta_max_percent:`, default 60).
    pub delta_max_percent: u8,
    /// Non-fatal findings (unknown keys), already located.
    pub warnings: Vec<String>,
}

/// Top-level defaults of the original tool.
pub const DEFAULT_IMAGES_PATH: &str = crate::tree::names::STREAMS_DIR;
/// The only datatype LXD and Incus read.
pub const DEFAULT_DATATYPE: &str = "image-downloads";
/// The products file format.
pub const DEFAULT_FORMAT: &str = "products:1.0";

/// A tree.yml that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// YAML syntax or a type mismatch.
    #[error("{}:{line}:{column}: {message}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line (0 when unknown).
        line: u64,
        /// 1-based column (0 when unknown).
        column: u64,
        /// What the parser said.
        message: String,
    },
    /// Valid YAML that breaks the rules.
    #[error("{} has {} problem(s):\n{}", path.display(), problems.len(), problems.join("\n"))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// One located line per problem.
        problems: Vec<String>,
    },
}

impl TreeConfig {
    /// Reads and validates a tree.yml.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Applies overrides of the top-level keys.
    pub fn apply(&mut self, o: &Overrides) {
        if let Some(v) = &o.prefix {
            self.prefix = v.trim().to_owned();
        }
        let nonempty = |v: &Option<String>| {
            v.as_deref()
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        if let Some(v) = nonempty(&o.images_path) {
            self.images_path = v.trim_matches('/').to_owned();
        }
        if let Some(v) = nonempty(&o.datatype) {
            self.datatype = v;
        }
        if let Some(v) = nonempty(&o.format) {
            self.format = v;
        }
        if let Some(v) = nonempty(&o.distrobuilder) {
            self.distrobuilder = Some(v);
        }
        if let Some(n) = o.deltas {
            self.deltas = n;
        }
        if let Some(p) = o.delta_max_percent {
            self.delta_max_percent = p;
        }
    }

    /// How many deltas a new version of `product` gets.
    pub fn deltas_of(&self, product: &ProductSpec) -> u32 {
        product.deltas.unwrap_or(self.deltas)
    }

    /// The product with this name.
    pub fn product(&self, name: &str) -> Option<&ProductSpec> {
        self.products.iter().find(|p| p.name == name)
    }
}

/// `container`, or `vm` / `virtual-machine`.
pub fn parse_image_type(s: &str) -> Result<crate::format::ImageType, String> {
    match s.trim() {
        "container" => Ok(crate::format::ImageType::Container),
        "vm" | "virtual-machine" => Ok(crate::format::ImageType::VirtualMachine),
        other => Err(format!("`{other}` is not an image type (container or vm)")),
    }
}

/// Checks a folder given relative to the tree: no absolute path, no `..`.
pub fn check_relative_dir(dir: &str) -> Result<(), &'static str> {
    if dir.starts_with('/') {
        return Err("must be relative to the tree, not absolute");
    }
    if dir.split('/').any(|s| s == "..") {
        return Err("must not contain `..`");
    }
    if dir.contains('\\') || dir.chars().any(char::is_control) {
        return Err("must not contain backslashes or control characters");
    }
    Ok(())
}

/// Checks one alias as the clients will split and extend it.
pub fn check_alias(alias: &str) -> Result<(), String> {
    if alias.is_empty() {
        return Err("is empty".into());
    }
    if alias.contains(',') {
        return Err("contains `,` (clients split the alias list on commas)".into());
    }
    if alias.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("contains white space".into());
    }
    if let Some((_, last)) = alias.rsplit_once('/')
        && arch::canonical_arch(last).is_some()
    {
        return Err(format!(
            "ends in an architecture (`/{last}`): clients add `<alias>/<arch>` themselves"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<TreeConfig, ConfigError> {
        TreeConfig::parse(Path::new("tree.yml"), text)
    }

    const GOOD: &str = "\
prefix: ''
products:
  - name: funtoo-next:current:amd64:default
    arch: amd64
    release: current
    os: Funtoo
    release_title: Next
    directory: funtoo-next/
    version: 2024.01
    days: 2
    aliases: [funtoo/next]
    requirements:
      secureboot: false
    expiry: 1w2d
  - name: oracle:7:amd64:default
    arch: amd64
    release: 7
    directory: oracle
    aliases: oracle/7
    hidden: true
";

    #[test]
    fn reads_every_key_with_the_originals_coercions() {
        let t = parse(GOOD).unwrap();
        assert_eq!(t.images_path, "streams/v1");
        assert_eq!(t.datatype, "image-downloads");
        let p = &t.products[0];
        assert_eq!(p.directory, "funtoo-next");
        assert_eq!(p.version.as_deref(), Some("2024.01"));
        assert_eq!(p.days, 2);
        assert_eq!(
            p.requirements
                .as_ref()
                .unwrap()
                .get("secureboot")
                .map(String::as_str),
            Some("false")
        );
        assert_eq!(p.expiry.unwrap().seconds(), 9 * 86_400);
        assert_eq!(
            p.origin,
            Origin::TreeYml {
                file: "tree.yml".into(),
                line: 3,
                column: 5
            }
        );
        let q = &t.products[1];
        assert_eq!(q.release.as_deref(), Some("7"));
        assert_eq!(q.aliases, ["oracle/7"]);
        assert_eq!(q.days, 1);
        assert!(q.hidden);
    }

    #[test]
    fn reports_every_problem_with_its_position() {
        let text = "\
products:
  - name: a
    arch: sparc64
    directory: a
    aliases: ['x,y', 'ok', 'deb/12/amd64', '']
  - name: a
    arch: amd64
    directory: ../b
    expiry: 1q
";
        let err = parse(text).unwrap_err().to_string();
        for needle in [
            "tree.yml:3:11: unknown arch `sparc64`",
            "tree.yml:5:15: alias `x,y` of product `a` contains `,`",
            "alias `deb/12/amd64` of product `a` ends in an architecture",
            "alias `` of product `a` is empty",
            "tree.yml:6:11: duplicate product name `a` (first declared at tree.yml:2:11)",
            "tree.yml:8:16: `directory: ../b` of product `a` must not contain `..`",
            "tree.yml:9:13: `expiry`: `1q` is not a duration",
        ] {
            assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
        }
    }

    #[test]
    fn bad_types_and_syntax_are_located() {
        let err =
            parse("products:\n  - name: a\n    arch: amd64\n    directory: a\n    days: many\n")
                .unwrap_err()
                .to_string();
        assert!(err.starts_with("tree.yml:5:"), "{err}");
        let err = parse("products: [\n").unwrap_err().to_string();
        assert!(err.starts_with("tree.yml:1:"), "{err}");
        let err = parse("products:\n  - name: a\n    name: b\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("duplicate"), "{err}");
        let err = parse("products:\n  - name: a\n    arch: amd64\n    directory: a\n    requirements:\n      secureboot: [1]\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("tree.yml:6:"), "{err}");
    }

    #[test]
    fn unknown_keys_are_warnings_not_errors() {
        let t = parse(
            "prefx: x\nproducts:\n  - name: a\n    arch: amd64\n    directory: a\n    archs: x\n",
        )
        .unwrap();
        assert_eq!(
            t.warnings,
            [
                "tree.yml:1:1: unknown key `prefx` ignored",
                "tree.yml:6:5: unknown product key `archs` ignored"
            ]
        );
    }

    #[test]
    fn reads_the_build_keys() {
        let t = parse("distrobuilder: /opt/db\nproducts:\n  - name: a\n    arch: amd64\n    directory: a\n    vm: true\n    image_file: a.yaml\n    compression: zstd\n    options:\n      image.serial: \"7\"\n    timeout: 2h\n    max_age: 30d\n    distrobuilder: lxd-imagebuilder\n").unwrap();
        assert_eq!(t.distrobuilder.as_deref(), Some("/opt/db"));
        let b = &t.products[0].build;
        assert!(b.vm);
        assert_eq!(b.image_file.as_deref(), Some("a.yaml"));
        assert_eq!(b.compression.as_deref(), Some("zstd"));
        assert_eq!(b.options.get("image.serial").map(String::as_str), Some("7"));
        assert_eq!(b.timeout.unwrap().seconds(), 7200);
        assert_eq!(b.max_age.unwrap().seconds(), 30 * 86_400);
        assert_eq!(b.distrobuilder.as_deref(), Some("lxd-imagebuilder"));
        let err =
            parse("products:\n  - name: a\n    arch: amd64\n    directory: a\n    timeout: soon\n")
                .unwrap_err()
                .to_string();
        assert!(
            err.contains("tree.yml:5:14: `timeout`: `soon` is not a duration"),
            "{err}"
        );
    }

    #[test]
    fn reads_mirrors_and_locates_their_problems() {
        let t = parse(
            "mirrors:\n  - url: https://images.example.org/\n    os: [Debian]\n    release: ['12', '3.20']\n    alias: ['debian/*']\n    type: vm\n    keep: 2\n    ca_cert: /etc/ca.pem\n",
        )
        .unwrap();
        assert!(t.warnings.is_empty(), "{:?}", t.warnings);
        let m = &t.mirrors[0];
        assert_eq!(m.url, "https://images.example.org/");
        assert_eq!(m.filters.os, ["Debian"]);
        assert_eq!(m.filters.release, ["12", "3.20"]);
        assert_eq!(
            m.filters.image_type,
            Some(crate::format::ImageType::VirtualMachine)
        );
        assert_eq!(m.filters.keep, Some(2));
        assert_eq!(m.ca_cert.as_deref(), Some(Path::new("/etc/ca.pem")));

        let err = parse("mirrors:\n  - url: ftp://x\n    type: lxc\n    keep: 0\n")
            .unwrap_err()
            .to_string();
        for needle in [
            "tree.yml:2:5: mirror `url: ftp://x` must be an https://",
            "tree.yml:3:11: mirror `type`: `lxc` is not an image type",
            "tree.yml:4:11: mirror `keep: 0` must be at least 1",
        ] {
            assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
        }
        let err = parse("mirrors:\n  - url: https://x\n    oss: [a]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("oss"), "{err}");
    }

    #[test]
    fn deltas_default_per_tree_and_are_bounded() {
        let t = parse(
            "deltas: 2\ndelta_max_percent: 40\nproducts:\n  - name: a\n    arch: amd64\n    directory: a\n  - name: b\n    arch: amd64\n    directory: b\n    deltas: 0\n",
        )
        .unwrap();
        assert_eq!((t.deltas, t.delta_max_percent), (2, 40));
        assert_eq!(t.deltas_of(&t.products[0]), 2);
        assert_eq!(
            t.deltas_of(&t.products[1]),
            0,
            "a product's own setting wins"
        );
        let mut t = t;
        t.apply(&Overrides {
            deltas: Some(1),
            ..Overrides::default()
        });
        assert_eq!(t.deltas_of(&t.products[0]), 1);
        let e = parse("deltas: 17\ndelta_max_percent: 0\nproducts:\n  - name: a\n    arch: amd64\n    directory: a\n    deltas: -1\n")
            .unwrap_err()
            .to_string();
        for wanted in [
            "`deltas: 17` must be between 0 and 16",
            "`delta_max_percent: 0` must be between 1 and 100",
            "`deltas: -1` must be between 0 and 16",
        ] {
            assert!(e.contains(wanted), "{wanted}: {e}");
        }
        let layout_default = parse("products: []\n").unwrap();
        assert_eq!(layout_default.deltas, 0, "off unless asked");
    }

    #[test]
    fn env_overrides_top_level_keys() {
        let mut t = parse(GOOD).unwrap();
        t.apply(&Overrides {
            prefix: Some("../lxd-ns".into()),
            datatype: Some("  ".into()),
            ..Overrides::default()
        });
        assert_eq!(t.prefix, "../lxd-ns");
        assert_eq!(t.datatype, DEFAULT_DATATYPE, "an empty override is ignored");
    }
}
