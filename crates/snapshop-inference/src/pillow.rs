//! A bit-exact port of Pillow's `Image.resize(size, Image.BILINEAR)` for 8-bit RGB
//! (`libImaging/Resample.c`, Pillow 10-13).
//!
//! It exists because the model was trained on Pillow's output and `fast_image_resize`, although
//! it implements the same separable antialiased convolution, keeps its coefficients in 16-bit
//! fixed point (Pillow-SIMD's choice) where Pillow uses 22 bits: about 7% of its output bytes are
//! off by one (measured in `preprocess::tests`). This module must keep Pillow's arithmetic
//! exactly: f64 coefficients normalised per output pixel, rounded to `PRECISION_BITS` fixed
//! point, horizontal pass first over only the rows the vertical pass reads, a rounding and
//! clamping to 8 bits between the passes. Any "optimisation" that changes that order or
//! precision changes the model's inputs.

const PRECISION_BITS: u32 = 32 - 8 - 2;
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
    let half = 1i32 << (PRECISION_BITS - 1);
    let vert = coeffs(h, out_h);
    // Only the source rows the vertical pass reads go through the horizontal pass.
    let y_first = vert.bounds[0].0;
    let y_last = vert.bounds[out_h - 1].0 + vert.bounds[out_h - 1].1;

    let (tmp, tmp_w, row_offset) = if out_w != w {
        let horiz = coeffs(w, out_w);
        let rows = y_last - y_first;
        let mut tmp = vec![0u8; rows * out_w * 3];
        for (y, out_row) in tmp.chunks_exact_mut(out_w * 3).enumerate() {
            let in_row = &src[(y + y_first) * w * 3..(y + y_first + 1) * w * 3];
            for (xx, px) in out_row.chunks_exact_mut(3).enumerate() {
                let (xmin, n) = horiz.bounds[xx];
                let k = &horiz.weights[xx * horiz.ksize..xx * horiz.ksize + n];
                let taps = &in_row[xmin * 3..(xmin + n) * 3];
                let (mut s0, mut s1, mut s2) = (half, half, half);
                for (p, &kx) in taps.chunks_exact(3).zip(k) {
                    s0 += i32::from(p[0]) * kx;
                    s1 += i32::from(p[1]) * kx;
                    s2 += i32::from(p[2]) * kx;
                }
                px[0] = clip8(s0);
                px[1] = clip8(s1);
                px[2] = clip8(s2);
            }
        }
        (tmp, out_w, y_first)
    } else {
        (src.to_vec(), w, 0)
    };
    if out_h == h {
        return tmp;
    }

    let row_len = tmp_w * 3;
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
            let in_row = &tmp[r * row_len..(r + 1) * row_len];
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
