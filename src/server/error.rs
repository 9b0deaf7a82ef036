//! The one error type of the server module. Every variant names the file or address involved,
//! so a failed `serve` can be reported to the user without extra context.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("--read-users: {0}")]
    ReadUsers(#[from] crate::access::UsersError),

    #[error("cannot serve {path}: not a readable directory")]
    Root {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot read {path}")]
    ReadPem {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot parse {path}: {reason}")]
    ParsePem { path: PathBuf, reason: String },

    #[error("cannot use certificate {cert} with key {key}")]
    TlsConfig {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },

    #[error("cannot generate a self-signed certificate for {names:?}")]
    GenerateCert {
        names: Vec<String>,
        #[source]
        source: rcgen::Error,
    },

    #[error("{name:?} is neither an IP address nor a valid DNS name for the certificate")]
    InvalidSan { name: String },

    #[error("cannot write {path}")]
    WriteCert {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot load the products to index")]
    Products(#[source] crate::catalog::products::LoadError),

    #[error("cannot serve the bucket")]
    Bucket(#[source] Box<crate::bucket::catalog::BucketPublishError>),
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),

    #[error("server on {addr} failed")]
    Serve {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Why a write request was refused or failed. Every variant maps to its status code in
/// [`RequestError::status`], the one place that decides; the body is JSON `{"error": "…"}`.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RequestError {
    #[error("a write token is required: send `Authorization: Bearer <token>`")]
    MissingToken,

    #[error("the write token is wrong")]
    WrongToken,

    #[error(
        "writes are disabled: the server has no write token (--write-token-file or SSB_WRITE_TOKEN) and was not started with --allow-anonymous-writes"
    )]
    WritesDisabled,

    #[error("{method} is not allowed here (allowed: {allow})")]
    MethodNotAllowed { method: String, allow: &'static str },

    #[error("deletes are disabled (set ALLOW_DELETES=1 or --allow-deletes)")]
    DeletesDisabled,

    #[error("refused path {path:?}: {reason}")]
    BadPath { path: String, reason: String },

    #[error("{path} does not exist")]
    NotFound { path: String },

    #[error("{path} is a folder; name a file")]
    IsAFolder { path: String },

    #[error("the upload is larger than the limit of {limit} bytes (--max-upload-size)")]
    TooLarge { limit: u64 },

    #[error("bad multipart body: {reason}")]
    BadMultipart { reason: String },

    #[error("a multipart part's headers are longer than {max} bytes")]
    PartHeadersTooLong { max: usize },

    #[error("the multipart body has more than {max} parts")]
    TooManyParts { max: usize },

    #[error("the multipart body has no file part (a part with a filename)")]
    NoFilePart,

    #[error(
        "imports need the layout mode (images/<os>/<release>/<arch>/<variant>/<version>/), and this server publishes the products of its tree.yml; upload the image files into a product folder instead"
    )]
    ImportNeedsLayout,

    #[error(
        "an import takes one unified tarball, or a metadata tarball and its rootfs (squashfs, {} or qcow2), as file parts; got {got}",
        crate::format::RootfsKind::RootTarXz.ftype_str()
    )]
    ImportFileCount { got: String },

    #[error("multipart field `{name}`: {reason}")]
    BadField { name: String, reason: String },

    #[error("cannot import: {0}")]
    ImportRefused(String),

    #[error("cannot import: {0}")]
    ImportClash(String),

    #[error("{path} was not stored: {problem}")]
    BadImage { path: String, problem: String },

    #[error("the upload was interrupted: {reason}; nothing was stored")]
    Interrupted { reason: String },

    #[error("cannot store {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// A multipart body that cannot be parsed is the client's fault: 400 with the parser's words.
impl From<axum::extract::multipart::MultipartError> for RequestError {
    fn from(e: axum::extract::multipart::MultipartError) -> Self {
        Self::BadMultipart {
            reason: e.body_text(),
        }
    }
}

/// A request that is not multipart at all, for a handler that takes only multipart.
impl From<axum::extract::multipart::MultipartRejection> for RequestError {
    fn from(e: axum::extract::multipart::MultipartRejection) -> Self {
        Self::BadMultipart {
            reason: e.body_text(),
        }
    }
}

impl RequestError {
    pub(crate) fn status(&self) -> axum::http::StatusCode {
        use axum::http::StatusCode as S;
        match self {
            Self::MissingToken | Self::WrongToken => S::UNAUTHORIZED,
            Self::WritesDisabled => S::FORBIDDEN,
            Self::MethodNotAllowed { .. } | Self::DeletesDisabled => S::METHOD_NOT_ALLOWED,
            Self::BadPath { .. } | Self::BadMultipart { .. } | Self::NoFilePart => S::BAD_REQUEST,
            Self::Interrupted { .. } | Self::BadImage { .. } => S::BAD_REQUEST,
            Self::ImportFileCount { .. } | Self::BadField { .. } | Self::ImportRefused(_) => {
                S::BAD_REQUEST
            }
            Self::ImportNeedsLayout | Self::ImportClash(_) => S::CONFLICT,
            Self::NotFound { .. } => S::NOT_FOUND,
            Self::IsAFolder { .. } => S::CONFLICT,
            Self::TooLarge { .. } | Self::TooManyParts { .. } => S::PAYLOAD_TOO_LARGE,
            Self::PartHeadersTooLong { .. } => S::BAD_REQUEST,
            Self::Io { .. } => S::INTERNAL_SERVER_ERROR,
        }
    }
}

impl axum::response::IntoResponse for RequestError {
    fn into_response(self) -> axum::response::Response {
        use axum::http::header;
        let status = self.status();
        if status.is_server_error() {
            tracing::error!("{}", crate::error_chain(&self));
        } else {
            tracing::debug!("refused: {self}");
        }
        let body = serde_json::json!({ "error": self.to_string() }).to_string() + "\n";
        let mut response =
            (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
        let headers = response.headers_mut();
        match &self {
            Self::MissingToken | Self::WrongToken => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer realm=\"simplestreams-builder\""),
                );
            }
            Self::MethodNotAllowed { allow, .. } => {
                headers.insert(header::ALLOW, header::HeaderValue::from_static(allow));
            }
            Self::DeletesDisabled => {
                headers.insert(
                    header::ALLOW,
                    header::HeaderValue::from_static("GET, HEAD, POST, PUT"),
                );
            }
            _ => {}
        }
        response
    }
}
