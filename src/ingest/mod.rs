//! The write path: merchants' products and shop images in, searchable embeddings out.
//!
//! Each image is decoded on the blocking pool and embedded by the shop branch (TagYNet) with the
//! product's tags, with no lock held. Only the commit and its apply to the search view happen
//! under the shared side of the write gate. Concurrent writes to one product are ordered by the
//! product's version: a write that embedded with tags that changed meanwhile loses its
//! compare-and-set and starts again with fresh state (or, when the client sent `If-Match`, gets
//! `version_conflict`). A write whose model was switched away while it embedded redoes the work
//! with the new model. HTTP-free, so `snapshop eval` ingests through exactly this code. It must
//! never answer before the commit.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{self, StreamExt, TryStreamExt};
use snapshop_store::{
    Expect, NewImage, NewProduct as NewProductRow, ProductRecord, ProductUpdate, PurgeFilter,
    Purged, StoreError, Written,
};

use crate::core::{Core, Serving};
use crate::error::{Coded, ErrorCode};
use crate::ids::{validate_product_id, ETag, IdError, Merchant};
use crate::images;
use crate::model::{Model, ModelError};
use crate::search::filter::{validate_tag, TagFilter};
use crate::view::Change;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Id(#[from] IdError),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Files(#[from] crate::files::FilesError),
    #[error(
        "product `{id}` of merchant `{merchant}` kept changing; gave up after {attempts} attempts"
    )]
    Contended {
        merchant: String,
        id: String,
        attempts: usize,
    },
}

impl Coded for IngestError {
    fn code(&self) -> ErrorCode {
        match self {
            IngestError::Id(e) => e.code(),
            IngestError::Invalid(_) => ErrorCode::InvalidField,
            IngestError::Store(e) => e.code(),
            IngestError::Model(e) => e.code(),
            IngestError::Files(e) => e.code(),
            IngestError::Contended { .. } => ErrorCode::Overloaded,
        }
    }
}

impl From<crate::images::ImageError> for IngestError {
    fn from(e: crate::images::ImageError) -> Self {
        IngestError::Model(ModelError::Image(e))
    }
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

pub fn etag_of(p: &ProductRecord) -> ETag {
    ETag {
        product_id: p.id,
        version: p.version,
    }
}

/// Images of one request decoded and embedded at once (so the queue can batch them; bounded,
/// since a decoded photo can take tens of megabytes).
const IMAGES_IN_FLIGHT: usize = 4;
const MAX_TITLE_LEN: usize = 1024;
const MAX_TAGS: usize = 256;
/// Compare-and-set attempts before a write to a hot product gives up (503, retry later).
const MAX_ATTEMPTS: usize = 32;

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

fn check_count(core: &Core, images: &[Bytes]) -> Result<(), IngestError> {
    let max = core.config().limits.max_images_per_request;
    if images.len() > max {
        return Err(IngestError::Invalid(format!(
            "at most {max} images per request"
        )));
    }
    Ok(())
}

/// Decodes, embeds and stores the files of new images (before any database write).
async fn embed_new_images(
    core: &Core,
    model: &Model,
    tags: &[String],
    files: &[Bytes],
) -> Result<Vec<NewImage>, IngestError> {
    let limits = core.image_limits();
    let work = files.iter().cloned().map(|bytes| async move {
        let sha256 = images::sha256_hex(&bytes);
        let prepared = model.prepare(bytes.clone(), limits).await?;
        let embedding = model.embed_shop(prepared.tensor, tags).await?;
        let path = images::relative_path(&sha256, prepared.format);
        core.files().store(&path, bytes.clone()).await?;
        Ok::<_, IngestError>(NewImage {
            sha256,
            byte_size: bytes.len() as i64,
            width: prepared.width,
            height: prepared.height,
            format: prepared.format.to_owned(),
            path,
            embedding,
        })
    });
    stream::iter(work)
        .buffered(IMAGES_IN_FLIGHT)
        .try_collect()
        .await
}

/// Re-embeds stored image files with (new) tags. Stored files were accepted once, so the current
/// limits do not apply to them.
pub async fn reembed_files(
    core: &Core,
    model: &Model,
    tags: &[String],
    files: Vec<(i64, String)>,
) -> Result<Vec<(i64, Vec<f32>)>, IngestError> {
    let work = files.into_iter().map(|(image_id, path)| async move {
        let bytes = core.files().read(&path).await?;
        let prepared = model.prepare(bytes, unlimited()).await?;
        let embedding = model.embed_shop(prepared.tensor, tags).await?;
        Ok::<_, IngestError>((image_id, embedding))
    });
    stream::iter(work)
        .buffered(IMAGES_IN_FLIGHT)
        .try_collect()
        .await
}

pub fn unlimited() -> snapshop_inference::ImageLimits {
    snapshop_inference::ImageLimits {
        max_bytes: usize::MAX,
        max_pixels: u64::MAX,
        max_side: u32::MAX,
    }
}

fn ingested(serving: &Serving, product: ProductRecord) -> Ingested {
    Ingested {
        unknown_to_model: serving.model.unknown_tags(&product.tags),
        product,
    }
}

/// Whether the model (and view) that embedded is still the pair serving, else the write starts
/// again. By identity, not by version: a swap away and back makes a new view.
fn same_model(core: &Core, serving: &Arc<Serving>) -> bool {
    Arc::ptr_eq(&core.serving(), serving)
}

async fn backoff(attempt: usize) {
    // Short and jittered: the competing write is usually done within milliseconds.
    let jitter = u64::from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
            % 5,
    );
    tokio::time::sleep(Duration::from_millis((1 + attempt as u64).min(20) + jitter)).await;
}

