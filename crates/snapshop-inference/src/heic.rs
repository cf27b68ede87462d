//! HEIC/HEIF pixels from the system libheif (Debian 12's 1.15, with libde265), the library
//! pillow-heif wraps for the Python pipeline.
//!
//! It exists because HEIC is what iPhone cameras write, and because only libheif decodes it the
//! way the pipeline does: same container interpretation (the `irot` / `imir` / `clap`
//! transformations applied by libheif, the EXIF orientation tag ignored, as pillow-heif resets it
//! to 1), same HEVC decoder, same YCbCr → RGB conversion. The last holds for the pinned
//! pillow-heif 0.20.0 (libheif 1.18.2): libheif 1.19 changed the 4:2:0 conversion, and later
//! pillow-heif releases leave 1-4% of the samples one level off (README.md, "HEIC"). The declared
//! dimensions (`ispe`) are checked against the limits before libheif is asked for a single pixel,
//! so a small file announcing a huge image costs nothing. This module must never decode before
//! that check, never apply the EXIF orientation on top of libheif's transformations, never run
//! more than one decoding thread per call (the caller's `spawn_blocking` thread is the budget),
//! and never hand `DecodingOptions` to libheif-rs 0.20's `decode` (it frees them before use).

use std::sync::OnceLock;

use image::RgbImage;
use libheif_rs::{ColorSpace, HeifContext, HeifErrorSubCode, LibHeif, RgbChroma};

use crate::preprocess::{DecodedImage, ImageLimits, PreprocessError};

/// Brands (ISO/IEC 23008-12 and 14496-12 `ftyp`) that mark a HEIF file libheif can decode
/// with the HEVC decoder it has: still images (`heic`, `heix`, `heim`, `heis`, `mif1`), image
/// sequences (`hevc`, `hevx`, `hevm`, `hevs`, `msf1`). `mif1` / `msf1` alone are also used by
/// AVIF files, which say `avif` / `avis` as their major brand and are left to the caller.
const HEIF_BRANDS: &[&[u8; 4]] = &[
    b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1",
];

/// Major brands of AVIF, which shares HEIF's container but not its codec.
const AVIF_BRANDS: &[&[u8; 4]] = &[b"avif", b"avis"];

/// The `ftyp` box at the start of an ISO base media file: `(major brand, compatible brands)`.
fn ftyp(bytes: &[u8]) -> Option<([u8; 4], Vec<[u8; 4]>)> {
    let size = u32::from_be_bytes(bytes.get(0..4)?.try_into().ok()?) as usize;
    if bytes.get(4..8)? != b"ftyp" || size < 16 || size > bytes.len() {
        return None;
    }
    let major: [u8; 4] = bytes[8..12].try_into().ok()?;
    // bytes 12..16 are the minor version; the compatible brands follow, 4 bytes each.
    let compatible = bytes[16..size]
        .chunks_exact(4)
        .map(|c| [c[0], c[1], c[2], c[3]])
        .collect();
    Some((major, compatible))
}

/// What the first bytes say about a file in HEIF's container.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Sniffed {
    /// HEIC / HEIF (HEVC-coded): decoded here.
    Heif,
    /// AVIF: the same container, another codec; not accepted.
    Avif,
    /// Not an ISO base media file with an image brand.
    Other,
}

/// Sniffs the `ftyp` brands: a HEIF brand as the major brand or, unless the major brand is
/// AVIF's, among the compatible ones.
pub(crate) fn sniff(bytes: &[u8]) -> Sniffed {
    let Some((major, compatible)) = ftyp(bytes) else {
        return Sniffed::Other;
    };
    if AVIF_BRANDS.contains(&&major) {
        return Sniffed::Avif;
    }
    let is_heif = |b: &[u8; 4]| HEIF_BRANDS.contains(&b);
    if is_heif(&major) || compatible.iter().any(is_heif) {
        Sniffed::Heif
    } else if compatible.iter().any(|b| AVIF_BRANDS.contains(&b)) {
        Sniffed::Avif
    } else {
        Sniffed::Other
    }
}

/// The `(type, payload)` of the boxes laid end to end in `data`; stops at a malformed one.
fn boxes(mut data: &[u8]) -> impl Iterator<Item = ([u8; 4], &[u8])> {
    std::iter::from_fn(move || {
        let head = data.get(0..8)?;
        let size = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as u64;
        let kind = [head[4], head[5], head[6], head[7]];
        let (header, size) = match size {
            0 => (8, data.len() as u64),
            1 => {
                let large = u64::from_be_bytes(data.get(8..16)?.try_into().ok()?);
                (16, large)
            }
            n => (8, n),
        };
        let size = usize::try_from(size).ok()?;
        if size < header || size > data.len() {
            return None;
        }
        let payload = &data[header..size];
        data = &data[size..];
        Some((kind, payload))
    })
}

