//! Image file → normalised `[3, H, W]` tensor, exactly as `models/BUNDLE.md` prescribes.
//!
//! JPEG pixels come from libjpeg-turbo (`jpeg.rs`), HEIC/HEIF from libheif (`heic.rs`) and
//! resizing from an exact port of Pillow's (`pillow.rs`); headers, EXIF, PNG and WebP from the
//! `image` crate.
//!
//! It exists because the embeddings are only comparable with the ones the Python pipeline
//! produced if every pixel goes through the same steps: decode, EXIF orientation, Pillow-style
//! `convert("RGB")`, Pillow-exact bilinear resize, per-channel normalisation. Decoding is
//! guarded: size limits are checked from the file header before any pixel buffer is allocated.
//! This module is synchronous and CPU-heavy (callers run it in `spawn_blocking`); it must never
//! block on I/O, touch the runtime, or change a step without the bundle contract changing first.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, RgbImage};
use ndarray::Array3;

use crate::bundle::{Manifest, KNOWN_RESIZE_METHODS};
use crate::InferenceError;

/// Limits on untrusted uploads, checked before decoding.
#[derive(Clone, Copy, Debug)]
pub struct ImageLimits {
    /// Largest accepted file, in bytes.
    pub max_bytes: usize,
    /// Largest accepted `width * height` of the decoded image.
    pub max_pixels: u64,
    /// Largest accepted width or height.
    pub max_side: u32,
}

impl Default for ImageLimits {
    /// 25 MiB, 50 megapixels, 12000 pixels a side.
    fn default() -> Self {
        ImageLimits {
            max_bytes: 25 * 1024 * 1024,
            max_pixels: 50_000_000,
            max_side: 12_000,
        }
    }
}

/// Why an upload could not be turned into a tensor. All variants are the client's fault (4xx).
#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    /// The file is larger than `ImageLimits::max_bytes`.
    #[error("image file is {bytes} bytes, the limit is {max_bytes}")]
    TooLarge {
        /// Size of the upload.
        bytes: usize,
        /// The limit.
        max_bytes: usize,
    },
    /// The header announces more pixels, or a longer side, than the limits allow.
    #[error(
        "image is {width}x{height} pixels, the limits are {max_pixels} pixels and {max_side} a side"
    )]
    TooManyPixels {
        /// Width from the header.
        width: u32,
        /// Height from the header.
        height: u32,
        /// `ImageLimits::max_pixels`.
        max_pixels: u64,
        /// `ImageLimits::max_side`.
        max_side: u32,
    },
    /// Not a JPEG, PNG, WebP or HEIC/HEIF file.
    #[error("unsupported image format: {0} (JPEG, PNG, WebP and HEIC/HEIF are accepted)")]
    UnsupportedFormat(String),
    /// The file claims a supported format but cannot be decoded.
    #[error("cannot decode image: {0}")]
    Undecodable(String),
}

/// A decoded, upright, 8-bit RGB image (steps 1-2 of the contract).
#[derive(Debug)]
pub struct DecodedImage {
    /// The pixels, EXIF orientation applied; smaller than `source_size` when a JPEG was decoded
    /// at a DCT scale (`preprocess.jpeg_draft`).
    pub image: RgbImage,
    /// `(width, height)` of the upright image the file holds (EXIF orientation, or for HEIC
    /// the `irot`/`imir`/`clap` transformations, applied), before any DCT scaling.
    pub source_size: (u32, u32),
    /// `"jpeg"`, `"png"`, `"webp"` or `"heic"` (any HEVC-coded HEIF file).
    pub format: &'static str,
}

/// The model input for one image.
#[derive(Debug)]
pub struct PreparedImage {
    /// `[3, H, W]`, normalised, channel order RGB.
    pub tensor: Array3<f32>,
    /// Width of the upright source image (after EXIF orientation).
    pub width: u32,
    /// Height of the upright source image (after EXIF orientation).
    pub height: u32,
    /// `"jpeg"`, `"png"`, `"webp"` or `"heic"`.
    pub format: &'static str,
}

