//! `text/event-stream` framing (WHATWG HTML, "Server-sent events", event stream interpretation),
//! in pieces of any size: line ends `\r\n`, `\n` or `\r` (also a `\r\n` split across buffers),
//! comments, `data:` and `event:` fields with one optional space, unknown fields ignored, a blank
//! line dispatching the event. Field values are handed on as ranges of the caller's buffer, so
//! nothing is copied here; the line-start state holds at most a field name's few bytes.

/// Receives a stream's fields. Ranges are into the `buf` given with them.
pub(crate) trait Sink {
    /// A piece of a `data:` line's value; `first` for its first piece.
    fn data(&mut self, buf: &[u8], start: usize, end: usize, first: bool);
    /// An `event:` line starts (its value replaces the event's type).
    fn event_start(&mut self);
    /// A piece of an `event:` line's value.
    fn event(&mut self, piece: &[u8]);
    /// A blank line: the event is complete. Returns whether it carried the first content.
    fn dispatch(&mut self, buf: &[u8]) -> bool;
    /// The end of `buf`: ranges into it are about to become invalid.
    fn buffer_end(&mut self, buf: &[u8]);
    /// No `data:` line of the event in progress has been seen yet.
    fn idle(&self) -> bool;
    /// A whole event (asked only when [`Sink::idle`]) whose one `data:` line has the value
    /// `buf[start..end]` and is followed by a blank line. The same as `data` twice and
    /// `dispatch`.
    fn whole(&mut self, buf: &[u8], start: usize, end: usize) -> bool;
    /// The same as [`Sink::whole`] for an event with one `event:` line, `name`, before its one
    /// `data:` line. The same as `event_start`, `event(name)` and `whole`.
    fn whole_named(&mut self, buf: &[u8], name: &[u8], start: usize, end: usize) -> bool {
        self.event_start();
        self.event(name);
        self.whole(buf, start, end)
    }
}

/// The first `\n` or `\r` in `h`. On x86-64 with AVX2 the searcher is called directly (built
/// once per process), which saves memchr's per-call dispatch (~25 instructions a line).
#[inline(always)]
pub(crate) fn line_end(h: &[u8]) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    {
        use memchr::arch::x86_64::avx2::memchr::Two;
        use std::sync::OnceLock;
        static AVX2: OnceLock<Option<Two>> = OnceLock::new();
        if let Some(two) = AVX2.get_or_init(|| Two::new(b'\n', b'\r')) {
            return two.find(h);
        }
    }
    memchr::memchr2(b'\n', b'\r', h)
}

/// Hands on the whole events at `buf[i..]` (the sink being idle, at a line start): `data:` and
/// `event:` + `data:` events ended by a blank line within `buf`. Returns where line-by-line
/// framing goes on.
#[inline(always)]
fn whole_events<S: Sink>(buf: &[u8], mut i: usize, sink: &mut S, first: &mut bool) -> usize {
    loop {
        let rest = &buf[i..];
        if rest.starts_with(b"data:") {
            let Some((next, s, end)) = data_event(buf, i + 5) else {
                break;
            };
            *first |= sink.whole(buf, s, end);
            i = next;
        } else if rest.starts_with(b"event:") {
            let Some((next, name, s, end)) = named_event(buf, i + 6) else {
                break;
            };
            *first |= sink.whole_named(buf, name, s, end);
            i = next;
        } else {
            break;
        }
    }
    i
}

/// A buffer that is exactly one whole event at a line start: `data:` (or `event:` and `data:`)
/// as [`whole_events`] frames it, ended by a blank line at the buffer's end. Returns the name
/// (`None` without `event:` line) and the data value's range. Anything else (more lines, more
/// events, a line cut) is `None`: framed by [`Framer::feed`].
#[inline(always)]
pub(crate) fn lone_event(buf: &[u8]) -> Option<(Option<&[u8]>, usize, usize)> {
    let (next, name, s, end) = if buf.starts_with(b"data:") {
        let (next, s, end) = data_event(buf, 5)?;
        (next, None, s, end)
    } else if buf.starts_with(b"event:") {
        let (next, name, s, end) = named_event(buf, 6)?;
        (next, Some(name), s, end)
    } else {
        return None;
    };
    (next == buf.len()).then_some((name, s, end))
}

