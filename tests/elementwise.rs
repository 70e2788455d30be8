//! Elementwise add and copy vs the CPU, under both feature sets.
mod common;

use common::{gpus, random_vec};
use mobilellm_kernels::{ops, reference, DType, Error, Tensor};

#[test]
fn add_matches_cpu_exactly() {
    // One f32 addition per element, the same on both sides: results must be bit-identical.
    for gpu in gpus() {
        for n in [1usize, 7, 33, 576, 4097, 64 * 1600, 256 * 65535 + 3] {
            let a = random_vec(n as u64, n);
            let b = random_vec(n as u64 + 1, n);
            let (ag, bg) = (Tensor::from_slice(gpu, &[n], &a).unwrap(), Tensor::from_slice(gpu, &[n], &b).unwrap());
            let out = Tensor::zeros(gpu, DType::F32, &[n]).unwrap();
            ops::run(gpu, &[&ops::elementwise::add(gpu, &ag, &bg, &out).unwrap()]).unwrap();
            assert_eq!(out.read::<f32>(gpu).unwrap(), reference::add(&a, &b), "n = {n} [{}]", gpu.features());
        }
    }
}

#[test]
fn copy_moves_bytes() {
    let gpu = &gpus()[1];
    let data: Vec<u32> = (0..4096u32).collect();
    let src = Tensor::from_slice(gpu, &[4096], &data).unwrap();
    let dst = Tensor::zeros(gpu, DType::U32, &[4096]).unwrap();
    let d = ops::elementwise::copy_buffer(gpu, src.buffer(), dst.buffer(), 4096 * 4).unwrap();
    ops::run(gpu, &[&d]).unwrap();
    assert_eq!(dst.read::<u32>(gpu).unwrap(), data);
    let err = ops::elementwise::copy_buffer(gpu, src.buffer(), dst.buffer(), 4096 * 4 + 16).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
}

#[test]
fn add_rejects_mismatched_shapes() {
    let gpu = &gpus()[0];
    let a = Tensor::zeros(gpu, DType::F32, &[4]).unwrap();
    let b = Tensor::zeros(gpu, DType::F32, &[5]).unwrap();
    let err = ops::elementwise::add(gpu, &a, &b, &a).unwrap_err();
    assert!(err.to_string().contains("[5]") && err.to_string().contains("[4]"), "{err}");
}
