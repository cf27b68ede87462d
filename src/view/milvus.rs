//! [`AnnIndex`] over a Milvus collection, through the REST API of Milvus 2.3 (`/v1/vector/*`).
//!
//! A **prototype** behind the cargo feature `milvus` (off by default, so CI never builds it):
//! it exists to measure what an external engine gives the first pass (recall, latency,
//! freshness) on the data and filters snapshop really has; `docs/scaling.md` has the figures
//! and `scripts/milvus-proto.sh` reproduces them. Nothing in the service chooses it yet
//! (`swap::build_view` still makes an [`super::HnswAnn`]).
//!
//! The collection is made outside this module, because the 2.3 REST API can only make a
//! "quick setup" collection (an auto-id primary key, no scalar fields, Bounded consistency):
//! `scripts/milvus_proto.py create` makes it with pymilvus. Its schema, checked by
//! [`MilvusAnn::connect`]:
//!
//! | field | type | what |
//! |---|---|---|
//! | `id` | INT64, primary key, not auto-id | the store's embedding key |
//! | `vector` | FLOAT_VECTOR(dim), HNSW, metric IP | the TagYNet shop embedding |
//! | `merchant` | VARCHAR | the payload's merchant |
//! | `tags` | dynamic field (JSON array of strings) | the payload's tags |
//!
//! The view's typed filter becomes a Milvus boolean expression: `merchant in [..]` for the
//! merchants and one `json_contains_any(tags, [..])` per OR group, joined by `and` (the REST
//! API of 2.3 cannot insert an ARRAY field, hence the dynamic JSON field).
//!
//! What the REST API of this version cannot do, and what follows (see docs/scaling.md):
//! - every search, query and get runs at **Bounded** consistency (the handler hard-codes
//!   it), so an insert or a delete is not visible the instant `insert`/`remove` returns, as the
//!   trait asks: it becomes visible when the query node has consumed it (measured: tens to
//!   hundreds of ms). The view's postings still hide a removed key at once, because
//!   `SearchView::lookup` drops keys it no longer knows;
//! - the search width (`ef`) cannot be set: the handler sends only `{"level": 2}`;
//! - there is no upsert: `insert` deletes the key first, then inserts it;
//! - there is no flush: new rows sit in a growing segment (searched without the HNSW index)
//!   until Milvus seals it by size or time.
//!
//! Every call blocks (reqwest's blocking client): call it from the blocking pool, as the
//! trait says. Errors of the engine come back as `IndexError::Io`, the index crate's only
//! variant for a failed I/O.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use serde_json::{json, Value};
use snapshop_index::{Hit, IndexError, IndexStats, Key};

use super::ann::{AnnFilter, AnnIndex, Payload};

/// The most rows one search or query may return in Milvus 2.3 (`topk` and `offset + limit`).
pub const MAX_LIMIT: usize = 16_384;

/// Where the collection is and how to talk to it.
#[derive(Debug, Clone)]
pub struct MilvusConfig {
    /// The proxy's HTTP address, e.g. `http://127.0.0.1:19530`.
    pub url: String,
    pub collection: String,
    /// The embedding dimension (the model's).
    pub dim: usize,
    /// Per request.
    pub timeout: Duration,
    /// `user:password` when Milvus has authentication on.
    pub token: Option<String>,
}

/// See the module documentation.
pub struct MilvusAnn {
    http: reqwest::blocking::Client,
    base: String,
    collection: String,
    dim: usize,
    token: Option<String>,
}

fn engine_error(what: impl std::fmt::Display) -> IndexError {
    IndexError::Io(std::io::Error::other(format!("milvus: {what}")))
}

/// A double-quoted string literal of Milvus's expression language.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

fn list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| quote(s)).collect();
    format!("[{}]", quoted.join(", "))
}

/// The Milvus boolean expression for a view filter, `None` when it restricts nothing.
pub fn filter_expr(merchants: Option<&[String]>, groups: &[Vec<String>]) -> Option<String> {
    let mut terms = Vec::new();
    if let Some(ms) = merchants {
        terms.push(format!("merchant in {}", list(ms)));
    }
    for g in groups {
        terms.push(format!("json_contains_any(tags, {})", list(g)));
    }
    (!terms.is_empty()).then(|| terms.join(" and "))
}

