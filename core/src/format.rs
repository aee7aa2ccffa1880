//! The two exposition formats `/metrics` speaks, and content negotiation between them from a
//! scraper's `Accept` header.

/// An exposition format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// Prometheus text format 0.0.4: what a bare `curl` gets.
    #[default]
    Text,
    /// OpenMetrics 1.0.0 text: `_created` samples, units, exemplars, `# EOF`.
    OpenMetrics,
}

impl Format {
    /// The response's `Content-Type`.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => crate::expo::CONTENT_TYPE,
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }

    /// The format an `Accept` header value asks for: the acceptable media range with the
    /// highest quality (the first one listed among equals). OpenMetrics is chosen for
    /// `application/openmetrics-text` without a version or with version 1.0.0 (the one
    /// rendered); the text format for `text/plain` (no version or 0.0.4), `text/*` and `*/*`.
    /// Anything else, or nothing acceptable, gets the text format.
    pub fn negotiate(accept: &[u8]) -> Format {
        let mut best: Option<(u32, Format)> = None;
        for range in accept.split(|&b| b == b',') {
            let Some((format, q)) = media_range(range) else {
                continue;
            };
            if q > 0 && best.is_none_or(|(bq, _)| q > bq) {
                best = Some((q, format));
            }
        }
        best.map_or(Format::Text, |(_, f)| f)
    }
}

/// One media range of an `Accept` header: the format it selects and its quality in
/// thousandths; `None` when it selects neither format.
fn media_range(range: &[u8]) -> Option<(Format, u32)> {
    let mut parts = range.split(|&b| b == b';');
    let media = parts.next()?.trim_ascii();
    let mut version: Option<&[u8]> = None;
    let mut q = 1000;
    for p in parts {
        let Some(eq) = p.iter().position(|&b| b == b'=') else {
            continue;
        };
        let (name, value) = (p[..eq].trim_ascii(), p[eq + 1..].trim_ascii());
        let value = value
            .strip_prefix(b"\"")
            .and_then(|v| v.strip_suffix(b"\""))
            .unwrap_or(value);
        if name.eq_ignore_ascii_case(b"q") {
            q = quality(value)?;
        } else if name.eq_ignore_ascii_case(b"version") {
            version = Some(value);
        }
    }
    let is = |m: &[u8]| media.eq_ignore_ascii_case(m);
    let format = if is(b"application/openmetrics-text") {
        match version {
            None | Some(b"1.0.0") => Format::OpenMetrics,
            Some(_) => return None,
        }
    } else if is(b"text/plain") {
        match version {
            None | Some(b"0.0.4") => Format::Text,
            Some(_) => return None,
        }
    } else if is(b"*/*") || is(b"text/*") {
        Format::Text
    } else {
        return None;
    };
    Some((format, q))
}

/// An RFC 9110 qvalue (`0`, `0.5`, `1.000`) in thousandths; `None` if malformed.
fn quality(v: &[u8]) -> Option<u32> {
    let (int, frac) = match v.iter().position(|&b| b == b'.') {
        Some(dot) => (&v[..dot], &v[dot + 1..]),
        None => (v, &b""[..]),
    };
    if int.len() != 1 || frac.len() > 3 || !frac.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut q = match int[0] {
        b'0' => 0,
        b'1' => 1000,
        _ => return None,
    };
    for (i, d) in frac.iter().enumerate() {
        q += u32::from(d - b'0') * [100, 10, 1][i];
    }
    (q <= 1000).then_some(q)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_gets_openmetrics_and_curl_gets_text() {
        // What Prometheus 2.42 sends by default.
        let prom = b"application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(prom), Format::OpenMetrics);
        assert_eq!(Format::negotiate(b"*/*"), Format::Text);
        assert_eq!(Format::negotiate(b""), Format::Text);
        assert_eq!(Format::negotiate(b"text/plain"), Format::Text);
        assert_eq!(
            Format::negotiate(b"application/openmetrics-text"),
            Format::OpenMetrics
        );
        assert_eq!(
            Format::negotiate(b"Application/OpenMetrics-Text; Version=\"1.0.0\"; charset=utf-8"),
            Format::OpenMetrics
        );
    }

    #[test]
    fn quality_decides_then_order() {
        assert_eq!(
            Format::negotiate(b"application/openmetrics-text;q=0.5, text/plain;q=0.9"),
            Format::Text
        );
        assert_eq!(
            Format::negotiate(b"text/plain;q=0.5, application/openmetrics-text;q=0.9"),
            Format::OpenMetrics
        );
        assert_eq!(
            Format::negotiate(b"text/plain, application/openmetrics-text"),
            Format::Text
        );
        assert_eq!(
            Format::negotiate(b"application/openmetrics-text, text/plain"),
            Format::OpenMetrics
        );
        // q=0 means "not acceptable".
        assert_eq!(
            Format::negotiate(b"application/openmetrics-text;q=0, */*;q=0.1"),
            Format::Text
        );
    }

    #[test]
    fn versions_and_types_not_rendered_are_not_chosen() {
        assert_eq!(
            Format::negotiate(b"application/openmetrics-text;version=0.0.1"),
            Format::Text
        );
        assert_eq!(
            Format::negotiate(b"application/openmetrics-text;version=2.0.0, text/plain;q=0.1"),
            Format::Text
        );
        assert_eq!(Format::negotiate(b"application/json"), Format::Text);
        assert_eq!(
            Format::negotiate(b"application/openmetrics-text;q=banana"),
            Format::Text
        );
        assert_eq!(
            Format::negotiate(b"application/openmetrics-text;q=1.5"),
            Format::Text
        );
        assert_eq!(Format::negotiate(b",,;;=,\xff\x00"), Format::Text);
    }

    #[test]
    fn qualities() {
        assert_eq!(quality(b"1"), Some(1000));
        assert_eq!(quality(b"0.75"), Some(750));
        assert_eq!(quality(b"0.001"), Some(1));
        assert_eq!(quality(b"1.000"), Some(1000));
        assert_eq!(quality(b"1.001"), None);
        assert_eq!(quality(b"0.0001"), None);
        assert_eq!(quality(b""), None);
        assert_eq!(quality(b".5"), None);
    }
}
