//! Label values: sanitising client-supplied bytes into series keys, escaping them for the
//! exposition, and validating metric and label names.

/// Label values longer than this many bytes are cut (at a character boundary).
pub const MAX_LABEL_VALUE_BYTES: usize = 256;

/// Separates label values inside a series key. 0xFF never occurs in valid UTF-8, and values are
/// made valid UTF-8 before they enter a key, so a key splits back into exactly its values.
pub const SEP: u8 = 0xFF;

/// The label value of every overflow series.
pub const OVERFLOW_VALUE: &str = "__overflow__";

/// Appends `raw` to `out` as a valid-UTF-8 label value of at most [`MAX_LABEL_VALUE_BYTES`]:
/// invalid sequences and NUL become U+FFFD. Never fails.
pub fn sanitize_into(out: &mut Vec<u8>, raw: &[u8]) {
    // Fast path, the common case: short ASCII without NUL is kept as is.
    if raw.len() <= MAX_LABEL_VALUE_BYTES && plain_ascii(raw) {
        out.extend_from_slice(raw);
        return;
    }
    let start = out.len();
    match std::str::from_utf8(raw) {
        Ok(s) if !raw.contains(&0) => push_truncated(out, s),
        _ => {
            let lossy = String::from_utf8_lossy(raw).replace('\0', "\u{FFFD}");
            push_truncated(out, &lossy);
        }
    }
    debug_assert!(out.len() - start <= MAX_LABEL_VALUE_BYTES);
}

/// Is `raw` a label value as it is: what [`sanitize_into`] would append unchanged (short plain
/// ASCII without NUL, its fast path)? Then it can be used in place, without a copy.
#[inline]
pub fn is_clean(raw: &[u8]) -> bool {
    raw.len() <= MAX_LABEL_VALUE_BYTES && plain_ascii(raw)
}

/// Bytes a [`Value`] holds without a heap allocation.
pub const INLINE_VALUE_BYTES: usize = 46;

/// A sanitised label value (see [`sanitize_into`]) that keeps short values in place: a model
/// name set from Lua on every request then costs no allocation (and no free).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Inline {
        len: u8,
        bytes: [u8; INLINE_VALUE_BYTES],
    },
    Heap(Vec<u8>),
}

impl Value {
    /// `raw` sanitised as [`sanitize_into`] does.
    pub fn sanitized(raw: &[u8]) -> Value {
        // The same fast path as sanitize_into: short plain ASCII is kept as it is.
        if raw.len() <= INLINE_VALUE_BYTES && plain_ascii(raw) {
            let mut bytes = [0u8; INLINE_VALUE_BYTES];
            bytes[..raw.len()].copy_from_slice(raw);
            return Value::Inline {
                len: raw.len() as u8,
                bytes,
            };
        }
        let mut v = Vec::with_capacity(raw.len().min(MAX_LABEL_VALUE_BYTES));
        sanitize_into(&mut v, raw);
        Value::Heap(v)
    }

    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Value::Inline { len, bytes } => &bytes[..usize::from(*len).min(INLINE_VALUE_BYTES)],
            Value::Heap(v) => v,
        }
    }
}

/// ASCII without NUL, checked a word at a time (label values are short: this beats the
/// general UTF-8 validation by a wide margin on the hot path).
#[inline]
fn plain_ascii(raw: &[u8]) -> bool {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    // A byte >= 0x80, or a zero byte.
    let bad = |w: &[u8; 8]| {
        let w = u64::from_le_bytes(*w);
        w & HI != 0 || w.wrapping_sub(LO) & !w & HI != 0
    };
    let mut chunks = raw.chunks_exact(8);
    for c in &mut chunks {
        if c.first_chunk::<8>().is_some_and(bad) {
            return false;
        }
    }
    match raw.last_chunk::<8>() {
        // The rest in the last 8 bytes, which overlap the words before (a model's 17 bytes:
        // three words, no byte loop).
        Some(w) if !chunks.remainder().is_empty() => !bad(w),
        _ => chunks.remainder().iter().all(|&b| b != 0 && b < 0x80),
    }
}

