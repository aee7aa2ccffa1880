//! The scanner's reading of a payload held whole in one buffer (an SSE event's data, a JSON
//! body), by recursive descent instead of the byte-by-byte state machine: the next token, a
//! string's end and a skipped container's end are found with [`probe`]'s 16- and 64-byte SSE2
//! steps, keys are compared as slices.
//!
//! It reads exactly what [`Scanner::feed`] would read (the same [`providers`] table, the same
//! number, literal and string rules, the same bound on tracked depth), but it only accepts a
//! payload it can walk to the end without a single error: anything else (an incomplete value,
//! a byte the scanner would stop at, a top-level value followed by more than whitespace)
//! makes it give up, and the caller scans the payload the resumable way. So it never decides
//! anything the scanner would decide differently: on success the scanner is left exactly as
//! `feed` of the same bytes would have left it (`Done`, with the same facts and model).

use super::probe;
use super::shape::{NoRec, Rec, Slot};
use super::{Scanner, St, MAX_TRACK};
use crate::usage::providers::{self, Act, Node, MAX_COUNT};

/// Gave up: the payload is not one the walk can prove it reads as the scanner does.
pub(super) struct Stop;

pub(super) type Pos = Result<usize, Stop>;

/// Past the number or literal at `b[i]`, read with [`Act::Skip`] as the scanner reads it: to
/// the byte that ends its run (which must exist).
#[inline(always)]
pub(super) fn skip_scalar(b: &[u8], i: usize) -> Pos {
    let &c = b.get(i).ok_or(Stop)?;
    let mut j = i + 1;
    match c {
        b'0'..=b'9' | b'-' => {
            // Digits 8 a step (a timestamp's); the run ends at a byte of no number found so,
            // else it goes on byte by byte (a fraction, an exponent, the buffer's last bytes).
            while let Some(&w) = b.get(j..).and_then(|r| r.first_chunk::<8>()) {
                let (n, _) = probe::lead_digits(w);
                j += n;
                if n < 8 {
                    if !matches!(w[n], b'.' | b'e' | b'E' | b'+' | b'-') {
                        return Ok(j);
                    }
                    break;
                }
            }
            while j < b.len() && matches!(b[j], b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-') {
                j += 1;
            }
        }
        b't' | b'f' | b'n' => {
            while j < b.len() && b[j].is_ascii_alphabetic() {
                j += 1;
            }
        }
        _ => return Err(Stop),
    }
    if j < b.len() {
        Ok(j)
    } else {
        Err(Stop)
    }
}

impl Scanner {
    /// Reads `b` as the rest of a top-level object from one of its keys on (as
    /// [`Scanner::begin_member`] and `feed`): true when the walk ends with that object exactly
    /// at the end of `b` (whitespace aside), as [`Scanner::ended_cleanly`] would say. False
    /// leaves the scanner just begun.
    pub(crate) fn feed_members(&mut self, b: &[u8]) -> bool {
        self.begin();
        let known = self.model.done;
        let i = probe::tok(b, 0);
        // A key, not the object's end: `b_object` from a key reads the members that follow.
        let read = if b.get(i) == Some(&b'"') {
            self.b_object(&mut NoRec, b, i, Node::Root, 0)
        } else {
            Err(Stop)
        };
        self.walked(read.map(|end| probe::tok(b, end) == b.len()), known)
    }

    /// Reads `b`, the rest of a JSON body after one of its top-level object's members (the
    /// scanner just after that value, one container deep), by the walk, when the body ends
    /// with `b` (whitespace aside): true leaves the scanner exactly as `feed` of `b` would
    /// (done, with the same facts and model). False changes nothing: the caller goes on the
    /// resumable way. Only the usual case is tried: `,` and the next key, the object closed
    /// at the end of `b`; the walk costs one copy of the scanner more, and a rest that fails
    /// is read twice. Tried once per buffer fed: a buffer of many skipped members that ends
    /// with some member's `}` (not the body's) is otherwise read again at each member's end.
    #[cold]
    pub(crate) fn walk_rest(&mut self, b: &[u8]) -> bool {
        if !self.walks_rest
            || self.rest_tried
            || self.nodes[0] != Node::Root
            || b.trim_ascii_end().last() != Some(&b'}')
        {
            return false;
        }
        self.rest_tried = true;
        #[cfg(test)]
        {
            self.rest_walks += 1;
        }
        let i = probe::tok(b, 0);
        if b.get(i) != Some(&b',') {
            return false;
        }
        let k = probe::tok(b, i + 1);
        if b.get(k) != Some(&b'"') {
            return false;
        }
        let mut s = self.clone();
        match s.b_object(&mut NoRec, b, k, Node::Root, 0) {
            Ok(end) if probe::tok(b, end) == b.len() => {
                s.st = St::Done;
                s.depth = 0;
                *self = s;
                true
            }
            _ => false,
        }
    }

