//! The reader's byte searches: the walk's (`whole.rs`, [`Scanner::feed_body`](super::Scanner):
//! the next token after whitespace, the end of a string, the end of a skipped container), the
//! resumable scanner's (the next quote or backslash in a string, the next quote or bracket in a
//! skipped container), and the settled streams' (a `"u` that may start a usage key, the common
//! prefix or first difference of two usage tails). On x86-64
//! a step is a few SSE2 compares over 16 bytes gathered into a bitmask (SSE2 is in the x86-64
//! baseline; the intrinsics come through `safe_arch`, as this crate has no `unsafe`), so a run
//! of indentation, a key or a short string costs one step instead of a loop over its bytes; a
//! longer string goes on 64 bytes a step (one mask test for four compares), and past 272 bytes
//! with `memchr2`. The last bytes of the buffer (fewer than
//! 16), and every byte on other targets, go the scalar way, which is also the tests' reference.
//!
//! Nothing is classified ahead of the walk: each search starts where the walk is, outside any
//! string, and reads strings as the scanner does (a backslash in a string makes the next byte
//! part of it; outside strings a backslash is an ordinary byte). Only a skipped container is
//! read in 64-byte steps with state carried from step to step (see [`skip`]).

fn is_ws(c: u8) -> bool {
    matches!(c, b' ' | b'\n' | b'\r' | b'\t')
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use safe_arch::{
        bitand_m128i, bitor_m128i, cmp_eq_mask_i8_m128i, load_unaligned_m128i, m128i,
        move_mask_i8_m128i, set_splat_i8_m128i,
    };

    /// The 16 bytes at `i`, when there are that many.
    #[inline(always)]
    pub(super) fn load(b: &[u8], i: usize) -> Option<m128i> {
        b.get(i..)?.first_chunk::<16>().map(load_unaligned_m128i)
    }

    #[inline(always)]
    fn eq(v: m128i, c: u8) -> m128i {
        cmp_eq_mask_i8_m128i(v, set_splat_i8_m128i(c as i8))
    }

    #[inline(always)]
    fn bits(m: m128i) -> u32 {
        move_mask_i8_m128i(m) as u32 & 0xFFFF
    }

    /// Bytes that are not JSON whitespace: ` `, `\n`, and `\t`/`\r` together (`c | 4 == '\r'`
    /// holds for exactly those two).
    #[inline(always)]
    pub(super) fn not_ws(v: m128i) -> u32 {
        let four = set_splat_i8_m128i(4);
        let ws = bitor_m128i(
            bitor_m128i(eq(v, b' '), eq(v, b'\n')),
            eq(bitor_m128i(v, four), b'\r'),
        );
        !bits(ws) & 0xFFFF
    }

    /// Bit `k`: a `"` at `i + k` followed by a `u` (the 17 bytes at `i` must exist).
    #[inline(always)]
    pub(super) fn quote_u(b: &[u8], i: usize) -> Option<u32> {
        Some(bits(eq(load(b, i)?, b'"')) & bits(eq(load(b, i + 1)?, b'u')))
    }

    /// Bit `k`: byte `k` of `a` and of `b` are equal.
    #[inline(always)]
    pub(super) fn same(a: m128i, b: m128i) -> u32 {
        bits(cmp_eq_mask_i8_m128i(a, b))
    }

    /// `x == y` for runs of one length of at least 16 bytes: 16 bytes a step, the last step
    /// overlapping, the steps' masks gathered once.
    #[inline(always)]
    pub(super) fn equal(x: &[u8], y: &[u8]) -> bool {
        let (Some(xf), Some(yf), Some(xl), Some(yl)) = (
            x.first_chunk::<16>(),
            y.first_chunk::<16>(),
            x.last_chunk::<16>(),
            y.last_chunk::<16>(),
        ) else {
            return false;
        };
        // The first and the last 16 bytes (all of a run up to 32 bytes), then the middle.
        let mut all = bitand_m128i(
            cmp_eq_mask_i8_m128i(load_unaligned_m128i(xf), load_unaligned_m128i(yf)),
            cmp_eq_mask_i8_m128i(load_unaligned_m128i(xl), load_unaligned_m128i(yl)),
        );
        if x.len() > 32 {
            let (mut xs, mut ys) = (&x[16..], &y[16..]);
            while let (Some((a, xr)), Some((c, yr))) =
                (xs.split_first_chunk::<16>(), ys.split_first_chunk::<16>())
            {
                let e = cmp_eq_mask_i8_m128i(load_unaligned_m128i(a), load_unaligned_m128i(c));
                all = bitand_m128i(all, e);
                (xs, ys) = (xr, yr);
            }
        }
        bits(all) == 0xFFFF
    }

    /// `"` and `\\` apart.
    #[inline(always)]
    pub(super) fn quotes_and_bs(v: m128i) -> (u32, u32) {
        (bits(eq(v, b'"')), bits(eq(v, b'\\')))
    }

    /// `"` and `\`.
    #[inline(always)]
    pub(super) fn quote_or_bs(v: m128i) -> u32 {
        bits(bitor_m128i(eq(v, b'"'), eq(v, b'\\')))
    }

    /// Bit `k`: a `"` or `\` at `i + k`, over the 64 bytes at `i` (when there are that many).
    /// One mask test for the four 16-byte parts; gathered only when there is one.
    #[inline(always)]
    pub(super) fn quote_or_bs_64(b: &[u8], i: usize) -> Option<u64> {
        let chunk = b.get(i..)?.first_chunk::<64>()?;
        let (a, rest) = chunk.split_first_chunk::<16>()?;
        let (b, rest) = rest.split_first_chunk::<16>()?;
        let (c, rest) = rest.split_first_chunk::<16>()?;
        let d = rest.first_chunk::<16>()?;
        let m = [a, b, c, d].map(|p| {
            let v = load_unaligned_m128i(p);
            bitor_m128i(eq(v, b'"'), eq(v, b'\\'))
        });
        if bits(bitor_m128i(
            bitor_m128i(m[0], m[1]),
            bitor_m128i(m[2], m[3]),
        )) == 0
        {
            return Some(0);
        }
        let w = m.map(|m| u64::from(bits(m)));
        Some(w[0] | w[1] << 16 | w[2] << 32 | w[3] << 48)
    }

    /// Quotes, backslashes and brackets of 64 bytes (`c | 0x20` is `{` exactly for `[` and
    /// `{`, `}` for `]` and `}`). Backslashes are rare: gathered only when there is one.
    #[inline(always)]
    pub(super) fn block(chunk: &[u8; 64]) -> super::Block {
        let (a, rest) = chunk.split_first_chunk::<16>().unwrap_or((&[0; 16], &[]));
        let (b, rest) = rest.split_first_chunk::<16>().unwrap_or((&[0; 16], &[]));
        let (c, rest) = rest.split_first_chunk::<16>().unwrap_or((&[0; 16], &[]));
        let d = rest.first_chunk::<16>().unwrap_or(&[0; 16]);
        let v = [a, b, c, d].map(load_unaligned_m128i);
        let gather = |m: [m128i; 4]| {
            let w = m.map(|m| u64::from(bits(m)));
            w[0] | w[1] << 16 | w[2] << 32 | w[3] << 48
        };
        let bs = v.map(|v| eq(v, b'\\'));
        let any_bs = bitor_m128i(bitor_m128i(bs[0], bs[1]), bitor_m128i(bs[2], bs[3]));
        super::Block {
            quote: gather(v.map(|v| eq(v, b'"'))),
            bs: if bits(any_bs) == 0 { 0 } else { gather(bs) },
            bracket: gather(v.map(|v| {
                let low = bitor_m128i(v, set_splat_i8_m128i(0x20));
                bitor_m128i(eq(low, b'{'), eq(low, b'}'))
            })),
        }
    }
}

