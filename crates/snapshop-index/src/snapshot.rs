//! Atomic on-disk snapshots of the live vectors, so a restart need not re-read the store.
//!
//! Layout of a snapshot directory: `meta.json` (format version, dim, model version, count,
//! checksum) and `vectors.bin` (magic, dim, count, then `count` × (key u64 LE, dim × f32 LE),
//! keys ascending). Written to a temp dir beside the target, fsynced, then renamed over it.
//!
//! The HNSW graph is saved beside the vectors, in the same directory (so in the same atomic
//! rename): hnsw_rs's own dump (`graph.hnsw.graph`, `graph.hnsw.data`), `graph.ids` (graph id →
//! key, u64 LE each, then one liveness byte per id) and `graph.json`, which ties them to this
//! very `vectors.bin` (its checksum), to the dimension and M, and holds a checksum of each of
//! the three files. On load the graph is reloaded instead of rebuilt when every one of those
//! checks passes; a missing, stale (other vectors, other M) or damaged graph is logged and
//! ignored, and the graph is rebuilt from the vectors as before. The checksums are verified
//! before hnsw_rs's loader sees the files, because that loader asserts on malformed input
//! (its panics are caught too, as a last resort). Costs: the dump repeats every vector (hnsw_rs
//! keeps its own copy), about doubling the snapshot on disk; a reloaded graph leaks its small
//! `HnswIo` (see `graph.rs`). This module must never load a snapshot it has not fully
//! verified, and never leave a half-written snapshot at the target path.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::graph::{Graph, DUMP_BASENAME};
use crate::index::SaveView;
use crate::vector::validate_unit;
use crate::{IndexConfig, IndexError, Key, ShopIndex, SnapshotMeta};

const FORMAT_VERSION: u32 = 1;
const MAGIC: &[u8; 8] = b"SNPIDXv1";
const META_FILE: &str = "meta.json";
const VECTORS_FILE: &str = "vectors.bin";
const HEADER_LEN: usize = 8 + 8 + 8;
const GRAPH_META_FILE: &str = "graph.json";
const GRAPH_IDS_FILE: &str = "graph.ids";
const GRAPH_FORMAT_VERSION: u32 = 1;

/// The files hnsw_rs's `file_dump` writes for [`DUMP_BASENAME`].
fn hnsw_files() -> [String; 2] {
    [
        format!("{DUMP_BASENAME}.hnsw.graph"),
        format!("{DUMP_BASENAME}.hnsw.data"),
    ]
}

/// What `graph.json` holds.
#[derive(Serialize, Deserialize)]
struct GraphMeta {
    format_version: u32,
    /// `meta.json`'s checksum of the `vectors.bin` saved together with this graph.
    vectors_checksum: String,
    dim: usize,
    max_connections: usize,
    /// Graph ids `0..points`, live or tombstoned.
    points: usize,
    /// Live graph ids; every other key of `vectors.bin` goes to the fresh segment.
    live: usize,
    /// FNV-1a 64, hex, of `graph.ids`, `graph.hnsw.graph` and `graph.hnsw.data`.
    ids_checksum: String,
    hnsw_graph_checksum: String,
    hnsw_data_checksum: String,
}

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