/// After `data:` at `buf[s]`: the value's range and the index after the blank line, when the
/// `data:` line and a blank line follow, ended alike by `\n` or `\r\n`.
#[inline(always)]
fn data_event(buf: &[u8], mut s: usize) -> Option<(usize, usize, usize)> {
    if buf.get(s) == Some(&b' ') {
        s += 1;
    }
    let end = s + line_end(buf.get(s..)?)?;
    let next = match &buf[end..] {
        [b'\n', b'\n', ..] => end + 2,
        [b'\r', b'\n', b'\r', b'\n', ..] => end + 4,
        _ => return None,
    };
    Some((next, s, end))
}

/// The end of an event name at `buf[a..]`: the index of its line end.
#[inline(always)]
fn name_end(buf: &[u8], a: usize) -> Option<usize> {
    // The most frequent names are recognised without a search.
    const HOT: [&[u8]; 2] = [b"content_block_delta", b"response.output_text.delta"];
    let rest = &buf[a..];
    let hot = match rest.first() {
        Some(b'c') => HOT[0],
        Some(b'r') => HOT[1],
        _ => b"",
    };
    if hot.len() >= 8
        && rest.len() > hot.len()
        && words_eq(&rest[..hot.len()], hot)
        && matches!(rest[hot.len()], b'\n' | b'\r')
    {
        return Some(a + hot.len());
    }
    Some(a + line_end(rest)?)
}

/// `a == b` for slices of the same length ≥ 8, compared as (overlapping) 8-byte words.
#[inline(always)]
fn words_eq(a: &[u8], b: &[u8]) -> bool {
    let word = |s: &[u8], at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&s[at..at + 8]);
        u64::from_le_bytes(w)
    };
    let n = b.len();
    let mut at = 0;
    while at + 8 < n {
        if word(a, at) != word(b, at) {
            return false;
        }
        at += 8;
    }
    word(a, n - 8) == word(b, n - 8)
}

