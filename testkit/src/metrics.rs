//! The samples of one series in a Prometheus text exposition (a `/metrics` page of the API
//! server, a controller or an operator), for tests and benches that count requests.
//!
//! Hand-written rather than a parser crate: the tests read counters and sums whose lines are
//! `series{labels} value`, nothing of the format's types, help or escaping.

/// One sample: its labels as exposed and its value.
#[derive(Debug, Clone, Copy)]
pub struct Sample<'a> {
    labels: &'a str,
    /// The sample's value (counters are exposed as floats: `12`, `1.2e+06`).
    pub value: f64,
}

impl<'a> Sample<'a> {
    /// The value of the label `name`, when the sample has it.
    pub fn label(&self, name: &str) -> Option<&'a str> {
        // Pairs are `name="value"`, separated by commas: split after each closing quote.
        self.labels.split("\",").find_map(|pair| {
            let value = pair.trim().strip_prefix(name)?.strip_prefix("=\"")?;
            Some(value.strip_suffix('"').unwrap_or(value))
        })
    }
}

/// The samples of `series` in `text`, in order; lines of other series, comments and lines that
/// do not parse are skipped.
///
/// ```
/// let text = "# TYPE apiserver_request_total counter\n\
///     apiserver_request_total{resource=\"pods\",verb=\"GET\"} 12\n\
///     apiserver_request_total{resource=\"pods\",verb=\"LIST\"} 3\n\
///     apiserver_request_duration_seconds_sum{resource=\"pods\",verb=\"GET\"} 0.5\n";
/// let gets: f64 = cuebe_testkit::metrics::samples(text, "apiserver_request_total")
///     .filter(|s| s.label("verb") == Some("GET"))
///     .map(|s| s.value)
///     .sum();
/// assert_eq!(gets, 12.0);
/// ```
pub fn samples<'a>(text: &'a str, series: &'a str) -> impl Iterator<Item = Sample<'a>> + 'a {
    text.lines().filter_map(move |line| {
        let rest = line.strip_prefix(series)?.strip_prefix('{')?;
        let (labels, value) = rest.rsplit_once('}')?;
        // A timestamp may follow the value.
        let value = value.split_whitespace().next()?.parse().ok()?;
        Some(Sample { labels, value })
    })
}

#[cfg(test)]
mod tests {
    use super::samples;

    #[test]
    fn labels_values_and_what_is_skipped() {
        let text = "# HELP x_total what\n\
            x_total{a=\"1\",verb=\"APPLY\",subresource=\"\"} 4 1700000000\n\
            x_total_other{verb=\"GET\"} 9\n\
            x_total{verb=\"GET\"} not-a-number\n\
            x_total{verb=\"PUT\",resource=\"a,b\"} 1.5e+01\n";
        let found: Vec<_> = samples(text, "x_total").collect();
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].label("verb"), Some("APPLY"));
        assert_eq!(found[0].label("subresource"), Some(""));
        assert_eq!(found[0].label("missing"), None);
        assert_eq!(found[0].value, 4.0);
        assert_eq!(found[1].label("resource"), Some("a,b"));
        assert_eq!(found[1].value, 15.0);
    }
}
