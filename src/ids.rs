//! Names a client gives us, parsed once: the merchant, the product id, and the opaque tokens we
//! hand out (list cursors, entity tags).
//!
//! Parsing here (and only here) means a handler that holds a [`Merchant`] never re-checks it;
//! authentication will plug into the merchant extractor. Tokens are opaque on purpose: clients
//! must not build them, and we may change what is inside.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use crate::error::{Coded, ErrorCode};

/// A value from the client that is not acceptable.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IdError {
    #[error("merchant `{0}` must be 1-64 characters of A-Z a-z 0-9 . _ -")]
    Merchant(String),
    #[error("product id must be 1-{MAX_ID_LEN} bytes without `/` or control characters")]
    ProductId,
    #[error("invalid cursor (pass back the `next_cursor` of the previous page)")]
    Cursor,
    #[error("invalid entity tag in If-Match (pass back an `ETag` this API returned)")]
    ETag,
}

impl Coded for IdError {
    fn code(&self) -> ErrorCode {
        match self {
            IdError::Merchant(_) | IdError::ProductId => ErrorCode::InvalidField,
            IdError::Cursor | IdError::ETag => ErrorCode::InvalidRequest,
        }
    }
}

const MAX_ID_LEN: usize = 256;

/// A merchant name: 1-64 of `[A-Za-z0-9._-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Merchant(String);

impl Merchant {
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(IdError::Merchant(s.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Merchant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks a merchant's product id: 1-256 bytes, not blank, no `/`, no control characters.
pub fn validate_product_id(id: &str) -> Result<(), IdError> {
    if id.trim().is_empty()
        || id.len() > MAX_ID_LEN
        || id.chars().any(|c| c.is_control() || c == '/')
    {
        return Err(IdError::ProductId);
    }
    Ok(())
}

fn encode(tag: u8, values: &[i64]) -> String {
    let mut bytes = vec![tag];
    for v in values {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    URL_SAFE_NO_PAD.encode(bytes)
}

fn decode<const N: usize>(tag: u8, s: &str) -> Option<[i64; N]> {
    let bytes = URL_SAFE_NO_PAD.decode(s).ok()?;
    if bytes.len() != 1 + 8 * N || bytes[0] != tag {
        return None;
    }
    let mut out = [0i64; N];
    for (i, v) in out.iter_mut().enumerate() {
        *v = i64::from_le_bytes(bytes[1 + 8 * i..9 + 8 * i].try_into().ok()?);
    }
    Some(out)
}

/// The opaque position after which the next page of a list starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor(pub i64);

impl Cursor {
    pub fn encode(self) -> String {
        encode(b'c', &[self.0])
    }

    pub fn parse(s: &str) -> Result<Self, IdError> {
        decode::<1>(b'c', s)
            .filter(|[v]| *v >= 0)
            .map(|[v]| Cursor(v))
            .ok_or(IdError::Cursor)
    }
}

/// A product's entity tag: which product (ids are never reused) at which version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ETag {
    pub product_id: i64,
    pub version: i64,
}

impl ETag {
    /// The header value, quoted (a strong entity tag).
    pub fn header_value(self) -> String {
        format!("\"{}\"", encode(b'e', &[self.product_id, self.version]))
    }

    /// Parses one quoted strong entity tag as sent in `If-Match`.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let inner = s
            .trim()
            .strip_prefix('"')
            .and_then(|s| s.strip_suffix('"'))
            .ok_or(IdError::ETag)?;
        decode::<2>(b'e', inner)
            .map(|[product_id, version]| ETag {
                product_id,
                version,
            })
            .ok_or(IdError::ETag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(Merchant::parse("acme-shop_1.eu").is_ok());
        for bad in ["", "a b", "a/b", &"x".repeat(65)] {
            assert!(Merchant::parse(bad).is_err(), "{bad}");
        }
        assert!(validate_product_id("SKU 123").is_ok());
        assert!(validate_product_id(" ").is_err());
        assert!(validate_product_id("a/b").is_err());
    }

    #[test]
    fn tokens_round_trip_and_reject_garbage() {
        let c = Cursor(42);
        assert_eq!(Cursor::parse(&c.encode()).unwrap(), c);
        assert!(!c.encode().contains("42"), "opaque");
        for bad in [
            "",
            "42",
            "!!",
            &ETag {
                product_id: 1,
                version: 2,
            }
            .header_value(),
        ] {
            assert!(Cursor::parse(bad).is_err(), "{bad}");
        }
        let e = ETag {
            product_id: 7,
            version: 3,
        };
        assert_eq!(ETag::parse(&e.header_value()).unwrap(), e);
        assert!(ETag::parse("W/\"abc\"").is_err());
        assert!(ETag::parse(&Cursor(1).encode()).is_err());
    }
}