/// Is `key` exactly `n` plain-ASCII values (no NUL) joined by [`SEP`]? Every byte with the high
/// bit set must be a separator, and there must be `n - 1` of them (a raw 0xFF inside a value
/// would otherwise pass for one).
fn plain_key(key: &[u8], n: usize) -> bool {
    const LO7: u64 = 0x7F7F_7F7F_7F7F_7F7F;
    const HI: u64 = 0x8080_8080_8080_8080;
    // High bit of each byte that is zero (exact, no borrow between bytes).
    let zero_bytes = |x: u64| !(((x & LO7).wrapping_add(LO7)) | x) & HI;
    let mut seps = 0u32;
    let mut chunks = key.chunks_exact(8);
    for c in &mut chunks {
        let mut b = [0u8; 8];
        b.copy_from_slice(c);
        let w = u64::from_le_bytes(b);
        let ff = zero_bytes(!w);
        if w & HI != ff || zero_bytes(w) != 0 {
            return false;
        }
        seps += ff.count_ones();
    }
    for &b in chunks.remainder() {
        match b {
            SEP => seps += 1,
            1..=0x7f => {}
            _ => return false,
        }
    }
    seps as usize + 1 == n.max(1)
}

fn push_truncated(out: &mut Vec<u8>, s: &str) {
    if s.len() <= MAX_LABEL_VALUE_BYTES {
        out.extend_from_slice(s.as_bytes());
    } else {
        let mut end = MAX_LABEL_VALUE_BYTES;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        out.extend_from_slice(&s.as_bytes()[..end]);
    }
}

/// Builds a series key from label values in the family's declared order.
#[derive(Debug, Default, Clone)]
pub struct KeyBuilder {
    buf: Vec<u8>,
    n: usize,
}

impl KeyBuilder {
    pub fn new() -> Self {
        KeyBuilder {
            buf: Vec::with_capacity(256),
            n: 0,
        }
    }

    pub fn clear(&mut self) {
        self.buf.clear();
        self.n = 0;
    }

    /// Appends one label value (sanitised).
    pub fn push(&mut self, raw: &[u8]) -> &mut Self {
        if self.n > 0 {
            self.buf.push(SEP);
        }
        sanitize_into(&mut self.buf, raw);
        self.n += 1;
        self
    }

    /// Sets the key to these label values. The common case (short ASCII values) is copied and
    /// validated in one word-at-a-time pass over the whole key; anything else is rebuilt value by
    /// value with [`sanitize_into`]. Same result as `clear` + `push` for each value.
    pub fn set(&mut self, values: &[&[u8]]) {
        self.clear();
        let mut long = false;
        for v in values {
            if self.n > 0 {
                self.buf.push(SEP);
            }
            long |= v.len() > MAX_LABEL_VALUE_BYTES;
            self.buf.extend_from_slice(v);
            self.n += 1;
        }
        if long || !plain_key(&self.buf, self.n) {
            self.clear();
            for v in values {
                self.push(v);
            }
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }
}

/// Bytes of the stack buffer the hot path joins keys in first (typical keys are well under it).
pub const SHORT_KEY_BYTES: usize = 128;

/// Bytes of the second, larger stack buffer: any key of up to five label values fits.
pub const STACK_KEY_BYTES: usize = 5 * (MAX_LABEL_VALUE_BYTES + 1) + 8;

/// Raw (unsanitised) label values joined by [`SEP`] in a stack buffer of `N` bytes, zero-padded
/// to whole words: the hot path looks existing series up with it, with no allocation and no
/// validation. That is sound because a stored key is always sanitised and has exactly one
/// separator fewer than its family has labels: raw values that join to the same bytes therefore
/// hold no 0xFF, split at the same places, and are each already a valid label value (their own
/// sanitised form). Raw values that need sanitising never match; they take the [`KeyBuilder`]
/// path.
pub struct StackKey<const N: usize = SHORT_KEY_BYTES> {
    buf: [u8; N],
    len: usize,
    fits: bool,
}

impl<const N: usize> StackKey<N> {
    #[inline]
    pub fn join(values: &[&[u8]]) -> Self {
        let mut k = StackKey {
            buf: [0; N],
            len: 0,
            fits: true,
        };
        for (i, v) in values.iter().enumerate() {
            let mut at = k.len;
            if i > 0 {
                if at >= N {
                    k.fits = false;
                    return k;
                }
                k.buf[at] = SEP;
                at += 1;
            }
            // Room for the value and for the word stores below (which may write past its end).
            if at + v.len() + 16 > N {
                k.fits = false;
                return k;
            }
            put(&mut k.buf, at, v);
            k.len = at + v.len();
        }
        // The stores may have left bytes of a longer word after the end: the padding must be 0.
        let end = k.len;
        k.buf[end..end + 8].copy_from_slice(&[0; 8]);
        k
    }

