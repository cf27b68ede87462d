//! Loading the ONNX Runtime shared library and creating the process's one ort environment.
//!
//! It exists because `ort` is built with `load-dynamic`: the library is the one pinned by the
//! Python pipeline's wheel, found at run time. ort allows one environment per process, and its
//! own fallback loader panics when the library is missing, so everything goes through
//! [`init_runtime`], which is idempotent and returns errors. Nothing else in this crate may call
//! an `ort` API before it.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use crate::InferenceError;

/// The environment variable consulted when no path is configured (ort's own convention).
pub const DYLIB_ENV: &str = "ORT_DYLIB_PATH";

/// Where the library is looked for last, relative to the working directory: the pinned
/// `onnxruntime` wheel in the pipeline's venv.
pub const DEFAULT_DYLIB: &str =
    "./.venv/lib/python3.11/site-packages/onnxruntime/capi/libonnxruntime.so.1.32.0";

struct Runtime {
    path: PathBuf,
    env: ort::environment::Environment,
}

static RUNTIME: OnceLock<Runtime> = OnceLock::new();
/// Serialises initialisation: `OnceLock::get_or_try_init` is not stable.
static INIT: Mutex<()> = Mutex::new(());

/// Picks the library: `explicit` (configuration), then `env_value` (`ORT_DYLIB_PATH`), then
/// [`DEFAULT_DYLIB`]; the first that exists wins. A configured path that does not exist is
/// skipped with a warning rather than an error so that, say, a stale environment variable does
/// not hide a working default; when none exists the error names all three.
pub fn resolve_dylib(
    explicit: Option<&Path>,
    env_value: Option<&Path>,
    default: &Path,
) -> Result<PathBuf, InferenceError> {
    let candidates = [
        ("configured path", explicit),
        (DYLIB_ENV, env_value),
        ("default", Some(default)),
    ];
    for (source, path) in candidates {
        let Some(path) = path else { continue };
        if path.is_file() {
            return Ok(path.to_path_buf());
        }
        if source != "default" {
            tracing::warn!(%source, path = %path.display(), "ONNX Runtime library not found there");
        }
    }
    let show =
        |p: Option<&Path>| p.map_or_else(|| "(not set)".to_string(), |p| p.display().to_string());
    Err(InferenceError::Runtime(format!(
        "ONNX Runtime library not found: configured path {}, ${DYLIB_ENV} {}, default {} \
         (relative to {}); install the pinned onnxruntime wheel into .venv or set {DYLIB_ENV}",
        show(explicit),
        show(env_value),
        default.display(),
        std::env::current_dir().map_or_else(|_| "?".into(), |d| d.display().to_string()),
    )))
}

/// Loads ONNX Runtime and creates the process-wide environment; returns the library's path.
///
/// Idempotent: later calls return the path loaded first (with a warning if they asked for a
/// different one), because ort cannot unload a library or create a second environment.
pub fn init_runtime(dylib: Option<&Path>) -> Result<PathBuf, InferenceError> {
    if let Some(rt) = RUNTIME.get() {
        return Ok(already(rt, dylib));
    }
    // A poisoned lock only means another thread panicked while initialising; the state it
    // protects is the OnceLock, which is still consistent.
    let _guard = INIT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(rt) = RUNTIME.get() {
        return Ok(already(rt, dylib));
    }
    let env_value = std::env::var_os(DYLIB_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    let path = resolve_dylib(dylib, env_value.as_deref(), Path::new(DEFAULT_DYLIB))?;
    // ort resolves a relative path against the executable's directory first; make it absolute
    // so the working-directory-relative default means what it says.
    let path = std::path::absolute(&path).unwrap_or(path);
    let builder = ort::init_from(&path).map_err(|e| {
        InferenceError::Runtime(format!("loading ONNX Runtime from {}: {e}", path.display()))
    })?;
    let env = builder
        .with_name("snapshop")
        .with_telemetry(false)
        .build()
        .map_err(|e| InferenceError::Runtime(format!("creating the ort environment: {e}")))?;
    tracing::info!(path = %path.display(), "ONNX Runtime loaded");
    let rt = RUNTIME.get_or_init(|| Runtime { path, env });
    Ok(rt.path.clone())
}

/// The environment created by [`init_runtime`], initialising with the default resolution if
/// nobody did.
pub(crate) fn environment() -> Result<&'static ort::environment::Environment, InferenceError> {
    if RUNTIME.get().is_none() {
        init_runtime(None)?;
    }
    Ok(&RUNTIME
        .get()
        .expect("init_runtime succeeded but stored nothing; this is a bug")
        .env)
}

fn already(rt: &Runtime, requested: Option<&Path>) -> PathBuf {
    if let Some(p) = requested {
        if std::path::absolute(p).ok().as_deref() != Some(rt.path.as_path()) {
            tracing::warn!(
                requested = %p.display(),
                loaded = %rt.path.display(),
                "ONNX Runtime is already loaded; ignoring the requested library"
            );
        }
    }
    rt.path.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolution_order() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.so");
        let b = dir.path().join("b.so");
        let c = dir.path().join("c.so");
        let missing = dir.path().join("missing.so");
        for p in [&a, &b, &c] {
            std::fs::write(p, b"").unwrap();
        }
        assert_eq!(resolve_dylib(Some(&a), Some(&b), &c).unwrap(), a);
        assert_eq!(resolve_dylib(None, Some(&b), &c).unwrap(), b);
        assert_eq!(resolve_dylib(Some(&missing), Some(&b), &c).unwrap(), b);
        assert_eq!(resolve_dylib(Some(&missing), None, &c).unwrap(), c);
        assert_eq!(resolve_dylib(None, None, &c).unwrap(), c);
    }

    #[test]
    fn missing_everywhere_names_all_three() {
        let dir = tempfile::tempdir().unwrap();
        let x = dir.path().join("x.so");
        let y = dir.path().join("y.so");
        let z = dir.path().join("z.so");
        let msg = resolve_dylib(Some(&x), Some(&y), &z)
            .unwrap_err()
            .to_string();
        for p in [&x, &y, &z] {
            assert!(msg.contains(&p.display().to_string()), "{msg}");
        }
        assert!(msg.contains(DYLIB_ENV), "{msg}");
        let msg = resolve_dylib(None, None, &z).unwrap_err().to_string();
        assert!(msg.contains("(not set)"), "{msg}");
    }
}
