//! Prometheus metrics: the recorder, bucket layout, and gauges refreshed at scrape time.
//!
//! Every metric is named `snapshop_*`; durations are histograms in seconds; HTTP metrics are
//! labelled by the matched route, never the raw URL. The recorder is process-wide (installed
//! once, even when tests start several servers in one process).

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::core::Core;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const SIZE_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// Installs the global recorder (once) and returns its handle.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .and_then(|b| b.set_buckets(SIZE_BUCKETS))
                .expect("bucket lists are non-empty; this is a bug")
                .build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
            }
            describe();
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "snapshop_http_requests_total",
        "HTTP requests by matched route, method and status"
    );
    describe_histogram!(
        "snapshop_http_request_duration_seconds",
        Unit::Seconds,
        "HTTP request latency by matched route"
    );
    describe_histogram!(
        "snapshop_search_stage_duration_seconds",
        Unit::Seconds,
        "Search latency by stage (decode, embed, ann, rerank, total)"
    );
    describe_histogram!(
        "snapshop_search_candidates",
        "First-pass candidates per search"
    );
    describe_counter!("snapshop_errors_total", "Error responses by error code");
    describe_gauge!(
        "snapshop_index_vectors",
        "Live vectors in the index by segment (graph, fresh)"
    );
    describe_gauge!(
        "snapshop_index_tombstones",
        "Removed or replaced points still in the graph"
    );
    describe_gauge!("snapshop_index_rebuilds", "Graph rebuilds since start-up");
    describe_gauge!("snapshop_catalog_products", "Products in the catalogue");
    {
        use snapshop_inference::queue::{
            METRIC_BATCH_SIZE, METRIC_OVERLOADED, METRIC_QUEUE_DEPTH, METRIC_SECONDS,
            METRIC_SKIPPED, METRIC_WAIT_SECONDS,
        };
        describe_gauge!(
            METRIC_QUEUE_DEPTH,
            "Requests waiting in the inference queue (set on enqueue, on each batch and at scrape time)"
        );
        describe_histogram!(
            METRIC_BATCH_SIZE,
            "Requests per model call by kind (shop, user, rerank)"
        );
        describe_histogram!(
            METRIC_WAIT_SECONDS,
            Unit::Seconds,
            "Time a request waited in the inference queue before its batch ran, by kind"
        );
        describe_histogram!(
            METRIC_SECONDS,
            Unit::Seconds,
            "Time of one model call (a whole batch), by kind"
        );
        describe_counter!(
            METRIC_OVERLOADED,
            "Inference requests refused because the queue was full (answered 503 overloaded)"
        );
        describe_counter!(
            METRIC_SKIPPED,
            "Queued inference requests dropped unrun because their caller had gone, by kind"
        );
    }
    describe_gauge!(
        "snapshop_inference_queue_capacity",
        "Requests the inference queue holds at most (queue.capacity); past it, 503 overloaded"
    );
    describe_gauge!(
        "snapshop_ready",
        "1 while /readyz answers ready (models, store and index loaded), else 0"
    );
    describe_counter!(
        "snapshop_images_ingested_total",
        "Shop images committed by product creates and image uploads"
    );
    describe_counter!(
        "snapshop_connections_refused_total",
        "Connections closed on accept because limits.max_connections were open"
    );
    describe_gauge!(
        "snapshop_model_info",
        "1 for the model serving, 0 for one swapped out (labels: model_version, device, backbone)"
    );
    describe_gauge!(
        "snapshop_view_dirty",
        "1 while the search view lags the store after a failed apply (until reconciled)"
    );
    describe_counter!(
        "snapshop_view_apply_failures_total",
        "Committed writes the search view could not apply (it then reconciles from the store)"
    );
    describe_gauge!("snapshop_model_swap_running", "1 while a model swap runs");
    describe_gauge!(
        "snapshop_model_swap_images_done",
        "Images re-embedded by the running (or last) model swap"
    );
    describe_gauge!(
        "snapshop_model_swap_images_total",
        "Images stored when the running (or last) model swap started"
    );
    describe_counter!(
        "snapshop_model_swaps_total",
        "Model swaps by result (done, failed)"
    );
    describe_counter!(
        "snapshop_import_jobs_total",
        "Import jobs by event (submitted, done, failed, cancelled)"
    );
    describe_counter!(
        "snapshop_reembed_failures_total",
        "Images that could not be re-embedded (their file is unreadable)"
    );
    describe_gauge!(
        "snapshop_feed_lag_seconds",
        Unit::Seconds,
        "How long the oldest committed change this replica has not applied has waited (0 for a single process)"
    );
    describe_gauge!(
        "snapshop_feed_pending_changes",
        "Committed changes this replica has not applied yet (0 for a single process)"
    );
    describe_gauge!(
        "snapshop_feed_listening",
        "1 while the change feed's LISTEN connection is open (replicas only)"
    );
    describe_counter!(
        "snapshop_feed_changes_applied_total",
        "Change feed rows applied to this replica's search view"
    );
    describe_counter!(
        "snapshop_feed_reloads_total",
        "Full reloads of the search view by the change feed's follower"
    );
    describe_counter!(
        "snapshop_feed_errors_total",
        "Failed reads of the change feed (the store unreachable)"
    );
}

