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
    fn snapshop_jpeg_decode_rgb(
        data: *const c_uchar,
        len: c_ulong,
        out: *mut c_uchar,
        out_len: c_ulong,
        expect_w: c_uint,
        expect_h: c_uint,
        msg: *mut c_char,
        msg_len: c_ulong,
    ) -> c_int;
}

/// Why libjpeg gave no pixels.
#[derive(Debug)]
pub(crate) enum JpegError {
    /// libjpeg refused the data (its message).
    Corrupt(String),
    /// CMYK / YCCK: libjpeg does not convert those to RGB; the caller falls back to `image`.
    ColorSpace,
    /// The header disagrees with the dimensions read earlier.
    Dimensions,
}

/// Decodes `data` (a JPEG of `width × height`, already checked against the limits) into packed
/// RGB8.
pub(crate) fn decode_rgb(data: &[u8], width: u32, height: u32) -> Result<Vec<u8>, JpegError> {
    let len = width as usize * height as usize * 3;
    let mut out = vec![0u8; len];
    let mut msg = [0 as c_char; 200];
    // SAFETY: every pointer is valid for the length passed with it; the shim writes at most
    // `out_len` bytes into `out` (it checks the header's size against it before decoding) and
    // a NUL-terminated string of at most `msg_len` bytes into `msg`; it keeps no pointer after
    // returning and never unwinds (libjpeg's longjmp stays inside the C function).
    let rc = unsafe {
        snapshop_jpeg_decode_rgb(
            data.as_ptr(),
            data.len() as c_ulong,
            out.as_mut_ptr(),
            len as c_ulong,
            width,
            height,
            msg.as_mut_ptr(),
            msg.len() as c_ulong,
        )
    };
    match rc {
        0 => Ok(out),
        3 => Err(JpegError::ColorSpace),
        2 => Err(JpegError::Dimensions),
        _ => {
            // SAFETY: the shim NUL-terminates `msg` on error (and it starts zeroed).
            let text = unsafe { CStr::from_ptr(msg.as_ptr()) };
            Err(JpegError::Corrupt(text.to_string_lossy().into_owned()))
        }
    }
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
        assert_eq!(decode_rgb(&bytes, 40, 30).unwrap().len(), 40 * 30 * 3);
    }

    #[test]
    fn refuses_a_truncated_jpeg_as_pillow_does() {
        let bytes = jpeg(64, 48);
        match decode_rgb(&bytes[..bytes.len() / 2], 64, 48) {
            Err(JpegError::Corrupt(msg)) => assert!(msg.contains("truncated"), "{msg}"),
            other => panic!("expected a truncation error, got {other:?}"),
        }
    }
}