/// The precondition "still the product as read".
fn as_read(p: &ProductRecord) -> Expect {
    Expect {
        product_id: p.id,
        version: p.version,
    }
}

/// Checks the client's `If-Match` against the product it names. `Err(VersionConflict)` when it
/// names another incarnation of the product or another version.
fn check_if_match(
    p: &ProductRecord,
    if_match: Option<ETag>,
) -> Result<Option<Expect>, IngestError> {
    match if_match {
        None => Ok(None),
        Some(e) if e.product_id == p.id && e.version == p.version => Ok(Some(as_read(p))),
        Some(e) => Err(StoreError::VersionConflict {
            merchant: p.merchant.clone(),
            id: p.external_id.clone(),
            expected: e.version,
            actual: p.version,
        }
        .into()),
    }
}

/// Commits through the gate and applies the change; `None` if the model switched meanwhile.
async fn commit<F>(
    core: &Core,
    serving: &Arc<Serving>,
    write: F,
) -> Result<Option<Written>, IngestError>
where
    F: std::future::Future<Output = Result<Written, StoreError>>,
{
    let _gate = core.write_gate().await;
    if !same_model(core, serving) {
        return Ok(None);
    }
    let written = write.await?;
    core.apply(
        &serving.view,
        Change::Upsert(written.state.clone()),
        written.change,
    )
    .await;
    Ok(Some(written))
}

/// One attempt of a write to an existing product: `Some` when it committed, `None` when it must
/// start again with fresh state (the model switched, or the product moved on and the client did
/// not ask for a precondition; then after a short pause). A stale `If-Match` is the client's
/// error, returned as is.
async fn settle<F>(
    core: &Core,
    serving: &Arc<Serving>,
    write: F,
    if_match: Option<ETag>,
    attempt: usize,
) -> Result<Option<Written>, IngestError>
where
    F: std::future::Future<Output = Result<Written, StoreError>>,
{
    match commit(core, serving, write).await {
        Err(IngestError::Store(StoreError::VersionConflict { .. })) if if_match.is_none() => {
            backoff(attempt).await;
            Ok(None)
        }
        other => other,
    }
}

fn contended(merchant: &Merchant, id: &str) -> IngestError {
    IngestError::Contended {
        merchant: merchant.to_string(),
        id: id.to_owned(),
        attempts: MAX_ATTEMPTS,
    }
}

