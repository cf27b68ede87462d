//! In-memory view of what is searchable: index key → image → product, plus tag and merchant
//! postings for filters.
//!
//! It lets a search resolve its filter and decorate its results without a database round trip.
//! It is derived from the store (loaded at start, updated after each commit) and must never be
//! written before the store's transaction has committed.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use snapshop_index::Key;

use crate::search::filter::TagFilter;
use crate::store::{ImageRecord, ProductRecord, ProductSummary};

/// What a search result shows of a product.
#[derive(Debug, Clone, PartialEq)]
pub struct ProductEntry {
    pub id: i64,
    pub merchant: String,
    pub external_id: String,
    pub title: String,
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyEntry {
    pub product_id: i64,
    pub image_id: i64,
}

#[derive(Default)]
struct Inner {
    products: HashMap<i64, Arc<ProductEntry>>,
    keys: HashMap<Key, KeyEntry>,
    product_keys: HashMap<i64, HashSet<Key>>,
    image_product: HashMap<i64, i64>,
    by_tag: HashMap<String, HashSet<i64>>,
    by_merchant: HashMap<String, HashSet<i64>>,
}

#[derive(Default)]
pub struct Catalog {
    inner: RwLock<Inner>,
}

impl Inner {
    fn unlink(&mut self, p: &ProductEntry) {
        for t in &p.tags {
            if let Some(set) = self.by_tag.get_mut(t) {
                set.remove(&p.id);
                if set.is_empty() {
                    self.by_tag.remove(t);
                }
            }
        }
        if let Some(set) = self.by_merchant.get_mut(&p.merchant) {
            set.remove(&p.id);
            if set.is_empty() {
                self.by_merchant.remove(&p.merchant);
            }
        }
    }