/// Turns image files into model inputs, configured from the manifest.
#[derive(Clone, Debug)]
pub struct Preprocessor {
    width: u32,
    height: u32,
    /// `preprocess.jpeg_draft`: decode JPEGs at Pillow's `draft()` DCT scale for
    /// `jpeg_draft_factor × (W × H)`.
    jpeg_draft: bool,
    jpeg_draft_factor: u32,
    /// `lut[c][v]` = `(v / (1/scale) - mean[c]) / std[c]`: 768 values replace per-pixel arithmetic
    /// and make the result independent of evaluation order.
    lut: Box<[[f32; 256]; 3]>,
}

impl Preprocessor {
    /// Builds the preprocessor for a validated manifest; refuses a resize method it does not
    /// implement.
    pub fn new(manifest: &Manifest) -> Result<Self, InferenceError> {
        let p = &manifest.preprocess;
        if !KNOWN_RESIZE_METHODS.contains(&p.resize.method.as_str()) || p.resize.keep_aspect {
            return Err(InferenceError::Bundle(format!(
                "preprocess.resize {:?} (keep_aspect {}) is not implemented",
                p.resize.method, p.resize.keep_aspect
            )));
        }
        if p.mean.len() != 3 || p.std.len() != 3 || p.std.iter().any(|s| *s <= 0.0) {
            return Err(InferenceError::Bundle(
                "preprocess.mean/std must have 3 values, std positive".into(),
            ));
        }
        let width = u32::try_from(p.resize.width)
            .map_err(|_| InferenceError::Bundle("preprocess.resize.width too large".into()))?;
        let height = u32::try_from(p.resize.height)
            .map_err(|_| InferenceError::Bundle("preprocess.resize.height too large".into()))?;
        if width == 0 || height == 0 {
            return Err(InferenceError::Bundle(
                "preprocess.resize size must be positive".into(),
            ));
        }
        // float32 throughout and in the pipeline's order (`preprocess.py::to_tensor`:
        // `v / 255` then `(x - mean) / std`), so that the values match it to the last bit.
        // Dividing by 1/scale (255) rather than multiplying by scale matters: 1/255 is not
        // exact in f32 and the product differs from the quotient by an ulp for some values.
        let divisor = (1.0 / p.scale) as f32;
        let mut lut = Box::new([[0.0f32; 256]; 3]);
        for (c, table) in lut.iter_mut().enumerate() {
            let mean = p.mean[c] as f32;
            let std = p.std[c] as f32;
            for (v, out) in table.iter_mut().enumerate() {
                *out = (v as f32 / divisor - mean) / std;
            }
        }
        Ok(Preprocessor {
            width,
            height,
            jpeg_draft: p.jpeg_draft,
            jpeg_draft_factor: p.jpeg_draft_factor.clamp(1, 8),
            lut,
        })
    }

