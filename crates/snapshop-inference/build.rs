//! Builds the small C shim over the system libjpeg-turbo (see csrc/jpeg_shim.c and
//! src/jpeg.rs for why). Needs the libjpeg development headers (Debian: libjpeg-dev).
fn main() {
    println!("cargo:rerun-if-changed=csrc/jpeg_shim.c");
    cc::Build::new()
        .file("csrc/jpeg_shim.c")
        .warnings(true)
        .compile("snapshop_jpeg_shim");
    println!("cargo:rustc-link-lib=jpeg");
}