    fn upsert(&mut self, p: ProductEntry) {
        if let Some(old) = self.products.remove(&p.id) {
            self.unlink(&old);
        }
        for t in &p.tags {
            self.by_tag.entry(t.clone()).or_default().insert(p.id);
        }
        self.by_merchant
            .entry(p.merchant.clone())
            .or_default()
            .insert(p.id);
        self.products.insert(p.id, Arc::new(p));
    }
}

impl Catalog {
    /// Builds the catalogue from the store's rows; `keys` are the current model's embeddings.
    pub fn load(
        products: Vec<ProductSummary>,
        images: &[ImageRecord],
        keys: impl IntoIterator<Item = (Key, i64)>,
    ) -> Self {
        let mut inner = Inner::default();
        for p in products {
            inner.upsert(ProductEntry {
                id: p.id,
                merchant: p.merchant,
                external_id: p.external_id,
                title: p.title,
                tags: p.tags,
            });
        }
        for img in images {
            inner.image_product.insert(img.id, img.product_id);
        }
        let catalog = Catalog {
            inner: RwLock::new(inner),
        };
        for (key, image_id) in keys {
            catalog.add_key(key, image_id);
        }
        catalog
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Inserts or replaces a product (and its images) after a committed write.
    pub fn upsert_product(&self, p: &ProductRecord) {
        let mut inner = self.write();
        for img in &p.images {
            inner.image_product.insert(img.id, p.id);
        }
        inner.upsert(ProductEntry {
            id: p.id,
            merchant: p.merchant.clone(),
            external_id: p.external_id.clone(),
            title: p.title.clone(),
            tags: p.tags.clone(),
        });
    }

    /// Registers a searchable embedding of a known image. Returns false for an unknown image.
    pub fn add_key(&self, key: Key, image_id: i64) -> bool {
        let mut inner = self.write();
        let Some(&product_id) = inner.image_product.get(&image_id) else {
            return false;
        };
        inner.keys.insert(
            key,
            KeyEntry {
                product_id,
                image_id,
            },
        );
        inner
            .product_keys
            .entry(product_id)
            .or_default()
            .insert(key);
        true
    }

    pub fn remove_key(&self, key: Key) {
        let mut inner = self.write();
        if let Some(e) = inner.keys.remove(&key) {
            if let Some(set) = inner.product_keys.get_mut(&e.product_id) {
                set.remove(&key);
            }
        }
    }

    /// Forgets a product; returns the index keys it had.
    pub fn remove_product(&self, product_id: i64) -> Vec<Key> {
        let mut inner = self.write();
        if let Some(p) = inner.products.remove(&product_id) {
            inner.unlink(&p);
        }
        inner.image_product.retain(|_, pid| *pid != product_id);
        let keys: Vec<Key> = inner
            .product_keys
            .remove(&product_id)
            .map(|s| s.into_iter().collect())
            .unwrap_or_default();
        for k in &keys {
            inner.keys.remove(k);
        }
        keys
    }

    /// The product and image behind an index key.
    pub fn lookup(&self, key: Key) -> Option<(Arc<ProductEntry>, i64)> {
        let inner = self.read();
        let e = inner.keys.get(&key)?;
        Some((inner.products.get(&e.product_id)?.clone(), e.image_id))
    }

    /// The product of an image, with its tags (for re-embedding).
    pub fn product_of_image(&self, image_id: i64) -> Option<Arc<ProductEntry>> {
        let inner = self.read();
        let pid = inner.image_product.get(&image_id)?;
        inner.products.get(pid).cloned()
    }

    /// The index keys a search may return, or `None` when nothing restricts it.
    pub fn allowed(&self, filter: &TagFilter, merchant: Option<&str>) -> Option<HashSet<Key>> {
        if filter.is_empty() && merchant.is_none() {
            return None;
        }
        let inner = self.read();
        let empty = HashSet::new();
        let mut products: Option<HashSet<i64>> =
            merchant.map(|m| inner.by_merchant.get(m).cloned().unwrap_or_default());
        for group in &filter.all {
            let mut any: HashSet<i64> = HashSet::new();
            for tag in group {
                any.extend(inner.by_tag.get(tag).unwrap_or(&empty));
            }
            products = Some(match products {
                None => any,
                Some(p) => p.intersection(&any).copied().collect(),
            });
        }
        let products = products.unwrap_or_default();
        let mut keys = HashSet::new();
        for pid in products {
            if let Some(ks) = inner.product_keys.get(&pid) {
                keys.extend(ks.iter().copied());
            }
        }
        Some(keys)
    }

    pub fn product_count(&self) -> usize {
        self.read().products.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(id: i64, merchant: &str, tags: &[&str]) -> ProductSummary {
        ProductSummary {
            id,
            merchant: merchant.into(),
            external_id: format!("p{id}"),
            title: format!("product {id}"),
            tags: tags.iter().map(|t| t.to_string()).collect(),
        }
    }

    fn image(id: i64, product_id: i64) -> ImageRecord {
        ImageRecord {
            id,
            product_id,
            sha256: String::new(),
            byte_size: 0,
            width: 1,
            height: 1,
            format: "png".into(),
            path: String::new(),
        }
    }

    #[test]
    fn filters_resolve_to_keys() {
        let c = Catalog::load(
            vec![
                summary(1, "a", &["category:dress", "color:red"]),
                summary(2, "a", &["category:dress", "color:blue"]),
                summary(3, "b", &["category:skirt", "color:red"]),
            ],
            &[image(10, 1), image(11, 1), image(20, 2), image(30, 3)],
            [(100, 10), (101, 11), (200, 20), (300, 30)],
        );
        let set = |v: &[Key]| v.iter().copied().collect::<HashSet<Key>>();
        assert_eq!(c.allowed(&TagFilter::default(), None), None);
        let f = TagFilter::parse("color:red").unwrap();
        assert_eq!(c.allowed(&f, None), Some(set(&[100, 101, 300])));
        assert_eq!(c.allowed(&f, Some("a")), Some(set(&[100, 101])));
        let f = TagFilter::parse("category:dress,color:red|color:blue").unwrap();
        assert_eq!(c.allowed(&f, None), Some(set(&[100, 101, 200])));
        assert_eq!(
            c.allowed(&TagFilter::default(), Some("b")),
            Some(set(&[300]))
        );
        assert_eq!(
            c.allowed(&TagFilter::default(), Some("zzz")),
            Some(set(&[]))
        );
        assert_eq!(
            c.allowed(&TagFilter::parse("x:y").unwrap(), None),
            Some(set(&[]))
        );

        let (p, image_id) = c.lookup(101).unwrap();
        assert_eq!((p.id, image_id), (1, 11));
        let mut removed = c.remove_product(1);
        removed.sort();
        assert_eq!(removed, vec![100, 101]);
        assert!(c.lookup(100).is_none());
        assert_eq!(
            c.allowed(&TagFilter::parse("color:red").unwrap(), None),
            Some(set(&[300]))
        );
        c.remove_key(300);
        assert!(c.lookup(300).is_none());
        assert_eq!(c.product_count(), 2);
    }
}
