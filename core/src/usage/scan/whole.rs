//! The scanner's reading of a payload held whole in one buffer, by recursive descent instead of
//! the byte-by-byte state machine: strings are skipped by searching their end, keys are
//! compared as slices, skipped containers are walked by a tight bracket-counting loop.
//!
//! It reads exactly what [`Scanner::feed`] would read (the same [`providers`] table, the same
//! number, literal and string rules, the same bound on tracked depth), but it only accepts a
//! payload it can walk to the end without a single error: anything else (an incomplete value,
//! a byte the scanner would stop at, a top-level value followed by more than whitespace)
//! makes it give up, and the caller scans the payload the resumable way. So it never decides
//! anything the scanner would decide differently: on success the scanner is left exactly as
//! `feed` of the same bytes would have left it (`Done`, with the same facts and model).
//!
//! Two walks share the value rules: `w_*` for SSE payloads (`feed_whole`, `feed_members`),
//! searching byte strings with `memchr` and whitespace a word at a time, and `b_*` for JSON
//! bodies (`feed_body`), whose searches are [`probe`]'s 16- and 64-byte SSE2 steps.

use super::probe;
use super::{Scanner, St, MAX_TRACK};
use crate::usage::providers::{self, Act, Node, Raw, MAX_COUNT};

/// Gave up: the payload is not one the walk can prove it reads as the scanner does.
struct Stop;

type Pos = Result<usize, Stop>;

#[inline(always)]
fn ws(b: &[u8], i: usize) -> usize {
    match b.get(i) {
        // Most tokens follow each other without whitespace,
        Some(&c) if c > b' ' => i,
        // or after one space (pretty-printed bodies after `:`).
        Some(b' ') if b.get(i + 1).is_some_and(|&c| c > b' ') => i + 1,
        _ => ws_run(b, i),
    }
}

/// Past the whitespace at `i`. Pretty-printed bodies (OpenAI's JSON responses) indent with a
/// newline and a run of spaces: a `\n`, `\r` or `\t` is passed alone, spaces eight at a time
/// (the first byte of a word that is not a space is exact: XOR with spaces is zero exactly on
/// them).
#[inline(always)]
fn ws_run(b: &[u8], mut i: usize) -> usize {
    loop {
        if let Some(b'\n' | b'\r' | b'\t') = b.get(i) {
            i += 1;
        }
        match b.get(i..i + 8) {
            Some(w) => {
                let x = u64::from_le_bytes(w.try_into().unwrap_or_default()) ^ (ONES * 0x20);
                if x == 0 {
                    i += 8;
                    continue;
                }
                i += (x.trailing_zeros() / 8) as usize;
            }
            None => {
                while i < b.len() && b[i] == b' ' {
                    i += 1;
                }
            }
        }
        if !matches!(b.get(i), Some(b'\n' | b'\r' | b'\t')) {
            return i;
        }
    }
}

const ONES: u64 = 0x0101_0101_0101_0101;
#[cfg(not(target_arch = "x86_64"))]
const HIGH: u64 = 0x8080_8080_8080_8080;

/// The first `"` or `\\` at or after `i`. On x86-64 with the `memchr` crate's SSE2 searcher
/// (SSE2 is part of the x86-64 baseline, so its first 16-byte probe is inlined here: most strings
/// end within it); elsewhere eight bytes at a time.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn quote_or_escape(b: &[u8], i: usize) -> Option<usize> {
    use memchr::arch::x86_64::sse2::memchr::Two;
    let rest = b.get(i..)?;
    let two = Two::new(b'"', b'\\')?;
    two.find(rest).map(|j| i + j)
}