    /// The key bytes followed by zeros up to a multiple of 8 bytes; `None` if it did not fit.
    #[inline]
    pub fn padded(&self) -> Option<&[u8]> {
        self.fits.then(|| &self.buf[..self.len.div_ceil(8) * 8])
    }

    /// Length of the key in bytes (without the padding).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Copies `v` to `buf[at..]` with one or two word stores when it is short (label values
/// usually are): cheaper than a `memcpy` call. May write zeros up to `at + 16`.
#[inline(always)]
fn put(buf: &mut [u8], at: usize, v: &[u8]) {
    let n = v.len();
    let mut word = |off: usize, w: u64| buf[off..off + 8].copy_from_slice(&w.to_le_bytes());
    if n <= 8 {
        word(at, load_short(v));
    } else if n <= 16 {
        word(at, load8(&v[..8]));
        word(at + n - 8, load8(&v[n - 8..]));
    } else {
        buf[at..at + n].copy_from_slice(v);
    }
}

/// `a == b` with word compares for short slices (header names, label values): cheaper than a
/// `memcmp` call.
#[inline(always)]
pub fn short_eq(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        false
    } else if n <= 8 {
        load_short(a) == load_short(b)
    } else if n <= 16 {
        load8(a) == load8(b) && load8(&a[n - 8..]) == load8(&b[n - 8..])
    } else {
        a == b
    }
}

/// The first and last (up to) 8 bytes of `b` as little-endian words (`[first, 0]` for up to 8
/// bytes): with the length, the whole of a value of at most 16 bytes.
#[inline(always)]
pub fn edge_words(b: &[u8]) -> [u64; 2] {
    let n = b.len();
    if n <= 8 {
        [load_short(b), 0]
    } else {
        [load8(b), load8(&b[n - 8..])]
    }
}

#[inline(always)]
pub(crate) fn load8(b: &[u8]) -> u64 {
    u64::from_le_bytes(b[..8].try_into().unwrap_or_default())
}

/// Up to 8 bytes as a little-endian word, zero-extended (two overlapping loads, no loop).
#[inline(always)]
pub(crate) fn load_short(v: &[u8]) -> u64 {
    let n = v.len();
    if n >= 4 {
        let lo = u64::from(u32::from_le_bytes(v[..4].try_into().unwrap_or_default()));
        let hi = u64::from(u32::from_le_bytes(
            v[n - 4..n].try_into().unwrap_or_default(),
        ));
        lo | (hi << ((n - 4) * 8))
    } else if n > 0 {
        u64::from(v[0])
            | (u64::from(v[n / 2]) << (n / 2 * 8))
            | (u64::from(v[n - 1]) << ((n - 1) * 8))
    } else {
        0
    }
}

/// The key of a family's overflow series: every label value `__overflow__`.
pub fn overflow_key(n_labels: usize) -> Vec<u8> {
    let mut k = KeyBuilder::new();
    for _ in 0..n_labels {
        k.push(OVERFLOW_VALUE.as_bytes());
    }
    k.buf
}

/// Splits a stored key into its label values.
pub fn split_key(key: &[u8]) -> impl Iterator<Item = &[u8]> {
    key.split(|&b| b == SEP)
}

/// Appends a label value escaped for the text exposition format (`\\`, `\"`, `\n`).
#[inline]
pub fn escape_label_value(out: &mut Vec<u8>, v: &[u8]) {
    if !v.iter().any(|&b| b == b'\\' || b == b'"' || b == b'\n') {
        out.extend_from_slice(v);
        return;
    }
    for &b in v {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'"' => out.extend_from_slice(b"\\\""),
            b'\n' => out.extend_from_slice(b"\\n"),
            _ => out.push(b),
        }
    }
}

/// Escapes HELP text (`\\` and `\n`).
pub fn escape_help(out: &mut Vec<u8>, v: &str) {
    for &b in v.as_bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            _ => out.push(b),
        }
    }
}

/// Is `name` a valid metric name (`[a-zA-Z_:][a-zA-Z0-9_:]*`)?
pub fn valid_metric_name(name: &str) -> bool {
    let mut it = name.bytes();
    matches!(it.next(), Some(b'a'..=b'z' | b'A'..=b'Z' | b'_' | b':'))
        && it.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
}

