//! Token usage, model and first-content time read from an LLM provider's response body as it
//! streams past, without holding it and without parsing more of it than needed.
//!
//! The nginx body filter hands every buffer of the upstream response to [`UsageReader::feed`]
//! (the bytes are only read) and ends with [`UsageReader::finish`]. The reader allocates once
//! per kind of body, when it is made or reset for one ([`CARRY_CAP`] bytes for an event
//! stream, [`SHAPE_CAP`] for a JSON body's shape), and its state never grows as it reads: see
//! [`UsageReader::state_bytes`].
//!
//! # Token types
//! [`Tokens::input`] is every prompt token billed, including [`Tokens::cached_input`] (read from
//! the prompt cache) and [`Tokens::cache_write`] (written to it); [`Tokens::output`] is every
//! generated token billed, including [`Tokens::reasoning`]. So `input + output` is what was
//! billed, and no token is counted twice. Per provider:
//!
//! | provider | input | cached_input | cache_write | output | reasoning |
//! |---|---|---|---|---|---|
//! | OpenAI Chat | `prompt_tokens` | `prompt_tokens_details.cached_tokens` | 0 | `completion_tokens` | `completion_tokens_details.reasoning_tokens` |
//! | OpenAI Responses | `input_tokens` | `input_tokens_details.cached_tokens` | 0 | `output_tokens` | `output_tokens_details.reasoning_tokens` |
//! | Anthropic | `input_tokens + cache_read_input_tokens + cache_creation_input_tokens` | `cache_read_input_tokens` | `cache_creation_input_tokens` (else `cache_creation.ephemeral_5m_input_tokens + ephemeral_1h_input_tokens`) | `output_tokens` | 0 |
//! | Gemini | `promptTokenCount + toolUsePromptTokenCount` | `cachedContentTokenCount` | 0 | `candidatesTokenCount + thoughtsTokenCount` | `thoughtsTokenCount` |
//!
//! Usage is read at its provider's place only: OpenAI Chat and JSON bodies' top-level `usage`,
//! Responses events' `response.usage`, Anthropic `message_start`'s `message.usage` and
//! `message_delta`'s `usage`, Gemini's top-level `usageMetadata` (of every element when a JSON
//! body is an array). Keys are compared byte for byte (providers never escape them). A count
//! must be a non-negative integer ≤ 10^12; any other value is treated as missing, and a usage
//! object without a valid count as no usage. Reports are merged field by field and the latest
//! wins: all providers report running totals (Anthropic's `message_delta` and Gemini's chunks
//! are cumulative), so nothing is ever added up. Anthropic `message_start`'s `output_tokens` is
//! a placeholder and never read: a stream cut before `message_delta` reports output 0, while its
//! input and cache counts (final from `message_start` on) stand. Parts are clamped to their
//! whole (a `cached_tokens` above `prompt_tokens` is cut to it).
//!
//! An SSE event whose `event:` name says it carries no usage is never read for usage (nor for
//! a bad count): Anthropic `content_block_*`, `ping` and `message_stop`, and OpenAI Responses
//! `response.<a>.<b>…` events (items, parts, deltas; usage comes in `response.<state>`
//! events). This holds only for a name actually sent (an event without `event:` line is
//! `message`, never gated) and once the provider is known.
//!
//! The model is the first non-empty one met (Chat, Responses and Anthropic JSON top-level
//! `model`, `response.model`, `message.model`, Gemini `modelVersion`), JSON-unescaped and at
//! most [`MODEL_CAP`] bytes.
//!
//! # Cost
//! SSE data payloads of up to [`CARRY_CAP`] bytes are looked at whole (in place when a buffer
//! holds them, else gathered in the carry buffer); larger ones stream through the scanner.
//!
//! Framing: an event made of one `data:` line (or one `event:` and one `data:` line) and a
//! blank line, all in the buffer, is framed in one step: one `memchr2` (`\n`, `\r`) per line,
//! the most frequent event names (`content_block_delta`, `response.output_text.delta`)
//! compared as words instead. A single-byte `memchr` for `\n` alone is cheaper (~100 against
//! ~120 instructions on a 260-byte line) but a lone `\r` inside the line would then need a
//! second search to stay exact per the SSE spec (~240 together), so `memchr2` is kept.
//!
//! Once the stream is *settled* (provider known, first content seen, model known) only usage
//! can change the result, and a payload is read as cheaply as its kind allows:
//! - an event whose name carries no usage (see above) is skipped, its data unread;
//! - a payload of a Chat Completions stream (no `event:` name) that ends in a top-level
//!   `"usage":null}` (after `{` or `,`, whitespace allowed) is skipped after a few byte
//!   compares. This assumes each key once per object, as every provider sends it: a
//!   payload with a second, non-null top-level `usage` before would be missed;
//! - any other payload is searched for a non-null `"usage…":` key (each `"u` pair, 16 bytes a
//!   step, then the rest of the key compared); only one
//!   that has one is scanned, from that key on when it is a member of the top-level object
//!   (checked by the payload ending exactly with that object), else whole.
//!
//! Settled streams therefore do not check the JSON of payloads without usage.
//!
//! Reading itself: a payload held whole in one buffer (an SSE event's data, a JSON body whose
//! first buffer holds it whole) is read by a recursive walk over the slice (`feed_body` in
//! `scan/whole.rs`), keys looked up in the same provider table (after a hash-mask prefilter that
//! rules out most irrelevant keys exactly), with the searches of `scan/probe.rs`, 16 or 64 bytes
//! a step with SSE2 compares on x86-64 (through the `safe_arch` crate: this crate has no
//! `unsafe`; scalar elsewhere): the next token past whitespace, a string's end (16-byte steps for
//! its first 64 bytes, then 64-byte steps up to 272 bytes past its first 16, then `memchr2`), a
//! skipped container's end (brackets outside strings counted from 64-byte
//! masks of quotes, backslashes and brackets, the in-string mask by a prefix XOR; a step holding
//! a backslash outside strings, an ordinary byte to the scanner, is read the scalar way). It
//! reads exactly what the resumable scanner reads and accepts only what it can walk to the end
//! without error; anything else (a body cut or split across buffers, broken JSON) is read by the
//! resumable scanner, unchanged. A JSON body read whole at `feed` leaves the scanner where it
//! would have been (`Done`), so bytes that still follow are read as before. A body split
//! across buffers goes the resumable way, but where a skipped member of its top-level object
//! (`choices`, Anthropic's `content`) ends, the rest of that buffer is read by the walk when
//! the body ends there (`Scanner::walk_rest`, on a copy of the scanner, kept only when the walk
//! reads to the end; property-tested against the resumable reading alone,
//! `rest_walk_reads_as_the_scanner`). The settled fast path reads from the usage key on with
//! the same walk (`feed_members`). Until 2026-12-02 SSE
//! payloads had a walk of their own (`memchr` and word-wise whitespace); the probe walk costs
//! ~100–330 less per unsettled event, so it is the only one. Tested against the scanner on every
//! corpus payload, damaged and pretty-printed variants, every dialect setting, as SSE payloads
//! and as JSON bodies (`whole_walk_reads_what_the_scanner_reads`,
//! `body_walk_reads_what_the_scanner_reads`), any generated JSON (`body_walk_reads_any_json_as_the_scanner`),
//! JSON bodies whole against byte by byte (a unit test of traps, and a fuzz property), and the
//! searches against their scalar forms (property tests in `scan/probe.rs`).
//!
//! A JSON body held whole is first read **in the shape of a body** the reader walked before
//! (`scan/shape.rs`; it keeps two, so that two providers or endpoints in turn both match): providers answer an endpoint with bodies of one shape (the same members in
//! the same order, the same indentation), so the walk notes each body's bytes between the values
//! it reads or skips, and the next body is read by comparing those bytes (16 at a time) and
//! reading each value with the walk's own function for it (a string to its end, a count, a
//! number run; the model, the usage objects). Any difference gives up before anything is kept,
//! and the body is walked (its shape noted for the next one, while noting has credit: bodies
//! read in a kept shape give it back, walked ones a sixteenth as much, so bodies of more shapes
//! in turn than are kept are mostly walked, and a reader whose kept shapes stopped matching
//! still notes again; a noting that gives up, a body of more values than a shape holds, leaves
//! its place empty for the next one and makes the next noting cost twice as much, up to eight
//! times). A match reads exactly as the walk
//! (property-tested against the resumable scanner with pairs of generated bodies of one
//! structure and other values, damaged or not, `replay_reads_as_the_scanner`, and on the corpus
//! with other values). The shape is kept across [`UsageReader::reset`] (the pool's readers keep
//! theirs), checked against the reader's settings, and bounded ([`SHAPE_CAP`]).
//!
//! A JSON body's `choices` (Chat) and `candidates` (Gemini) are skipped, bracket-counted like any
//! container the reading does not need, by every path (`Scanner::member`): what they tell is a
//! stream's first content, and a body has none (their keys still tell the provider). A body
//! broken inside them in a way bracket counting does not see (`"choices":[1 2]`) therefore reads
//! on, whole and split alike: it reports what the rest says (`absent`, or the usage and model
//! after it) rather than `malformed`, as a broken value skipped anywhere else always did. Reading only the start
//! of a body and its end from the last usage key on (found backwards 16 bytes a step, proved a
//! top-level member by the body ending right after it) was built and measured: 6,958 → 6,089 for
//! the corpus's pretty Chat body, 17,641 → 6,088 with an 8,000-byte answer. It was not kept: a
//! body broken between its first large value and its usage would then report usage when read
//! whole and `malformed` when split across buffers (the resumable scanner has passed the bytes
//! between by then), and any split must read as one piece.
//!
//! A settled Gemini stream defers its usage: a payload tail (from the `usageMetadata` key on)
//! that is the last tail read byte for byte but for digit runs outside strings of at most 12
//! digits (`same_but_counts`) is read as that one was, replacing every count it set; it is only
//! copied (into a fixed 512-byte buffer, `TAIL_CAP`) and read once, before anything else is
//! read or at the end (`Events::flush`), so "latest wins, field by field" is kept exactly. A
//! tail of another shape is read at once and becomes the one compared with.
//!
//! Settled streams' common buffers are dropped before any framing (`UsageReader::skips`): a
//! buffer that is exactly one `data: {…,"usage":null}` Chat chunk, or one event named
//! `content_block_delta` (Anthropic) or `response.output_text.delta` (Responses), ended by
//! `\n\n`, read while nothing is pending (`quiet`, kept after every other buffer), costs one
//! line search over its data line (exactness: no other `\n`/`\r` in it) and a few compares. Any
//! other buffer goes the general way; one whole event still skips the framer's loop. Tested
//! against the general path alone (`fast_steps_read_what_the_general_path_reads`).
//!
//! Instructions per further chunk measured with callgrind (`core/examples/usage_cost.rs`,
//! release, x86-64, harness loop included; ±10 with the harness's layout, see its header):
//! OpenAI Chat 172, the nginx benchmark's Chat chunk 176, Anthropic `content_block_delta` 134,
//! Responses `output_text.delta` 171, Gemini 801 (1,927 before the 2026-12-02 round). Of a Chat chunk, the line search is ~85 to ~95; the
//! rest is the `quiet` check, the shape compares and the harness. A deferred Gemini chunk still
//! costs the framing (~250), the search for the usage key (each `"u` pair, 16 bytes a step,
//! instead of `memmem`, whose setup cost ~500 per payload) and the comparison with the last
//! tail: one of the same length (the usual case: counts gain a digit now and then) is compared
//! in place, 16 bytes a step, only the bytes that differ looked at (each a digit in both, in a
//! run of at most 12 digits at the same place, outside strings by the kept tail's map of where
//! its strings are, made once per tail of a new shape): ~200 for a 215-byte tail; one of
//! another length by the general comparison (quotes' parity and backslashes gathered from the
//! step masks: ~450; ~1,280 eight bytes at a time before this round). Target not met: Gemini
//! (≤ ~400).
//!
//! A whole JSON body (new + feed + finish), measured with `core/examples/usage_cost.rs` (its
//! header has the breakdown and what was tried): the compact 674-byte Chat body 5,163 (5,875
//! before the 2026-12-02 round, same session), the corpus's pretty-printed one (997 bytes, the
//! nginx benchmark's body) 6,118 (6,958), the same with an 8,000-byte answer 16,758 (17,641),
//! and in 4 KiB buffers (the resumable scanner) 22,848 (29,478). A stream's fixed part (a new
//! reader, the unsettled first events, the end) went down by 400–770 (`*_start` cases). Target (≤ ~1,000) not met:
//! every member of the tracked objects still costs its own path through the walk (~67
//! instructions, plus its key's lookup and its value), and construction, framing and `finish`
//! ~614. Previous rounds: string ends by `memchr`'s SSE2 searcher, whitespace by one
//! XOR a word, irrelevant keys ruled out by a hash mask, keys compared by words; tried and
//! dropped then: the provider table matched by key length first, a branch-free `Raw::merge`, a
//! perfect-hash key id, a word-chunk iterator.
//!
//! The last event of a stream without blank line is read by [`UsageReader::finish`]; its first
//! content is reported by [`UsageReader::first_content_at_finish`].

