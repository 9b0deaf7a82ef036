//! From the raw schema to a validated [`TreeConfig`], in steps: the unknown keys (warnings), the
//! top-level keys, each product field by field, the mirrors; every problem is collected with
//! its `file:line:column`, and any problem makes the whole file an error.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde_saphyr::Spanned;

use super::expiry::HumanDuration;
use super::schema::{AliasList, KeyInventory, RawProduct, RawTree, syntax_error, unknown_keys};
use super::{
    BuildSpec, ConfigError, DEFAULT_DATATYPE, DEFAULT_FORMAT, DEFAULT_IMAGES_PATH, Origin,
    ProductSpec, TreeConfig, check_alias, check_relative_dir, mirrors,
};
use crate::format::{Requirements, arch};

/// Formats a position as `file:line:column`.
type At<'a> = &'a dyn Fn(&serde_saphyr::Location) -> String;

impl TreeConfig {
    /// Validates tree.yml text; `path` is only used in messages and origins.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let raw: RawTree = serde_saphyr::from_str(text).map_err(|e| syntax_error(path, &e))?;
        let keys: KeyInventory =
            serde_saphyr::from_str(text).map_err(|e| syntax_error(path, &e))?;
        let at =
            |l: &serde_saphyr::Location| format!("{}:{}:{}", path.display(), l.line(), l.column());
        let warnings = unknown_keys(&keys, &at);

        let mut problems = Vec::new();
        let images_path = nonempty(raw.images_path).unwrap_or_else(|| DEFAULT_IMAGES_PATH.into());
        let datatype = nonempty(raw.datatype).unwrap_or_else(|| DEFAULT_DATATYPE.into());
        let format = nonempty(raw.format).unwrap_or_else(|| DEFAULT_FORMAT.into());
        let products = products(path, raw.products.unwrap_or_default(), &at, &mut problems);
        let mirrors = mirrors::parse(raw.mirrors.unwrap_or_default(), &at, &mut problems);
        let deltas = bounded(
            &at,
            &mut problems,
            "deltas",
            raw.deltas,
            0,
            crate::delta::MAX_DELTAS,
        )
        .unwrap_or(0);
        let delta_max_percent = bounded(
            &at,
            &mut problems,
            "delta_max_percent",
            raw.delta_max_percent,
            1,
            100,
        )
        .map_or(crate::delta::DEFAULT_MAX_PERCENT, |p| p as u8);
        if let Err(why) = check_relative_dir(&images_path) {
            problems.push(format!(
                "{}: `images_path: {images_path}` {why}",
                path.display()
            ));
        }
        if !problems.is_empty() {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                problems,
            });
        }
        Ok(Self {
            file: Some(path.to_owned()),
            prefix: raw.prefix.unwrap_or_default().trim().to_owned(),
            images_path: images_path.trim_matches('/').to_owned(),
            datatype,
            format,
            products,
            distrobuilder: nonempty(raw.distrobuilder),
            mirrors,
            deltas,
            delta_max_percent,
            warnings,
        })
    }
}

/// An integer key within `min..=max`; out of range is a located problem.
fn bounded(
    at: At<'_>,
    problems: &mut Vec<String>,
    key: &str,
    value: Option<Spanned<i64>>,
    min: u32,
    max: u32,
) -> Option<u32> {
    let v = value?;
    match u32::try_from(v.value) {
        Ok(n) if (min..=max).contains(&n) => Some(n),
        _ => {
            problems.push(format!(
                "{}: `{key}: {}` must be between {min} and {max}",
                at(&v.referenced),
                v.value
            ));
            None
        }
    }
}

/// A trimmed value, or `None` when empty.
fn nonempty(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

/// The products in file order; a product without a name is reported and skipped, a name
/// declared twice is reported with where it came first.
fn products(
    path: &Path,
    raw: Vec<Spanned<RawProduct>>,
    at: At<'_>,
    problems: &mut Vec<String>,
) -> Vec<ProductSpec> {
    let mut products = Vec::new();
    let mut seen: HashMap<String, String> = HashMap::new();
    for product in raw {
        let here = at(&product.referenced);
        let origin = Origin::TreeYml {
            file: path.to_owned(),
            line: product.referenced.line(),
            column: product.referenced.column(),
        };
        let p = product.value;
        let Some(name) = p.name.clone().filter(|n| !n.value.trim().is_empty()) else {
            problems.push(format!("{here}: product without a `name`"));
            continue;
        };
        let name_at = at(&name.referenced);
        if let Some(first) = seen.get(&name.value) {
            problems.push(format!(
                "{name_at}: duplicate product name `{}` (first declared at {first})",
                name.value
            ));
        } else {
            seen.insert(name.value.clone(), name_at);
        }
        let mut check = Fields {
            at,
            problems: &mut *problems,
            here: &here,
            name: &name.value,
        };
        products.push(check.product(p, name.value.clone(), origin));
    }
    products
}

/// Checks the fields of one product, pushing a located problem for each bad one.
struct Fields<'a> {
    at: At<'a>,
    problems: &'a mut Vec<String>,
    /// Where the product starts.
    here: &'a str,
    /// Its name, for messages.
    name: &'a str,
}