/// Classes of 64 bytes (bit `k` is byte `k`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Block {
    quote: u64,
    bs: u64,
    /// `{`, `[`, `}` and `]`.
    bracket: u64,
}

/// The reference classifier (and the portable one).
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
fn block_scalar(chunk: &[u8; 64]) -> Block {
    let mut r = Block {
        quote: 0,
        bs: 0,
        bracket: 0,
    };
    for (k, &c) in chunk.iter().enumerate() {
        let bit = 1u64 << k;
        match c {
            b'"' => r.quote |= bit,
            b'\\' => r.bs |= bit,
            b'{' | b'[' | b'}' | b']' => r.bracket |= bit,
            _ => {}
        }
    }
    r
}

#[inline(always)]
fn block(chunk: &[u8; 64]) -> Block {
    #[cfg(target_arch = "x86_64")]
    return simd::block(chunk);
    #[cfg(not(target_arch = "x86_64"))]
    return block_scalar(chunk);
}

/// Bit `k` set for each byte after an odd run of backslashes; `carry` (bit 0) says the first
/// byte is escaped, and is set for the next block when the last byte is an unescaped backslash.
#[inline(always)]
fn escaped(bs: u64, carry: &mut u64) -> u64 {
    let mut escaped = *carry;
    *carry = 0;
    let mut m = bs & !escaped;
    while m != 0 {
        let k = m.trailing_zeros();
        if k == 63 {
            *carry = 1;
            break;
        }
        let next = 2u64 << k;
        escaped |= next;
        m &= m.wrapping_sub(1) & !next;
    }
    escaped
}

