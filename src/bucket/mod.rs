//! A tree in an S3-compatible bucket (`s3://BUCKET/PREFIX`): the same keys a local tree has
//! (image files under their product folders, each product's `ssb.json`, `streams/v1/index.json`),
//! written so that several publishers can work at once and readers, caches included, never see
//! a broken catalog.
//!
//! The write order (see docs/design.md, "Object storage"):
//!
//! 1. image files, each in a streaming multipart upload hashed on the way (`upload`);
//! 2. each product's `ssb.json`, merged with what the bucket holds and replaced with a
//!    conditional put on its ETag (`push`);
//! 3. the products file under a content-addressed name that is never overwritten, then
//!    `index.json` pointing at it, replaced with a conditional put on the ETag read before the
//!    manifests were (`catalog`).
//!
//! Everything here is async (object_store); the commands run it on a runtime of their own.

pub mod catalog;
mod error;
pub mod inventory;
pub mod mirror;
pub mod push;
pub mod upload;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
pub use error::BucketError;
use error::{describe, is_missing_object};
use futures_util::StreamExt as _;
use object_store::aws::{AmazonS3, AmazonS3Builder, S3ConditionalPut};
use object_store::path::Path as Key;
use object_store::signer::Signer as _;
use object_store::{
    Attribute, Attributes, GetOptions, ObjectStore, ObjectStoreExt as _, PutMode, PutOptions,
    PutPayload, UpdateVersion,
};

/// The URL scheme of a bucket target.
pub const SCHEME: &str = "s3://";

/// A bucket and the prefix the tree lives under: `s3://BUCKET/PREFIX`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BucketUrl {
    /// The bucket.
    pub bucket: String,
    /// The folder of the tree in the bucket, without leading or trailing `/` (empty: the top).
    pub prefix: String,
}

impl BucketUrl {
    /// `Some` for an `s3://` target, `None` for anything else (a local folder, an rsync
    /// destination); an `s3://` target that names no valid bucket is an error.
    pub fn parse(target: &str) -> Result<Option<Self>, BucketError> {
        let Some(rest) = target.strip_prefix(SCHEME) else {
            return Ok(None);
        };
        let bad = |why: &str| BucketError::Url {
            url: target.to_owned(),
            why: why.to_owned(),
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        // S3's rules for bucket names: 3 to 63 lower-case letters, digits, dots and hyphens,
        // starting and ending with a letter or digit.
        let valid = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
            && bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
            && bucket.ends_with(|c: char| c.is_ascii_alphanumeric());
        if !valid {
            return Err(bad(
                "the bucket name must be 3 to 63 lower-case letters, digits, dots or hyphens (s3://BUCKET/PREFIX)",
            ));
        }
        let prefix = prefix.trim_matches('/');
        if prefix
            .split('/')
            .any(|s| s == "." || s == ".." || (s.is_empty() && !prefix.is_empty()))
        {
            return Err(bad(
                "the prefix has an empty, `.` or `..` segment (s3://BUCKET/PREFIX)",
            ));
        }
        if prefix.bytes().any(|b| b.is_ascii_control()) {
            return Err(bad("the prefix has a control character"));
        }
        Ok(Some(Self {
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
        }))
    }
}

impl fmt::Display for BucketUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}", self.bucket)?;
        if !self.prefix.is_empty() {
            write!(f, "/{}", self.prefix)?;
        }
        Ok(())
    }
}

/// How the bucket is reached, the way S3 tools take it (`AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`, `AWS_ENDPOINT_URL`), resolved
/// by the command line; the library never reads the environment.
#[derive(Clone, Default)]
pub struct S3Settings {
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    pub region: Option<String>,
    /// A non-AWS server (`http://127.0.0.1:8333`, `https://minio.example`).
    pub endpoint: Option<String>,
    /// Plain http to a host other than loopback (`--s3-allow-http`): credentials and images
    /// then cross the network in the clear.
    pub allow_http: bool,
}

impl fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secret.
        f.debug_struct("S3Settings")
            .field("access_key_id", &self.access_key_id)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("allow_http", &self.allow_http)
            .finish_non_exhaustive()
    }
}

/// What an object is, for its `Content-Type` and its `Cache-Control` (a CDN in front of the
/// bucket caches image files and catalog snapshots for ever, the index briefly).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectKind {
    /// An image file: never changes under its name.
    Image,
    /// A products-file snapshot (`images-<sha256>.json`): never changes under its name.
    Snapshot,
    /// `streams/v1/index.json`: replaced by every publish.
    Index,
    /// A product's `ssb.json`: replaced by every publish of the product.
    Manifest,
    /// The bucket's own state under `.ssb/`.
    State,
}

