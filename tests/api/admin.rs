//! The admin API: authentication, and a model hot swap under load with the real bundle and
//! ONNX Runtime. The second bundle is made here: the same graphs under another version.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::*;

/// A copy of the shipped bundle whose manifest names another model version.
fn second_bundle(dir: &Path, version: &str) -> PathBuf {
    copy_bundle(dir, |m| m["model_version"] = json!(version))
}

fn swap(app: &TestApp, bundle: &Path) -> Call {
    app.request(reqwest::Method::POST, "/v1/admin/model")
        .json(&json!({"bundle": bundle}))
}

async fn model_status(app: &TestApp) -> Value {
    app.request(reqwest::Method::GET, "/v1/admin/model")
        .await
        .assert_status(200)
        .json
}

#[tokio::test]
async fn admin_calls_need_an_admin_key() {
    let app = spawn_fake_app().await;
    app.request(reqwest::Method::GET, "/v1/admin/model")
        .anonymous()
        .await
        .assert_error(401, "unauthenticated");
    app.request(reqwest::Method::GET, "/v1/admin/model")
        .key("sk_admin_wrong-token-wrong-token")
        .await
        .assert_error(401, "unauthenticated");
    let merchant = create_key(&app, &json!({"kind": "merchant", "merchant": "m"})).await;
    swap(&app, Path::new("/nonexistent/bundle"))
        .key(&merchant)
        .await
        .assert_error(403, "forbidden");
    let status = model_status(&app).await;
    assert_eq!(status["swap"]["state"], "idle");
    // A bundle that cannot serve, and the version already serving, are refused at once.
    swap(&app, Path::new("/nonexistent/bundle"))
        .await
        .assert_error(422, "bundle_invalid");
    swap(&app, &root().join("models/default"))
        .await
        .assert_error(409, "same_model_version");
    app.request(reqwest::Method::POST, "/v1/admin/model")
        .json(&json!({"bundel": "x"}))
        .await
        .assert_error(422, "invalid_field");
    app.stop().await;
}

#[tokio::test]
async fn hot_swap_under_load_switches_model_and_view_together() {
    let data_dir = new_data_dir();
    let app = spawn_app_with(data_dir.clone(), |_| {}).await;
    let catalogue = seed_catalogue(&app).await;
    let old_version = app.readyz().await.json["model_version"]
        .as_str()
        .unwrap()
        .to_owned();
    let scratch = tempfile::tempdir().unwrap();
    let new_version = format!("{old_version}-swapped");
    let bundle = second_bundle(scratch.path(), &new_version);
    let photo = catalogue.query_photo();
    let before = app.search(&photo, "k=5").await.assert_status(200).json;

    // Searches run all the time the swap does.
    let stop = Arc::new(AtomicBool::new(false));
    let handle = app.handle();
    let (s, p, old_v, new_v) = (
        stop.clone(),
        photo.clone(),
        old_version.clone(),
        new_version.clone(),
    );
    let load = tokio::spawn(async move {
        let app = handle;
        let (mut searches, mut saw_new, mut first) = (0usize, false, None);
        loop {
            // Read before the search: a search that starts after the stop (set once the swap
            // is done) must be answered by the new model.
            let stopping = s.load(Ordering::Acquire);
            let r = app.search(&p, "k=5").await.assert_status(200);
            let v = r.json["model_version"].as_str().unwrap().to_owned();
            assert!(v == old_v || v == new_v, "unknown model version {v}");
            // Never back to the old model once the new one answered.
            if saw_new {
                assert_eq!(v, new_v, "a search went back to the old model");
            }
            saw_new |= v == new_v;
            if stopping {
                assert_eq!(
                    v, new_v,
                    "a search after the switch was answered by the old model"
                );
            }
            first.get_or_insert(v);
            searches += 1;
            if stopping && searches >= 3 {
                break;
            }
        }
        (searches, first, saw_new)
    });

    let accepted = swap(&app, &bundle).await.assert_status(202);
    assert_eq!(accepted.json["state"], "running");
    assert_eq!(accepted.json["to_version"], new_version.as_str());
    // A second swap while one runs is refused (unless the first already finished).
    let second = swap(&app, &bundle).await;
    assert!(second.status == 409, "{}", second.text);
    // Writes keep working during the swap; their images must be searchable afterwards.
    let extra = &catalogue.products[0];
    let added = app
        .create_product(
            "acme",
            &json!({"id": "during-swap", "title": "added during the swap", "tags": extra.tags}),
            &extra.shop[..1],
        )
        .await
        .assert_status(201);
    assert_eq!(added.json["images"].as_array().unwrap().len(), 1);

    let mut done = Value::Null;
    for _ in 0..600 {
        let s = model_status(&app).await;
        match s["swap"]["state"].as_str() {
            Some("done") => {
                done = s;
                break;
            }
            Some("failed") => panic!("the swap failed: {s}"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert_eq!(done["swap"]["state"], "done", "the swap did not finish");
    assert_eq!(done["model_version"], new_version.as_str());
    stop.store(true, Ordering::Release);
    let (searches, first, saw_new) = load.await.expect("no search failed during the swap");
    eprintln!("{searches} searches during the swap");
    // The old pair answered until the switch (loading the bundle alone outlasts a search), the
    // new one after it.
    assert_eq!(first.as_deref(), Some(old_version.as_str()));
    assert!(saw_new);

    // After the switch: every result is the new model's, over the whole catalogue.
    let ready = app.readyz().await.assert_status(200).json;
    assert_eq!(ready["model_version"], new_version.as_str());
    assert_eq!(ready["model_swap"]["state"], "done");
    let after = app.search(&photo, "k=5").await.assert_status(200).json;
    assert_eq!(after["model_version"], new_version.as_str());
    // The same graphs: the same products, in the same order (besides the one added meanwhile).
    let before_ids = ids(&before);
    let after_ids: Vec<String> = ids(&after)
        .into_iter()
        .filter(|i| i != "during-swap")
        .collect();
    assert_eq!(after_ids[..], before_ids[..after_ids.len()]);
    let during = app
        .search(&extra.shop[0], "k=10&merchant=acme")
        .await
        .assert_status(200)
        .json;
    assert!(
        ids(&during).contains(&"during-swap".to_string()),
        "{during}"
    );
    // The catalogue's images, the other merchant's copy, and the one added during the swap.
    let images = catalogue
        .products
        .iter()
        .map(|p| p.shop.len())
        .sum::<usize>()
        + 2;
    assert_eq!(
        ready["index"]["live"], images,
        "one vector per image, the new model's only"
    );
    let metrics = app.metrics().await.text;
    assert!(
        metrics.contains("snapshop_model_swaps_total{result=\"done\"} 1"),
        "{metrics}"
    );

    // The swap survives a restart.
    let data_dir = app.stop().await;
    let app = spawn_app_with(data_dir, |_| {}).await;
    let ready = app.readyz().await.assert_status(200).json;
    assert_eq!(ready["model_version"], new_version.as_str());
    assert_eq!(ready["index"]["live"], images);
    app.stop().await;
}