mod providers;
mod scan;
mod sse;

use providers::{Dialects, Raw, ANTHROPIC, GEMINI, OPENAI};
use scan::{Scanner, Shapes, Small};

/// The most bytes a reader holds for the shapes of the JSON bodies it read (see
/// [`UsageReader::state_bytes`]).
pub const SHAPE_CAP: usize = scan::SHAPES_BYTES;

pub use scan::MODEL_CAP;

/// Bytes of an SSE event's data gathered whole (and the reader's one allocation): a payload
/// split across buffers is copied here; a larger one is scanned as it streams.
pub const CARRY_CAP: usize = 4096;

/// Which provider's fields to read. `Auto` decides from the first payload that shows evidence
/// (event names, keys) and then reads that provider's fields only.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Format {
    Auto,
    /// Chat Completions and Responses.
    OpenAi,
    Anthropic,
    Gemini,
}

/// How the body is framed (the glue decides from `Content-Type`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Body {
    /// One JSON value (an object, or an array of objects).
    Json,
    /// `text/event-stream`: JSON in `data:` fields.
    EventStream,
}

/// Token counts in our convention (see the module documentation).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Tokens {
    pub input: u64,
    pub output: u64,
    pub cached_input: u64,
    pub cache_write: u64,
    pub reasoning: u64,
}

/// What a body reported.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Outcome {
    /// The complete body reported usage.
    Usage(Tokens),
    /// The body was cut, after these final or cumulative counts had arrived (never a
    /// provisional one: see the module documentation).
    Partial(Tokens),
    /// The complete body reported no usage.
    Absent,
    /// The body was cut before any usage arrived.
    Aborted,
    /// The complete body reported no usage, and either could not be read as JSON where it was
    /// looked at (the body, or a `data:` payload other than `[DONE]`), or had a usage object
    /// without a valid count.
    Malformed,
}

/// Reads one response body. See the module documentation.
pub struct UsageReader {
    body: Body,
    /// BOM bytes matched at the start of the body (`BOM.len()` once past it).
    bom: u8,
    framer: sse::Framer,
    events: Events,
    first_at_finish: bool,
    /// [`UsageReader::quiet`] as of the last buffer (`skips` changes nothing it depends on).
    quiet: bool,
    /// The shapes of JSON bodies this reader walked whole, kept across
    /// [`UsageReader::reset`]: the next body of one of them is read by comparing it.
    shapes: Shapes,
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

impl UsageReader {
    pub fn new(format: Format, body: Body) -> Self {
        // The fields' values are set by `reset`; the arrays are zeroed once, here.
        let mut r = UsageReader {
            body,
            bom: 0,
            framer: sse::Framer::new(),
            first_at_finish: false,
            quiet: false,
            shapes: Shapes::default(),
            events: Events {
                scan: Scanner::new(0),
                dialect: 0,
                stream: false,
                name: Small::default(),
                has_data: false,
                len: 0,
                pending: Pending::Empty,
                carry: Vec::new(),
                usage: Raw::default(),
                ttft: false,
                settled: false,
                chat: false,
                malformed: false,
                bad_count: false,
                tail: [0; TAIL_CAP],
                tail_len: 0,
                tail_map: TailMap::NONE,
                deferred: false,
            },
        };
        r.reset(format, body);
        r
    }

    /// Makes this reader what [`UsageReader::new`] makes, for another response: every field
    /// is set here, but the bytes of the inline buffers beyond their lengths (the event name,
    /// the deferred tail; never read) and the carry buffer's allocation are kept. A reader
    /// reused so costs no allocation and no zeroing of its buffers (an event stream's reader
    /// that read a JSON body before gets its carry buffer once). Tested: a reset reader reads
    /// every corpus body as a new one, whatever it read before.
    pub fn reset(&mut self, format: Format, body: Body) {
        let dialect = match format {
            Format::Auto => 0,
            Format::OpenAi => OPENAI,
            Format::Anthropic => ANTHROPIC,
            Format::Gemini => GEMINI,
        };
        // Every field by name (a field added later fails to compile until it is set here).
        let UsageReader {
            body: r_body,
            bom,
            framer,
            events,
            first_at_finish,
            quiet,
            // Kept: a shape is checked against the scanner's settings before it is used.
            shapes,
        } = self;
        let Events {
            scan,
            dialect: e_dialect,
            stream,
            name,
            has_data,
            len,
            pending,
            carry,
            usage,
            ttft,
            settled,
            chat,
            malformed,
            bad_count,
            tail: _,
            tail_len,
            tail_map,
            deferred,
        } = events;
        *r_body = body;
        *bom = 0;
        *framer = sse::Framer::new();
        *first_at_finish = false;
        *quiet = false;
        scan.renew(if dialect == 0 {
            providers::ALL
        } else {
            dialect
        });
        // (`renew` leaves it begun.)
        scan.json_body = body == Body::Json;
        *e_dialect = dialect;
        *stream = body == Body::EventStream;
        name.clear();
        *has_data = false;
        *len = 0;
        *pending = Pending::Empty;
        carry.clear();
        if body == Body::EventStream {
            carry.reserve_exact(CARRY_CAP);
        } else {
            shapes.reserve();
        }
        usage.clear();
        *ttft = false;
        *settled = false;
        *chat = false;
        *malformed = false;
        *bad_count = false;
        *tail_len = 0;
        *tail_map = TailMap::NONE;
        *deferred = false;
    }

    /// Reads the next buffer of the body. Returns true exactly once: for the buffer that
    /// completed the first event carrying generated content (never for a JSON body).
    #[inline(always)]
    pub fn feed(&mut self, buf: &[u8]) -> bool {
        if self.quiet && self.skips(buf) {
            return false;
        }
        if self.body == Body::Json && self.bom == 0 && buf.first().is_some_and(|&c| c != BOM[0]) {
            self.feed_json_start(buf);
            return false;
        }
        self.feed_framed(buf)
    }

    /// Whether `buf`, fed to a reader that is [`UsageReader::quiet`], is one whole event that
    /// the general path would hand on and drop unread, changing nothing: a Chat chunk
    /// `data: {…,"usage":null}` or an event of the hottest name that carries no usage
    /// (`content_block_delta` of Anthropic, `response.output_text.delta` of Responses), each
    /// followed by `\n\n` at the buffer's end, its data line without any other `\n` or `\r`
    /// (one line search over it, as the framing does). Anything else is left to the general
    /// path, which frames it and comes to the same decision.
    #[inline(always)]
    fn skips(&self, buf: &[u8]) -> bool {
        let Some((event, b"\n\n")) = buf.split_last_chunk::<2>() else {
            return false;
        };
        let e = &self.events;
        // The bytes to search for a line end: the data value, less a tail known to hold none.
        let line = if let Some(value) = event.strip_prefix(b"data: ") {
            // As `payload` (after `whole`, which streams a larger value): `null_usage_tail`'s
            // common form.
            match value.split_last_chunk::<14>() {
                Some((line, b",\"usage\":null}")) if e.chat && value.len() <= CARRY_CAP => line,
                _ => return false,
            }
        } else if let Some(named) = event.strip_prefix(b"event: ") {
            // As `whole_named`: the name gate (`no_usage_event`) before any other look.
            let value = match e.dialect {
                ANTHROPIC => named.strip_prefix(b"content_block_delta\ndata: "),
                OPENAI => named.strip_prefix(b"response.output_text.delta\ndata: "),
                _ => None,
            };
            match value {
                Some(value) => value,
                None => return false,
            }
        } else {
            return false;
        };
        sse::line_end(line).is_none()
    }

    /// Whether the next buffer starts a line of a settled stream with nothing pending (no
    /// event field, no BOM bytes, no `\r` just before): kept in `quiet` for `skips`.
    fn quiet(&self) -> bool {
        let e = &self.events;
        e.settled
            && !e.has_data
            && e.pending == Pending::Empty
            && e.name.is_empty()
            && usize::from(self.bom) == BOM.len()
            && self.framer.at_line_start()
    }

    /// The buffers `skips` and `feed_json_start` do not take: one whole event handed on at
    /// once, anything else framed line by line.
    #[inline(never)]
    fn feed_framed(&mut self, buf: &[u8]) -> bool {
        let first = match self.lone_event(buf) {
            Some(first) => first,
            None => self.feed_general(buf),
        };
        self.quiet = self.quiet();
        first
    }

    /// A JSON body's first buffer, without a BOM (the usual case), straight to `framed`'s
    /// reading (nothing else of the reader changes for it: a JSON body is never `quiet`). Out
    /// of `feed_framed`: a small function's call costs less than the framer's.
    #[inline(never)]
    fn feed_json_start(&mut self, buf: &[u8]) {
        self.bom = BOM.len() as u8;
        self.json(buf);
    }

    /// A buffer that is one whole event (`data: …` and a blank line, or `event:`, `data:` and
    /// a blank line) at a line start with nothing pending, handed on as [`sse::Framer::feed`]
    /// hands it on, without its general loop. `None` for any other buffer.
    #[inline(always)]
    fn lone_event(&mut self, buf: &[u8]) -> Option<bool> {
        let e = &mut self.events;
        if !(e.stream
            && !e.has_data
            && usize::from(self.bom) == BOM.len()
            && self.framer.at_line_start())
        {
            return None;
        }
        let (name, s, end) = sse::lone_event(buf)?;
        use sse::Sink;
        Some(match name {
            None => e.whole(buf, s, end),
            Some(name) => e.whole_named(buf, name, s, end),
        })
    }

    /// Reads the next buffer the general way (BOM, framing line by line).
    fn feed_general(&mut self, buf: &[u8]) -> bool {
        let mut buf = buf;
        if usize::from(self.bom) < BOM.len() {
            // The usual body has none: its first byte says so, without the byte loop.
            if self.bom == 0 && buf.first().is_some_and(|&c| c != BOM[0]) {
                self.bom = BOM.len() as u8;
            } else {
                buf = self.skip_bom(buf);
            }
        }
        self.framed(buf)
    }

    #[inline]
    fn framed(&mut self, buf: &[u8]) -> bool {
        match self.body {
            Body::EventStream => self.framer.feed(buf, &mut self.events),
            Body::Json => {
                self.json(buf);
                false
            }
        }
    }

    /// A body held whole by its first buffer (the usual case) is read in the shape of the last
    /// one, else by the recursive walk (noting its shape); anything the walk cannot prove goes
    /// the resumable way.
    #[inline(always)]
    fn json(&mut self, buf: &[u8]) {
        let scan = &mut self.events.scan;
        let whole = scan.at_start() && ends_a_value(buf) && self.shapes.read(scan, buf);
        if !whole {
            self.events.scan.feed(buf);
        }
    }