/// Bit `k` = XOR of bits `0..=k`.
#[inline(always)]
fn prefix_xor(mut x: u64) -> u64 {
    x ^= x << 1;
    x ^= x << 2;
    x ^= x << 4;
    x ^= x << 8;
    x ^= x << 16;
    x ^= x << 32;
    x
}

/// Past the whitespace at `i`: the first other byte, or the buffer's length.
#[inline(always)]
pub(super) fn tok(b: &[u8], i: usize) -> usize {
    match b.get(i) {
        Some(&c) if c > b' ' => i,
        // One space, as after `:` in pretty-printed bodies.
        Some(b' ') if b.get(i + 1).is_some_and(|&c| c > b' ') => i + 1,
        _ => ws_run(b, i),
    }
}

#[inline(always)]
fn ws_run(b: &[u8], i: usize) -> usize {
    #[cfg(target_arch = "x86_64")]
    let i = {
        let mut i = i;
        while let Some(v) = simd::load(b, i) {
            let m = simd::not_ws(v);
            if m != 0 {
                return i + m.trailing_zeros() as usize;
            }
            i += 16;
        }
        i
    };
    tok_scalar(b, i)
}

fn tok_scalar(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(|&c| is_ws(c)) {
        i += 1;
    }
    i.min(b.len())
}

/// The closing quote of the string whose content starts at `i` (the byte after a backslash
/// skipped, whatever it is), and whether the string has a backslash; `None` when it does not
/// end in the buffer. Most strings (keys, short values) end within the first 16 bytes, one step
/// inlined here; a longer one goes on in [`string_end_long`].
#[inline(always)]
pub(super) fn string_end(b: &[u8], i: usize) -> Option<(usize, bool)> {
    #[cfg(target_arch = "x86_64")]
    if let Some(v) = simd::load(b, i) {
        let m = simd::quote_or_bs(v);
        let j = i + m.trailing_zeros() as usize;
        if m != 0 && b.get(j) == Some(&b'"') {
            return Some((j, false));
        }
    }
    string_end_long(b, i)
}

