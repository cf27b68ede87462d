/*
 * JPEG -> packed RGB8 (or raw CMYK) with the system libjpeg-turbo, configured as Pillow decodes
 * (ISLOW DCT, fancy upsampling, and the DCT scale `Image.draft` picks), so that the service sees the very pixels the training pipeline saw.
 * libjpeg reports fatal errors through longjmp; that stays inside this file (no Rust frame is
 * ever skipped) and becomes a return code plus a message.
 */
#include <setjmp.h>
#include <stdio.h>
#include <string.h>

#include <jpeglib.h>
#include <jerror.h>

struct shim_error {
    struct jpeg_error_mgr pub;
    jmp_buf jump;
    char *msg;
    unsigned long msg_len;
    int truncated;
};

static void shim_error_exit(j_common_ptr cinfo) {
    struct shim_error *err = (struct shim_error *)cinfo->err;
    char buffer[JMSG_LENGTH_MAX];
    (*cinfo->err->format_message)(cinfo, buffer);
    if (err->msg_len > 0) {
        strncpy(err->msg, buffer, err->msg_len - 1);
        err->msg[err->msg_len - 1] = '\0';
    }
    longjmp(err->jump, 1);
}

/*
 * Warnings (corrupt but decodable data) are not fatal, as in Pillow; keep them quiet. One is:
 * data that ends before the image does (libjpeg pads it with grey), which Pillow refuses as
 * "image file is truncated" and so must the service, or a broken upload is stored as a product.
 */
static void shim_emit_message(j_common_ptr cinfo, int msg_level) {
    struct shim_error *err = (struct shim_error *)cinfo->err;
    if (msg_level < 0) {
        err->pub.num_warnings++;
        if (err->pub.msg_code == JWRN_JPEG_EOF) {
            err->truncated = 1;
        }
    }
}

/*
 * Decodes `data` into `out` (`out_len` bytes, packed rows of `*out_w` pixels), scaled by
 * 1/`scale_denom` (1, 2, 4 or 8) with libjpeg's DCT scaling, exactly as Pillow's decoder does
 * after `Image.draft()` (`cinfo.scale_num = 1`, `cinfo.scale_denom = scale`; draft leaves the
 * IDCT method and the upsampling alone). The output is ceil(w / scale) x ceil(h / scale) pixels,
 * written to `*out_w` / `*out_h`. With `want_cmyk` 0 the pixels are RGB; a CMYK/YCCK file then
 * returns 3. With `want_cmyk` 1 a CMYK/YCCK file is decoded to its 4 raw CMYK samples per pixel
 * (as stored, Adobe-inverted or not: the caller converts them) and any other file returns 3.
 * Returns 0 on success, 1 on a libjpeg error or truncated data (message in `msg`), 2 if the image
 * is not `expect_w` x `expect_h` or its output does not fit `out`, 3 as above.
 */
int snapshop_jpeg_decode(const unsigned char *data, unsigned long len, unsigned char *out,
                         unsigned long out_len, unsigned int expect_w, unsigned int expect_h,
                         unsigned int scale_denom, int want_cmyk, unsigned int *out_w,
                         unsigned int *out_h, char *msg, unsigned long msg_len) {
    struct jpeg_decompress_struct cinfo;
    struct shim_error err;
    /* volatile: modified between setjmp and longjmp */
    volatile int created = 0;
    int is_cmyk;
    unsigned int channels = want_cmyk ? 4 : 3;
    unsigned long row_bytes;

    *out_w = 0;
    *out_h = 0;
    if (scale_denom != 1 && scale_denom != 2 && scale_denom != 4 && scale_denom != 8) {
        return 2;
    }

    memset(&cinfo, 0, sizeof(cinfo));
    cinfo.err = jpeg_std_error(&err.pub);
    err.pub.error_exit = shim_error_exit;
    err.pub.emit_message = shim_emit_message;
    err.msg = msg;
    err.msg_len = msg_len;
    err.truncated = 0;
    if (setjmp(err.jump)) {
        if (created) {
            jpeg_destroy_decompress(&cinfo);
        }
        return 1;
    }
    jpeg_create_decompress(&cinfo);
    created = 1;
    jpeg_mem_src(&cinfo, data, len);
    jpeg_read_header(&cinfo, TRUE);
    is_cmyk = cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK;
    if (is_cmyk != (want_cmyk != 0)) {
        jpeg_destroy_decompress(&cinfo);
        return 3;
    }
    if (cinfo.image_width != expect_w || cinfo.image_height != expect_h) {
        jpeg_destroy_decompress(&cinfo);
        return 2;
    }
    cinfo.out_color_space = want_cmyk ? JCS_CMYK : JCS_RGB;
    cinfo.dct_method = JDCT_ISLOW;
    cinfo.do_fancy_upsampling = TRUE;
    cinfo.scale_num = 1;
    cinfo.scale_denom = scale_denom;
    /* The output size, before any pixel is written: it must fit `out`. */
    jpeg_calc_output_dimensions(&cinfo);
    row_bytes = (unsigned long)cinfo.output_width * channels;
    if (cinfo.output_width != (expect_w + scale_denom - 1) / scale_denom ||
        cinfo.output_height != (expect_h + scale_denom - 1) / scale_denom ||
        (unsigned int)cinfo.out_color_components != channels ||
        row_bytes * cinfo.output_height > out_len) {
        jpeg_destroy_decompress(&cinfo);
        return 2;
    }
    jpeg_start_decompress(&cinfo);
    if ((unsigned long)cinfo.output_width * cinfo.output_components != row_bytes) {
        jpeg_abort_decompress(&cinfo);
        jpeg_destroy_decompress(&cinfo);
        return 2;
    }
    *out_w = cinfo.output_width;
    *out_h = cinfo.output_height;
    while (cinfo.output_scanline < cinfo.output_height) {
        JSAMPROW row = out + (unsigned long)cinfo.output_scanline * row_bytes;
        jpeg_read_scanlines(&cinfo, &row, 1);
    }
    jpeg_finish_decompress(&cinfo);
    jpeg_destroy_decompress(&cinfo);
    if (err.truncated) {
        if (msg_len > 0) {
            strncpy(msg, "the JPEG data ends before the image does (truncated file)", msg_len - 1);
            msg[msg_len - 1] = '\0';
        }
        return 1;
    }
    return 0;
}
