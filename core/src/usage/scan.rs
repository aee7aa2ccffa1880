//! A resumable JSON scanner that reads only what [`super::providers`] asks for.
//!
//! It takes a payload in pieces of any size and keeps a few hundred bytes of state, so that a
//! body of megabytes is never held. It tracks the path only through the containers the provider
//! table names (at most [`MAX_TRACK`] deep); every other container is skipped by counting
//! brackets outside strings, and uninteresting strings are skipped by searching their next quote
//! or backslash (16 bytes, then 64 bytes a step, `memchr2` past 272 bytes). It is not a
//! validator: it notices what breaks its walk (a stray byte, a mismatched bracket, an
//! incomplete payload) and flags it, nothing more.

mod probe;
mod shape;
mod whole;

use probe::quote_or_backslash;
pub(crate) use probe::{equal_prefix, find_quote_u, first_difference};
#[cfg(test)]
pub(crate) use shape::MAX_STEPS as SHAPE_STEPS;
pub(crate) use shape::{Shapes, SHAPES_BYTES};
#[cfg(test)]
pub(crate) use shape::{MATCH_CREDIT, MAX_NOTE_FAILS, NOTE_COST, NOTE_CREDIT_CAP};

use super::providers::{self, Act, Dialects, Node, Raw, MAX_COUNT};

/// The deepest path the provider table needs (top-level array, response, candidates, candidate,
/// content, parts, part) plus headroom.
const MAX_TRACK: usize = 8;
/// Keys longer than this are none of ours: they are skipped uncompared.
const KEY_CAP: usize = 32;
/// The longest event `type` we compare (the longest known name is 42 bytes).
const KIND_CAP: usize = 48;
/// The model name is kept up to this many bytes (the glue's label limit is below it).
pub const MODEL_CAP: usize = 256;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum St {
    /// Before the top-level value.
    Start,
    /// A value is expected (after `:` or `,` in an array).
    Value,
    /// After `[`: a value or `]`.
    ValueOrClose,
    /// After `{`: a key or `}`.
    KeyOrClose,
    /// After `,` in an object: a key.
    Key,
    InKey,
    KeyEscape,
    Colon,
    /// After a value: `,` or a closing bracket.
    After,
    Str,
    StrEscape,
    /// Inside `\uXXXX` of a model name: the number of hex digits read.
    StrUnicode(u8),
    Num,
    /// A literal (`true`, `false`, `null`).
    Lit,
    /// Inside a skipped container.
    Skip,
    SkipStr,
    SkipEscape,
    /// The top-level value is complete.
    Done,
    Error,
}

/// A short byte string kept inline (event types); longer input marks it as overlong.
#[derive(Clone, Copy)]
pub(crate) struct Small<const N: usize> {
    len: u8,
    over: bool,
    bytes: [u8; N],
}

impl<const N: usize> Default for Small<N> {
    fn default() -> Self {
        Small {
            len: 0,
            over: false,
            bytes: [0; N],
        }
    }
}

impl<const N: usize> Small<N> {
    pub(crate) fn clear(&mut self) {
        self.len = 0;
        self.over = false;
    }

    pub(crate) fn push(&mut self, s: &[u8]) {
        let len = usize::from(self.len);
        if len + s.len() > N {
            self.over = true;
            return;
        }
        self.bytes[len..len + s.len()].copy_from_slice(s);
        self.len = (len + s.len()) as u8;
    }

    /// The bytes, or nothing when the value did not fit (it cannot be one we compare with).
    pub(crate) fn get(&self) -> &[u8] {
        if self.over {
            &[]
        } else {
            &self.bytes[..usize::from(self.len)]
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0 && !self.over
    }
}

/// The model name of the response: the first non-empty one wins, JSON-unescaped, bounded.
#[derive(Clone, Copy)]
pub(crate) struct Model {
    len: u16,
    done: bool,
    /// The bytes are known to be a label value as they are (`labels::is_clean`): set by a
    /// folded model's effect, which checked them once; any other write clears it.
    pub(crate) label: bool,
    bytes: [u8; MODEL_CAP],
}

impl Default for Model {
    fn default() -> Self {
        Model {
            len: 0,
            done: false,
            label: false,
            bytes: [0; MODEL_CAP],
        }
    }
}

impl Model {
    #[inline]
    pub(crate) fn get(&self) -> Option<&[u8]> {
        self.done.then(|| &self.bytes[..usize::from(self.len)])
    }

