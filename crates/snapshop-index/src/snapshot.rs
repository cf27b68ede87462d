//! Atomic on-disk snapshots of the live vectors, so a restart need not re-read the store.
//!
//! Layout of a snapshot directory: `meta.json` (format version, dim, model version, count,
//! checksum) and `vectors.bin` (magic, dim, count, then `count` × (key u64 LE, dim × f32 LE),
//! keys ascending). Written to a temp dir beside the target, fsynced, then renamed over it.
//!
//! Only vectors are stored, not the HNSW graph: on load the graph is rebuilt from them. We
//! chose that over `file_dump` + `HnswIo` reload because (a) a reloaded hnsw_rs graph borrows
//! its `HnswIo`, forcing a `'static` leak per load; (b) hnsw_rs's loader trusts its input and
//! can panic on a damaged file, while this crate must turn corruption into an error; (c) the
//! dump would duplicate every vector we already keep. The price is build time at start (see
//! README for figures). This module must never load a snapshot it has not fully verified, and
//! never leave a half-written snapshot at the target path.

use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::vector::validate_unit;
use crate::{IndexConfig, IndexError, Key, ShopIndex, SnapshotMeta};

const FORMAT_VERSION: u32 = 1;
const MAGIC: &[u8; 8] = b"SNPIDXv1";
const META_FILE: &str = "meta.json";
const VECTORS_FILE: &str = "vectors.bin";
const HEADER_LEN: usize = 8 + 8 + 8;

/// What `meta.json` holds; [`SnapshotMeta`] is the public subset.
#[derive(Serialize, Deserialize)]
struct MetaFile {
    format_version: u32,
    model_version: String,
    dim: usize,
    count: usize,
    /// FNV-1a 64 of the whole `vectors.bin`, hex.
    checksum: String,
}

/// FNV-1a 64: no extra dependency, and we need corruption detection, not cryptography.
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn corrupt(msg: impl Into<String>) -> IndexError {
    IndexError::CorruptSnapshot(msg.into())
}

fn encode(dim: usize, keys: &[Key], data: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + keys.len() * (8 + 4 * dim));
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(dim as u64).to_le_bytes());
    out.extend_from_slice(&(keys.len() as u64).to_le_bytes());
    for (key, v) in keys.iter().zip(data.chunks_exact(dim.max(1))) {
        out.extend_from_slice(&key.to_le_bytes());
        for x in v {
            out.extend_from_slice(&x.to_le_bytes());
        }
    }
    out
}

/// Parses and verifies `vectors.bin` against the metadata: sizes, strictly ascending keys,
/// finite unit vectors. Returns keys and the flat vector array.
fn decode(bytes: &[u8], meta: &MetaFile) -> Result<(Vec<Key>, Vec<f32>), IndexError> {
    let u64_at = |i: usize| -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[i..i + 8]);
        u64::from_le_bytes(b)
    };
    if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
        return Err(corrupt("vectors.bin: bad magic or too short"));
    }
    let (dim, count) = (u64_at(8), u64_at(16));
    if dim != meta.dim as u64 || count != meta.count as u64 {
        return Err(corrupt(format!(
            "vectors.bin header dim={dim} count={count} disagrees with meta.json dim={} count={}",
            meta.dim, meta.count
        )));
    }
    let (dim, count) = (meta.dim, meta.count);
    let record = 8 + 4 * dim;
    if count
        .checked_mul(record)
        .and_then(|n| n.checked_add(HEADER_LEN))
        != Some(bytes.len())
    {
        return Err(corrupt(format!(
            "vectors.bin is {} bytes, expected {count} records of {record}",
            bytes.len()
        )));
    }
    let mut keys = Vec::with_capacity(count);
    let mut data = Vec::with_capacity(count * dim);
    let mut v = vec![0.0f32; dim];
    for r in 0..count {
        let at = HEADER_LEN + r * record;
        let key = u64_at(at);
        if keys.last().is_some_and(|&prev| prev >= key) {
            return Err(corrupt(format!(
                "keys not strictly ascending at record {r}"
            )));
        }
        for (i, x) in v.iter_mut().enumerate() {
            let o = at + 8 + 4 * i;
            *x = f32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
        }
        // Validate, but keep the stored bits: they were normalised before saving, and
        // normalising again would perturb the last bits and change scores across a restart.
        validate_unit(&v, dim).map_err(|e| corrupt(format!("vector of key {key}: {e:?}")))?;
        keys.push(key);
        data.extend_from_slice(&v);
    }
    Ok((keys, data))
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// fsync a directory so that the entries created or renamed in it survive a crash.
fn sync_dir(path: &Path) -> std::io::Result<()> {
    File::open(path)?.sync_all()
}

