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

/// ln Gamma(x) for x >= 0.5 (Lanczos, g = 7, 9 terms; about 15 digits).
fn ln_gamma(x: f64) -> f64 {
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    assert!(
        x >= 0.5,
        "ln_gamma({x}) is only needed for half-integers from 0.5"
    );
    let x = x - 1.0;
    let t = x + 7.5;
    let series = C[1..]
        .iter()
        .enumerate()
        .fold(C[0], |acc, (i, c)| acc + c / (x + 1.0 + i as f64));
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + series.ln()
}

/// P(X > x) for X chi-square with `df` degrees of freedom: the regularised upper incomplete
/// gamma function Q(df / 2, x / 2), by its continued fraction (modified Lentz), which converges
/// fast where x / 2 > df / 2 + 1, as at the upper critical values.
pub(crate) fn chi_square_survival(df: usize, x: f64) -> f64 {
    let (a, x) = (df as f64 / 2.0, x / 2.0);
    assert!(x > a + 1.0, "the continued fraction needs x/2 > df/2 + 1");
    let tiny = 1e-300;
    let mut b = x + 1.0 - a;
    let mut c = 1.0 / tiny;
    let mut d = 1.0 / b;
    let mut h = d;
    for i in 1..1000 {
        let an = -(i as f64) * (i as f64 - a);
        b += 2.0;
        d = an * d + b;
        d = if d.abs() < tiny { tiny } else { d };
        c = b + an / c;
        c = if c.abs() < tiny { tiny } else { c };
        d = 1.0 / d;
        let delta = d * c;
        h *= delta;
        if (delta - 1.0).abs() < 1e-15 {
            break;
        }
    }
    (-x + a * x.ln() - ln_gamma(a)).exp() * h
}

#[test]
fn the_critical_values_leave_one_in_a_thousand_above_them() {
    // Each table entry, rounded to 3 decimals, against the chi-square survival function
    // computed here: P(X > critical) = 0.001 to within the rounding.
    for (df, &critical) in CRITICAL_P001.iter().enumerate().skip(1) {
        let p = chi_square_survival(df, critical);
        assert!(
            (p / 0.001 - 1.0).abs() < 2e-3,
            "{df} df: P(X > {critical}) = {p}"
        );
    }
    // The survival function itself against closed forms: 2 df is exp(-x / 2), 4 df
    // (1 + x / 2) exp(-x / 2).
    for x in [7.0, 13.8, 30.0] {
        assert!((chi_square_survival(2, x) / (-x / 2.0f64).exp() - 1.0).abs() < 1e-12);
        let four = (1.0 + x / 2.0) * (-x / 2.0f64).exp();
        assert!((chi_square_survival(4, x) / four - 1.0).abs() < 1e-12);
    }
}
