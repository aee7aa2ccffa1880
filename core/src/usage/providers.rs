//! What the providers' fields mean: which key at which place of a payload is a token count, the
//! model, the event type or generated content, and how each provider's counts become our
//! [`Tokens`]. The scanner ([`super::scan`]) only walks the structure and asks this table.

use super::Tokens;

/// A set of provider dialects, as bits. OpenAI covers Chat Completions and Responses: their
/// usage fields never collide and normalise the same way, so they need not be told apart.
pub(crate) type Dialects = u8;
pub(crate) const OPENAI: Dialects = 1;
pub(crate) const ANTHROPIC: Dialects = 2;
pub(crate) const GEMINI: Dialects = 4;
pub(crate) const ALL: Dialects = OPENAI | ANTHROPIC | GEMINI;

/// One dialect out of a set of hints from the same payload. Hints rarely conflict; when they do,
/// the most specific evidence wins (Anthropic's event names, then OpenAI's, then Gemini's).
pub(crate) fn pick(hints: Dialects) -> Dialects {
    if hints & ANTHROPIC != 0 {
        ANTHROPIC
    } else if hints & OPENAI != 0 {
        OPENAI
    } else {
        hints & GEMINI
    }
}

/// Hints from an event type (the SSE `event:` name, or the payload's top-level `type`).
pub(crate) fn kind_hints(kind: &[u8]) -> Dialects {
    if kind.starts_with(b"response.") {
        OPENAI
    } else if kind.starts_with(b"message_")
        || kind.starts_with(b"content_block_")
        || kind == b"message"
    {
        ANTHROPIC
    } else {
        0
    }
}

/// The provider count fields we keep, one slot each (index into [`Raw`]).
pub(crate) mod slot {
    pub const PROMPT: u8 = 0; // OpenAI Chat prompt_tokens
    pub const COMPLETION: u8 = 1; // OpenAI Chat completion_tokens
    pub const INPUT: u8 = 2; // OpenAI Responses / Anthropic input_tokens
    pub const OUTPUT: u8 = 3; // OpenAI Responses / Anthropic output_tokens
    pub const CACHED: u8 = 4; // OpenAI *_tokens_details.cached_tokens
    pub const REASONING: u8 = 5; // OpenAI *_tokens_details.reasoning_tokens
    pub const CACHE_READ: u8 = 6; // Anthropic cache_read_input_tokens
    pub const CACHE_CREATION: u8 = 7; // Anthropic cache_creation_input_tokens
    pub const EPHEMERAL_5M: u8 = 8; // Anthropic cache_creation.ephemeral_5m_input_tokens
    pub const EPHEMERAL_1H: u8 = 9; // Anthropic cache_creation.ephemeral_1h_input_tokens
    pub const G_PROMPT: u8 = 10; // Gemini promptTokenCount
    pub const G_CANDIDATES: u8 = 11; // Gemini candidatesTokenCount
    pub const G_CACHED: u8 = 12; // Gemini cachedContentTokenCount
    pub const G_THOUGHTS: u8 = 13; // Gemini thoughtsTokenCount
    pub const G_TOOL_PROMPT: u8 = 14; // Gemini toolUsePromptTokenCount
    pub const COUNT: usize = 15;
}

/// The largest count we accept: a larger one is not a token count but a bug or an attack.
pub(crate) const MAX_COUNT: u64 = 1_000_000_000_000;

/// Provider counts as reported, slot by slot: `set` has a slot's bit once it was reported (a
/// slot without its bit holds a stale value, never read: clearing is one store). Merging is per
/// field and the latest report wins: every provider reports totals (Anthropic's
/// `message_delta` and Gemini's chunks are cumulative), so nothing is ever added up across
/// reports.
#[derive(Clone, Copy)]
pub(crate) struct Raw {
    vals: [u64; slot::COUNT],
    set: u16,
}

impl Default for Raw {
    fn default() -> Self {
        Raw {
            vals: [0; slot::COUNT],
            set: 0,
        }
    }
}