/// [`string_end`] past its first step: a few more 16-byte steps, then (a long string: a
/// message's content) the `memchr` crate's `memchr2`, whose wider loops run at a fraction of an
/// instruction per byte.
#[inline(always)]
fn string_end_long(b: &[u8], i: usize) -> Option<(usize, bool)> {
    #[cfg(target_arch = "x86_64")]
    let (mut i, mut escaped) = {
        let (mut i, mut escaped, end) = (i, false, i.saturating_add(64));
        while let Some(v) = simd::load(b, i) {
            if i >= end {
                break;
            }
            let m = simd::quote_or_bs(v);
            if m == 0 {
                i += 16;
                continue;
            }
            let j = i + m.trailing_zeros() as usize;
            if b.get(j) == Some(&b'"') {
                return Some((j, escaped));
            }
            escaped = true;
            i = j + 2;
        }
        (i, escaped)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let (mut i, mut escaped) = (i, false);
    loop {
        let j = quote_or_backslash(b, i)?;
        if b.get(j) == Some(&b'"') {
            return Some((j, escaped));
        }
        escaped = true;
        i = j + 2;
    }
}

fn string_end_scalar(b: &[u8], mut i: usize, mut escaped: bool) -> Option<(usize, bool)> {
    while let Some(&c) = b.get(i) {
        match c {
            b'"' => return Some((i, escaped)),
            b'\\' => {
                escaped = true;
                i += 2;
            }
            _ => i += 1,
        }
    }
    None
}

/// The first `"`, `{`, `[`, `}` or `]` at or after `i`: the next byte that matters to a
/// skipped container read outside its strings (the resumable scanner's skip, which reads a
/// backslash there as an ordinary byte). A byte loop: in dense JSON (logprobs, tool arguments)
/// one comes every few bytes, and 16-byte steps (measured) cost fewer instructions but more time
/// there, their early exits on unpredictable masks: 1.07 s against 0.70 s for 400 bodies of
/// 2.3 MB of logprobs (`usage_cost json_logprobs_split`), where indentation runs gain little.
#[inline(always)]
pub(super) fn quote_or_bracket(b: &[u8], i: usize) -> Option<usize> {
    let at = b
        .get(i..)?
        .iter()
        .position(|&c| matches!(c, b'"' | b'{' | b'[' | b'}' | b']'))?;
    Some(i + at)
}

/// The first `"` or `\\` at or after `i`: one 16-byte step inline (keys and short values
/// end there), the rest out of line ([`quote_or_backslash_long`]: inline, it made the
/// resumable scanner's loop cost ~6 % more on dense JSON, `usage_cost json_logprobs_split`).
#[inline(always)]
pub(crate) fn quote_or_backslash(b: &[u8], i: usize) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    if let Some(v) = simd::load(b, i) {
        let m = simd::quote_or_bs(v);
        if m != 0 {
            return Some(i + m.trailing_zeros() as usize);
        }
        return quote_or_backslash_long(b, i + 16);
    }
    Some(i + memchr::memchr2(b'"', b'\\', b.get(i..)?)?)
}

/// [`quote_or_backslash`] past its first step: 64-byte steps for the next 256 bytes (the
/// runs between an answer's escapes end there: `memchr2`'s setup costs more than such a
/// run), the last bytes of the buffer 16 a step, then `memchr2`.
#[cfg(target_arch = "x86_64")]
#[inline(never)]
fn quote_or_backslash_long(b: &[u8], mut i: usize) -> Option<usize> {
    let end = i.saturating_add(256);
    loop {
        match simd::quote_or_bs_64(b, i) {
            Some(0) => {
                i += 64;
                if i >= end {
                    break;
                }
            }
            Some(m) => return Some(i + m.trailing_zeros() as usize),
            // Fewer than 64 bytes left.
            None => {
                while let Some(v) = simd::load(b, i) {
                    let m = simd::quote_or_bs(v);
                    if m != 0 {
                        return Some(i + m.trailing_zeros() as usize);
                    }
                    i += 16;
                }
                break;
            }
        }
    }
    Some(i + memchr::memchr2(b'"', b'\\', b.get(i..)?)?)
}

#[cfg_attr(not(test), allow(dead_code))]
fn quote_or_backslash_scalar(b: &[u8], i: usize) -> Option<usize> {
    Some(i + b.get(i..)?.iter().position(|&c| c == b'"' || c == b'\\')?)
}