    /// Drops a UTF-8 byte order mark at the start of the body, also one split across buffers.
    #[cold]
    #[inline(never)]
    fn skip_bom<'b>(&mut self, buf: &'b [u8]) -> &'b [u8] {
        let mut i = 0;
        while i < buf.len() && usize::from(self.bom) < BOM.len() {
            if buf[i] == BOM[usize::from(self.bom)] {
                self.bom += 1;
                i += 1;
            } else {
                // Not a BOM after all: what matched of it is body.
                let matched = usize::from(self.bom);
                self.bom = BOM.len() as u8;
                if matched > 0 {
                    self.framed(&BOM[..matched]);
                }
            }
        }
        &buf[i..]
    }

    /// Ends the body; `complete` says whether its last buffer was seen. A last event without
    /// blank line is read; if it carried the first content,
    /// [`UsageReader::first_content_at_finish`] says so from then on (`feed` could not).
    pub fn finish(&mut self, complete: bool) -> Outcome {
        self.quiet = false;
        let matched = usize::from(self.bom);
        if matched < BOM.len() {
            self.bom = BOM.len() as u8;
            self.framed(&BOM[..matched]);
        }
        match self.body {
            Body::EventStream => {
                self.first_at_finish = self.framer.finish(&mut self.events);
                self.events.flush();
            }
            Body::Json => {
                self.events.scan.end();
                self.events.json_end();
            }
        }
        let e = &self.events;
        // A JSON body's usage is what its scanner found (see `json_end`).
        let usage = match self.body {
            Body::Json => &e.scan.facts.usage,
            Body::EventStream => &e.usage,
        };
        let tokens = if usage.any() {
            usage.normalise(e.dialect)
        } else {
            None
        };
        match (tokens, complete) {
            (Some(t), true) => Outcome::Usage(t),
            (Some(t), false) => Outcome::Partial(t),
            (None, false) => Outcome::Aborted,
            (None, true) if e.malformed || e.bad_count => Outcome::Malformed,
            (None, true) => Outcome::Absent,
        }
    }

    /// The first content arrived in the last event, one without blank line that only
    /// [`UsageReader::finish`] could read (the glue may take the end of the body as its time).
    pub fn first_content_at_finish(&self) -> bool {
        self.first_at_finish
    }

    /// The response's model as the provider wrote it (JSON-unescaped, at most [`MODEL_CAP`]
    /// bytes), once seen.
    #[inline]
    pub fn model(&self) -> Option<&[u8]> {
        self.events.scan.model.get()
    }

    /// The model is known to be a label value as it is ([`crate::labels::is_clean`]): it came
    /// from a body read in its kept shape, whose model was checked when the shape was made
    /// (false says nothing: check it).
    #[inline]
    pub fn model_is_label(&self) -> bool {
        self.events.scan.model.label
    }

    /// Bytes of state this reader holds (its struct and its allocations: the carry buffer of
    /// an event stream, the shape of a JSON body); bounded by
    /// `size_of::<UsageReader>() + CARRY_CAP + SHAPE_CAP` whatever it is fed (and by
    /// `size_of::<UsageReader>() + CARRY_CAP` or `+ SHAPE_CAP` for a reader that only ever
    /// read one kind of body). Feeding a body never changes it: a reader allocates when it is
    /// made or reset for a kind of body it has not read before, never per buffer.
    pub fn state_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.events.carry.capacity() + self.shapes.capacity_bytes()
    }
}

/// Where the data of the event in progress is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Pending {
    Empty,
    /// In the current buffer, in this range.
    InBuf(usize, usize),
    /// In `carry`.
    Carry,
    /// Larger than [`CARRY_CAP`]: streaming through the scanner.
    Stream,
}

/// Everything but the SSE framing: the event being gathered and what the body said so far.
struct Events {
    scan: Scanner,
    /// The provider (0 while `Auto` has no evidence).
    dialect: Dialects,
    stream: bool,
    /// The `event:` name of the event in progress.
    name: Small<48>,
    /// The event has a `data:` field.
    has_data: bool,
    /// Bytes of data so far (with the `\n` joining lines).
    len: usize,
    pending: Pending,
    carry: Vec<u8>,
    usage: Raw,
    ttft: bool,
    /// Nothing but usage can change what this body reported: first content seen, provider and
    /// model known (kept by `payload_end`).
    settled: bool,
    /// An OpenAI stream whose content came in Chat Completions `choices`: its usage is the
    /// top-level `usage` only.
    chat: bool,
    malformed: bool,
    bad_count: bool,
    /// Settled Gemini streams: the tail of the last payload read from its `usageMetadata` key
    /// on (`tail[..tail_len]`), and whether it is still unread (deferred, see `defer`).
    tail: [u8; TAIL_CAP],
    tail_len: u16,
    /// Where the kept tail's strings are, for comparing a tail of its length in place.
    tail_map: TailMap,
    deferred: bool,
}

/// The longest payload tail (from the usage key on) a settled Gemini stream defers.
const TAIL_CAP: usize = 512;

impl Events {
    /// Whether nothing but usage can change what this body reported.
    #[inline]
    fn settled(&self) -> bool {
        self.settled
    }

    /// Appends bytes that are not (or no longer) in the current buffer; `InBuf` data must have
    /// been spilled before.
    fn push(&mut self, bytes: &[u8]) {
        self.len += bytes.len();
        if self.pending != Pending::Stream && self.len > CARRY_CAP {
            self.flush();
            self.scan.begin();
            self.scan.feed(&self.carry);
            self.carry.clear();
            self.pending = Pending::Stream;
        }
        if self.pending == Pending::Stream {
            self.scan.feed(bytes);
        } else {
            self.pending = Pending::Carry;
            self.carry.extend_from_slice(bytes);
        }
    }

    /// The data in the current buffer moves to `carry` (or the scanner, if too large).
    #[inline]
    fn spill(&mut self, buf: &[u8]) {
        if let Pending::InBuf(a, b) = self.pending {
            self.spill_range(buf, a, b);
        }
    }

    #[cold]
    #[inline(never)]
    fn spill_range(&mut self, buf: &[u8], a: usize, b: usize) {
        self.pending = Pending::Carry;
        self.len -= b - a;
        self.push(&buf[a..b]);
    }

    /// Reads a whole event's data (or a JSON body's end when the scanner already has it all).
    fn payload(&mut self, p: &[u8]) -> bool {
        if self.settled() {
            // Events that carry no usage by their name, and Chat chunks ending in
            // `"usage":null}`, are not looked at further.
            if self.name.is_empty() {
                if self.chat && null_usage_tail(p) {
                    return false;
                }
            } else if no_usage_event(self.name.get(), self.dialect) {
                return false;
            }
        }
        let t = p.trim_ascii();
        if t.is_empty() || t == b"[DONE]" {
            return false;
        }
        if self.settled() {
            match self.usage_only(p) {
                None => return false,
                Some(true) => return self.payload_end(p),
                Some(false) => {}
            }
        }
        self.flush();
        self.scan.begin();
        if !self.scan.feed_body(p) {
            self.scan.feed(p);
        }
        self.scan.end();
        self.payload_end(p)
    }

    /// The fast path of settled streams: reads `p`'s usage only. `None` when `p` has no usage
    /// key (nothing to read), `Some(true)` when the scanner read it from the key on, `Some(false)`
    /// when `p` must be scanned whole.
    fn usage_only(&mut self, p: &[u8]) -> Option<bool> {
        let at = self.usage_at(p)?;
        // Most usage keys are members of the top-level object (Chat, Gemini, Anthropic
        // message_delta): read from the key on, assuming that, and keep the reading if the
        // payload then ends exactly where that object does. In valid JSON that proves the
        // assumption (a key after `{` or `,` opens a string; only a member of the top-level
        // object is followed by its end), and nothing before the key matters once settled.
        let before = p[..at].trim_ascii_end().last();
        if matches!(before, Some(b'{' | b',')) {
            let tail = &p[at..];
            if self.dialect == GEMINI {
                if self.tail_len > 0 && self.same_as_tail(tail) {
                    // Read as the last tail was, with other counts: deferred (see `defer`).
                    // Of the same length, only digits changed: its map stays right; of
                    // another, the map is made again when next needed.
                    if tail.len() != usize::from(self.tail_len) {
                        self.tail_map = TailMap::NONE;
                    }
                    self.tail[..tail.len()].copy_from_slice(tail);
                    self.tail_len = tail.len() as u16;
                    self.deferred = true;
                    return None;
                }
                self.flush();
            }
            if self.scan.feed_members(tail) {
                self.scan.end();
                if self.dialect == GEMINI && tail.len() <= TAIL_CAP {
                    self.tail[..tail.len()].copy_from_slice(tail);
                    self.tail_len = tail.len() as u16;
                    self.tail_map = TailMap::NONE;
                }
                return Some(true);
            }
            self.scan.begin_member();
            self.scan.feed(&p[at..]);
            self.scan.end();
            if self.scan.ended_cleanly() {
                return Some(true);
            }
        }
        Some(false)
    }

    /// [`same_but_counts`] of the kept tail and `tail`. One of the same length is compared in
    /// place: only where the bytes differ is anything looked at (where the strings are comes
    /// from the kept tail's map, made once per tail of a new shape).
    fn same_as_tail(&mut self, tail: &[u8]) -> bool {
        let old = &self.tail[..usize::from(self.tail_len)];
        if tail.len() != old.len() {
            return same_but_counts(old, tail);
        }
        if usize::from(self.tail_map.len) != old.len() {
            self.tail_map = TailMap::of(old);
        }
        same_counts_in_place(old, &self.tail_map, tail)
    }

    /// Reads the deferred tail, if any: its usage merged where it would have been.
    ///
    /// A settled Gemini stream sends running totals in every chunk, the same members in the
    /// same shape, only the numbers growing. A payload tail (from the usage key on) that is
    /// byte for byte the last one read except for the digits of numbers of at most 12 digits
    /// ([`same_but_counts`]) is read the same way: the same count members, each valid in both,
    /// so its reading replaces every count the last one set and flags nothing new. Such a
    /// tail is only copied over the last one and read here, before anything else is read
    /// (another payload, a streamed one, the end), so usage is merged in the same order.
    fn flush(&mut self) {
        if !self.deferred {
            return;
        }
        self.deferred = false;
        let mut s = Scanner::new(self.scan.allow);
        s.model = self.scan.model;
        let tail = &self.tail[..usize::from(self.tail_len)];
        let clean = s.feed_members(tail);
        debug_assert!(clean, "a deferred tail reads as the one before it");
        self.bad_count |= s.facts.bad_count;
        self.usage.merge(&s.facts.usage);
    }

    /// The first `"usage"` or `"usageMetadata"` key in `p` whose value is not `null`. Keys are
    /// found by their bytes; every such key the scanner could read as usage is among them.
    fn usage_at(&self, p: &[u8]) -> Option<usize> {
        let ws = |p: &[u8], mut k: usize| {
            while k < p.len() && matches!(p[k], b' ' | b'\n' | b'\r' | b'\t') {
                k += 1;
            }
            k
        };
        let mut from = 0;
        // Each `"u` a step (16 bytes a step), then the rest of the key compared.
        while let Some(at) = scan::find_quote_u(p, from) {
            from = at + 1;
            if !p[at..].starts_with(b"\"usage") {
                continue;
            }
            let rest = &p[at + 6..];
            let k = if rest.starts_with(b"\"") {
                at + 7
            } else if rest.starts_with(b"Metadata\"") {
                at + 15
            } else {
                continue;
            };
            let k = ws(p, k);
            if p.get(k) != Some(&b':') {
                continue;
            }
            let k = ws(p, k + 1);
            if !p[k..].starts_with(b"null") {
                return Some(at);
            }
            from = k + 4;
        }
        None
    }

    /// [`Events::payload_end`] for the one payload of a JSON body (no `event:` name, not a
    /// stream): what it changes of the body's outcome only, without the content and
    /// settledness of streams (a JSON body has no first token and nothing follows it).
    fn json_end(&mut self) {
        debug_assert!(!self.stream && self.name.is_empty());
        let f = &self.scan.facts;
        self.malformed |= f.error;
        if self.dialect == 0 {
            let hints = f.hints | providers::kind_hints(f.kind.get());
            if hints != 0 {
                self.dialect = providers::pick(hints);
                self.scan.allow = self.dialect;
            }
        }
        self.bad_count |= f.bad_count;
        // A JSON body's usage is what its scanner found: nothing was merged before its end,
        // and `finish` reads it there (not copied).
        debug_assert!(!self.usage.any());
    }

