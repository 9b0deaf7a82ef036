//! Who may write. Reads are public; POST, PUT and DELETE need the bearer token, compared in
//! constant time, unless the server was started with `--allow-anonymous-writes`.

use axum::http::{HeaderMap, header};
use sha2::{Digest as _, Sha256};

use super::error::RequestError;

/// The write policy for authentication.
#[derive(Clone, Debug)]
pub(crate) enum WriteAuth {
    /// Writes need `Authorization: Bearer <token>`; holds sha256(token).
    Token([u8; 32]),
    /// Anyone may write (explicitly asked for).
    Anonymous,
    /// No token and no anonymous writes: every write is refused.
    Disabled,
}

impl WriteAuth {
    pub(crate) fn new(token: Option<&str>, anonymous: bool) -> Self {
        match token {
            Some(t) => Self::Token(Sha256::digest(t.as_bytes()).into()),
            None if anonymous => Self::Anonymous,
            None => Self::Disabled,
        }
    }

    /// Checks the request's credentials.
    pub(crate) fn check(&self, headers: &HeaderMap) -> Result<(), RequestError> {
        let expected = match self {
            Self::Anonymous => return Ok(()),
            Self::Disabled => return Err(RequestError::WritesDisabled),
            Self::Token(expected) => expected,
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .ok_or(RequestError::MissingToken)?
            .as_bytes();
        let token = match given.split_first_chunk::<7>() {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case(b"bearer ") => rest.trim_ascii(),
            _ => return Err(RequestError::MissingToken),
        };
        let given: [u8; 32] = Sha256::digest(token).into();
        if crate::access::same_digest(&given, expected) {
            Ok(())
        } else {
            Err(RequestError::WrongToken)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, value.parse().unwrap());
        h
    }

    #[test]
    fn bearer_token() {
        let auth = WriteAuth::new(Some("s3cret"), false);
        assert!(auth.check(&with("Bearer s3cret")).is_ok());
        assert!(auth.check(&with("bearer s3cret")).is_ok());
        assert!(matches!(
            auth.check(&with("Bearer wrong")),
            Err(RequestError::WrongToken)
        ));
        assert!(matches!(
            auth.check(&with("Bearer s3cret2")),
            Err(RequestError::WrongToken)
        ));
        assert!(matches!(
            auth.check(&with("Basic czNjcmV0")),
            Err(RequestError::MissingToken)
        ));
        assert!(matches!(
            auth.check(&HeaderMap::new()),
            Err(RequestError::MissingToken)
        ));
    }

    #[test]
    fn anonymous_and_disabled() {
        assert!(WriteAuth::new(None, true).check(&HeaderMap::new()).is_ok());
        assert!(matches!(
            WriteAuth::new(None, false).check(&with("Bearer x")),
            Err(RequestError::WritesDisabled)
        ));
        // A token wins over --allow-anonymous-writes.
        assert!(
            WriteAuth::new(Some("t"), true)
                .check(&HeaderMap::new())
                .is_err()
        );
    }
}
