/*
 * JPEG -> packed RGB8 with the system libjpeg-turbo, configured as Pillow decodes (ISLOW DCT,
 * fancy upsampling), so that the service sees the very pixels the training pipeline saw.
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
 * Decodes `data` into `out` (`out_len` bytes, packed RGB rows). Returns 0 on success, 1 on a
 * libjpeg error or truncated data (message in `msg`), 2 if the image is not `expect_w` x `expect_h` or does not
 * fit `out`, 3 if libjpeg cannot produce RGB from this colour space (CMYK/YCCK).
 */
int snapshop_jpeg_decode_rgb(const unsigned char *data, unsigned long len, unsigned char *out,
                             unsigned long out_len, unsigned int expect_w, unsigned int expect_h,
                             char *msg, unsigned long msg_len) {
    struct jpeg_decompress_struct cinfo;
    struct shim_error err;
    /* volatile: modified between setjmp and longjmp */
    volatile int created = 0;

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
    if (cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK) {
        jpeg_destroy_decompress(&cinfo);
        return 3;
    }
    if (cinfo.image_width != expect_w || cinfo.image_height != expect_h ||
        (unsigned long)expect_w * expect_h * 3 > out_len) {
        jpeg_destroy_decompress(&cinfo);
        return 2;
    }
    cinfo.out_color_space = JCS_RGB;
    cinfo.dct_method = JDCT_ISLOW;
    cinfo.do_fancy_upsampling = TRUE;
    jpeg_start_decompress(&cinfo);
    if (cinfo.output_width != expect_w || cinfo.output_height != expect_h ||
        cinfo.output_components != 3) {
        jpeg_destroy_decompress(&cinfo);
        return 2;
    }
    while (cinfo.output_scanline < cinfo.output_height) {
        JSAMPROW row = out + (unsigned long)cinfo.output_scanline * expect_w * 3;
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