/// Refreshes the gauges that are read from state rather than pushed.
pub fn refresh(core: &Core) {
    let serving = core.serving();
    let stats = serving.view.stats();
    metrics::gauge!("snapshop_index_vectors", "segment" => "graph").set(stats.graph as f64);
    metrics::gauge!("snapshop_index_vectors", "segment" => "fresh").set(stats.fresh as f64);
    metrics::gauge!("snapshop_index_tombstones").set(stats.tombstones as f64);
    metrics::gauge!("snapshop_index_rebuilds").set(stats.rebuilds as f64);
    metrics::gauge!("snapshop_catalog_products").set(serving.view.product_count() as f64);
    metrics::gauge!("snapshop_view_dirty").set(if serving.view.is_dirty() { 1.0 } else { 0.0 });
    metrics::gauge!(snapshop_inference::queue::METRIC_QUEUE_DEPTH)
        .set(serving.model.queue_depth() as f64);
    // The queue makes room for at least one request (snapshop_inference::queue).
    metrics::gauge!("snapshop_inference_queue_capacity")
        .set(core.config().queue.capacity.max(1) as f64);
    metrics::gauge!("snapshop_ready").set(if core.is_ready() { 1.0 } else { 0.0 });
    // 0 for a single process (its own writes are in its view when they answer), so that one
    // dashboard and one alert fit both.
    let (lag_ms, pending) = core.feed().map(|f| f.status()).map_or((0, 0), |s| {
        metrics::gauge!("snapshop_feed_listening").set(if s.listening { 1.0 } else { 0.0 });
        (s.lag_ms, s.pending)
    });
    metrics::gauge!("snapshop_feed_lag_seconds").set(lag_ms as f64 / 1000.0);
    metrics::gauge!("snapshop_feed_pending_changes").set(pending as f64);
    // Exported from the start (at 0), so that dashboards see the series before the first change.
    metrics::counter!("snapshop_feed_changes_applied_total").increment(0);
}

/// Sets the model info gauge.
pub fn model_info(model_version: &str, device: &str, backbone: &str) {
    metrics::gauge!(
        "snapshop_model_info",
        "model_version" => model_version.to_owned(),
        "device" => device.to_owned(),
        "backbone" => backbone.to_owned()
    )
    .set(1.0);
}

/// Sets a model's info gauge to 0 once it no longer serves.
pub fn forget_model_info(model_version: &str, device: &str, backbone: &str) {
    metrics::gauge!(
        "snapshop_model_info",
        "model_version" => model_version.to_owned(),
        "device" => device.to_owned(),
        "backbone" => backbone.to_owned()
    )
    .set(0.0);
}