/// Equal when the same slots were reported with the same counts (stale values aside).
impl PartialEq for Raw {
    fn eq(&self, other: &Raw) -> bool {
        (0..slot::COUNT as u8).all(|s| self.get(s) == other.get(s))
    }
}

impl Eq for Raw {}

impl std::fmt::Debug for Raw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries((0..slot::COUNT as u8).filter_map(|s| Some((s, self.get(s)?))))
            .finish()
    }
}

impl Raw {
    /// No slot reported.
    #[inline(always)]
    pub(crate) fn clear(&mut self) {
        self.set = 0;
    }

    #[inline(always)]
    pub(crate) fn set(&mut self, s: u8, v: u64) {
        if let Some(x) = self.vals.get_mut(usize::from(s)) {
            *x = v;
            self.set |= 1 << s;
        }
    }

    #[inline(always)]
    pub(crate) fn get(&self, s: u8) -> Option<u64> {
        let reported = u32::from(self.set) >> s.min(31) & 1 != 0;
        self.vals.get(usize::from(s)).copied().filter(|_| reported)
    }

    #[inline(always)]
    pub(crate) fn any(&self) -> bool {
        self.set != 0
    }

    /// The slots `newer` reported take its counts.
    pub(crate) fn merge(&mut self, newer: &Raw) {
        // The usual merge: the first usage object of a payload, into nothing reported.
        if self.set == 0 {
            *self = *newer;
            return;
        }
        let mut m = newer.set;
        while m != 0 {
            let s = m.trailing_zeros() as usize;
            if let (Some(x), Some(&v)) = (self.vals.get_mut(s), newer.vals.get(s)) {
                *x = v;
            }
            m &= m - 1;
        }
        self.set |= newer.set;
    }

    /// Which dialect reported these counts, for a body that gave no other evidence. Only
    /// `input_tokens`/`output_tokens` are shared (OpenAI Responses and Anthropic); without cache
    /// fields both normalise alike, so OpenAI is the answer then.
    fn dialect(&self) -> Dialects {
        use slot::*;
        let has = |s: &[u8]| s.iter().any(|&x| self.get(x).is_some());
        if has(&[G_PROMPT, G_CANDIDATES, G_CACHED, G_THOUGHTS, G_TOOL_PROMPT]) {
            GEMINI
        } else if has(&[CACHE_READ, CACHE_CREATION, EPHEMERAL_5M, EPHEMERAL_1H]) {
            ANTHROPIC
        } else {
            OPENAI
        }
    }

    /// Our token types from the provider's counts (see the module documentation for the
    /// conventions). `None` when no count of the dialect was reported.
    pub(crate) fn normalise(&self, dialect: Dialects) -> Option<Tokens> {
        use slot::*;
        let dialect = if dialect == 0 {
            self.dialect()
        } else {
            dialect
        };
        let g = |s| self.get(s).unwrap_or(0);
        let has = |s: &[u8]| s.iter().any(|&x| self.get(x).is_some());
        let mut t = match dialect {
            ANTHROPIC => {
                if !has(&[
                    INPUT,
                    OUTPUT,
                    CACHE_READ,
                    CACHE_CREATION,
                    EPHEMERAL_5M,
                    EPHEMERAL_1H,
                ]) {
                    return None;
                }
                // The 5m/1h split is a breakdown of cache_creation_input_tokens: only a
                // fallback when the total is missing.
                let write = self
                    .get(CACHE_CREATION)
                    .unwrap_or_else(|| g(EPHEMERAL_5M) + g(EPHEMERAL_1H));
                Tokens {
                    input: g(INPUT) + g(CACHE_READ) + write,
                    output: g(OUTPUT),
                    cached_input: g(CACHE_READ),
                    cache_write: write,
                    reasoning: 0,
                }
            }
            GEMINI => {
                if !has(&[G_PROMPT, G_CANDIDATES, G_CACHED, G_THOUGHTS, G_TOOL_PROMPT]) {
                    return None;
                }
                // Thinking is billed as output but not part of candidatesTokenCount; the tool-use
                // prompt is billed as input but not part of promptTokenCount.
                Tokens {
                    input: g(G_PROMPT) + g(G_TOOL_PROMPT),
                    output: g(G_CANDIDATES) + g(G_THOUGHTS),
                    cached_input: g(G_CACHED),
                    cache_write: 0,
                    reasoning: g(G_THOUGHTS),
                }
            }
            _ => {
                if !has(&[PROMPT, COMPLETION, INPUT, OUTPUT, CACHED, REASONING]) {
                    return None;
                }
                Tokens {
                    input: self.get(PROMPT).unwrap_or_else(|| g(INPUT)),
                    output: self.get(COMPLETION).unwrap_or_else(|| g(OUTPUT)),
                    cached_input: g(CACHED),
                    cache_write: 0,
                    reasoning: g(REASONING),
                }
            }
        };
        // Parts never exceed their whole, whatever a provider wrote: a sum of parts must not
        // count a token twice.
        t.cached_input = t.cached_input.min(t.input);
        t.cache_write = t.cache_write.min(t.input - t.cached_input);
        t.reasoning = t.reasoning.min(t.output);
        Some(t)
    }
}