    /// `(width, height)` of the tensor images.
    pub fn output_size(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    /// Whether JPEGs are decoded at a DCT scale (`preprocess.jpeg_draft`).
    pub fn jpeg_draft(&self) -> bool {
        self.jpeg_draft
    }

    /// The size the draft is asked for: `preprocess.jpeg_draft_factor` times the output size.
    pub fn draft_size(&self) -> (u32, u32) {
        (
            self.width.saturating_mul(self.jpeg_draft_factor),
            self.height.saturating_mul(self.jpeg_draft_factor),
        )
    }

    /// Steps 1-2 as this bundle prescribes them: [`decode_with`], with the draft size when the
    /// manifest sets `preprocess.jpeg_draft`.
    pub fn decode(
        &self,
        bytes: &[u8],
        limits: &ImageLimits,
    ) -> Result<DecodedImage, PreprocessError> {
        let draft = self.jpeg_draft.then(|| self.draft_size());
        decode_with(bytes, limits, draft)
    }

    /// Decodes, resizes and normalises one uploaded file.
    pub fn prepare(
        &self,
        bytes: &[u8],
        limits: &ImageLimits,
    ) -> Result<PreparedImage, PreprocessError> {
        let decoded = self.decode(bytes, limits)?;
        let (width, height) = decoded.source_size;
        let resized = self.resize(&decoded.image)?;
        Ok(PreparedImage {
            tensor: self.to_tensor(&resized),
            width,
            height,
            format: decoded.format,
        })
    }

    /// Step 3: resizes to the model's `W × H`, ignoring the aspect ratio, bit-exactly as
    /// Pillow's `resize(BILINEAR)` (see `pillow.rs` for why not `fast_image_resize`).
    pub fn resize(&self, image: &RgbImage) -> Result<RgbImage, PreprocessError> {
        let (w, h) = image.dimensions();
        if w == 0 || h == 0 {
            return Err(PreprocessError::Undecodable("image has no pixels".into()));
        }
        let out = crate::pillow::resize_rgb8(
            image.as_raw(),
            w as usize,
            h as usize,
            self.width as usize,
            self.height as usize,
        );
        Ok(RgbImage::from_raw(self.width, self.height, out)
            .expect("resize_rgb8 returns out_w*out_h*3 bytes; this is a bug"))
    }

    /// Step 4: `(v * scale - mean) / std` per channel (computed as `v / (1/scale)`, like the
    /// pipeline), laid out as `[3, H, W]`.
    ///
    /// # Panics
    /// If `image` is not `W × H` (a caller bug: use [`Preprocessor::resize`] first).
    pub fn to_tensor(&self, image: &RgbImage) -> Array3<f32> {
        assert_eq!(
            image.dimensions(),
            (self.width, self.height),
            "to_tensor needs a resized image; this is a bug"
        );
        let plane = (self.width * self.height) as usize;
        let mut data = vec![0.0f32; 3 * plane];
        let (r, rest) = data.split_at_mut(plane);
        let (g, b) = rest.split_at_mut(plane);
        for (i, px) in image.as_raw().chunks_exact(3).enumerate() {
            r[i] = self.lut[0][px[0] as usize];
            g[i] = self.lut[1][px[1] as usize];
            b[i] = self.lut[2][px[2] as usize];
        }
        Array3::from_shape_vec((3, self.height as usize, self.width as usize), data)
            .expect("tensor buffer has 3*H*W values; this is a bug")
    }
}

/// Whether `bytes` start like a HEIC/HEIF file this crate decodes: an `ftyp` box with a HEIF
/// brand (`heic`, `heix`, `mif1`, `msf1`, `hevc`, …) and not an AVIF major brand. For callers
/// that sniff formats before decoding (the service's 415/422 split).
pub fn is_heif(bytes: &[u8]) -> bool {
    crate::heic::sniff(bytes) == crate::heic::Sniffed::Heif
}

/// Steps 1-2: decodes a JPEG, PNG, WebP or HEIC file into upright 8-bit RGB at its full size,
/// refusing files over the limits before their pixels are decoded (a bundle without
/// `preprocess.jpeg_draft`).
pub fn decode(bytes: &[u8], limits: &ImageLimits) -> Result<DecodedImage, PreprocessError> {
    decode_with(bytes, limits, None)
}

/// Steps 1-2 with `draft`: the upright `(width, height)` the image is about to be resized to,
/// when the bundle sets `preprocess.jpeg_draft` (BUNDLE.md step 1b). A JPEG is then decoded
/// with libjpeg's DCT scaling at the scale Pillow's `Image.draft("RGB", size)` picks
/// ([`crate::jpeg::draft_scale`]), where `size` is `draft` in the stored orientation (swapped
/// when the EXIF orientation transposes the image), as `models/snapshop_ml/preprocess.py`
/// asks for it. PNG, WebP and HEIC are unaffected. The limits are checked against the full size.
///
/// HEIC/HEIF (sniffed from the `ftyp` brands) goes to libheif (`heic.rs`): its `irot`/`imir`
/// transformations make it upright and its EXIF orientation tag is ignored, as pillow-heif does
/// (it resets the tag to 1 when it opens the file, so `ImageOps.exif_transpose` leaves it).
pub fn decode_with(
    bytes: &[u8],
    limits: &ImageLimits,
    draft: Option<(u32, u32)>,
) -> Result<DecodedImage, PreprocessError> {
    if bytes.len() > limits.max_bytes {
        return Err(PreprocessError::TooLarge {
            bytes: bytes.len(),
            max_bytes: limits.max_bytes,
        });
    }
    if bytes.is_empty() {
        return Err(PreprocessError::Undecodable("empty file".into()));
    }
    if is_heif(bytes) {
        return crate::heic::decode(bytes, limits);
    }
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| PreprocessError::Undecodable(e.to_string()))?;
    let format = match reader.format() {
        Some(ImageFormat::Jpeg) => "jpeg",
        Some(ImageFormat::Png) => "png",
        Some(ImageFormat::WebP) => "webp",
        Some(other) => {
            return Err(PreprocessError::UnsupportedFormat(
                other
                    .extensions_str()
                    .first()
                    .copied()
                    .unwrap_or("unknown")
                    .to_string(),
            ))
        }
        None => return Err(PreprocessError::UnsupportedFormat("unknown".into())),
    };
    // Building the decoder parses only the header; the dimensions are checked here, before any
    // pixel buffer exists, so a small file announcing a huge image (a decompression bomb) costs
    // nothing.
    let mut decoder = reader.into_decoder().map_err(image_error)?;
    let (width, height) = decoder.dimensions();
    let pixels = u64::from(width) * u64::from(height);
    if width > limits.max_side || height > limits.max_side || pixels > limits.max_pixels {
        return Err(PreprocessError::TooManyPixels {
            width,
            height,
            max_pixels: limits.max_pixels,
            max_side: limits.max_side,
        });
    }
    if pixels == 0 {
        return Err(PreprocessError::Undecodable("image has no pixels".into()));
    }
    // Belt and braces: decoders that honour limits enforce the same bound while decoding.
    let mut decoder_limits = image::Limits::default();
    decoder_limits.max_image_width = Some(limits.max_side);
    decoder_limits.max_image_height = Some(limits.max_side);
    decoder.set_limits(decoder_limits).map_err(image_error)?;
    // A corrupt EXIF block must not make the image unusable; Pillow's exif_transpose ignores it
    // too.
    let orientation = decoder.orientation().unwrap_or_else(|e| {
        tracing::debug!(error = %e, "ignoring unreadable EXIF orientation");
        image::metadata::Orientation::NoTransforms
    });
    use image::metadata::Orientation;
    let transposed = matches!(
        orientation,
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    );
    let source_size = if transposed {
        (height, width)
    } else {
        (width, height)
    };
    let mut image = match format {
        // Pillow's decoder, for Pillow's pixels (see jpeg.rs).
        "jpeg" => {
            // Pillow's draft works on the stored pixels: the request is in stored orientation.
            let scale = draft.map_or(1, |(w, h)| {
                let stored = if transposed { (h, w) } else { (w, h) };
                crate::jpeg::draft_scale(width, height, stored)
            });
            let jpeg_error = |e| match e {
                crate::jpeg::JpegError::Corrupt(m) => PreprocessError::Undecodable(m),
                crate::jpeg::JpegError::ColorSpace => {
                    PreprocessError::Undecodable("unsupported JPEG colour space".into())
                }
                crate::jpeg::JpegError::Dimensions => {
                    PreprocessError::Undecodable("JPEG frame size disagrees with its header".into())
                }
            };
            match crate::jpeg::decode_rgb(bytes, width, height, scale) {
                Ok(d) => DynamicImage::ImageRgb8(
                    RgbImage::from_raw(d.width, d.height, d.pixels)
                        .expect("decode_rgb returns width*height*3 bytes; this is a bug"),
                ),
                // libjpeg does not convert CMYK/YCCK to RGB: it gives the raw samples, and
                // Pillow's conversion is applied here (bit-exact; `image`'s own CMYK decode,
                // used before, was off by up to 4 levels).
                Err(crate::jpeg::JpegError::ColorSpace) => {
                    let d = crate::jpeg::decode_cmyk(bytes, width, height, scale)
                        .map_err(jpeg_error)?;
                    let rgb = crate::jpeg::cmyk_to_rgb_like_pillow(&d.pixels);
                    DynamicImage::ImageRgb8(
                        RgbImage::from_raw(d.width, d.height, rgb)
                            .expect("decode_cmyk returns width*height*4 bytes; this is a bug"),
                    )
                }
                Err(e) => return Err(jpeg_error(e)),
            }
        }
        _ => DynamicImage::from_decoder(decoder).map_err(image_error)?,
    };
    image.apply_orientation(orientation);
    Ok(DecodedImage {
        image: to_rgb8_like_pillow(image),
        source_size,
        format,
    })
}