    pub(crate) fn known(&self) -> bool {
        self.done
    }

    fn push(&mut self, s: &[u8]) {
        self.label = false;
        let len = usize::from(self.len);
        let n = s.len().min(MODEL_CAP - len);
        self.bytes[len..len + n].copy_from_slice(&s[..n]);
        self.len = (len + n) as u16;
    }

    fn push_char(&mut self, c: u32) {
        let c = char::from_u32(c).unwrap_or(char::REPLACEMENT_CHARACTER);
        let mut b = [0u8; 4];
        self.push(c.encode_utf8(&mut b).as_bytes());
    }

    /// Ends the string: a name cut by the bound loses its incomplete last character.
    fn finish(&mut self) {
        let mut len = usize::from(self.len);
        if len == MODEL_CAP {
            let mut start = len;
            while start > 0 && self.bytes[start - 1] & 0xC0 == 0x80 && len - start < 3 {
                start -= 1;
            }
            if start > 0 && self.bytes[start - 1] >= 0xC0 {
                let lead = self.bytes[start - 1];
                let need = if lead >= 0xF0 {
                    4
                } else if lead >= 0xE0 {
                    3
                } else {
                    2
                };
                if len - (start - 1) < need {
                    len = start - 1;
                }
            }
        }
        self.len = len as u16;
        self.done = len > 0;
    }
}

/// What one payload (an SSE event's data, or a whole JSON body) said.
#[derive(Clone, Copy, Default)]
pub(crate) struct Facts {
    /// Dialects whose generated-content rule matched (path based: Chat, Gemini).
    pub content: Dialects,
    /// A non-empty top-level `delta` string (OpenAI Responses `*.delta` events).
    pub delta: bool,
    /// Dialects the payload's keys are evidence of.
    pub hints: Dialects,
    /// The top-level `type`.
    pub kind: Small<KIND_CAP>,
    /// The usage objects that closed with at least one valid count, merged in order.
    pub usage: Raw,
    /// A count was not a non-negative integer ≤ 10^12, or a usage object had no valid count.
    pub bad_count: bool,
    /// The walk broke: the payload is not JSON, or not complete.
    pub error: bool,
}

impl Facts {
    /// What `Facts::default()` is, writing only what is read (not the inline buffers' bytes).
    #[inline(always)]
    pub(crate) fn reset(&mut self) {
        let Facts {
            content,
            delta,
            hints,
            kind,
            usage,
            bad_count,
            error,
        } = self;
        *content = 0;
        *delta = false;
        *hints = 0;
        kind.clear();
        usage.clear();
        *bad_count = false;
        *error = false;
    }
}

/// See the module documentation.
#[derive(Clone)]
pub(crate) struct Scanner {
    st: St,
    /// Number of tracked open containers; `nodes[..depth]` are their meanings.
    depth: u8,
    nodes: [Node; MAX_TRACK],
    /// Nesting inside a skipped container.
    skip: u32,
    /// What to do with the value (or string) in progress.
    act: Act,
    key: Small<KEY_CAP>,
    num: u64,
    num_bad: bool,
    /// `\uXXXX` in a model name: the code unit being read, and a pending high surrogate.
    unit: u32,
    high: u32,
    /// Counts of the usage object being read; merged into `facts.usage` when it closes.
    stage: Raw,
    stage_valid: bool,
    /// The dialects whose fields are read.
    pub(crate) allow: Dialects,
    pub(crate) facts: Facts,
    pub(crate) model: Model,
    /// Reading a JSON body (not an SSE payload): its `choices` and `candidates` are skipped.
    pub(crate) json_body: bool,
    /// A JSON body's members after a skipped one may be read by the walk (see
    /// [`Scanner::walk_rest`]); off only in tests, for the resumable reading alone.
    pub(crate) walks_rest: bool,
    /// The walk of the rest was tried in the buffer being fed (once per buffer: a failed
    /// walk has read the buffer's rest, and a buffer of many skipped members must not be
    /// read once per member).
    rest_tried: bool,
    /// Walks of the rest tried (tests only).
    #[cfg(test)]
    pub(crate) rest_walks: u32,
}

impl Scanner {
    pub(crate) fn new(allow: Dialects) -> Self {
        Scanner {
            st: St::Start,
            depth: 0,
            nodes: [Node::Root; MAX_TRACK],
            skip: 0,
            act: Act::Skip,
            key: Small::default(),
            num: 0,
            num_bad: false,
            unit: 0,
            high: 0,
            stage: Raw::default(),
            stage_valid: false,
            allow,
            facts: Facts::default(),
            model: Model::default(),
            json_body: false,
            walks_rest: true,
            rest_tried: false,
            #[cfg(test)]
            rest_walks: 0,
        }
    }

