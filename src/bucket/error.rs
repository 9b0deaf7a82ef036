//! What goes wrong with a bucket, said with the bucket, the key and the S3 error code.

/// What went wrong with a bucket: always names the bucket and key, and the S3 error code when
/// the server sent one.
#[derive(Debug, thiserror::Error)]
pub enum BucketError {
    /// Not a usable `s3://` target.
    #[error("{url}: {why}")]
    Url { url: String, why: String },
    /// The endpoint or credentials cannot make a client.
    #[error("{url}: {why}")]
    Config { url: String, why: String },
    /// A request failed.
    #[error("{url}: {op} {key}: {}{detail}", code.as_deref().map(|c| format!("{c}: ")).unwrap_or_default())]
    Request {
        url: String,
        /// The object's key in the bucket.
        key: String,
        /// What was being done (`GET`, `PUT`, `multipart upload`, `LIST`, `DELETE`).
        op: &'static str,
        /// The S3 error code (`NoSuchBucket`, `InvalidAccessKeyId`, `SignatureDoesNotMatch`…).
        code: Option<String>,
        /// What the server or the connection said, shortened.
        detail: String,
        #[source]
        source: Box<object_store::Error>,
    },
    /// What is being uploaded (a local file, a download) cannot be read.
    #[error("{url}: cannot read {from} to upload it as {key}: {source}")]
    Source {
        url: String,
        key: String,
        /// The file or URL.
        from: String,
        #[source]
        source: std::io::Error,
    },
    /// The bytes uploaded are not the ones the manifest or the remote catalog describes (a file
    /// changed since it was hashed, a download that is not what its catalog says): the upload
    /// was aborted and nothing of it is visible.
    #[error(
        "{url}: {key}: {from} {mismatch}: the upload was aborted (nothing of it is visible); publish again"
    )]
    Changed {
        url: String,
        key: String,
        from: String,
        /// What the bytes were against what they should be.
        mismatch: String,
    },
}

impl BucketError {
    /// The S3 error code, when the server sent one.
    pub fn code(&self) -> Option<&str> {
        match self {
            BucketError::Request { code, .. } => code.as_deref(),
            _ => None,
        }
    }
}

/// The server's error code in an S3 XML error body (`<Code>NoSuchBucket</Code>`), and the
/// message without the XML.
pub(super) fn describe(e: &object_store::Error) -> (Option<String>, String) {
    let text = crate::error_chain(e);
    let code = text
        .split_once("<Code>")
        .and_then(|(_, rest)| rest.split_once("</Code>"))
        .map(|(code, _)| code.to_owned())
        .or_else(|| match e {
            object_store::Error::NotFound { .. } => Some("NoSuchKey".into()),
            object_store::Error::Precondition { .. } => Some("PreconditionFailed".into()),
            object_store::Error::AlreadyExists { .. } => Some("PreconditionFailed".into()),
            _ => None,
        });
    let message = text
        .split_once("<Message>")
        .and_then(|(_, rest)| rest.split_once("</Message>"))
        .map(|(m, _)| m.to_owned());
    let mut detail = message.unwrap_or_else(|| {
        // Cut the XML body (and anything after it) out of object_store's message.
        text.split("<?xml")
            .next()
            .unwrap_or(&text)
            .trim()
            .to_owned()
    });
    if detail.len() > 600 {
        let mut end = 600;
        while !detail.is_char_boundary(end) {
            end -= 1;
        }
        detail.truncate(end);
        detail.push('…');
    }
    (code, detail)
}

/// A 404 for the object, not for the bucket (S3 answers a missing bucket with a 404 too, whose
/// code says `NoSuchBucket`: that one is an error to report, not an empty tree).
pub(super) fn is_missing_object(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::NotFound { .. })
        && describe(e).0.as_deref() != Some("NoSuchBucket")
}
