//! The ingest path: merchants' products and shop images in, searchable embeddings out.
//!
//! Each image is decoded on the blocking pool, embedded by the shop branch (TagYNet) with the
//! product's tag vector, stored content-addressed, and committed with its embedding in one
//! transaction; only then are the index and the catalogue updated. HTTP-free so that
//! `snapshop eval` ingests through exactly this code. It must never answer before the commit.

use bytes::Bytes;
use futures_util::stream::{self, StreamExt, TryStreamExt};
use snapshop_index::{IndexError, Key};
use snapshop_inference::InferenceError;

use crate::images::{self, ImageError};
use crate::search::filter::validate_tag;
use crate::state::AppState;
use crate::store::{Changes, NewImage, ProductRecord, ProductUpdate, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("inference failed: {0}")]
    Inference(#[from] InferenceError),
    #[error("index failed: {0}")]
    Index(#[from] IndexError),
    #[error("image file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Internal(String),
}

/// A product as a merchant submits it.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewProduct {
    /// The merchant's own id, unique per merchant.
    pub id: String,
    pub title: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default = "empty_object")]
    pub attributes: serde_json::Value,
}

/// Fields to change; absent fields are kept.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProductPatch {
    pub title: Option<String>,
    pub tags: Option<Vec<String>>,
    pub attributes: Option<serde_json::Value>,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

/// A product after a write, with the tags the model does not know.
#[derive(Debug, Clone)]
pub struct Ingested {
    pub product: ProductRecord,
    pub unknown_to_model: Vec<String>,
}

const MAX_ID_LEN: usize = 256;
/// Images of one request decoded and embedded at once.
const IMAGES_IN_FLIGHT: usize = 4;
const MAX_TITLE_LEN: usize = 1024;
const MAX_TAGS: usize = 256;

/// A merchant name: 1-64 of `[A-Za-z0-9._-]`.
pub fn validate_merchant(merchant: &str) -> Result<(), IngestError> {
    let ok = !merchant.is_empty()
        && merchant.len() <= 64
        && merchant
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(IngestError::Invalid(format!(
            "merchant `{merchant}` must be 1-64 characters of A-Z a-z 0-9 . _ -"
        )))
    }
}

fn validate_product_id(id: &str) -> Result<(), IngestError> {
    if id.trim().is_empty()
        || id.len() > MAX_ID_LEN
        || id.chars().any(|c| c.is_control() || c == '/')
    {
        return Err(IngestError::Invalid(format!(
            "product id must be 1-{MAX_ID_LEN} bytes without `/` or control characters"
        )));
    }
    Ok(())
}

fn validate_title(title: &str) -> Result<(), IngestError> {
    if title.trim().is_empty() || title.len() > MAX_TITLE_LEN {
        return Err(IngestError::Invalid(format!(
            "title must be 1-{MAX_TITLE_LEN} bytes"
        )));
    }
    Ok(())
}

fn validate_attributes(a: &serde_json::Value) -> Result<(), IngestError> {
    if !a.is_object() {
        return Err(IngestError::Invalid(
            "attributes must be a JSON object".into(),
        ));
    }
    Ok(())
}