/// FNV-1a 64 of a file, streamed.
fn file_checksum(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut f = std::io::BufReader::with_capacity(1 << 20, File::open(path)?);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        for &b in &buf[..n] {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    Ok(format!("{h:016x}"))
}

fn encode_graph_ids(keys: &[Key], live: &[bool]) -> Vec<u8> {
    let mut out = Vec::with_capacity(keys.len() * 9);
    for k in keys {
        out.extend_from_slice(&k.to_le_bytes());
    }
    out.extend(live.iter().map(|l| u8::from(*l)));
    out
}

/// Dumps the graph of `view` into `dir` (beside `vectors.bin`, whose checksum is
/// `vectors_checksum`). Called with the maintenance guard held, so nothing inserts meanwhile.
fn save_graph(
    dir: &Path,
    view: &SaveView,
    dim: usize,
    vectors_checksum: &str,
) -> Result<bool, IndexError> {
    let Some(graph) = view.graph.as_ref() else {
        return Ok(false);
    };
    let points = view.graph_keys.len();
    if graph.len() != points || view.graph_live.len() != points {
        // Cannot happen under the maintenance guard; skip the graph rather than save a
        // mismatched one.
        tracing::warn!(
            graph = graph.len(),
            mapped = points,
            "snapshop-index: graph and id map disagree; saving vectors only"
        );
        return Ok(false);
    }
    let ids = encode_graph_ids(&view.graph_keys, &view.graph_live);
    write_synced(&dir.join(GRAPH_IDS_FILE), &ids)?;
    graph.dump(dir)?;
    let [hg, hd] = hnsw_files();
    for name in [&hg, &hd] {
        File::open(dir.join(name))?.sync_all()?;
    }
    let meta = GraphMeta {
        format_version: GRAPH_FORMAT_VERSION,
        vectors_checksum: vectors_checksum.to_owned(),
        dim,
        max_connections: graph.max_connections(),
        points,
        live: view.graph_live.iter().filter(|l| **l).count(),
        ids_checksum: format!("{:016x}", fnv1a64(&ids)),
        hnsw_graph_checksum: file_checksum(&dir.join(&hg))?,
        hnsw_data_checksum: file_checksum(&dir.join(&hd))?,
    };
    let json =
        serde_json::to_vec_pretty(&meta).map_err(|e| IndexError::Io(std::io::Error::other(e)))?;
    write_synced(&dir.join(GRAPH_META_FILE), &json)?;
    Ok(true)
}

/// A reloaded graph, its id → key map and its liveness per id.
type LoadedGraph = (Graph, Vec<Key>, Vec<bool>);

/// A graph, its id → key map and liveness, if `dir` holds one saved with exactly these
/// vectors and this config. `Ok(None)`: no graph saved, or a stale one (other vectors, dim or
/// M); `Err`: a damaged one. Either way the caller rebuilds.
fn load_graph(
    dir: &Path,
    meta: &MetaFile,
    cfg: &IndexConfig,
    keys: &[Key],
) -> Result<Option<LoadedGraph>, IndexError> {
    let gmeta_bytes = match fs::read(dir.join(GRAPH_META_FILE)) {
        Ok(b) => b,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let gmeta: GraphMeta =
        serde_json::from_slice(&gmeta_bytes).map_err(|e| corrupt(format!("graph.json: {e}")))?;
    if gmeta.format_version != GRAPH_FORMAT_VERSION
        || gmeta.vectors_checksum != meta.checksum
        || gmeta.dim != cfg.dim
        || gmeta.max_connections != cfg.max_connections
    {
        tracing::info!(
            graph_format = gmeta.format_version,
            graph_m = gmeta.max_connections,
            config_m = cfg.max_connections,
            same_vectors = gmeta.vectors_checksum == meta.checksum,
            "snapshop-index: saved graph is stale; rebuilding it"
        );
        return Ok(None);
    }
    let ids = fs::read(dir.join(GRAPH_IDS_FILE))?;
    if format!("{:016x}", fnv1a64(&ids)) != gmeta.ids_checksum {
        return Err(corrupt("graph.ids checksum mismatch"));
    }
    let n = gmeta.points;
    if n.checked_mul(9) != Some(ids.len()) {
        return Err(corrupt(format!(
            "graph.ids is {} bytes for {n} points",
            ids.len()
        )));
    }
    let gkeys: Vec<Key> = ids[..n * 8]
        .chunks_exact(8)
        .map(|b| Key::from_le_bytes(b.try_into().expect("8-byte chunk")))
        .collect();
    let mut live = Vec::with_capacity(n);
    for &b in &ids[n * 8..] {
        match b {
            0 => live.push(false),
            1 => live.push(true),
            _ => return Err(corrupt("graph.ids: bad liveness byte")),
        }
    }
    let mut seen = HashSet::with_capacity(gmeta.live);
    for (k, _) in gkeys.iter().zip(&live).filter(|(_, l)| **l) {
        if keys.binary_search(k).is_err() || !seen.insert(*k) {
            return Err(corrupt(format!(
                "graph.ids: live key {k} missing from the vectors or repeated"
            )));
        }
    }
    if seen.len() != gmeta.live {
        return Err(corrupt("graph.ids: live count disagrees with graph.json"));
    }
    let [hg, hd] = hnsw_files();
    for (name, want) in [
        (&hg, &gmeta.hnsw_graph_checksum),
        (&hd, &gmeta.hnsw_data_checksum),
    ] {
        let got = file_checksum(&dir.join(name))?;
        if &got != want {
            return Err(corrupt(format!("{name} checksum mismatch")));
        }
    }
    let graph = Graph::load(dir)?;
    if graph.len() != n || graph.max_connections() != cfg.max_connections {
        return Err(corrupt(format!(
            "reloaded graph has {} points (M {}), graph.json says {n} (M {})",
            graph.len(),
            graph.max_connections(),
            cfg.max_connections
        )));
    }
    Ok(Some((graph, gkeys, live)))
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
        // Held to the end: no merge may insert into the graph while it is dumped.
        let _maintenance = self.maintenance_guard();
        let view = self.export_for_save();
        let keys = &view.keys;
        let bytes = encode(dim, keys, &view.data);
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
            match save_graph(&tmp, &view, dim, &meta.checksum) {
                Ok(_) => {}
                Err(e) => {
                    // The vectors alone are a valid snapshot; the next start rebuilds.
                    tracing::warn!(error = %e, "snapshop-index: could not save the graph; saving vectors only");
                    let [hg, hd] = hnsw_files();
                    for name in [GRAPH_META_FILE, GRAPH_IDS_FILE, &hg, &hd] {
                        let _ = fs::remove_file(tmp.join(name));
                    }
                }
            }
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

    /// Loads a snapshot written by [`ShopIndex::save_snapshot`], reloading its saved graph if
    /// that is present, intact and made from these vectors with this M, else rebuilding the
    /// graph (blocking, all cores). `Ok(None)` if there is no snapshot at `dir`; `Err` if one exists
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
        if stop.load(Ordering::Relaxed) {
            return Err(IndexError::Cancelled);
        }
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
        drop(data);
        match load_graph(dir, &meta, index.config(), &keys) {
            Ok(Some((graph, gkeys, live))) => {
                tracing::info!(points = gkeys.len(), "snapshop-index: saved graph reloaded");
                index.install_graph(graph, gkeys, live);
            }
            Ok(None) => index.rebuild(stop)?,
            Err(e) => {
                tracing::warn!(error = %e, "snapshop-index: saved graph unusable; rebuilding it");
                index.rebuild(stop)?;
            }
        }
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

    /// The small index's config (what `small_index` builds with, so the graph is reusable).
    fn small_cfg(dim: usize) -> IndexConfig {
        IndexConfig {
            ef_construction: 64,
            exact_search_max_live: 0,
            ..IndexConfig::new(dim)
        }
    }

    #[test]
    fn round_trip_reloads_the_graph_and_gives_identical_graph_searches() {
        let root = tmpdir("graph-roundtrip");
        let dir = root.join("snap");
        let (idx, data) = small_index(600, 32);
        // Tombstones, a merged part and a fresh part must all survive the restart.
        assert!(idx.remove(3));
        idx.insert(6, &data[32 * 300..32 * 301]).expect("replace");
        for i in 0..40 {
            idx.insert(
                1_000_000 + i,
                &data[(i as usize) * 32 + 32 * 400..(i as usize) * 32 + 32 * 401],
            )
            .expect("insert");
        }
        assert!(idx.merge_fresh(&AtomicBool::new(false)).expect("merge"));
        idx.insert(2_000_000, &data[32 * 500..32 * 501])
            .expect("fresh");
        idx.save_snapshot(&dir, "m").expect("save");
        for f in [
            GRAPH_META_FILE,
            GRAPH_IDS_FILE,
            "graph.hnsw.graph",
            "graph.hnsw.data",
        ] {
            assert!(dir.join(f).exists(), "{f} missing");
        }
        let (loaded, _) = ShopIndex::load_snapshot(&dir, small_cfg(32))
            .expect("load")
            .expect("present");
        loaded.check_invariants();
        let (a, b) = (idx.stats(), loaded.stats());
        assert_eq!(b.rebuilds, 0, "the graph must be reloaded, not rebuilt");
        assert_eq!(
            (a.live, a.graph, a.fresh, a.tombstones),
            (b.live, b.graph, b.fresh, b.tombstones)
        );
        for q in 0..30 {
            let query = &data[q * 7 * 32..(q * 7 + 1) * 32];
            assert_eq!(
                loaded.search(query, 20, None).expect("search"),
                idx.search(query, 20, None).expect("search")
            );
        }
        // The reloaded graph keeps growing incrementally.
        for i in 0..30 {
            loaded
                .insert(
                    3_000_000 + i,
                    &data[(i as usize) * 32..(i as usize + 1) * 32],
                )
                .expect("insert");
        }
        assert!(loaded.merge_fresh(&AtomicBool::new(false)).expect("merge"));
        loaded.check_invariants();
        assert_eq!(loaded.stats().rebuilds, 0);
        // A reloaded (and grown) graph saves and reloads again.
        let dir2 = root.join("snap2");
        loaded.save_snapshot(&dir2, "m").expect("save reloaded");
        let (again, _) = ShopIndex::load_snapshot(&dir2, small_cfg(32))
            .expect("load")
            .expect("present");
        again.check_invariants();
        assert_eq!(again.stats().rebuilds, 0);
        assert_eq!(again.stats().graph, loaded.stats().graph);
        for q in 0..10 {
            let query = &data[q * 11 * 32..(q * 11 + 1) * 32];
            assert_eq!(
                again.search(query, 20, None).expect("search"),
                loaded.search(query, 20, None).expect("search")
            );
        }
        assert_eq!(
            loaded.search(&data[32 * 5..32 * 6], 2, None).expect("s")[0].score,
            loaded
                .search_exact(&data[32 * 5..32 * 6], 1, None)
                .expect("s")[0]
                .score
        );
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn corrupt_stale_or_mismatched_graphs_are_ignored_and_rebuilt() {
        let root = tmpdir("graph-corrupt");
        let dir = root.join("snap");
        let (idx, data) = small_index(300, 16);
        idx.save_snapshot(&dir, "m").expect("save");
        let reload = |cfg: IndexConfig| {
            let (loaded, _) = ShopIndex::load_snapshot(&dir, cfg)
                .expect("a bad graph is not an error")
                .expect("present");
            loaded.check_invariants();
            assert_eq!(loaded.len(), 300);
            let q = &data[16 * 9..16 * 10];
            assert_eq!(loaded.search(q, 1, None).expect("s")[0].key, 27);
            loaded.stats().rebuilds
        };
        assert_eq!(reload(small_cfg(16)), 0);
        // Another M: stale, rebuilt with the configured M.
        assert_eq!(
            reload(IndexConfig {
                max_connections: 8,
                ..small_cfg(16)
            }),
            1
        );
        // A flipped byte in each graph file in turn.
        for f in [GRAPH_IDS_FILE, "graph.hnsw.graph", "graph.hnsw.data"] {
            let p = dir.join(f);
            let good = fs::read(&p).expect("read");
            let mut bad = good.clone();
            let at = bad.len() / 2;
            bad[at] ^= 0x10;
            fs::write(&p, &bad).expect("write");
            assert_eq!(reload(small_cfg(16)), 1, "{f}");
            // Truncated.
            fs::write(&p, &good[..good.len() - 3]).expect("write");
            assert_eq!(reload(small_cfg(16)), 1, "{f}");
            fs::write(&p, &good).expect("restore");
        }
        assert_eq!(reload(small_cfg(16)), 0);
        // A graph saved with other vectors (a newer vectors.bin beside an older graph).
        let other = root.join("other");
        let (idx2, _) = small_index(300, 16);
        idx2.insert(999_999, &data[..16]).expect("insert");
        idx2.save_snapshot(&other, "m").expect("save");
        fs::copy(other.join(VECTORS_FILE), dir.join(VECTORS_FILE)).expect("copy");
        fs::copy(other.join(META_FILE), dir.join(META_FILE)).expect("copy");
        let (loaded, _) = ShopIndex::load_snapshot(&dir, small_cfg(16))
            .expect("load")
            .expect("present");
        assert_eq!((loaded.len(), loaded.stats().rebuilds), (301, 1));
        // Garbage graph.json, then none at all: rebuilt.
        fs::write(dir.join(GRAPH_META_FILE), b"{").expect("write");
        assert_eq!(reload_count(&dir), 1);
        fs::remove_file(dir.join(GRAPH_META_FILE)).expect("rm");
        assert_eq!(reload_count(&dir), 1);
        drop(idx);
        let _ = fs::remove_dir_all(&root);
    }

    fn reload_count(dir: &Path) -> u64 {
        let (loaded, _) = ShopIndex::load_snapshot(dir, small_cfg(16))
            .expect("load")
            .expect("present");
        loaded.stats().rebuilds
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