/// Is `name` a valid label name (`[a-zA-Z_][a-zA-Z0-9_]*`, not reserved `__*`, not `le`)?
pub fn valid_label_name(name: &str) -> bool {
    let mut it = name.bytes();
    matches!(it.next(), Some(b'a'..=b'z' | b'A'..=b'Z' | b'_'))
        && it.all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !name.starts_with("__")
        && name != "le"
        && name != "quantile"
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Word by word as byte by byte, at every length and position of a bad byte.
    #[test]
    fn plain_ascii_as_a_byte_loop() {
        for len in 0..40 {
            for at in 0..=len {
                for bad in [0u8, 0x80, 0xFF, b'a'] {
                    let mut raw = vec![b'm'; len];
                    if at < len {
                        raw[at] = bad;
                    }
                    let want = raw.iter().all(|&b| b != 0 && b < 0x80);
                    assert_eq!(plain_ascii(&raw), want, "{raw:?}");
                }
            }
        }
    }

    /// A value is what sanitize_into makes of the same bytes, in place or not.
    #[test]
    fn values_are_sanitized_like_label_values() {
        let long = "m".repeat(300);
        for raw in [
            &b""[..],
            b"gpt-4o",
            b"claude-3-5-sonnet-20241022",
            &[b'x'; INLINE_VALUE_BYTES],
            &[b'x'; INLINE_VALUE_BYTES + 1],
            b"caf\xc3\xa9",
            b"bad\xffutf8",
            b"nul\0inside",
            long.as_bytes(),
        ] {
            let mut want = Vec::new();
            sanitize_into(&mut want, raw);
            let v = Value::sanitized(raw);
            assert_eq!(v.as_bytes(), &want[..], "{raw:?}");
            let short = raw.len() <= INLINE_VALUE_BYTES && raw.is_ascii() && !raw.contains(&0);
            assert_eq!(matches!(v, Value::Inline { .. }), short, "{raw:?}");
        }
    }

    fn clean(raw: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        sanitize_into(&mut v, raw);
        v
    }

    #[test]
    fn sanitize_keeps_valid_utf8() {
        assert_eq!(clean(b"wechat"), b"wechat");
        assert_eq!(clean("命名空间".as_bytes()), "命名空间".as_bytes());
        assert_eq!(clean(b""), b"");
    }

    #[test]
    fn sanitize_repairs_invalid_utf8_and_nul() {
        assert_eq!(clean(b"a\xffb"), "a\u{FFFD}b".as_bytes());
        assert_eq!(clean(b"a\0b"), "a\u{FFFD}b".as_bytes());
        assert!(std::str::from_utf8(&clean(b"\xc3\x28\xa0\xa1")).is_ok());
    }

    #[test]
    fn sanitize_truncates_at_char_boundary() {
        let long = "é".repeat(200); // 400 bytes, 2 per char
        let out = clean(long.as_bytes());
        assert_eq!(out.len(), 256);
        assert!(std::str::from_utf8(&out).is_ok());
        let odd = format!("a{}", "é".repeat(200)); // boundary falls inside a char at 256
        let out = clean(odd.as_bytes());
        assert_eq!(out.len(), 255);
        assert!(std::str::from_utf8(&out).is_ok());
        assert_eq!(clean(&[b'x'; 1 << 20]).len(), 256);
    }

    #[test]
    fn set_equals_push_for_every_kind_of_value() {
        let long = vec![b'x'; 300];
        let cases: Vec<Vec<&[u8]>> = vec![
            vec![b"GET", b"/v1/", b"200", b"tenant", b""],
            vec![b"", b"", b""],
            vec![b"a\xffb", b"c"],
            vec![b"\xff", b"\xff\xff"],
            vec![b"a\0b", b"x"],
            vec![b"caf\xc3\xa9", b"ok"],
            vec![&long, b"y"],
            vec![b"exactly8", b"12345678", b"1234567"],
            vec![b"x"],
            vec![b""],
        ];
        for values in cases {
            let mut a = KeyBuilder::new();
            a.set(&values);
            let mut b = KeyBuilder::new();
            for v in &values {
                b.push(v);
            }
            assert_eq!(a.as_bytes(), b.as_bytes(), "{values:?}");
            assert_eq!(a.len(), values.len());
            assert_eq!(split_key(a.as_bytes()).count(), values.len());
        }
    }

    #[test]
    fn keys_split_back_into_values() {
        let mut k = KeyBuilder::new();
        k.push(b"GET").push(b"").push(b"a\xffb");
        let parts: Vec<_> = split_key(k.as_bytes()).collect();
        assert_eq!(parts, vec![&b"GET"[..], b"", "a\u{FFFD}b".as_bytes()]);
        assert_eq!(k.len(), 3);
        assert_eq!(split_key(&overflow_key(2)).count(), 2);
    }

    #[test]
    fn escaping_follows_the_text_format() {
        let mut out = Vec::new();
        escape_label_value(&mut out, b"a\\b\"c\nd");
        assert_eq!(out, b"a\\\\b\\\"c\\nd");
        let mut h = Vec::new();
        escape_help(&mut h, "x\\y\nz\"");
        assert_eq!(h, b"x\\\\y\\nz\"");
    }

    #[test]
    fn names_are_validated() {
        assert!(valid_metric_name("model_accuracy_percent"));
        assert!(valid_metric_name("a:b_c9"));
        assert!(!valid_metric_name("9abc"));
        assert!(!valid_metric_name("a-b"));
        assert!(!valid_metric_name(""));
        assert!(valid_label_name("task_type"));
        assert!(!valid_label_name("__name"));
        assert!(!valid_label_name("le"));
        assert!(!valid_label_name("a b"));
    }
}

