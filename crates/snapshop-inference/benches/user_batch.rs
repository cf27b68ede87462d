//! What batching buys the user branch on this machine: one `embed_user` call through
//! [`OrtBackend`] on the shipped bundle at batch 1, 2, 4, 8 and 16, with ONNX Runtime's default
//! threads, with spinning off, and with one intra-op thread. Criterion reports images/s
//! (`Throughput::Elements` = the batch), so a flat line across batch sizes means a batch of N
//! costs N single calls and the queue's batching cannot raise throughput on this CPU.
//!
//! The input is the golden street photo, preprocessed as the service does, repeated.
//!
//! `. scripts/env.sh && cargo bench -p snapshop-inference --bench user_batch`

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ndarray::{Array4, Axis};
use snapshop_inference::{
    Backend, Bundle, Device, ImageLimits, OrtBackend, Preprocessor, Threading,
};

fn bundle_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/default")
}

fn user_batch(c: &mut Criterion) {
    snapshop_inference::init_runtime(None).expect("ONNX Runtime (. scripts/env.sh)");
    let bundle = Bundle::load(&bundle_dir()).expect("the shipped bundle");
    let pre = Preprocessor::new(&bundle.manifest).expect("the bundle's preprocessing");
    let bytes =
        std::fs::read(bundle_dir().join("golden/street_0.jpg")).expect("golden street photo");
    let image = pre
        .prepare(&bytes, &ImageLimits::default())
        .expect("the golden photo decodes")
        .tensor;
    let variants = [
        ("default", Threading::default()),
        (
            "nospin",
            Threading {
                spinning: false,
                ..Threading::default()
            },
        ),
        ("intra1", Threading::intra(1)),
    ];
    for (name, threading) in variants {
        let mut backend = OrtBackend::load(&bundle, Device::Cpu, threading).expect("sessions");
        let mut group = c.benchmark_group(format!("user_batch/{name}"));
        for batch in [1usize, 2, 4, 8, 16] {
            let views: Vec<_> = (0..batch).map(|_| image.view()).collect();
            let images: Array4<f32> = ndarray::stack(Axis(0), &views).expect("same shapes");
            group.throughput(Throughput::Elements(batch as u64));
            group.bench_with_input(BenchmarkId::from_parameter(batch), &images, |b, images| {
                b.iter(|| black_box(backend.embed_user(images.view()).expect("user branch runs")))
            });
        }
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = user_batch
}
criterion_main!(benches);