    /// What the provider table does with member `key` of an object of meaning `node` (keys
    /// no provider knows are ruled out before the table); notes the dialect it hints at.
    #[inline(always)]
    fn act_of(&mut self, node: Node, key: &[u8]) -> Act {
        if !providers::may_know(key) {
            return Act::Skip;
        }
        let (act, hint) = self.member(node, key);
        self.facts.hints |= hint;
        act
    }

    /// Ends a walk: `Ok(true)` when it read the payload to its end (whitespace aside); else the
    /// scanner is left just begun (the model as it was known before, `known`).
    pub(super) fn walked(&mut self, read: Result<bool, Stop>, known: bool) -> bool {
        if let Ok(true) = read {
            self.st = St::Done;
            self.depth = 0;
            true
        } else {
            self.undo(known);
            false
        }
    }

    fn undo(&mut self, model_known: bool) {
        if !model_known {
            self.model.done = false;
        }
        self.begin();
    }

    pub(super) fn w_close(&mut self, node: Node, end: usize) -> usize {
        if node.is_usage() {
            if self.stage_valid {
                self.facts.usage.merge(&self.stage);
            } else {
                self.facts.bad_count = true;
            }
        }
        end
    }

    /// The number or literal at `b[i]`, read according to `act`; returns the position after
    /// it.
    pub(super) fn w_scalar(&mut self, b: &[u8], i: usize, act: Act) -> Pos {
        let &c = b.get(i).ok_or(Stop)?;
        if let Act::AnyContent(d) = act {
            if c != b'n' {
                self.facts.content |= d;
            }
        }
        match c {
            b'0'..=b'9' | b'-' => {
                let mut num = u64::from(c.wrapping_sub(b'0'));
                let mut bad = c == b'-';
                let mut j = i + 1;
                while j < b.len() {
                    match b[j] {
                        d @ b'0'..=b'9' => {
                            num = num.saturating_mul(10).saturating_add(u64::from(d - b'0'));
                        }
                        b'.' | b'e' | b'E' | b'+' | b'-' => bad = true,
                        _ => break,
                    }
                    j += 1;
                }
                if j == b.len() {
                    return Err(Stop);
                }
                if let Act::Count(s) = act {
                    if bad || num > MAX_COUNT {
                        self.facts.bad_count = true;
                    } else {
                        self.stage.set(s, num);
                        self.stage_valid = true;
                    }
                }
                Ok(j)
            }
            b't' | b'f' | b'n' => {
                if matches!(act, Act::Count(_)) && c != b'n' {
                    self.facts.bad_count = true;
                }
                let mut j = i + 1;
                while j < b.len() && b[j].is_ascii_alphabetic() {
                    j += 1;
                }
                if j == b.len() {
                    return Err(Stop);
                }
                Ok(j)
            }
            _ => Err(Stop),
        }
    }

    /// A count (a value starting with a digit, read for `slot`) as [`Scanner::w_scalar`]
    /// reads it, without its dispatch.
    #[inline(always)]
    pub(super) fn w_count(&mut self, b: &[u8], i: usize, slot: u8) -> Pos {
        // Up to 7 digits ended by a byte of no number, in one word (the usual count).
        if let Some(&w) = b.get(i..).and_then(|r| r.first_chunk::<8>()) {
            let (n, num) = probe::lead_digits(w);
            if n < 8 && !matches!(w[n], b'.' | b'e' | b'E' | b'+' | b'-') {
                self.stage.set(slot, num);
                self.stage_valid = true;
                return Ok(i + n);
            }
        }
        let mut num = 0u64;
        let mut bad = false;
        let mut j = i;
        while let Some(&d) = b.get(j) {
            match d {
                b'0'..=b'9' => num = num.saturating_mul(10).saturating_add(u64::from(d - b'0')),
                b'.' | b'e' | b'E' | b'+' | b'-' => bad = true,
                _ => {
                    if bad || num > MAX_COUNT {
                        self.facts.bad_count = true;
                    } else {
                        self.stage.set(slot, num);
                        self.stage_valid = true;
                    }
                    return Ok(j);
                }
            }
            j += 1;
        }
        Err(Stop)
    }