/// If a label's configured value is exactly one request-header variable (`$http_x_namespace`
/// or `${http_x_namespace}`), the variable's name after `http_`, lowercased: the module then
/// reads the header directly instead of through nginx's variable machinery.
pub fn header_variable(source: &[u8]) -> Option<Vec<u8>> {
    let name = source.strip_prefix(b"$")?;
    let name = match name.strip_prefix(b"{") {
        Some(inner) => inner.strip_suffix(b"}")?,
        None => name,
    };
    let name = name.to_ascii_lowercase();
    let suffix = name.strip_prefix(b"http_")?;
    if suffix.is_empty()
        || !suffix
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'_')
    {
        return None;
    }
    Some(suffix.to_vec())
}

/// If a label's configured value is exactly one `$arg_*` variable, its argument name,
/// lowercased (`$arg_ns` -> `ns`): the module then reads the query string itself
/// ([`query_arg`]) instead of asking nginx for the variable.
pub fn arg_variable(source: &[u8]) -> Option<Vec<u8>> {
    let name = single_variable(source)?.to_ascii_lowercase();
    let arg = name.strip_prefix(b"arg_")?;
    (!arg.is_empty()).then(|| arg.to_vec())
}

/// The value of the query argument `name` in `args` (the query string without `?`), exactly as
/// nginx's `$arg_name` gives it (`ngx_http_arg`): the first `name=` (name compared without
/// case) at the start or after a `&`, up to the next `&`; the bytes as sent (not unescaped).
/// `None` when there is none. (The module keeps an [`ArgName`] per label instead.)
pub fn query_arg<'a>(args: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    match ArgName::new(name) {
        Some(a) => a.find(args),
        None => arg_anywhere(args, name),
    }
}

/// `ngx_http_arg` as nginx writes it: every position where the name occurs, until one is at
/// the start of an argument and followed by `=`. For names [`ArgName`] cannot hold.
#[cold]
fn arg_anywhere<'a>(args: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let n = name.len();
    if n == 0 {
        return None;
    }
    // A match needs a byte after it (the `=`).
    for p in 0..args.len().saturating_sub(n) {
        if args[p..p + n].eq_ignore_ascii_case(name)
            && (p == 0 || args[p - 1] == b'&')
            && args[p + n] == b'='
        {
            let end = args[p..].iter().position(|&b| b == b'&');
            return Some(&args[p + n + 1..end.map_or(args.len(), |e| p + e)]);
        }
    }
    None
}

/// A query argument's name as the hot path looks for it (made once, from the configuration):
/// `name=`, lowercased, as two little-endian words and the masks of their bytes that count.
/// nginx searches the whole query string for the name, then checks what precedes it; only a
/// name at the start of an argument can match, so [`ArgName::find`] compares each argument's
/// start with these words (one or two compares) and skips to the next `&` a word at a time.
#[derive(Clone, Copy, Default)]
pub struct ArgName {
    words: [u64; 2],
    masks: [u64; 2],
    /// The name's length (0: none).
    len: usize,
}

