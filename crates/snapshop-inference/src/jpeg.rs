//! JPEG pixels from libjpeg-turbo, the decoder Pillow uses.
//!
//! It exists because decoders legitimately differ: `image`'s pure-Rust decoder (zune-jpeg)
//! upsamples chroma differently from libjpeg-turbo, leaving 11-15% of the pixels of a 4:2:0
//! JPEG off by up to 4 levels, which moved user embeddings by 3e-3, three times the golden
//! tolerance. The system libjpeg-turbo (2.1 on Debian 13) gives Pillow's pixels exactly. This
//! module only decodes pixels; headers, limits and EXIF stay with `preprocess.rs`, and it must
//! never be called before the dimensions have been checked against the limits.

use std::ffi::{c_char, c_int, c_uchar, c_uint, c_ulong, CStr};

extern "C" {
    fn snapshop_jpeg_decode(
        data: *const c_uchar,
        len: c_ulong,
        out: *mut c_uchar,
        out_len: c_ulong,
        expect_w: c_uint,
        expect_h: c_uint,
        scale_denom: c_uint,
        want_cmyk: c_int,
        out_w: *mut c_uint,
        out_h: *mut c_uint,
        msg: *mut c_char,
        msg_len: c_ulong,
    ) -> c_int;
}

/// Why libjpeg gave no pixels.
#[derive(Debug)]
pub(crate) enum JpegError {
    /// libjpeg refused the data (its message).
    Corrupt(String),
    /// Asked for RGB from a CMYK / YCCK file, or for CMYK from any other file.
    ColorSpace,
    /// The header disagrees with the dimensions read earlier.
    Dimensions,
}

/// Pixels libjpeg decoded: `width × height`, packed, 3 (RGB) or 4 (CMYK) bytes a pixel.
#[derive(Debug)]
pub(crate) struct Decoded {
    pub pixels: Vec<u8>,
    pub width: u32,
    pub height: u32,
}

/// The DCT scale denominator Pillow's `JpegImageFile.draft(mode, requested)` picks for a stored
/// `width × height` JPEG: the largest `s` in {8, 4, 2, 1} with
/// `s <= min(width / req_w, height / req_h)` (integer division), so that the scaled image,
/// `ceil(width / s) × ceil(height / s)`, is still at least the requested size. 1 when the image
/// is smaller than requested.
pub(crate) fn draft_scale(width: u32, height: u32, requested: (u32, u32)) -> u32 {
    let (rw, rh) = requested;
    if rw == 0 || rh == 0 {
        return 1;
    }
    let scale = (width / rw).min(height / rh);
    [8, 4, 2, 1].into_iter().find(|s| scale >= *s).unwrap_or(1)
}

/// Decodes `data` (a JPEG of `width × height`, already checked against the limits) into packed
/// RGB8, scaled by 1/`scale` (1, 2, 4 or 8; see [`draft_scale`]).
pub(crate) fn decode_rgb(
    data: &[u8],
    width: u32,
    height: u32,
    scale: u32,
) -> Result<Decoded, JpegError> {
    decode(data, width, height, scale, false)
}

/// Decodes a CMYK / YCCK JPEG into its raw CMYK samples (4 bytes a pixel, as libjpeg returns
/// them: Adobe files store them inverted), scaled by 1/`scale`.
pub(crate) fn decode_cmyk(
    data: &[u8],
    width: u32,
    height: u32,
    scale: u32,
) -> Result<Decoded, JpegError> {
    decode(data, width, height, scale, true)
}

fn decode(
    data: &[u8],
    width: u32,
    height: u32,
    scale: u32,
    cmyk: bool,
) -> Result<Decoded, JpegError> {
    if ![1, 2, 4, 8].contains(&scale) {
        return Err(JpegError::Dimensions);
    }
    let channels = if cmyk { 4 } else { 3 };
    let (out_w, out_h) = (width.div_ceil(scale), height.div_ceil(scale));
    let len = out_w as usize * out_h as usize * channels;
    let mut out = vec![0u8; len];
    let mut msg = [0 as c_char; 200];
    let (mut got_w, mut got_h): (c_uint, c_uint) = (0, 0);
    // SAFETY: every pointer is valid for the length passed with it; the shim writes at most
    // `out_len` bytes into `out` (it checks the output size against it before decoding), one
    // value into each of `got_w` / `got_h`, and a NUL-terminated string of at most `msg_len`
    // bytes into `msg`; it keeps no pointer after returning and never unwinds (libjpeg's
    // longjmp stays inside the C function).
    let rc = unsafe {
        snapshop_jpeg_decode(
            data.as_ptr(),
            data.len() as c_ulong,
            out.as_mut_ptr(),
            len as c_ulong,
            width,
            height,
            scale,
            c_int::from(cmyk),
            &mut got_w,
            &mut got_h,
            msg.as_mut_ptr(),
            msg.len() as c_ulong,
        )
    };
    match rc {
        0 if (got_w, got_h) == (out_w, out_h) => Ok(Decoded {
            pixels: out,
            width: out_w,
            height: out_h,
        }),
        0 | 2 => Err(JpegError::Dimensions),
        3 => Err(JpegError::ColorSpace),
        _ => {
            // SAFETY: the shim NUL-terminates `msg` on error (and it starts zeroed).
            let text = unsafe { CStr::from_ptr(msg.as_ptr()) };
            Err(JpegError::Corrupt(text.to_string_lossy().into_owned()))
        }
    }
}

