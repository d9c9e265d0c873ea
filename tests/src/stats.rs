//! Summaries of timed samples, shared by the benchmark examples.

/// The median; NaN for no samples.
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The smallest sample; NaN for no samples.
pub fn min(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::NAN, f64::min)
}

/// The largest sample; NaN for no samples.
pub fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::NAN, f64::max)
}

/// `median M U  min A  max B`, each with `decimals` decimals, `unit` after the median.
pub fn summary(values: &[f64], unit: &str, decimals: usize) -> String {
    format!(
        "median {:>7.d$} {unit}  min {:>7.d$}  max {:>7.d$}",
        median(values),
        min(values),
        max(values),
        d = decimals
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_min_max_and_summary() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        assert_eq!((min(&[2.0, 1.0]), max(&[2.0, 1.0])), (1.0, 2.0));
        assert_eq!(
            summary(&[1.0, 2.0, 3.0], "s", 3),
            "median   2.000 s  min   1.000  max   3.000"
        );
    }
}