impl ArgName {
    /// `None` for a name it cannot hold: empty, longer than 15 bytes, or with a `&` (whose
    /// value nginx ends at that `&`).
    pub fn new(name: &[u8]) -> Option<ArgName> {
        let n = name.len();
        if n == 0 || n > 15 || name.contains(&b'&') {
            return None;
        }
        let mut pat = [0u8; 16];
        pat[..n].copy_from_slice(&name.to_ascii_lowercase());
        pat[n] = b'=';
        let mut a = ArgName {
            len: n,
            ..ArgName::default()
        };
        for (i, chunk) in pat.chunks(8).enumerate() {
            a.words[i] = load8(chunk);
            let used = (n + 1).saturating_sub(i * 8).min(8);
            a.masks[i] = if used == 8 {
                u64::MAX
            } else {
                (1u64 << (8 * used)) - 1
            };
        }
        Some(a)
    }

    /// Does it hold a name (not the default)?
    pub fn is_set(&self) -> bool {
        self.len != 0
    }

    /// The argument's value in `args`, as [`query_arg`] says.
    #[inline(always)]
    pub fn find<'a>(&self, args: &'a [u8]) -> Option<&'a [u8]> {
        let n = self.len;
        let mut s = 0;
        // A match needs a byte after the name (the `=`).
        while s + n < args.len() {
            if lower_word(word_at(args, s)) & self.masks[0] == self.words[0]
                && (self.masks[1] == 0
                    || lower_word(word_at(args, s + 8)) & self.masks[1] == self.words[1])
            {
                let value = s + n + 1;
                return Some(&args[value..next_amp(args, value)]);
            }
            s = next_amp(args, s) + 1;
        }
        None
    }

    /// The values of two arguments, `self`'s and `other`'s, each as [`find`](Self::find) gives
    /// it, in one walk of `args`: each argument's start is compared with both names, and the
    /// walk stops once both are found.
    #[inline(always)]
    pub fn find2<'a>(
        &self,
        other: &ArgName,
        args: &'a [u8],
    ) -> (Option<&'a [u8]>, Option<&'a [u8]>) {
        let (mut a, mut b) = (None, None);
        let mut s = 0;
        while s < args.len() {
            let w = lower_word(word_at(args, s));
            // Where the argument ends, once a name matched (its value runs to the next `&`).
            let mut end = None;
            if a.is_none() && self.starts(args, s, w) {
                let (v, e) = (s + self.len + 1, next_amp(args, s + self.len + 1));
                a = Some(&args[v..e]);
                end = Some(e);
            }
            if b.is_none() && other.starts(args, s, w) {
                let (v, e) = (s + other.len + 1, next_amp(args, s + other.len + 1));
                b = Some(&args[v..e]);
                end = Some(e);
            }
            if a.is_some() && b.is_some() {
                break;
            }
            s = end.unwrap_or_else(|| next_amp(args, s)) + 1;
        }
        (a, b)
    }

    /// Does the argument at `s` (whose first word, lowercased, is `w`) have this name?
    #[inline(always)]
    fn starts(&self, args: &[u8], s: usize, w: u64) -> bool {
        s + self.len < args.len()
            && w & self.masks[0] == self.words[0]
            && (self.masks[1] == 0
                || lower_word(word_at(args, s + 8)) & self.masks[1] == self.words[1])
    }
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The 8 bytes of `b` from `at` as a little-endian word, zero-extended past its end. Near the
/// end of a string of at least 8 bytes, its last word shifted down (one load, no byte loop).
#[inline(always)]
fn word_at(b: &[u8], at: usize) -> u64 {
    let rest = b.get(at..).unwrap_or_default();
    if rest.len() >= 8 {
        load8(rest)
    } else if b.len() >= 8 && !rest.is_empty() {
        load8(&b[b.len() - 8..]) >> (8 * (8 - rest.len()))
    } else {
        load_short(rest)
    }
}

/// A word with its bytes `A`..=`Z` lowercased, the others as they are.
#[inline(always)]
fn lower_word(w: u64) -> u64 {
    let low7 = w & !HIGHS;
    // Per byte (no carry between bytes): the top bit says low7 >= 'A', resp. low7 > 'Z'.
    let from_a = low7 + ONES * (0x80 - b'A' as u64);
    let past_z = low7 + ONES * (0x7f - b'Z' as u64);
    let upper = from_a & !past_z & !w & HIGHS;
    w | (upper >> 2)
}