/// After `event:` at `buf[i]`: an `event:` line and a `data:` line, each ended by `\n` or
/// `\r\n`, and a blank line ended the same way as the data line, all in `buf`. Returns the
/// index after the blank line, the name (one leading space dropped) and the data value's
/// range. Any other shape is `None` (framed line by line).
#[inline(always)]
fn named_event(buf: &[u8], i: usize) -> Option<(usize, &[u8], usize, usize)> {
    let mut a = i;
    if buf.get(a) == Some(&b' ') {
        a += 1;
    }
    let e = name_end(buf, a)?;
    let d = match &buf[e..] {
        [b'\n', ..] => e + 1,
        [b'\r', b'\n', ..] => e + 2,
        _ => return None,
    };
    if !buf[d..].starts_with(b"data:") {
        return None;
    }
    let (next, s, end) = data_event(buf, d + 5)?;
    Some((next, &buf[a..e], s, end))
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Field {
    Data,
    Event,
    Ignored,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Line {
    /// At the start of a line.
    Start,
    /// Reading a field name (its bytes so far in `name`).
    Name,
    /// Just after the colon: one space is dropped.
    Space(Field),
    Value(Field),
}

/// The longest field name we tell apart ("event"); a longer one is ignored.
const NAME_CAP: usize = 5;

/// See the module documentation.
pub(crate) struct Framer {
    line: Line,
    /// The last byte seen was a `\r`: a `\n` right after it ends no further line.
    after_cr: bool,
    name: [u8; NAME_CAP],
    name_len: u8,
}

impl Framer {
    /// At a line start, no `\r` just before: what a buffer starts with starts a line.
    #[inline]
    pub(crate) fn at_line_start(&self) -> bool {
        matches!(self.line, Line::Start) && !self.after_cr
    }

    pub(crate) fn new() -> Self {
        Framer {
            line: Line::Start,
            after_cr: false,
            name: [0; NAME_CAP],
            name_len: 0,
        }
    }

    /// Frames `buf`; returns whether an event dispatched in it carried the first content.
    pub(crate) fn feed<S: Sink>(&mut self, buf: &[u8], sink: &mut S) -> bool {
        let mut first = false;
        let mut i = 0;
        let n = buf.len();
        if self.after_cr && n > 0 {
            self.after_cr = false;
            if buf[0] == b'\n' {
                i = 1;
            }
        }
        if matches!(self.line, Line::Start) && sink.idle() {
            i = whole_events(buf, i, sink, &mut first);
        }
        while i < n {
            match self.line {
                Line::Start => {
                    // The common line, recognised whole; the common event (`data: …` and a blank
                    // line) is handed on at once, its line end and first `"u` found in one pass.
                    if buf[i..].starts_with(b"data:") {
                        let mut s = i + 5;
                        if s == n {
                            i = s;
                            self.line = Line::Space(Field::Data);
                            continue;
                        }
                        if buf[s] == b' ' {
                            s += 1;
                        }
                        let end = line_end(&buf[s..]).map_or(n, |j| s + j);
                        let next = match &buf[end..] {
                            [b'\n', b'\n', ..] => end + 2,
                            [b'\r', b'\n', b'\r', b'\n', ..] => end + 4,
                            _ => 0,
                        };
                        if next != 0 && sink.idle() {
                            first |= sink.whole(buf, s, end);
                            i = next;
                            continue;
                        }
                        sink.data(buf, s, s, true);
                        if end > s {
                            sink.data(buf, s, end, false);
                        }
                        if end == n {
                            self.line = Line::Value(Field::Data);
                            i = n;
                        } else {
                            i = self.line_end(buf, end);
                        }
                        continue;
                    }
                    if buf[i..].starts_with(b"event:") {
                        i += 6;
                        // The common named event (`event: x`, `data: …`, a blank line) is
                        // handed on whole, as the unnamed one above.
                        if let Some((next, name, s, end)) = named_event(buf, i) {
                            if sink.idle() {
                                first |= sink.whole_named(buf, name, s, end);
                                i = next;
                                continue;
                            }
                        }
                        self.line = Line::Space(Field::Event);
                        continue;
                    }
                    match buf[i] {
                        b'\n' | b'\r' => {
                            i = self.line_end(buf, i);
                            first |= sink.dispatch(buf);
                        }
                        b':' => {
                            self.line = Line::Value(Field::Ignored);
                            i += 1;
                        }
                        _ => {
                            self.name_len = 0;
                            self.line = Line::Name;
                        }
                    }
                }
                Line::Name => {
                    let c = buf[i];
                    match c {
                        b':' => {
                            self.line = Line::Space(self.field());
                            i += 1;
                        }
                        b'\n' | b'\r' => {
                            // A field without a colon has an empty value.
                            let f = self.field();
                            self.value_start(f, sink);
                            if f == Field::Data {
                                sink.data(buf, i, i, true);
                            }
                            i = self.line_end(buf, i);
                        }
                        _ => {
                            if usize::from(self.name_len) < NAME_CAP {
                                self.name[usize::from(self.name_len)] = c;
                            }
                            self.name_len = self.name_len.saturating_add(1);
                            i += 1;
                        }
                    }
                }
                Line::Space(f) => {
                    if buf[i] == b' ' {
                        i += 1;
                    }
                    self.value_start(f, sink);
                    if f == Field::Data {
                        sink.data(buf, i, i, true);
                    }
                    self.line = Line::Value(f);
                }
                Line::Value(f) => {
                    let end = line_end(&buf[i..]).map_or(n, |j| i + j);
                    match f {
                        Field::Data if end > i => sink.data(buf, i, end, false),
                        Field::Event => sink.event(&buf[i..end]),
                        _ => {}
                    }
                    i = if end < n { self.line_end(buf, end) } else { n };
                }
            }
        }
        sink.buffer_end(buf);
        first
    }

    /// The end of the body: a last line without line end ends there, and a last event without
    /// blank line is dispatched. Returns whether that event carried the first content.
    pub(crate) fn finish<S: Sink>(&mut self, sink: &mut S) -> bool {
        match self.line {
            Line::Start => {}
            Line::Name => {
                let f = self.field();
                self.value_start(f, sink);
                if f == Field::Data {
                    sink.data(&[], 0, 0, true);
                }
            }
            Line::Space(f) => {
                self.value_start(f, sink);
                if f == Field::Data {
                    sink.data(&[], 0, 0, true);
                }
            }
            Line::Value(_) => {}
        }
        self.line = Line::Start;
        sink.dispatch(&[])
    }

    fn field(&self) -> Field {
        let len = usize::from(self.name_len);
        if len > NAME_CAP {
            return Field::Ignored;
        }
        match &self.name[..len] {
            b"data" => Field::Data,
            b"event" => Field::Event,
            _ => Field::Ignored,
        }
    }

    fn value_start<S: Sink>(&mut self, f: Field, sink: &mut S) {
        if f == Field::Event {
            sink.event_start();
        }
    }

    /// Consumes the line end at `buf[i]` (`\n`, `\r`, or `\r\n`); returns the index after it.
    fn line_end(&mut self, buf: &[u8], i: usize) -> usize {
        self.line = Line::Start;
        if buf[i] == b'\n' {
            return i + 1;
        }
        match buf.get(i + 1) {
            Some(b'\n') => i + 2,
            Some(_) => i + 1,
            None => {
                self.after_cr = true;
                i + 1
            }
        }
    }
}

/// Records what a framer hands on: each dispatched event's name and data (for tests).
#[cfg(test)]
#[derive(Default)]
pub(crate) struct Recorder {
    pub(crate) events: Vec<(Vec<u8>, Vec<u8>)>,
    data: Vec<u8>,
    name: Vec<u8>,
    lines: usize,
}

#[cfg(test)]
impl Sink for Recorder {
    fn data(&mut self, buf: &[u8], start: usize, end: usize, first: bool) {
        if first {
            if self.lines > 0 {
                self.data.push(b'\n');
            }
            self.lines += 1;
        }
        self.data.extend_from_slice(&buf[start..end]);
    }
    fn event_start(&mut self) {
        self.name.clear();
    }
    fn event(&mut self, piece: &[u8]) {
        self.name.extend_from_slice(piece);
    }
    fn dispatch(&mut self, _: &[u8]) -> bool {
        if self.lines > 0 {
            let data = std::mem::take(&mut self.data);
            self.events.push((self.name.clone(), data));
        }
        self.lines = 0;
        self.name.clear();
        false
    }
    fn buffer_end(&mut self, _: &[u8]) {}
    fn idle(&self) -> bool {
        self.lines == 0
    }
    fn whole(&mut self, buf: &[u8], start: usize, end: usize) -> bool {
        self.data(buf, start, start, true);
        self.data(buf, start, end, false);
        self.dispatch(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(body: &[u8], size: usize) -> Vec<(String, String)> {
        let mut f = Framer::new();
        let mut r = Recorder::default();
        for piece in body.chunks(size.max(1)) {
            f.feed(piece, &mut r);
        }
        f.finish(&mut r);
        let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
        r.events
            .into_iter()
            .map(|(n, d)| (text(n), text(d)))
            .collect()
    }

    fn ev(name: &str, data: &str) -> (String, String) {
        (name.into(), data.into())
    }

    #[test]
    fn line_ends_fields_and_comments() {
        let body = b": keep-alive\r\n\r\nevent: a\r\ndata:x\r\ndata:  y\r\nid: 7\r\nretry: 5\r\n\r\ndata\rdata:z\r\rdata: {}\n\nevent:b\nfoo: bar\n\n: c\ndata: last";
        let want = vec![
            ev("a", "x\n y"),
            ev("", "\nz"),
            ev("", "{}"),
            ev("", "last"),
        ];
        for size in [body.len(), 1, 2, 3, 5] {
            assert_eq!(frame(body, size), want, "pieces of {size}");
        }
    }

    #[test]
    fn whole_events_frame_as_lines_do() {
        // Whole-event steps (named, unnamed, hot names) against byte-by-byte framing, with
        // every line end, lone `\r` inside what looks like one line, and names that change.
        let bodies: [&[u8]; 6] = [
            b"event: content_block_delta\ndata: {}\n\nevent: content_block_delta\r\ndata: a\r\n\r\ndata: b\n\n",
            b"event: content_block_delta\rdata: x\r\revent: content_block_deltax\ndata: y\n\n",
            b"event: response.output_text.delta\ndata: 1\revent: b\ndata: 2\n\ndata: 3\r\rdata: 4\n\n",
            b"event: a\nevent: b\ndata: 5\n\nevent: c\ndata: 6\ndata: 7\n\nevent: d\ndata: 8\n\r\n",
            b"event:content_block_delta\ndata:9\n\nevent:  r\ndata:  10\r\n\n\nevent: e\n\ndata: 11",
            b"data: {\"usage\":null}\n\ndata: x\ry\n\ndata: z\r\n\r\nevent: content_block_delta\n",
        ];
        for body in bodies {
            let want = frame(body, 1);
            for size in [body.len(), 2, 5, 13] {
                assert_eq!(frame(body, size), want, "{}", String::from_utf8_lossy(body));
            }
        }
        assert_eq!(
            frame(bodies[1], 100),
            vec![
                ev("content_block_delta", "x"),
                ev("content_block_deltax", "y")
            ]
        );
    }

    #[test]
    fn odd_lines_are_ignored() {
        let body = b"datum: x\ndataa: y\nevent\ndata\n\n:\n\nverylongfieldname: z\ndata: 1\n\n";
        assert_eq!(frame(body, 1), vec![ev("", ""), ev("", "1")]);
        assert_eq!(frame(body, 100), vec![ev("", ""), ev("", "1")]);
    }
}