/// How long a CDN or client may keep the index without asking again. Clients cache the whole
/// catalog for an hour on their own; this bounds what a CDN adds to that.
pub const INDEX_MAX_AGE: Duration = Duration::from_secs(60);

impl ObjectKind {
    fn attributes(self, key: &str) -> Attributes {
        let json = "application/json";
        let (content_type, cache) = match self {
            ObjectKind::Image => (
                crate::tree::names::content_type(key.rsplit('/').next().unwrap_or(key))
                    .unwrap_or("application/octet-stream"),
                "public, max-age=31536000, immutable",
            ),
            ObjectKind::Snapshot => (json, "public, max-age=31536000, immutable"),
            ObjectKind::Index => (json, "public, max-age=60"),
            ObjectKind::Manifest | ObjectKind::State => (json, "no-cache"),
        };
        Attributes::from_iter([
            (Attribute::ContentType, content_type),
            (Attribute::CacheControl, cache),
        ])
    }
}

/// How a small object is written.
#[derive(Clone, Debug)]
pub enum Condition {
    /// Whatever is there.
    Overwrite,
    /// Only when no object has the key (If-None-Match: *).
    Absent,
    /// Only when the object still has this ETag (If-Match).
    Matches(String),
}

/// An object as listed.
#[derive(Clone, Debug)]
pub struct Listed {
    /// Its key relative to the tree (the prefix taken off).
    pub rel: String,
    pub size: u64,
    pub last_modified: jiff::Timestamp,
}

/// A tree in a bucket, and the client that reaches it.
#[derive(Clone, Debug)]
pub struct Bucket {
    store: Arc<AmazonS3>,
    url: BucketUrl,
}

/// Retries of one request on a connection error or a 5xx: few and short, so a server that is
/// gone is reported in seconds, not minutes.
fn retry() -> object_store::RetryConfig {
    object_store::RetryConfig {
        backoff: object_store::BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            base: 2.0,
        },
        max_retries: 3,
        retry_timeout: Duration::from_secs(20),
    }
}