/// The payload of the item property container (`meta` → `iprp` → `ipco`), whose children
/// describe every image of the file (`ispe` sizes, `hvcC` decoder configurations, `irot`, …);
/// `None` when the boxes are missing or malformed. Reads only, allocates nothing.
fn ipco(bytes: &[u8]) -> Option<&[u8]> {
    fn child<'a>(data: &'a [u8], kind: &[u8; 4]) -> Option<&'a [u8]> {
        boxes(data).find(|(k, _)| k == kind).map(|b| b.1)
    }
    // `meta` is a full box: 4 bytes of version and flags before its children.
    let meta = child(bytes, b"meta")?.get(4..)?;
    child(child(meta, b"iprp")?, b"ipco")
}

/// The largest `ispe` (image spatial extents) declared anywhere in the file, as
/// `(width, height)`: the size libheif refused to even describe when it answers with a
/// security-limit error.
fn largest_ispe(bytes: &[u8]) -> Option<(u32, u32)> {
    boxes(ipco(bytes)?)
        .filter(|(k, _)| k == b"ispe")
        .filter_map(|(_, p)| {
            // Full box (4 bytes), then 32-bit width and height.
            let w = u32::from_be_bytes(p.get(4..8)?.try_into().ok()?);
            let h = u32::from_be_bytes(p.get(8..12)?.try_into().ok()?);
            Some((w, h))
        })
        .max_by_key(|(w, h)| u64::from(*w) * u64::from(*h))
}

fn over_limits(width: u32, height: u32, limits: &ImageLimits) -> bool {
    width > limits.max_side
        || height > limits.max_side
        || u64::from(width) * u64::from(height) > limits.max_pixels
}

fn too_many(width: u32, height: u32, limits: &ImageLimits) -> PreprocessError {
    PreprocessError::TooManyPixels {
        width,
        height,
        max_pixels: limits.max_pixels,
        max_side: limits.max_side,
    }
}

fn libheif() -> &'static LibHeif {
    static LIB: OnceLock<LibHeif> = OnceLock::new();
    LIB.get_or_init(LibHeif::new)
}

/// Steps 1-2 for a file [`sniff`] called [`Sniffed::Heif`]: the primary image, upright
/// (libheif's transformations), 8-bit RGB, alpha dropped. `bytes` is within
/// `limits.max_bytes` (checked by the caller).
pub(crate) fn decode(bytes: &[u8], limits: &ImageLimits) -> Result<DecodedImage, PreprocessError> {
    // Reading parses the boxes only (no HEVC data is decoded). libheif refuses sizes over its
    // own security limits here; the file's `ispe` then tells whether ours explain it.
    let mut ctx = HeifContext::read_from_bytes(bytes).map_err(|e| {
        if matches!(e.sub_code, HeifErrorSubCode::SecurityLimitExceeded) {
            if let Some((w, h)) = largest_ispe(bytes).filter(|(w, h)| over_limits(*w, *h, limits)) {
                return too_many(w, h, limits);
            }
        }
        PreprocessError::Undecodable(format!("HEIF: {}", e.message))
    })?;
    ctx.set_max_decoding_threads(1);
    let handle = ctx
        .primary_image_handle()
        .map_err(|e| PreprocessError::Undecodable(format!("HEIF: {}", e.message)))?;
    // `ispe` as stored, and the size after `irot` / `clap`: the decoder allocates the first, the
    // caller gets the second. A crop (`clap`) can make the second small while the first is huge.
    let (width, height) = (handle.width(), handle.height());
    let stored = (
        u32::try_from(handle.ispe_width()).unwrap_or(0),
        u32::try_from(handle.ispe_height()).unwrap_or(0),
    );
    if over_limits(width, height, limits) {
        return Err(too_many(width, height, limits));
    }
    if over_limits(stored.0, stored.1, limits) {
        return Err(too_many(stored.0, stored.1, limits));
    }
    if width == 0 || height == 0 {
        return Err(PreprocessError::Undecodable("image has no pixels".into()));
    }
    // RGB from libheif's own conversion, identical to the pinned pillow-heif's
    // (tests/fixtures/heic/heic_parity.py checks it on a sweep of files).
    // Options are never passed: libheif-rs 0.20's `decode` frees them before libheif reads them
    // (a use-after-free that showed as the clean aperture being ignored). The defaults are what
    // the pipeline uses anyway; 10- and 12-bit photos (HDR iPhone ones) come out as 8-bit RGB.
    let image = libheif()
        .decode(&handle, ColorSpace::Rgb(RgbChroma::Rgb), None)
        .map_err(|e| PreprocessError::Undecodable(format!("HEIF: {}", e.message)))?;
    let pixels = interleaved_rgb(&image, width, height)?;
    Ok(DecodedImage {
        image: RgbImage::from_raw(width, height, pixels)
            .expect("width*height*3 bytes copied; this is a bug"),
        source_size: (width, height),
        format: "heic",
    })
}