/// A key from a JSON value: Milvus 2.3's REST API writes INT64 as a string.
fn key_of(v: &Value) -> Option<Key> {
    match v {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

fn check_vector(v: &[f32], dim: usize) -> Result<(), String> {
    crate::model::check_embedding(v, dim)
}

impl MilvusAnn {
    /// Connects and checks the collection's schema (see the module documentation).
    pub fn connect(cfg: MilvusConfig) -> Result<Self, IndexError> {
        let http = reqwest::blocking::Client::builder()
            .timeout(cfg.timeout)
            .build()
            .map_err(engine_error)?;
        let ann = Self {
            http,
            base: cfg.url.trim_end_matches('/').to_owned(),
            collection: cfg.collection,
            dim: cfg.dim,
            token: cfg.token,
        };
        let d = ann.get_json(&format!(
            "/v1/vector/collections/describe?collectionName={}",
            ann.collection
        ))?;
        let fields = d["fields"].as_array().cloned().unwrap_or_default();
        let field = |name: &str| fields.iter().find(|f| f["name"] == name).cloned();
        let id = field("id").ok_or_else(|| engine_error("collection has no `id` field"))?;
        if id["primaryKey"] != true || id["autoId"] == true || id["type"] != "Int64" {
            return Err(engine_error(
                "`id` must be the INT64 primary key, without auto-id",
            ));
        }
        let vector =
            field("vector").ok_or_else(|| engine_error("collection has no `vector` field"))?;
        let want = format!("FloatVector({})", ann.dim);
        if vector["type"] != want.as_str() {
            return Err(IndexError::DimensionMismatch {
                expected: ann.dim,
                got: vector["type"]
                    .as_str()
                    .and_then(|t| {
                        t.trim_start_matches("FloatVector(")
                            .trim_end_matches(')')
                            .parse()
                            .ok()
                    })
                    .unwrap_or(0),
            });
        }
        if field("merchant").is_none() {
            return Err(engine_error("collection has no `merchant` field"));
        }
        if d["enableDynamicField"] != true && d["enableDynamic"] != true {
            return Err(engine_error(
                "collection needs its dynamic field (the tags live there)",
            ));
        }
        Ok(ann)
    }

    fn request(&self, req: reqwest::blocking::RequestBuilder) -> Result<Value, IndexError> {
        let req = match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let resp = req.send().map_err(engine_error)?;
        let status = resp.status();
        let body: Value = resp.json().map_err(engine_error)?;
        // The REST API answers HTTP 200 with its own code in the body.
        if !status.is_success() || body["code"].as_i64() != Some(200) {
            return Err(engine_error(format!(
                "HTTP {status}, code {}: {}",
                body["code"],
                body["message"].as_str().unwrap_or("(no message)")
            )));
        }
        Ok(body["data"].clone())
    }

    fn get_json(&self, path: &str) -> Result<Value, IndexError> {
        self.request(self.http.get(format!("{}{path}", self.base)))
    }

    fn post(&self, path: &str, body: Value) -> Result<Value, IndexError> {
        self.request(self.http.post(format!("{}{path}", self.base)).json(&body))
    }

    fn row(&self, key: Key, vector: &[f32], payload: Payload<'_>) -> Result<Value, IndexError> {
        check_vector(vector, self.dim).map_err(|reason| {
            if vector.len() != self.dim {
                IndexError::DimensionMismatch {
                    expected: self.dim,
                    got: vector.len(),
                }
            } else {
                IndexError::InvalidVector { key, reason }
            }
        })?;
        Ok(json!({
            "id": key,
            "vector": vector,
            "merchant": payload.merchant,
            "tags": payload.tags,
        }))
    }

    /// Inserts many keys in one request, for a bulk load into a collection that does not hold
    /// them yet (no delete first, unlike [`AnnIndex::insert`]).
    pub fn insert_batch(&self, items: &[(Key, &[f32], Payload<'_>)]) -> Result<(), IndexError> {
        if items.is_empty() {
            return Ok(());
        }
        let rows = items
            .iter()
            .map(|(k, v, p)| self.row(*k, v, *p))
            .collect::<Result<Vec<_>, _>>()?;
        let data = self.post(
            "/v1/vector/insert",
            json!({"collectionName": self.collection, "data": rows}),
        )?;
        match data["insertCount"].as_u64() {
            Some(n) if n as usize == items.len() => Ok(()),
            other => Err(engine_error(format!(
                "inserted {other:?} rows of {}",
                items.len()
            ))),
        }
    }

    fn delete_keys(&self, keys: &[Key]) -> Result<(), IndexError> {
        self.post(
            "/v1/vector/delete",
            json!({"collectionName": self.collection, "id": keys}),
        )
        .map(|_| ())
    }

    fn present(&self, keys: &[Key]) -> Result<Vec<Key>, IndexError> {
        let data = self.post(
            "/v1/vector/get",
            json!({"collectionName": self.collection, "id": keys, "outputFields": ["id"]}),
        )?;
        Ok(data
            .as_array()
            .map(|rows| rows.iter().filter_map(|r| key_of(&r["id"])).collect())
            .unwrap_or_default())
    }

    fn count(&self) -> Result<usize, IndexError> {
        let data = self.post(
            "/v1/vector/query",
            json!({"collectionName": self.collection, "filter": "id >= 0",
                   "limit": 0, "outputFields": ["count(*)"]}),
        )?;
        data[0]["count(*)"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .or_else(|| data[0]["count(*)"].as_u64().map(|n| n as usize))
            .ok_or_else(|| engine_error(format!("unexpected count answer {data}")))
    }

    /// The top `n` with an explicit expression (what [`AnnIndex::search`] sends), for tests and
    /// measurements.
    pub fn search_expr(
        &self,
        query: &[f32],
        n: usize,
        expr: Option<&str>,
    ) -> Result<Vec<Hit>, IndexError> {
        check_vector(query, self.dim).map_err(|reason| {
            if query.len() != self.dim {
                IndexError::DimensionMismatch {
                    expected: self.dim,
                    got: query.len(),
                }
            } else {
                IndexError::InvalidQuery { reason }
            }
        })?;
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut body = json!({
            "collectionName": self.collection,
            "vector": query,
            "limit": n.min(MAX_LIMIT),
            "outputFields": ["id"],
        });
        if let Some(e) = expr {
            body["filter"] = Value::String(e.to_owned());
        }
        let data = self.post("/v1/vector/search", body)?;
        let mut hits: Vec<Hit> = data
            .as_array()
            .map(|rows| {
                rows.iter()
                    .filter_map(|r| {
                        Some(Hit {
                            key: key_of(&r["id"])?,
                            score: r["distance"].as_f64()? as f32,
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        // Best first, ties by key, as the in-process index answers.
        hits.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.key.cmp(&b.key)));
        Ok(hits)
    }
}

impl AnnIndex for MilvusAnn {
    fn name(&self) -> &'static str {
        "milvus"
    }

    fn insert(&self, key: Key, vector: &[f32], payload: Payload<'_>) -> Result<(), IndexError> {
        let row = self.row(key, vector, payload)?;
        // No upsert in this API: replace = delete + insert.
        self.delete_keys(&[key])?;
        self.post(
            "/v1/vector/insert",
            json!({"collectionName": self.collection, "data": [row]}),
        )
        .map(|_| ())
    }

    fn remove(&self, key: Key) -> bool {
        let was = match self.present(&[key]) {
            Ok(found) => found.contains(&key),
            Err(e) => {
                tracing::warn!(error = %e, key, "milvus: presence check failed");
                false
            }
        };
        if let Err(e) = self.delete_keys(&[key]) {
            tracing::warn!(error = %e, key, "milvus: delete failed");
            return false;
        }
        was
    }

    fn search(
        &self,
        query: &[f32],
        n: usize,
        filter: Option<AnnFilter<'_>>,
    ) -> Result<Vec<Hit>, IndexError> {
        let expr = filter.and_then(|f| filter_expr(f.merchants, f.groups));
        match (filter, &expr) {
            // A filter that resolved to no key: nothing can match.
            (Some(f), _) if f.keys.is_empty() => Ok(Vec::new()),
            _ => self.search_expr(query, n, expr.as_deref()),
        }
    }

    fn vectors(&self, keys: &[Key]) -> Vec<Option<Vec<f32>>> {
        if keys.is_empty() {
            return Vec::new();
        }
        let got = self.post(
            "/v1/vector/get",
            json!({"collectionName": self.collection, "id": keys, "outputFields": ["id", "vector"]}),
        );
        let rows = match got {
            Ok(v) => v.as_array().cloned().unwrap_or_default(),
            Err(e) => {
                tracing::warn!(error = %e, n = keys.len(), "milvus: vectors failed");
                return vec![None; keys.len()];
            }
        };
        let by_key: HashMap<Key, Vec<f32>> = rows
            .iter()
            .filter_map(|r| {
                let k = key_of(&r["id"])?;
                let v = r["vector"]
                    .as_array()?
                    .iter()
                    .map(|x| x.as_f64().map(|x| x as f32))
                    .collect::<Option<Vec<f32>>>()?;
                Some((k, v))
            })
            .collect();
        keys.iter().map(|k| by_key.get(k).cloned()).collect()
    }

    fn keys(&self) -> Vec<Key> {
        // Pages by primary key (`id > last`); query results come sorted by primary key.
        let mut out = Vec::new();
        let mut last: Option<Key> = None;
        loop {
            let expr = match last {
                None => "id >= 0".to_owned(),
                Some(l) => format!("id > {l}"),
            };
            let page = self.post(
                "/v1/vector/query",
                json!({"collectionName": self.collection, "filter": expr,
                       "limit": MAX_LIMIT, "outputFields": ["id"]}),
            );
            let rows = match page {
                Ok(v) => v.as_array().cloned().unwrap_or_default(),
                Err(e) => {
                    tracing::warn!(error = %e, "milvus: listing keys failed");
                    break;
                }
            };
            let keys: Vec<Key> = rows.iter().filter_map(|r| key_of(&r["id"])).collect();
            let Some(max) = keys.iter().copied().max() else {
                break;
            };
            out.extend(keys);
            last = Some(max);
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    fn len(&self) -> usize {
        self.count().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "milvus: count failed");
            0
        })
    }

    fn stats(&self) -> IndexStats {
        let live = self.len();
        IndexStats {
            live,
            graph: live,
            ..IndexStats::default()
        }
    }

    fn needs_maintenance(&self) -> bool {
        false
    }

    fn maintain(&self, _stop: &AtomicBool) -> Result<bool, IndexError> {
        // Milvus seals, indexes and compacts segments itself.
        Ok(false)
    }

    fn persist(&self, _model_version: &str) -> Result<(), IndexError> {
        // Milvus keeps the vectors itself; one collection per model version (the caller's
        // naming) plays the part of the snapshot's model tag.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_become_expressions() {
        assert_eq!(filter_expr(None, &[]), None);
        let ms = vec!["acme".to_owned()];
        let groups = vec![
            vec!["category:dress".to_owned()],
            vec!["color:red".to_owned(), "color:blue".to_owned()],
        ];
        assert_eq!(
            filter_expr(Some(&ms), &groups).unwrap(),
            r#"merchant in ["acme"] and json_contains_any(tags, ["category:dress"]) and json_contains_any(tags, ["color:red", "color:blue"])"#
        );
        assert_eq!(quote(r#"a"b\c"#), r#""a\"b\\c""#);
    }

    #[test]
    fn keys_parse_from_strings_and_numbers() {
        assert_eq!(key_of(&json!("42")), Some(42));
        assert_eq!(key_of(&json!(7)), Some(7));
        assert_eq!(key_of(&json!(null)), None);
    }

    /// Against a running Milvus (`MILVUS_URL`, collection `MILVUS_COLLECTION` made by
    /// `scripts/milvus_proto.py create --dim 8`): `cargo test --features milvus milvus -- --ignored`.
    #[test]
    #[ignore = "needs a running Milvus"]
    fn round_trip_against_a_server() {
        let url = std::env::var("MILVUS_URL").unwrap_or_else(|_| "http://127.0.0.1:19530".into());
        let collection =
            std::env::var("MILVUS_COLLECTION").unwrap_or_else(|_| "snapshop_roundtrip".into());
        let ann = MilvusAnn::connect(MilvusConfig {
            url,
            collection,
            dim: 8,
            timeout: Duration::from_secs(10),
            token: None,
        })
        .expect("connect");
        let mut v = vec![0.0f32; 8];
        v[0] = 1.0;
        let tags = vec!["color:red".to_owned()];
        ann.insert(
            1,
            &v,
            Payload {
                merchant: "acme",
                tags: &tags,
            },
        )
        .expect("insert");
        // Bounded consistency: wait for the insert to become visible.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while ann.search_expr(&v, 1, None).expect("search").is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "insert never became visible"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let ms = vec!["acme".to_owned()];
        let expr = filter_expr(Some(&ms), &[tags.clone()]).unwrap();
        assert_eq!(ann.search_expr(&v, 5, Some(&expr)).unwrap()[0].key, 1);
        let other = vec!["bob".to_owned()];
        let expr = filter_expr(Some(&other), &[]).unwrap();
        assert!(ann.search_expr(&v, 5, Some(&expr)).unwrap().is_empty());
        assert_eq!(ann.vectors(&[1, 2])[0].as_deref(), Some(&v[..]));
        assert!(ann.remove(1));
    }
}
