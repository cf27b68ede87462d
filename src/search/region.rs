//! Searching with part of the query photo: the `region` option, a box around the product in
//! the shopper's photo (as Google Vision's query `boundingPoly`).
//!
//! It exists because a street photo holds more than the product, and the model's user branch
//! sees the whole frame. The crop happens where it changes nothing else: after the decode and
//! the EXIF orientation (so the box is in the photo's pixels as displayed) and before the resize
//! to the model's input, with exactly the preprocessor's other steps around it. A JPEG decoded
//! at a DCT scale (`preprocess.jpeg_draft`) is decoded again at a finer scale when the scale
//! chosen for the whole photo would leave the box with fewer pixels than the model's input: the
//! crop never upsamples what a finer decode would have given. A box that covers the whole photo
//! gives exactly the pixels of a search without one. This module must never run on an async
//! executor thread (callers use the blocking pool), nor decode a file the size limits refuse.

use serde::Deserialize;
use snapshop_inference::preprocess::{decode_with, DecodedImage};
use snapshop_inference::{ImageLimits, Preprocessor};

use crate::images::{ImageError, Prepared};

/// How a region's numbers are read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RegionUnit {
    /// Whole pixels of the photo as displayed (EXIF orientation applied).
    #[default]
    Px,
    /// Fractions of the photo's width and height, 0-1.
    Relative,
}

/// A region as JSON: `{"x": 40, "y": 10, "w": 200, "h": 300}` in pixels, or with
/// `"unit": "relative"` in fractions of the photo.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = RegionBox, example = json!({"x": 0.25, "y": 0.1, "w": 0.5, "h": 0.8, "unit": "relative"}))]
pub struct Region {
    /// Left edge.
    #[schema(minimum = 0)]
    pub x: f64,
    /// Top edge.
    #[schema(minimum = 0)]
    pub y: f64,
    /// Width, above 0.
    pub w: f64,
    /// Height, above 0.
    pub h: f64,
    /// `px` (the default) or `relative`.
    #[serde(default)]
    pub unit: RegionUnit,
}

/// A region as a client writes it (the schema of the `region` option).
#[allow(dead_code)]
#[derive(utoipa::ToSchema)]
#[serde(untagged)]
#[schema(as = RegionSpec)]
pub enum RegionSpec {
    /// Compact: `x,y,w,h` in whole pixels, or `relative:x,y,w,h` in fractions of the photo.
    #[schema(example = "relative:0.25,0.1,0.5,0.8")]
    Compact(String),
    /// JSON: `{"x", "y", "w", "h", "unit"}`.
    Box(Region),
}

/// The box in whole pixels of the upright photo: `x0..x1`, `y0..y1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PixelBox {
    x0: u32,
    y0: u32,
    x1: u32,
    y1: u32,
}

/// Why a region cannot be used: a 422 `invalid_field`, or the photo's own error.
#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    #[error("region: {0}")]
    Invalid(String),
    #[error(transparent)]
    Image(#[from] ImageError),
}

impl Region {
    /// Parses the `region` option: the compact string or the JSON object. Checks what can be
    /// checked without the photo (the bounds in pixels need its size).
    pub fn parse(value: serde_json::Value) -> Result<Region, RegionError> {
        let region = match value {
            serde_json::Value::String(text) => Self::parse_compact(&text)?,
            v => serde_json::from_value::<Region>(v).map_err(|e| {
                RegionError::Invalid(format!(
                    "expected {{\"x\", \"y\", \"w\", \"h\", \"unit\"}} or \"x,y,w,h\": {e}"
                ))
            })?,
        };
        region.checked()
    }

    fn parse_compact(text: &str) -> Result<Region, RegionError> {
        let (unit, numbers) = match text.trim().strip_prefix("relative:") {
            Some(rest) => (RegionUnit::Relative, rest),
            None => (RegionUnit::Px, text.trim()),
        };
        let values: Vec<f64> = numbers
            .split(',')
            .map(|v| v.trim().parse::<f64>())
            .collect::<Result<_, _>>()
            .map_err(|_| {
                RegionError::Invalid(format!(
                    "`{text}` is not `x,y,w,h` (pixels) or `relative:x,y,w,h` (fractions)"
                ))
            })?;
        let [x, y, w, h] = values[..] else {
            return Err(RegionError::Invalid(format!(
                "`{text}` has {} numbers, not the 4 of `x,y,w,h`",
                values.len()
            )));
        };
        Ok(Region { x, y, w, h, unit })
    }