    /// The string value `b[i..e]` (`e` its closing quote), read for `act`.
    #[inline(always)]
    fn w_str(&mut self, b: &[u8], i: usize, e: usize, escaped: bool, act: Act) -> Pos {
        let s = b.get(i..e).ok_or(Stop)?;
        match act {
            Act::Model if !self.model.done => {
                if escaped {
                    // Escapes (and surrogate pairs) the scanner's way, on this string alone.
                    self.act = Act::Model;
                    self.high = 0;
                    self.st = St::Str;
                    self.feed(&b[i..e + 1]);
                    if self.st != St::After {
                        return Err(Stop);
                    }
                } else {
                    self.model.push(s);
                    self.model.finish();
                }
            }
            Act::Type => {
                self.facts.kind.clear();
                self.facts.kind.push(s);
                if escaped {
                    self.facts.kind.over = true;
                }
            }
            Act::Content(d) | Act::AnyContent(d) if !s.is_empty() => self.facts.content |= d,
            Act::Delta => self.facts.delta |= !s.is_empty(),
            Act::Count(_) => self.facts.bad_count = true,
            _ => {}
        }
        Ok(e + 1)
    }
}

impl Scanner {
    /// Reads `b` as one whole payload, an SSE event's data or a JSON body (the scanner must be
    /// just begun, before any byte of the top-level value). Returns false and leaves the
    /// scanner just begun when it cannot prove the reading; then feed the bytes the resumable
    /// way. The searches are [`probe`]'s (16 or 64 bytes a step): the next token, a key's end,
    /// a skipped string or container. Tracked containers are read token by token as the
    /// scanner reads them, skipped ones bracket-counted as it counts them; a key's `:` and
    /// the `,` or closing bracket after a value are looked for right where they mostly are
    /// before any search.
    pub(crate) fn feed_body(&mut self, b: &[u8]) -> bool {
        self.feed_body_with(&mut NoRec, b)
    }

    /// [`Scanner::feed_body`], telling `r` what it reads.
    pub(super) fn feed_body_with<R: Rec>(&mut self, r: &mut R, b: &[u8]) -> bool {
        debug_assert!(self.st == St::Start);
        let known = self.model.done;
        let i = probe::tok(b, 0);
        let read = match b.get(i) {
            Some(b'{') => self.b_object(r, b, i + 1, Node::Root, 0),
            Some(b'[') => self.b_array(r, b, i + 1, Node::TopArray, 0),
            _ => Err(Stop),
        };
        self.walked(read.map(|end| probe::tok(b, end) == b.len()), known)
    }

    /// The members of an object of meaning `node` from `i` (just after its `{`, or at a key:
    /// the rest of its members), opened at tracked depth `depth`; returns the position after
    /// its `}`.
    fn b_object<R: Rec>(&mut self, r: &mut R, b: &[u8], i: usize, node: Node, depth: usize) -> Pos {
        let depth = depth + 1;
        if node.is_usage() {
            r.slot(b, i, Slot::Open, i);
            self.stage.clear();
            self.stage_valid = false;
        }
        let mut i = probe::tok(b, i);
        if b.get(i) == Some(&b'}') {
            return Ok(self.b_close(r, b, node, i + 1));
        }
        loop {
            if b.get(i) != Some(&b'"') {
                return Err(Stop);
            }
            let k = i + 1;
            let (e, escaped) = probe::string_end(b, k).ok_or(Stop)?;
            // An escaped key is none of ours (the scanner compares it as empty).
            let key = if escaped {
                &[][..]
            } else {
                b.get(k..e).ok_or(Stop)?
            };
            let act = self.act_of(node, key);
            // `:` mostly right after the key.
            i = e + 1;
            if b.get(i) != Some(&b':') {
                i = probe::tok(b, i);
                if b.get(i) != Some(&b':') {
                    return Err(Stop);
                }
            }
            i = probe::tok(b, i + 1);
            i = match act {
                Act::Skip => b_skip(r, b, i)?,
                Act::Count(slot) if matches!(b.get(i), Some(b'0'..=b'9')) => {
                    let end = self.w_count(b, i, slot)?;
                    r.slot(b, i, Slot::Count(slot), end);
                    end
                }
                // A tracked object (usage and its details): no detour through `b_value`.
                Act::Open(node)
                    if !node.is_array() && depth < MAX_TRACK && b.get(i) == Some(&b'{') =>
                {
                    self.b_object(r, b, i + 1, node, depth)?
                }
                _ => self.b_value(r, b, i, act, depth)?,
            };
            // `,` or `}` mostly right after the value.
            if !matches!(b.get(i), Some(b',' | b'}')) {
                i = probe::tok(b, i);
            }
            match b.get(i) {
                Some(b',') => i = probe::tok(b, i + 1),
                Some(b'}') => return Ok(self.b_close(r, b, node, i + 1)),
                _ => return Err(Stop),
            }
        }
    }