/// Pillow's conversion of a CMYK JPEG to RGB: the decoder reads the samples as Adobe-inverted
/// (`rawmode "CMYK;I"`, `v = 255 - raw`, whatever the file says), then `convert("RGB")` computes
/// `255 - k - c * (255 - k) / 255` per channel with its rounded `MULDIV255`.
pub(crate) fn cmyk_to_rgb_like_pillow(cmyk: &[u8]) -> Vec<u8> {
    let muldiv255 = |a: i32, b: i32| {
        let t = a * b + 128;
        ((t >> 8) + t) >> 8
    };
    let mut out = Vec::with_capacity(cmyk.len() / 4 * 3);
    for px in cmyk.chunks_exact(4) {
        let [c, m, y, k] = [px[0], px[1], px[2], px[3]].map(|v| 255 - i32::from(v));
        let nk = 255 - k;
        for v in [c, m, y] {
            out.push((nk - muldiv255(v, nk)).clamp(0, 255) as u8);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jpeg(width: u32, height: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([
                (x * 7 % 256) as u8,
                (y * 5 % 256) as u8,
                ((x + y) % 256) as u8,
            ])
        });
        let mut bytes = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 90)
            .encode_image(&img)
            .expect("encoding a small RGB image cannot fail");
        bytes
    }

    #[test]
    fn decodes_a_whole_jpeg() {
        let bytes = jpeg(40, 30);
        let d = decode_rgb(&bytes, 40, 30, 1).unwrap();
        assert_eq!((d.width, d.height, d.pixels.len()), (40, 30, 40 * 30 * 3));
    }

    #[test]
    fn decodes_at_a_dct_scale_rounding_up() {
        let bytes = jpeg(41, 30);
        for (scale, w, h) in [(2, 21, 15), (4, 11, 8), (8, 6, 4)] {
            let d = decode_rgb(&bytes, 41, 30, scale).unwrap();
            assert_eq!(
                (d.width, d.height, d.pixels.len()),
                (w, h, w as usize * h as usize * 3)
            );
        }
        assert!(matches!(
            decode_rgb(&bytes, 41, 30, 3),
            Err(JpegError::Dimensions)
        ));
        assert!(matches!(
            decode_cmyk(&bytes, 41, 30, 1),
            Err(JpegError::ColorSpace)
        ));
    }

    #[test]
    fn draft_scale_follows_pillow() {
        // Pillow: scale = min(w // rw, h // rh), then the largest of 8, 4, 2, 1 not above it.
        assert_eq!(draft_scale(4000, 3000, (192, 192)), 8);
        assert_eq!(draft_scale(1535, 1535, (192, 192)), 4);
        assert_eq!(draft_scale(1536, 1536, (192, 192)), 8);
        assert_eq!(draft_scale(4000, 383, (192, 192)), 1);
        assert_eq!(draft_scale(4000, 384, (192, 192)), 2);
        assert_eq!(draft_scale(100, 100, (192, 192)), 1);
        assert_eq!(draft_scale(800, 600, (192, 192)), 2);
        assert_eq!(draft_scale(800, 600, (0, 192)), 1);
    }

    #[test]
    fn refuses_a_truncated_jpeg_as_pillow_does() {
        let bytes = jpeg(64, 48);
        match decode_rgb(&bytes[..bytes.len() / 2], 64, 48, 1) {
            Err(JpegError::Corrupt(msg)) => assert!(msg.contains("truncated"), "{msg}"),
            other => panic!("expected a truncation error, got {other:?}"),
        }
    }
}
