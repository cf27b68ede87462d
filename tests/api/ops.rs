//! Operations: `/healthz`, `/readyz`, `/v1/tags`, `/metrics`, and overload.

use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn an_empty_app_is_healthy_and_ready() {
    let app = spawn_fake_app().await;
    app.healthz().await.assert_status(200);
    let ready = app.readyz().await.json;
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["device"], "cpu");
    assert!(!ready["model_version"].as_str().unwrap().is_empty());
    assert_eq!(ready["index"]["live"], 0);
    app.stop().await;
}

/// `GET /v1/tags`: the model's vocabulary, `key:value` each.
#[tokio::test]
async fn tags_list_the_model_vocabulary() {
    let (app, _) = one_product_app().await;
    let tags = app.tags().await.json;
    let list = tags["tags"].as_array().unwrap();
    assert!(!list.is_empty());
    assert_eq!(tags["count"], list.len());
    assert!(list.iter().all(|t| t.as_str().unwrap().contains(':')));
}

const METRICS_AFTER_USE: [&str; 12] = [
    "snapshop_search_stage_duration_seconds_bucket{stage=\"rerank\"",
    "snapshop_search_stage_duration_seconds_bucket{stage=\"ann\"",
    "snapshop_search_stage_duration_seconds_bucket{stage=\"embed\"",
    "snapshop_search_stage_duration_seconds_bucket{stage=\"decode\"",
    "snapshop_http_requests_total{route=\"/v1/search\",method=\"POST\",status=\"200\"}",
    "snapshop_http_request_duration_seconds_bucket{route=\"/v1/merchants/{merchant}/products\"",
    "snapshop_model_info{",
    "snapshop_index_vectors{segment=\"fresh\"}",
    "snapshop_index_tombstones",
    "snapshop_inference_batch_size_bucket{kind=\"rerank\"",
    "snapshop_inference_queue_depth",
    "snapshop_errors_total{code=\"product_not_found\"}",
];

/// After an upload, a re-ranked search and a 404, every family of metrics is exported.
#[tokio::test]
async fn metrics_cover_search_stages_requests_index_inference_and_errors() {
    let (app, p) = one_product_app().await;
    // The shipped bundle does not re-rank by default: ask, so the re-rank stage is measured.
    let r = app
        .search(&p.photo(), "k=5&merchant=acme&rerank=true")
        .await;
    r.assert_status(200);
    let r = app.get_product(MERCHANT, "missing").await;
    r.assert_error(404, "product_not_found");
    let m = app.metrics().await.text;
    for needle in METRICS_AFTER_USE {
        assert!(m.contains(needle), "metrics lack {needle}:\n{m}");
    }
}

/// Past the admission limit, searches fail fast with 503 `overloaded` and `Retry-After`.
#[tokio::test]
async fn overload_is_refused_fast_with_retry_after() {
    let products = catalogue();
    let p = &products[0];
    let app = spawn_app_with(new_data_dir(), |c| c.limits.max_concurrent_searches = 1).await;
    let body = json!({"id": p.id, "title": "t", "tags": p.tags});
    let r = app.create_product(MERCHANT, &body, &p.shop).await;
    r.assert_status(201);
    let q = p.photo();
    let searches = (0..8).map(|_| app.search(&q, "k=5").send());
    let responses = futures_util::future::join_all(searches).await;
    let (mut ok, mut refused) = (0, 0);
    for r in responses {
        if r.status == 200 {
            ok += 1;
            continue;
        }
        assert_eq!(r.headers["retry-after"], "1");
        r.assert_error(503, "overloaded");
        refused += 1;
    }
    assert!(ok >= 1 && refused >= 1, "{ok} served, {refused} refused");
    app.stop().await;
}
