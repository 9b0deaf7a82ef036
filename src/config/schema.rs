//! tree.yml as written: the raw schema serde reads (every key of the original tool plus ours),
//! the inventory of keys with their positions (so unknown keys can be warnings, not errors), and
//! syntax errors located as `file:line:column`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::Deserialize;
use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde_saphyr::Spanned;

use super::ConfigError;
use super::mirrors::RawMirror;

#[derive(Deserialize)]
pub(super) struct RawTree {
    pub(super) prefix: Option<String>,
    pub(super) images_path: Option<String>,
    pub(super) datatype: Option<String>,
    pub(super) format: Option<String>,
    pub(super) distrobuilder: Option<String>,
    pub(super) deltas: Option<Spanned<i64>>,
    pub(super) delta_max_percent: Option<Spanned<i64>>,
    #[serde(default)]
    pub(super) products: Option<Vec<Spanned<RawProduct>>>,
    #[serde(default)]
    pub(super) mirrors: Option<Vec<Spanned<RawMirror>>>,
}

/// `aliases:` as a list, or as one scalar (the original accepted `aliases: x` as `[x]`).
pub(super) enum AliasList {
    One(String),
    Many(Vec<Spanned<String>>),
}

impl<'de> Deserialize<'de> for AliasList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = AliasList;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an alias or a list of aliases")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<AliasList, E> {
                Ok(AliasList::One(v.to_owned()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<AliasList, A::Error> {
                let mut out = Vec::new();
                while let Some(alias) = seq.next_element::<Spanned<String>>()? {
                    out.push(alias);
                }
                Ok(AliasList::Many(out))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
pub(super) struct RawProduct {
    pub(super) name: Option<Spanned<String>>,
    pub(super) arch: Option<Spanned<String>>,
    pub(super) release: Option<String>,
    pub(super) os: Option<String>,
    pub(super) release_title: Option<String>,
    pub(super) directory: Option<Spanned<String>>,
    pub(super) version: Option<String>,
    pub(super) prefix_path: Option<Spanned<String>>,
    pub(super) build_script_hook: Option<String>,
    pub(super) hidden: Option<bool>,
    pub(super) days: Option<Spanned<i64>>,
    pub(super) deltas: Option<Spanned<i64>>,
    pub(super) aliases: Option<Spanned<AliasList>>,
    pub(super) variant: Option<String>,
    pub(super) release_codename: Option<String>,
    pub(super) requirements: Option<Spanned<BTreeMap<String, String>>>,
    pub(super) expiry: Option<Spanned<String>>,
    pub(super) image_file: Option<Spanned<String>>,
    pub(super) vm: Option<bool>,
    pub(super) compression: Option<String>,
    pub(super) options: Option<Spanned<BTreeMap<String, String>>>,
    pub(super) timeout: Option<Spanned<String>>,
    pub(super) max_age: Option<Spanned<String>>,
    pub(super) distrobuilder: Option<String>,
}

/// The keys of the file with their positions, read in a second pass so that unknown keys can be
/// reported without making them errors.
pub(super) struct KeyInventory {
    pub(super) top: Vec<Spanned<String>>,
    pub(super) products: Vec<Vec<Spanned<String>>>,
}

impl<'de> Deserialize<'de> for KeyInventory {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = KeyInventory;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<KeyInventory, A::Error> {
                let mut inv = KeyInventory {
                    top: Vec::new(),
                    products: Vec::new(),
                };
                while let Some(key) = map.next_key::<Spanned<String>>()? {
                    if key.value == "products" {
                        let list: Option<Vec<Option<HashMapKeys>>> = map.next_value()?;
                        inv.products = list
                            .unwrap_or_default()
                            .into_iter()
                            .map(|k| k.map(|k| k.0).unwrap_or_default())
                            .collect();
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                    inv.top.push(key);
                }
                Ok(inv)
            }
        }
        d.deserialize_map(V)
    }
}

/// The keys of one mapping, in order.
struct HashMapKeys(Vec<Spanned<String>>);

impl<'de> Deserialize<'de> for HashMapKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = HashMapKeys;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<HashMapKeys, A::Error> {
                let mut keys = Vec::new();
                while let Some(key) = map.next_key::<Spanned<String>>()? {
                    map.next_value::<IgnoredAny>()?;
                    keys.push(key);
                }
                Ok(HashMapKeys(keys))
            }
        }
        d.deserialize_map(V)
    }
}

pub(super) fn syntax_error(path: &Path, err: &serde_saphyr::Error) -> ConfigError {
    let (line, column) = err
        .location()
        .map(|l| (l.line(), l.column()))
        .unwrap_or((0, 0));
    let text = err.without_snippet().to_string();
    let text = text.strip_prefix("error: ").unwrap_or(&text);
    // The parser prefixes "line N column M: "; we put the location in front of the file instead.
    let message = match text.split_once(": ") {
        Some((head, tail)) if head.starts_with("line ") && head.contains(" column ") => tail,
        _ => text,
    };
    ConfigError::Syntax {
        path: path.to_owned(),
        line,
        column,
        message: message.to_owned(),
    }
}

/// The keys serde derives for `T` (a struct with named fields), read from the derive itself so
/// that the list of known keys is never a hand-kept copy of the struct.
pub(super) fn field_names<T: serde::de::DeserializeOwned>() -> &'static [&'static str] {
    struct Names<'a>(&'a mut &'static [&'static str]);
    impl<'de> serde::Deserializer<'de> for Names<'_> {
        type Error = serde::de::value::Error;
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(serde::de::Error::custom("only the field names were wanted"))
        }
        fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
            Err(serde::de::Error::custom("not a struct"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
            ignored_any
        }
    }
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Names(&mut fields));
    fields
}

/// Warnings for the keys of `keys` that the schema does not know, each located.
pub(super) fn unknown_keys(
    keys: &KeyInventory,
    at: &dyn Fn(&serde_saphyr::Location) -> String,
) -> Vec<String> {
    let top_keys = field_names::<RawTree>();
    let product_keys = field_names::<RawProduct>();
    let mut warnings = Vec::new();
    for key in &keys.top {
        if !top_keys.contains(&key.value.as_str()) {
            warnings.push(format!(
                "{}: unknown key `{}` ignored",
                at(&key.referenced),
                key.value
            ));
        }
    }
    for key in keys.products.iter().flatten() {
        if !product_keys.contains(&key.value.as_str()) {
            warnings.push(format!(
                "{}: unknown product key `{}` ignored",
                at(&key.referenced),
                key.value
            ));
        }
    }
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_known_keys_come_from_the_schema() {
        assert_eq!(
            field_names::<RawTree>(),
            [
                "prefix",
                "images_path",
                "datatype",
                "format",
                "distrobuilder",
                "deltas",
                "delta_max_percent",
                "products",
                "mirrors"
            ]
        );
        let product = field_names::<RawProduct>();
        for key in [
            "name",
            "arch",
            "aliases",
            "requirements",
            "max_age",
            "distrobuilder",
            "deltas",
        ] {
            assert!(product.contains(&key), "{key}: {product:?}");
        }
        assert_eq!(product.len(), 24, "{product:?}");
    }
}
