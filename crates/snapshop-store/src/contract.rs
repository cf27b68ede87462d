//! The contract every [`CatalogStore`] backend passes, written only against `&dyn CatalogStore`.
//!
//! It exists so that each backend (SQLite and Postgres) is held to the same behaviour the
//! service relies on: versions and compare-and-set, keys that are never reused, returned states
//! that are exactly what was committed, batched reads, and concurrent writers. A backend's tests
//! call [`run_all`] (or single checks) on a store of their own; failures are panics with a
//! message saying what was expected.
//!
//! Every check makes its own merchants, model versions and image paths, named by [`unique`], and
//! only looks at its own rows, so the suite may run against a shared, non-empty database, and
//! repeatedly. It must never depend on what else is in the database, nor delete anything but its
//! own products, with one exception that is global by nature: [`drop_other_versions`] deletes
//! every embedding in the database not made by its own model version (run it only where that is
//! acceptable, and not concurrently with other checks; [`run_all`] runs it last).

use std::collections::{BTreeSet, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;

use crate::{
    CatalogStore, Counts, Expect, KeyKind, KeyQuery, MerchantSettings, NewEmbedding, NewImage,
    NewKey, NewProduct, ProductRecord, ProductState, ProductUpdate, Quota, StaleImage, StoreError,
    Written,
};

/// Runs every check, one after another, [`drop_other_versions`] last.
pub async fn run_all(store: &dyn CatalogStore) {
    backend_and_ping(store).await;
    create_get_list(store).await;
    duplicate_create(store).await;
    not_found(store).await;
    versions(store).await;
    update_replaces_tags_and_embeddings(store).await;
    update_with_foreign_image_is_corrupt(store).await;
    written_states(store).await;
    load_states(store).await;
    stale_images_and_put_embeddings(store).await;
    referenced_paths(store).await;
    counts(store).await;
    concurrent_compare_and_set(store).await;
    concurrent_writes_to_different_products(store).await;
    quotas(store).await;
    merchant_overrides(store).await;
    concurrent_quota(store).await;
    keys(store).await;
    delete_image(store).await;
    purge(store).await;
    change_sequence(store).await;
    concurrent_purge_and_retag(store).await;
    import_jobs(store).await;
    concurrent_job_claims(store).await;
    change_feed(store).await;
    feed_compaction(store).await;
    drop_other_versions(store).await;
}

// ---- helpers ------------------------------------------------------------------------------------

static SEQ: AtomicU64 = AtomicU64::new(0);

/// A name no other check, run or process uses: `ct-<pid>-<time>-<sequence>-<what>`.
pub fn unique(what: &str) -> String {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("ct-{}-{t:x}-{n}-{what}", std::process::id())
}

fn new_product(merchant: &str, external_id: &str, tags: &[&str]) -> NewProduct {
    let mut tags: Vec<String> = tags.iter().map(|t| t.to_string()).collect();
    tags.sort();
    tags.dedup();
    NewProduct {
        merchant: merchant.to_owned(),
        external_id: external_id.to_owned(),
        title: format!("title of {external_id}"),
        attributes: serde_json::json!({"price": 10, "nested": {"sizes": ["s", "m"]}}),
        tags,
        quota: Quota::UNLIMITED,
    }
}

/// A distinct vector for `seed`, exactly representable so equality is meaningful.
fn vector(seed: u32) -> Vec<f32> {
    let s = seed as f32;
    vec![s, -s * 0.5, 0.25, 1.0 / 1024.0 + s]
}

fn new_image_at(path: &str, seed: u32) -> NewImage {
    NewImage {
        sha256: format!("{seed:064x}"),
        byte_size: 100 + i64::from(seed),
        width: 640 + seed,
        height: 480,
        format: "png".into(),
        path: path.to_owned(),
        embedding: vector(seed),
    }
}

/// An image with a path of its own.
fn new_image(seed: u32) -> NewImage {
    new_image_at(&format!("images/{}.png", unique("img")), seed)
}

fn tags(tags: &[&str]) -> Vec<String> {
    tags.iter().map(|t| t.to_string()).collect()
}

async fn create(
    store: &dyn CatalogStore,
    product: NewProduct,
    images: Vec<NewImage>,
    model_version: &str,
) -> Written {
    let what = format!("create {}/{}", product.merchant, product.external_id);
    store
        .create_product(product, images, model_version)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

async fn get(store: &dyn CatalogStore, merchant: &str, external_id: &str) -> ProductRecord {
    store
        .get_product(merchant, external_id)
        .await
        .unwrap_or_else(|e| panic!("get {merchant}/{external_id}: {e}"))
}

async fn update(
    store: &dyn CatalogStore,
    p: &ProductRecord,
    update: ProductUpdate,
    model_version: &str,
) -> Written {
    store
        .update_product(&p.merchant, &p.external_id, None, update, model_version)
        .await
        .unwrap_or_else(|e| panic!("update {}/{}: {e}", p.merchant, p.external_id))
}

/// The product's state for `model_version`, as a write (an empty update: bumps the version)
/// returns it.
async fn state_via_write(
    store: &dyn CatalogStore,
    p: &ProductRecord,
    model_version: &str,
) -> ProductState {
    update(store, p, ProductUpdate::default(), model_version)
        .await
        .state
}

fn assert_not_found<T: std::fmt::Debug>(
    r: crate::Result<T>,
    merchant: &str,
    external_id: &str,
    what: &str,
) {
    match r {
        Err(StoreError::ProductNotFound { merchant: m, id }) => {
            assert_eq!(
                (m.as_str(), id.as_str()),
                (merchant, external_id),
                "{what}: ProductNotFound names the product asked for"
            );
        }
        other => panic!("{what}: expected ProductNotFound, got {other:?}"),
    }
}

fn assert_conflict<T: std::fmt::Debug>(
    r: crate::Result<T>,
    p: &ProductRecord,
    expected: i64,
    actual: i64,
    what: &str,
) {
    match r {
        Err(StoreError::VersionConflict {
            merchant,
            id,
            expected: e,
            actual: a,
        }) => {
            assert_eq!(
                (merchant.as_str(), id.as_str(), e, a),
                (
                    p.merchant.as_str(),
                    p.external_id.as_str(),
                    expected,
                    actual
                ),
                "{what}: VersionConflict (merchant, id, expected, actual)"
            );
        }
        other => panic!("{what}: expected VersionConflict, got {other:?}"),
    }
}

/// Checks a write's `state` against its `product`, and that its embeddings are sorted by key
/// and belong to the product's images.
fn assert_state_matches(w: &Written, what: &str) {
    let (p, s) = (&w.product, &w.state);
    assert_eq!(s.product_id, p.id, "{what}: state.product_id");
    assert_eq!(s.version, p.version, "{what}: state.version");
    assert_eq!(s.merchant, p.merchant, "{what}: state.merchant");
    assert_eq!(s.external_id, p.external_id, "{what}: state.external_id");
    assert_eq!(s.title, p.title, "{what}: state.title");
    assert_eq!(s.tags, p.tags, "{what}: state.tags");
    let keys: Vec<i64> = s.embeddings.iter().map(|e| e.key).collect();
    assert!(
        keys.windows(2).all(|w| w[0] < w[1]),
        "{what}: state embeddings strictly by key: {keys:?}"
    );
    let images: HashSet<i64> = p.images.iter().map(|i| i.id).collect();
    for e in &s.embeddings {
        assert!(
            images.contains(&e.image_id),
            "{what}: embedding {} of image {} which is not the product's",
            e.key,
            e.image_id
        );
    }
}

/// The `(image_id, vector)` pairs of a state, in key order.
fn embedded(state: &ProductState) -> Vec<(i64, Vec<f32>)> {
    state
        .embeddings
        .iter()
        .map(|e| (e.image_id, e.vector.clone()))
        .collect()
}

/// Every stale image for `model_version` (a limit above the image count), checked to be in
/// image-id order, restricted to the given products.
async fn own_stale(
    store: &dyn CatalogStore,
    model_version: &str,
    product_ids: &[i64],
) -> Vec<StaleImage> {
    let images = store.counts().await.expect("counts").images;
    let limit = usize::try_from(images)
        .unwrap_or(usize::MAX)
        .saturating_add(1000);
    let all = store
        .stale_images(model_version, limit)
        .await
        .unwrap_or_else(|e| panic!("stale_images({model_version}): {e}"));
    assert!(
        all.windows(2).all(|w| w[0].image_id < w[1].image_id),
        "stale_images is strictly by image id"
    );
    all.into_iter()
        .filter(|s| product_ids.contains(&s.product_id))
        .collect()
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Polls all futures concurrently on the current task; their results in input order.
async fn join_all<T>(futures: Vec<BoxFuture<'_, T>>) -> Vec<T> {
    let mut futures: Vec<Option<BoxFuture<'_, T>>> = futures.into_iter().map(Some).collect();
    let mut results: Vec<Option<T>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (slot, result) in futures.iter_mut().zip(results.iter_mut()) {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => {
                        *result = Some(v);
                        *slot = None;
                    }
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    results
        .into_iter()
        .map(|r| r.expect("every future completed"))
        .collect()
}

// ---- checks -------------------------------------------------------------------------------------

/// `backend()` names the backend and `ping` answers.
pub async fn backend_and_ping(store: &dyn CatalogStore) {
    assert!(!store.backend().is_empty(), "backend() names the backend");
    store.ping().await.expect("ping answers");
}

/// Create returns the committed product at version 1; `get_product` returns the same; pages of
/// `list_products` (by `after` and `limit`) come in id order, with tags and images equal to
/// `get_product`'s, and only the merchant's own products.
pub async fn create_get_list(store: &dyn CatalogStore) {
    let m = unique("merchant");
    let other = unique("merchant");
    let mv = unique("model");
    let imgs = vec![new_image(1), new_image(2)];
    let w = create(
        store,
        new_product(&m, "p1", &["color:red", "category:dress"]),
        imgs.clone(),
        &mv,
    )
    .await;
    assert_state_matches(&w, "create");
    let p = &w.product;
    assert_eq!(
        (
            p.merchant.as_str(),
            p.external_id.as_str(),
            p.title.as_str()
        ),
        (m.as_str(), "p1", "title of p1"),
        "create: merchant, external id, title"
    );
    assert_eq!(
        p.attributes,
        new_product(&m, "p1", &[]).attributes,
        "attributes round trip"
    );
    assert_eq!(
        p.tags,
        tags(&["category:dress", "color:red"]),
        "tags, sorted"
    );
    assert_eq!(p.version, 1, "a created product is at version 1");
    assert!(p.created_at > 0, "created_at is set");
    assert_eq!(
        p.created_at, p.updated_at,
        "created_at == updated_at at creation"
    );
    assert_eq!(p.images.len(), 2, "both images stored");
    for (img, new) in p.images.iter().zip(&imgs) {
        assert_eq!(img.product_id, p.id, "image.product_id");
        assert_eq!(
            (
                &img.sha256,
                img.byte_size,
                img.width,
                img.height,
                &img.format,
                &img.path
            ),
            (
                &new.sha256,
                new.byte_size,
                new.width,
                new.height,
                &new.format,
                &new.path
            ),
            "image fields round trip, in insertion order"
        );
    }
    assert!(p.images[0].id < p.images[1].id, "images by id");
    assert_eq!(
        embedded(&w.state),
        vec![
            (p.images[0].id, imgs[0].embedding.clone()),
            (p.images[1].id, imgs[1].embedding.clone())
        ],
        "create: state holds each image's embedding"
    );
    assert_eq!(
        &get(store, &m, "p1").await,
        p,
        "get_product returns what create committed"
    );

    let mut all = vec![p.clone()];
    for i in 2..=5u32 {
        let images = (0..i % 3).map(|k| new_image(10 * i + k)).collect();
        let n = format!("n:{i}");
        let w = create(
            store,
            new_product(&m, &format!("p{i}"), &["z:z", &n]),
            images,
            &mv,
        )
        .await;
        assert!(
            w.product.id > all.last().unwrap().id,
            "product ids increase"
        );
        all.push(w.product);
    }
    create(
        store,
        new_product(&other, "p1", &[]),
        vec![new_image(99)],
        &mv,
    )
    .await;

    let mut paged = Vec::new();
    let mut after = None;
    for round in 0.. {
        assert!(round <= all.len(), "paging terminates");
        let page = store
            .list_products(&m, after, 2)
            .await
            .unwrap_or_else(|e| panic!("list_products after {after:?}: {e}"));
        assert!(page.len() <= 2, "a page holds at most `limit` products");
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        paged.extend(page);
    }
    assert_eq!(
        paged, all,
        "pages of 2 concatenate to all products, in id order"
    );
    for listed in &paged {
        assert_eq!(
            listed,
            &get(store, &m, &listed.external_id).await,
            "listed product equals get_product's (tags and images batched correctly)"
        );
    }
    let whole = store.list_products(&m, None, 100).await.expect("list all");
    assert_eq!(whole, all, "one large page");
    let middle = store
        .list_products(&m, Some(all[1].id), 2)
        .await
        .expect("list middle");
    assert_eq!(middle, all[2..4].to_vec(), "a page strictly after `after`");
    let empty = store
        .list_products(&m, Some(all[4].id), 10)
        .await
        .expect("list past the end");
    assert!(empty.is_empty(), "nothing after the last product");
    let zero = store
        .list_products(&m, None, 0)
        .await
        .expect("list limit 0");
    assert!(zero.is_empty(), "limit 0 gives an empty page");
    let nobody = store
        .list_products(&unique("nobody"), None, 10)
        .await
        .expect("list of an unknown merchant");
    assert!(nobody.is_empty(), "an unknown merchant has no products");
}

/// A second create of the same merchant and external id is `ProductExists` and changes
/// nothing; the same external id under another merchant is a different product.
pub async fn duplicate_create(store: &dyn CatalogStore) {
    let m = unique("merchant");
    let other = unique("merchant");
    let mv = unique("model");
    let first = create(
        store,
        new_product(&m, "dup", &["a:b"]),
        vec![new_image(1)],
        &mv,
    )
    .await;
    let mut again = new_product(&m, "dup", &["c:d"]);
    again.title = "another title".into();
    match store.create_product(again, vec![new_image(2)], &mv).await {
        Err(StoreError::ProductExists { merchant, id }) => {
            assert_eq!(
                (merchant.as_str(), id.as_str()),
                (m.as_str(), "dup"),
                "ProductExists names it"
            );
        }
        other => panic!("duplicate create: expected ProductExists, got {other:?}"),
    }
    assert_eq!(
        get(store, &m, "dup").await,
        first.product,
        "a failed duplicate create changes nothing"
    );
    let elsewhere = create(store, new_product(&other, "dup", &[]), vec![], &mv).await;
    assert_ne!(
        elsewhere.product.id, first.product.id,
        "another merchant's product"
    );
    assert_eq!(
        elsewhere.product.version, 1,
        "another merchant's product is new"
    );
    assert_eq!(
        get(store, &m, "dup").await,
        first.product,
        "the first is untouched"
    );
}

/// Every operation on a missing product (unknown id, unknown merchant, deleted) is
/// `ProductNotFound`, also with `expect` given.
pub async fn not_found(store: &dyn CatalogStore) {
    let m = unique("merchant");
    let nobody = unique("nobody");
    let mv = unique("model");
    let gone = create(store, new_product(&m, "gone", &[]), vec![new_image(1)], &mv).await;
    create(store, new_product(&m, "exists", &[]), vec![], &mv).await;
    store
        .delete_product(&m, "gone", None)
        .await
        .expect("delete `gone`");
    for (merchant, id) in [
        (m.as_str(), "missing"),
        (nobody.as_str(), "exists"),
        (m.as_str(), "gone"),
    ] {
        let what = |op: &str| format!("{op} {merchant}/{id}");
        assert_not_found(
            store.get_product(merchant, id).await,
            merchant,
            id,
            &what("get"),
        );
        for expect in [None, Some(at(1, 1))] {
            assert_not_found(
                store
                    .add_images(
                        merchant,
                        id,
                        expect,
                        vec![new_image(2)],
                        &mv,
                        Quota::UNLIMITED,
                    )
                    .await,
                merchant,
                id,
                &what("add_images"),
            );
            assert_not_found(
                store
                    .update_product(merchant, id, expect, ProductUpdate::default(), &mv)
                    .await,
                merchant,
                id,
                &what("update"),
            );
            assert_not_found(
                store.delete_product(merchant, id, expect).await,
                merchant,
                id,
                &what("delete"),
            );
        }
    }
    let paths = vec![gone.product.images[0].path.clone()];
    assert!(
        store
            .referenced_paths(&paths)
            .await
            .expect("referenced_paths")
            .is_empty(),
        "a deleted product's image path is not referenced"
    );
}

/// Versions: 1 at creation, +1 for every write (also an empty update); a write with a
/// mismatching `expect` is `VersionConflict` and changes nothing; a matching one works.
pub async fn versions(store: &dyn CatalogStore) {
    let m = unique("merchant");
    let mv = unique("model");
    let w = create(
        store,
        new_product(&m, "v", &["a:b"]),
        vec![new_image(1)],
        &mv,
    )
    .await;
    let pid = w.product.id;
    let created = w.product.clone();
    assert_eq!(
        (w.product.version, w.state.version),
        (1, 1),
        "create: version 1"
    );

    let w = store
        .add_images(&m, "v", None, vec![new_image(2)], &mv, Quota::UNLIMITED)
        .await
        .expect("add_images without expect");
    assert_eq!(
        (w.product.version, w.state.version),
        (2, 2),
        "add_images bumps to 2"
    );
    assert_eq!(w.product.images.len(), 2, "image added");
    assert_eq!(
        w.product.created_at, created.created_at,
        "created_at is kept"
    );
    assert!(
        w.product.updated_at >= created.updated_at,
        "updated_at moves forward"
    );

    let upd = ProductUpdate {
        title: Some("third".into()),
        ..Default::default()
    };
    let w = store
        .update_product(&m, "v", None, upd, &mv)
        .await
        .expect("update without expect");
    assert_eq!(w.product.version, 3, "update bumps to 3");
    let at3 = w.product.clone();

    let stale = ProductUpdate {
        title: Some("stale".into()),
        tags: Some(tags(&["x:y"])),
        ..Default::default()
    };
    assert_conflict(
        store
            .update_product(&m, "v", Some(at(pid, 1)), stale.clone(), &mv)
            .await,
        &at3,
        1,
        3,
        "update expecting 1 at 3",
    );
    assert_conflict(
        store
            .add_images(
                &m,
                "v",
                Some(at(pid, 2)),
                vec![new_image(3)],
                &mv,
                Quota::UNLIMITED,
            )
            .await,
        &at3,
        2,
        3,
        "add_images expecting 2 at 3",
    );
    assert_conflict(
        store.delete_product(&m, "v", Some(at(pid, 4))).await,
        &at3,
        4,
        3,
        "delete expecting 4 at 3",
    );
    assert_eq!(
        get(store, &m, "v").await,
        at3,
        "conflicting writes change nothing"
    );

    let w = store
        .update_product(&m, "v", Some(at(pid, 3)), stale, &mv)
        .await
        .expect("update expecting the current version");
    assert_eq!(w.product.version, 4, "matching expect: bumps to 4");
    assert_eq!(w.product.title, "stale", "matching expect: applied");
    assert_eq!(
        w.product.tags,
        tags(&["x:y"]),
        "matching expect: tags applied"
    );
    let w = store
        .add_images(
            &m,
            "v",
            Some(at(pid, 4)),
            vec![new_image(4)],
            &mv,
            Quota::UNLIMITED,
        )
        .await
        .expect("add_images expecting the current version");
    assert_eq!(
        w.product.version, 5,
        "add_images with matching expect bumps to 5"
    );
    let w = store
        .update_product(&m, "v", Some(at(pid, 5)), ProductUpdate::default(), &mv)
        .await
        .expect("empty update");
    assert_eq!(
        w.product.version, 6,
        "an empty update is a write too: bumps to 6"
    );
    assert_eq!(
        get(store, &m, "v").await,
        w.product,
        "get agrees with the last write"
    );

    let d = store
        .delete_product(&m, "v", Some(at(pid, 6)))
        .await
        .expect("delete expecting the current version");
    assert_eq!(d.product, w.product, "delete returns the product as it was");
    assert_not_found(
        store.get_product(&m, "v").await,
        &m,
        "v",
        "get after delete",
    );

    // A re-created product is another incarnation: the old one's precondition never matches it,
    // even at the same version number.
    let again = create(store, new_product(&m, "v", &[]), vec![new_image(1)], &mv).await;
    assert_eq!(again.product.version, 1);
    assert_ne!(again.product.id, pid, "product ids are never reused");
    assert_conflict(
        store
            .update_product(&m, "v", Some(at(pid, 1)), ProductUpdate::default(), &mv)
            .await,
        &again.product,
        1,
        1,
        "update expecting the deleted incarnation",
    );
    store
        .update_product(
            &m,
            "v",
            Some(at(again.product.id, 1)),
            ProductUpdate::default(),
            &mv,
        )
        .await
        .expect("update expecting the new incarnation");
}

/// The precondition "product `product_id` at `version`".
pub fn at(product_id: i64, version: i64) -> Expect {
    Expect {
        product_id,
        version,
    }
}

/// Updates replace tags and embeddings; replaced embeddings get keys greater than every key
/// before; a tag-only update keeps embeddings; ids and keys are never reused after a delete and
/// a re-create.
pub async fn update_replaces_tags_and_embeddings(store: &dyn CatalogStore) {
    let m = unique("merchant");
    let mv = unique("model");
    let w = create(
        store,
        new_product(&m, "u", &["a:b"]),
        vec![new_image(1), new_image(2)],
        &mv,
    )
    .await;
    let p = w.product.clone();
    let (img0, img1) = (p.images[0].id, p.images[1].id);
    let mut seen: BTreeSet<i64> = w.state.embeddings.iter().map(|e| e.key).collect();
    assert_eq!(seen.len(), 2, "two keys at creation");

    let w = update(
        store,
        &p,
        ProductUpdate {
            title: Some("new title".into()),
            attributes: Some(serde_json::json!({"price": 12})),
            tags: Some(tags(&["c:d", "e:f"])),
            embeddings: vec![(img0, vector(100))],
        },
        &mv,
    )
    .await;
    assert_state_matches(&w, "update tags and one embedding");
    assert_eq!(w.product.title, "new title", "title replaced");
    assert_eq!(
        w.product.attributes,
        serde_json::json!({"price": 12}),
        "attributes replaced"
    );
    assert_eq!(w.product.tags, tags(&["c:d", "e:f"]), "tags replaced");
    assert_eq!(w.product.images, p.images, "images unchanged");
    assert_eq!(
        embedded(&w.state),
        vec![(img1, vector(2)), (img0, vector(100))],
        "img1 keeps its embedding; img0's replacement comes last (newest key)"
    );
    let new_key = w.state.embeddings[1].key;
    assert!(
        new_key > *seen.last().unwrap(),
        "a replacement key ({new_key}) is greater than every earlier key ({seen:?})"
    );
    assert_eq!(
        w.state.embeddings[0].key,
        *seen.iter().nth(1).unwrap(),
        "img1's key is kept"
    );
    seen.insert(new_key);
    let before = w.state.embeddings.clone();

    let w = update(
        store,
        &w.product,
        ProductUpdate {
            tags: Some(tags(&["g:h"])),
            ..Default::default()
        },
        &mv,
    )
    .await;
    assert_eq!(w.product.tags, tags(&["g:h"]), "tag-only update");
    assert_eq!(w.product.title, "new title", "title kept when not given");
    assert_eq!(
        w.state.embeddings, before,
        "a tag-only update keeps the embeddings"
    );

    let w = update(
        store,
        &w.product,
        ProductUpdate {
            embeddings: vec![(img0, vector(101)), (img1, vector(102))],
            ..Default::default()
        },
        &mv,
    )
    .await;
    assert_eq!(
        embedded(&w.state),
        vec![(img0, vector(101)), (img1, vector(102))],
        "both replaced, in the order given"
    );
    for e in &w.state.embeddings {
        assert!(
            e.key > *seen.last().unwrap(),
            "replacement key {} is greater than every earlier key ({seen:?})",
            e.key
        );
    }
    seen.extend(w.state.embeddings.iter().map(|e| e.key));

    store
        .delete_product(&m, "u", None)
        .await
        .expect("delete before re-create");
    let again = create(
        store,
        new_product(&m, "u", &["a:b"]),
        vec![new_image(1), new_image(2)],
        &mv,
    )
    .await;
    assert!(
        again.product.id > p.id,
        "a re-created product gets a new id"
    );
    assert_eq!(
        again.product.version, 1,
        "a re-created product starts at version 1"
    );
    assert!(
        again.product.images.iter().all(|i| i.id > img1),
        "image ids are not reused"
    );
    for e in &again.state.embeddings {
        assert!(
            e.key > *seen.last().unwrap(),
            "key {} after re-create is greater than every earlier key ({seen:?})",
            e.key
        );
    }
}

/// An update naming an image that is not the product's is `Corrupt` and changes nothing
/// (neither the product nor the other product).
pub async fn update_with_foreign_image_is_corrupt(store: &dyn CatalogStore) {
    let m = unique("merchant");
    let mv = unique("model");
    let a = create(
        store,
        new_product(&m, "a", &["a:a"]),
        vec![new_image(1)],
        &mv,
    )
    .await;
    let b = create(
        store,
        new_product(&m, "b", &["b:b"]),
        vec![new_image(2)],
        &mv,
    )
    .await;
    let (own, foreign) = (a.product.images[0].id, b.product.images[0].id);
    for embeddings in [
        vec![(foreign, vector(3))],
        vec![(own, vector(4)), (foreign, vector(5))],
        vec![(own, vector(6)), (i64::MAX, vector(7))],
    ] {
        let r = store
            .update_product(
                &m,
                "a",
                None,
                ProductUpdate {
                    title: Some("changed".into()),
                    tags: Some(tags(&["c:c"])),
                    embeddings: embeddings.clone(),
                    ..Default::default()
                },
                &mv,
            )
            .await;
        assert!(
            matches!(r, Err(StoreError::Corrupt(_))),
            "update with {:?}: expected Corrupt, got {r:?}",
            embeddings.iter().map(|e| e.0).collect::<Vec<_>>()
        );
        assert_eq!(
            get(store, &m, "a").await,
            a.product,
            "rejected update changes nothing"
        );
        assert_eq!(
            get(store, &m, "b").await,
            b.product,
            "the other product is untouched"
        );
    }
    assert_eq!(
        state_via_write(store, &a.product, &mv).await.embeddings,
        a.state.embeddings,
        "the product's own embedding was not replaced"
    );
    assert_eq!(
        state_via_write(store, &b.product, &mv).await.embeddings,
        b.state.embeddings,
        "the foreign image's embedding was not replaced"
    );
}

/// The `state` a write returns is the product's complete state for the write's model version:
/// every embedding by that version (also ones made earlier), none by others.
pub async fn written_states(store: &dyn CatalogStore) {
    let m = unique("merchant");
    let (v1, v2) = (unique("model-1"), unique("model-2"));
    let w = create(
        store,
        new_product(&m, "s", &["k:v"]),
        vec![new_image(1), new_image(2)],
        &v1,
    )
    .await;
    assert_state_matches(&w, "create");
    let (img0, img1) = (w.product.images[0].id, w.product.images[1].id);
    assert_eq!(
        embedded(&w.state),
        vec![(img0, vector(1)), (img1, vector(2))],
        "create by v1: both embeddings"
    );
    let created_keys: Vec<i64> = w.state.embeddings.iter().map(|e| e.key).collect();

    let w = store
        .add_images(&m, "s", None, vec![new_image(3)], &v2, Quota::UNLIMITED)
        .await
        .expect("add_images by v2");
    assert_state_matches(&w, "add_images by v2");
    let img2 = w.product.images[2].id;
    assert_eq!(
        embedded(&w.state),
        vec![(img2, vector(3))],
        "a write by v2 returns only v2 embeddings"
    );
    let img2_key = w.state.embeddings[0].key;

    let w = update(
        store,
        &w.product,
        ProductUpdate {
            title: Some("retitled".into()),
            ..Default::default()
        },
        &v1,
    )
    .await;
    assert_state_matches(&w, "update by v1");
    assert_eq!(w.state.title, "retitled", "state carries the new title");
    assert_eq!(
        w.state.embeddings.iter().map(|e| e.key).collect::<Vec<_>>(),
        created_keys,
        "a write by v1 returns all v1 embeddings, also those made earlier, and no v2 one"
    );

    let w = update(
        store,
        &w.product,
        ProductUpdate {
            embeddings: vec![(img0, vector(4))],
            ..Default::default()
        },
        &v2,
    )
    .await;
    assert_state_matches(&w, "update img0 by v2");
    assert_eq!(
        embedded(&w.state),
        vec![(img2, vector(3)), (img0, vector(4))],
        "v2 state: img2's earlier embedding, then img0's new one"
    );
    assert_eq!(w.state.embeddings[0].key, img2_key, "img2's v2 key kept");
    let s = state_via_write(store, &w.product, &v1).await;
    assert_eq!(
        embedded(&s),
        vec![(img1, vector(2))],
        "img0 lost its v1 embedding when replaced by v2"
    );
    assert_eq!(
        s.version,
        w.product.version + 1,
        "the empty write bumped the version"
    );
}

/// `load_states` holds every product (also those without embeddings by the version) with its
/// tags and only that version's embeddings, equal to what the last write returned.
pub async fn load_states(store: &dyn CatalogStore) {
    let m = unique("merchant");
    let (v1, v2) = (unique("model-1"), unique("model-2"));
    let p1 = create(
        store,
        new_product(&m, "p1", &["a:1", "b:1"]),
        vec![new_image(1), new_image(2)],
        &v1,
    )
    .await;
    let p2 = create(store, new_product(&m, "p2", &["a:2"]), vec![], &v1).await;
    let p3 = create(store, new_product(&m, "p3", &[]), vec![new_image(3)], &v2).await;
    create(store, new_product(&m, "p4", &[]), vec![new_image(4)], &v1).await;
    store
        .delete_product(&m, "p4", None)
        .await
        .expect("delete p4");

    let own = |states: Vec<ProductState>| -> Vec<ProductState> {
        let mut own: Vec<ProductState> = states.into_iter().filter(|s| s.merchant == m).collect();
        own.sort_by_key(|s| s.product_id);
        own
    };
    let states = own(store.load_states(&v1).await.expect("load_states v1"));
    let ids: Vec<&str> = states.iter().map(|s| s.external_id.as_str()).collect();
    assert_eq!(
        ids,
        ["p1", "p2", "p3"],
        "every live product, once; the deleted one not"
    );
    assert_eq!(states[0], p1.state, "p1 as its create returned it");
    assert_eq!(states[1], p2.state, "p2 without images is included");
    assert_eq!(states[2].tags, Vec::<String>::new(), "p3 has no tags");
    assert!(
        states[2].embeddings.is_empty(),
        "p3 is included without its v2 embedding"
    );
    assert_eq!(
        (
            states[2].product_id,
            states[2].version,
            states[2].title.as_str()
        ),
        (p3.product.id, 1, "title of p3"),
        "p3's identity"
    );

    let states = own(store.load_states(&v2).await.expect("load_states v2"));
    assert_eq!(states.len(), 3, "v2: the same products");
    assert!(states[0].embeddings.is_empty(), "p1 has no v2 embedding");
    assert_eq!(states[2], p3.state, "p3 as its create by v2 returned it");

    let w = update(
        store,
        &p1.product,
        ProductUpdate {
            tags: Some(tags(&["c:1"])),
            embeddings: vec![(p1.product.images[1].id, vector(5))],
            ..Default::default()
        },
        &v1,
    )
    .await;
    let states = own(store
        .load_states(&v1)
        .await
        .expect("load_states v1 after update"));
    assert_eq!(
        states[0], w.state,
        "load_states agrees with the last write's state"
    );
    let none = own(store
        .load_states(&unique("model-none"))
        .await
        .expect("load_states unused"));
    assert_eq!(
        none.len(),
        3,
        "a version nobody used still lists every product"
    );
    assert!(
        none.iter().all(|s| s.embeddings.is_empty()),
        "without embeddings"
    );
}

/// `stale_images` lists images without an embedding by a version, by image id, with the
/// product's version and tags; `put_embeddings` writes those whose product is still at that
/// version, skips the rest (product changed, image gone, wrong product), replaces an existing
/// same-version embedding under a new key, and does not bump versions.
pub async fn stale_images_and_put_embeddings(store: &dyn CatalogStore) {
    let m = unique("merchant");
    let (old, new) = (unique("model-old"), unique("model-new"));
    let p1 = create(
        store,
        new_product(&m, "p1", &["t:1"]),
        vec![new_image(1), new_image(2)],
        &old,
    )
    .await;
    let p2 = create(
        store,
        new_product(&m, "p2", &["t:2"]),
        vec![new_image(3)],
        &old,
    )
    .await;
    let p3 = create(store, new_product(&m, "p3", &[]), vec![new_image(4)], &old).await;
    let ids = [p1.product.id, p2.product.id, p3.product.id];

    assert!(
        own_stale(store, &old, &ids).await.is_empty(),
        "nothing stale for the model used"
    );
    let stale = own_stale(store, &new, &ids).await;
    let expected: Vec<StaleImage> = [&p1, &p2, &p3]
        .iter()
        .flat_map(|w| {
            w.product.images.iter().map(|i| StaleImage {
                image_id: i.id,
                product_id: w.product.id,
                product_version: 1,
                tags: w.product.tags.clone(),
                path: i.path.clone(),
            })
        })
        .collect();
    assert_eq!(stale, expected, "every image is stale for another model");
    let first = store.stale_images(&new, 1).await.expect("stale limit 1");
    assert_eq!(first.len(), 1, "limit 1");
    assert!(
        first[0].image_id <= stale[0].image_id,
        "the lowest image id first"
    );
    assert!(
        store
            .stale_images(&new, 0)
            .await
            .expect("stale limit 0")
            .is_empty(),
        "limit 0"
    );
    let emb = |s: &StaleImage, seed: u32| NewEmbedding {
        image_id: s.image_id,
        product_id: s.product_id,
        product_version: s.product_version,
        vector: vector(seed),
    };

    // p2 moves on before its embedding arrives: skipped.
    let p2v2 = update(
        store,
        &p2.product,
        ProductUpdate {
            tags: Some(tags(&["t:22"])),
            ..Default::default()
        },
        &old,
    )
    .await;
    assert_eq!(
        store
            .put_embeddings(&new, vec![emb(&stale[2], 10)])
            .await
            .expect("put stale p2"),
        0,
        "an embedding for an older product version is skipped"
    );
    // p3 is deleted before its embedding arrives: skipped.
    store
        .delete_product(&m, "p3", None)
        .await
        .expect("delete p3");
    assert_eq!(
        store
            .put_embeddings(&new, vec![emb(&stale[3], 11)])
            .await
            .expect("put gone p3"),
        0,
        "an embedding for a deleted image is skipped"
    );
    // An image claimed for the wrong product: skipped.
    let wrong = NewEmbedding {
        product_id: p2.product.id,
        product_version: 2,
        ..emb(&stale[0], 12)
    };
    assert_eq!(
        store
            .put_embeddings(&new, vec![wrong])
            .await
            .expect("put wrong product"),
        0,
        "an embedding naming another product is skipped"
    );
    assert_eq!(
        store
            .put_embeddings(&new, vec![])
            .await
            .expect("put nothing"),
        0,
        "an empty batch writes nothing"
    );
    let still = own_stale(store, &new, &ids).await;
    assert_eq!(
        still,
        expected[..3]
            .iter()
            .cloned()
            .map(|mut s| {
                if s.product_id == p2.product.id {
                    s.product_version = 2;
                    s.tags = tags(&["t:22"]);
                }
                s
            })
            .collect::<Vec<_>>(),
        "skipped embeddings leave images stale (with current versions and tags)"
    );

    let n = store
        .put_embeddings(&new, vec![emb(&stale[0], 13), emb(&stale[1], 14)])
        .await
        .expect("put p1");
    assert_eq!(n, 2, "both of p1's embeddings written");
    assert_eq!(
        get(store, &m, "p1").await,
        p1.product,
        "put_embeddings does not bump versions"
    );
    let left = own_stale(store, &new, &ids).await;
    assert_eq!(left.len(), 1, "only p2's image left stale");
    assert_eq!(
        (left[0].image_id, left[0].product_version, &left[0].tags),
        (p2v2.product.images[0].id, 2, &tags(&["t:22"])),
        "p2's image, at p2's current version and tags"
    );
    let s = state_via_write(store, &p1.product, &new).await;
    assert_eq!(
        embedded(&s),
        vec![
            (stale[0].image_id, vector(13)),
            (stale[1].image_id, vector(14))
        ],
        "p1's new-model state holds the put embeddings"
    );
    let first_keys: Vec<i64> = s.embeddings.iter().map(|e| e.key).collect();
    let old_keys: Vec<i64> = p1.state.embeddings.iter().map(|e| e.key).collect();
    assert!(
        first_keys
            .iter()
            .all(|k| k > old_keys.iter().max().unwrap()),
        "put keys are new"
    );

    // Replacing an existing same-version embedding: new key, other versions untouched; a
    // mixed batch writes only the current ones.
    let current = NewEmbedding {
        product_version: s.version,
        ..emb(&stale[0], 15)
    };
    let outdated = emb(&stale[1], 16);
    let p2_now = NewEmbedding {
        product_version: 2,
        ..emb(&stale[2], 17)
    };
    assert_eq!(
        store
            .put_embeddings(&new, vec![current, outdated, p2_now])
            .await
            .expect("mixed put"),
        2,
        "a mixed batch writes only embeddings for current product versions"
    );
    let p1_now = get(store, &m, "p1").await;
    let s = state_via_write(store, &p1_now, &new).await;
    assert_eq!(
        embedded(&s),
        vec![
            (stale[1].image_id, vector(14)),
            (stale[0].image_id, vector(15))
        ],
        "the replaced embedding comes last, under a new key"
    );
    assert!(
        s.embeddings[1].key > *first_keys.iter().max().unwrap(),
        "replacement key is new"
    );
    let s_old = state_via_write(store, &p1_now, &old).await;
    assert_eq!(
        s_old.embeddings.iter().map(|e| e.key).collect::<Vec<_>>(),
        old_keys,
        "embeddings by other versions are untouched by put_embeddings"
    );
    assert!(
        own_stale(store, &new, &ids).await.is_empty(),
        "nothing stale any more"
    );
}

/// `referenced_paths` says which paths some image row still refers to, for any number of
/// paths; a file shared by two products stays referenced until both are deleted.
pub async fn referenced_paths(store: &dyn CatalogStore) {
    let m = unique("merchant");
    let mv = unique("model");
    let shared = format!("images/{}.png", unique("shared"));
    let only_a = format!("images/{}.png", unique("only-a"));
    let never = format!("images/{}.png", unique("never"));
    create(
        store,
        new_product(&m, "a", &[]),
        vec![new_image_at(&shared, 1), new_image_at(&only_a, 2)],
        &mv,
    )
    .await;
    create(
        store,
        new_product(&m, "b", &[]),
        vec![new_image_at(&shared, 1)],
        &mv,
    )
    .await;
    let set =
        |paths: &[&String]| -> HashSet<String> { paths.iter().map(|p| (*p).clone()).collect() };
    let ask = vec![
        shared.clone(),
        only_a.clone(),
        never.clone(),
        shared.clone(),
    ];

    assert!(
        store
            .referenced_paths(&[])
            .await
            .expect("no paths")
            .is_empty(),
        "no paths asked, none referenced"
    );
    assert_eq!(
        store
            .referenced_paths(&ask)
            .await
            .expect("referenced_paths"),
        set(&[&shared, &only_a]),
        "referenced: the shared and a's own path, not the unknown one"
    );
    let mut many: Vec<String> = (0..1234)
        .map(|i| format!("images/{}-{i}.png", unique("nope")))
        .collect();
    many.insert(700, shared.clone());
    many.push(only_a.clone());
    assert_eq!(
        store.referenced_paths(&many).await.expect("many paths"),
        set(&[&shared, &only_a]),
        "a large batch (more than one chunk) finds the same"
    );
    store.delete_product(&m, "a", None).await.expect("delete a");
    assert_eq!(
        store
            .referenced_paths(&ask)
            .await
            .expect("after deleting a"),
        set(&[&shared]),
        "after deleting a: the shared path is still b's"
    );
    store.delete_product(&m, "b", None).await.expect("delete b");
    assert!(
        store
            .referenced_paths(&ask)
            .await
            .expect("after deleting both")
            .is_empty(),
        "after deleting both: nothing referenced"
    );
}

/// `counts` moves by exactly what a create and a delete change (retried a few times in case
/// other writers share the database) and never lies below what this check knows exists.
pub async fn counts(store: &dyn CatalogStore) {
    let mut last = None;
    for _attempt in 0..5 {
        let m = unique("merchant");
        let mv = unique("model");
        let before = store.counts().await.expect("counts before");
        create(
            store,
            new_product(&m, "c", &[]),
            vec![new_image(1), new_image(2)],
            &mv,
        )
        .await;
        let after = store.counts().await.expect("counts after create");
        assert!(
            after.merchants >= 1
                && after.products >= 1
                && after.images >= 2
                && after.embeddings >= 2,
            "counts cover this check's own rows: {after:?}"
        );
        store.delete_product(&m, "c", None).await.expect("delete");
        let end = store.counts().await.expect("counts after delete");
        let created = Counts {
            merchants: before.merchants + 1,
            products: before.products + 1,
            images: before.images + 2,
            embeddings: before.embeddings + 2,
        };
        let deleted = Counts {
            products: after.products.wrapping_sub(1),
            images: after.images.wrapping_sub(2),
            embeddings: after.embeddings.wrapping_sub(2),
            ..after
        };
        if after == created && end == deleted {
            return;
        }
        last = Some((before, after, end));
    }
    let (before, after, end) = last.unwrap();
    panic!(
        "counts do not follow a create (+1 merchant, +1 product, +2 images, +2 embeddings) \
         and a delete: before {before:?}, after create {after:?}, after delete {end:?}"
    );
}

/// Many concurrent compare-and-set updates of one product: exactly one wins per version, the
/// rest get `VersionConflict`; the final version is 1 + the number of wins and the final
/// fields are the last winner's.
pub async fn concurrent_compare_and_set(store: &dyn CatalogStore) {
    const WRITERS: usize = 12;
    const ATTEMPTS: usize = 4;
    let m = unique("merchant");
    let mv = unique("model");
    let created = create(store, new_product(&m, "cas", &[]), vec![new_image(1)], &mv).await;
    let image_id = created.product.images[0].id;
    let pid = created.product.id;

    // Round one: everyone expects version 1 at once.
    let attempt = |w: usize, a: usize, expect: i64| {
        let m = m.clone();
        let mv = mv.clone();
        Box::pin(async move {
            let title = format!("writer {w} attempt {a}");
            let r = store
                .update_product(
                    &m,
                    "cas",
                    Some(at(pid, expect)),
                    ProductUpdate {
                        title: Some(title.clone()),
                        tags: Some(vec![format!("writer:{w}")]),
                        embeddings: vec![(image_id, vector((w * 100 + a) as u32))],
                        ..Default::default()
                    },
                    &mv,
                )
                .await;
            (expect, title, r)
        }) as BoxFuture<'_, (i64, String, crate::Result<Written>)>
    };
    let mut wins: Vec<(i64, String)> = Vec::new();
    let mut conflicts = 0;
    let first = join_all((0..WRITERS).map(|w| attempt(w, 0, 1)).collect()).await;
    for (expect, title, r) in first {
        match r {
            Ok(w) => {
                assert_eq!(w.product.version, expect + 1, "a win bumps by exactly one");
                assert_eq!(w.product.title, title, "a win returns its own write");
                wins.push((w.product.version, title));
            }
            Err(StoreError::VersionConflict {
                expected, actual, ..
            }) => {
                assert_eq!(
                    (expected, actual),
                    (1, 2),
                    "losers of round one see version 2"
                );
                conflicts += 1;
            }
            Err(e) => panic!("concurrent update: unexpected error {e}"),
        }
    }
    assert_eq!(
        wins.len(),
        1,
        "exactly one of {WRITERS} writers expecting version 1 wins"
    );
    assert_eq!(
        conflicts,
        WRITERS - 1,
        "every other writer gets VersionConflict"
    );

    // Then everyone reads and retries, racing each other.
    let (m_ref, attempt_ref) = (&m, &attempt);
    let racer = move |w: usize| {
        Box::pin(async move {
            let mut out = Vec::new();
            for a in 1..=ATTEMPTS {
                let seen = get(store, m_ref, "cas").await.version;
                out.push(attempt_ref(w, a, seen).await);
            }
            out
        }) as BoxFuture<'_, Vec<(i64, String, crate::Result<Written>)>>
    };
    for (expect, title, r) in join_all((0..WRITERS).map(racer).collect())
        .await
        .into_iter()
        .flatten()
    {
        match r {
            Ok(w) => {
                assert_eq!(w.product.version, expect + 1, "a win bumps by exactly one");
                assert_eq!(
                    w.state.version, w.product.version,
                    "state at the new version"
                );
                wins.push((w.product.version, title));
            }
            Err(StoreError::VersionConflict {
                expected, actual, ..
            }) => {
                assert_eq!(expected, expect, "the conflict names the expected version");
                assert!(
                    actual > expected,
                    "a conflict means someone else won ({actual} > {expected})"
                );
                conflicts += 1;
            }
            Err(e) => panic!("concurrent update: unexpected error {e}"),
        }
    }
    wins.sort();
    let versions: Vec<i64> = wins.iter().map(|w| w.0).collect();
    let expected: Vec<i64> = (2..2 + wins.len() as i64).collect();
    assert_eq!(
        versions, expected,
        "exactly one win per version, with no gaps"
    );
    assert_eq!(
        wins.len() + conflicts,
        WRITERS * (ATTEMPTS + 1),
        "every attempt accounted for"
    );
    let last = get(store, &m, "cas").await;
    assert_eq!(
        last.version,
        1 + wins.len() as i64,
        "final version = 1 + wins"
    );
    assert_eq!(
        &last.title,
        &wins.last().unwrap().1,
        "the final title is the last winner's"
    );
    let writer = last.title.split(' ').nth(1).unwrap().to_owned();
    assert_eq!(
        last.tags,
        vec![format!("writer:{writer}")],
        "tags are the last winner's too"
    );
    let s = state_via_write(store, &last, &mv).await;
    assert_eq!(
        s.embeddings.len(),
        1,
        "exactly one embedding survives the races"
    );
}

/// Concurrent creates and compare-and-set updates of different products all succeed.
pub async fn concurrent_writes_to_different_products(store: &dyn CatalogStore) {
    const PRODUCTS: usize = 12;
    let m = unique("merchant");
    let mv = unique("model");
    let creates = (0..PRODUCTS)
        .map(|i| {
            let product = new_product(&m, &format!("d{i}"), &["k:v"]);
            Box::pin(store.create_product(product, vec![new_image(i as u32)], &mv))
                as BoxFuture<'_, crate::Result<Written>>
        })
        .collect();
    let mut ids = Vec::with_capacity(PRODUCTS);
    for (i, r) in join_all(creates).await.into_iter().enumerate() {
        let w = r.unwrap_or_else(|e| panic!("concurrent create of d{i}: {e}"));
        assert_eq!(w.product.version, 1, "d{i} created at version 1");
        ids.push(w.product.id);
    }
    let ids = &ids;
    let updates = (0..PRODUCTS)
        .map(|i| {
            let m = m.clone();
            let mv = mv.clone();
            Box::pin(async move {
                let id = format!("d{i}");
                let upd = ProductUpdate {
                    title: Some(format!("updated {i}")),
                    ..Default::default()
                };
                let w = match store
                    .update_product(&m, &id, Some(at(ids[i], 1)), upd, &mv)
                    .await
                {
                    Ok(w) => w,
                    Err(e) => return Err(e),
                };
                store
                    .add_images(
                        &m,
                        &id,
                        Some(at(w.product.id, w.product.version)),
                        vec![new_image(50 + i as u32)],
                        &mv,
                        Quota::UNLIMITED,
                    )
                    .await
            }) as BoxFuture<'_, crate::Result<Written>>
        })
        .collect();
    for (i, r) in join_all(updates).await.into_iter().enumerate() {
        let w = r.unwrap_or_else(|e| panic!("concurrent writes to d{i}: {e}"));
        assert_eq!(w.product.version, 3, "d{i}: two writes, version 3");
        assert_eq!(w.product.title, format!("updated {i}"), "d{i}: own title");
        assert_eq!(w.state.embeddings.len(), 2, "d{i}: both embeddings");
    }
    let listed = store.list_products(&m, None, 100).await.expect("list");
    assert_eq!(
        listed.len(),
        PRODUCTS,
        "every concurrently created product is there"
    );
}

/// `drop_other_versions(keep)` deletes every embedding not by `keep` and says how many; the
/// affected images become stale for those versions. Global by nature: it also deletes other
/// data's embeddings of other versions in the same database.
pub async fn drop_other_versions(store: &dyn CatalogStore) {
    let m = unique("merchant");
    let (keep, other) = (unique("model-keep"), unique("model-other"));
    let p = create(
        store,
        new_product(&m, "p", &[]),
        vec![new_image(1), new_image(2)],
        &keep,
    )
    .await;
    let q = create(store, new_product(&m, "q", &[]), vec![new_image(3)], &other).await;
    let ids = [p.product.id, q.product.id];
    let to_other: Vec<NewEmbedding> = own_stale(store, &other, &ids)
        .await
        .into_iter()
        .map(|s| NewEmbedding {
            image_id: s.image_id,
            product_id: s.product_id,
            product_version: s.product_version,
            vector: vector(9),
        })
        .collect();
    assert_eq!(
        to_other.len(),
        2,
        "p's two images are stale for the other version"
    );
    assert_eq!(
        store
            .put_embeddings(&other, to_other)
            .await
            .expect("put other"),
        2,
        "p gets embeddings by the other version too"
    );
    let dropped = store
        .drop_other_versions(&keep)
        .await
        .expect("drop_other_versions");
    assert!(
        dropped >= 3,
        "at least this check's 3 other-version embeddings dropped ({dropped})"
    );
    let s = state_via_write(store, &p.product, &keep).await;
    assert_eq!(
        s.embeddings, p.state.embeddings,
        "the kept version's embeddings stay, same keys"
    );
    let s = state_via_write(store, &get(store, &m, "p").await, &other).await;
    assert!(
        s.embeddings.is_empty(),
        "p has no other-version embeddings left"
    );
    let s = state_via_write(store, &q.product, &other).await;
    assert!(
        s.embeddings.is_empty(),
        "q's only embedding (other version) is gone"
    );
    assert_eq!(
        own_stale(store, &other, &ids).await.len(),
        3,
        "all stale for the other version"
    );
    let stale_keep = own_stale(store, &keep, &ids).await;
    assert_eq!(
        stale_keep.iter().map(|s| s.image_id).collect::<Vec<_>>(),
        vec![q.product.images[0].id],
        "only q's image is stale for the kept version"
    );
    store
        .drop_other_versions(&keep)
        .await
        .expect("dropping again works");
    assert_eq!(
        state_via_write(store, &get(store, &m, "p").await, &keep)
            .await
            .embeddings,
        p.state.embeddings,
        "dropping again keeps the kept version's embeddings"
    );
}

// ---- merchants, quotas and keys ---------------------------------------------------------------

fn quota(max_products: i64, max_images: i64) -> Quota {
    Quota {
        max_products,
        max_images,
    }
}

/// Quotas hold at the limit, count deletes back, and a refused write changes nothing.
pub async fn quotas(store: &dyn CatalogStore) {
    let m = unique("quota");
    let mv = unique("mv");
    let q = quota(2, 3);
    let mut a = new_product(&m, "a", &[]);
    a.quota = q;
    store
        .create_product(a, vec![new_image(1), new_image(2)], &mv)
        .await
        .expect("first product within quota");
    let mut b = new_product(&m, "b", &[]);
    b.quota = q;
    let err = store
        .create_product(b.clone(), vec![new_image(3), new_image(4)], &mv)
        .await
        .expect_err("4 images > 3");
    assert!(
        matches!(&err, StoreError::QuotaExceeded { what: "images", limit: 3, merchant } if *merchant == m),
        "images quota, got {err:?}"
    );
    assert!(
        matches!(
            store.get_product(&m, "b").await,
            Err(StoreError::ProductNotFound { .. })
        ),
        "a refused create leaves no product"
    );
    store
        .create_product(b, vec![new_image(5)], &mv)
        .await
        .expect("second product, third image");
    let mut c = new_product(&m, "c", &[]);
    c.quota = q;
    let err = store
        .create_product(c.clone(), vec![], &mv)
        .await
        .expect_err("3 products > 2");
    assert!(
        matches!(
            &err,
            StoreError::QuotaExceeded {
                what: "products",
                limit: 2,
                ..
            }
        ),
        "products quota, got {err:?}"
    );
    let err = store
        .add_images(&m, "a", None, vec![new_image(6)], &mv, q)
        .await
        .expect_err("a fourth image");
    assert!(matches!(
        err,
        StoreError::QuotaExceeded { what: "images", .. }
    ));
    assert_eq!(
        store.get_product(&m, "a").await.unwrap().version,
        1,
        "nothing changed"
    );
    let rec = store
        .access()
        .get_merchant(&m)
        .await
        .unwrap()
        .expect("registered");
    assert_eq!((rec.products, rec.images), (2, 3), "counters at the limit");
    store.delete_product(&m, "a", None).await.unwrap();
    let rec = store.access().get_merchant(&m).await.unwrap().unwrap();
    assert_eq!(
        (rec.products, rec.images),
        (1, 1),
        "a delete gives both back"
    );
    store
        .create_product(c, vec![new_image(7), new_image(8)], &mv)
        .await
        .expect("room again after the delete");
}

/// A merchant's own limits win over the defaults; `None` falls back to them.
pub async fn merchant_overrides(store: &dyn CatalogStore) {
    let m = unique("override");
    let mv = unique("mv");
    assert!(store.access().get_merchant(&m).await.unwrap().is_none());
    let rec = store
        .access()
        .put_merchant(
            &m,
            MerchantSettings {
                max_products: Some(1),
                max_images: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (
            rec.name.as_str(),
            rec.products,
            rec.max_products,
            rec.max_images
        ),
        (m.as_str(), 0, Some(1), None)
    );
    let mut a = new_product(&m, "a", &[]);
    a.quota = Quota::UNLIMITED;
    store
        .create_product(a, vec![new_image(1)], &mv)
        .await
        .unwrap();
    let mut b = new_product(&m, "b", &[]);
    b.quota = Quota::UNLIMITED;
    let err = store
        .create_product(b.clone(), vec![], &mv)
        .await
        .expect_err("override 1");
    assert!(matches!(
        err,
        StoreError::QuotaExceeded {
            what: "products",
            limit: 1,
            ..
        }
    ));
    store
        .access()
        .put_merchant(&m, MerchantSettings::default())
        .await
        .unwrap();
    store
        .create_product(b, vec![], &mv)
        .await
        .expect("defaults again");
    let listed = store.access().list_merchants().await.unwrap();
    let mine = listed.iter().find(|r| r.name == m).expect("listed");
    assert_eq!(
        (mine.products, mine.images, mine.max_products),
        (2, 1, None)
    );
}

/// Concurrent creates never take a merchant past its quota.
pub async fn concurrent_quota(store: &dyn CatalogStore) {
    let m = unique("race");
    let mv = unique("mv");
    let q = quota(3, 100);
    let results = join_all(
        (0..8)
            .map(|i| {
                let (m, mv) = (m.clone(), mv.clone());
                Box::pin(async move {
                    let mut p = new_product(&m, &format!("p{i}"), &[]);
                    p.quota = q;
                    store.create_product(p, vec![new_image(i)], &mv).await
                }) as BoxFuture<'_, crate::Result<Written>>
            })
            .collect(),
    )
    .await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 3, "exactly the quota succeeds: {results:?}");
    assert!(results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .all(|e| matches!(
            e,
            StoreError::QuotaExceeded {
                what: "products",
                ..
            }
        )));
    let rec = store.access().get_merchant(&m).await.unwrap().unwrap();
    assert_eq!((rec.products, rec.images), (3, 3));
}

fn new_key(kind: KeyKind, merchant: Option<&str>) -> NewKey {
    NewKey {
        kind,
        hash: unique("hash"),
        prefix: "sk_test_".into(),
        label: unique("label"),
        merchant: merchant.map(str::to_owned),
        merchants: merchant.map(|m| vec![m.to_owned()]),
        origins: vec!["https://shop.example".into()],
        rate_limits: Some(serde_json::json!({"search": {"per_second": 5.0, "burst": 10}})),
        expires_at: None,
    }
}

/// Keys round-trip, are found by hash, listed by owner, revoked at once and expire.
pub async fn keys(store: &dyn CatalogStore) {
    let access = store.access();
    let m = unique("keys");
    let now = 1_000_000;
    let k = new_key(KeyKind::Search, Some(&m));
    let rec = access.create_key(k.clone()).await.unwrap();
    assert_eq!(
        (
            rec.kind,
            &rec.hash,
            &rec.merchant,
            &rec.merchants,
            &rec.origins,
            &rec.rate_limits
        ),
        (
            k.kind,
            &k.hash,
            &k.merchant,
            &k.merchants,
            &k.origins,
            &k.rate_limits
        )
    );
    assert!(rec.is_active(now) && rec.revoked_at.is_none() && rec.last_used_at.is_none());
    assert!(
        access.get_merchant(&m).await.unwrap().is_some(),
        "a key registers its merchant"
    );
    assert!(
        matches!(
            access.create_key(k.clone()).await,
            Err(StoreError::KeyExists)
        ),
        "a hash is stored once"
    );
    assert_eq!(
        access.key_by_hash(&k.hash).await.unwrap().as_ref(),
        Some(&rec)
    );
    assert_eq!(access.get_key(rec.id).await.unwrap(), rec);
    assert!(access
        .key_by_hash(&unique("nohash"))
        .await
        .unwrap()
        .is_none());
    assert!(matches!(
        access.get_key(-1).await,
        Err(StoreError::KeyNotFound(-1))
    ));

    let mut unlimited = new_key(KeyKind::Merchant, Some(&m));
    unlimited.merchants = None;
    unlimited.rate_limits = None;
    unlimited.expires_at = Some(now + 10);
    let second = access.create_key(unlimited).await.unwrap();
    assert_eq!(
        (second.merchants.clone(), second.rate_limits.clone()),
        (None, None)
    );
    assert!(
        second.is_active(now) && !second.is_active(now + 10),
        "expires at expires_at"
    );

    let mine = |q: KeyQuery, at: i64| async move {
        access
            .list_keys(q, at)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect::<Vec<_>>()
    };
    let by_m = KeyQuery {
        merchant: Some(m.clone()),
        ..KeyQuery::default()
    };
    assert_eq!(
        mine(by_m.clone(), now).await,
        vec![second.id, rec.id],
        "newest first"
    );
    assert_eq!(
        mine(by_m.clone(), now + 10).await,
        vec![rec.id],
        "expired keys hidden"
    );
    let merchant_kind = KeyQuery {
        kind: Some(KeyKind::Merchant),
        include_inactive: true,
        ..by_m.clone()
    };
    assert_eq!(mine(merchant_kind, now + 10).await, vec![second.id]);

    access.touch_key(rec.id, now + 1).await.unwrap();
    assert_eq!(
        access.get_key(rec.id).await.unwrap().last_used_at,
        Some(now + 1)
    );
    let revoked = access.revoke_key(rec.id, now + 2).await.unwrap();
    assert_eq!(revoked.revoked_at, Some(now + 2));
    assert!(!revoked.is_active(now + 2));
    let again = access.revoke_key(rec.id, now + 3).await.unwrap();
    assert_eq!(
        again.revoked_at,
        Some(now + 2),
        "the first revocation stays"
    );
    assert!(!access
        .key_by_hash(&k.hash)
        .await
        .unwrap()
        .unwrap()
        .is_active(now));
    assert_eq!(
        mine(by_m.clone(), now).await,
        vec![second.id],
        "revoked keys hidden"
    );
    let all = KeyQuery {
        include_inactive: true,
        ..by_m
    };
    assert_eq!(mine(all, now).await, vec![second.id, rec.id]);
    assert!(matches!(
        access.revoke_key(-1, now).await,
        Err(StoreError::KeyNotFound(-1))
    ));

    let admin = access
        .create_key(new_key(KeyKind::Admin, None))
        .await
        .unwrap();
    assert!(access.has_active_admin(now).await.unwrap());
    assert_eq!(admin.merchant, None);
}

/// Import jobs: stored with their input, claimed by one runner at a time under a lease, resumed
/// by another once the lease runs out, cancelled, finished (dropping the input), and scoped to
/// their merchant. Leaves no claimable job behind.
pub async fn import_jobs(store: &dyn CatalogStore) {
    use crate::jobs::{JobProgress, JobRowError, JobStatus, Lease, NewJob};
    let jobs = store.jobs();
    let m = unique("jobs");
    let other = unique("jobs-other");
    let now = 1_000_000;
    let new_job = |public_id: &str| NewJob {
        public_id: public_id.to_owned(),
        merchant: m.clone(),
        format: "csv".into(),
        options: serde_json::json!({"replace": false}),
        input: b"id,title\nsku-1,One\n".to_vec(),
        rows: 1,
        products: 1,
        errors: vec![JobRowError {
            row: 3,
            product_id: None,
            code: "invalid_field".into(),
            message: "no id".into(),
        }],
        error_count: 1,
    };
    let a_id = unique("imp-a");
    let a = jobs.create_job(new_job(&a_id), now).await.unwrap();
    assert_eq!(a.status, JobStatus::Queued);
    assert_eq!((a.rows, a.products, a.attempts), (1, 1, 0));
    assert_eq!(a.progress.error_count, 1);
    assert_eq!(a.progress.errors[0].row, 3);
    assert_eq!(a.options["replace"], false);
    assert_eq!(jobs.get_job(&m, &a_id).await.unwrap(), a);
    assert!(matches!(
        jobs.get_job(&other, &a_id).await,
        Err(StoreError::JobNotFound(_))
    ));
    assert!(matches!(
        jobs.cancel_job(&other, &a_id, now).await,
        Err(StoreError::JobNotFound(_))
    ));

    // Claimed with its input by the first runner; nobody else gets it while the lease holds.
    let (claimed, input) = jobs
        .claim_job("runner-1", now, now + 100)
        .await
        .unwrap()
        .expect("a queued job is claimable");
    assert_eq!(claimed.id, a.id);
    assert_eq!(input, b"id,title\nsku-1,One\n");
    assert_eq!(
        (claimed.status, claimed.attempts, claimed.started_at),
        (JobStatus::Running, 1, Some(now))
    );
    assert!(jobs
        .claim_job("runner-2", now + 50, now + 150)
        .await
        .unwrap()
        .is_none());
    let mut progress = JobProgress {
        products_done: 1,
        created: 1,
        images: 2,
        error_count: 1,
        errors: a.progress.errors.clone(),
        ..JobProgress::default()
    };
    assert_eq!(
        jobs.save_progress(a.id, "runner-1", &progress, now + 60, now + 160)
            .await
            .unwrap(),
        Lease::Held { cancel: false }
    );
    assert_eq!(jobs.get_job(&m, &a_id).await.unwrap().progress, progress);

    // The lease runs out: a second runner takes over from the saved progress, and the first one
    // can no longer write.
    let (resumed, _) = jobs
        .claim_job("runner-2", now + 200, now + 300)
        .await
        .unwrap()
        .expect("an expired lease is claimable");
    assert_eq!((resumed.id, resumed.attempts), (a.id, 2));
    assert_eq!(resumed.progress, progress);
    assert_eq!(resumed.started_at, Some(now), "first start kept");
    progress.unchanged = 5;
    assert_eq!(
        jobs.save_progress(a.id, "runner-1", &progress, now + 210, now + 310)
            .await
            .unwrap(),
        Lease::Lost
    );
    assert_eq!(
        jobs.finish_job(
            a.id,
            "runner-1",
            JobStatus::Done,
            &progress,
            None,
            now + 210
        )
        .await
        .unwrap(),
        Lease::Lost
    );

    // Cancel reaches the runner at its next save; the runner ends it.
    let c = jobs.cancel_job(&m, &a_id, now + 220).await.unwrap();
    assert!(c.cancel_requested);
    assert_eq!(c.status, JobStatus::Running);
    assert_eq!(
        jobs.save_progress(a.id, "runner-2", &progress, now + 230, now + 330)
            .await
            .unwrap(),
        Lease::Held { cancel: true }
    );
    assert_eq!(
        jobs.finish_job(
            a.id,
            "runner-2",
            JobStatus::Cancelled,
            &progress,
            Some("cancelled"),
            now + 240
        )
        .await
        .unwrap(),
        Lease::Held { cancel: false }
    );
    let done = jobs.get_job(&m, &a_id).await.unwrap();
    assert_eq!(done.status, JobStatus::Cancelled);
    assert_eq!(done.finished_at, Some(now + 240));
    assert_eq!(done.message.as_deref(), Some("cancelled"));
    assert_eq!(done.progress, progress);
    // Finished: no second finish, no resume, and a cancel leaves it as it is.
    assert_eq!(
        jobs.finish_job(
            a.id,
            "runner-2",
            JobStatus::Done,
            &progress,
            None,
            now + 250
        )
        .await
        .unwrap(),
        Lease::Lost
    );
    assert_eq!(jobs.cancel_job(&m, &a_id, now + 260).await.unwrap(), done);

    // A queued job is cancelled at once and never claimed.
    let b_id = unique("imp-b");
    jobs.create_job(new_job(&b_id), now + 300).await.unwrap();
    let b = jobs.cancel_job(&m, &b_id, now + 310).await.unwrap();
    assert_eq!(b.status, JobStatus::Cancelled);
    assert_eq!(b.finished_at, Some(now + 310));
    assert_eq!(b.message.as_deref(), Some("cancelled"));

    // Released leases make a running job claimable at once (a single-process store's restart).
    let c_id = unique("imp-c");
    let c = jobs.create_job(new_job(&c_id), now + 400).await.unwrap();
    jobs.claim_job("runner-3", now + 400, i64::MAX)
        .await
        .unwrap()
        .expect("claimable");
    assert!(jobs.release_leases().await.unwrap() >= 1);
    let (again, _) = jobs
        .claim_job("runner-4", now + 410, now + 1_000)
        .await
        .unwrap()
        .expect("claimable after release");
    assert_eq!((again.id, again.attempts), (c.id, 2));
    jobs.finish_job(
        c.id,
        "runner-4",
        JobStatus::Failed,
        &JobProgress::default(),
        Some("boom"),
        now + 420,
    )
    .await
    .unwrap();

    let listed: Vec<String> = jobs
        .list_jobs(&m, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.public_id)
        .collect();
    assert_eq!(listed, vec![c_id.clone(), b_id, a_id]);
    assert_eq!(jobs.list_jobs(&m, 1).await.unwrap().len(), 1);
    assert!(jobs.list_jobs(&other, 10).await.unwrap().is_empty());
    assert!(jobs
        .claim_job("runner-5", i64::MAX - 1, i64::MAX)
        .await
        .unwrap()
        .is_none());

    // An image of the merchant is found by its hash, not another merchant's.
    let p = create(
        store,
        new_product(&m, "with-image", &[]),
        vec![new_image(7)],
        "v1",
    )
    .await;
    let sha = &p.product.images[0].sha256;
    assert_eq!(
        jobs.merchant_image_path(&m, sha).await.unwrap().as_deref(),
        Some(p.product.images[0].path.as_str())
    );
    assert_eq!(jobs.merchant_image_path(&other, sha).await.unwrap(), None);
}

/// Two runners claiming at once never get the same job.
pub async fn concurrent_job_claims(store: &dyn CatalogStore) {
    use crate::jobs::{JobProgress, JobStatus, NewJob};
    let jobs = store.jobs();
    let m = unique("claims");
    let now = 2_000_000;
    for i in 0..4 {
        jobs.create_job(
            NewJob {
                public_id: unique(&format!("imp-{i}")),
                merchant: m.clone(),
                format: "jsonl".into(),
                options: serde_json::json!({}),
                input: b"{}".to_vec(),
                rows: 0,
                products: 0,
                errors: Vec::new(),
                error_count: 0,
            },
            now,
        )
        .await
        .unwrap();
    }
    let claims: Vec<BoxFuture<'_, Option<i64>>> = (0..8)
        .map(|r| {
            Box::pin(async move {
                jobs.claim_job(&format!("r{r}"), now, i64::MAX)
                    .await
                    .unwrap()
                    .map(|(j, _)| j.id)
            }) as BoxFuture<'_, Option<i64>>
        })
        .collect();
    let mut got: Vec<i64> = join_all(claims).await.into_iter().flatten().collect();
    let n = got.len();
    got.sort();
    got.dedup();
    assert_eq!(got.len(), n, "a job was claimed twice");
    assert!(n >= 1);
    // Take whatever is left, and finish them all.
    while let Some((j, _)) = jobs.claim_job("sweeper", now, i64::MAX).await.unwrap() {
        got.push(j.id);
    }
    assert_eq!(got.len(), 4);
    jobs.release_leases().await.unwrap();
    for _ in &got {
        let (j, _) = jobs
            .claim_job("finisher", now + 1, i64::MAX)
            .await
            .unwrap()
            .expect("released");
        assert!(got.contains(&j.id));
        jobs.finish_job(
            j.id,
            "finisher",
            JobStatus::Done,
            &JobProgress::default(),
            None,
            now + 2,
        )
        .await
        .unwrap();
    }
    assert!(jobs
        .claim_job("none", now + 3, i64::MAX)
        .await
        .unwrap()
        .is_none());
}

// ---- image deletes, purges and the change sequence ----------------------------------------------

/// `delete_image` removes one image with its embeddings, bumps the version (honouring `expect`),
/// keeps the merchant's image counter right, refuses an image of another product, and leaves a
/// product without images in place (and in `load_states`, with no embeddings).
pub async fn delete_image(store: &dyn CatalogStore) {
    let m = unique("merchant");
    let mv = unique("model");
    let shared = format!("images/{}.png", unique("shared"));
    let w = create(
        store,
        new_product(&m, "p", &["color:red"]),
        vec![new_image_at(&shared, 1), new_image(2)],
        &mv,
    )
    .await;
    let other = create(store, new_product(&m, "q", &[]), vec![new_image(3)], &mv).await;
    let (first, second) = (&w.product.images[0], &w.product.images[1]);
    let foreign = other.product.images[0].id;
    match store.delete_image(&m, "p", foreign, None, &mv).await {
        Err(StoreError::ImageNotFound {
            merchant,
            id,
            image_id,
        }) => assert_eq!(
            (merchant.as_str(), id.as_str(), image_id),
            (m.as_str(), "p", foreign),
            "ImageNotFound names what was asked for"
        ),
        other => panic!("another product's image: expected ImageNotFound, got {other:?}"),
    }
    assert_not_found(
        store.delete_image(&m, "nope", first.id, None, &mv).await,
        &m,
        "nope",
        "delete_image of a missing product",
    );
    let stale = Expect {
        product_id: w.product.id,
        version: 7,
    };
    assert_conflict(
        store
            .delete_image(&m, "p", first.id, Some(stale), &mv)
            .await,
        &w.product,
        7,
        1,
        "delete_image with a stale expect",
    );
    let expect = Expect {
        product_id: w.product.id,
        version: 1,
    };
    let d = store
        .delete_image(&m, "p", first.id, Some(expect), &mv)
        .await
        .expect("delete_image");
    assert_state_matches(&d, "delete_image");
    assert_eq!(d.product.version, 2, "delete_image bumps the version");
    assert_eq!(
        d.product.images.iter().map(|i| i.id).collect::<Vec<_>>(),
        vec![second.id],
        "the other image stays"
    );
    assert_eq!(d.state.embeddings.len(), 1, "its embedding went with it");
    assert!(
        d.change.seq > w.change.seq,
        "a new place in the change sequence"
    );
    assert_eq!(
        get(store, &m, "p").await,
        d.product,
        "what was returned is committed"
    );
    let merchant = store.access().get_merchant(&m).await.unwrap().unwrap();
    assert_eq!(
        (merchant.products, merchant.images),
        (2, 2),
        "the image counter follows"
    );
    assert!(
        store
            .referenced_paths(std::slice::from_ref(&shared))
            .await
            .unwrap()
            .is_empty(),
        "the deleted image's path is no longer referenced"
    );
    let last = store
        .delete_image(&m, "p", second.id, None, &mv)
        .await
        .expect("delete the last image");
    assert!(last.product.images.is_empty() && last.state.embeddings.is_empty());
    assert_eq!(last.product.version, 3);
    let kept = get(store, &m, "p").await;
    assert!(
        kept.images.is_empty(),
        "a product without images stays readable"
    );
    let states = store.load_states(&mv).await.unwrap();
    let own = states
        .iter()
        .find(|s| s.product_id == w.product.id)
        .expect("a product without images is in load_states");
    assert!(own.embeddings.is_empty());
    match store.delete_image(&m, "p", second.id, None, &mv).await {
        Err(StoreError::ImageNotFound { .. }) => {}
        other => panic!("an image deleted already: expected ImageNotFound, got {other:?}"),
    }
}

fn purge_filter(groups: &[&[&str]]) -> crate::PurgeFilter {
    crate::PurgeFilter {
        all: groups.iter().map(|g| tags(g)).collect(),
    }
}

/// `purge` deletes exactly the merchant's products the filter matches (an AND of ORs), with
/// their images and embeddings, in one change; a dry run deletes nothing and says the same;
/// other merchants are untouched; the counters follow.
pub async fn purge(store: &dyn CatalogStore) {
    let m = unique("merchant");
    let other_m = unique("merchant");
    let mv = unique("model");
    let mut by_id = std::collections::BTreeMap::new();
    for (id, t, images) in [
        ("red-dress", &["category:dress", "color:red"][..], 2),
        ("blue-dress", &["category:dress", "color:blue"][..], 1),
        ("green-dress", &["category:dress", "color:green"][..], 1),
        ("red-skirt", &["category:skirt", "color:red"][..], 1),
        ("bare", &[][..], 0),
    ] {
        let imgs = (0..images).map(|i| new_image(10 + i)).collect();
        let w = create(store, new_product(&m, id, t), imgs, &mv).await;
        by_id.insert(id, w.product.id);
    }
    let foreign = create(
        store,
        new_product(&other_m, "red-dress", &["category:dress", "color:red"]),
        vec![new_image(20)],
        &mv,
    )
    .await;
    let filter = purge_filter(&[&["category:dress"], &["color:red", "color:blue"]]);
    let want = vec![by_id["red-dress"], by_id["blue-dress"]];
    let dry = store.purge(&m, &filter, true).await.expect("dry run");
    assert_eq!(dry.product_ids, want, "a dry run names what would go");
    assert_eq!((dry.images, dry.change), (3, None));
    assert_eq!(
        store.list_products(&m, None, 100).await.unwrap().len(),
        5,
        "a dry run deletes nothing"
    );
    let before = store.last_change().await.unwrap();
    let done = store.purge(&m, &filter, false).await.expect("purge");
    assert_eq!(done.product_ids, want);
    assert_eq!(done.images, 3);
    let change = done.change.expect("a purge that deleted has a change");
    assert!(change.seq > before.seq);
    assert_eq!(store.last_change().await.unwrap(), change);
    for id in ["red-dress", "blue-dress"] {
        assert_not_found(store.get_product(&m, id).await, &m, id, "purged");
    }
    let left: Vec<String> = store
        .list_products(&m, None, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.external_id)
        .collect();
    assert_eq!(left, ["green-dress", "red-skirt", "bare"]);
    assert_eq!(
        get(store, &other_m, "red-dress").await,
        foreign.product,
        "another merchant's product with the same tags is untouched"
    );
    let states = store.load_states(&mv).await.unwrap();
    assert!(
        !states.iter().any(|s| want.contains(&s.product_id)),
        "purged products leave load_states"
    );
    let rec = store.access().get_merchant(&m).await.unwrap().unwrap();
    assert_eq!(
        (rec.products, rec.images),
        (3, 2),
        "counters follow a purge"
    );
    let none = store
        .purge(&m, &purge_filter(&[&["color:purple"]]), false)
        .await
        .expect("a purge that matches nothing");
    assert_eq!(none, crate::Purged::default(), "nothing matched, no change");
    let all = store
        .purge(&m, &crate::PurgeFilter::default(), false)
        .await
        .expect("purge everything");
    assert_eq!(all.product_ids.len(), 3);
    assert!(store.list_products(&m, None, 100).await.unwrap().is_empty());
    let rec = store.access().get_merchant(&m).await.unwrap().unwrap();
    assert_eq!((rec.products, rec.images), (0, 0));
    assert!(
        store
            .purge(
                "no-such-merchant-here",
                &crate::PurgeFilter::default(),
                false
            )
            .await
            .unwrap()
            .product_ids
            .is_empty(),
        "an unknown merchant has nothing to purge"
    );
}

/// Every write that changes the catalogue takes a later place in the change sequence than the
/// one before it, and `last_change` is never behind the latest.
pub async fn change_sequence(store: &dyn CatalogStore) {
    let m = unique("merchant");
    let mv = unique("model");
    let start = store.last_change().await.expect("last_change");
    let a = create(store, new_product(&m, "a", &[]), vec![new_image(1)], &mv).await;
    let b = store
        .add_images(&m, "a", None, vec![new_image(2)], &mv, Quota::UNLIMITED)
        .await
        .unwrap();
    let c = update(
        store,
        &b.product,
        ProductUpdate {
            title: Some("t2".into()),
            ..Default::default()
        },
        &mv,
    )
    .await;
    let d = store
        .delete_image(&m, "a", b.product.images[0].id, None, &mv)
        .await
        .unwrap();
    let e = store.delete_product(&m, "a", None).await.unwrap();
    let seqs = [
        start.seq,
        a.change.seq,
        b.change.seq,
        c.change.seq,
        d.change.seq,
        e.change.seq,
    ];
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "each write a later place: {seqs:?}"
    );
    assert!(e.change.at >= a.change.at && a.change.at > 0);
    let last = store.last_change().await.unwrap();
    assert!(last.seq >= e.change.seq, "{last:?} behind {:?}", e.change);
}

/// A purge racing updates that re-tag its products out of the filter loses no update: every
/// product whose re-tag committed survives with its new tags, and every other one is gone (its
/// re-tag then found no product). A purge that chose its products before their re-tag and
/// deleted them anyway would leave an update that succeeded on a product that is gone.
pub async fn concurrent_purge_and_retag(store: &dyn CatalogStore) {
    const PRODUCTS: usize = 24;
    let m = unique("merchant");
    let mv = unique("model");
    for i in 0..PRODUCTS {
        create(
            store,
            new_product(&m, &format!("p{i}"), &["color:red"]),
            vec![new_image(i as u32)],
            &mv,
        )
        .await;
    }
    let filter = purge_filter(&[&["color:red"]]);
    let mut work: Vec<BoxFuture<'_, Option<crate::Result<()>>>> = Vec::new();
    for i in 0..PRODUCTS {
        let (merchant, mv) = (m.clone(), mv.clone());
        work.push(Box::pin(async move {
            let retag = ProductUpdate {
                tags: Some(tags(&["color:blue"])),
                ..Default::default()
            };
            Some(
                store
                    .update_product(&merchant, &format!("p{i}"), None, retag, &mv)
                    .await
                    .map(|_| ()),
            )
        }));
        if i == PRODUCTS / 2 {
            let (m, filter) = (m.clone(), filter.clone());
            work.push(Box::pin(async move {
                store.purge(&m, &filter, false).await.expect("purge");
                None
            }));
        }
    }
    let results: Vec<crate::Result<()>> = join_all(work).await.into_iter().flatten().collect();
    for (i, r) in results.into_iter().enumerate() {
        let id = format!("p{i}");
        match (r, store.get_product(&m, &id).await) {
            (Ok(()), Ok(p)) => assert_eq!(p.tags, ["color:blue"], "{id}"),
            (Err(StoreError::ProductNotFound { .. }), Err(StoreError::ProductNotFound { .. })) => {}
            (r, now) => panic!("{id}: the re-tag answered {r:?} and the product is now {now:?}"),
        }
    }
}

// ---- the change feed ---------------------------------------------------------------------------

/// A replica name of the check's own.
fn replica_name(what: &str) -> String {
    unique(what)
}

async fn checkin(store: &dyn CatalogStore, replica: &str, cursor: crate::FeedCursor, now: i64) {
    store
        .feed()
        .checkin(crate::feed::Checkin {
            replica,
            cursor,
            model_version: "m",
            now,
        })
        .await
        .unwrap_or_else(|e| panic!("checkin {replica}: {e}"));
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Reads the feed from `after` in pages of `limit` until `want` rows of `products` have been
/// seen (other checks may write meanwhile, and a row may wait for an older transaction to end),
/// and returns those rows in feed order.
async fn read_feed(
    store: &dyn CatalogStore,
    after: crate::FeedCursor,
    limit: usize,
    products: &HashSet<i64>,
    want: usize,
) -> Vec<crate::feed::FeedChange> {
    let mut cursor = after;
    let mut out = Vec::new();
    let started = std::time::Instant::now();
    while out.len() < want {
        let batch = store
            .feed()
            .changes_after(cursor, limit)
            .await
            .unwrap_or_else(|e| panic!("changes_after {cursor:?}: {e}"));
        assert!(
            batch.changes.len() <= limit.max(1),
            "a batch of {} rows for a limit of {limit}",
            batch.changes.len()
        );
        let mut last = cursor;
        for c in &batch.changes {
            assert!(
                c.cursor > last,
                "rows in feed order: {:?} after {last:?}",
                c.cursor
            );
            last = c.cursor;
        }
        assert!(
            batch.next >= last,
            "next {:?} before the last row {last:?}",
            batch.next
        );
        out.extend(
            batch
                .changes
                .into_iter()
                .filter(|c| c.product_id.is_some_and(|p| products.contains(&p))),
        );
        cursor = batch.next;
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "the feed did not show {want} rows of {products:?} within 30 s: {out:?}"
        );
    }
    out
}

/// Every write records one feed row per product it changed, with the operation, the merchant,
/// the image (an image delete) and the model version; the feed returns them in commit order,
/// in pages, and `product_states` gives the current state of the products they name (nothing
/// for a deleted one).
pub async fn change_feed(store: &dyn CatalogStore) {
    use crate::feed::ChangeOp::{Delete, Embed, Upsert};
    let m = unique("merchant");
    let mv = unique("model");
    let other = unique("model");
    let head = store.feed().feed_head().await.expect("feed_head");
    let replica = replica_name("feed");
    checkin(store, &replica, head, now_ms()).await;
    let a = create(
        store,
        new_product(&m, "a", &["color:red"]),
        vec![new_image(1)],
        &mv,
    )
    .await;
    let b = create(store, new_product(&m, "b", &[]), vec![new_image(2)], &mv).await;
    let c = create(store, new_product(&m, "c", &[]), vec![new_image(3)], &mv).await;
    let added = store
        .add_images(&m, "a", None, vec![new_image(4)], &mv, Quota::UNLIMITED)
        .await
        .unwrap();
    let updated = update(
        store,
        &added.product,
        ProductUpdate {
            tags: Some(tags(&["color:blue"])),
            ..Default::default()
        },
        &mv,
    )
    .await;
    let states = store
        .feed()
        .product_states(&[a.product.id, i64::MAX], &mv)
        .await
        .expect("product_states");
    assert_eq!(
        states,
        vec![updated.state.clone()],
        "the current state only"
    );
    let image = updated.product.images[0].id;
    let shrunk = store.delete_image(&m, "a", image, None, &mv).await.unwrap();
    let embedded = store
        .put_embeddings(
            &other,
            vec![NewEmbedding {
                image_id: shrunk.product.images[0].id,
                product_id: a.product.id,
                product_version: shrunk.product.version,
                vector: vector(9),
            }],
        )
        .await
        .unwrap();
    assert_eq!(embedded, 1);
    let purged = store
        .purge(&m, &crate::PurgeFilter::default(), false)
        .await
        .unwrap();
    assert_eq!(purged.product_ids.len(), 3);
    let ids: HashSet<i64> = [a.product.id, b.product.id, c.product.id].into();
    let m_ = Some(m.clone());
    let mv_ = Some(mv.clone());
    let expected = [
        (Upsert, a.product.id, m_.clone(), None, mv_.clone()),
        (Upsert, b.product.id, m_.clone(), None, mv_.clone()),
        (Upsert, c.product.id, m_.clone(), None, mv_.clone()),
        (Upsert, a.product.id, m_.clone(), None, mv_.clone()),
        (Upsert, a.product.id, m_.clone(), None, mv_.clone()),
        (Upsert, a.product.id, m_.clone(), Some(image), mv_.clone()),
        (Embed, a.product.id, None, None, Some(other.clone())),
    ];
    for limit in [1000, 2] {
        let rows = read_feed(store, head, limit, &ids, expected.len() + 3).await;
        let got: Vec<_> = rows
            .iter()
            .map(|r| {
                (
                    r.op,
                    r.product_id.unwrap(),
                    r.merchant.clone(),
                    r.image_id,
                    r.model_version.clone(),
                )
            })
            .collect();
        assert_eq!(
            got[..expected.len()],
            expected[..],
            "limit {limit}: {rows:#?}"
        );
        // The purge: one row per product, in one transaction.
        let purge: BTreeSet<i64> = got[expected.len()..]
            .iter()
            .map(|(op, p, merchant, _, _)| {
                assert_eq!((*op, merchant.as_deref()), (Delete, Some(m.as_str())));
                *p
            })
            .collect();
        assert_eq!(purge, ids.iter().copied().collect::<BTreeSet<_>>());
        let stamps: Vec<i64> = rows.iter().map(|r| r.cursor.seq).collect();
        assert_eq!(
            stamps[0], a.change.seq,
            "a row's seq is its write's change seq"
        );
        assert!(rows.iter().all(|r| r.at > 0));
    }
    let states = store
        .feed()
        .product_states(&ids.iter().copied().collect::<Vec<_>>(), &mv)
        .await
        .unwrap();
    assert!(
        states.is_empty(),
        "deleted products have no state: {states:?}"
    );
    // Leave: a replica last seen at 1 ms after the epoch is dropped by the next compaction.
    checkin(store, &replica, head, 1).await;
}

/// Compaction deletes the rows every live replica has passed and no others, keeps the latest
/// row, drops replicas that stopped checking in, and moves the compaction point that tells a
/// follower behind it to reload. Global to the database like [`drop_other_versions`]: it may
/// delete other checks' rows once every replica has passed them (no other check relies on
/// old rows but [`change_feed`], whose replica holds them).
pub async fn feed_compaction(store: &dyn CatalogStore) {
    let m = unique("merchant");
    let mv = unique("model");
    let now = now_ms();
    let slow = replica_name("slow");
    let fast = replica_name("fast");
    let gone = replica_name("gone");
    let head = store.feed().feed_head().await.unwrap();
    checkin(store, &slow, head, now).await;
    checkin(store, &fast, head, now).await;
    checkin(store, &gone, crate::FeedCursor::default(), 1).await;
    let a = create(store, new_product(&m, "a", &[]), vec![new_image(1)], &mv).await;
    let b = create(store, new_product(&m, "b", &[]), vec![new_image(2)], &mv).await;
    let ids: HashSet<i64> = [a.product.id, b.product.id].into();
    let rows = read_feed(store, head, 1000, &ids, 2).await;
    let past = rows[1].cursor;
    checkin(store, &fast, past, now).await;

    // `gone` last checked in at 1 ms after the epoch: dropped; `slow` holds every row after it.
    let c = store.feed().compact(now - 60_000).await.unwrap();
    assert!(c.replicas >= 1, "the stale replica dropped: {c:?}");
    let names: Vec<String> = store
        .feed()
        .replicas(now - 60_000)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.replica)
        .collect();
    assert!(names.contains(&slow) && names.contains(&fast) && !names.contains(&gone));
    assert!(
        c.through <= head,
        "not past the slowest replica: {c:?} vs {head:?}"
    );
    assert_eq!(read_feed(store, head, 1000, &ids, 2).await, rows);
    let batch = store.feed().changes_after(head, 1).await.unwrap();
    assert!(batch.compacted <= head, "{:?} {head:?}", batch.compacted);

    // Both past them: the rows go, but the latest row of the table stays for `last_change`.
    checkin(store, &slow, past, now).await;
    let before = store.last_change().await.unwrap();
    let c = store.feed().compact(now - 60_000).await.unwrap();
    assert!(
        c.through >= past,
        "compacted through both replicas: {c:?} vs {past:?}"
    );
    let after = store.last_change().await.unwrap();
    assert!(
        after.seq >= before.seq,
        "last_change went back: {before:?} -> {after:?}"
    );
    let batch = store.feed().changes_after(head, 1000).await.unwrap();
    assert!(
        batch.compacted > head,
        "a follower at the old head finds itself behind the compaction point"
    );
    assert!(!batch
        .changes
        .iter()
        .any(|r| r.cursor <= past && r.cursor.seq < after.seq));
    // Leave, so that a later run on the same database is not held back by these replicas.
    checkin(store, &slow, past, 1).await;
    checkin(store, &fast, past, 1).await;
}
