use crate::quant::HostWeight;

/// `y = W·x` for a batch: `x` is `[n, w.cols]`, the result `[n, w.rows]`, on the dequantized weights
/// (exactly the values the GPU reads), accumulating each dot product in f32 in column order.
pub fn gemv(w: &HostWeight, x: &[f32]) -> Vec<f32> {
    let deq = w.dequantize();
    let cols = w.cols;
    let mut y = Vec::with_capacity(x.len() / cols.max(1) * w.rows);
    for xr in x.chunks(cols) {
        for wr in deq.chunks(cols) {
            y.push(wr.iter().zip(xr).map(|(a, b)| a * b).sum::<f32>());
        }
    }
    y
}