/// The meaning of an open container the scanner tracks. Everything else is skipped unread.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Node {
    /// A JSON body that is an array of responses (Gemini `streamGenerateContent` without SSE).
    TopArray,
    /// The top-level object of a body or event.
    Root,
    /// A usage object whose counts are final.
    Usage,
    /// Anthropic `message_start`'s `message.usage`: its `output_tokens` is provisional.
    StartUsage,
    InDetails,
    OutDetails,
    CacheCreation,
    /// Anthropic `message_start`'s `message`.
    Message,
    /// OpenAI Responses events' `response`.
    Response,
    Choices,
    Choice,
    Delta,
    Candidates,
    Candidate,
    GeminiContent,
    Parts,
    Part,
    /// An array any element of which is generated content (Chat `delta.tool_calls`).
    Flag(Dialects),
}

impl Node {
    pub(crate) fn is_array(self) -> bool {
        matches!(
            self,
            Node::TopArray | Node::Choices | Node::Candidates | Node::Parts | Node::Flag(_)
        )
    }

    pub(crate) fn is_usage(self) -> bool {
        matches!(self, Node::Usage | Node::StartUsage)
    }
}

/// What to do with the value that comes next.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Act {
    Skip,
    /// A container of this meaning (a value of another shape is skipped).
    Open(Node),
    /// A token count for this slot.
    Count(u8),
    Model,
    /// The top-level `type` (event type when the stream has no `event:` names).
    Type,
    /// A non-empty string is generated content of this dialect.
    Content(Dialects),
    /// OpenAI Responses' top-level `delta`: non-empty makes a `*.delta` event content.
    Delta,
    /// Any value but `null` is generated content of this dialect.
    AnyContent(Dialects),
}

/// The action for an element of an array node.
pub(crate) fn element(node: Node) -> Act {
    match node {
        Node::TopArray => Act::Open(Node::Root),
        Node::Choices => Act::Open(Node::Choice),
        Node::Candidates => Act::Open(Node::Candidate),
        Node::Parts => Act::Open(Node::Part),
        Node::Flag(d) => Act::AnyContent(d),
        _ => Act::Skip,
    }
}

/// Every key [`member`] knows, at any node. Any other key is `(Act::Skip, 0)` everywhere.
const KEYS: [&[u8]; 41] = [
    b"usage",
    b"model",
    b"type",
    b"choices",
    b"delta",
    b"object",
    b"output",
    b"response",
    b"message",
    b"usageMetadata",
    b"modelVersion",
    b"candidates",
    b"prompt_tokens",
    b"completion_tokens",
    b"input_tokens",
    b"output_tokens",
    b"prompt_tokens_details",
    b"input_tokens_details",
    b"completion_tokens_details",
    b"output_tokens_details",
    b"cache_read_input_tokens",
    b"cache_creation_input_tokens",
    b"cache_creation",
    b"promptTokenCount",
    b"candidatesTokenCount",
    b"cachedContentTokenCount",
    b"thoughtsTokenCount",
    b"toolUsePromptTokenCount",
    b"cached_tokens",
    b"reasoning_tokens",
    b"ephemeral_5m_input_tokens",
    b"ephemeral_1h_input_tokens",
    b"text",
    b"content",
    b"reasoning_content",
    b"reasoning",
    b"refusal",
    b"tool_calls",
    b"function_call",
    b"parts",
    b"functionCall",
];