/// True when the URL's host is a loopback address or `localhost`.
fn is_loopback_url(endpoint: &str) -> bool {
    let Some(rest) = endpoint.strip_prefix("http://") else {
        return false;
    };
    let host_port = rest.split('/').next().unwrap_or("");
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        host_port.rsplit_once(':').map_or(host_port, |(h, _)| h)
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl Bucket {
    /// A client for `url`. Plain http is taken only for a loopback endpoint or when
    /// `allow_http` says so.
    pub fn open(url: BucketUrl, s3: &S3Settings) -> Result<Self, BucketError> {
        let config = |why: String| BucketError::Config {
            url: url.to_string(),
            why,
        };
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&url.bucket)
            .with_region(s3.region.as_deref().unwrap_or("us-east-1"))
            .with_conditional_put(S3ConditionalPut::ETagMatch)
            .with_retry(retry());
        // No deadline on a whole request (object_store's default is 30 s, which cut off every
        // GET of a large image streamed to a slow client or hashed by verify), only on
        // connecting and on silence.
        let mut client = object_store::ClientOptions::new()
            .with_timeout_disabled()
            .with_connect_timeout(Duration::from_secs(10))
            .with_read_timeout(Duration::from_secs(60));
        if let Some(endpoint) = &s3.endpoint {
            let endpoint = endpoint.trim_end_matches('/');
            if endpoint.starts_with("http://") {
                if !s3.allow_http && !is_loopback_url(endpoint) {
                    return Err(config(format!(
                        "the endpoint {endpoint} is plain http to a host that is not loopback: credentials and images would cross the network in the clear; use https, or pass --s3-allow-http if the network is trusted"
                    )));
                }
                client = client.with_allow_http(true);
            } else if !endpoint.starts_with("https://") {
                return Err(config(format!(
                    "the endpoint {endpoint} (AWS_ENDPOINT_URL) must start with https:// or http://"
                )));
            }
            // Non-AWS servers (SeaweedFS, MinIO, Garage) answer path-style requests.
            builder = builder
                .with_endpoint(endpoint)
                .with_virtual_hosted_style_request(false);
        }
        builder = builder.with_client_options(client);
        match (&s3.access_key_id, &s3.secret_access_key) {
            (Some(id), Some(secret)) => {
                builder = builder
                    .with_access_key_id(id)
                    .with_secret_access_key(secret);
                if let Some(token) = &s3.session_token {
                    builder = builder.with_token(token);
                }
            }
            (None, None) => {
                return Err(config(
                    "no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY".into(),
                ));
            }
            _ => {
                return Err(config(
                    "set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, not one of them".into(),
                ));
            }
        }
        let store = builder
            .build()
            .map_err(|e| config(crate::error_chain(&e)))?;
        Ok(Self {
            store: Arc::new(store),
            url,
        })
    }

    /// The bucket and prefix.
    pub fn url(&self) -> &BucketUrl {
        &self.url
    }

    /// The full key of `rel` (a path relative to the tree).
    pub fn key(&self, rel: &str) -> String {
        let rel = rel.trim_start_matches('/');
        if self.url.prefix.is_empty() {
            rel.to_owned()
        } else {
            format!("{}/{rel}", self.url.prefix)
        }
    }

    fn path(&self, rel: &str) -> Key {
        // Parsed, not encoded: version names carry `:`, which keys take as they are.
        Key::parse(self.key(rel)).unwrap_or_else(|_| Key::from(self.key(rel)))
    }

    fn fail(&self, rel: &str, op: &'static str, source: object_store::Error) -> BucketError {
        let (code, detail) = describe(&source);
        BucketError::Request {
            url: self.url.to_string(),
            key: self.key(rel),
            op,
            code,
            detail,
            source: Box::new(source),
        }
    }

    /// An object's bytes and ETag, or `None` when there is no such object.
    pub async fn get(&self, rel: &str) -> Result<Option<(Bytes, Option<String>)>, BucketError> {
        match self
            .store
            .get_opts(&self.path(rel), GetOptions::new())
            .await
        {
            Ok(got) => {
                let etag = got.meta.e_tag.clone();
                let bytes = got.bytes().await.map_err(|e| self.fail(rel, "GET", e))?;
                Ok(Some((bytes, etag)))
            }
            Err(e) if is_missing_object(&e) => Ok(None),
            Err(e) => Err(self.fail(rel, "GET", e)),
        }
    }

    /// An object's bytes, or part of them, as a stream, with its size and ETag; `None` when
    /// there is no such object.
    pub async fn get_stream(
        &self,
        rel: &str,
        range: Option<std::ops::Range<u64>>,
    ) -> Result<Option<Streamed>, BucketError> {
        let opts = GetOptions::new().with_range(range);
        match self.store.get_opts(&self.path(rel), opts).await {
            Ok(got) => Ok(Some(Streamed {
                size: got.meta.size,
                range: got.range.clone(),
                etag: got.meta.e_tag.clone(),
                body: got.into_stream(),
            })),
            Err(e) if is_missing_object(&e) => Ok(None),
            Err(e) => Err(self.fail(rel, "GET", e)),
        }
    }

    /// Writes a small object in one request (conditional writes are single-part: servers
    /// honour If-Match on PUT, not always on a multipart completion). `Ok(None)`: the condition
    /// failed; `Ok(Some(etag))`: written.
    pub async fn put(
        &self,
        rel: &str,
        bytes: Bytes,
        kind: ObjectKind,
        condition: Condition,
    ) -> Result<Option<Option<String>>, BucketError> {
        let mode = match condition {
            Condition::Overwrite => PutMode::Overwrite,
            Condition::Absent => PutMode::Create,
            Condition::Matches(e_tag) => PutMode::Update(UpdateVersion {
                e_tag: Some(e_tag),
                version: None,
            }),
        };
        let opts = PutOptions {
            attributes: kind.attributes(rel),
            ..PutOptions::default()
        };
        let conditional = !matches!(mode, PutMode::Overwrite);
        let opts = PutOptions { mode, ..opts };
        match self
            .store
            .put_opts(&self.path(rel), PutPayload::from(bytes), opts)
            .await
        {
            Ok(put) => Ok(Some(put.e_tag)),
            // 412, or 409 for a conditional write racing another on the same key.
            Err(
                object_store::Error::Precondition { .. }
                | object_store::Error::AlreadyExists { .. },
            ) if conditional => Ok(None),
            Err(e) => Err(self.fail(rel, "PUT", e)),
        }
    }

    /// Every object under `rel_prefix` (a folder of the tree, or `""` for all of it).
    pub async fn list(&self, rel_prefix: &str) -> Result<Vec<Listed>, BucketError> {
        let prefix = self.key(rel_prefix);
        let prefix = prefix.trim_end_matches('/');
        // Parsed like every other key (from_iter would percent-encode `~`, `#`, `*`…).
        let key = (!prefix.is_empty()).then(|| self.path(rel_prefix));
        let mut stream = self.store.list(key.as_ref());
        let mut out = Vec::new();
        let top = if self.url.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.url.prefix)
        };
        while let Some(meta) = stream.next().await {
            let meta = meta.map_err(|e| self.fail(rel_prefix, "LIST", e))?;
            let full = meta.location.to_string();
            let Some(rel) = full.strip_prefix(&top) else {
                continue;
            };
            out.push(Listed {
                rel: rel.to_owned(),
                size: meta.size,
                last_modified: jiff::Timestamp::from_millisecond(
                    meta.last_modified.timestamp_millis(),
                )
                .unwrap_or(jiff::Timestamp::UNIX_EPOCH),
            });
        }
        Ok(out)
    }

    /// Removes an object (no error when it is already gone).
    pub async fn delete(&self, rel: &str) -> Result<(), BucketError> {
        match self.store.delete(&self.path(rel)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.fail(rel, "DELETE", e)),
        }
    }

    /// A URL that lets anyone holding it GET the object for `ttl` (`serve --redirect`).
    pub async fn presign(&self, rel: &str, ttl: Duration) -> Result<String, BucketError> {
        self.store
            .signed_url(object_store::signer::Method::GET, &self.path(rel), ttl)
            .await
            .map(|u| u.to_string())
            .map_err(|e| self.fail(rel, "presign", e))
    }

    fn store(&self) -> &AmazonS3 {
        &self.store
    }
}