/// The first `"` or `\\` at or after `i`, eight bytes at a time (a word's lowest flagged byte
/// is exact: the borrow of the zero-byte test only flags bytes above a true match).
#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn quote_or_escape(b: &[u8], mut i: usize) -> Option<usize> {
    while let Some(w) = b.get(i..i + 8) {
        let w = u64::from_le_bytes(w.try_into().ok()?);
        let q = w ^ (ONES * u64::from(b'"'));
        let e = w ^ (ONES * u64::from(b'\\'));
        let m = (q.wrapping_sub(ONES) & !q | e.wrapping_sub(ONES) & !e) & HIGH;
        if m != 0 {
            return Some(i + (m.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    while i < b.len() {
        if matches!(b[i], b'"' | b'\\') {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// The closing quote of the string whose content starts at `i` (escapes skipped as the scanner
/// skips them: the byte after a backslash, whatever it is), and whether it has escapes.
#[inline(always)]
fn string_end(b: &[u8], mut i: usize) -> Result<(usize, bool), Stop> {
    let mut escaped = false;
    loop {
        let j = quote_or_escape(b, i).ok_or(Stop)?;
        if b[j] == b'"' {
            return Ok((j, escaped));
        }
        escaped = true;
        i = j + 2;
        if i > b.len() {
            return Err(Stop);
        }
    }
}

/// Past the byte `c` expected at `i` after optional whitespace, and the whitespace after it.
#[inline(always)]
fn token(b: &[u8], i: usize, c: u8) -> Pos {
    let i = if b.get(i) == Some(&c) { i } else { ws(b, i) };
    if b.get(i) == Some(&c) {
        Ok(ws(b, i + 1))
    } else {
        Err(Stop)
    }
}

/// Past the value at `b[i]` (not whitespace) read with [`Act::Skip`], as [`Scanner::w_value`]
/// reads it: a container bracket-counted, a string to its end, a number or literal to the
/// byte that ends its run (which must exist).
#[inline(always)]
fn skip_value(b: &[u8], i: usize) -> Pos {
    let &c = b.get(i).ok_or(Stop)?;
    let mut j = i + 1;
    match c {
        b'"' => return Ok(string_end(b, j)?.0 + 1),
        b'{' | b'[' => return skip_container(b, i),
        b'0'..=b'9' | b'-' => {
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

/// Past a container the scanner skips (`b[i]` is its opening bracket): brackets outside
/// strings are counted whatever their kind, as the scanner's skip does.
fn skip_container(b: &[u8], mut i: usize) -> Pos {
    let mut depth = 0u32;
    while i < b.len() {
        let c = b[i];
        i += 1;
        match c {
            b'"' => i = string_end(b, i)?.0 + 1,
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth -= 1;
                if depth == 0 {
                    return Ok(i);
                }
            }
            _ => {}
        }
    }
    Err(Stop)
}

impl Scanner {
    /// Reads `b` as one whole payload (the scanner must be just begun, before any byte of the
    /// top-level value). Returns false and leaves the scanner just begun when it cannot prove
    /// the reading; then feed the bytes the resumable way.
    pub(crate) fn feed_whole(&mut self, b: &[u8]) -> bool {
        debug_assert!(self.st == St::Start);
        let known = self.model.done;
        let i = ws(b, 0);
        let read = match b.get(i) {
            Some(b'{') => self.w_object(b, i + 1, Node::Root, 0, true),
            Some(b'[') => self.w_array(b, i + 1, Node::TopArray, 0),
            _ => Err(Stop),
        };
        self.walked(read.map(|end| ws(b, end) == b.len()), known)
    }

    /// Reads `b` as the rest of a top-level object from one of its keys on (as
    /// [`Scanner::begin_member`] and `feed`): true when the walk ends with that object exactly
    /// at the end of `b` (whitespace aside), as [`Scanner::ended_cleanly`] would say. False
    /// leaves the scanner just begun.
    pub(crate) fn feed_members(&mut self, b: &[u8]) -> bool {
        self.begin();
        let known = self.model.done;
        let read = self.w_object(b, 0, Node::Root, 0, false);
        self.walked(read.map(|end| ws(b, end) == b.len()), known)
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
    fn walked(&mut self, read: Result<bool, Stop>, known: bool) -> bool {
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

    /// The members of an object of meaning `node` from `i` (just after its `{`, or at a key when
    /// `may_close` is false), opened at tracked depth `depth`; returns the position after its `}`.
    fn w_object(&mut self, b: &[u8], i: usize, node: Node, depth: usize, may_close: bool) -> Pos {
        let depth = depth + 1;
        if node.is_usage() {
            self.stage = Raw::default();
            self.stage_valid = false;
        }
        let mut i = ws(b, i);
        if may_close && b.get(i) == Some(&b'}') {
            return Ok(self.w_close(node, i + 1));
        }
        loop {
            if b.get(i) != Some(&b'"') {
                return Err(Stop);
            }
            let k = i + 1;
            let (e, escaped) = string_end(b, k)?;
            // Our keys are plain: an escaped key is none of them (the scanner compares it as
            // empty).
            let key = if escaped { &[][..] } else { &b[k..e] };
            let act = self.act_of(node, key);
            i = token(b, e + 1, b':')?;
            i = match act {
                Act::Skip => skip_value(b, i)?,
                Act::Count(slot) if matches!(b.get(i), Some(b'0'..=b'9')) => {
                    self.w_count(b, i, slot)?
                }
                _ => self.w_value(b, i, act, depth)?,
            };
            match b.get(i) {
                Some(b',') => i = ws(b, i + 1),
                Some(b'}') => return Ok(self.w_close(node, i + 1)),
                _ => match b.get(ws(b, i)) {
                    Some(b',') => i = ws(b, ws(b, i) + 1),
                    Some(b'}') => return Ok(self.w_close(node, ws(b, i) + 1)),
                    _ => return Err(Stop),
                },
            }
        }
    }

    fn w_close(&mut self, node: Node, end: usize) -> usize {
        if node.is_usage() {
            if self.stage_valid {
                self.facts.usage.merge(&self.stage);
            } else {
                self.facts.bad_count = true;
            }
        }
        end
    }

    /// The elements of an array of meaning `node` from `i` (just after its `[`).
    fn w_array(&mut self, b: &[u8], i: usize, node: Node, depth: usize) -> Pos {
        let depth = depth + 1;
        let act = providers::element(node);
        let mut i = ws(b, i);
        if b.get(i) == Some(&b']') {
            return Ok(i + 1);
        }
        loop {
            i = ws(b, self.w_value(b, i, act, depth)?);
            match b.get(i) {
                Some(b',') => i = ws(b, i + 1),
                Some(b']') => return Ok(i + 1),
                _ => return Err(Stop),
            }
        }
    }

    /// The value at `b[i]` (not whitespace), read according to `act` inside `depth` tracked
    /// containers; returns the position after it.
    fn w_value(&mut self, b: &[u8], i: usize, act: Act, depth: usize) -> Pos {
        let &c = b.get(i).ok_or(Stop)?;
        if let Act::AnyContent(d) = act {
            if c != b'n' {
                self.facts.content |= d;
            }
        }
        match c {
            b'{' | b'[' => {
                let array = c == b'[';
                match act {
                    Act::Open(node) if node.is_array() == array && depth < MAX_TRACK => {
                        if array {
                            self.w_array(b, i + 1, node, depth)
                        } else {
                            self.w_object(b, i + 1, node, depth, true)
                        }
                    }
                    _ => skip_container(b, i),
                }
            }
            b'"' => self.w_string(b, i + 1, act),
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

    /// A count (a value starting with a digit, read for `slot`) as [`Scanner::w_value`] reads
    /// it, without its dispatch.
    #[inline(always)]
    fn w_count(&mut self, b: &[u8], i: usize, slot: u8) -> Pos {
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

    /// A string value whose content starts at `i`; returns the position after its closing quote.
    fn w_string(&mut self, b: &[u8], i: usize, act: Act) -> Pos {
        let (e, escaped) = string_end(b, i)?;
        self.w_str(b, i, e, escaped, act)
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
    /// Reads `b` as a whole JSON body, as [`Scanner::feed_whole`] reads it (the same
    /// [`providers`] table, grammar checks and value rules, the same facts, the same cases
    /// given up), with the searches of [`probe`] (16 or 64 bytes a step): the next token, a
    /// key's end, a skipped string or container. Tracked containers are read token by token as the
    /// scanner reads them, skipped ones bracket-counted as it counts them; a key's `:` and
    /// the `,` or closing bracket after a value are looked for right where they mostly are
    /// before any search.
    pub(crate) fn feed_body(&mut self, b: &[u8]) -> bool {
        debug_assert!(self.st == St::Start);
        let known = self.model.done;
        let i = probe::tok(b, 0);
        let read = match b.get(i) {
            Some(b'{') => self.b_object(b, i + 1, Node::Root, 0),
            Some(b'[') => self.b_array(b, i + 1, Node::TopArray, 0),
            _ => Err(Stop),
        };
        self.walked(read.map(|end| probe::tok(b, end) == b.len()), known)
    }

    /// [`Scanner::w_object`] with the searches of [`probe`] (from just after the `{`).
    fn b_object(&mut self, b: &[u8], i: usize, node: Node, depth: usize) -> Pos {
        let depth = depth + 1;
        if node.is_usage() {
            self.stage = Raw::default();
            self.stage_valid = false;
        }
        let mut i = probe::tok(b, i);
        if b.get(i) == Some(&b'}') {
            return Ok(self.w_close(node, i + 1));
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
                Act::Skip => b_skip(b, i)?,
                Act::Count(slot) if matches!(b.get(i), Some(b'0'..=b'9')) => {
                    self.w_count(b, i, slot)?
                }
                // A tracked object (usage and its details): no detour through `b_value`.
                Act::Open(node)
                    if !node.is_array() && depth < MAX_TRACK && b.get(i) == Some(&b'{') =>
                {
                    self.b_object(b, i + 1, node, depth)?
                }
                _ => self.b_value(b, i, act, depth)?,
            };
            // `,` or `}` mostly right after the value.
            if !matches!(b.get(i), Some(b',' | b'}')) {
                i = probe::tok(b, i);
            }
            match b.get(i) {
                Some(b',') => i = probe::tok(b, i + 1),
                Some(b'}') => return Ok(self.w_close(node, i + 1)),
                _ => return Err(Stop),
            }
        }
    }

    /// [`Scanner::w_array`] with the searches of [`probe`] (from just after the `[`).
    fn b_array(&mut self, b: &[u8], i: usize, node: Node, depth: usize) -> Pos {
        let depth = depth + 1;
        let act = providers::element(node);
        let mut i = probe::tok(b, i);
        if b.get(i) == Some(&b']') {
            return Ok(i + 1);
        }
        loop {
            i = self.b_value(b, i, act, depth)?;
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

    /// [`Scanner::w_value`] with the searches of [`probe`]: the value at the token `i`, read
    /// for `act`; returns the position after it.
    fn b_value(&mut self, b: &[u8], i: usize, act: Act, depth: usize) -> Pos {
        let &ch = b.get(i).ok_or(Stop)?;
        match ch {
            b'{' | b'[' => {
                if let Act::AnyContent(d) = act {
                    self.facts.content |= d;
                }
                let array = ch == b'[';
                match act {
                    Act::Open(node) if node.is_array() == array && depth < MAX_TRACK => {
                        if array {
                            self.b_array(b, i + 1, node, depth)
                        } else {
                            self.b_object(b, i + 1, node, depth)
                        }
                    }
                    _ => probe::skip(b, i).ok_or(Stop),
                }
            }
            b'"' => match act {
                Act::Skip | Act::Open(_) => b_skip(b, i),
                Act::Model if self.model.done => b_skip(b, i),
                _ => {
                    if let Act::AnyContent(d) = act {
                        self.facts.content |= d;
                    }
                    let (e, escaped) = probe::string_end(b, i + 1).ok_or(Stop)?;
                    self.w_str(b, i + 1, e, escaped, act)
                }
            },
            _ => self.w_value(b, i, act, depth),
        }
    }
}

/// [`skip_value`] with the searches of [`probe`].
#[inline(always)]
fn b_skip(b: &[u8], i: usize) -> Pos {
    match b.get(i) {
        Some(b'"') => Ok(probe::string_end(b, i + 1).ok_or(Stop)?.0 + 1),
        Some(b'{' | b'[') => probe::skip(b, i).ok_or(Stop),
        _ => skip_value(b, i),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whitespace_runs_are_skipped_exactly() {
        for body in [
            &b"        \n        x"[..],
            b"\n  \r\n\t  x",
            b"   \x01  x",
            b"                                 ",
            b"",
            b"x",
            b" \n \n \n \n \n \n\t\n x",
        ] {
            for start in 0..=body.len() {
                let slow = start
                    + body[start..]
                        .iter()
                        .take_while(|c| matches!(c, b' ' | b'\n' | b'\r' | b'\t'))
                        .count();
                assert_eq!(ws(body, start), slow, "{body:?} from {start}");
            }
        }
    }
    use crate::usage::providers::ALL;

    #[test]
    fn walks_a_body() {
        let body = br#"{"id":"x","object":"chat.completion","model":"gpt","choices":[{"index":0,"message":{"content":"hi"}}],"usage":{"prompt_tokens":19,"completion_tokens":10,"prompt_tokens_details":{"cached_tokens":0}}}"#;
        let mut s = Scanner::new(ALL);
        s.begin();
        assert!(s.feed_whole(body));
    }
}

#[cfg(test)]
mod body_props {
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

    /// Keys the provider table knows (at some place) and others.
    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(vec![
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
            ])
            .prop_map(|k| format!("\"{k}\"")),
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
        /// never given up, and read exactly as the resumable scanner reads it.
        #[test]
        fn body_walk_reads_any_json_as_the_scanner(
            v in value(), before in ws(), after in ws(), array in any::<bool>(),
            allow in prop::sample::select(vec![ALL, OPENAI, ANTHROPIC, GEMINI]),
        ) {
            let top = if array { format!("[{v}]") } else { format!("{{\"x\":{v}}}") };
            let body = format!("{before}{top}{after}");
            let mut full = Scanner::new(allow);
            full.begin();
            full.feed(body.as_bytes());
            full.end();
            let mut walk = Scanner::new(allow);
            walk.begin();
            prop_assert!(walk.feed_body(body.as_bytes()), "gave up: {}", body);
            walk.end();
            prop_assert_eq!(facts(&walk), facts(&full), "{}", body);
        }
    }
}