/// The index of the first `&` in `b` from `at`, else `b.len()`: a word at a time (the lowest
/// zero byte of `x` is exactly where `(x - 1s) & !x` has its lowest top bit), the last few
/// bytes as one zero-extended word (a byte past the end is 0, never `&`).
#[inline(always)]
fn next_amp(b: &[u8], mut at: usize) -> usize {
    while b.len().saturating_sub(at) >= 8 {
        if let Some(i) = amp_in(load8(&b[at..])) {
            return at + i;
        }
        at += 8;
    }
    match amp_in(word_at(b, at)) {
        Some(i) => at + i,
        None => b.len(),
    }
}

/// The index of the first `&` byte of a little-endian word.
#[inline(always)]
fn amp_in(w: u64) -> Option<usize> {
    let x = w ^ (ONES * b'&' as u64);
    let zero = x.wrapping_sub(ONES) & !x & HIGHS;
    (zero != 0).then(|| (zero.trailing_zeros() / 8) as usize)
}

/// If a label's configured value is exactly one variable (`$arg_ns`, `${upstream_addr}`), its
/// name: the module then reads it as an indexed variable (evaluated once per request, shared by
/// every label that names it) instead of running a complex value's script.
pub fn single_variable(source: &[u8]) -> Option<&[u8]> {
    let name = source.strip_prefix(b"$")?;
    let name = match name.strip_prefix(b"{") {
        Some(inner) => inner.strip_suffix(b"}")?,
        None => name,
    };
    let ok = !name.is_empty() && name.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_');
    ok.then_some(name)
}

/// Does a header (its lowercased name) match a `$http_*` variable suffix? As nginx does, `-`
/// in the header name matches `_` in the variable name.
#[inline]
pub fn header_matches(lowcase_key: &[u8], var_suffix: &[u8]) -> bool {
    lowcase_key.len() == var_suffix.len()
        && lowcase_key
            .iter()
            .zip(var_suffix)
            .all(|(&h, &v)| h == v || (h == b'-' && v == b'_'))
}

#[cfg(test)]
mod variable_tests {
    use super::single_variable;

    #[test]
    fn only_one_whole_variable_is_a_single_variable() {
        assert_eq!(single_variable(b"$arg_ns"), Some(&b"arg_ns"[..]));
        assert_eq!(single_variable(b"${arg_model}"), Some(&b"arg_model"[..]));
        for not in [
            &b"$arg_ns-x"[..],
            b"x$arg_ns",
            b"$",
            b"${}",
            b"${arg",
            b"$a$b",
            b"plain",
            b"",
        ] {
            assert_eq!(
                single_variable(not),
                None,
                "{:?}",
                String::from_utf8_lossy(not)
            );
        }
    }
}

#[cfg(test)]
mod header_tests {
    use super::*;