/// Copies libheif's interleaved 8-bit RGB plane (rows `stride` bytes apart) into packed RGB.
fn interleaved_rgb(
    image: &libheif_rs::Image,
    width: u32,
    height: u32,
) -> Result<Vec<u8>, PreprocessError> {
    let planes = image.planes();
    let plane = planes
        .interleaved
        .ok_or_else(|| PreprocessError::Undecodable("HEIF: libheif gave no RGB plane".into()))?;
    if (plane.width, plane.height) != (width, height) || plane.bits_per_pixel != 8 {
        return Err(PreprocessError::Undecodable(format!(
            "HEIF: decoded {}x{} at {} bits, the header says {width}x{height}",
            plane.width, plane.height, plane.bits_per_pixel
        )));
    }
    let row = width as usize * 3;
    let mut pixels = Vec::with_capacity(row * height as usize);
    for y in 0..height as usize {
        let start = y * plane.stride;
        let line = plane
            .data
            .get(start..start + row)
            .ok_or_else(|| PreprocessError::Undecodable("HEIF: short RGB plane".into()))?;
        pixels.extend_from_slice(line);
    }
    Ok(pixels)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preprocess::decode as decode_any;

    /// `tests/fixtures/heic/NAME` (made by `make_heic_fixtures.py` there).
    fn fixture(name: &str) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/heic")
            .join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// Mean of the 8-bit samples of a `w × h` block at `(x, y)`, per channel.
    fn block_mean(img: &RgbImage, x: u32, y: u32, w: u32, h: u32) -> [f64; 3] {
        let mut sum = [0.0; 3];
        for yy in y..y + h {
            for xx in x..x + w {
                let p = img.get_pixel(xx, yy).0;
                for c in 0..3 {
                    sum[c] += f64::from(p[c]);
                }
            }
        }
        sum.map(|v| v / f64::from(w * h))
    }

    #[test]
    fn decodes_a_heic_upright_with_its_corners_in_place() {
        let d = decode_any(&fixture("small.heic"), &ImageLimits::default()).unwrap();
        assert_eq!(
            (d.format, d.image.dimensions(), d.source_size),
            ("heic", (64, 48), (64, 48))
        );
        // Red block top left, blue bottom right (make_heic_fixtures.py::small_picture).
        let red = block_mean(&d.image, 2, 2, 12, 8);
        let blue = block_mean(&d.image, 50, 38, 12, 8);
        assert!(red[0] > 180.0 && red[2] < 70.0, "top left {red:?}");
        assert!(blue[2] > 180.0 && blue[0] < 70.0, "bottom right {blue:?}");
    }

    #[test]
    fn irot_makes_it_upright_and_the_exif_tag_is_not_applied_again() {
        // Stored 48x64 with irot (270° anticlockwise) and an EXIF orientation of 6: libheif's
        // rotation alone gives the upright 64x48 picture; applying the tag too would turn it
        // sideways again (as pillow-heif, which resets the tag, never does).
        let plain = decode_any(&fixture("small.heic"), &ImageLimits::default()).unwrap();
        let rot = decode_any(&fixture("small_rot.heic"), &ImageLimits::default()).unwrap();
        assert_eq!(
            (rot.image.dimensions(), rot.source_size),
            ((64, 48), (64, 48))
        );
        let diff: f64 = plain
            .image
            .as_raw()
            .iter()
            .zip(rot.image.as_raw())
            .map(|(a, b)| f64::from(a.abs_diff(*b)))
            .sum::<f64>()
            / plain.image.as_raw().len() as f64;
        // Only the lossy re-encoding of the rotated pixels differs.
        assert!(diff < 4.0, "mean abs diff {diff}");
    }

    #[test]
    fn refuses_a_heic_bomb_from_its_ispe() {
        // A 64x48 picture whose ispe says 20000x20000: libheif reads it (its own limit is 32768
        // a side) and reports the 64x48 clean aperture, but decoding would allocate the ispe.
        let err =
            decode_any(&fixture("bomb_ispe_20000.heic"), &ImageLimits::default()).unwrap_err();
        assert!(
            matches!(
                err,
                PreprocessError::TooManyPixels {
                    width: 20_000,
                    height: 20_000,
                    ..
                }
            ),
            "{err:?}"
        );
        // Over libheif's limit too: it refuses to read the file, the ispe names the size.
        let err =
            decode_any(&fixture("bomb_ispe_65535.heic"), &ImageLimits::default()).unwrap_err();
        assert!(
            matches!(
                err,
                PreprocessError::TooManyPixels {
                    width: 65_535,
                    height: 65_535,
                    ..
                }
            ),
            "{err:?}"
        );
        // The limits apply to ordinary files as to other formats.
        let tight = ImageLimits {
            max_pixels: 1000,
            ..ImageLimits::default()
        };
        assert!(matches!(
            decode_any(&fixture("small.heic"), &tight),
            Err(PreprocessError::TooManyPixels { .. })
        ));
    }

    #[test]
    fn a_truncated_or_corrupt_heic_is_undecodable() {
        let bytes = fixture("small.heic");
        for cut in [40, bytes.len() / 2, bytes.len() - 10] {
            let err = decode_any(&bytes[..cut], &ImageLimits::default()).unwrap_err();
            assert!(
                matches!(err, PreprocessError::Undecodable(_)),
                "cut at {cut}: {err:?}"
            );
        }
        // The coded picture overwritten with noise: libheif or libde265 refuses it, no panic.
        let mut noisy = bytes.clone();
        let n = noisy.len();
        for (i, b) in noisy[n - 200..].iter_mut().enumerate() {
            *b = (i * 37 % 251) as u8;
        }
        match decode_any(&noisy, &ImageLimits::default()) {
            Ok(d) => assert_eq!(d.image.dimensions(), (64, 48)),
            Err(e) => assert!(matches!(e, PreprocessError::Undecodable(_)), "{e:?}"),
        }
    }

    fn ftyp_box(major: &[u8; 4], compatible: &[&[u8; 4]]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&((16 + 4 * compatible.len()) as u32).to_be_bytes());
        b.extend_from_slice(b"ftyp");
        b.extend_from_slice(major);
        b.extend_from_slice(&[0; 4]);
        for c in compatible {
            b.extend_from_slice(*c);
        }
        b
    }

    #[test]
    fn sniffs_heif_brands_and_tells_avif_apart() {
        for major in [b"heic", b"heix", b"mif1", b"msf1", b"hevc"] {
            assert_eq!(sniff(&ftyp_box(major, &[b"mif1"])), Sniffed::Heif);
        }
        // A generic major brand with HEIC among the compatible ones (some cameras).
        assert_eq!(
            sniff(&ftyp_box(b"isom", &[b"mif1", b"heic"])),
            Sniffed::Heif
        );
        // AVIF lists mif1 too: its major brand decides.
        assert_eq!(
            sniff(&ftyp_box(b"avif", &[b"mif1", b"miaf"])),
            Sniffed::Avif
        );
        assert_eq!(sniff(&ftyp_box(b"isom", &[b"avif"])), Sniffed::Avif);
        // An MP4 video, a box that claims more than the file, and other formats.
        assert_eq!(sniff(&ftyp_box(b"isom", &[b"mp41"])), Sniffed::Other);
        let mut short = ftyp_box(b"heic", &[]);
        short[3] = 200;
        assert_eq!(sniff(&short), Sniffed::Other);
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n"), Sniffed::Other);
        assert_eq!(sniff(b""), Sniffed::Other);
    }

    #[test]
    fn finds_the_largest_ispe() {
        let full = |kind: &[u8; 4], payload: &[u8]| {
            let mut b = ((8 + payload.len()) as u32).to_be_bytes().to_vec();
            b.extend_from_slice(kind);
            b.extend_from_slice(payload);
            b
        };
        let ispe = |w: u32, h: u32| {
            let mut p = vec![0; 4];
            p.extend_from_slice(&w.to_be_bytes());
            p.extend_from_slice(&h.to_be_bytes());
            full(b"ispe", &p)
        };
        let mut ipco_payload = ispe(64, 48);
        ipco_payload.extend(ispe(40_000, 30_000));
        let ipco = full(b"ipco", &ipco_payload);
        let iprp = full(b"iprp", &ipco);
        let mut meta_payload = vec![0; 4];
        meta_payload.extend(full(b"hdlr", &[0; 20]));
        meta_payload.extend(iprp);
        let mut file = ftyp_box(b"heic", &[b"mif1"]);
        file.extend(full(b"meta", &meta_payload));
        assert_eq!(largest_ispe(&file), Some((40_000, 30_000)));
        // Truncated inside the meta box: nothing, no panic.
        assert_eq!(largest_ispe(&file[..file.len() - 5]), None);
        assert_eq!(largest_ispe(b"garbage"), None);
    }
}
