//! Restarts on the same data directory: with the index snapshot, without it, with a corrupt one,
//! and with embeddings of another model version.

use std::collections::BTreeMap;

use crate::common::*;
use crate::products::{add_an_image, delete_one, rename_and_retag};

async fn top5(app: &TestApp, p: &FixtureProduct) -> Vec<String> {
    let r = app.search(&p.user[0], "k=5&merchant=acme").await;
    ids(&r.assert_status(200).json)
}

/// After a rename, an added image and a delete, every street photo's top 5 is the same after a
/// restart, updates and deletes included; and after a restart without the snapshot, and one with
/// a corrupt snapshot (both rebuilt from the store), as before the first restart.
#[tokio::test]
async fn restarts_keep_results_updates_and_deletes_with_or_without_a_good_snapshot() {
    let (app, cat) = spawn_seeded_app().await;
    rename_and_retag(&app, &cat).await;
    add_an_image(&app, &cat).await;
    let gone = delete_one(&app, &cat).await;
    let mut before = BTreeMap::new();
    for p in cat.queries() {
        before.insert(p.id.clone(), top5(&app, p).await);
    }

    // Restart on the same data directory: everything is found again.
    let dir = app.stop().await;
    assert!(dir.path().join("index").exists(), "a snapshot was saved");
    let app = spawn_app_with(dir, |_| {}).await;
    for p in cat.queries() {
        let found = top5(&app, p).await;
        assert_eq!(found, before[&p.id], "results changed across a restart");
        assert!(p.id != gone.id || !found.contains(&p.id));
    }
    let got = app.get_product(MERCHANT, &cat.products[3].id).await.json;
    assert_eq!(got["title"], "Renamed");
    app.get_product(MERCHANT, &gone.id)
        .await
        .assert_error(404, "product_not_found");

    // A lost snapshot is rebuilt from the store.
    let q = cat.queries()[0];
    let dir = app.stop().await;
    std::fs::remove_dir_all(dir.path().join("index")).unwrap();
    let app = spawn_app_with(dir, |_| {}).await;
    assert_eq!(top5(&app, q).await, before[&q.id]);

    // So is a corrupt one.
    let dir = app.stop().await;
    for entry in std::fs::read_dir(dir.path().join("index")).unwrap() {
        std::fs::write(entry.unwrap().path(), b"garbage").unwrap();
    }
    let app = spawn_app_with(dir, |_| {}).await;
    assert_eq!(top5(&app, q).await, before[&q.id]);
    app.stop().await;
}

/// Embeddings made by another model version are re-embedded from the stored files at start.
#[tokio::test]
async fn embeddings_of_another_model_are_redone_at_start() {
    let products: Vec<FixtureProduct> = catalogue().into_iter().take(3).collect();
    let app = spawn_app().await;
    let mut images = 0;
    for p in &products {
        let body = serde_json::json!({"id": p.id, "title": p.id, "tags": p.tags});
        let r = app.create_product(MERCHANT, &body, &p.shop).await;
        r.assert_status(201);
        images += p.shop.len();
    }
    let q = products[0].photo();
    let before = app.search(&q, "k=3").await.assert_status(200).json;
    let dir = app.stop().await;

    // Pretend an older model made them.
    let db = dir.path().join("snapshop.db");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let changed = sqlx::query("UPDATE embeddings SET model_version = 'an-older-model'")
        .execute(&pool)
        .await
        .unwrap()
        .rows_affected();
    assert_eq!(changed as usize, images);
    pool.close().await;

    let app = spawn_app_with(dir, |_| {}).await;
    let ready = app.readyz().await.json;
    assert_eq!(ready["index"]["live"], images, "{ready}");
    let after = app.search(&q, "k=3").await.assert_status(200).json;
    assert_eq!(ids(&after), ids(&before));
    let (a, b) = (
        &after["results"][0]["score"],
        &before["results"][0]["score"],
    );
    assert!(
        (a.as_f64().unwrap() - b.as_f64().unwrap()).abs() < 1e-4,
        "{a} vs {b}"
    );
    app.stop().await;
}