    /// `ngx_http_arg` as nginx writes it, position by position.
    fn nginx_arg<'a>(args: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
        let n = name.len();
        for p in 0..args.len() {
            if p + n >= args.len() {
                return None;
            }
            let matches = args[p..p + n]
                .iter()
                .zip(name)
                .all(|(a, b)| a.to_ascii_lowercase() == *b);
            if matches && (p == 0 || args[p - 1] == b'&') && args[p + n] == b'=' {
                let rest = &args[p..];
                let end = rest.iter().position(|&b| b == b'&').unwrap_or(rest.len());
                return Some(&args[p + n + 1..p + end]);
            }
        }
        None
    }

    #[test]
    fn query_args_read_as_nginx_reads_them() {
        type Case<'a> = (&'a [u8], &'a [u8], Option<&'a [u8]>);
        let cases: &[Case] = &[
            (b"ns=a&model=gpt-4o", b"ns", Some(b"a")),
            (b"ns=a&model=gpt-4o", b"model", Some(b"gpt-4o")),
            (b"NS=a", b"ns", Some(b"a")),
            (b"xns=a&ns=b", b"ns", Some(b"b")),
            (b"a=ns=1&ns=2", b"ns", Some(b"2")),
            (b"ns", b"ns", None),
            (b"ns=", b"ns", Some(b"")),
            (b"ns=1&ns=2", b"ns", Some(b"1")),
            (b"n=1", b"ns", None),
            (b"", b"ns", None),
            (b"ns=%20x&", b"ns", Some(b"%20x")),
            (b"&ns=z", b"ns", Some(b"z")),
        ];
        for (args, name, want) in cases {
            assert_eq!(
                query_arg(args, name),
                *want,
                "{:?}",
                String::from_utf8_lossy(args)
            );
            assert_eq!(nginx_arg(args, name), *want);
        }
        // Random query strings over a small alphabet: the same answer as nginx's loop.
        let mut seed = 11u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as usize
        };
        // The alphabet has the bytes around the letters' ranges (`@`, `[`, a backtick, `{`) and
        // high bytes whose low 7 bits are letters (0xC1: 'A' + 0x80), which must not fold.
        let alphabet = b"nsNS=&axAX@[`{\xc1\xce\xd3\xee\xf3\xdb&=";
        // Half the strings are made of pieces of the names (in any case), so that long names,
        // and names followed or not by `=`, occur at the start of arguments.
        let pieces: &[&[u8]] = &[
            b"ns",
            b"NS",
            b"nS",
            b"nsns",
            b"NsnS",
            b"nsnsnsn",
            b"nsnsnsnsnsnsnsn",
            b"ansnsnsn",
            b"=",
            b"=",
            b"&",
            b"&",
            b"a",
            b"x",
            b"\xc1",
            b"@",
            b"\xee",
        ];
        for round in 0..300_000 {
            let mut args: Vec<u8> = Vec::new();
            if round % 2 == 0 {
                for _ in 0..next() % 10 {
                    args.extend_from_slice(pieces[next() % pieces.len()]);
                }
            } else {
                let len = next() % if round % 4 == 1 { 48 } else { 24 };
                args.extend((0..len).map(|_| alphabet[next() % alphabet.len()]));
            }
            for name in [
                &b"ns"[..],
                b"n",
                b"s",
                b"nsa",
                b"nsnsnsn",
                b"nsnsnsns",
                b"nsnsnsnsa",
                b"nsnsnsnsnsnsnsn",
                b"ansnsnsnsnsnsnsn",
                b"a@x",
                b"n\xee",
                b"\xf3s=",
            ] {
                assert_eq!(
                    query_arg(&args, name),
                    nginx_arg(&args, name),
                    "{args:?} {name:?}"
                );
            }
            // Two names read in one walk: each as nginx reads it alone (the same name twice
            // included).
            let held = [
                &b"ns"[..],
                b"n",
                b"s",
                b"nsa",
                b"nsnsnsns",
                b"nsnsnsnsa",
                b"a@x",
            ];
            let (x, y) = (held[next() % held.len()], held[next() % held.len()]);
            let (ax, ay) = (ArgName::new(x).unwrap(), ArgName::new(y).unwrap());
            assert_eq!(
                ax.find2(&ay, &args),
                (nginx_arg(&args, x), nginx_arg(&args, y)),
                "{args:?} {x:?} {y:?}"
            );
        }
        assert_eq!(arg_variable(b"$arg_NS"), Some(b"ns".to_vec()));
        assert_eq!(arg_variable(b"${arg_model}"), Some(b"model".to_vec()));
        assert_eq!(arg_variable(b"$arg_"), None);
        assert_eq!(arg_variable(b"$http_x"), None);
        assert_eq!(arg_variable(b"x$arg_ns"), None);
    }

    #[test]
    fn header_variables_are_recognised() {
        assert_eq!(
            header_variable(b"$http_x_namespace"),
            Some(b"x_namespace".to_vec())
        );
        assert_eq!(
            header_variable(b"${http_X_Model}"),
            Some(b"x_model".to_vec())
        );
        assert_eq!(header_variable(b"$http_"), None);
        assert_eq!(header_variable(b"$arg_ns"), None);
        assert_eq!(header_variable(b"$http_a$http_b"), None);
        assert_eq!(header_variable(b"ns-$http_a"), None);
        assert_eq!(header_variable(b"${http_a"), None);
        assert_eq!(header_variable(b"static"), None);
    }

    #[test]
    fn headers_match_like_nginx() {
        assert!(header_matches(b"x-namespace", b"x_namespace"));
        assert!(header_matches(b"x_namespace", b"x_namespace"));
        assert!(!header_matches(b"x-namespaces", b"x_namespace"));
        assert!(!header_matches(b"y-namespace", b"x_namespace"));
        assert!(!header_matches(b"x_namespace", b"x-namespace"));
    }
}
