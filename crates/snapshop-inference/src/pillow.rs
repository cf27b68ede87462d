//! A bit-exact port of Pillow's `Image.resize(size, Image.BILINEAR)` for 8-bit RGB
//! (`libImaging/Resample.c` of Pillow 13, the version pinned in `models/requirements.txt`).
//!
//! It exists because the model was trained on Pillow's output and `fast_image_resize`, although
//! it implements the same separable antialiased convolution, keeps its coefficients in 16-bit
//! fixed point (Pillow-SIMD's choice) where Pillow uses 22 bits: about 7% of its output bytes
//! are off by one on the test fixtures. This module must keep Pillow's arithmetic exactly: f64
//! coefficients normalised per output pixel, rounded to `PRECISION_BITS` fixed point, Pillow
//! 13's pass order (vertical first when the height shrinks by more than twice as many pixels as
//! the width, else horizontal first over only the rows the vertical pass reads), and a rounding
//! and clamping to 8 bits between the passes. Any "optimisation" that changes that order or
//! precision changes the model's inputs.

const PRECISION_BITS: u32 = 32 - 8 - 2;
/// Source rows the horizontal pass handles together (see `resize_rgb8`).
const BLOCK: usize = 8;
/// Samples per column of a block: BLOCK rows × 3 channels.
const LANES: usize = BLOCK * 3;
/// Pillow's BILINEAR filter support.
const SUPPORT: f64 = 1.0;

