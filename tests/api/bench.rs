//! The write path of `snapshop bench --catalogue` (`ingest::create_product_embedded`): products
//! from ready-made embeddings go through the same commit as uploads (the store, the view's
//! postings, the index), and what the upload path would refuse is refused here too.

use serde_json::json;
use snapshop::app::{init_state, Backend};
use snapshop::error::Coded;
use snapshop::ids::Merchant;
use snapshop::ingest::{self, IngestError, NewProduct};
use snapshop::search::filter::TagFilter;
use snapshop_store::NewImage;

use crate::common;

fn product(id: &str, tags: &[&str]) -> NewProduct {
    NewProduct {
        id: id.to_owned(),
        title: format!("product {id}"),
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        attributes: json!({}),
    }
}

fn image(embedding: Vec<f32>) -> NewImage {
    NewImage {
        sha256: "ab".repeat(32),
        byte_size: 1_000,
        width: 300,
        height: 400,
        format: "jpeg".into(),
        path: format!("images/ab/ab/{}.jpg", "ab".repeat(32)),
        embedding,
    }
}

#[tokio::test]
async fn products_from_ready_made_embeddings_are_stored_indexed_and_filterable() {
    let dir = common::new_data_dir();
    let state = init_state(common::test_config(dir.path()), Backend::Fake)
        .await
        .expect("the state loads");
    let serving = state.serving();
    let dim = serving.model.embedding_dim();
    let axis = |i: usize| {
        let mut v = vec![0.0f32; dim];
        v[i] = 1.0;
        v
    };
    let merchant = Merchant::parse("bench-000").unwrap();
    for (i, tags) in [
        &[][..],
        &["bench:p10"][..],
        &["color:red", " bench:p10 ", "bench:p10"][..],
    ]
    .into_iter()
    .enumerate()
    {
        ingest::create_product_embedded(
            &state,
            &serving,
            &merchant,
            product(&format!("s{i}"), tags),
            vec![image(axis(i))],
        )
        .await
        .expect("written");
    }

    // Stored, with normalised tags, as an upload would be.
    let p = state.store().get_product("bench-000", "s2").await.unwrap();
    assert_eq!(p.images.len(), 1);
    assert_eq!(p.tags, vec!["bench:p10", "color:red"]);

    // Indexed: every vector finds its own product first.
    for i in 0..3 {
        let hits = serving
            .view
            .search(&axis(i), 3, &TagFilter::default(), None)
            .unwrap();
        let (info, _) = serving.view.lookup(hits[0].key).unwrap();
        assert_eq!(info.external_id, format!("s{i}"));
        assert!((hits[0].score - 1.0).abs() < 1e-6);
    }
    // In the postings: a tag filter passes only the tagged products.
    let filter = TagFilter::parse("bench:p10").unwrap();
    let hits = serving.view.search(&axis(0), 3, &filter, None).unwrap();
    let mut found: Vec<String> = hits
        .iter()
        .map(|h| serving.view.lookup(h.key).unwrap().0.external_id.clone())
        .collect();
    found.sort();
    assert_eq!(found, vec!["s1", "s2"]);

    // Refused: an embedding of the wrong size, an existing id, no image, a bad id or tag.
    let e = ingest::create_product_embedded(
        &state,
        &serving,
        &merchant,
        product("s9", &[]),
        vec![image(vec![1.0; dim + 1])],
    )
    .await
    .unwrap_err();
    assert!(
        matches!(e, IngestError::Invalid(ref m) if m.contains("dimension")),
        "{e}"
    );
    let e = ingest::create_product_embedded(
        &state,
        &serving,
        &merchant,
        product("s0", &[]),
        vec![image(axis(5))],
    )
    .await
    .unwrap_err();
    assert_eq!(e.code().as_str(), "product_exists");
    let e =
        ingest::create_product_embedded(&state, &serving, &merchant, product("s9", &[]), vec![])
            .await
            .unwrap_err();
    assert!(matches!(e, IngestError::Invalid(_)), "{e}");
    for bad in [product("not ok/", &[]), product("s9", &["no-colon"])] {
        let e =
            ingest::create_product_embedded(&state, &serving, &merchant, bad, vec![image(axis(6))])
                .await
                .unwrap_err();
        assert!(
            e.code().as_str().starts_with("invalid"),
            "{e}: {}",
            e.code().as_str()
        );
    }
    assert_eq!(serving.view.ann().len(), 3);
    state.store().close().await;
}