/// Creates a product with its images.
#[tracing::instrument(skip_all, fields(merchant = %merchant, id = %new.id, images = files.len()))]
pub async fn create_product(
    core: &Core,
    merchant: &Merchant,
    new: NewProduct,
    files: Vec<Bytes>,
) -> Result<Ingested, IngestError> {
    let tags = validate_new(core, &new, files.len())?;
    check_count(core, &files)?;
    // Fail fast before the expensive part; the insert still catches a race.
    check_new(core, merchant, &new.id, files.len()).await?;
    loop {
        let serving = core.serving();
        let images = embed_new_images(core, &serving.model, &tags, &files).await?;
        if let Some(done) = insert_product(core, &serving, merchant, &new, &tags, images).await? {
            return Ok(done);
        }
    }
}

/// Creates a product from images whose files are already stored and whose embeddings were
/// already made by `serving`'s model: the validation, quota and commit of [`create_product`]
/// without decode or model call. For `snapshop bench --catalogue`, which grows a catalogue
/// from perturbed real embeddings; never for client input, since the embeddings are trusted.
/// Fails with [`IngestError::Invalid`] when the model was switched meanwhile (the embeddings
/// are then of the wrong model).
pub async fn create_product_embedded(
    core: &Core,
    serving: &Arc<Serving>,
    merchant: &Merchant,
    new: NewProduct,
    images: Vec<NewImage>,
) -> Result<Ingested, IngestError> {
    let tags = validate_new(core, &new, images.len())?;
    let dim = serving.model.embedding_dim();
    if let Some(bad) = images.iter().find(|i| i.embedding.len() != dim) {
        return Err(IngestError::Invalid(format!(
            "an embedding of dimension {} for a model of dimension {dim}",
            bad.embedding.len()
        )));
    }
    check_new(core, merchant, &new.id, images.len()).await?;
    insert_product(core, serving, merchant, &new, &tags, images)
        .await?
        .ok_or_else(|| {
            IngestError::Invalid("the model was switched while the product was written".into())
        })
}

/// A new product's fields, checked (the store up, id, title, attributes, at least one image);
/// returns its normalised tags.
fn validate_new(core: &Core, new: &NewProduct, images: usize) -> Result<Vec<String>, IngestError> {
    core.check_store().map_err(IngestError::Store)?;
    validate_product_id(&new.id)?;
    validate_title(&new.title)?;
    validate_attributes(&new.attributes)?;
    let tags = normalise_tags(new.tags.clone())?;
    if images == 0 {
        return Err(IngestError::Invalid(
            "a product needs at least one image".into(),
        ));
    }
    Ok(tags)
}

