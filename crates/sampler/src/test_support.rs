//! Helpers shared by the unit tests: chi-square statistic, critical values, Zipf-like counts.

/// Upper 0.1% critical values of the chi-square distribution (significance p = 0.001), indexed
/// by degrees of freedom (index 0 unused). Computed from the regularised incomplete gamma
/// function; they match published tables (e.g. 10 df: 29.588, 50 df: 86.661).
pub(crate) const CRITICAL_P001: [f64; 101] = [
    0.0, 10.828, 13.816, 16.266, 18.467, 20.515, 22.458, 24.322, 26.124, 27.877, 29.588, 31.264,
    32.909, 34.528, 36.123, 37.697, 39.252, 40.790, 42.312, 43.820, 45.315, 46.797, 48.268, 49.728,
    51.179, 52.620, 54.052, 55.476, 56.892, 58.301, 59.703, 61.098, 62.487, 63.870, 65.247, 66.619,
    67.985, 69.346, 70.703, 72.055, 73.402, 74.745, 76.084, 77.419, 78.750, 80.077, 81.400, 82.720,
    84.037, 85.351, 86.661, 87.968, 89.272, 90.573, 91.872, 93.168, 94.461, 95.751, 97.039, 98.324,
    99.607, 100.888, 102.166, 103.442, 104.716, 105.988, 107.258, 108.526, 109.791, 111.055,
    112.317, 113.577, 114.835, 116.092, 117.346, 118.599, 119.850, 121.100, 122.348, 123.594,
    124.839, 126.083, 127.324, 128.565, 129.804, 131.041, 132.277, 133.512, 134.745, 135.978,
    137.208, 138.438, 139.666, 140.893, 142.119, 143.344, 144.567, 145.789, 147.010, 148.230,
    149.449,
];

/// Pearson's chi-square statistic of `observed` counts against `probabilities`; infinite when an
/// item of probability 0 was observed.
pub(crate) fn chi_square(observed: &[u64], probabilities: &[f64]) -> f64 {
    let draws: u64 = observed.iter().sum();
    let mut statistic = 0.0;
    for (&count, &p) in observed.iter().zip(probabilities) {
        if p > 0.0 {
            let expected = draws as f64 * p;
            statistic += (count as f64 - expected).powi(2) / expected;
        } else if count > 0 {
            return f64::INFINITY;
        }
    }
    statistic
}

/// Zipf-like counts: item `i` gets about `total / (i + 1)^exponent / H`, at least 1.
pub(crate) fn zipf_counts(num_items: usize, exponent: f64, total: u64) -> Vec<u32> {
    let harmonic: f64 = (1..=num_items).map(|r| (r as f64).powf(-exponent)).sum();
    (1..=num_items)
        .map(|r| ((total as f64 * (r as f64).powf(-exponent) / harmonic).round() as u32).max(1))
        .collect()
}
