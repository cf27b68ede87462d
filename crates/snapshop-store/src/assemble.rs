//! What both SQL backends do with the rows they read: turning query results into the store's
//! values. Only the SQL differs between backends; this module holds the rest once, so that the
//! backends cannot drift apart in what they return. It must never run a query.

use std::collections::HashMap;

use crate::{
    blob_to_vector, ChangeStamp, ProductRecord, ProductState, Result, StaleImage, StoredEmbedding,
    Written,
};

/// `(id, version, merchant, external id, title)` of a product.
pub(crate) type ProductRow = (i64, i64, String, String, String);
/// `(key, image id, product id, vector blob)` of an embedding.
pub(crate) type EmbeddingRow = (i64, i64, i64, Vec<u8>);
/// `(image id, product id, product version, path)` of an image without an embedding.
pub(crate) type StaleRow = (i64, i64, i64, String);

/// A write's result: the product as committed and its searchable state.
pub(crate) fn written(
    product: ProductRecord,
    embeddings: Vec<StoredEmbedding>,
    change: ChangeStamp,
) -> Written {
    let state = ProductState {
        product_id: product.id,
        version: product.version,
        merchant: product.merchant.clone(),
        external_id: product.external_id.clone(),
        title: product.title.clone(),
        tags: product.tags.clone(),
        embeddings,
    };
    Written {
        product,
        state,
        change,
    }
}

/// Every product's state from the three bulk reads of `load_states` (tags ordered by product
/// and tag, embeddings by key). Rows of missing products are counted and ignored.
pub(crate) fn states(
    products: Vec<ProductRow>,
    tags: Vec<(i64, String)>,
    embeddings: Vec<EmbeddingRow>,
) -> Result<Vec<ProductState>> {
    let mut states: Vec<ProductState> = products
        .into_iter()
        .map(
            |(product_id, version, merchant, external_id, title)| ProductState {
                product_id,
                version,
                merchant,
                external_id,
                title,
                tags: Vec::new(),
                embeddings: Vec::new(),
            },
        )
        .collect();
    let index: HashMap<i64, usize> = states
        .iter()
        .enumerate()
        .map(|(i, s)| (s.product_id, i))
        .collect();
    let mut orphans = 0usize;
    for (product_id, tag) in tags {
        match index.get(&product_id) {
            Some(&i) => states[i].tags.push(tag),
            None => orphans += 1,
        }
    }
    for (key, image_id, product_id, blob) in embeddings {
        match index.get(&product_id) {
            Some(&i) => states[i].embeddings.push(StoredEmbedding {
                key,
                image_id,
                vector: blob_to_vector(&blob)?,
            }),
            None => orphans += 1,
        }
    }
    if orphans > 0 {
        // Only possible if rows were written with foreign keys off; they are unreachable.
        tracing::warn!(orphans, "tag or embedding rows of missing products ignored");
    }
    Ok(states)
}

/// The distinct product ids of stale rows, sorted (for one batched tag query).
pub(crate) fn stale_product_ids(rows: &[StaleRow]) -> Vec<i64> {
    let mut ids: Vec<i64> = rows.iter().map(|r| r.1).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Stale images with their products' tags.
pub(crate) fn stale(rows: Vec<StaleRow>, tags: &HashMap<i64, Vec<String>>) -> Vec<StaleImage> {
    rows.into_iter()
        .map(|(image_id, product_id, product_version, path)| StaleImage {
            image_id,
            product_id,
            product_version,
            tags: tags.get(&product_id).cloned().unwrap_or_default(),
            path,
        })
        .collect()
}

/// The distinct paths of `paths`, sorted.
pub(crate) fn unique_paths(paths: &[String]) -> Vec<&str> {
    let mut unique: Vec<&str> = paths.iter().map(String::as_str).collect();
    unique.sort_unstable();
    unique.dedup();
    unique
}
