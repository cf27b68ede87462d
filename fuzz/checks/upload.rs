//! The invariants of the `upload` fuzz target, shared with its replay test.
//!
//! It exists so that the libFuzzer target (`fuzz/fuzz_targets/upload.rs`) and the stable replay
//! of its corpus (`tests/fuzz_replay.rs`) check exactly the same thing: both include this file
//! with `#[path]`. An input is a content type (its first line; no line: no header) and a body.
//! The [`Upload`] extractor, and what the handlers then do with it (`only_parts`, `json_part`
//! into the product and the search options), must answer `Ok` or an [`ApiError`] with a 4xx
//! status, never panic or 5xx, and must not depend on how the body is split into chunks.

use std::convert::Infallible;
use std::sync::OnceLock;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::HeaderValue;
use snapshop::config::SearchSettings;
use snapshop::http::error::ApiError;
use snapshop::http::extract::Upload;
use snapshop::ingest::NewProduct;
use snapshop::search::RawOptions;

/// What an extraction gave: the parts, or the error's status and code.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Parts {
        images: Vec<Bytes>,
        json_parts: Vec<(String, Bytes)>,
    },
    Refused {
        status: u16,
        code: &'static str,
    },
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime starts")
    })
}

/// Splits an input into the content type (the first line, if any) and the body.
pub fn split(data: &[u8]) -> (Option<&[u8]>, &[u8]) {
    match data.iter().position(|b| *b == b'\n') {
        Some(i) => (Some(&data[..i]), &data[i + 1..]),
        None => (None, data),
    }
}

/// Asserts that an error is the client's, and returns its status.
fn client_error(e: &ApiError, what: &str) -> u16 {
    let status = e.code.status();
    assert!(
        (400..500).contains(&status),
        "{what}: {status} {} ({})",
        e.code,
        e.message()
    );
    assert!(!e.message().is_empty(), "{what}: empty message");
    status
}

fn request(content_type: Option<&HeaderValue>, body: Body) -> Request {
    let mut builder = Request::builder().method("POST").uri("/v1/search");
    if let Some(v) = content_type {
        builder = builder.header(CONTENT_TYPE, v);
    }
    builder
        .body(body)
        .expect("a request with a valid header builds")
}

/// Extracts an [`Upload`] from the body, whole or in `chunk`-byte pieces.
fn extract(content_type: Option<&HeaderValue>, body: &[u8], chunk: Option<usize>) -> Outcome {
    let body = match chunk {
        None => Body::from(body.to_vec()),
        Some(n) => {
            let pieces: Vec<Result<Bytes, Infallible>> = body
                .chunks(n)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect();
            Body::from_stream(futures_util::stream::iter(pieces))
        }
    };
    let req = request(content_type, body);
    match runtime().block_on(Upload::from_request(req, &())) {
        Ok(u) => Outcome::Parts {
            images: u.images,
            json_parts: u.json_parts,
        },
        Err(e) => Outcome::Refused {
            status: client_error(&e, "Upload::from_request"),
            code: e.code.as_str(),
        },
    }
}

/// The whole check on one input. Panics when an invariant fails.
pub fn check(data: &[u8]) {
    let (ct, body) = split(data);
    // A header value HTTP cannot carry (a control byte) is sent as no header at all.
    let header = ct.and_then(|v| HeaderValue::from_bytes(v).ok());
    let whole = extract(header.as_ref(), body, None);
    let chunked = extract(header.as_ref(), body, Some(1 + body.len() % 17));
    assert_eq!(whole, chunked, "the result depends on the body's chunking");

    let Outcome::Parts { images, json_parts } = whole else {
        return;
    };
    let mime = header
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    assert!(images.iter().all(|i| !i.is_empty()), "an empty image");
    if mime == "multipart/form-data" {
        let names: Vec<&str> = json_parts.iter().map(|(n, _)| n.as_str()).collect();
        assert!(
            names.iter().all(|n| ["product", "options"].contains(n)),
            "{names:?}"
        );
        assert!(
            names.len() < 2 || names[0] != names[1],
            "a part twice: {names:?}"
        );
        let stored: usize = images.iter().map(Bytes::len).sum::<usize>()
            + json_parts.iter().map(|(_, b)| b.len()).sum::<usize>();
        assert!(
            stored <= body.len(),
            "{stored} bytes of parts from a {}-byte body",
            body.len()
        );
    } else {
        assert!(
            mime.starts_with("image/") || mime == "application/octet-stream",
            "accepted `{mime}`"
        );
        assert_eq!(images, vec![Bytes::copy_from_slice(body)]);
        assert!(json_parts.is_empty());
    }

    // What the handlers do next: each answers Ok or a 4xx.
    let upload = || Upload {
        images: images.clone(),
        json_parts: json_parts.clone(),
    };
    // POST /v1/merchants/{m}/products/{id}/images
    match upload().only_parts(&[]) {
        Ok(()) => assert!(json_parts.is_empty()),
        Err(e) => assert_eq!(client_error(&e, "only_parts([])"), 400),
    }
    // POST /v1/merchants/{m}/products
    let mut u = upload();
    if let Err(e) = u.only_parts(&["product"]) {
        client_error(&e, "only_parts([product])");
    }
    let had = u.json_parts.iter().any(|(n, _)| n == "product");
    match u.json_part::<NewProduct>("product") {
        Ok(p) => assert_eq!(p.is_some(), had),
        Err(e) => {
            client_error(&e, "json_part(product)");
        }
    }
    assert!(
        !u.json_parts.iter().any(|(n, _)| n == "product"),
        "the part is taken"
    );
    // POST /v1/search
    let mut u = upload();
    if let Err(e) = u.only_parts(&["options"]) {
        client_error(&e, "only_parts([options])");
    }
    match u.json_part::<RawOptions>("options") {
        Ok(options) => {
            if let Err(e) = options
                .unwrap_or_default()
                .resolve(&SearchSettings::default())
            {
                client_error(&ApiError::from(e), "RawOptions::resolve");
            }
        }
        Err(e) => {
            client_error(&e, "json_part(options)");
        }
    }
}