    /// Makes this scanner what [`Scanner::new`] makes, begun, without writing the bytes of
    /// its inline buffers past their lengths (the model's 256, never read): a pooled reader's
    /// reset.
    pub(crate) fn renew(&mut self, allow: Dialects) {
        // Every field by name (a field added later fails to compile until it is set here).
        let Scanner {
            st,
            depth,
            nodes,
            skip,
            act,
            key,
            num,
            num_bad,
            unit,
            high,
            stage,
            stage_valid,
            allow: a,
            facts,
            model,
            json_body,
            walks_rest,
            rest_tried,
            #[cfg(test)]
            rest_walks,
        } = self;
        *st = St::Start;
        *depth = 0;
        *nodes = [Node::Root; MAX_TRACK];
        *skip = 0;
        *act = Act::Skip;
        key.clear();
        *num = 0;
        *num_bad = false;
        *unit = 0;
        *high = 0;
        stage.clear();
        *stage_valid = false;
        *a = allow;
        facts.reset();
        model.len = 0;
        model.done = false;
        model.label = false;
        *json_body = false;
        *walks_rest = true;
        *rest_tried = false;
        #[cfg(test)]
        {
            *rest_walks = 0;
        }
    }

    /// Starts a payload.
    pub(crate) fn begin(&mut self) {
        self.st = St::Start;
        self.depth = 0;
        self.skip = 0;
        self.high = 0;
        self.facts.reset();
        if !self.model.done {
            self.model.len = 0;
        }
    }

    /// Starts a payload in the middle of a top-level object, where a key is expected: the
    /// caller checks with [`Scanner::ended_cleanly`] that the assumption held.
    pub(crate) fn begin_member(&mut self) {
        self.begin();
        self.depth = 1;
        self.nodes[0] = Node::Root;
        self.st = St::Key;
    }

    /// Ends the payload; an incomplete one is an error.
    pub(crate) fn end(&mut self) {
        match self.st {
            St::Start | St::Done => {}
            _ => self.facts.error = true,
        }
        if !self.model.done {
            self.model.len = 0;
        }
    }

    /// Before any byte of the payload's top-level value (whitespace aside).
    pub(crate) fn at_start(&self) -> bool {
        self.st == St::Start
    }

    /// After [`Scanner::end`]: the walk reached the end of the top-level value without error.
    pub(crate) fn ended_cleanly(&self) -> bool {
        self.st == St::Done && !self.facts.error
    }

    pub(crate) fn feed(&mut self, b: &[u8]) {
        self.rest_tried = false;
        let mut i = 0;
        while i < b.len() {
            i = match self.st {
                St::Skip => self.skip_container(b, i),
                St::Str | St::SkipStr => self.string(b, i),
                St::InKey => self.key_bytes(b, i),
                St::Num => self.number(b, i),
                St::Lit => {
                    let mut j = i;
                    while j < b.len() && b[j].is_ascii_alphabetic() {
                        j += 1;
                    }
                    if j < b.len() {
                        self.st = St::After;
                    }
                    j
                }
                St::Error => b.len(),
                St::StrEscape => self.escape(b[i], i),
                St::StrUnicode(n) => self.unicode(b[i], n, i),
                St::KeyEscape => {
                    self.st = St::InKey;
                    i + 1
                }
                St::SkipEscape => {
                    self.st = St::SkipStr;
                    i + 1
                }
                _ => {
                    let c = b[i];
                    if !matches!(c, b' ' | b'\n' | b'\r' | b'\t') {
                        self.structural(c);
                    }
                    i + 1
                }
            };
        }
    }

    fn fail(&mut self) {
        self.facts.error = true;
        self.st = St::Error;
    }

    fn top(&self) -> Option<Node> {
        self.depth
            .checked_sub(1)
            .map(|d| self.nodes[usize::from(d)])
    }