    /// Takes in what the scanner found in a payload; returns whether it was the first content.
    fn payload_end(&mut self, _p: &[u8]) -> bool {
        let f = &self.scan.facts;
        self.malformed |= f.error;
        let kind = if self.name.is_empty() {
            f.kind.get()
        } else {
            self.name.get()
        };
        if self.dialect == 0 {
            let hints = f.hints | providers::kind_hints(kind);
            if hints != 0 {
                self.dialect = providers::pick(hints);
                self.scan.allow = self.dialect;
            }
        }
        // An event that by its name carries no usage: whatever it has is not read (see
        // `no_usage_event`), also before the stream is settled.
        if self.name.is_empty() || !no_usage_event(self.name.get(), self.dialect) {
            self.bad_count |= f.bad_count;
            self.usage.merge(&f.usage);
        }
        let allow = self.scan.allow;
        let content = f.content & allow != 0
            || (allow & OPENAI != 0 && f.delta && kind.ends_with(b".delta"))
            || (allow & ANTHROPIC != 0 && kind == b"content_block_delta");
        if f.content & OPENAI != 0 && allow == OPENAI {
            self.chat = true;
        }
        let first = content && self.stream && !self.ttft;
        self.ttft |= first;
        self.settled = self.ttft && self.dialect != 0 && self.scan.model.known();
        first
    }
}

/// Whether an event of this `event:` name carries no usage in `dialect`'s protocol: Anthropic
/// `content_block_*`, `ping` and `message_stop` (usage comes in `message_start` and
/// `message_delta`), OpenAI Responses `response.<a>.<b>…` (items, parts, deltas: usage comes in
/// the `response` of `response.<state>` events). A usage object in such an event is never read,
/// so a settled stream skips its data unread.
fn no_usage_event(name: &[u8], dialect: Dialects) -> bool {
    match dialect {
        ANTHROPIC => {
            name.starts_with(b"content_block_") || name == b"ping" || name == b"message_stop"
        }
        OPENAI => name
            .strip_prefix(b"response.")
            .is_some_and(|rest| memchr::memchr(b'.', rest).is_some()),
        _ => false,
    }
}

/// Whether `new` is `old` with only numbers changed: equal bytes except runs of digits outside
/// strings, each of at most 12 digits on both sides (so below 10^12: a valid count wherever a
/// count is read, in both). Neither may hold a backslash (quotes then always delimit strings).
/// Compared 16 bytes a step ([`scan::equal_prefix`]), quotes counted to know what is inside
/// a string.
fn same_but_counts(old: &[u8], new: &[u8]) -> bool {
    if new.len() > TAIL_CAP {
        return false;
    }
    let (mut i, mut j) = (0, 0);
    // Quotes seen before `i` (`j`): inside a string when odd (no backslashes).
    let mut quotes = 0u32;
    // Where the equal stretch being compared began (after the last digit runs).
    let mut lo = 0;
    loop {
        let (n, odd, backslash) = scan::equal_prefix(&old[i..], &new[j..]);
        if backslash {
            return false;
        }
        quotes ^= odd;
        i += n;
        j += n;
        if i == old.len() && j == new.len() {
            return true;
        }
        // A difference: digit runs outside strings on both sides.
        if quotes % 2 == 1 {
            return false;
        }
        let digit = |s: &[u8], k: usize| s.get(k).is_some_and(u8::is_ascii_digit);
        let (mut a, mut b) = (i, j);
        while a > lo && digit(old, a - 1) {
            a -= 1;
            b -= 1;
        }
        let (sa, sb) = (a, b);
        while digit(old, a) {
            a += 1;
        }
        while digit(new, b) {
            b += 1;
        }
        if a == sa || b == sb || a - sa > 12 || b - sb > 12 || (a == i && b == j) {
            return false;
        }
        i = a;
        j = b;
        lo = i;
    }
}

/// Where a kept tail's strings are: bit `p` set when an odd number of quotes comes before byte
/// `p`; and whether the tail has no backslash (quotes then always delimit strings). Made for
/// `len` bytes (0: none made).
#[derive(Clone, Copy)]
struct TailMap {
    len: u16,
    plain: bool,
    inside: [u64; TAIL_CAP / 64],
}

impl TailMap {
    const NONE: TailMap = TailMap {
        len: 0,
        plain: false,
        inside: [0; TAIL_CAP / 64],
    };

    fn of(tail: &[u8]) -> TailMap {
        let mut m = TailMap {
            len: tail.len() as u16,
            plain: true,
            inside: [0; TAIL_CAP / 64],
        };
        let mut odd = false;
        for (p, &c) in tail.iter().take(TAIL_CAP).enumerate() {
            if odd {
                m.inside[p / 64] |= 1 << (p % 64);
            }
            match c {
                b'"' => odd = !odd,
                b'\\' => m.plain = false,
                _ => {}
            }
        }
        m
    }

    fn inside(&self, p: usize) -> bool {
        self.inside
            .get(p / 64)
            .is_some_and(|w| w >> (p % 64) & 1 == 1)
    }
}

/// [`same_but_counts`] of `old` and `new` of the same length, `map` made for `old`: only the
/// bytes that differ are looked at, each a digit in both, in a digit run of the same place and
/// at most 12 digits in both, outside strings. Anything else the general comparison decides
/// (digit runs that grew in one place and shrank in another, say).
fn same_counts_in_place(old: &[u8], map: &TailMap, new: &[u8]) -> bool {
    debug_assert!(old.len() == new.len() && usize::from(map.len) == old.len());
    if !map.plain {
        // A backslash is never in a tail that compares (see `same_but_counts`).
        return false;
    }
    let digit = |s: &[u8], k: usize| s.get(k).is_some_and(u8::is_ascii_digit);
    let run = |s: &[u8], p: usize| {
        let (mut l, mut r) = (p, p);
        while l > 0 && digit(s, l - 1) {
            l -= 1;
        }
        while digit(s, r) {
            r += 1;
        }
        (l, r)
    };
    let mut from = 0;
    while let Some(p) = scan::first_difference(old, new, from) {
        if !(digit(old, p) && digit(new, p)) {
            return same_but_counts(old, new);
        }
        let (l, r) = run(old, p);
        if run(new, p) != (l, r) {
            return same_but_counts(old, new);
        }
        if map.inside(p) || r - l > 12 {
            return false;
        }
        from = r;
    }
    true
}

/// Whether `buf` ends (whitespace aside) with a closing bracket: it may hold a whole JSON
/// body, worth the whole-buffer walk.
#[inline]
fn ends_a_value(buf: &[u8]) -> bool {
    matches!(buf.trim_ascii_end().last(), Some(b'}' | b']'))
}

#[inline]
fn is_ws(c: u8) -> bool {
    matches!(c, b' ' | b'\n' | b'\r' | b'\t')
}

/// Whether `p` ends with a `"usage": null` member closing its object: `"usage"`, after `{` or
/// `,`, then `:`, `null` and `}` (whitespace allowed between them and at the end), and nothing
/// after. The quote before `usage` is not escaped (it follows `{` or `,`), so it opens a key,
/// and the `}` that ends the payload closes the top-level object: the payload's top-level
/// `usage` is null. Providers send each key once per object, so a Chat chunk ending so has no
/// usage (the one assumption; a payload that is not valid JSON is not checked in a settled
/// stream anyway).
#[inline]
fn null_usage_tail(p: &[u8]) -> bool {
    // The common form (`,"usage":null}` ending the payload), compared as two words; any
    // other goes the byte way.
    const KEY: u64 = u64::from_le_bytes(*b"\0\"usage\"");
    const NULL: u64 = u64::from_le_bytes(*b"e\":null}");
    let n = p.len();
    if n >= 14 {
        let word = |at: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&p[at..at + 8]);
            u64::from_le_bytes(w)
        };
        if word(n - 8) == NULL && word(n - 14) & !0xFF == KEY && matches!(p[n - 14], b',' | b'{') {
            return true;
        }
    }
    let mut e = p.len();
    let back = |e: &mut usize, lit: &[u8]| {
        while *e > 0 && is_ws(p[*e - 1]) {
            *e -= 1;
        }
        if p[..*e].ends_with(lit) {
            *e -= lit.len();
            true
        } else {
            false
        }
    };
    back(&mut e, b"}")
        && back(&mut e, b"null")
        && back(&mut e, b":")
        && back(&mut e, b"\"usage\"")
        && (back(&mut e, b",") || back(&mut e, b"{"))
}

impl sse::Sink for Events {
    #[inline]
    fn data(&mut self, buf: &[u8], start: usize, end: usize, first: bool) {
        if first {
            if self.has_data {
                self.spill(buf);
                self.push(b"\n");
            }
            self.has_data = true;
        }
        if start == end {
            return;
        }
        match self.pending {
            Pending::Empty if end - start <= CARRY_CAP => {
                self.len = end - start;
                self.pending = Pending::InBuf(start, end);
            }
            Pending::InBuf(a, b) if b == start && self.len + (end - start) <= CARRY_CAP => {
                self.len += end - start;
                self.pending = Pending::InBuf(a, end);
            }
            _ => {
                self.spill(buf);
                self.push(&buf[start..end]);
            }
        }
    }

    #[inline]
    fn event_start(&mut self) {
        self.name.clear();
    }

    #[inline]
    fn event(&mut self, piece: &[u8]) {
        self.name.push(piece);
    }

    #[inline]
    fn dispatch(&mut self, buf: &[u8]) -> bool {
        if !self.has_data {
            self.name.clear();
            return false;
        }
        let first = match self.pending {
            Pending::Empty => false,
            Pending::InBuf(a, b) => self.payload(&buf[a..b]),
            Pending::Carry => {
                let carry = std::mem::take(&mut self.carry);
                let first = self.payload(&carry);
                self.carry = carry;
                first
            }
            Pending::Stream => {
                self.scan.end();
                self.payload_end(&[])
            }
        };
        self.carry.clear();
        self.pending = Pending::Empty;
        self.has_data = false;
        self.len = 0;
        self.name.clear();
        first
    }

    #[inline]
    fn buffer_end(&mut self, buf: &[u8]) {
        self.spill(buf);
    }

    #[inline]
    fn idle(&self) -> bool {
        !self.has_data
    }

    #[inline]
    fn whole_named(&mut self, buf: &[u8], name: &[u8], start: usize, end: usize) -> bool {
        // Once settled, an event that by its name carries no usage is not looked at.
        // (The name of an earlier `event:` line without data ends with this event too.)
        if self.settled() && no_usage_event(name, self.dialect) {
            self.name.clear();
            return false;
        }
        self.name.clear();
        self.name.push(name);
        self.whole(buf, start, end)
    }

