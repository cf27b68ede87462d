//! Every error code the API can answer, declared once: its HTTP status and what it means.
//!
//! Each domain error says its own code through [`Coded`], with an exhaustive `match` and no
//! catch-all arm, so a new error variant cannot silently become a 500. The HTTP layer turns a
//! coded error into the JSON body; `docs/api.md` is tested against [`ErrorCode::ALL`]. Codes are
//! part of the API: never rename one. This module must never depend on HTTP types beyond the
//! status number.

macro_rules! error_codes {
    ($( $variant:ident = $code:literal, $status:literal, $what:literal; )*) => {
        /// A stable, machine-readable error code.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $( #[doc = $what] $variant, )*
        }

        impl ErrorCode {
            /// Every code, in the order of the table in `docs/api.md`.
            pub const ALL: &'static [ErrorCode] = &[$( ErrorCode::$variant, )*];

            /// The code as it appears in responses.
            pub const fn as_str(self) -> &'static str {
                match self { $( ErrorCode::$variant => $code, )* }
            }

            /// The HTTP status it is answered with.
            pub const fn status(self) -> u16 {
                match self { $( ErrorCode::$variant => $status, )* }
            }

            /// One line on when it happens.
            pub const fn description(self) -> &'static str {
                match self { $( ErrorCode::$variant => $what, )* }
            }
        }
    };
}

error_codes! {
    MalformedJson = "malformed_json", 400, "a JSON body or JSON part is not valid JSON";
    InvalidRequest = "invalid_request", 400, "a bad query parameter, header, cursor or multipart body";
    InvalidFilter = "invalid_filter", 400, "the tag filter cannot be parsed";
    ConfirmationRequired = "confirmation_required", 400, "a destructive bulk operation (a purge) without `force: true`";
    Unauthenticated = "unauthenticated", 401, "no API key, or one that is unknown, revoked or expired (with `WWW-Authenticate`)";
    Forbidden = "forbidden", 403, "a valid key outside its scope: another merchant, a kind that may not call this route, or an origin the key does not allow";
    QuotaExceeded = "quota_exceeded", 403, "the write would take the merchant past its product or image quota";
    ProductNotFound = "product_not_found", 404, "no product with this id for this merchant";
    ImageNotFound = "image_not_found", 404, "the product has no image with this id";
    MerchantNotFound = "merchant_not_found", 404, "no merchant with this id";
    KeyNotFound = "key_not_found", 404, "no API key with this id that the caller may see";
    ImportNotFound = "import_not_found", 404, "the merchant has no import job with this id";
    RouteNotFound = "route_not_found", 404, "no such route";
    MethodNotAllowed = "method_not_allowed", 405, "the route exists, the method does not";
    ProductExists = "product_exists", 409, "the merchant already has a product with this id";
    SwapInProgress = "swap_in_progress", 409, "a model swap is already running";
    SameModelVersion = "same_model_version", 409, "the bundle's model version is the one serving";
    VersionConflict = "version_conflict", 412, "If-Match names a version the product is no longer at";
    RateLimited = "rate_limited", 429, "the key (or, without one, the client address) is over its rate limit; see `Retry-After`";
    PayloadTooLarge = "payload_too_large", 413, "the body or an image file is larger than allowed";
    ImageTooLarge = "image_too_large", 413, "the image has more pixels or a longer side than allowed";
    UnsupportedMediaType = "unsupported_media_type", 415, "a content type or image format that is not accepted";
    ImageUndecodable = "image_undecodable", 422, "the bytes are not a decodable JPEG, PNG or WebP image";
    InvalidField = "invalid_field", 422, "well-formed input with a field whose value is not acceptable";
    BundleInvalid = "bundle_invalid", 422, "the model bundle to swap to cannot be loaded or checked";
    Internal = "internal", 500, "anything else; details are in the server log only";
    Overloaded = "overloaded", 503, "too many searches in flight or the inference queue is full";
    Timeout = "timeout", 503, "the request ran longer than allowed";
    NotReady = "not_ready", 503, "starting up or shutting down, or too far behind the catalogue's change feed";
    StoreUnavailable = "store_unavailable", 503, "the catalogue database cannot be reached; searches still work, writes do not";
    ImageStorageUnavailable = "image_storage_unavailable", 503, "the image file storage failed or does not answer";
}

