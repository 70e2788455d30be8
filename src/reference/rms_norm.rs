/// RMSNorm of each row of `x` (`rows x weight.len()`): `x / sqrt(mean(x^2) + eps) * weight`.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32) -> Vec<f32> {
    let cols = weight.len();
    let mut y = Vec::with_capacity(x.len());
    for row in x.chunks(cols.max(1)) {
        let sum_sq: f32 = row.iter().map(|v| v * v).sum();
        let inv_rms = 1.0 / (sum_sq / cols as f32 + eps).sqrt();
        y.extend(row.iter().zip(weight).map(|(v, w)| v * inv_rms * w));
    }
    y
}