/// A sibling path of `dir` that no other save (in this or another process) will pick.
fn sibling(dir: &Path, tag: &str) -> Result<PathBuf, IndexError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = dir
        .file_name()
        .ok_or_else(|| {
            IndexError::Io(std::io::Error::new(
                ErrorKind::InvalidInput,
                format!("snapshot path {} has no final component", dir.display()),
            ))
        })?
        .to_string_lossy();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    Ok(dir.with_file_name(format!(".{name}.{tag}-{}-{n}", std::process::id())))
}

fn parent_of(dir: &Path) -> PathBuf {
    match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

impl ShopIndex {
    /// Writes the live vectors to `dir` atomically (temp dir beside it, fsync, rename over).
    ///
    /// Searches and writes may continue meanwhile; the snapshot is the state at the moment the
    /// vectors were copied out under the read lock. If the process dies between moving the old
    /// snapshot aside and moving the new one in, `dir` is missing and the next start sees
    /// `Ok(None)` and rebuilds from the store.
    pub fn save_snapshot(
        &self,
        dir: &Path,
        model_version: &str,
    ) -> Result<SnapshotMeta, IndexError> {
        let dim = self.config().dim;
        let (keys, data) = self.export_sorted();
        let bytes = encode(dim, &keys, &data);
        drop(data);
        let meta = MetaFile {
            format_version: FORMAT_VERSION,
            model_version: model_version.to_owned(),
            dim,
            count: keys.len(),
            checksum: format!("{:016x}", fnv1a64(&bytes)),
        };
        let meta_json = serde_json::to_vec_pretty(&meta)
            .map_err(|e| IndexError::Io(std::io::Error::other(e)))?;

        let parent = parent_of(dir);
        fs::create_dir_all(&parent)?;
        let tmp = sibling(dir, "tmp")?;
        let result = (|| -> Result<(), IndexError> {
            fs::create_dir(&tmp)?;
            write_synced(&tmp.join(VECTORS_FILE), &bytes)?;
            write_synced(&tmp.join(META_FILE), &meta_json)?;
            sync_dir(&tmp)?;
            // rename(2) cannot replace a non-empty directory, so move the old one aside first.
            let old = sibling(dir, "old")?;
            let had_old = match fs::rename(dir, &old) {
                Ok(()) => true,
                Err(e) if e.kind() == ErrorKind::NotFound => false,
                Err(e) => return Err(e.into()),
            };
            fs::rename(&tmp, dir)?;
            sync_dir(&parent)?;
            if had_old {
                if let Err(e) = fs::remove_dir_all(&old) {
                    tracing::warn!(path = %old.display(), error = %e, "could not remove old snapshot");
                }
            }
            Ok(())
        })();
        if result.is_err() {
            // Best effort: a leftover temp dir is harmless but wastes disk.
            let _ = fs::remove_dir_all(&tmp);
        }
        result?;
        tracing::info!(path = %dir.display(), count = meta.count, "snapshop-index: snapshot saved");
        Ok(SnapshotMeta {
            model_version: meta.model_version,
            dim,
            count: meta.count,
        })
    }

    /// Loads a snapshot written by [`ShopIndex::save_snapshot`] and rebuilds its graph
    /// (blocking, all cores). `Ok(None)` if there is no snapshot at `dir`; `Err` if one exists
    /// but is corrupt, of another format version, or of another dimension than `cfg.dim`.
    /// The caller must compare [`SnapshotMeta::model_version`] with its model.
    pub fn load_snapshot(
        dir: &Path,
        cfg: IndexConfig,
    ) -> Result<Option<(Self, SnapshotMeta)>, IndexError> {
        Self::load_snapshot_with_stop(dir, cfg, &AtomicBool::new(false))
    }

    /// [`ShopIndex::load_snapshot`] with a stop flag for the graph build (`Err(Cancelled)`).
    pub fn load_snapshot_with_stop(
        dir: &Path,
        cfg: IndexConfig,
        stop: &AtomicBool,
    ) -> Result<Option<(Self, SnapshotMeta)>, IndexError> {
        cfg.validate()?;
        let meta_bytes = match fs::read(dir.join(META_FILE)) {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let meta: MetaFile =
            serde_json::from_slice(&meta_bytes).map_err(|e| corrupt(format!("meta.json: {e}")))?;
        if meta.format_version != FORMAT_VERSION {
            return Err(corrupt(format!(
                "format version {} (this build reads {FORMAT_VERSION})",
                meta.format_version
            )));
        }
        if meta.dim != cfg.dim {
            return Err(IndexError::DimensionMismatch {
                expected: cfg.dim,
                got: meta.dim,
            });
        }
        let bytes = match fs::read(dir.join(VECTORS_FILE)) {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(corrupt("meta.json present but vectors.bin missing"))
            }
            Err(e) => return Err(e.into()),
        };
        let sum = format!("{:016x}", fnv1a64(&bytes));
        if sum != meta.checksum {
            return Err(corrupt(format!(
                "checksum {sum} does not match meta.json {}",
                meta.checksum
            )));
        }
        let (keys, data) = decode(&bytes, &meta)?;
        drop(bytes);
        let index = ShopIndex::new(cfg);
        index.load_validated(&keys, &data);
        drop((keys, data));
        index.rebuild(stop)?;
        Ok(Some((
            index,
            SnapshotMeta {
                model_version: meta.model_version,
                dim: meta.dim,
                count: meta.count,
            },
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::random_unit_vectors;

    fn tmpdir(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("snapshop-index-test-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).expect("create temp dir");
        d
    }

    fn small_index(n: usize, dim: usize) -> (ShopIndex, Vec<f32>) {
        let data = random_unit_vectors(n, dim, 42);
        let items = (0..n as Key)
            .map(|k| {
                (
                    k * 3,
                    data[k as usize * dim..(k as usize + 1) * dim].to_vec(),
                )
            })
            .collect();
        let cfg = IndexConfig {
            ef_construction: 64,
            exact_search_max_live: 0,
            ..IndexConfig::new(dim)
        };
        (
            ShopIndex::build(cfg, items, &AtomicBool::new(false)).expect("build"),
            data,
        )
    }

    #[test]
    fn round_trip_gives_same_results() {
        let root = tmpdir("roundtrip");
        let dir = root.join("snap");
        let (idx, data) = small_index(500, 32);
        // Exercise fresh segment and tombstones too: they must be saved as plain live vectors.
        assert!(idx.remove(3));
        idx.insert(100_000, &data[..32]).expect("insert");
        let meta = idx.save_snapshot(&dir, "model-a").expect("save");
        assert_eq!((meta.count, meta.dim), (500, 32));
        // Saving again replaces the previous snapshot in place.
        idx.save_snapshot(&dir, "model-b").expect("resave");

        let (loaded, meta) = ShopIndex::load_snapshot(&dir, IndexConfig::new(32))
            .expect("load")
            .expect("present");
        assert_eq!(meta.model_version, "model-b");
        assert_eq!(meta.count, 500);
        assert_eq!(loaded.keys(), idx.keys());
        assert_eq!(loaded.vectors(&idx.keys()), idx.vectors(&idx.keys()));
        for q in 0..20 {
            let query = &data[q * 32..(q + 1) * 32];
            assert_eq!(
                loaded.search_exact(query, 10, None).expect("search"),
                idx.search_exact(query, 10, None).expect("search")
            );
            assert_eq!(
                loaded.search(query, 1, None).expect("search")[0].key,
                idx.search(query, 1, None).expect("search")[0].key
            );
        }
        // No temp or old dirs left behind.
        let leftovers: Vec<_> = fs::read_dir(&root)
            .expect("read root")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("snap")]);
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn missing_snapshot_is_none() {
        let root = tmpdir("missing");
        let r = ShopIndex::load_snapshot(&root.join("nope"), IndexConfig::new(8)).expect("ok");
        assert!(r.is_none());
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn corrupt_truncated_or_mismatched_snapshots_are_errors() {
        let root = tmpdir("corrupt");
        let dir = root.join("snap");
        let (idx, _) = small_index(50, 16);
        idx.save_snapshot(&dir, "m").expect("save");
        let vec_path = dir.join(VECTORS_FILE);
        let good = fs::read(&vec_path).expect("read");

        // Wrong dimension for this config.
        assert!(matches!(
            ShopIndex::load_snapshot(&dir, IndexConfig::new(17)),
            Err(IndexError::DimensionMismatch {
                expected: 17,
                got: 16
            })
        ));
        // Truncated vectors file.
        fs::write(&vec_path, &good[..good.len() - 7]).expect("write");
        assert!(matches!(
            ShopIndex::load_snapshot(&dir, IndexConfig::new(16)),
            Err(IndexError::CorruptSnapshot(_))
        ));
        // One flipped byte.
        let mut flipped = good.clone();
        flipped[HEADER_LEN + 20] ^= 0x40;
        fs::write(&vec_path, &flipped).expect("write");
        assert!(matches!(
            ShopIndex::load_snapshot(&dir, IndexConfig::new(16)),
            Err(IndexError::CorruptSnapshot(_))
        ));
        // Vectors file gone.
        fs::remove_file(&vec_path).expect("rm");
        assert!(matches!(
            ShopIndex::load_snapshot(&dir, IndexConfig::new(16)),
            Err(IndexError::CorruptSnapshot(_))
        ));
        // Garbage metadata.
        fs::write(&vec_path, &good).expect("write");
        fs::write(dir.join(META_FILE), b"{not json").expect("write");
        assert!(matches!(
            ShopIndex::load_snapshot(&dir, IndexConfig::new(16)),
            Err(IndexError::CorruptSnapshot(_))
        ));
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn decode_rejects_non_unit_vectors_even_with_valid_checksum() {
        let keys = vec![1, 2];
        let data = vec![1.0, 0.0, 0.5, 0.5];
        let bytes = encode(2, &keys, &data);
        let meta = MetaFile {
            format_version: FORMAT_VERSION,
            model_version: "m".into(),
            dim: 2,
            count: 2,
            checksum: format!("{:016x}", fnv1a64(&bytes)),
        };
        assert!(matches!(
            decode(&bytes, &meta),
            Err(IndexError::CorruptSnapshot(_))
        ));
        let ok = encode(2, &keys[..1], &data[..2]);
        let meta = MetaFile { count: 1, ..meta };
        assert_eq!(
            decode(&ok, &meta).expect("decode"),
            (vec![1], vec![1.0, 0.0])
        );
    }

    #[test]
    fn load_honours_stop_flag() {
        let root = tmpdir("stop");
        let dir = root.join("snap");
        let (idx, _) = small_index(20, 8);
        idx.save_snapshot(&dir, "m").expect("save");
        let r =
            ShopIndex::load_snapshot_with_stop(&dir, IndexConfig::new(8), &AtomicBool::new(true));
        assert!(matches!(r, Err(IndexError::Cancelled)));
        let _ = fs::remove_dir_all(&root);
    }
}