impl ErrorCode {
    /// True for 5xx codes, whose messages never reach clients.
    pub const fn is_server_error(self) -> bool {
        self.status() >= 500
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error that knows its API code. Implemented by every domain error, exhaustively.
pub trait Coded: std::error::Error + Send + Sync + 'static {
    fn code(&self) -> ErrorCode;
}

impl Coded for snapshop_store::StoreError {
    fn code(&self) -> ErrorCode {
        use snapshop_store::StoreError as E;
        match self {
            E::ProductExists { .. } => ErrorCode::ProductExists,
            E::ProductNotFound { .. } => ErrorCode::ProductNotFound,
            E::ImageNotFound { .. } => ErrorCode::ImageNotFound,
            E::VersionConflict { .. } => ErrorCode::VersionConflict,
            E::QuotaExceeded { .. } => ErrorCode::QuotaExceeded,
            E::KeyNotFound(_) => ErrorCode::KeyNotFound,
            E::JobNotFound(_) => ErrorCode::ImportNotFound,
            // Tokens are random: a collision means the same token was given twice.
            E::KeyExists => ErrorCode::InvalidField,
            e if e.is_unavailable() => ErrorCode::StoreUnavailable,
            E::Unavailable(_) => ErrorCode::StoreUnavailable,
            E::UnsupportedUrl(_) | E::Corrupt(_) | E::Db(_) | E::Migrate(_) => ErrorCode::Internal,
        }
    }
}

impl Coded for snapshop_inference::InferenceError {
    fn code(&self) -> ErrorCode {
        use snapshop_inference::InferenceError as E;
        match self {
            E::Overloaded => ErrorCode::Overloaded,
            E::Preprocess(e) => e.code(),
            E::Bundle(_) | E::Runtime(_) | E::Shape(_) | E::Io { .. } | E::WorkerGone => {
                ErrorCode::Internal
            }
        }
    }
}

impl Coded for snapshop_inference::PreprocessError {
    fn code(&self) -> ErrorCode {
        use snapshop_inference::PreprocessError as E;
        match self {
            E::TooLarge { .. } => ErrorCode::PayloadTooLarge,
            E::TooManyPixels { .. } => ErrorCode::ImageTooLarge,
            E::UnsupportedFormat(_) => ErrorCode::UnsupportedMediaType,
            E::Undecodable(_) => ErrorCode::ImageUndecodable,
        }
    }
}

impl Coded for snapshop_index::IndexError {
    fn code(&self) -> ErrorCode {
        ErrorCode::Internal
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn codes_are_unique_and_statuses_valid() {
        let codes: HashSet<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(codes.len(), ErrorCode::ALL.len());
        for c in ErrorCode::ALL {
            assert!((400..600).contains(&c.status()), "{c}");
            assert!(!c.description().is_empty());
            assert!(c
                .as_str()
                .chars()
                .all(|ch| ch.is_ascii_lowercase() || ch == '_'));
        }
    }

    /// `docs/api.md` lists exactly the codes of the table, with their statuses, in order.
    #[test]
    fn api_docs_match_the_table() {
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/api.md"))
            .expect("docs/api.md");
        let section = doc.split("\n## Errors").nth(1).expect("an Errors section");
        let rows: Vec<(String, u16)> = section
            .lines()
            .filter_map(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                let code = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
                let status = cells.get(2)?.parse().ok()?;
                Some((code.to_owned(), status))
            })
            .collect();
        let table: Vec<(String, u16)> = ErrorCode::ALL
            .iter()
            .map(|c| (c.as_str().to_owned(), c.status()))
            .collect();
        assert_eq!(
            rows, table,
            "docs/api.md's error table disagrees with src/error.rs"
        );
    }
}