    fn checked(self) -> Result<Region, RegionError> {
        let Region { x, y, w, h, unit } = self;
        let invalid = |m: String| Err(RegionError::Invalid(m));
        if ![x, y, w, h].iter().all(|v| v.is_finite()) {
            return invalid("x, y, w and h must be finite numbers".into());
        }
        if x < 0.0 || y < 0.0 {
            return invalid(format!("x and y must not be negative (got {x}, {y})"));
        }
        if w <= 0.0 || h <= 0.0 {
            return invalid(format!("the region is empty (w {w}, h {h})"));
        }
        match unit {
            RegionUnit::Px => {
                if [x, y, w, h].iter().any(|v| v.fract() != 0.0) {
                    return invalid(
                        "pixel regions are whole pixels (use `\"unit\": \"relative\"` or \
                         `relative:x,y,w,h` for fractions)"
                            .into(),
                    );
                }
            }
            RegionUnit::Relative => {
                // A little slack for fractions written as decimals (0.1 + 0.9 is not 1.0).
                const SLACK: f64 = 1e-9;
                if x + w > 1.0 + SLACK || y + h > 1.0 + SLACK {
                    return invalid(format!(
                        "a relative region must lie within 0-1 (x + w = {}, y + h = {})",
                        x + w,
                        y + h
                    ));
                }
            }
        }
        Ok(self)
    }

    /// The box in whole pixels of a `width × height` photo; pixel regions must lie inside it,
    /// relative ones are rounded outwards to whole pixels.
    fn pixels(&self, width: u32, height: u32) -> Result<PixelBox, RegionError> {
        let (fw, fh) = (f64::from(width), f64::from(height));
        let b = match self.unit {
            RegionUnit::Px => {
                if self.x + self.w > fw || self.y + self.h > fh {
                    return Err(RegionError::Invalid(format!(
                        "the region {}x{} at ({}, {}) is outside the {width}x{height} photo",
                        self.w, self.h, self.x, self.y
                    )));
                }
                PixelBox {
                    x0: self.x as u32,
                    y0: self.y as u32,
                    x1: (self.x + self.w) as u32,
                    y1: (self.y + self.h) as u32,
                }
            }
            RegionUnit::Relative => {
                let edge = |v: f64, size: f64, up: bool| {
                    let p = v * size;
                    let p = if up { p.ceil() } else { p.floor() };
                    p.clamp(0.0, size) as u32
                };
                PixelBox {
                    x0: edge(self.x, fw, false),
                    y0: edge(self.y, fh, false),
                    x1: edge(self.x + self.w, fw, true),
                    y1: edge(self.y + self.h, fh, true),
                }
            }
        };
        if b.x1 <= b.x0 || b.y1 <= b.y0 {
            return Err(RegionError::Invalid(format!(
                "the region covers no whole pixel of the {width}x{height} photo"
            )));
        }
        Ok(b)
    }
}

/// `b` (in pixels of the `source` size) in the pixels of an image decoded at `decoded` size
/// (smaller after a DCT-scaled decode), rounded outwards.
fn scaled(b: PixelBox, source: (u32, u32), decoded: (u32, u32)) -> PixelBox {
    if source == decoded {
        return b;
    }
    let axis = |v: u32, from: u32, to: u32, up: bool| {
        let p = f64::from(v) * f64::from(to) / f64::from(from);
        let p = if up { p.ceil() } else { p.floor() };
        (p as u32).min(to)
    };
    let mut out = PixelBox {
        x0: axis(b.x0, source.0, decoded.0, false),
        y0: axis(b.y0, source.1, decoded.1, false),
        x1: axis(b.x1, source.0, decoded.0, true),
        y1: axis(b.y1, source.1, decoded.1, true),
    };
    out.x1 = out.x1.max(out.x0 + 1).min(decoded.0);
    out.y1 = out.y1.max(out.y0 + 1).min(decoded.1);
    out
}

/// The crop of `image` to `b` (inside it).
fn crop(image: &image::RgbImage, b: PixelBox) -> image::RgbImage {
    image::imageops::crop_imm(image, b.x0, b.y0, b.x1 - b.x0, b.y1 - b.y0).to_image()
}