    /// [`Scanner::w_close`] in the walk (noted for a usage object).
    #[inline(always)]
    fn b_close<R: Rec>(&mut self, r: &mut R, b: &[u8], node: Node, end: usize) -> usize {
        if node.is_usage() {
            r.slot(b, end, Slot::Close, end);
        }
        self.w_close(node, end)
    }

    /// The elements of an array of meaning `node` from `i` (just after its `[`).
    fn b_array<R: Rec>(&mut self, r: &mut R, b: &[u8], i: usize, node: Node, depth: usize) -> Pos {
        let depth = depth + 1;
        let act = providers::element(node);
        let mut i = probe::tok(b, i);
        if b.get(i) == Some(&b']') {
            return Ok(i + 1);
        }
        loop {
            i = self.b_value(r, b, i, act, depth)?;
            if !matches!(b.get(i), Some(b',' | b']')) {
                i = probe::tok(b, i);
            }
            match b.get(i) {
                Some(b',') => i = probe::tok(b, i + 1),
                Some(b']') => return Ok(i + 1),
                _ => return Err(Stop),
            }
        }
    }

    /// The value at the token `i`, read for `act` inside `depth` tracked containers; returns
    /// the position after it.
    fn b_value<R: Rec>(&mut self, r: &mut R, b: &[u8], i: usize, act: Act, depth: usize) -> Pos {
        let &ch = b.get(i).ok_or(Stop)?;
        match ch {
            b'{' | b'[' => {
                if let Act::AnyContent(d) = act {
                    r.slot(b, i, Slot::Content(d), i);
                    self.facts.content |= d;
                }
                let array = ch == b'[';
                match act {
                    Act::Open(node) if node.is_array() == array && depth < MAX_TRACK => {
                        if array {
                            self.b_array(r, b, i + 1, node, depth)
                        } else {
                            self.b_object(r, b, i + 1, node, depth)
                        }
                    }
                    _ => {
                        let end = probe::skip(b, i).ok_or(Stop)?;
                        r.skipped(b, i, end);
                        Ok(end)
                    }
                }
            }
            b'"' => match act {
                Act::Skip | Act::Open(_) => b_skip(r, b, i),
                _ => {
                    let end = w_string(self, b, i + 1, act)?;
                    r.slot(b, i + 1, Slot::Str(act), end);
                    Ok(end)
                }
            },
            _ => {
                let end = self.w_scalar(b, i, act)?;
                r.slot(b, i, Slot::Scalar(act), end);
                Ok(end)
            }
        }
    }
}

/// The rest of a string value from `k` (after its opening quote) read for `act` as the walk
/// reads it (skipped for [`Act::Skip`] and [`Act::Open`], which its callers handle before:
/// the arm costs nothing and its absence ~30 instructions a body in codegen); returns the
/// position after it.
#[inline(always)]
pub(super) fn w_string(s: &mut Scanner, b: &[u8], k: usize, act: Act) -> Pos {
    match act {
        Act::Skip | Act::Open(_) => Ok(probe::string_end(b, k).ok_or(Stop)?.0 + 1),
        Act::Model if s.model.done => Ok(probe::string_end(b, k).ok_or(Stop)?.0 + 1),
        _ => {
            if let Act::AnyContent(d) = act {
                s.facts.content |= d;
            }
            let (e, escaped) = probe::string_end(b, k).ok_or(Stop)?;
            s.w_str(b, k, e, escaped, act)
        }
    }
}