/// The cheap checks before a product is created: quota (the insert checks again, atomically)
/// and that the merchant has no product of this id yet.
async fn check_new(
    core: &Core,
    merchant: &Merchant,
    id: &str,
    images: usize,
) -> Result<(), IngestError> {
    check_quota(core, merchant, 1, images).await?;
    match core.store().get_product(merchant.as_str(), id).await {
        Ok(_) => Err(StoreError::ProductExists {
            merchant: merchant.to_string(),
            id: id.to_owned(),
        }
        .into()),
        Err(StoreError::ProductNotFound { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Inserts a new product with embedded images and applies it to the view; `None` if the model
/// switched meanwhile (the caller embeds again).
async fn insert_product(
    core: &Core,
    serving: &Arc<Serving>,
    merchant: &Merchant,
    new: &NewProduct,
    tags: &[String],
    images: Vec<NewImage>,
) -> Result<Option<Ingested>, IngestError> {
    let count = images.len() as u64;
    let row = NewProductRow {
        merchant: merchant.to_string(),
        external_id: new.id.clone(),
        title: new.title.trim().to_owned(),
        attributes: new.attributes.clone(),
        tags: tags.to_vec(),
        quota: core.config().quotas.store_quota(),
    };
    let write = core
        .store()
        .create_product(row, images, serving.model.version());
    Ok(commit(core, serving, write).await?.map(|w| {
        metrics::counter!("snapshop_images_ingested_total").increment(count);
        ingested(serving, w.product)
    }))
}

/// Refuses a write that would take the merchant past its quota, before any image is embedded.
/// Only a fast path: the store checks again, atomically with the write.
async fn check_quota(
    core: &Core,
    merchant: &Merchant,
    products: i64,
    images: usize,
) -> Result<(), IngestError> {
    let Some(m) = core
        .store()
        .access()
        .get_merchant(merchant.as_str())
        .await?
    else {
        return Ok(());
    };
    let q = core.config().quotas.store_quota();
    let max_products = m.max_products.unwrap_or(q.max_products);
    let max_images = m.max_images.unwrap_or(q.max_images);
    let exceeded = |what, limit| StoreError::QuotaExceeded {
        merchant: merchant.to_string(),
        what,
        limit,
    };
    if m.products.saturating_add(products) > max_products {
        return Err(exceeded("products", max_products).into());
    }
    if m.images.saturating_add(images as i64) > max_images {
        return Err(exceeded("images", max_images).into());
    }
    Ok(())
}

/// Adds images to an existing product.
#[tracing::instrument(skip_all, fields(merchant = %merchant, id, images = files.len()))]
pub async fn add_images(
    core: &Core,
    merchant: &Merchant,
    id: &str,
    files: Vec<Bytes>,
    if_match: Option<ETag>,
) -> Result<Ingested, IngestError> {
    core.check_store().map_err(IngestError::Store)?;
    if files.is_empty() {
        return Err(IngestError::Invalid("send at least one image".into()));
    }
    check_count(core, &files)?;
    check_quota(core, merchant, 0, files.len()).await?;
    let mut embedded: Option<(String, Vec<String>, Vec<NewImage>)> = None;
    for attempt in 0..MAX_ATTEMPTS {
        let serving = core.serving();
        let current = core.store().get_product(merchant.as_str(), id).await?;
        let expect = check_if_match(&current, if_match)?.unwrap_or(as_read(&current));
        // Embeddings depend only on the bytes, the tags and the model: reuse them when neither
        // changed since the last attempt.
        let images = match embedded.take() {
            Some((v, t, imgs)) if v == serving.model.version() && t == current.tags => imgs,
            _ => embed_new_images(core, &serving.model, &current.tags, &files).await?,
        };
        let write = core.store().add_images(
            merchant.as_str(),
            id,
            Some(expect),
            images.clone(),
            serving.model.version(),
            core.config().quotas.store_quota(),
        );
        // Kept for the next attempt, should this one lose its compare-and-set.
        embedded = Some((serving.model.version().to_owned(), current.tags, images));
        if let Some(w) = settle(core, &serving, write, if_match, attempt).await? {
            metrics::counter!("snapshop_images_ingested_total").increment(files.len() as u64);
            return Ok(ingested(&serving, w.product));
        }
    }
    Err(contended(merchant, id))
}

/// Changes title, attributes or tags; a tag change re-embeds the product's images.
#[tracing::instrument(skip_all, fields(merchant = %merchant, id))]
pub async fn update_product(
    core: &Core,
    merchant: &Merchant,
    id: &str,
    patch: ProductPatch,
    if_match: Option<ETag>,
) -> Result<Ingested, IngestError> {
    core.check_store().map_err(IngestError::Store)?;
    if let Some(t) = &patch.title {
        validate_title(t)?;
    }
    if let Some(a) = &patch.attributes {
        validate_attributes(a)?;
    }
    let tags = patch.tags.map(normalise_tags).transpose()?;
    for attempt in 0..MAX_ATTEMPTS {
        let serving = core.serving();
        let current = core.store().get_product(merchant.as_str(), id).await?;
        let client_expect = check_if_match(&current, if_match)?;
        let retag = tags.as_ref().filter(|t| **t != current.tags);
        let embeddings = match retag {
            Some(tags) => {
                let files = current
                    .images
                    .iter()
                    .map(|i| (i.id, i.path.clone()))
                    .collect();
                reembed_files(core, &serving.model, tags, files).await?
            }
            None => Vec::new(),
        };
        // Tags and the embeddings made from them must stay in step: any write of tags is a
        // compare-and-set on the product as read (a concurrent re-tag would otherwise leave
        // embeddings made from other tags).
        let expect = client_expect.or(tags.as_ref().map(|_| as_read(&current)));
        let update = ProductUpdate {
            title: patch.title.as_ref().map(|t| t.trim().to_owned()),
            attributes: patch.attributes.clone(),
            tags: tags.clone(),
            embeddings,
        };
        let write = core.store().update_product(
            merchant.as_str(),
            id,
            expect,
            update,
            serving.model.version(),
        );
        if let Some(w) = settle(core, &serving, write, if_match, attempt).await? {
            return Ok(ingested(&serving, w.product));
        }
    }
    Err(contended(merchant, id))
}

/// Deletes a product; it leaves search results at once. Its image files are swept later if no
/// other product uses them.
#[tracing::instrument(skip_all, fields(merchant = %merchant, id))]
pub async fn delete_product(
    core: &Core,
    merchant: &Merchant,
    id: &str,
    if_match: Option<ETag>,
) -> Result<(), IngestError> {
    core.check_store().map_err(IngestError::Store)?;
    let expect = match if_match {
        None => None,
        Some(_) => {
            let current = core.store().get_product(merchant.as_str(), id).await?;
            check_if_match(&current, if_match)?
        }
    };
    let _gate = core.write_gate().await;
    let serving = core.serving();
    let deleted = core
        .store()
        .delete_product(merchant.as_str(), id, expect)
        .await?;
    core.apply(
        &serving.view,
        Change::Delete {
            product_id: deleted.product.id,
        },
        deleted.change,
    )
    .await;
    Ok(())
}

/// Deletes one image of a product; it leaves search results at once, and the product (also
/// when left without images) stays. The file is swept later if no other image row uses it.
#[tracing::instrument(skip_all, fields(merchant = %merchant, id, image_id))]
pub async fn delete_image(
    core: &Core,
    merchant: &Merchant,
    id: &str,
    image_id: i64,
    if_match: Option<ETag>,
) -> Result<Ingested, IngestError> {
    core.check_store().map_err(IngestError::Store)?;
    for attempt in 0..MAX_ATTEMPTS {
        let serving = core.serving();
        let expect = match if_match {
            None => None,
            Some(_) => {
                let current = core.store().get_product(merchant.as_str(), id).await?;
                check_if_match(&current, if_match)?
            }
        };
        let write = core.store().delete_image(
            merchant.as_str(),
            id,
            image_id,
            expect,
            serving.model.version(),
        );
        // Only a model switch (the state must be the serving model's) makes it start again.
        if let Some(w) = settle(core, &serving, write, if_match, attempt).await? {
            return Ok(ingested(&serving, w.product));
        }
    }
    Err(contended(merchant, id))
}

/// Deletes every product of the merchant that `filter` matches (all of them without one), in
/// one store transaction, and takes them out of the search view in one pass. With `dry_run`,
/// only says what it would delete. Concurrent writes are safe: the purge commits under the
/// shared write gate like any write, a product a concurrent write re-tags out of the filter
/// first is kept, and a late apply of an older state cannot bring a purged product back.
#[tracing::instrument(skip_all, fields(merchant = %merchant, dry_run))]
pub async fn purge(
    core: &Core,
    merchant: &Merchant,
    filter: TagFilter,
    dry_run: bool,
) -> Result<Purged, IngestError> {
    core.check_store().map_err(IngestError::Store)?;
    let filter = PurgeFilter { all: filter.all };
    if dry_run {
        return Ok(core.store().purge(merchant.as_str(), &filter, true).await?);
    }
    let _gate = core.write_gate().await;
    let serving = core.serving();
    let purged = core
        .store()
        .purge(merchant.as_str(), &filter, false)
        .await?;
    if let Some(stamp) = purged.change {
        core.apply(
            &serving.view,
            Change::DeleteMany {
                product_ids: purged.product_ids.clone(),
            },
            stamp,
        )
        .await;
    }
    tracing::info!(
        products = purged.product_ids.len(),
        images = purged.images,
        "purged"
    );
    Ok(purged)
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
    fn fields_are_checked() {
        assert!(validate_attributes(&serde_json::json!([1])).is_err());
        assert!(validate_title(" ").is_err());
        assert!(validate_title("Red dress").is_ok());
    }
}