/// An object being read.
pub struct Streamed {
    /// The whole object's size.
    pub size: u64,
    /// The bytes this stream carries.
    pub range: std::ops::Range<u64>,
    pub etag: Option<String>,
    pub body: futures_util::stream::BoxStream<'static, object_store::Result<Bytes>>,
}

/// A runtime for the commands that work on a bucket (the library's bucket code is async).
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = BucketUrl::parse("s3://images/tree/a/").unwrap().unwrap();
        assert_eq!((u.bucket.as_str(), u.prefix.as_str()), ("images", "tree/a"));
        assert_eq!(u.to_string(), "s3://images/tree/a");
        let top = BucketUrl::parse("s3://my.bucket-1").unwrap().unwrap();
        assert_eq!(top.prefix, "");
        assert_eq!(top.to_string(), "s3://my.bucket-1");
        assert!(BucketUrl::parse("/srv/images").unwrap().is_none());
        for bad in [
            "s3://",
            "s3://ab",
            "s3://Upper",
            "s3://b_x/x",
            "s3://bucket/a//b",
            "s3://bucket/../x",
            "s3://-bucket",
        ] {
            let e = BucketUrl::parse(bad).unwrap_err().to_string();
            assert!(e.starts_with(bad), "{bad}: {e}");
        }
    }

    #[test]
    fn plain_http_only_to_loopback() {
        assert!(is_loopback_url("http://127.0.0.1:8333"));
        assert!(is_loopback_url("http://localhost:9000/"));
        assert!(is_loopback_url("http://[::1]:9000"));
        assert!(!is_loopback_url("http://10.0.0.1:9000"));
        assert!(!is_loopback_url("https://127.0.0.1:9000"));
        let url = BucketUrl::parse("s3://images").unwrap().unwrap();
        let s3 = |endpoint: &str, allow_http| S3Settings {
            access_key_id: Some("k".into()),
            secret_access_key: Some("s".into()),
            endpoint: Some(endpoint.into()),
            allow_http,
            ..S3Settings::default()
        };
        let e = Bucket::open(url.clone(), &s3("http://s3.example:9000", false)).unwrap_err();
        assert!(e.to_string().contains("--s3-allow-http"), "{e}");
        Bucket::open(url.clone(), &s3("http://s3.example:9000", true)).unwrap();
        Bucket::open(url.clone(), &s3("http://127.0.0.1:8333", false)).unwrap();
        let e = Bucket::open(url.clone(), &s3("ftp://x", false)).unwrap_err();
        assert!(e.to_string().contains("AWS_ENDPOINT_URL"), "{e}");
        let e = Bucket::open(
            url,
            &S3Settings {
                access_key_id: Some("k".into()),
                ..S3Settings::default()
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("AWS_SECRET_ACCESS_KEY"), "{e}");
    }

    #[test]
    fn error_codes_from_xml() {
        let e = object_store::Error::Generic {
            store: "S3",
            source: "Client error with status 403 Forbidden: <?xml version=\"1.0\"?><Error><Code>InvalidAccessKeyId</Code><Message>The access key does not exist.</Message></Error>".into(),
        };
        let (code, detail) = describe(&e);
        assert_eq!(code.as_deref(), Some("InvalidAccessKeyId"));
        assert_eq!(detail, "The access key does not exist.");
    }
}