impl Fields<'_> {
    /// The product; fields are checked in file-format order so problems come out in that order.
    fn product(&mut self, p: RawProduct, name: String, origin: Origin) -> ProductSpec {
        let arch = self.arch(p.arch);
        let directory = self.directory(p.directory);
        let days = self.days(p.days);
        let deltas = bounded(
            self.at,
            self.problems,
            "deltas",
            p.deltas,
            0,
            crate::delta::MAX_DELTAS,
        );
        let aliases = self.aliases(p.aliases);
        let requirements = self.requirements(p.requirements);
        let expiry = self.duration("expiry", p.expiry);
        let timeout = self.duration("timeout", p.timeout);
        let max_age = self.duration("max_age", p.max_age);
        let image_file = self.image_file(p.image_file);
        let options = self.options(p.options);
        let prefix_path = self.prefix_path(p.prefix_path);
        ProductSpec {
            name,
            arch,
            release: nonempty(p.release),
            os: nonempty(p.os),
            release_title: nonempty(p.release_title),
            directory,
            version: nonempty(p.version),
            prefix_path,
            build_script_hook: nonempty(p.build_script_hook),
            hidden: p.hidden.unwrap_or(false),
            days,
            deltas,
            aliases,
            variant: nonempty(p.variant),
            release_codename: nonempty(p.release_codename),
            requirements,
            expiry,
            build: BuildSpec {
                image_file,
                vm: p.vm.unwrap_or(false),
                compression: nonempty(p.compression),
                options: options.unwrap_or_default(),
                timeout,
                max_age,
                distrobuilder: nonempty(p.distrobuilder),
            },
            origin,
        }
    }

    fn arch(&mut self, arch: Option<Spanned<String>>) -> String {
        let Some(a) = arch else {
            self.problems.push(format!(
                "{}: product `{}` has no `arch`",
                self.here, self.name
            ));
            return String::new();
        };
        if arch::canonical_arch(&a.value).is_none() {
            self.problems.push(format!(
                "{}: unknown arch `{}` for product `{}` (LXD and Incus would silently drop it); use one of: {}",
                (self.at)(&a.referenced),
                a.value,
                self.name,
                arch::all_arch_names().collect::<Vec<_>>().join(", ")
            ));
        }
        a.value
    }

    fn directory(&mut self, directory: Option<Spanned<String>>) -> String {
        let Some(d) = directory.filter(|d| !d.value.trim().is_empty()) else {
            self.problems.push(format!(
                "{}: product `{}` has no `directory`",
                self.here, self.name
            ));
            return String::new();
        };
        let dir = d.value.trim().trim_end_matches('/').to_owned();
        if let Err(why) = check_relative_dir(&dir) {
            self.problems.push(format!(
                "{}: `directory: {}` of product `{}` {why}",
                (self.at)(&d.referenced),
                d.value,
                self.name
            ));
        }
        dir
    }

    /// `days` below 1 means 1, as in the original.
    fn days(&mut self, days: Option<Spanned<i64>>) -> u32 {
        match days {
            None => 1,
            Some(d) if d.value <= 0 => 1,
            Some(d) => u32::try_from(d.value).unwrap_or_else(|_| {
                self.problems.push(format!(
                    "{}: `days: {}` is too large",
                    (self.at)(&d.referenced),
                    d.value
                ));
                1
            }),
        }
    }

    fn aliases(&mut self, aliases: Option<Spanned<AliasList>>) -> Vec<String> {
        let Some(list) = aliases else {
            return Vec::new();
        };
        let list = match list.value {
            AliasList::Many(many) => many,
            AliasList::One(one) => vec![Spanned::new(one, list.referenced, list.defined)],
        };
        let mut out = Vec::new();
        for alias in list {
            match check_alias(&alias.value) {
                Ok(()) => out.push(alias.value),
                Err(why) => self.problems.push(format!(
                    "{}: alias `{}` of product `{}` {why}",
                    (self.at)(&alias.referenced),
                    alias.value,
                    self.name
                )),
            }
        }
        out
    }

    fn requirements(
        &mut self,
        requirements: Option<Spanned<BTreeMap<String, String>>>,
    ) -> Option<Requirements> {
        let r = requirements?;
        if let Some(k) = r.value.keys().find(|k| k.trim().is_empty()) {
            self.problems.push(format!(
                "{}: empty requirement key `{k}`",
                (self.at)(&r.referenced)
            ));
        }
        (!r.value.is_empty()).then_some(r.value)
    }

    fn duration(&mut self, key: &str, value: Option<Spanned<String>>) -> Option<HumanDuration> {
        let e = value?;
        match HumanDuration::parse(&e.value) {
            Ok(d) => Some(d),
            Err(err) => {
                self.problems
                    .push(format!("{}: `{key}`: {err}", (self.at)(&e.referenced)));
                None
            }
        }
    }

    fn image_file(&mut self, image_file: Option<Spanned<String>>) -> Option<String> {
        let f = image_file?;
        let v = f.value.trim().to_owned();
        if v.is_empty() {
            return None;
        }
        if let Err(why) = check_relative_dir(&v) {
            self.problems.push(format!(
                "{}: `image_file: {v}` {why}",
                (self.at)(&f.referenced)
            ));
        }
        Some(v)
    }

    fn options(
        &mut self,
        options: Option<Spanned<BTreeMap<String, String>>>,
    ) -> Option<BTreeMap<String, String>> {
        let o = options?;
        if let Some(k) = o
            .value
            .keys()
            .find(|k| k.trim().is_empty() || k.contains('='))
        {
            self.problems.push(format!(
                "{}: option key `{k}` must be non-empty and have no `=`",
                (self.at)(&o.referenced)
            ));
        }
        Some(o.value)
    }

    fn prefix_path(&mut self, prefix_path: Option<Spanned<String>>) -> Option<String> {
        let pp = prefix_path?;
        let v = pp.value.trim().to_owned();
        if v.is_empty() {
            return None;
        }
        if !(v.starts_with("http://") || v.starts_with("https://")) {
            self.problems.push(format!(
                "{}: `prefix_path: {v}` must be an http:// or https:// URL",
                (self.at)(&pp.referenced)
            ));
        }
        Some(v)
    }
}