/// Trims, checks, deduplicates and sorts tags.
pub fn normalise_tags(tags: Vec<String>) -> Result<Vec<String>, IngestError> {
    if tags.len() > MAX_TAGS {
        return Err(IngestError::Invalid(format!("at most {MAX_TAGS} tags")));
    }
    let mut out = Vec::with_capacity(tags.len());
    for t in tags {
        let t = t.trim().to_owned();
        validate_tag(&t).map_err(IngestError::Invalid)?;
        out.push(t);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

fn check_count(state: &AppState, images: &[Bytes]) -> Result<(), IngestError> {
    let max = state.config.limits.max_images_per_request;
    if images.len() > max {
        return Err(IngestError::Invalid(format!(
            "at most {max} images per request"
        )));
    }
    Ok(())
}

fn check_embedding(v: &[f32], dim: usize) -> Result<(), IngestError> {
    let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if v.len() != dim || !v.iter().all(|x| x.is_finite()) || (norm - 1.0).abs() > 1e-2 {
        return Err(IngestError::Internal(format!(
            "the shop model returned an invalid embedding (len {}, norm {norm})",
            v.len()
        )));
    }
    Ok(())
}

/// Decodes, embeds and stores the files of new images (before any database write).
async fn embed_new_images(
    state: &AppState,
    tags: &[String],
    files: Vec<Bytes>,
) -> Result<Vec<NewImage>, IngestError> {
    let (tag_vector, _) = state.bundle.tag_vector(tags);
    let dim = state.bundle.embedding_dim();
    let work = files.into_iter().map(|bytes| {
        let tag_vector = tag_vector.clone();
        async move {
            let sha256 = images::sha256_hex(&bytes);
            let prepared = images::prepare(
                state.preprocessor.clone(),
                bytes.clone(),
                state.image_limits,
            )
            .await?;
            let embedding = state.queue.embed_shop(prepared.tensor, tag_vector).await?;
            check_embedding(&embedding, dim)?;
            let path = images::relative_path(&sha256, prepared.format);
            images::store_file(&state.config.data_dir, &path, bytes.clone())
                .await
                .map_err(|source| IngestError::Io {
                    path: path.clone(),
                    source,
                })?;
            Ok::<_, IngestError>(NewImage {
                sha256,
                byte_size: bytes.len() as i64,
                width: prepared.width,
                height: prepared.height,
                format: prepared.format.to_owned(),
                path,
                embedding,
            })
        }
    });
    // Several at once, so that the inference queue can batch them, but bounded: each decoded
    // photo can take tens of megabytes.
    stream::iter(work)
        .buffered(IMAGES_IN_FLIGHT)
        .try_collect()
        .await
}

/// Re-embeds stored image files with a product's (new) tags.
pub async fn reembed_files(
    state: &AppState,
    tags: &[String],
    files: Vec<(i64, String)>,
) -> Result<Vec<(i64, Vec<f32>)>, IngestError> {
    let (tag_vector, _) = state.bundle.tag_vector(tags);
    let dim = state.bundle.embedding_dim();
    let work = files.into_iter().map(|(image_id, path)| {
        let tag_vector = tag_vector.clone();
        async move {
            let full = state.config.data_dir.join(&path);
            let bytes = tokio::fs::read(&full)
                .await
                .map_err(|source| IngestError::Io { path, source })?;
            // Stored files were accepted once; the current limits must not lock them out.
            let limits = snapshop_inference::ImageLimits {
                max_bytes: usize::MAX,
                max_pixels: u64::MAX,
                max_side: u32::MAX,
            };
            let prepared =
                images::prepare(state.preprocessor.clone(), Bytes::from(bytes), limits).await?;
            let embedding = state.queue.embed_shop(prepared.tensor, tag_vector).await?;
            check_embedding(&embedding, dim)?;
            Ok::<_, IngestError>((image_id, embedding))
        }
    });
    stream::iter(work)
        .buffered(IMAGES_IN_FLIGHT)
        .try_collect()
        .await
}

/// Applies a committed write to the index and the catalogue. Call with the write lock held.
async fn apply(
    state: &AppState,
    product: &ProductRecord,
    changes: Changes,
) -> Result<(), IngestError> {
    state.catalog.upsert_product(product);
    for key in &changes.removed {
        state.catalog.remove_key(*key as Key);
    }
    let index = state.index.clone();
    let removed = changes.removed.clone();
    let added: Vec<(Key, Vec<f32>)> = changes
        .added
        .iter()
        .map(|(r, v)| (r.id as Key, v.clone()))
        .collect();
    tokio::task::spawn_blocking(move || {
        for key in removed {
            index.remove(key as Key);
        }
        for (key, v) in &added {
            index.insert(*key, v)?;
        }
        Ok::<_, IndexError>(())
    })
    .await
    .map_err(|e| IngestError::Internal(format!("index task failed: {e}")))??;
    for (r, _) in &changes.added {
        state.catalog.add_key(r.id as Key, r.image_id);
    }
    Ok(())
}

fn ingested(state: &AppState, product: ProductRecord) -> Ingested {
    let (_, unknown_to_model) = state.bundle.tag_vector(&product.tags);
    Ingested {
        product,
        unknown_to_model,
    }
}

/// Creates a product with its images.
#[tracing::instrument(skip_all, fields(merchant, id = %new.id, images = files.len()))]
pub async fn create_product(
    state: &AppState,
    merchant: &str,
    new: NewProduct,
    files: Vec<Bytes>,
) -> Result<Ingested, IngestError> {
    validate_merchant(merchant)?;
    validate_product_id(&new.id)?;
    validate_title(&new.title)?;
    validate_attributes(&new.attributes)?;
    let tags = normalise_tags(new.tags)?;
    if files.is_empty() {
        return Err(IngestError::Invalid(
            "a product needs at least one image".into(),
        ));
    }
    check_count(state, &files)?;
    // Fail fast before the expensive part; the insert still catches a race.
    if state.store.product_exists(merchant, &new.id).await? {
        return Err(StoreError::ProductExists {
            merchant: merchant.to_owned(),
            id: new.id,
        }
        .into());
    }
    let images = embed_new_images(state, &tags, files).await?;
    let _guard = state.write_lock.lock().await;
    let (product, changes) = state
        .store
        .create_product(
            merchant,
            &new.id,
            new.title.trim(),
            &new.attributes,
            &tags,
            images,
            state.model_version(),
        )
        .await?;
    apply(state, &product, changes).await?;
    Ok(ingested(state, product))
}

/// Adds images to an existing product.
pub async fn add_images(
    state: &AppState,
    merchant: &str,
    id: &str,
    files: Vec<Bytes>,
) -> Result<Ingested, IngestError> {
    if files.is_empty() {
        return Err(IngestError::Invalid("send at least one image".into()));
    }
    check_count(state, &files)?;
    let current = state.store.get_product(merchant, id).await?;
    let images = embed_new_images(state, &current.tags, files).await?;
    let _guard = state.write_lock.lock().await;
    let (product, changes) = state
        .store
        .add_images(merchant, id, images, state.model_version())
        .await?;
    // The tags may have changed while these images were embedded: re-embed with the new ones.
    if product.tags != current.tags {
        let added: Vec<i64> = changes.added.iter().map(|(r, _)| r.image_id).collect();
        apply(state, &product, changes).await?;
        let files = product
            .images
            .iter()
            .filter(|i| added.contains(&i.id))
            .map(|i| (i.id, i.path.clone()))
            .collect();
        let embeddings = reembed_files(state, &product.tags, files).await?;
        let update = ProductUpdate {
            embeddings,
            ..Default::default()
        };
        let (product, changes) = state
            .store
            .update_product(merchant, id, update, state.model_version())
            .await?;
        apply(state, &product, changes).await?;
        return Ok(ingested(state, product));
    }
    apply(state, &product, changes).await?;
    Ok(ingested(state, product))
}

/// Changes title, attributes or tags; a tag change re-embeds the product's images.
pub async fn update_product(
    state: &AppState,
    merchant: &str,
    id: &str,
    patch: ProductPatch,
) -> Result<Ingested, IngestError> {
    if let Some(t) = &patch.title {
        validate_title(t)?;
    }
    if let Some(a) = &patch.attributes {
        validate_attributes(a)?;
    }
    let tags = patch.tags.map(normalise_tags).transpose()?;
    // Held across the re-embedding so that no image is added with the old tags meanwhile.
    let _guard = state.write_lock.lock().await;
    let current = state.store.get_product(merchant, id).await?;
    let embeddings = match &tags {
        Some(tags) if *tags != current.tags => {
            let files = current
                .images
                .iter()
                .map(|i| (i.id, i.path.clone()))
                .collect();
            reembed_files(state, tags, files).await?
        }
        _ => Vec::new(),
    };
    let update = ProductUpdate {
        title: patch.title.map(|t| t.trim().to_owned()),
        attributes: patch.attributes,
        tags,
        embeddings,
    };
    let (product, changes) = state
        .store
        .update_product(merchant, id, update, state.model_version())
        .await?;
    apply(state, &product, changes).await?;
    Ok(ingested(state, product))
}

/// Deletes a product; it leaves search results at once.
pub async fn delete_product(state: &AppState, merchant: &str, id: &str) -> Result<(), IngestError> {
    let _guard = state.write_lock.lock().await;
    let (product, changes, orphaned) = state.store.delete_product(merchant, id).await?;
    let mut keys = state.catalog.remove_product(product.id);
    keys.extend(changes.removed.iter().map(|k| *k as Key));
    let index = state.index.clone();
    tokio::task::spawn_blocking(move || {
        for k in keys {
            index.remove(k);
        }
    })
    .await
    .map_err(|e| IngestError::Internal(format!("index task failed: {e}")))?;
    for path in orphaned {
        let full = state.config.data_dir.join(&path);
        if let Err(e) = tokio::fs::remove_file(&full).await {
            tracing::warn!(path = %full.display(), error = %e, "could not delete an image file");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_normalised() {
        let t = normalise_tags(vec![
            " color:red".into(),
            "category:dress".into(),
            "color:red".into(),
        ])
        .unwrap();
        assert_eq!(
            t,
            vec!["category:dress".to_string(), "color:red".to_string()]
        );
        assert!(normalise_tags(vec!["nocolon".into()]).is_err());
    }

    #[test]
    fn names_are_checked() {
        assert!(validate_merchant("acme-shop_1.eu").is_ok());
        for bad in ["", "a b", "a/b", &"x".repeat(65)] {
            assert!(validate_merchant(bad).is_err(), "{bad}");
        }
        assert!(validate_product_id("SKU 123").is_ok());
        assert!(validate_product_id(" ").is_err());
        assert!(validate_product_id("a/b").is_err());
        assert!(validate_attributes(&serde_json::json!([1])).is_err());
        assert!(check_embedding(&[0.6, 0.8], 2).is_ok());
        assert!(check_embedding(&[0.6, f32::NAN], 2).is_err());
        assert!(check_embedding(&[1.0, 1.0], 2).is_err());
    }
}