/// Past the value at `b[i]` (not whitespace) read with [`Act::Skip`], as the scanner reads
/// it: a container bracket-counted, a string to its end, a number or literal to the byte that
/// ends its run (which must exist).
#[inline(always)]
fn b_skip<R: Rec>(r: &mut R, b: &[u8], i: usize) -> Pos {
    match b.get(i) {
        Some(b'"') => {
            let end = probe::string_end(b, i + 1).ok_or(Stop)?.0 + 1;
            r.slot(b, i + 1, Slot::SkipStr, end);
            Ok(end)
        }
        Some(b'{' | b'[') => {
            let end = probe::skip(b, i).ok_or(Stop)?;
            r.skipped(b, i, end);
            Ok(end)
        }
        Some(b'0'..=b'9' | b'-') => {
            let end = skip_scalar(b, i)?;
            r.slot(b, i, Slot::SkipNum, end);
            Ok(end)
        }
        // A literal: compared.
        _ => skip_scalar(b, i),
    }
}

/// `body` read by the resumable scanner alone (no walk of any part), ended: the reference
/// the walks are compared with.
#[cfg(test)]
pub(super) fn resumable_reading(
    allow: providers::Dialects,
    json_body: bool,
    body: &[u8],
) -> Scanner {
    let mut s = Scanner::new(allow);
    s.json_body = json_body;
    s.walks_rest = false;
    s.begin();
    s.feed(body);
    s.end();
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::usage::providers::ALL;

    /// A buffer of many skipped members that ends with one of theirs `}` (the walk of the rest
    /// fails there) is walked once, not once per member: the cost stays linear.
    #[test]
    fn rest_walk_is_tried_once_per_buffer() {
        let mut body = String::from("{\"id\":\"x\"");
        for k in 0..1000 {
            body.push_str(&format!(",\"k{k}\":{{\"a\":1}}"));
        }
        body.push_str(",\"usage\":{\"prompt_tokens\":3}}");
        let cut = body.find(",\"k999\"").expect("member");
        let (first, second) = body.as_bytes().split_at(cut);
        let mut s = Scanner::new(ALL);
        s.json_body = true;
        s.begin();
        s.feed(&first[..first.len() / 2]);
        s.feed(&first[first.len() / 2..]);
        assert!(s.rest_walks <= 2, "{} walks for two buffers", s.rest_walks);
        s.feed(second);
        s.end();
        assert!(
            s.rest_walks <= 3,
            "{} walks for three buffers",
            s.rest_walks
        );
        assert!(s.ended_cleanly());
        let full = resumable_reading(ALL, true, body.as_bytes());
        assert_eq!(
            crate::usage::tests::reading(&s),
            crate::usage::tests::reading(&full)
        );
    }

    #[test]
    fn walks_a_body() {
        let body = br#"{"id":"x","object":"chat.completion","model":"gpt","choices":[{"index":0,"message":{"content":"hi"}}],"usage":{"prompt_tokens":19,"completion_tokens":10,"prompt_tokens_details":{"cached_tokens":0}}}"#;
        let mut s = Scanner::new(ALL);
        s.begin();
        assert!(s.feed_body(body));
    }
}

#[cfg(test)]
pub(super) mod body_props {
    use super::*;
    use crate::usage::providers::{ALL, ANTHROPIC, GEMINI, OPENAI};
    use proptest::prelude::*;

    /// Whitespace as providers and hand-written bodies use it, also none.
    fn ws() -> impl Strategy<Value = String> {
        prop::sample::select(vec!["", "", " ", "\n  ", "\r\n\t", "\n                "])
            .prop_map(str::to_string)
    }

    /// A JSON string: short or long, with escapes (a quote, a backslash, `\u`, a line break).
    fn string() -> impl Strategy<Value = String> {
        (
            proptest::collection::vec(
                prop::sample::select(vec![
                    "a", "usage", "x y", "\\\"", "\\\\", "\\n", "\\u00e9", "é", "{", "]", ":",
                ]),
                0..8,
            ),
            0usize..3,
        )
            .prop_map(|(parts, long)| {
                let s: String = parts.concat();
                format!("\"{}{}\"", s, "0123456789abcdef".repeat(long * 5))
            })
    }

    /// Keys the provider table knows (at some place).
    pub(crate) const KNOWN_KEYS: &[&str] = &[
        "usage",
        "model",
        "type",
        "choices",
        "delta",
        "message",
        "content",
        "text",
        "prompt_tokens",
        "completion_tokens",
        "input_tokens",
        "output_tokens",
        "prompt_tokens_details",
        "cached_tokens",
        "usageMetadata",
        "promptTokenCount",
        "candidates",
        "parts",
        "tool_calls",
        "response",
        "modelVersion",
        "id",
        "cache_read_input_tokens",
        "candidatesTokenCount",
    ];