    /// A byte outside strings, numbers and skipped containers (never whitespace).
    fn structural(&mut self, c: u8) {
        match (self.st, c) {
            (St::Start, _) => {
                self.act = Act::Open(Node::Root);
                if c == b'[' {
                    self.act = Act::Open(Node::TopArray);
                }
                if c == b'{' || c == b'[' {
                    self.value(c);
                } else {
                    self.fail();
                }
            }
            (St::Value, _) => self.value(c),
            (St::ValueOrClose, b']') => self.close(true),
            (St::ValueOrClose, _) => self.value(c),
            (St::KeyOrClose, b'}') => self.close(false),
            (St::KeyOrClose | St::Key, b'"') => {
                self.key.clear();
                self.st = St::InKey;
            }
            (St::Colon, b':') => self.st = St::Value,
            (St::After, b',') => match self.top() {
                Some(n) if n.is_array() => {
                    self.act = providers::element(n);
                    self.st = St::Value;
                }
                _ => self.st = St::Key,
            },
            (St::After, b'}') => self.close(false),
            (St::After, b']') => self.close(true),
            _ => self.fail(),
        }
    }

    /// The first byte of a value, to be handled according to `self.act`.
    fn value(&mut self, c: u8) {
        if let Act::AnyContent(d) = self.act {
            if c != b'n' {
                self.facts.content |= d;
            }
        }
        match c {
            b'{' | b'[' => {
                let array = c == b'[';
                match self.act {
                    Act::Open(node)
                        if node.is_array() == array && usize::from(self.depth) < MAX_TRACK =>
                    {
                        self.nodes[usize::from(self.depth)] = node;
                        self.depth += 1;
                        if node.is_usage() {
                            self.stage.clear();
                            self.stage_valid = false;
                        }
                        if array {
                            self.act = providers::element(node);
                            self.st = St::ValueOrClose;
                        } else {
                            self.st = St::KeyOrClose;
                        }
                    }
                    _ => {
                        self.skip = 1;
                        self.st = St::Skip;
                    }
                }
            }
            b'"' => {
                if self.act == Act::Model && self.model.done {
                    self.act = Act::Skip;
                }
                if self.act == Act::Type {
                    self.facts.kind.clear();
                }
                self.st = St::Str;
            }
            b'0'..=b'9' | b'-' => {
                self.num = u64::from(c.wrapping_sub(b'0'));
                self.num_bad = c == b'-';
                self.st = St::Num;
            }
            b't' | b'f' | b'n' => {
                if matches!(self.act, Act::Count(_)) && c != b'n' {
                    self.facts.bad_count = true;
                }
                self.st = St::Lit;
            }
            _ => self.fail(),
        }
    }

    fn close(&mut self, array: bool) {
        let Some(node) = self.top() else {
            return self.fail();
        };
        if node.is_array() != array {
            return self.fail();
        }
        self.depth -= 1;
        if node.is_usage() {
            if self.stage_valid {
                self.facts.usage.merge(&self.stage);
            } else {
                self.facts.bad_count = true;
            }
        }
        self.st = if self.depth == 0 { St::Done } else { St::After };
    }

    /// Inside a skipped container, outside strings: only quotes and brackets matter, found
    /// 16 bytes a step (indentation, numbers and literals passed over).
    fn skip_container(&mut self, b: &[u8], mut i: usize) -> usize {
        while let Some(j) = probe::quote_or_bracket(b, i) {
            i = j + 1;
            match b[j] {
                b'"' => {
                    self.st = St::SkipStr;
                    return i;
                }
                b'{' | b'[' => self.skip = self.skip.saturating_add(1),
                _ => {
                    self.skip -= 1;
                    if self.skip == 0 {
                        self.st = St::After;
                        // A body's large member (an answer's `choices`) ended: its other
                        // members are mostly in this buffer, and the walk reads them faster.
                        if self.depth == 1 && self.json_body && self.walk_rest(&b[i..]) {
                            return b.len();
                        }
                        return i;
                    }
                }
            }
        }
        b.len()
    }