/// The first `j >= i` where `"u` starts (`b[j]` a quote, `b[j + 1]` a `u`): where a `"usage`
/// key may be, 16 candidates a step.
pub(crate) fn find_quote_u(b: &[u8], i: usize) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    let i = {
        let mut i = i;
        while let Some(m) = simd::quote_u(b, i) {
            if m != 0 {
                return Some(i + m.trailing_zeros() as usize);
            }
            i += 16;
        }
        i
    };
    find_quote_u_scalar(b, i)
}

fn find_quote_u_scalar(b: &[u8], i: usize) -> Option<usize> {
    (i..b.len().saturating_sub(1)).find(|&j| b[j] == b'"' && b[j + 1] == b'u')
}

/// The first position at or after `i` where `a` and `b` differ (within the shorter), 16 bytes a
/// step.
pub(crate) fn first_difference(a: &[u8], b: &[u8], i: usize) -> Option<usize> {
    let len = a.len().min(b.len());
    #[cfg(target_arch = "x86_64")]
    let i = {
        let mut i = i;
        if i < len {
            let steps = a[i..len].chunks_exact(16).zip(b[i..len].chunks_exact(16));
            for (x, y) in steps {
                let (Some(va), Some(vb)) = (simd::load(x, 0), simd::load(y, 0)) else {
                    break;
                };
                let differ = !simd::same(va, vb) & 0xFFFF;
                if differ != 0 {
                    return Some(i + differ.trailing_zeros() as usize);
                }
                i += 16;
            }
        }
        // The last bytes by one step that overlaps the ones already compared (masked off),
        // not byte by byte: a usage tail's end is compared on every Gemini chunk.
        if i < len && len >= 16 {
            let j = len - 16;
            if let (Some(va), Some(vb)) = (simd::load(a, j), simd::load(b, j)) {
                let differ = !simd::same(va, vb) & (0xFFFF << (i - j)) & 0xFFFF;
                return (differ != 0).then(|| j + differ.trailing_zeros() as usize);
            }
        }
        i
    };
    (i..len).find(|&k| a[k] != b[k])
}

/// `x == y` for the runs of bytes a JSON body's shape compares (mostly 8 to 40 bytes: a
/// member's separator, key and indentation): 16 bytes a step on x86-64, two overlapping words
/// below 16 bytes, without `memcmp`'s call.
#[inline(always)]
pub(super) fn equal(x: &[u8], y: &[u8]) -> bool {
    if x.len() != y.len() {
        return false;
    }
    if x.len() >= 16 {
        #[cfg(target_arch = "x86_64")]
        return simd::equal(x, y);
        #[cfg(not(target_arch = "x86_64"))]
        return x == y;
    }
    if let (Some(a), Some(c), Some(e), Some(f)) = (
        x.first_chunk::<8>(),
        y.first_chunk::<8>(),
        x.last_chunk::<8>(),
        y.last_chunk::<8>(),
    ) {
        // 8 to 15 bytes: two words that overlap.
        let w = u64::from_ne_bytes;
        return (w(*a) ^ w(*c)) | (w(*e) ^ w(*f)) == 0;
    }
    if let (Some(a), Some(c), Some(e), Some(f)) = (
        x.first_chunk::<4>(),
        y.first_chunk::<4>(),
        x.last_chunk::<4>(),
        y.last_chunk::<4>(),
    ) {
        let w = u32::from_ne_bytes;
        return (w(*a) ^ w(*c)) | (w(*e) ^ w(*f)) == 0;
    }
    x.iter().zip(y).all(|(a, c)| a == c)
}