/// A 6-bit hash of a non-empty key from its length and first and last bytes (multipliers
/// picked so that few common keys of the providers that are none of ours share a bit).
#[inline(always)]
const fn key_hash(len: usize, first: u8, last: u8) -> u32 {
    ((len as u32).wrapping_mul(15)
        ^ (first as u32).wrapping_mul(14)
        ^ (last as u32).wrapping_mul(15))
        & 63
}

const KEY_MASK: u64 = {
    let mut m = 0u64;
    let mut i = 0;
    while i < KEYS.len() {
        let k = KEYS[i];
        m |= 1 << key_hash(k.len(), k[0], k[k.len() - 1]);
        i += 1;
    }
    m
};

/// False only for a key that is none of [`KEYS`] (so [`member`] would give `(Act::Skip, 0)`):
/// a few instructions instead of the table's comparisons for most irrelevant keys.
#[inline(always)]
pub(crate) fn may_know(key: &[u8]) -> bool {
    match (key.first(), key.last()) {
        (Some(&f), Some(&l)) => KEY_MASK >> key_hash(key.len(), f, l) & 1 == 1,
        _ => false,
    }
}

/// `key == k` for a constant `k` of up to 32 bytes, by (overlapping) words: a few compares of
/// immediates instead of one per byte.
#[inline(always)]
fn eqk(key: &[u8], k: &[u8]) -> bool {
    let n = k.len();
    if key.len() != n {
        return false;
    }
    let w = |s: &[u8], i: usize| u64::from_le_bytes(s[i..i + 8].try_into().unwrap_or_default());
    let h = |s: &[u8], i: usize| u32::from_le_bytes(s[i..i + 4].try_into().unwrap_or_default());
    match n {
        4..=7 => h(key, 0) == h(k, 0) && h(key, n - 4) == h(k, n - 4),
        8..=16 => w(key, 0) == w(k, 0) && w(key, n - 8) == w(k, n - 8),
        17..=24 => w(key, 0) == w(k, 0) && w(key, 8) == w(k, 8) && w(key, n - 8) == w(k, n - 8),
        25..=32 => {
            w(key, 0) == w(k, 0)
                && w(key, 8) == w(k, 8)
                && w(key, 16) == w(k, 16)
                && w(key, n - 8) == w(k, n - 8)
        }
        _ => key == k,
    }
}