    /// Inside a string (a value, or one in a skipped container).
    fn string(&mut self, b: &[u8], i: usize) -> usize {
        let rest = &b[i..];
        if self.st == St::Str {
            match self.act {
                Act::Model => return self.model_bytes(b, i),
                Act::Type => return self.kind_bytes(b, i),
                Act::Content(d) | Act::AnyContent(d) => {
                    if rest[0] != b'"' {
                        self.facts.content |= d;
                    }
                    self.act = Act::Skip;
                }
                Act::Delta => {
                    self.facts.delta |= rest[0] != b'"';
                    self.act = Act::Skip;
                }
                Act::Count(_) => {
                    self.facts.bad_count = true;
                    self.act = Act::Skip;
                }
                Act::Skip | Act::Open(_) => {}
            }
        }
        // To the closing quote, passing each escape (a backslash and the byte after it,
        // whatever it is: what the escape states do for a string only skipped) in place: a
        // long answer's `\n`s and `\"`s cost a search each, not a trip through the states.
        let mut k = 0;
        while let Some(j) = quote_or_backslash(rest, k) {
            if rest[j] == b'"' {
                self.st = if self.st == St::Str {
                    St::After
                } else {
                    St::Skip
                };
                return i + j + 1;
            }
            if j + 1 == rest.len() {
                self.st = if self.st == St::Str {
                    St::StrEscape
                } else {
                    St::SkipEscape
                };
                return b.len();
            }
            k = j + 2;
        }
        b.len()
    }

    fn kind_bytes(&mut self, b: &[u8], i: usize) -> usize {
        let rest = &b[i..];
        match memchr::memchr2(b'"', b'\\', rest) {
            Some(j) => {
                self.facts.kind.push(&rest[..j]);
                if rest[j] == b'"' {
                    self.st = St::After;
                } else {
                    // An escaped event type is none we know.
                    self.facts.kind.over = true;
                    self.st = St::StrEscape;
                }
                i + j + 1
            }
            None => {
                self.facts.kind.push(rest);
                b.len()
            }
        }
    }

    fn model_bytes(&mut self, b: &[u8], i: usize) -> usize {
        let rest = &b[i..];
        let end = memchr::memchr2(b'"', b'\\', rest);
        if self.high != 0 && rest[0] != b'\\' {
            // A high surrogate not followed by its low half.
            self.model.push_char(0xFFFD);
            self.high = 0;
        }
        match end {
            Some(j) => {
                self.model.push(&rest[..j]);
                if rest[j] == b'"' {
                    self.model.finish();
                    self.st = St::After;
                } else {
                    self.st = St::StrEscape;
                }
                i + j + 1
            }
            None => {
                self.model.push(rest);
                b.len()
            }
        }
    }

    /// The byte after a backslash in a string value.
    fn escape(&mut self, c: u8, i: usize) -> usize {
        self.st = St::Str;
        if self.act == Act::Model {
            if c == b'u' {
                self.unit = 0;
                self.st = St::StrUnicode(0);
                return i + 1;
            }
            if self.high != 0 {
                self.model.push_char(0xFFFD);
                self.high = 0;
            }
            let out = match c {
                b'n' => b'\n',
                b't' => b'\t',
                b'r' => b'\r',
                b'b' => 8,
                b'f' => 12,
                other => other,
            };
            self.model.push(&[out]);
        }
        i + 1
    }

    fn unicode(&mut self, c: u8, n: u8, i: usize) -> usize {
        let Some(d) = (c as char).to_digit(16) else {
            self.fail();
            return i;
        };
        self.unit = self.unit << 4 | d;
        if n < 3 {
            self.st = St::StrUnicode(n + 1);
            return i + 1;
        }
        self.st = St::Str;
        let u = self.unit;
        match u {
            0xD800..=0xDBFF => {
                if self.high != 0 {
                    self.model.push_char(0xFFFD);
                }
                self.high = u;
            }
            0xDC00..=0xDFFF if self.high != 0 => {
                self.model
                    .push_char(0x10000 + ((self.high - 0xD800) << 10) + (u - 0xDC00));
                self.high = 0;
            }
            _ => {
                if self.high != 0 {
                    self.model.push_char(0xFFFD);
                    self.high = 0;
                }
                self.model.push_char(u);
            }
        }
        i + 1
    }

    fn key_bytes(&mut self, b: &[u8], i: usize) -> usize {
        let rest = &b[i..];
        let j = quote_or_backslash(rest, 0).unwrap_or(rest.len());
        if j == rest.len() {
            self.key.push(rest);
            return b.len();
        }
        if rest[j] == b'\\' {
            // Our keys are plain ASCII: an escaped key is none of them.
            self.key.over = true;
            self.st = St::KeyEscape;
            return i + j + 1;
        }
        let node = self.top().unwrap_or(Node::Root);
        let (act, hint) = if self.key.is_empty() {
            self.member(node, &rest[..j])
        } else {
            self.key.push(&rest[..j]);
            self.member(node, self.key.get())
        };
        self.act = act;
        self.facts.hints |= hint;
        self.st = St::Colon;
        i + j + 1
    }