    fn whole(&mut self, buf: &[u8], start: usize, end: usize) -> bool {
        if end - start > CARRY_CAP {
            self.data(buf, start, start, true);
            self.data(buf, start, end, false);
            return self.dispatch(buf);
        }
        let first = self.payload(&buf[start..end]);
        self.name.clear();
        first
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::scan::{MATCH_CREDIT, MAX_NOTE_FAILS, NOTE_COST, NOTE_CREDIT_CAP};

    /// Every SSE event of the corpus (name and data), and every JSON body whole (no name).
    pub(crate) fn corpus_payloads() -> Vec<(String, Vec<u8>, Vec<u8>)> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/usage_corpus");
        let mut out = Vec::new();
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "body"))
            .collect();
        names.sort();
        assert!(names.len() >= 40);
        for path in names {
            let body = std::fs::read(&path).unwrap();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let mut framer = sse::Framer::new();
            let mut sink = sse::Recorder::default();
            framer.feed(&body, &mut sink);
            framer.finish(&mut sink);
            for (event, p) in sink.events {
                out.push((name.clone(), event, p));
            }
            out.push((name, Vec::new(), body));
        }
        out
    }

    /// The settled fast path (`usage_only`) reads the same usage as the full scan of every
    /// corpus payload, for every dialect setting: when it finds no usage key the full scan
    /// finds no usage, and when it reads from the key on it reads what the full scan reads.
    #[test]
    fn fast_path_reads_what_the_full_scan_reads() {
        let (mut fast_reads, mut gated, mut null_tails) = (0, 0, 0);
        for (file, event, p) in corpus_payloads() {
            for format in [
                Format::Auto,
                Format::OpenAi,
                Format::Anthropic,
                Format::Gemini,
            ] {
                let mut full = UsageReader::new(format, Body::EventStream).events;
                full.scan.begin();
                full.scan.feed(&p);
                full.scan.end();
                let (usage, bad, clean) = (
                    full.scan.facts.usage,
                    full.scan.facts.bad_count,
                    full.scan.ended_cleanly(),
                );
                let mut fast = UsageReader::new(format, Body::EventStream).events;
                fast.scan.begin();
                let what = format!("{file}: {:?} {format:?}", String::from_utf8_lossy(&p));
                // The name gate drops nothing the full scan reads.
                for dialect in [OPENAI, ANTHROPIC, GEMINI] {
                    if no_usage_event(&event, dialect) {
                        gated += 1;
                        assert!(!usage.any() && !bad, "{what}: gated event has usage");
                    }
                }
                // A payload ending in a null top-level usage has none the full scan reads.
                if null_usage_tail(&p) {
                    null_tails += 1;
                    assert!(!usage.any() && !bad, "{what}: null tail but usage");
                }
                match fast.usage_only(&p) {
                    None => {
                        assert!(!usage.any() && !bad, "{what}: usage missed");
                    }
                    Some(true) => {
                        fast_reads += 1;
                        // Nothing before the key is checked: only valid payloads compare.
                        if clean {
                            assert_eq!(fast.scan.facts.usage, usage, "{what}");
                            assert_eq!(fast.scan.facts.bad_count, bad, "{what}");
                        }
                    }
                    Some(false) => {}
                }
            }
        }
        assert!(fast_reads > 20, "the fast path read {fast_reads} payloads");
        assert!(
            gated > 20 && null_tails > 20,
            "{gated} gated, {null_tails} null tails"
        );
    }

    /// Cuts after every blank line (`\n\n`, `\r\n\r\n`): one event per buffer, as
    /// providers send them; `lines` also before every `event:` and comment line.
    fn event_cuts(body: &[u8], lines: bool) -> Vec<usize> {
        let mut cuts: Vec<usize> = (2..=body.len())
            .filter(|&i| {
                body[..i].ends_with(b"\n\n")
                    || body[..i].ends_with(b"\r\n\r\n")
                    || (lines
                        && body[i - 1] == b'\n'
                        && (body[i..].starts_with(b"event:") || body[i..].starts_with(b":")))
            })
            .collect();
        if cuts.last() != Some(&body.len()) {
            cuts.push(body.len());
        }
        cuts
    }

    /// Feeds `body` cut at `cuts`, by `feed` (`fast`) or by the general path alone; returns
    /// everything the reader reports and how many buffers `skips` dropped.
    fn feed_at(format: Format, body: &[u8], cuts: &[usize], fast: bool) -> (String, usize) {
        let mut r = UsageReader::new(format, Body::EventStream);
        let (mut firsts, mut skipped, mut at) = (Vec::new(), 0, 0);
        for (k, &cut) in cuts.iter().enumerate() {
            let piece = &body[at..cut];
            at = cut;
            if fast && r.quiet && r.skips(piece) {
                skipped += 1;
            }
            let first = if fast {
                r.feed(piece)
            } else {
                r.feed_general(piece)
            };
            if first {
                firsts.push(k);
            }
        }
        let usage = r.events.usage;
        let out = r.finish(cuts.last() == Some(&body.len()));
        let said = format!(
            "{out:?} {usage:?} model {:?} first {firsts:?} at finish {} malformed {} bad {}",
            r.model(),
            r.first_content_at_finish(),
            r.events.malformed,
            r.events.bad_count,
        );
        (said, skipped)
    }

    /// Streams where the fast steps must and must not apply: settled Chat chunks with a null
    /// usage tail and traps (a lone `\r` in the data line, `\r\n` ends, no space after
    /// `data:`, a value over `CARRY_CAP`, a name left by an earlier `event:` line, a null tail
    /// after `{`), Anthropic and Responses hot names in their own and the other's stream.
    fn fast_step_streams() -> Vec<Vec<String>> {
        let chunk = |text: &str| chat(&format!(r#","x":"{text}","usage":null"#));
        // Over `CARRY_CAP`, streamed through the scanner: its first `usage` is read.
        let big = format!(
            "data: {{\"usage\":{{\"completion_tokens_details\":{{\"reasoning_tokens\":2}}}},\"x\":\"{}\",\"usage\":null}}\n\n",
            "y".repeat(CARRY_CAP)
        );
        // A lone `\r` ends the data line and `\r\r` the event: three events, usage in one.
        let cr = "data: {\"x\":\"a\r\rdata: {\"usage\":{\"completion_tokens\":9}}\r\rdata: {\"y\":1,\"usage\":null}\n\n";
        let chat_body = [
            chunk("a"),
            chunk("b"),
            chunk("c\rd"),
            cr.into(),
            chunk("e").replace("\n\n", "\r\n\r\n"),
            chunk("f").replace("data: ", "data:"),
            chunk("g").replace("data: ", "data:  "),
            big.clone(),
            "event: content_block_stop\n".into(),
            chunk("h"),
            chunk("i").replace("\n\n", "\n\r\n"),
            chunk("j"),
            "data: {\"usage\":null}\n\n".into(),
            ": comment\n".into(),
            chunk("k"),
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\n"
                .into(),
            chunk("l"),
            // A data line left by an earlier buffer: the chunk ends its event.
            "data: {\"usage\":{\"completion_tokens_details\":{\"reasoning_tokens\":77}}}\n".into(),
            chunk("p"),
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\n".into(),
            // A name left by an earlier buffer: the chunk is read, its first usage counts.
            "event: message\n".into(),
            "data: {\"usage\":{\"prompt_tokens_details\":{\"cached_tokens\":6}},\"usage\":null}\n\n".into(),
            "event: content_block_delta\ndata: {\"usage\":{\"prompt_tokens\":5}}\n\n".into(),
            "event: response.output_text.delta\ndata: {\"usage\":{\"prompt_tokens\":6}}\n\n".into(),
            chunk("m") + &chunk("n"),
            chunk("o"),
        ];
        let start = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude\",\"usage\":{\"input_tokens\":10,\"output_tokens\":1}}}\n\n";
        let delta = |text: &str| {
            format!("event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"delta\":{{\"type\":\"text_delta\",\"text\":\"{text}\"}}}}\n\n")
        };
        let anthropic = [
            start.to_string(),
            delta("a"),
            delta("b"),
            delta("c\rd"),
            "event: content_block_delta\ndata: {}\r\revent: message_delta\rdata: {\"usage\":{\"output_tokens\":99}}\n\n".into(),
            delta("e").replace('\n', "\r\n"),
            delta("f").replace("event: ", "event:"),
            delta("g").replace("delta\ndata", "deltax\ndata"),
            delta("h").replace("\"}}\n\n", "\"},\"usage\":{\"output_tokens\":50}}\n\n"),
            "event: response.output_text.delta\ndata: {\"usage\":{\"output_tokens\":60}}\n\n".into(),
            delta(&"i".repeat(CARRY_CAP)),
            delta("j") + &delta("k"),
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":7}}\n\n".into(),
            delta("l"),
            // Not a Chat stream: a null tail does not end the reading.
            "data: {\"usage\":{\"cache_creation_input_tokens\":8},\"usage\":null}\n\n".into(),
            // Mid-line (after `data:`): the buffer is the rest of a data line.
            delta("m") + "data:",
            "event: content_block_delta\ndata: {\"usage\":{\"output_tokens\":55}}\n\n".into(),
            delta("n"),
        ];
        let created = "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"model\":\"gpt\",\"usage\":null}}\n\n";
        let text = |t: &str| {
            format!("event: response.output_text.delta\ndata: {{\"type\":\"response.output_text.delta\",\"delta\":\"{t}\"}}\n\n")
        };
        let responses = [
            created.to_string(),
            text("a"),
            text("b"),
            text("c\rd"),
            "event: response.output_text.delta\ndata: {}\r\revent: response.completed\rdata: {\"response\":{\"usage\":{\"input_tokens\":1}}}\n\n".into(),
            text("e").replace("\n\n", "\r\n\r\n"),
            text("f").replace("\"}\n\n", "\",\"usage\":{\"input_tokens\":70}}\n\n"),
            "event: content_block_delta\ndata: {\"usage\":{\"input_tokens\":2,\"output_tokens\":3}}\n\n".into(),
            text("g"),
        ];
        // Gemini: no event name is gated.
        let gemini = [
            "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"a\"}]}}],\"modelVersion\": \"g\"}\n\n".into(),
            "event: content_block_delta\ndata: {\"usageMetadata\": {\"promptTokenCount\": 5}}\n\n".into(),
            "event: response.output_text.delta\ndata: {\"usageMetadata\": {\"candidatesTokenCount\": 6}}\n\n".into(),
            "data: {\"x\": 1,\"usage\":null}\n\n".to_string(),
        ];
        vec![
            chat_body.to_vec(),
            anthropic.to_vec(),
            responses.to_vec(),
            gemini.to_vec(),
        ]
    }

    /// `feed` (the `skips` drop and the one-event step before the framer) reports exactly what
    /// the general path (BOM, framer) reports, for every corpus body and the streams above,
    /// every dialect setting, one event per buffer, byte by byte, whole and in random splits.
    #[test]
    fn fast_steps_read_what_the_general_path_reads() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/usage_corpus");
        let bodies: Vec<Vec<u8>> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "body"))
            .map(|p| std::fs::read(p).unwrap())
            .collect();
        // Each body with its own cuts (the streams above also as their pieces).
        let mut bodies: Vec<(Vec<u8>, Vec<usize>)> =
            bodies.into_iter().map(|b| (b, Vec::new())).collect();
        for pieces in fast_step_streams() {
            let cuts = pieces
                .iter()
                .scan(0, |at, p| {
                    *at += p.len();
                    Some(*at)
                })
                .collect();
            bodies.push((pieces.concat().into_bytes(), cuts));
        }
        let mut seed = 0x2545_F491_4F6C_DD1D_u64;
        let mut skipped = 0;
        for (body, pieces) in &bodies {
            let n = body.len();
            let mut splits = vec![
                pieces.clone(),
                event_cuts(body, false),
                event_cuts(body, true),
                (1..=n).collect(),
                vec![n],
            ];
            for parts in [3, 20, 200] {
                let mut cuts: Vec<usize> = (0..parts)
                    .map(|_| {
                        seed = seed
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        (seed >> 33) as usize % (n + 1)
                    })
                    .collect();
                cuts.push(n);
                cuts.sort_unstable();
                splits.push(cuts);
            }
            // Cut, as a stream cut short is.
            splits.push(
                event_cuts(body, false)
                    .into_iter()
                    .filter(|&c| c < n * 2 / 3)
                    .collect(),
            );
            for format in [
                Format::Auto,
                Format::OpenAi,
                Format::Anthropic,
                Format::Gemini,
            ] {
                for cuts in &splits {
                    let (fast, k) = feed_at(format, body, cuts, true);
                    let (general, _) = feed_at(format, body, cuts, false);
                    assert_eq!(
                        fast,
                        general,
                        "{format:?} {cuts:?} {}",
                        String::from_utf8_lossy(body)
                    );
                    skipped += k;
                }
            }
        }
        assert!(skipped > 200, "{skipped} buffers skipped");
    }

    /// A JSON body's scanner just begun; with `known`, after a payload that gave the model.
    fn fresh_scanner(format: Format, known: bool) -> Scanner {
        // An SSE payload's reading unless a test says otherwise.
        begun_scanner(
            UsageReader::new(format, Body::Json).events.scan.allow,
            false,
            known,
        )
    }

    /// A scanner of these settings just begun; with `known`, after a payload that gave the
    /// model.
    pub(crate) fn begun_scanner(allow: Dialects, json_body: bool, known: bool) -> Scanner {
        let mut s = Scanner::new(allow);
        s.json_body = json_body;
        if known {
            s.begin();
            s.feed(br#"{"model":"m","modelVersion":"m"}"#);
            s.end();
        }
        s.begin();
        s
    }

    /// What a scanner read: facts and model, comparable.
    pub(crate) fn reading(s: &Scanner) -> String {
        let f = &s.facts;
        format!(
            "content {} delta {} hints {} kind {:?} usage {:?} bad {} error {} model {:?} clean {}",
            f.content,
            f.delta,
            f.hints,
            f.kind.get(),
            f.usage,
            f.bad_count,
            f.error,
            s.model.get(),
            s.ended_cleanly()
        )
    }

    /// Reads the JSON `body` with `r`, reset, and checks it reads as with a new reader.
    fn read_as_new(r: &mut UsageReader, body: &[u8]) {
        r.reset(Format::Auto, Body::Json);
        r.feed(body);
        let got = (r.finish(true), r.model().map(<[u8]>::to_vec));
        let mut fresh = UsageReader::new(Format::Auto, Body::Json);
        fresh.feed(body);
        assert_eq!(got, (fresh.finish(true), fresh.model().map(<[u8]>::to_vec)));
    }

    /// A reader keeps the shapes of its last two JSON bodies: two shapes in turn are each read
    /// in its shape (noted once each), three in turn back off from noting; every body reads as
    /// with a new reader.
    #[test]
    fn shapes_kept_and_noting_backs_off() {
        let pretty = std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../tests/usage_corpus/openai_chat_json.body"),
        )
        .unwrap();
        let compact = br#"{"id":"x","model":"gpt-4o","choices":[{"index":0,"message":{"content":"hi"}}],"usage":{"prompt_tokens":19,"completion_tokens":10}}"#;
        let anthropic = br#"{"type":"message","model":"claude","content":[{"type":"text","text":"hi"}],"usage":{"input_tokens":3,"output_tokens":4}}"#;
        let read = read_as_new;
        let mut r = UsageReader::new(Format::Auto, Body::Json);
        for _ in 0..50 {
            read(&mut r, &pretty);
            read(&mut r, compact);
        }
        assert_eq!(r.shapes.notes, 2, "two shapes in turn: each noted once");
        // More shapes in turn than are kept: noting backs off while none matches.
        let gemini = br#"{"candidates":[{"content":{"parts":[{"text":"hi"}]}}],"usageMetadata":{"promptTokenCount":2},"modelVersion":"g"}"#;
        let mut r = UsageReader::new(Format::Auto, Body::Json);
        for _ in 0..100 {
            for body in [&pretty[..], compact, anthropic, gemini] {
                read(&mut r, body);
            }
        }
        // At most one shape noted per four bodies matched or 64 walked (after the first two).
        let (notes, matched) = (r.shapes.notes, r.shapes.matched);
        assert!(
            notes * u32::from(NOTE_COST)
                <= u32::from(NOTE_CREDIT_CAP) + matched * u32::from(MATCH_CREDIT) + 400 - matched
        );
        assert!(
            notes < 400 / 4,
            "{notes} shapes noted, {matched} matched of 400 bodies"
        );
        // One shape again: noted within a noting's cost in walked bodies, then read in it.
        for _ in 0..=NOTE_COST << r.shapes.note_fails {
            read(&mut r, compact);
        }
        let notes = r.shapes.notes;
        for _ in 0..10 {
            read(&mut r, compact);
        }
        assert_eq!(r.shapes.notes, notes);
    }

    /// Noting never stops for good: a reader whose kept shapes no body matches any more (its
    /// credit taken by bodies too large to note, or by shapes that then stopped) still notes
    /// the shape of a steady stream within a noting's cost in walked bodies; bodies too large
    /// to note are noted ever more rarely, and in turn with one shape do not take its place.
    /// Every body reads as with a new reader.
    #[test]
    fn noting_recovers_when_kept_shapes_stop_matching() {
        let read = read_as_new;
        let body = |name: &str, n: usize| {
            format!(r#"{{"model":"{name}","{name}":{n},"usage":{{"prompt_tokens":{n}}}}}"#)
        };
        // More values than a shape holds (an embeddings response): walked, never noted.
        let numbers: Vec<String> = (0..2 * scan::SHAPE_STEPS).map(|k| k.to_string()).collect();
        let large = format!(
            r#"{{"data":[{{"embedding":[{}]}}],"usage":{{"prompt_tokens":8}}}}"#,
            numbers.join(",")
        );
        // Bodies of one shape: all but those walked while noting lacks credit (at most its
        // cost, by the walks' credit) read in it.
        let steady = |r: &mut UsageReader, count: u32| {
            let (matched, cost) = (
                r.shapes.matched,
                u32::from(NOTE_COST << r.shapes.note_fails),
            );
            for n in 0..count {
                read(r, body("s", n as usize).as_bytes());
            }
            let matched = r.shapes.matched - matched;
            assert!(matched + cost + 2 >= count, "{matched} of {count} ({cost})");
        };
        // Two bodies too large to note first: their notings take the credit.
        let mut r = UsageReader::new(Format::Auto, Body::Json);
        read(&mut r, large.as_bytes());
        read(&mut r, large.as_bytes());
        steady(&mut r, 300);
        // The shapes kept are of bodies that stopped (one read often, then others once).
        let mut r = UsageReader::new(Format::Auto, Body::Json);
        steady(&mut r, 10);
        for n in 0..50 {
            read(&mut r, body("x", n).as_bytes());
        }
        for name in ["y", "z", "w"] {
            read(&mut r, body(name, 1).as_bytes());
        }
        steady(&mut r, 300);
        // Only bodies too large to note: a few notings in 1,000, then one shape again.
        let mut r = UsageReader::new(Format::Auto, Body::Json);
        for _ in 0..1000 {
            read(&mut r, large.as_bytes());
        }
        assert!(r.shapes.notes <= 5, "{} notings", r.shapes.notes);
        assert_eq!(r.shapes.note_fails, MAX_NOTE_FAILS);
        steady(&mut r, 1000);
        // Large bodies in turn with one shape: once noted, it stays kept.
        let mut r = UsageReader::new(Format::Auto, Body::Json);
        for n in 0..400 {
            if n == 200 {
                assert!(r.shapes.matched > 100, "{} of 200", r.shapes.matched);
                r.shapes.matched = 0;
            }
            read(&mut r, large.as_bytes());
            read(&mut r, body("s", n).as_bytes());
        }
        assert_eq!(r.shapes.matched, 200);
    }

    /// Variants of a payload for the whole-walk comparison: itself, cut, bytes replaced by
    /// ones that matter to JSON, bytes dropped.
    pub(crate) fn variants(p: &[u8]) -> Vec<Vec<u8>> {
        let mut out = vec![p.to_vec()];
        let n = p.len();
        let mut seed = n as u64 ^ 0x9E37_79B9_7F4A_7C15;
        let mut next = |m: usize| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as usize % m.max(1)
        };
        for _ in 0..12 {
            let mut v = p.to_vec();
            match next(3) {
                0 => v.truncate(next(n + 1)),
                1 if n > 0 => {
                    let at = next(n);
                    v[at] = b"{}[]\\\":,0-.en \"x"[next(16)];
                }
                _ if n > 0 => {
                    v.remove(next(n));
                }
                _ => {}
            }
            out.push(v);
        }
        out
    }

    /// The whole-buffer walk reads exactly what the resumable scanner reads, for every corpus
    /// payload and body (and damaged variants of them), every dialect setting, as a whole
    /// payload and from every key on as the rest of a top-level object.
    #[test]
    fn whole_walk_reads_what_the_scanner_reads() {
        let (mut whole, mut members) = (0, 0);
        for (file, _, p) in corpus_payloads() {
            for v in variants(&p) {
                for format in [
                    Format::Auto,
                    Format::OpenAi,
                    Format::Anthropic,
                    Format::Gemini,
                ] {
                    let what = format!("{file}: {:?} {format:?}", String::from_utf8_lossy(&v));
                    for known in [false, true] {
                        let fresh = || fresh_scanner(format, known);
                        let mut full = fresh();
                        full.feed(&v);
                        let mut fast = fresh();
                        if fast.feed_body(&v) {
                            whole += 1;
                            assert!(full.ended_cleanly(), "{what}: accepted, scanner did not");
                            assert_eq!(reading(&fast), reading(&full), "{what}");
                        } else {
                            assert_eq!(reading(&fast), reading(&fresh()), "{what}: undo");
                        }
                        // From each key on.
                        for (at, _) in v.iter().enumerate().filter(|(_, &c)| c == b'"') {
                            let mut full = fresh();
                            full.begin_member();
                            full.feed(&v[at..]);
                            full.end();
                            let mut fast = fresh();
                            if fast.feed_members(&v[at..]) {
                                members += 1;
                                fast.end();
                                assert!(full.ended_cleanly(), "{what} at {at}");
                                assert_eq!(reading(&fast), reading(&full), "{what} at {at}");
                            }
                        }
                    }
                }
            }
        }
        assert!(
            whole > 500 && members > 500,
            "{whole} whole, {members} members"
        );
    }

    /// JSON bodies read whole by the walk give what the resumable scanner gives when the same
    /// body comes byte by byte, for every dialect setting; the traps of a key search are read
    /// at their place only.
    #[test]
    fn json_bodies_whole_and_byte_by_byte() {
        let u = r#"{"prompt_tokens":3,"completion_tokens":4}"#;
        let bodies = [
            // Nested `usage` at depth 2 and 3, before the top-level one.
            (format!(r#"{{"model":"m","choices":[{{"usage":{{"prompt_tokens":9}}}}],"x":{{"usage":{{"prompt_tokens":8}}}},"usage":{u}}}"#), true),
            // `usage` inside strings (escaped quotes), and a key-like string value.
            (format!(r#"{{"model":"m","note":"\"usage\":{{\"prompt_tokens\":9}}","k":"usage","usage":{u}}}"#), true),
            // Usage first, model last; usage last.
            (format!(r#"{{"usage":{u},"choices":[{{"message":{{"content":"hi"}}}}],"model":"m"}}"#), true),
            (format!(r#"{{"model":"m","choices":[],"usage":{u}}}"#), true),
            // Pretty-printed.
            ("{\n  \"model\" : \"m\",\r\n\t\"usage\" :\n { \"prompt_tokens\" : 3 ,\n \"completion_tokens\": 4 }\n}\n\n".to_string(), true),
            // A top-level duplicate key: merged field by field, the latest wins.
            (r#"{"usage":{"prompt_tokens":1,"completion_tokens":2},"model":"m","usage":{"prompt_tokens":5}}"#.to_string(), true),
            // Gemini streamGenerateContent without SSE: an array of responses.
            (r#"[{"candidates":[{"content":{"parts":[{"text":"a"}]}}],"usageMetadata":{"promptTokenCount":2},"modelVersion":"g"},{"usageMetadata":{"promptTokenCount":3,"candidatesTokenCount":4}}]"#.to_string(), true),
            // Escaped model (read the scanner's way), Anthropic with its cache fields.
            (r#"{"type":"message","model":"cl\u00e9\/x","usage":{"input_tokens":10,"cache_read_input_tokens":5,"output_tokens":2}}"#.to_string(), true),
            // Invalid counts, no usage, broken bodies: the walk gives up or agrees.
            (r#"{"model":"m","usage":{"prompt_tokens":-1,"completion_tokens":"2"}}"#.to_string(), true),
            (r#"{"model":"m","usage":{"prompt_tokens":3}} x"#.to_string(), false),
            (r#"{"model":"m","usage":{"prompt_tokens":3},}"#.to_string(), false),
            (r#"{"model":"m" "usage":{"prompt_tokens":3}}"#.to_string(), false),
            // Broken inside `choices`: a body's `choices` is skipped (bracket-counted), as any
            // container the body's reading does not need, so this reads.
            (r#"{"choices":[{"index" 0}],"usage":{"prompt_tokens":3}}"#.to_string(), true),
        ];
        for (body, walks) in &bodies {
            for format in [
                Format::Auto,
                Format::OpenAi,
                Format::Anthropic,
                Format::Gemini,
            ] {
                let mut s = UsageReader::new(format, Body::Json).events.scan;
                assert_eq!(s.feed_body(body.as_bytes()), *walks, "{body}");
                for complete in [true, false] {
                    let mut whole = UsageReader::new(format, Body::Json);
                    whole.feed(body.as_bytes());
                    let mut bytes = UsageReader::new(format, Body::Json);
                    for b in body.as_bytes().chunks(1) {
                        bytes.feed(b);
                    }
                    assert_eq!(whole.finish(complete), bytes.finish(complete), "{body}");
                    assert_eq!(whole.model(), bytes.model(), "{body}");
                }
                // Split inside the usage object: the first buffer is no whole body.
                if let Some(at) = body.find("_tokens\":") {
                    let mut split = UsageReader::new(format, Body::Json);
                    split.feed(&body.as_bytes()[..at]);
                    assert!(
                        !split.events.scan.at_start()
                            || body.as_bytes()[..at].trim_ascii().is_empty()
                    );
                    split.feed(&body.as_bytes()[at..]);
                    let mut bytes = UsageReader::new(format, Body::Json);
                    for b in body.as_bytes().chunks(1) {
                        bytes.feed(b);
                    }
                    assert_eq!(split.finish(true), bytes.finish(true), "{body}");
                }
            }
        }
        // Spot checks of what is read.
        let read = |body: &str| {
            let mut r = UsageReader::new(Format::Auto, Body::Json);
            r.feed(body.as_bytes());
            r.finish(true)
        };
        assert_eq!(read(&bodies[0].0), tokens(3, 4));
        assert_eq!(read(&bodies[1].0), tokens(3, 4));
        assert_eq!(read(&bodies[5].0), tokens(5, 2));
        assert_eq!(read(&bodies[6].0), tokens(3, 4));
        // Bytes after a body read whole are read as the scanner reads them (an error).
        let mut r = UsageReader::new(Format::Auto, Body::Json);
        r.feed(bodies[3].0.as_bytes());
        r.feed(b"  \n");
        assert_eq!(r.finish(true), tokens(3, 4));
        let mut r = UsageReader::new(Format::Auto, Body::Json);
        r.feed(br#"{"model":"m"}"#);
        r.feed(b"{}");
        assert_eq!(r.finish(true), Outcome::Malformed);
    }

    /// Reads a stream in the given pieces; returns the outcome and the model.
    fn read(format: Format, body: &[u8], size: usize) -> (Outcome, Option<Vec<u8>>) {
        let mut r = UsageReader::new(format, Body::EventStream);
        for piece in body.chunks(size.max(1)) {
            r.feed(piece);
        }
        let out = r.finish(true);
        (out, r.model().map(<[u8]>::to_vec))
    }

    /// Everything a reader tells about a body fed in pieces of `size`: the outcome, the model,
    /// which feeds saw the first content, and whether the end did.
    fn observe(r: &mut UsageReader, body: &[u8], size: usize, complete: bool) -> String {
        let firsts: Vec<bool> = body.chunks(size.max(1)).map(|p| r.feed(p)).collect();
        let out = r.finish(complete);
        format!(
            "{out:?} {:?} {firsts:?} {}",
            r.model(),
            r.first_content_at_finish()
        )
    }

    /// A reader reset after reading anything (another body, of the other framing, cut, left
    /// in the middle of an event, its carry buffer or deferred tail in use) reads every corpus
    /// body, whole and in pieces, as a new reader does.
    #[test]
    fn reset_reader_reads_as_a_new_one() {
        let bodies: Vec<Vec<u8>> = corpus_payloads()
            .into_iter()
            .filter(|(_, event, _)| event.is_empty())
            .map(|(_, _, body)| body)
            // And each with a byte order mark (one cut inside it, before, below).
            .flat_map(|body| [[BOM, &body].concat(), body])
            .collect();
        let formats = [
            Format::Auto,
            Format::OpenAi,
            Format::Anthropic,
            Format::Gemini,
        ];
        let mut used = UsageReader::new(Format::Auto, Body::EventStream);
        for (i, body) in bodies.iter().enumerate() {
            for (j, format) in formats.into_iter().enumerate() {
                for kind in [Body::Json, Body::EventStream] {
                    for size in [body.len(), 7] {
                        for complete in [true, false] {
                            // Something else first: the previous body, maybe left mid-way.
                            let before = &bodies[(i + bodies.len() - 1) % bodies.len()];
                            let other = if kind == Body::Json {
                                Body::EventStream
                            } else {
                                Body::Json
                            };
                            used.reset(formats[(j + 1) % 4], other);
                            let cut = match (i + j) % 4 {
                                3 => 2.min(before.len()),
                                k => before.len() * (1 + k) / 3,
                            };
                            for p in before[..cut].chunks(5 + i % 11) {
                                used.feed(p);
                            }
                            if (i + j) % 2 == 0 {
                                used.finish(complete);
                            }
                            used.reset(format, kind);
                            let mut fresh = UsageReader::new(format, kind);
                            assert_eq!(
                                observe(&mut used, body, size, complete),
                                observe(&mut fresh, body, size, complete),
                                "body {i} {format:?} {kind:?} pieces of {size}"
                            );
                            assert!(
                                used.state_bytes()
                                    <= std::mem::size_of::<UsageReader>() + CARRY_CAP + SHAPE_CAP
                            );
                        }
                    }
                }
            }
        }
    }

    fn chat(rest: &str) -> String {
        format!("data: {{\"model\":\"m\",\"choices\":[{{\"delta\":{{\"content\":\"hi\"}}}}]{rest}}}\n\n")
    }

    fn tokens(input: u64, output: u64) -> Outcome {
        Outcome::Usage(Tokens {
            input,
            output,
            ..Tokens::default()
        })
    }

    /// The in-place comparison of tails of one length decides what the general one decides:
    /// tails from an alphabet of digits, quotes, backslashes and separators, and Gemini's
    /// usage tail, with bytes replaced (digits mostly) at random places.
    #[test]
    fn in_place_comparison_is_the_general_one() {
        let gemini = br#""usageMetadata": {"promptTokenCount": 9,"candidatesTokenCount": 4,"totalTokenCount": 13,"promptTokensDetails": [{"modality": "TEXT","tokenCount": 9}]},"modelVersion": "gemini-2.5-flash","responseId": "gtUaaI2wL8Wd1dkP_YnAkA8"}"#;
        let alphabet = b"0123456789012345678901234567890123456789\"\"\\,:{} ab";
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut next = |m: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % m.max(1) as u64) as usize
        };
        let (mut same, mut differ) = (0, 0);
        for round in 0..20_000 {
            let old: Vec<u8> = if round % 2 == 0 {
                gemini.to_vec()
            } else {
                (0..next(120))
                    .map(|_| alphabet[next(alphabet.len())])
                    .collect()
            };
            let mut new = old.clone();
            let digits: Vec<usize> = (0..old.len())
                .filter(|&k| old[k].is_ascii_digit())
                .collect();
            for _ in 0..=next(4) {
                if new.is_empty() {
                    break;
                }
                // Mostly a digit of a count, as the next chunk of a stream changes them.
                let at = if !digits.is_empty() && next(4) != 0 {
                    digits[next(digits.len())]
                } else {
                    next(new.len())
                };
                new[at] = if next(5) == 0 {
                    alphabet[next(alphabet.len())]
                } else {
                    b'0' + next(10) as u8
                };
            }
            let want = same_but_counts(&old, &new);
            let got = same_counts_in_place(&old, &TailMap::of(&old), &new);
            assert_eq!(
                got,
                want,
                "{:?} {:?}",
                String::from_utf8_lossy(&old),
                String::from_utf8_lossy(&new)
            );
            if want {
                same += 1;
            } else {
                differ += 1;
            }
        }
        assert!(same > 2_000 && differ > 2_000, "{same} same, {differ} not");
    }

    /// The kept tail's map is always the map of the kept tail (or not made yet), whatever
    /// the tails before it: counts that gain and lose digits, keys that change (a sequence
    /// that once compared a tail in place with the map of an earlier tail of its length).
    #[test]
    fn kept_tail_map_is_the_kept_tails() {
        let chunk = |usage: &str| {
            format!("data: {{\"candidates\": [{{\"content\": {{\"parts\": [{{\"text\": \"a\"}}]}}}}],\"usageMetadata\": {{{usage}}},\"modelVersion\": \"g\"}}\n\n")
        };
        let usages = [
            r#""promptTokenCount": 1,"m1": 2"#,
            r#""promptTokenCount": 2,"m1": 2"#,
            r#""promptTokenCount": 1234,"m1": 2"#,
            r#""promptTokenCount": 9,"m1": 2"#,
            r#""promptTokenCount": 9,"m2": 2"#,
            r#""promptTokenCount": 9,"m2": "1""#,
            r#""promptTokenCount": 9,"m2": "2""#,
            r#""promptTokenCount": 99,"m2": "2""#,
            r#""promptTokenCount": 9,"m3": "2""#,
        ];
        let mut r = UsageReader::new(Format::Auto, Body::EventStream);
        for round in 0..3 {
            for (k, u) in usages.iter().enumerate() {
                let u = if round == 1 {
                    usages[usages.len() - 1 - k]
                } else {
                    u
                };
                r.feed(chunk(u).as_bytes());
                let e = &r.events;
                let map = e.tail_map;
                if map.len != 0 {
                    let tail = &e.tail[..usize::from(e.tail_len)];
                    let fresh = TailMap::of(tail);
                    assert_eq!(usize::from(map.len), tail.len(), "{u}");
                    assert_eq!((map.plain, map.inside), (fresh.plain, fresh.inside), "{u}");
                }
            }
        }
    }

    #[test]
    fn same_but_counts_only_for_numbers() {
        let base = br#""usageMetadata": {"promptTokenCount": 9,"candidatesTokenCount": 4},"modelVersion": "g-2.5","responseId": "ab12"}"#;
        let yes = [
            &base[..],
            br#""usageMetadata": {"promptTokenCount": 9,"candidatesTokenCount": 1234},"modelVersion": "g-2.5","responseId": "ab12"}"#,
            br#""usageMetadata": {"promptTokenCount": 10,"candidatesTokenCount": 5},"modelVersion": "g-2.5","responseId": "ab12"}"#,
            br#""usageMetadata": {"promptTokenCount": 999999999999,"candidatesTokenCount": 0},"modelVersion": "g-2.5","responseId": "ab12"}"#,
        ];
        for new in yes {
            assert!(
                same_but_counts(base, new),
                "{}",
                String::from_utf8_lossy(new)
            );
        }
        let no = [
            // Digits inside strings (values, keys), a 13-digit count, other members,
            // a backslash, a sign, a `#` after a quote (exact quote counting).
            &br#""usageMetadata": {"promptTokenCount": 9,"candidatesTokenCount": 4},"modelVersion": "g-3.5","responseId": "ab12"}"#[..],
            br#""usageMetadata": {"promptTokenCount": 9,"candidatesTokenCount": 4},"modelVersion": "g-2.5","responseId": "ab13"}"#,
            br#""usageMetadata": {"promptTokenCount": 1000000000000,"candidatesTokenCount": 4},"modelVersion": "g-2.5","responseId": "ab12"}"#,
            br#""usageMetadata": {"promptTokenCount": 9},"modelVersion": "g-2.5","responseId": "ab12"}"#,
            br#""usageMetadata": {"promptTokenCount": 9,"candidatesTokenCount": -4},"modelVersion": "g-2.5","responseId": "ab12"}"#,
            br#""usageMetadata": {"promptTokenCount": 9,"candidatesTokenCount": 4},"modelVersion": "g-2.5","responseId": "ab\12"}"#,
            br#""usageMetadata": {"promptTokenCount": 9,"candidatesTokenCount": 4.0},"modelVersion": "g-2.5","responseId": "ab12"}"#,
        ];
        for new in no {
            assert!(
                !same_but_counts(base, new),
                "{}",
                String::from_utf8_lossy(new)
            );
        }
        let a = br##""u":{"k1":1},"s":"#"##;
        assert!(!same_but_counts(&a[..], br##""u":{"k2":1},"s":"#"##));
        assert!(!same_but_counts(br##""x":"#1"}"##, br##""x":"#2"}"##));
        assert!(!same_but_counts(br##""xyzw":"#1"}"##, br##""xyzw":"#2"}"##));
        assert!(same_but_counts(
            br##""x":"a#","n":1}"##,
            br##""x":"a#","n":22}"##
        ));
    }

    /// Settled Gemini streams whose usage changes shape (a count present in some chunks only,
    /// an invalid one, a second usage key): the deferred reading gives what the field-by-field
    /// merge of every chunk gives, whole and byte by byte, complete and cut.
    #[test]
    fn gemini_deferred_usage_merges_as_read() {
        let chunk = |text: &str, usage: &str| {
            format!("data: {{\"candidates\": [{{\"content\": {{\"parts\": [{{\"text\": \"{text}\"}}]}}}}],\"usageMetadata\": {{{usage}}},\"modelVersion\": \"g\",\"responseId\": \"r1\"}}\r\n\r\n")
        };
        let g = |p, c, t| Tokens {
            input: p,
            output: c + t,
            cached_input: 0,
            cache_write: 0,
            reasoning: t,
        };
        let cases = [
            (
                vec![
                    chunk(
                        "a",
                        r#""promptTokenCount": 9,"candidatesTokenCount": 1,"thoughtsTokenCount": 7"#,
                    ),
                    chunk(
                        "b",
                        r#""promptTokenCount": 9,"candidatesTokenCount": 2,"thoughtsTokenCount": 8"#,
                    ),
                    chunk("c", r#""promptTokenCount": 9,"candidatesTokenCount": 3"#),
                    chunk("d", r#""promptTokenCount": 9,"candidatesTokenCount": 14"#),
                ],
                g(9, 14, 8),
            ),
            (
                vec![
                    chunk("a", r#""promptTokenCount": 9,"candidatesTokenCount": 1"#),
                    chunk("b", r#""promptTokenCount": 9,"candidatesTokenCount": 2"#),
                    chunk(
                        "c",
                        r#""promptTokenCount": 9,"candidatesTokenCount": 3000000000000"#,
                    ),
                    chunk("d", r#""promptTokenCount": 9,"candidatesTokenCount": 30"#),
                    chunk("e", r#""promptTokenCount": 11,"candidatesTokenCount": 31"#),
                ],
                g(11, 31, 0),
            ),
            (
                vec![
                    chunk("a", r#""promptTokenCount": 9,"candidatesTokenCount": 1"#),
                    chunk(
                        "b",
                        r#""promptTokenCount": 9,"candidatesTokenCount": 2,"thoughtsTokenCount": 5"#,
                    ),
                    chunk(
                        "c",
                        r#""promptTokenCount": 9,"candidatesTokenCount": 3,"thoughtsTokenCount": 6"#,
                    ),
                    chunk("d", r#""promptTokenCount": 9,"candidatesTokenCount": 4"#),
                ],
                g(9, 4, 6),
            ),
        ];
        for (chunks, want) in &cases {
            let body = chunks.concat();
            for format in [Format::Auto, Format::Gemini] {
                for size in [body.len(), 1, 7, 100] {
                    for complete in [true, false] {
                        let mut r = UsageReader::new(format, Body::EventStream);
                        for piece in body.as_bytes().chunks(size) {
                            r.feed(piece);
                        }
                        let out = r.finish(complete);
                        let want = if complete {
                            Outcome::Usage(*want)
                        } else {
                            Outcome::Partial(*want)
                        };
                        assert_eq!(out, want, "{format:?} {size}");
                    }
                }
            }
        }
    }

    /// `feed_body` (the walk) reads what the resumable scanner reads, for every corpus payload,
    /// damaged and pretty-printed variants and traps, every dialect setting, with the model
    /// known or not, as an SSE payload and as a JSON body: it accepts only bodies the scanner
    /// reads without error, and then leaves exactly the scanner's facts; where it gives up it
    /// leaves the scanner just begun.
    #[test]
    fn body_walk_reads_what_the_scanner_reads() {
        let mut accepted = 0;
        let extra = [
            // `usage` inside a nested object after the real one; a top-level `usage` that is
            // no object; `model` inside `messages` before the top-level one.
            r#"{"model":"m","usage":{"prompt_tokens":3,"completion_tokens":4},"x":{"usage":{"prompt_tokens":9}}}"#,
            r#"{"model":"m","choices":[],"usage":7}"#,
            r#"{"messages":[{"model":"no"}],"model":"m","choices":[{"message":{"content":"x"}}],"usage":{"prompt_tokens":3}}"#,
            r#"{"choices":[{"index" 0}],"usage":{"prompt_tokens":3}}"#,
            r#"{"choices":[{"index":0,}],"usage":{"prompt_tokens":3}}"#,
            r#"{"choices":[{"a":[1}],"usage":{"prompt_tokens":3}}"#,
            r#"{"candidates":[{"content":{"parts":[{"text":"a"}]}}],"usageMetadata":{"promptTokenCount":2},"modelVersion":"g"}"#,
            // Backslashes outside strings in skipped containers (ordinary bytes to the
            // scanner), escapes at 64-byte steps of a skipped container, deep nesting.
            r#"{"x":{"a":\"},"b":[\\"]"]},"usage":{"prompt_tokens":3}}"#,
            r#"{"x":{"a":"0123456789012345678901234567890123456789012345678901\\\"\\","b":"}"},"usage":{"prompt_tokens":3}}"#,
            r#"{"x":[[[[[[[[[[{"usage":{"prompt_tokens":9}}]]]]]]]]]],"choices":[{"delta":{"tool_calls":[{"a":[[[[[[[[1]]]]]]]]}]}}],"usage":{"prompt_tokens":3}}"#,
        ];
        let mut all: Vec<Vec<u8>> = corpus_payloads().into_iter().map(|(_, _, p)| p).collect();
        all.extend(extra.iter().map(|s| s.as_bytes().to_vec()));
        let pretty = |p: &[u8]| {
            // The same payload with its separators spread over lines (outside strings only).
            let (mut out, mut inside, mut esc) = (Vec::new(), false, false);
            for &c in p {
                out.push(c);
                if inside {
                    (inside, esc) = (esc || c != b'"', !esc && c == b'\\');
                } else if c == b'"' {
                    inside = true;
                } else if matches!(c, b',' | b'{' | b'[' | b':') {
                    out.extend_from_slice(b"\n      \t \r\n ");
                }
            }
            out
        };
        let more: Vec<Vec<u8>> = all.iter().map(|p| pretty(p)).collect();
        all.extend(more);
        for p in all {
            for v in variants(&p) {
                for format in [
                    Format::Auto,
                    Format::OpenAi,
                    Format::Anthropic,
                    Format::Gemini,
                ] {
                    for (known, json_body) in
                        [(false, false), (true, false), (false, true), (true, true)]
                    {
                        let fresh = || {
                            let mut s = fresh_scanner(format, known);
                            s.json_body = json_body;
                            s
                        };
                        let what = format!(
                            "{:?} {format:?} {known} {json_body}",
                            String::from_utf8_lossy(&v)
                        );
                        // The resumable reading alone (no walk of a body's rest).
                        let mut full = fresh();
                        full.walks_rest = false;
                        full.feed(&v);
                        let mut body = fresh();
                        if body.feed_body(&v) {
                            accepted += 1;
                            assert!(full.ended_cleanly(), "{what}: accepted, scanner did not");
                            assert_eq!(reading(&body), reading(&full), "{what}");
                        } else {
                            assert_eq!(reading(&body), reading(&fresh()), "{what}: undo");
                        }
                    }
                }
            }
        }
        assert!(accepted > 1200, "{accepted} accepted");
    }

    #[test]
    fn null_usage_tail_only_where_it_is_a_key() {
        for (p, want) in [
            (&br#"{"a":1,"usage":null}"#[..], true),
            (br#"{"usage":null}"#, true),
            (b"{\"a\":1 ,\n \"usage\" : null \r\n} \t", true),
            (br#"{"a":"x\",\"usage\":null}"#, false),
            (br#"{"a":"x\","usage":null}"#, true),
            (br#"{"a":"x","usage":null,"b":1}"#, false),
            (br#"{"a":{"usage":null}}"#, false),
            (br#"{"a":"usage":null}"#, false),
            (br#""usage":null}"#, false),
            (br#"{"usage":nul}"#, false),
            (br#"{"xusage":null}"#, false),
        ] {
            assert_eq!(null_usage_tail(p), want, "{}", String::from_utf8_lossy(p));
        }
    }

    #[test]
    fn settled_chat_chunks_with_usage_in_strings() {
        // Settled (content, model), then chunks whose text quotes usage JSON, one of them
        // ending like a null usage inside a string; the real usage comes last.
        let mut body = chat(r#","usage":null"#);
        body += &chat(r#","note":"tail ,"usage":null}","usage":null"#);
        body += "data: {\"choices\":[{\"delta\":{\"content\":\"say ,\\\"usage\\\":null}\"}}]}\n\n";
        body +=
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\n";
        body += &chat(r#","usage" : null "#);
        for size in [body.len(), 1, 7, 64] {
            let (out, model) = read(Format::Auto, body.as_bytes(), size);
            assert_eq!(out, tokens(3, 4), "pieces of {size}");
            assert_eq!(model.as_deref(), Some(&b"m"[..]));
        }
        // A usage object followed by a null `usage` inside a nested object still counts.
        let body = chat(r#","usage":{"prompt_tokens":5,"completion_tokens":6},"x":{"usage":null}"#);
        let body = chat("") + &body;
        assert_eq!(read(Format::OpenAi, body.as_bytes(), 1000).0, tokens(5, 6));
    }

    #[test]
    fn event_names_gate_only_what_cannot_carry_usage() {
        let start = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude\",\"usage\":{\"input_tokens\":10,\"output_tokens\":1}}}\n\n";
        let delta = "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"hi\"}}\n\n";
        // A usage object in an event whose name carries none is never read, settled or not.
        let odd = "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"usage\":{\"output_tokens\":99}}\n\n";
        // The name changes mid-event: the last `event:` line is the name.
        let renamed = "event: content_block_delta\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":7}}\n\n";
        // No name: the default `message` is not gated.
        let unnamed = "data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":8}}\n\n";
        let anth = |input, output| {
            Outcome::Usage(Tokens {
                input,
                output,
                ..Tokens::default()
            })
        };
        for size in [10_000, 1, 5, 33] {
            let body = [start, odd, delta, odd, renamed].concat();
            assert_eq!(read(Format::Auto, body.as_bytes(), size).0, anth(10, 7));
            let body = [start, delta, renamed, unnamed, odd].concat();
            assert_eq!(read(Format::Auto, body.as_bytes(), size).0, anth(10, 8));
            let body = [start, delta, "event: content_block_delta\r\nevent: message_delta\r\ndata: {\"usage\":{\"output_tokens\":3}}\r\n\r\n"].concat();
            assert_eq!(
                read(Format::Anthropic, body.as_bytes(), size).0,
                anth(10, 3)
            );
        }
        // A name left by an `event:` line in an earlier buffer is replaced, and ends with its
        // event: the unnamed event after it is not gated.
        let pieces = [
            start,
            delta,
            "event: content_block_stop\n",
            "event: content_block_delta\ndata: {}\n\ndata: {\"usage\":{\"output_tokens\":9}}\n\n",
        ];
        let mut r = UsageReader::new(Format::Auto, Body::EventStream);
        for p in pieces {
            r.feed(p.as_bytes());
        }
        assert_eq!(r.finish(true), anth(10, 9));
        // Responses: `response.<a>.<b>` events are gated, `response.<state>` ones are not.
        assert!(no_usage_event(b"response.output_text.delta", OPENAI));
        assert!(no_usage_event(b"response.output_item.done", OPENAI));
        assert!(!no_usage_event(b"response.completed", OPENAI));
        assert!(!no_usage_event(b"response.failed", OPENAI));
        assert!(!no_usage_event(b"content_block_delta", OPENAI));
        assert!(!no_usage_event(b"response.output_text.delta", ANTHROPIC));
        assert!(!no_usage_event(b"message_delta", ANTHROPIC));
        assert!(!no_usage_event(b"message", ANTHROPIC));
    }

    #[test]
    fn lone_cr_lines_are_framed_by_the_spec() {
        // A stream that shows `\n` ends first and a lone `\r` later: the `\r` ends lines,
        // here the data line and then the event (`\r\r`), so the usage is its own event.
        let mut body = chat(r#","usage":null"#);
        body += &chat(r#","usage":null"#);
        body += "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\r\rdata: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\n";
        body += "event: x\rdata: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":6}}\r\r";
        for size in [body.len(), 1, 3, 100] {
            assert_eq!(read(Format::Auto, body.as_bytes(), size).0, tokens(5, 6));
        }
        let body = body.replace(
            "\"completion_tokens\":6}}\r\r",
            "\"completion_tokens\":6}}\r\n\r\ndata: {\"usage\":null\r}\n\n",
        );
        assert_eq!(read(Format::Auto, body.as_bytes(), 10_000).0, tokens(5, 6));
    }
}