fn bilinear(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

/// Per output pixel: the first source index, the number of taps, and the fixed-point weights
/// (`ksize` of them, unused ones zero).
struct Coeffs {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    weights: Vec<i32>,
}

/// `precompute_coeffs` + `normalize_coeffs_8bpc` for the box `[0, in_size)`.
fn coeffs(in_size: usize, out_size: usize) -> Coeffs {
    // Pillow passes the box as C floats; for whole-image boxes these are exact integers.
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = SUPPORT * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut k = vec![0.0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's (int) cast truncates toward zero; negatives are clamped to 0 right after.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = xmax.saturating_sub(xmin);
        let mut ww = 0.0f64;
        for (x, kx) in k.iter_mut().enumerate().take(n) {
            let w = bilinear((x as f64 + xmin as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        let row = &mut weights[xx * ksize..(xx + 1) * ksize];
        for (out, &kx) in row.iter_mut().zip(k.iter()).take(n) {
            let v = if ww != 0.0 { kx / ww } else { kx };
            let scaled = v * f64::from(1u32 << PRECISION_BITS);
            *out = if v < 0.0 {
                (-0.5 + scaled) as i32
            } else {
                (0.5 + scaled) as i32
            };
        }
        bounds.push((xmin, n));
    }
    Coeffs {
        ksize,
        bounds,
        weights,
    }
}

#[inline(always)]
fn clip8(v: i32) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes packed RGB8 `src` (`w × h`) to `out_w × out_h` exactly as Pillow's BILINEAR does.
///
/// # Panics
/// If `src` is not `w * h * 3` bytes or a size is zero (callers check; this is a bug).
pub(crate) fn resize_rgb8(src: &[u8], w: usize, h: usize, out_w: usize, out_h: usize) -> Vec<u8> {
    assert!(
        w > 0 && h > 0 && out_w > 0 && out_h > 0 && src.len() == w * h * 3,
        "resize_rgb8 called with inconsistent sizes; this is a bug"
    );
    if (w, h) == (out_w, out_h) {
        // Pillow returns a copy without resampling.
        return src.to_vec();
    }
    let vert = coeffs(h, out_h);
    // Pillow 13 (python-pillow/Pillow#9549) runs the vertical pass first when the height
    // shrinks by more than twice as many pixels as the width; the order changes the rounding
    // between the passes, so it is reproduced to the letter.
    let vertical_first = h > out_h && (h - out_h) as i64 > 2 * (w as i64 - out_w as i64);
    if vertical_first {
        let tmp = vertical_pass(src, w, &vert, 0, out_h);
        if out_w == w {
            return tmp;
        }
        return horizontal_pass(&tmp, w, 0, out_h, &coeffs(w, out_w), out_w);
    }
    if out_w == w {
        return vertical_pass(src, w, &vert, 0, out_h);
    }
    // Only the source rows the vertical pass reads go through the horizontal pass.
    let y_first = vert.bounds[0].0;
    let y_last = vert.bounds[out_h - 1].0 + vert.bounds[out_h - 1].1;
    let tmp = horizontal_pass(src, w, y_first, y_last, &coeffs(w, out_w), out_w);
    if out_h == h {
        return tmp;
    }
    vertical_pass(&tmp, out_w, &vert, y_first, out_h)
}

/// Pillow's `ImagingResampleHorizontal_8bpc` over source rows `y_first..y_last`.
fn horizontal_pass(
    src: &[u8],
    w: usize,
    y_first: usize,
    y_last: usize,
    horiz: &Coeffs,
    out_w: usize,
) -> Vec<u8> {
    let half = 1i32 << (PRECISION_BITS - 1);
    let rows = y_last - y_first;
    let mut tmp = vec![0u8; rows * out_w * 3];
    // Rows are processed BLOCK at a time, stored column-major (`cols[x][row][channel]`), so
    // that one weight multiplies BLOCK * 3 contiguous samples: a fixed-size loop the compiler
    // vectorises. Each output sample is still Pillow's exact integer sum.
    let mut cols = vec![0u8; w * LANES];
    for block in (0..rows).step_by(BLOCK) {
        let nr = BLOCK.min(rows - block);
        for r in 0..nr {
            let y = y_first + block + r;
            let in_row = &src[y * w * 3..(y + 1) * w * 3];
            for (x, p) in in_row.chunks_exact(3).enumerate() {
                cols[x * LANES + r * 3..x * LANES + r * 3 + 3].copy_from_slice(p);
            }
        }
        for xx in 0..out_w {
            let (xmin, n) = horiz.bounds[xx];
            let k = &horiz.weights[xx * horiz.ksize..xx * horiz.ksize + n];
            let mut acc = [half; LANES];
            for (t, &kx) in k.iter().enumerate() {
                let col: &[u8; LANES] = cols[(xmin + t) * LANES..(xmin + t + 1) * LANES]
                    .try_into()
                    .expect("LANES-long slice; this is a bug");
                for (a, &p) in acc.iter_mut().zip(col) {
                    *a += i32::from(p) * kx;
                }
            }
            for r in 0..nr {
                let o = ((block + r) * out_w + xx) * 3;
                for c in 0..3 {
                    tmp[o + c] = clip8(acc[r * 3 + c]);
                }
            }
        }
    }
    tmp
}

/// Pillow's `ImagingResampleVertical_8bpc`; `src` row 0 is source row `row_offset`.
fn vertical_pass(
    src: &[u8],
    width: usize,
    vert: &Coeffs,
    row_offset: usize,
    out_h: usize,
) -> Vec<u8> {
    let half = 1i32 << (PRECISION_BITS - 1);
    let row_len = width * 3;
    let mut out = vec![0u8; out_h * row_len];
    let mut acc = vec![0i32; row_len];
    for (yy, out_row) in out.chunks_exact_mut(row_len).enumerate() {
        let (ymin, n) = vert.bounds[yy];
        let k = &vert.weights[yy * vert.ksize..yy * vert.ksize + n];
        acc.fill(half);
        // Row-wise accumulation (same sums as Pillow's per-pixel loop: integer addition is
        // associative) so the inner loop runs over contiguous memory and vectorises.
        for (y, &ky) in k.iter().enumerate() {
            let r = ymin + y - row_offset;
            let in_row = &src[r * row_len..(r + 1) * row_len];
            for (a, &p) in acc.iter_mut().zip(in_row) {
                *a += i32::from(p) * ky;
            }
        }
        for (o, &a) in out_row.iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
    out
}