/// The action for the value of `key` in the object `node`, restricted to the dialects `allow`,
/// and the dialect the key's presence is evidence of.
#[inline(always)]
pub(crate) fn member(node: Node, key: &[u8], allow: Dialects) -> (Act, Dialects) {
    let (act, d) = match node {
        Node::Root => match key {
            _ if eqk(key, b"usage") => (Act::Open(Node::Usage), OPENAI | ANTHROPIC),
            _ if eqk(key, b"model") => (Act::Model, OPENAI | ANTHROPIC),
            _ if eqk(key, b"type") => (Act::Type, OPENAI | ANTHROPIC),
            _ if eqk(key, b"choices") => (Act::Open(Node::Choices), OPENAI),
            _ if eqk(key, b"delta") => (Act::Delta, OPENAI),
            _ if eqk(key, b"object") || eqk(key, b"output") => (Act::Skip, OPENAI),
            _ if eqk(key, b"response") => (Act::Open(Node::Response), OPENAI),
            _ if eqk(key, b"message") => (Act::Open(Node::Message), ANTHROPIC),
            _ if eqk(key, b"usageMetadata") => (Act::Open(Node::Usage), GEMINI),
            _ if eqk(key, b"modelVersion") => (Act::Model, GEMINI),
            _ if eqk(key, b"candidates") => (Act::Open(Node::Candidates), GEMINI),
            _ => return (Act::Skip, 0),
        },
        Node::Usage | Node::StartUsage => usage_member(node, key),
        Node::InDetails => match key {
            _ if eqk(key, b"cached_tokens") => (Act::Count(slot::CACHED), OPENAI),
            _ => return (Act::Skip, 0),
        },
        Node::OutDetails => match key {
            _ if eqk(key, b"reasoning_tokens") => (Act::Count(slot::REASONING), OPENAI),
            _ => return (Act::Skip, 0),
        },
        Node::CacheCreation => match key {
            _ if eqk(key, b"ephemeral_5m_input_tokens") => {
                (Act::Count(slot::EPHEMERAL_5M), ANTHROPIC)
            }
            _ if eqk(key, b"ephemeral_1h_input_tokens") => {
                (Act::Count(slot::EPHEMERAL_1H), ANTHROPIC)
            }
            _ => return (Act::Skip, 0),
        },
        Node::Message => match key {
            _ if eqk(key, b"usage") => (Act::Open(Node::StartUsage), ANTHROPIC),
            _ if eqk(key, b"model") => (Act::Model, ANTHROPIC),
            _ => return (Act::Skip, 0),
        },
        Node::Response => match key {
            _ if eqk(key, b"usage") => (Act::Open(Node::Usage), OPENAI),
            _ if eqk(key, b"model") => (Act::Model, OPENAI),
            _ => return (Act::Skip, 0),
        },
        Node::Choice => match key {
            _ if eqk(key, b"delta") => (Act::Open(Node::Delta), OPENAI),
            _ if eqk(key, b"text") => (Act::Content(OPENAI), OPENAI),
            _ => return (Act::Skip, 0),
        },
        Node::Delta => match key {
            _ if eqk(key, b"content")
                || eqk(key, b"reasoning_content")
                || eqk(key, b"reasoning")
                || eqk(key, b"refusal") =>
            {
                (Act::Content(OPENAI), OPENAI)
            }
            _ if eqk(key, b"tool_calls") => (Act::Open(Node::Flag(OPENAI)), OPENAI),
            _ if eqk(key, b"function_call") => (Act::AnyContent(OPENAI), OPENAI),
            _ => return (Act::Skip, 0),
        },
        Node::Candidate => match key {
            _ if eqk(key, b"content") => (Act::Open(Node::GeminiContent), GEMINI),
            _ => return (Act::Skip, 0),
        },
        Node::GeminiContent => match key {
            _ if eqk(key, b"parts") => (Act::Open(Node::Parts), GEMINI),
            _ => return (Act::Skip, 0),
        },
        Node::Part => match key {
            _ if eqk(key, b"text") => (Act::Content(GEMINI), GEMINI),
            _ if eqk(key, b"functionCall") => (Act::AnyContent(GEMINI), GEMINI),
            _ => return (Act::Skip, 0),
        },
        Node::TopArray | Node::Choices | Node::Candidates | Node::Parts | Node::Flag(_) => {
            return (Act::Skip, 0)
        }
    };
    if d & allow == 0 {
        return (Act::Skip, 0);
    }
    // Keys shared by several dialects are no evidence of any one of them.
    let hint = if d.is_power_of_two() { d } else { 0 };
    (act, hint)
}