fn image_error(e: image::ImageError) -> PreprocessError {
    match e {
        image::ImageError::Unsupported(u) => PreprocessError::UnsupportedFormat(u.to_string()),
        other => PreprocessError::Undecodable(other.to_string()),
    }
}

/// Pillow's `convert("RGB")`: alpha dropped without blending, grey replicated, 16-bit samples
/// reduced to their high byte (Pillow unpacks 16-bit PNGs with the `;16B` raw modes, which keep
/// the most significant byte). Written out rather than using `image`'s conversions, which may
/// round or apply colour-space transforms.
fn to_rgb8_like_pillow(image: DynamicImage) -> RgbImage {
    let (w, h) = (image.width(), image.height());
    let from_fn = |f: &dyn Fn(usize) -> [u8; 3], n: usize| {
        let mut out = Vec::with_capacity(n * 3);
        for i in 0..n {
            out.extend_from_slice(&f(i));
        }
        RgbImage::from_raw(w, h, out).expect("w*h*3 bytes; this is a bug")
    };
    let n = w as usize * h as usize;
    match image {
        DynamicImage::ImageRgb8(img) => img,
        DynamicImage::ImageRgba8(img) => {
            // In place (a large PNG with alpha is the common case): no second w*h*3 buffer.
            let mut s = img.into_raw();
            for i in 0..n {
                s.copy_within(4 * i..4 * i + 3, 3 * i);
            }
            s.truncate(3 * n);
            s.shrink_to_fit();
            RgbImage::from_raw(w, h, s).expect("w*h*3 bytes; this is a bug")
        }
        DynamicImage::ImageLuma8(img) => {
            let s = img.as_raw();
            from_fn(&|i| [s[i]; 3], n)
        }
        DynamicImage::ImageLumaA8(img) => {
            let s = img.as_raw();
            from_fn(&|i| [s[2 * i]; 3], n)
        }
        DynamicImage::ImageRgb16(img) => {
            let s = img.as_raw();
            from_fn(
                &|i| {
                    [
                        (s[3 * i] >> 8) as u8,
                        (s[3 * i + 1] >> 8) as u8,
                        (s[3 * i + 2] >> 8) as u8,
                    ]
                },
                n,
            )
        }
        DynamicImage::ImageRgba16(img) => {
            let s = img.as_raw();
            from_fn(
                &|i| {
                    [
                        (s[4 * i] >> 8) as u8,
                        (s[4 * i + 1] >> 8) as u8,
                        (s[4 * i + 2] >> 8) as u8,
                    ]
                },
                n,
            )
        }
        DynamicImage::ImageLuma16(img) => {
            let s = img.as_raw();
            from_fn(&|i| [(s[i] >> 8) as u8; 3], n)
        }
        DynamicImage::ImageLumaA16(img) => {
            let s = img.as_raw();
            from_fn(&|i| [(s[2 * i] >> 8) as u8; 3], n)
        }
        other => other.to_rgb8(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::tests::sample_manifest_json;
    use image::{ImageEncoder, Rgb, Rgba};

    fn manifest(width: usize, height: usize) -> Manifest {
        let mut v = sample_manifest_json();
        v["input"]["width"] = width.into();
        v["input"]["height"] = height.into();
        v["preprocess"]["resize"]["width"] = width.into();
        v["preprocess"]["resize"]["height"] = height.into();
        serde_json::from_value(v).unwrap()
    }

    fn png(img: &DynamicImage) -> Vec<u8> {
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
            .unwrap();
        out
    }

    fn jpeg(img: &RgbImage) -> Vec<u8> {
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 95)
            .write_image(
                img.as_raw(),
                img.width(),
                img.height(),
                image::ExtendedColorType::Rgb8,
            )
            .unwrap();
        out
    }

    /// Inserts an EXIF APP1 segment holding only the orientation tag right after SOI.
    fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
        assert_eq!(&jpeg[..2], &[0xFF, 0xD8]);
        let mut tiff = Vec::new();
        tiff.extend_from_slice(b"MM\0\x2A\0\0\0\x08"); // big-endian TIFF, IFD0 at offset 8
        tiff.extend_from_slice(&1u16.to_be_bytes()); // one entry
        tiff.extend_from_slice(&0x0112u16.to_be_bytes()); // Orientation
        tiff.extend_from_slice(&3u16.to_be_bytes()); // SHORT
        tiff.extend_from_slice(&1u32.to_be_bytes()); // count
        tiff.extend_from_slice(&orientation.to_be_bytes());
        tiff.extend_from_slice(&[0, 0]); // value padding
        tiff.extend_from_slice(&0u32.to_be_bytes()); // no next IFD
        let mut payload = b"Exif\0\0".to_vec();
        payload.extend_from_slice(&tiff);
        let mut out = jpeg[..2].to_vec();
        out.extend_from_slice(&[0xFF, 0xE1]);
        out.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
        out.extend_from_slice(&payload);
        out.extend_from_slice(&jpeg[2..]);
        out
    }

    #[test]
    fn normalisation_matches_formula_and_layout() {
        let p = Preprocessor::new(&manifest(2, 1)).unwrap();
        let img = RgbImage::from_raw(2, 1, vec![0, 128, 255, 10, 20, 30]).unwrap();
        let t = p.to_tensor(&img);
        assert_eq!(t.shape(), &[3, 1, 2]);
        let f = |v: f32, m: f32, s: f32| (v / 255.0f32 - m) / s;
        assert_eq!(t[[0, 0, 0]], f(0.0, 0.485, 0.229));
        assert_eq!(t[[1, 0, 0]], f(128.0, 0.456, 0.224));
        assert_eq!(t[[2, 0, 0]], f(255.0, 0.406, 0.225));
        assert_eq!(t[[0, 0, 1]], f(10.0, 0.485, 0.229));
        assert_eq!(t[[2, 0, 1]], f(30.0, 0.406, 0.225));
    }

    #[test]
    fn prepare_png_reports_size_and_format() {
        let img = RgbImage::from_fn(40, 30, |x, y| Rgb([x as u8 * 6, y as u8 * 8, 77]));
        let p = Preprocessor::new(&manifest(6, 8)).unwrap();
        let out = p
            .prepare(&png(&DynamicImage::ImageRgb8(img)), &ImageLimits::default())
            .unwrap();
        assert_eq!((out.width, out.height, out.format), (40, 30, "png"));
        assert_eq!(out.tensor.shape(), &[3, 8, 6]);
    }

    #[test]
    fn alpha_is_dropped_not_blended() {
        // Fully transparent pixels keep their colour, as with Pillow's convert("RGB").
        let img = image::RgbaImage::from_pixel(4, 4, Rgba([200, 100, 50, 0]));
        let d = decode(
            &png(&DynamicImage::ImageRgba8(img)),
            &ImageLimits::default(),
        )
        .unwrap();
        assert!(d.image.pixels().all(|p| p.0 == [200, 100, 50]));
    }

    #[test]
    fn grey_is_replicated_and_16_bit_keeps_high_byte() {
        let img = image::GrayImage::from_pixel(3, 3, image::Luma([90]));
        let d = decode(
            &png(&DynamicImage::ImageLuma8(img)),
            &ImageLimits::default(),
        )
        .unwrap();
        assert!(d.image.pixels().all(|p| p.0 == [90, 90, 90]));

        let img =
            image::ImageBuffer::<Rgb<u16>, _>::from_pixel(2, 2, Rgb([0x12ff, 0xab00, 0xffff]));
        let d = decode(
            &png(&DynamicImage::ImageRgb16(img)),
            &ImageLimits::default(),
        )
        .unwrap();
        assert!(d.image.pixels().all(|p| p.0 == [0x12, 0xab, 0xff]));
    }

    #[test]
    fn exif_orientation_6_rotates_clockwise() {
        // 16x8 landscape: left half red, right half blue. Orientation 6 means "rotate 90° CW to
        // display", giving an 8x16 portrait with red on top.
        let img = RgbImage::from_fn(16, 8, |x, _| {
            if x < 8 {
                Rgb([255, 0, 0])
            } else {
                Rgb([0, 0, 255])
            }
        });
        let bytes = with_exif_orientation(&jpeg(&img), 6);
        let d = decode(&bytes, &ImageLimits::default()).unwrap();
        assert_eq!(d.image.dimensions(), (8, 16));
        let top = d.image.get_pixel(4, 2).0;
        let bottom = d.image.get_pixel(4, 13).0;
        assert!(top[0] > 200 && top[2] < 60, "top {top:?}");
        assert!(bottom[2] > 200 && bottom[0] < 60, "bottom {bottom:?}");

        // Without the tag the image stays as stored.
        let d = decode(&jpeg(&img), &ImageLimits::default()).unwrap();
        assert_eq!(d.image.dimensions(), (16, 8));
    }

    #[test]
    fn refuses_large_files_before_decoding() {
        let limits = ImageLimits {
            max_bytes: 10,
            ..ImageLimits::default()
        };
        let err = decode(&[0u8; 11], &limits).unwrap_err();
        assert!(matches!(
            err,
            PreprocessError::TooLarge {
                bytes: 11,
                max_bytes: 10
            }
        ));
    }

    #[test]
    fn refuses_decompression_bomb_from_header() {
        // A valid PNG header announcing 20000x20000 followed by garbage: refused from the
        // header alone (the pixel data is never looked at).
        let mut bytes = png(&DynamicImage::ImageLuma8(image::GrayImage::new(1, 1)));
        // IHDR width/height are at offsets 16..24.
        bytes[16..20].copy_from_slice(&20_000u32.to_be_bytes());
        bytes[20..24].copy_from_slice(&20_000u32.to_be_bytes());
        // Fix the IHDR CRC so the header itself is valid.
        let crc = crc32(&bytes[12..29]);
        bytes[29..33].copy_from_slice(&crc.to_be_bytes());
        let err = decode(&bytes, &ImageLimits::default()).unwrap_err();
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

        let limits = ImageLimits {
            max_pixels: 100,
            ..ImageLimits::default()
        };
        let ok = png(&DynamicImage::ImageLuma8(image::GrayImage::new(20, 5)));
        let big = png(&DynamicImage::ImageLuma8(image::GrayImage::new(20, 6)));
        assert!(decode(&ok, &limits).is_ok());
        assert!(matches!(
            decode(&big, &limits),
            Err(PreprocessError::TooManyPixels { .. })
        ));
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn unsupported_and_garbage() {
        let limits = ImageLimits::default();
        assert!(matches!(
            decode(b"GIF89a\x01\x00\x01\x00\x00\x00\x00;", &limits),
            Err(PreprocessError::UnsupportedFormat(_))
        ));
        assert!(matches!(
            decode(b"hello, world", &limits),
            Err(PreprocessError::UnsupportedFormat(_))
        ));
        assert!(matches!(
            decode(&[0xFF, 0xD8, 0xFF, 0xE0, 1, 2, 3], &limits),
            Err(PreprocessError::Undecodable(_))
        ));
        assert!(matches!(
            decode(&[], &limits),
            Err(PreprocessError::Undecodable(_))
        ));
    }

    /// fast_image_resize's bilinear convolution against Pillow 13's `resize(BILINEAR)` on
    /// synthetic images with hard edges (fixtures from `tests/fixtures/make_pillow_fixtures.py`),
    /// downscaling, upscaling, one axis only, and vertical-pass-first. Bit-exact.
    #[test]
    fn resize_matches_pillow_bilinear() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        for src in ["down", "up"] {
            let bytes = std::fs::read(dir.join(format!("pillow_{src}_src.png"))).unwrap();
            let source = decode(&bytes, &ImageLimits::default()).unwrap().image;
            let (sw, sh) = (source.width() as usize, source.height() as usize);
            for (w, h) in [
                (224usize, 224usize),
                (61, 45),
                (sw, 120),
                (100, sh),
                (sw - 10, sh / 3),
            ] {
                let expected = image::open(dir.join(format!("pillow_{src}_{w}x{h}.png")))
                    .unwrap()
                    .to_rgb8();
                let got = Preprocessor::new(&manifest(w, h))
                    .unwrap()
                    .resize(&source)
                    .unwrap();
                let diffs: Vec<u8> = got
                    .as_raw()
                    .iter()
                    .zip(expected.as_raw())
                    .map(|(a, b)| a.abs_diff(*b))
                    .collect();
                let max_diff = diffs.iter().copied().max().unwrap();
                let differing = diffs.iter().filter(|d| **d != 0).count();
                assert_eq!(
                    (max_diff, differing),
                    (0, 0),
                    "{src} -> {w}x{h}: {differing} of {} bytes differ, by up to {max_diff}",
                    diffs.len()
                );
            }
        }
    }

    #[test]
    fn rejects_unknown_resize_method() {
        let mut m = manifest(6, 8);
        m.preprocess.resize.method = "nearest".into();
        assert!(Preprocessor::new(&m).is_err());
    }
}