    /// Keys the provider table knows (at some place) and others.
    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(KNOWN_KEYS).prop_map(|k| format!("\"{k}\"")),
            string(),
        ]
    }

    fn scalar() -> impl Strategy<Value = String> {
        prop_oneof![
            (0u64..2_000_000_000_000).prop_map(|n| n.to_string()),
            prop::sample::select(vec!["-1", "2.5", "1e3", "true", "false", "null", "0"])
                .prop_map(str::to_string),
            string(),
        ]
    }

    /// Any JSON value, nested up to a few levels, whitespace anywhere it may be.
    fn value() -> impl Strategy<Value = String> {
        scalar().prop_recursive(6, 64, 6, |inner| {
            prop_oneof![
                (proptest::collection::vec((ws(), inner.clone(), ws()), 0..6)).prop_map(|v| {
                    let items: Vec<String> = v
                        .into_iter()
                        .map(|(a, x, b)| format!("{a}{x}{b}"))
                        .collect();
                    format!("[{}]", items.join(","))
                }),
                (proptest::collection::vec((ws(), key(), ws(), ws(), inner, ws()), 0..6)).prop_map(
                    |v| {
                        let items: Vec<String> = v
                            .into_iter()
                            .map(|(a, k, b, c, x, d)| format!("{a}{k}{b}:{c}{x}{d}"))
                            .collect();
                        format!("{{{}}}", items.join(","))
                    }
                ),
            ]
        })
    }

    fn facts(s: &Scanner) -> String {
        crate::usage::tests::reading(s)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1500))]

        /// Every JSON body (an object or an array, whitespace around) is read by the body walk,
        /// never given up, and read exactly as the resumable scanner reads it, as an SSE
        /// payload and as a JSON body (`choices` and `candidates` skipped).
        #[test]
        fn body_walk_reads_any_json_as_the_scanner(
            v in value(), before in ws(), after in ws(), array in any::<bool>(),
            allow in prop::sample::select(vec![ALL, OPENAI, ANTHROPIC, GEMINI]),
            json_body in any::<bool>(),
        ) {
            let top = if array { format!("[{v}]") } else { format!("{{\"x\":{v}}}") };
            let body = format!("{before}{top}{after}");
            let full = super::resumable_reading(allow, json_body, body.as_bytes());
            let mut walk = Scanner::new(allow);
            walk.json_body = json_body;
            walk.begin();
            prop_assert!(walk.feed_body(body.as_bytes()), "gave up: {}", body);
            walk.end();
            prop_assert_eq!(facts(&walk), facts(&full), "{}", body);
        }

        /// A JSON body whose large member (`choices`, `content`, `candidates`) ends inside a
        /// buffer, the walk reading the rest of that buffer (`walk_rest`), reads exactly as
        /// the resumable scanner alone reads it: any value in the large member and after it,
        /// any split into three buffers, the body whole or damaged in one byte after the
        /// large member (where the walk may give up, or read on).
        #[test]
        fn rest_walk_reads_as_the_scanner(
            big in value(), rest in value(), tail in value(),
            large in prop::sample::select(vec!["choices", "content", "candidates", "x"]),
            cuts in (0.0f64..1.0, 0.0f64..1.0),
            damage in proptest::option::of((0.0f64..1.0, prop::sample::select(
                b"{}[]\",:0an \\"[..].to_vec()))),
            allow in prop::sample::select(vec![ALL, OPENAI, ANTHROPIC, GEMINI]),
        ) {
            let head = format!("{{\"model\":\"m\",\"{large}\":[{big}]");
            let body = format!("{head},\"x\":{rest},\"usage\":{{\"input_tokens\":7,\"prompt_tokens\":5,\"x\":{tail}}}}}\n");
            let mut body = body.into_bytes();
            if let Some((at, c)) = damage {
                let n = body.len();
                let at = head.len() + ((n - head.len()) as f64 * at) as usize;
                body[at.min(n - 1)] = c;
            }
            let full = super::resumable_reading(allow, true, &body);
            let (a, b) = (cuts.0.min(cuts.1), cuts.0.max(cuts.1));
            let (a, b) = ((body.len() as f64 * a) as usize, (body.len() as f64 * b) as usize);
            let mut split = Scanner::new(allow);
            split.json_body = true;
            split.begin();
            for piece in [&body[..a], &body[a..b], &body[b..]] {
                split.feed(piece);
            }
            split.end();
            prop_assert_eq!(facts(&split), facts(&full), "{}", String::from_utf8_lossy(&body));
        }
    }
}