/// The common prefix of `a` and `b`: its length, the parity of the quotes in it (1: odd), and
/// whether it holds a backslash. 16 bytes a step on x86-64.
pub(crate) fn equal_prefix(a: &[u8], b: &[u8]) -> (usize, u32, bool) {
    // The steps' quote masks XORed (the parity of a count is that of the XOR of its parts)
    // and backslash masks ORed, looked at once at the end.
    #[cfg(target_arch = "x86_64")]
    let (n, quotes, backslashes) = {
        let (mut n, mut quotes, mut backslashes) = (0usize, 0u32, 0u32);
        let len = a.len().min(b.len());
        for (x, y) in a[..len].chunks_exact(16).zip(b[..len].chunks_exact(16)) {
            let (Some(va), Some(vb)) = (simd::load(x, 0), simd::load(y, 0)) else {
                break;
            };
            let differ = !simd::same(va, vb) & 0xFFFF;
            // The bytes before the first difference (all 16 when none).
            let upto = differ.wrapping_sub(1) & !differ & 0xFFFF;
            let (q, bs) = simd::quotes_and_bs(vb);
            quotes ^= q & upto;
            backslashes |= bs & upto;
            if differ != 0 {
                return (
                    n + differ.trailing_zeros() as usize,
                    parity(quotes),
                    backslashes != 0,
                );
            }
            n += 16;
        }
        (n, quotes, backslashes)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let (n, quotes, backslashes) = (0usize, 0u32, 0u32);
    let (m, q, bs) = equal_prefix_scalar(&a[n.min(a.len())..], &b[n.min(b.len())..]);
    (n + m, parity(quotes) ^ q, bs || backslashes != 0)
}

/// 1 when `x` has an odd number of bits set.
#[inline(always)]
fn parity(mut x: u32) -> u32 {
    x ^= x >> 16;
    x ^= x >> 8;
    x ^= x >> 4;
    x ^= x >> 2;
    x ^= x >> 1;
    x & 1
}

fn equal_prefix_scalar(a: &[u8], b: &[u8]) -> (usize, u32, bool) {
    let mut parity = 0;
    for (n, (&x, &y)) in a.iter().zip(b).enumerate() {
        if x != y {
            return (n, parity, false);
        }
        match y {
            b'"' => parity ^= 1,
            b'\\' => return (n, parity, true),
            _ => {}
        }
    }
    (a.len().min(b.len()), parity, false)
}

/// Past the container whose opening bracket is at `i`: brackets outside strings counted
/// whatever their kind, as the scanner's skip counts them. `None` when it does not close.
///
/// 64 bytes a step: unescaped quotes (escapes marked by a loop over the backslashes) give the
/// in-string mask by a prefix XOR, carried to the next step; the brackets outside strings are
/// then counted bit by bit. The scanner reads a backslash outside strings as an ordinary byte,
/// where the escape marking would not: a step holding one (by this reading; up to the first,
/// both read the same strings) is read the scalar way, from its start.
#[inline(never)]
pub(super) fn skip(b: &[u8], mut i: usize) -> Option<usize> {
    let mut depth = 0u32;
    // All ones when the step starts inside a string; bit 0 when its first byte is escaped.
    let (mut in_str, mut esc) = (0u64, 0u64);
    while let Some(chunk) = b.get(i..).and_then(|r| r.first_chunk::<64>()) {
        let c = block(chunk);
        let (in_str0, esc0) = (in_str, esc);
        let quote = c.quote & !escaped(c.bs, &mut esc);
        let inside = prefix_xor(quote) ^ in_str;
        if c.bs & !inside != 0 {
            return skip_tail(b, i, depth, in_str0 != 0, esc0 != 0);
        }
        in_str = ((inside as i64) >> 63) as u64;
        let mut m = c.bracket & !inside;
        while m != 0 {
            let j = i + m.trailing_zeros() as usize;
            m &= m - 1;
            if matches!(b.get(j), Some(b'{' | b'[')) {
                depth += 1;
            } else {
                depth -= 1;
                if depth == 0 {
                    return Some(j + 1);
                }
            }
        }
        i += 64;
        if in_str0 != 0 && quote == 0 {
            // The whole step was inside a string that goes on (a long one: a message's
            // content): its end is searched for, and the steps go on after it (the byte after
            // a backslash that ends the step is part of the string).
            i = string_end_long(b, i + (esc as usize))?.0 + 1;
            (in_str, esc) = (0, 0);
        }
    }
    skip_tail(b, i, depth, in_str != 0, esc != 0)
}

/// [`skip`] from `i` the scalar way, `depth` brackets deep, inside a string or not (and its
/// first byte escaped or not).
fn skip_tail(b: &[u8], mut i: usize, depth: u32, in_str: bool, esc: bool) -> Option<usize> {
    if in_str {
        i = string_end_scalar(b, i + usize::from(esc), false)?.0 + 1;
    }
    skip_scalar(b, i, depth)
}

fn skip_scalar(b: &[u8], mut i: usize, mut depth: u32) -> Option<usize> {
    while let Some(&c) = b.get(i) {
        i += 1;
        match c {
            b'"' => i = string_end_scalar(b, i, false)?.0 + 1,
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Bytes from an alphabet that makes strings, escapes, brackets and whitespace runs likely.
    fn jsonish() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            prop::sample::select(
                &b"\"\"\\\\   \n\n\r\t{}[]{}[]:,ax0\x01\x0b\x0c\x1d\x29\x2d\x09\xe9"[..],
            ),
            0..300,
        )
    }

    /// Every search from every start, against the scalar way.
    fn check(b: &[u8]) {
        for i in 0..=b.len() + 1 {
            assert_eq!(
                tok(b, i),
                tok_scalar(b, i),
                "tok {i} {:?}",
                String::from_utf8_lossy(b)
            );
            assert_eq!(
                quote_or_backslash(b, i),
                quote_or_backslash_scalar(b, i),
                "quote_or_backslash {i}"
            );
            assert_eq!(
                find_quote_u(b, i),
                find_quote_u_scalar(b, i),
                "find_quote_u {i} {:?}",
                String::from_utf8_lossy(b)
            );
            let other: Vec<u8> = b.iter().rev().copied().collect();
            for x in [&other[..], &b[..b.len() / 2]] {
                assert_eq!(
                    first_difference(b, x, i),
                    (i..b.len().min(x.len())).find(|&k| b[k] != x[k]),
                    "first_difference {i}"
                );
            }
            for x in [&b[i.min(b.len())..], &other[..], &b[..b.len() / 2]] {
                // The length and parity are only meaningful without a backslash.
                let (n, q, bs) = equal_prefix(b, x);
                let (n0, q0, bs0) = equal_prefix_scalar(b, x);
                assert_eq!(bs, bs0, "equal_prefix backslash {i}");
                if !bs {
                    assert_eq!((n, q), (n0, q0), "equal_prefix {i}");
                }
            }
            assert_eq!(
                string_end(b, i),
                string_end_scalar(b, i, false),
                "string_end {i} {:?}",
                String::from_utf8_lossy(b)
            );
            if matches!(b.get(i), Some(b'{' | b'[')) {
                assert_eq!(
                    skip(b, i),
                    skip_scalar(b, i, 0),
                    "skip {i} {:?}",
                    String::from_utf8_lossy(b)
                );
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        #[test]
        fn searches_are_the_scalar_ones(b in jsonish()) {
            check(&b);
        }

        #[test]
        fn block_classifier_is_the_scalar_one(bytes in proptest::collection::vec(any::<u8>(), 64)) {
            let chunk: [u8; 64] = bytes.try_into().unwrap();
            prop_assert_eq!(block(&chunk), block_scalar(&chunk));
        }

        #[test]
        fn searches_on_random_bytes(b in proptest::collection::vec(any::<u8>(), 0..100)) {
            check(&b);
        }

        /// A quote or backslash after a plain run of any length (found by the first 16-byte
        /// step, a 64-byte step, the last 16-byte steps or `memchr2` past 272 bytes), from
        /// every start.
        #[test]
        fn quote_or_backslash_after_runs(run in 0usize..700,
                                         hit in prop::sample::select(&b"\"\\"[..]),
                                         tail in 0usize..80) {
            let mut b = vec![b'a'; run];
            b.push(hit);
            b.extend(std::iter::repeat_n(b'b', tail));
            for i in 0..=b.len() + 1 {
                prop_assert_eq!(quote_or_backslash(&b, i), quote_or_backslash_scalar(&b, i));
            }
        }

        /// Escape runs of every length ending at every offset around 16-byte steps.
        #[test]
        fn escapes_across_steps(at in 0usize..150, run in 0usize..6,
                                after in prop::sample::select(&b"\"\\a{}"[..]), pad in 0usize..140) {
            let mut b = b"[\"".to_vec();
            b.resize(at + 2, b'x');
            b.extend(std::iter::repeat_n(b'\\', run));
            b.push(after);
            b.extend_from_slice(b"\"]  ");
            b.extend(std::iter::repeat_n(b' ', pad));
            b.extend_from_slice(b"{\"a\":[\"]\"]}");
            check(&b);
        }
    }

    #[test]
    fn searches() {
        let b = br#"{"a":[1,"]}\"{",{"b":"\\"}], "c" : "x"}  "#;
        assert_eq!(skip(b, 0), Some(b.len() - 2));
        assert_eq!(skip(b, 5), Some(27));
        assert_eq!(string_end(b, 9), Some((14, true)));
        assert_eq!(tok(b, b.len() - 2), b.len());
        let long = [&b"[\""[..], &[b'a'; 200], b"\\\"\"]"].concat();
        assert_eq!(string_end(&long, 2), Some((long.len() - 2, true)));
        assert_eq!(skip(&long, 0), Some(long.len()));
        assert_eq!(skip(b"[\"abc", 0), None);
        let indent = [&b"\n"[..], &[b' '; 40], b"\t\r\n  }"].concat();
        assert_eq!(tok(&indent, 0), indent.len() - 1);
        check(&indent);
        check(&long);
        // Past the 16-byte steps of `quote_or_backslash` (256 bytes), with escapes around it.
        let longer = [&b"[\""[..], &[b'a'; 250], b"\\\"", &[b'b'; 300], b"\"]"].concat();
        check(&longer);
    }
}

/// The digits at the start of the 8 bytes `w` (in memory order): how many lead (0 to 8), and
/// the value of those (when fewer than 8). One word's arithmetic instead of a loop over its
/// bytes: a timestamp's or a count's digits.
#[inline(always)]
pub(super) fn lead_digits(w: [u8; 8]) -> (usize, u64) {
    let v = u64::from_le_bytes(w);
    // A byte's top bit set in either: it is below `0` or above `9`. Only the lanes below the
    // first such byte (digits, which neither borrow nor carry) must be exact.
    let off = (v.wrapping_sub(0x3030_3030_3030_3030) | v.wrapping_add(0x4646_4646_4646_4646))
        & 0x8080_8080_8080_8080;
    let n = (off.trailing_zeros() / 8) as usize;
    if n == 0 || n == 8 {
        return (n, 0);
    }
    // The digits' values moved to the top lanes (the lanes below are zeros: leading zeros),
    // then pairs, quads and the eight combined.
    let d = (v & 0x0F0F_0F0F_0F0F_0F0F) << (8 * (8 - n));
    let d = (d.wrapping_mul(10 << 8 | 1) >> 8) & 0x00FF_00FF_00FF_00FF;
    let d = (d.wrapping_mul(100 << 16 | 1) >> 16) & 0x0000_FFFF_0000_FFFF;
    (n, d.wrapping_mul(10_000 << 32 | 1) >> 32)
}

#[cfg(test)]
mod digit_tests {
    use super::lead_digits;
    use proptest::prelude::*;

    proptest! {
        /// As a loop over the bytes reads them.
        #[test]
        fn lead_digits_as_a_loop(w in any::<[u8; 8]>(), digits in 0usize..9, n in any::<u64>()) {
            let mut w = w;
            // Mostly digits first (any bytes alone rarely start with some).
            let s = n.to_string();
            for (k, c) in s.bytes().take(digits).enumerate() {
                w[k] = c;
            }
            let lead = w.iter().take_while(|c| c.is_ascii_digit()).count();
            let value = w[..lead].iter().fold(0u64, |v, &c| v * 10 + u64::from(c - b'0'));
            let (m, v) = lead_digits(w);
            prop_assert_eq!(m, lead);
            if lead < 8 {
                prop_assert_eq!(v, value);
            }
        }
    }
}