    /// The provider table's action for `key` in `node`. A JSON body's `choices` and
    /// `candidates` are skipped (bracket-counted) instead: what they tell (the first content
    /// of a stream) a body does not report, and their keys' hints are the `choices` and
    /// `candidates` keys' own.
    #[inline(always)]
    pub(crate) fn member(&self, node: Node, key: &[u8]) -> (Act, Dialects) {
        match providers::member(node, key, self.allow) {
            (Act::Open(Node::Choices | Node::Candidates), hint) if self.json_body => {
                (Act::Skip, hint)
            }
            found => found,
        }
    }

    fn number(&mut self, b: &[u8], mut i: usize) -> usize {
        while i < b.len() {
            match b[i] {
                c @ b'0'..=b'9' => {
                    self.num = self
                        .num
                        .saturating_mul(10)
                        .saturating_add(u64::from(c - b'0'));
                }
                b'.' | b'e' | b'E' | b'+' | b'-' => self.num_bad = true,
                _ => {
                    self.end_number();
                    return i;
                }
            }
            i += 1;
        }
        i
    }

    fn end_number(&mut self) {
        self.st = St::After;
        if let Act::Count(s) = self.act {
            if self.num_bad || self.num > MAX_COUNT {
                self.facts.bad_count = true;
            } else {
                self.stage.set(s, self.num);
                self.stage_valid = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::providers::{slot, ALL};

    fn scan(json: &str, size: usize) -> Scanner {
        let mut s = Scanner::new(ALL);
        s.begin();
        for piece in json.as_bytes().chunks(size.max(1)) {
            s.feed(piece);
        }
        s.end();
        s
    }

    #[test]
    fn usage_only_at_its_place() {
        let json = r#"{"choices":[{"delta":{"content":"say \"usage\":{\"prompt_tokens\":9}"},"x":{"usage":{"prompt_tokens":8}}}],
            "tool":{"usage":{"prompt_tokens":7}},"usage":{"prompt_tokens":3,"completion_tokens":4}}"#;
        for size in [1, 2, 7, json.len()] {
            let s = scan(json, size);
            assert!(s.ended_cleanly());
            assert_eq!(s.facts.usage.get(slot::PROMPT), Some(3));
            assert_eq!(s.facts.usage.get(slot::COMPLETION), Some(4));
            assert_eq!(s.facts.content, crate::usage::providers::OPENAI);
        }
    }

    #[test]
    fn counts_must_be_plain_integers() {
        let s = scan(
            r#"{"usage":{"prompt_tokens":-1,"completion_tokens":2.0,"total_tokens":1e3,"input_tokens":"5"}}"#,
            3,
        );
        assert!(!s.facts.usage.any());
        assert!(s.facts.bad_count);
        let s = scan(
            r#"{"usage":{"prompt_tokens":1000000000000,"completion_tokens":1000000000001}}"#,
            3,
        );
        assert_eq!(s.facts.usage.get(slot::PROMPT), Some(MAX_COUNT));
        assert_eq!(s.facts.usage.get(slot::COMPLETION), None);
    }

    #[test]
    fn model_is_unescaped_and_bounded() {
        let s = scan(r#"{"model":"a\/b\u00e9\ud83d\ude00\n\ud800x"}"#, 1);
        assert_eq!(s.model.get(), Some("a/bé😀\n\u{FFFD}x".as_bytes()));
        let long = format!(r#"{{"model":"{}"}}"#, "é".repeat(200));
        let s = scan(&long, 5);
        let m = s.model.get().unwrap();
        assert!(
            m.len() <= MODEL_CAP && std::str::from_utf8(m).is_ok(),
            "{}",
            m.len()
        );
        // An empty model is none; the next one counts.
        let s = scan(r#"{"model":"","message":{"model":"claude"}}"#, 2);
        assert_eq!(s.model.get(), Some(&b"claude"[..]));
    }

    #[test]
    fn broken_json_is_an_error() {
        for bad in ["{\"a\":}", "[1,2", "{\"a\" 1}", "nope", "{}}", "{\"a\":[}"] {
            let s = scan(bad, 1);
            assert!(s.facts.error, "{bad}");
        }
        let s = scan(
            " [ {\"usageMetadata\": {\"promptTokenCount\": 4}} , {} ] ",
            1,
        );
        assert!(s.ended_cleanly());
        assert_eq!(s.facts.usage.get(slot::G_PROMPT), Some(4));
    }
}