fn usage_member(node: Node, key: &[u8]) -> (Act, Dialects) {
    use slot::*;
    match key {
        _ if eqk(key, b"prompt_tokens") => (Act::Count(PROMPT), OPENAI),
        _ if eqk(key, b"completion_tokens") => (Act::Count(COMPLETION), OPENAI),
        _ if eqk(key, b"input_tokens") => (Act::Count(INPUT), OPENAI | ANTHROPIC),
        // message_start's output_tokens is a placeholder (1 or so) until message_delta.
        _ if eqk(key, b"output_tokens") && node == Node::StartUsage => (Act::Skip, ANTHROPIC),
        _ if eqk(key, b"output_tokens") => (Act::Count(OUTPUT), OPENAI | ANTHROPIC),
        _ if eqk(key, b"prompt_tokens_details") || eqk(key, b"input_tokens_details") => {
            (Act::Open(Node::InDetails), OPENAI)
        }
        _ if eqk(key, b"completion_tokens_details") || eqk(key, b"output_tokens_details") => {
            (Act::Open(Node::OutDetails), OPENAI)
        }
        _ if eqk(key, b"cache_read_input_tokens") => (Act::Count(CACHE_READ), ANTHROPIC),
        _ if eqk(key, b"cache_creation_input_tokens") => (Act::Count(CACHE_CREATION), ANTHROPIC),
        _ if eqk(key, b"cache_creation") => (Act::Open(Node::CacheCreation), ANTHROPIC),
        _ if eqk(key, b"promptTokenCount") => (Act::Count(G_PROMPT), GEMINI),
        _ if eqk(key, b"candidatesTokenCount") => (Act::Count(G_CANDIDATES), GEMINI),
        _ if eqk(key, b"cachedContentTokenCount") => (Act::Count(G_CACHED), GEMINI),
        _ if eqk(key, b"thoughtsTokenCount") => (Act::Count(G_THOUGHTS), GEMINI),
        _ if eqk(key, b"toolUsePromptTokenCount") => (Act::Count(G_TOOL_PROMPT), GEMINI),
        _ => (Act::Skip, ALL),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The table as first written, with slice patterns: `member` is checked against it.
    fn member_by_name(node: Node, key: &[u8], allow: Dialects) -> (Act, Dialects) {
        let (act, d) = match node {
            Node::Root => match key {
                b"usage" => (Act::Open(Node::Usage), OPENAI | ANTHROPIC),
                b"model" => (Act::Model, OPENAI | ANTHROPIC),
                b"type" => (Act::Type, OPENAI | ANTHROPIC),
                b"choices" => (Act::Open(Node::Choices), OPENAI),
                b"delta" => (Act::Delta, OPENAI),
                b"object" | b"output" => (Act::Skip, OPENAI),
                b"response" => (Act::Open(Node::Response), OPENAI),
                b"message" => (Act::Open(Node::Message), ANTHROPIC),
                b"usageMetadata" => (Act::Open(Node::Usage), GEMINI),
                b"modelVersion" => (Act::Model, GEMINI),
                b"candidates" => (Act::Open(Node::Candidates), GEMINI),
                _ => return (Act::Skip, 0),
            },
            Node::Usage | Node::StartUsage => usage_member_by_name(node, key),
            Node::InDetails => match key {
                b"cached_tokens" => (Act::Count(slot::CACHED), OPENAI),
                _ => return (Act::Skip, 0),
            },
            Node::OutDetails => match key {
                b"reasoning_tokens" => (Act::Count(slot::REASONING), OPENAI),
                _ => return (Act::Skip, 0),
            },
            Node::CacheCreation => match key {
                b"ephemeral_5m_input_tokens" => (Act::Count(slot::EPHEMERAL_5M), ANTHROPIC),
                b"ephemeral_1h_input_tokens" => (Act::Count(slot::EPHEMERAL_1H), ANTHROPIC),
                _ => return (Act::Skip, 0),
            },
            Node::Message => match key {
                b"usage" => (Act::Open(Node::StartUsage), ANTHROPIC),
                b"model" => (Act::Model, ANTHROPIC),
                _ => return (Act::Skip, 0),
            },
            Node::Response => match key {
                b"usage" => (Act::Open(Node::Usage), OPENAI),
                b"model" => (Act::Model, OPENAI),
                _ => return (Act::Skip, 0),
            },
            Node::Choice => match key {
                b"delta" => (Act::Open(Node::Delta), OPENAI),
                b"text" => (Act::Content(OPENAI), OPENAI),
                _ => return (Act::Skip, 0),
            },
            Node::Delta => match key {
                b"content" | b"reasoning_content" | b"reasoning" | b"refusal" => {
                    (Act::Content(OPENAI), OPENAI)
                }
                b"tool_calls" => (Act::Open(Node::Flag(OPENAI)), OPENAI),
                b"function_call" => (Act::AnyContent(OPENAI), OPENAI),
                _ => return (Act::Skip, 0),
            },
            Node::Candidate => match key {
                b"content" => (Act::Open(Node::GeminiContent), GEMINI),
                _ => return (Act::Skip, 0),
            },
            Node::GeminiContent => match key {
                b"parts" => (Act::Open(Node::Parts), GEMINI),
                _ => return (Act::Skip, 0),
            },
            Node::Part => match key {
                b"text" => (Act::Content(GEMINI), GEMINI),
                b"functionCall" => (Act::AnyContent(GEMINI), GEMINI),
                _ => return (Act::Skip, 0),
            },
            Node::TopArray | Node::Choices | Node::Candidates | Node::Parts | Node::Flag(_) => {
                return (Act::Skip, 0)
            }
        };
        if d & allow == 0 {
            return (Act::Skip, 0);
        }
        // Keys shared by several dialects are no evidence of any one of them.
        let hint = if d.is_power_of_two() { d } else { 0 };
        (act, hint)
    }

    fn usage_member_by_name(node: Node, key: &[u8]) -> (Act, Dialects) {
        use slot::*;
        match key {
            b"prompt_tokens" => (Act::Count(PROMPT), OPENAI),
            b"completion_tokens" => (Act::Count(COMPLETION), OPENAI),
            b"input_tokens" => (Act::Count(INPUT), OPENAI | ANTHROPIC),
            // message_start's output_tokens is a placeholder (1 or so) until message_delta.
            b"output_tokens" if node == Node::StartUsage => (Act::Skip, ANTHROPIC),
            b"output_tokens" => (Act::Count(OUTPUT), OPENAI | ANTHROPIC),
            b"prompt_tokens_details" | b"input_tokens_details" => {
                (Act::Open(Node::InDetails), OPENAI)
            }
            b"completion_tokens_details" | b"output_tokens_details" => {
                (Act::Open(Node::OutDetails), OPENAI)
            }
            b"cache_read_input_tokens" => (Act::Count(CACHE_READ), ANTHROPIC),
            b"cache_creation_input_tokens" => (Act::Count(CACHE_CREATION), ANTHROPIC),
            b"cache_creation" => (Act::Open(Node::CacheCreation), ANTHROPIC),
            b"promptTokenCount" => (Act::Count(G_PROMPT), GEMINI),
            b"candidatesTokenCount" => (Act::Count(G_CANDIDATES), GEMINI),
            b"cachedContentTokenCount" => (Act::Count(G_CACHED), GEMINI),
            b"thoughtsTokenCount" => (Act::Count(G_THOUGHTS), GEMINI),
            b"toolUsePromptTokenCount" => (Act::Count(G_TOOL_PROMPT), GEMINI),
            _ => (Act::Skip, ALL),
        }
    }

    fn raw(pairs: &[(u8, u64)]) -> Raw {
        let mut r = Raw::default();
        for &(s, v) in pairs {
            r.set(s, v);
        }
        r
    }

    /// `may_know` never rules out a key `member` knows: every key of the table answers
    /// `(Act::Skip, 0)` at every node unless it is in `KEYS`.
    #[test]
    fn unknown_keys_are_skipped_everywhere() {
        let nodes = [
            Node::TopArray,
            Node::Root,
            Node::Usage,
            Node::StartUsage,
            Node::InDetails,
            Node::OutDetails,
            Node::CacheCreation,
            Node::Message,
            Node::Response,
            Node::Choices,
            Node::Choice,
            Node::Delta,
            Node::Candidates,
            Node::Candidate,
            Node::GeminiContent,
            Node::Parts,
            Node::Part,
            Node::Flag(OPENAI),
        ];
        for k in KEYS {
            assert!(may_know(k), "{:?}", String::from_utf8_lossy(k));
        }
        // Every key the table's source names is in KEYS.
        let src = include_str!("providers.rs");
        let tables =
            &src[src.find("pub(crate) fn member(").unwrap()..src.find("mod tests").unwrap()];
        for (n, part) in tables.split("b\"").enumerate().skip(1) {
            let key = &part[..part.find('"').unwrap()];
            assert!(
                KEYS.contains(&key.as_bytes()),
                "{n}: {key} missing from KEYS"
            );
        }
        let mut rejected = 0;
        for key in [
            "id",
            "created",
            "index",
            "role",
            "logprobs",
            "total_tokens",
            "audio_tokens",
            "service_tier",
            "system_fingerprint",
            "finish_reason",
            "",
            "x",
        ] {
            if !may_know(key.as_bytes()) {
                rejected += 1;
                for node in nodes {
                    for allow in 0..8 {
                        assert_eq!(member(node, key.as_bytes(), allow), (Act::Skip, 0), "{key}");
                    }
                }
            }
        }
        assert!(rejected >= 8, "{rejected}");
    }

    /// `member` (keys compared by words) answers as the table by name for every node, dialect
    /// set, key of the table and near miss.
    #[test]
    fn member_is_the_table_by_name() {
        let nodes = [
            Node::TopArray,
            Node::Root,
            Node::Usage,
            Node::StartUsage,
            Node::InDetails,
            Node::OutDetails,
            Node::CacheCreation,
            Node::Message,
            Node::Response,
            Node::Choices,
            Node::Choice,
            Node::Delta,
            Node::Candidates,
            Node::Candidate,
            Node::GeminiContent,
            Node::Parts,
            Node::Part,
            Node::Flag(OPENAI),
        ];
        let mut keys: Vec<Vec<u8>> = vec![b"".to_vec(), b"x".to_vec(), b"id".to_vec()];
        for k in KEYS {
            keys.push(k.to_vec());
            for i in 0..k.len() {
                let mut v = k.to_vec();
                v[i] ^= 0x20;
                keys.push(v);
                keys.push(k[..i].to_vec());
                keys.push([&k[..i], &k[i + 1..]].concat());
            }
            keys.push([k, &b"s"[..]].concat());
        }
        for key in &keys {
            for node in nodes {
                for allow in 0..8 {
                    assert_eq!(
                        member(node, key, allow),
                        member_by_name(node, key, allow),
                        "{:?} {node:?} {allow}",
                        String::from_utf8_lossy(key)
                    );
                }
            }
        }
    }

    #[test]
    fn anthropic_input_includes_the_cache() {
        let r = raw(&[
            (slot::INPUT, 10),
            (slot::CACHE_READ, 100),
            (slot::CACHE_CREATION, 7),
            (slot::OUTPUT, 3),
        ]);
        let t = r.normalise(ANTHROPIC).unwrap();
        assert_eq!(
            t,
            Tokens {
                input: 117,
                output: 3,
                cached_input: 100,
                cache_write: 7,
                reasoning: 0
            }
        );
        let r = raw(&[
            (slot::INPUT, 10),
            (slot::EPHEMERAL_5M, 4),
            (slot::EPHEMERAL_1H, 5),
        ]);
        let t = r.normalise(ANTHROPIC).unwrap();
        assert_eq!((t.input, t.cache_write, t.output), (19, 9, 0));
    }

    #[test]
    fn gemini_thoughts_are_output() {
        let r = raw(&[
            (slot::G_PROMPT, 9),
            (slot::G_CANDIDATES, 5),
            (slot::G_THOUGHTS, 20),
            (slot::G_CACHED, 4),
        ]);
        let t = r.normalise(0).unwrap();
        assert_eq!(
            t,
            Tokens {
                input: 9,
                output: 25,
                cached_input: 4,
                cache_write: 0,
                reasoning: 20
            }
        );
    }

    #[test]
    fn parts_never_exceed_the_whole_and_merging_replaces() {
        let mut r = raw(&[(slot::PROMPT, 5), (slot::CACHED, 9), (slot::COMPLETION, 1)]);
        r.merge(&raw(&[(slot::COMPLETION, 4)]));
        let t = r.normalise(OPENAI).unwrap();
        assert_eq!(
            t,
            Tokens {
                input: 5,
                output: 4,
                cached_input: 5,
                cache_write: 0,
                reasoning: 0
            }
        );
        assert_eq!(Raw::default().normalise(OPENAI), None);
        assert_eq!(raw(&[(slot::G_PROMPT, 1)]).normalise(OPENAI), None);
    }
}