/// Decodes the photo as the bundle prescribes, crops it to `region`, then resizes and
/// normalises it like any query. Blocking and CPU-heavy: run it on the blocking pool.
pub fn prepare(
    pre: &Preprocessor,
    bytes: &[u8],
    limits: &ImageLimits,
    region: &Region,
) -> Result<Prepared, RegionError> {
    let (cropped, source, format) = decode_region(pre, bytes, limits, region)?;
    let resized = pre.resize(&cropped).map_err(ImageError::from)?;
    Ok(Prepared {
        tensor: pre.to_tensor(&resized),
        width: source.0,
        height: source.1,
        format,
    })
}

/// The region's pixels (before the resize), the photo's upright size and its format.
fn decode_region(
    pre: &Preprocessor,
    bytes: &[u8],
    limits: &ImageLimits,
    region: &Region,
) -> Result<(image::RgbImage, (u32, u32), &'static str), RegionError> {
    let mut decoded: DecodedImage = pre.decode(bytes, limits).map_err(ImageError::from)?;
    let source = decoded.source_size;
    let b = region.pixels(source.0, source.1)?;
    if decoded.image.dimensions() != source {
        // Decoded at the DCT scale chosen for the whole photo: ask for the scale that keeps the
        // box at least as large as the model's input (the same scale when the box is the whole
        // photo, a finer one for a small box).
        let (out_w, out_h) = pre.draft_size();
        let want = |out: u32, full: u32, part: u32| {
            (u64::from(out) * u64::from(full)).div_ceil(u64::from(part)) as u32
        };
        let draft = (
            want(out_w, source.0, b.x1 - b.x0),
            want(out_h, source.1, b.y1 - b.y0),
        );
        if draft != (out_w, out_h) {
            decoded = decode_with(bytes, limits, Some(draft)).map_err(ImageError::from)?;
        }
    }
    let in_decoded = scaled(b, source, decoded.image.dimensions());
    Ok((crop(&decoded.image, in_decoded), source, decoded.format))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn region(v: serde_json::Value) -> Result<Region, RegionError> {
        Region::parse(v)
    }

    #[test]
    fn both_spellings_parse_to_the_same_region() {
        let px = Region {
            x: 10.0,
            y: 20.0,
            w: 30.0,
            h: 40.0,
            unit: RegionUnit::Px,
        };
        assert_eq!(region(json!("10,20,30,40")).unwrap(), px);
        assert_eq!(region(json!(" 10, 20 ,30,40 ")).unwrap(), px);
        assert_eq!(
            region(json!({"x": 10, "y": 20, "w": 30, "h": 40})).unwrap(),
            px
        );
        let rel = region(json!("relative:0.25,0,0.5,1")).unwrap();
        assert_eq!(rel.unit, RegionUnit::Relative);
        assert_eq!(
            region(json!({"x": 0.25, "y": 0, "w": 0.5, "h": 1, "unit": "relative"})).unwrap(),
            rel
        );
    }

    #[test]
    fn bad_regions_are_refused() {
        for bad in [
            json!("1,2,3"),
            json!("a,b,c,d"),
            json!("0,0,0,10"),
            json!("-1,0,10,10"),
            json!("0.5,0,10,10"),
            json!("relative:0.5,0,0.6,0.5"),
            json!("relative:0,0,0,1"),
            json!({"x": 0, "y": 0, "w": 1, "h": 1, "unit": "inches"}),
            json!({"x": 0, "y": 0, "w": 1}),
            json!({"x": 0, "y": 0, "w": 1, "h": 1, "z": 0}),
            json!(42),
        ] {
            assert!(
                matches!(region(bad.clone()), Err(RegionError::Invalid(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn pixel_boxes_check_bounds_and_relative_ones_round_outwards() {
        let r = region(json!("0,0,100,50")).unwrap();
        assert_eq!(
            r.pixels(100, 50).unwrap(),
            PixelBox {
                x0: 0,
                y0: 0,
                x1: 100,
                y1: 50
            }
        );
        assert!(matches!(r.pixels(99, 50), Err(RegionError::Invalid(_))));
        let rel = region(json!("relative:0.105,0.5,0.5,0.5")).unwrap();
        assert_eq!(
            rel.pixels(100, 11).unwrap(),
            PixelBox {
                x0: 10,
                y0: 5,
                x1: 61,
                y1: 11
            }
        );
        let tiny = region(json!("relative:0.5,0.5,0.000001,0.000001")).unwrap();
        assert_eq!(
            tiny.pixels(10, 10).unwrap(),
            PixelBox {
                x0: 5,
                y0: 5,
                x1: 6,
                y1: 6
            },
            "at least one whole pixel"
        );
    }

    #[test]
    fn boxes_scale_with_a_dct_scaled_decode() {
        let b = PixelBox {
            x0: 100,
            y0: 50,
            x1: 301,
            y1: 250,
        };
        assert_eq!(scaled(b, (800, 600), (800, 600)), b);
        assert_eq!(
            scaled(b, (800, 600), (400, 300)),
            PixelBox {
                x0: 50,
                y0: 25,
                x1: 151,
                y1: 125
            }
        );
        let whole = PixelBox {
            x0: 0,
            y0: 0,
            x1: 801,
            y1: 601,
        };
        // An odd size scales to the decoder's rounded-up size, and stays inside it.
        assert_eq!(
            scaled(whole, (801, 601), (101, 76)),
            PixelBox {
                x0: 0,
                y0: 0,
                x1: 101,
                y1: 76
            }
        );
    }

    /// The shipped bundle's preprocessing, with or without `jpeg_draft`.
    fn preprocessor(draft: bool) -> Preprocessor {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/models/default/manifest.json");
        let mut v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        v["preprocess"]["jpeg_draft"] = draft.into();
        Preprocessor::new(&serde_json::from_value(v).unwrap()).unwrap()
    }

    /// A 1600x1200 JPEG with fine detail everywhere (so DCT scales differ visibly).
    fn photo() -> Vec<u8> {
        let img = image::RgbImage::from_fn(1600, 1200, |x, y| {
            image::Rgb([
                ((x * 7 + y * 3) % 256) as u8,
                ((x ^ y) % 256) as u8,
                if (x / 3 + y / 5) % 2 == 0 { 30 } else { 220 },
            ])
        });
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 92)
            .encode_image(&img)
            .unwrap();
        out
    }

    #[test]
    fn the_whole_photo_as_region_is_a_search_without_one() {
        let bytes = photo();
        let limits = ImageLimits::default();
        let whole = [
            region(json!("0,0,1600,1200")).unwrap(),
            region(json!("relative:0,0,1,1")).unwrap(),
        ];
        for draft in [false, true] {
            let pre = preprocessor(draft);
            let plain = pre.prepare(&bytes, &limits).unwrap();
            for r in &whole {
                let got = prepare(&pre, &bytes, &limits, r).unwrap();
                assert_eq!(got.tensor, plain.tensor, "draft {draft}, {r:?}");
                assert_eq!((got.width, got.height, got.format), (1600, 1200, "jpeg"));
            }
        }
    }

    #[test]
    fn a_small_region_is_decoded_finely_enough_under_a_draft() {
        let bytes = photo();
        let limits = ImageLimits::default();
        let full = preprocessor(false);
        let draft = preprocessor(true);
        // The shipped bundle asks the draft for twice its 192x192 input (384x384), so the whole
        // 1600x1200 photo decodes at 1/2 (800x600). A 1500x1100 box keeps 550 rows there, more
        // than 384: the same 1/2 scale (750x550). A 1200x600 box would keep only 300 rows, so it
        // is decoded in full, as is a 400x300 box.
        assert_eq!(draft.draft_size(), (384, 384));
        let whole_draft = draft.decode(&bytes, &limits).unwrap().image.dimensions();
        assert_eq!(
            whole_draft,
            (800, 600),
            "the draft scale of the whole photo"
        );
        for (r, want) in [
            ("0,0,1500,1100", (750, 550)),
            ("200,300,1200,600", (1200, 600)),
            ("400,300,400,300", (400, 300)),
        ] {
            let (px, _, _) =
                decode_region(&draft, &bytes, &limits, &region(json!(r)).unwrap()).unwrap();
            assert_eq!(px.dimensions(), want, "{r}");
        }
        // A tiny box needs every pixel: the same as a full decode, cropped.
        let tiny = region(json!("800,600,50,40")).unwrap();
        let (fine, _, _) = decode_region(&draft, &bytes, &limits, &tiny).unwrap();
        let (exact, _, _) = decode_region(&full, &bytes, &limits, &tiny).unwrap();
        assert_eq!(fine.dimensions(), (50, 40));
        assert_eq!(fine, exact);
        // Outside the photo.
        let outside = region(json!("1500,0,101,10")).unwrap();
        assert!(matches!(
            prepare(&draft, &bytes, &limits, &outside),
            Err(RegionError::Invalid(_))
        ));
    }
}
