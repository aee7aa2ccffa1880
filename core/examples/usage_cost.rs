//! Cost of the response-usage reader per SSE chunk and per JSON body, for callgrind:
//!
//! ```sh
//! cargo build --release -p gateway-metrics-core --example usage_cost
//! for n in 1000 2000; do valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.$n \
//!     target/release/examples/usage_cost openai $n; done
//! ```
//! The difference of the two totals divided by 1000 is the cost of one more chunk (the loop
//! around `feed` adds a handful of instructions). Each chunk is fed as its own buffer, after a
//! preamble that has shown the provider, the model and the first content (the stream is
//! settled), as in a real stream. `json` reads N whole typical bodies with one reader, reset
//! for each as the glue's pool resets it (so each body after the first is read in the shape of
//! the one before); `json_new` takes a new reader each time (the body walked and its shape
//! noted, the shapes' buffers allocated); `json_two_shapes` reads two bodies of different
//! shapes in turn (a reader keeps two); `json_four_shapes` four in turn (more than kept: mostly
//! walked, noted when matches have given credit); `json_after_unnotable` the pretty body on a
//! reader whose first two bodies had more values than a shape holds (embeddings);
//! `json_embeddings_alt` an embeddings body and the pretty body in turn (per pair);
//! `json_late_three` three shapes in turn that differ only at their end (failed replays of
//! nearly the whole body); `json_varied` and `json_pretty_varied` 64 bodies of the compact or
//! pretty body's shape in turn, with the id, the time, the answer and the counts changing as a
//! provider's do (the nginx benchmark serves the pretty ones).
//! `usage_cost sizes` prints a reader's bytes.
//!
//! Measured (Rust 1.95, release, x86-64, instructions; "before" is this harness built on the
//! code of the start of the fourth 2026-12-02 round (e9c18f5), measured in the same session).
//! Per-chunk figures move by up to ~±10 with the harness's own layout: `memchr`'s AVX2 line
//! search costs more or less with the data's alignment.
//!
//! | case | bytes | per chunk / body | before | target |
//! |---|---|---|---|---|
//! | `chat` the nginx benchmark's Chat chunk, `"usage":null` | 253 | 171 | 171 | ≤ ~170 |
//! | `openai` Chat chunk, `"usage":null` | 261 | 182 | 182 | ≤ ~170 |
//! | `anthropic` `content_block_delta` (with `event:` line) | 130 | 133 | 133 | ≤ 200 |
//! | `responses` `response.output_text.delta` | 214 | 159 | 159 | ≤ 200 |
//! | `gemini` chunk with `usageMetadata` running totals | 334 | 790 | 823 | ≤ ~400 |
//! | `chat_start` a new reader, 2 unsettled chunks, the usage chunk, `[DONE]` | 841 | 10,815 | 10,534 | |
//! | `anthropic_start` `message_start` … first delta, `message_delta`, stop | 806 | 9,724 | 9,505 | |
//! | `gemini_start` a new reader, the first chunk | 321 | 5,251 | 4,966 | |
//! | `responses_start` `response.created`, the first delta | 382 | 5,788 | 5,481 | |
//! | `json` Chat Completions body (reset + feed + finish), in the last one's shape | 674 | 2,578 | 5,118 | ≤ ~1,000 |
//! | `json_pretty` the corpus's pretty-printed Chat body, in the last one's shape | 997 | 2,707 | 6,077 | ≤ ~1,000 |
//! | `json_new` the pretty body, a new reader each time (walked, shape noted) | 997 | 11,730 | 6,077 | |
//! | `json_two_shapes` the compact and the pretty body in turn (both shapes kept) | 674 / 997 | 2,738 | 5,600 | |
//! | `json_four_shapes` four shapes in turn (more than kept) | 674 / 997 | 4,898 | 5,600 | |
//! | `json_after_unnotable` the pretty body after two embeddings bodies (see below) | 997 | 2,685 | 6,072 | |
//! | `json_embeddings_alt` an embeddings body and the pretty body in turn, per pair | 2,285 / 997 | 9,175 | 11,781 | |
//! | `json_late_three` three shapes in turn differing at their end (see below) | ~1,000 | 7,288 | 7,244 | |
//! | `json_long` the same with an 8,000-byte answer (a `\n` every 80 bytes) | 8,929 | 11,772 | 15,049 | |
//! | `json_long_split` the same in 4 KiB buffers (resumable scanner), one reader reset | 8,929 | 19,727 | 19,647 | |
//!
//! Seventh round (2026-12-02), against 425c58f (the start of the round) measured in the same
//! session: a JSON body's first buffer goes to the kept shapes before the framer's call, an
//! empty shape is passed over without a call, the reported counts are a bit set (clearing one
//! store, merging into nothing a copy), a JSON body's usage is normalised where its scanner
//! left it, the first usage object's opening is folded without its effect, a folded model
//! carries whether it is a label value as it is (checked once, when the shape is made).
//!
//! | case | before | now |
//! |---|---|---|
//! | `json_pretty_varied` (the nginx benchmark's bodies) | 1,671 | 1,489 |
//! | `json_varied` | 1,564 | 1,382 |
//! | `json_pretty` | 1,324 | 1,157 |
//! | `json` | 1,201 | 1,034 |
//! | `json_two_shapes` | 1,385 | 1,236 |
//! | `json_four_shapes` | 4,927 | 4,809 |
//! | `json_after_unnotable` | 1,290 | 1,146 |
//! | `json_embeddings_alt` | 8,293 | 7,965 |
//! | `json_late_three` | 7,351 | 7,195 |
//! | `json_long` | 10,463 | 10,296 |
//! | `json_long_split` | 19,705 | 19,543 |
//! | `json_new` | 16,042 | 16,177 |
//!
//! The stream rows: chat 171 → 183 and responses 159 → 171 with this round's last commit, whose
//! change is not on their path: `memchr`'s line search over the chunk costs 11 more with the
//! chunk's new address in the harness's data (anthropic 133 → 134, gemini 788 → 796).
//!
//! Sixth round (2026-12-02), against 2daee14 (the start of the round) measured in the same
//! session: values that stay the same from body to body (and the usage object's places) are
//! folded into the shape's compared runs, their effects (a count set, the model taken) kept
//! beside the runs; a run that differs is replayed step by step and its changed values read
//! from then on (`usage/scan/shape.rs`); a count's digits and a skipped number's are read 8 at
//! a time (`probe::lead_digits`); the shapes are reserved once per reader.
//!
//! | case | before | now |
//! |---|---|---|
//! | `json_pretty_varied` (the nginx benchmark's bodies) | 2,619 | 1,671 |
//! | `json_varied` | 2,503 | 1,564 |
//! | `json_pretty` | 2,704 | 1,324 |
//! | `json` | 2,575 | 1,201 |
//! | `json_two_shapes` | 2,674 | 1,385 |
//! | `json_four_shapes` | 4,869 | 4,903 |
//! | `json_after_unnotable` | 2,684 | 1,290 |
//! | `json_embeddings_alt` | 9,170 | 8,274 |
//! | `json_late_three` | 7,276 | 7,326 |
//! | `json_long` | 11,753 | 10,463 |
//! | `json_long_split` | 19,685 | 19,705 |
//! | `json_new` (a reader's first body: noting keeps values, fold, larger buffers) | 11,698 | 15,825 |
//!
//! The stream rows are unchanged (chat 171, anthropic 133, gemini 792, responses 159).
//!
//! Fifth round (2026-12-02, the JSON rows): "before" is the start of the round (10c2235, where
//! the JSON cases took a new reader per body, as `json_new` does now). A body held whole is
//! read in the shape of the last one (`usage/scan/shape.rs`): its bytes between values compared
//! 16 at a time (first and last 16 bytes of each run without a loop), its values read by the
//! walk's functions; 24 steps for the pretty body, ~36 instructions each of loop, comparison
//! and dispatch, the rest its strings' ends, number runs, the four counts and the model. A
//! reader keeps two shapes. A missed shape costs the walk plus the failed replays, and the
//! noting when it has credit (~1,100 for the values, ~2,000 for the tokens of the skipped
//! `choices`); a new reader also allocates the shapes' buffers (the glue's pool makes that
//! once per reader). A pooled reader's scanner is renewed in place (~60 less). The `_start`
//! rows (a new reader per stream) are ~300 more than at the round's start (10,443, 9,420,
//! 4,953, 5,455): `UsageReader::new` copies a reader ~64 bytes larger and its two empty shapes;
//! the glue's pool resets its readers in place, and the nginx benchmark's streams show no
//! change (SSE 4 chunks 13,910 → 13,821 added). Tried and dropped: the runs in padded
//! 16-byte chunks with a mask for the last (3,495: the mask and chunk counting cost more than
//! they save), the value slots out of line (3,190: calls and spills).
//!
//! Review of the round (s5review, the three rows above; "before" is 373cf5b, measured in the
//! same session): noting's credit came back only from bodies read in a kept shape, so a reader
//! whose credit had gone to shapes that no longer came (or to bodies too large to note, which
//! leave their place empty) never noted again: `json_after_unnotable` walked every body for
//! good. Walked bodies now give credit too (1 against 16 a match, 64 a noting), a noting that
//! gives up doubles the next one's cost (up to 8 times) and leaves its empty place to the
//! next, so a body too large to note no longer takes a kept shape's place in turn. The other
//! JSON rows are within ±40 of the figures above in that session (`json_four_shapes` 4,830 →
//! 4,869). `json_late_three` is not changed: a body of no kept shape costs both failed
//! replays, which stop at the first difference (here near the end: ~1,200 over the walk).
//! | `json_logprobs_split` a Chat body with 2,000 tokens' `logprobs` in 4 KiB buffers | 2.3 MB | 24.9 M | 25.5 M | |
//!
//! Fourth round (2026-12-02): a string's search past its first 16 bytes goes 64 bytes a step
//! (one mask test for four compares) up to 272 bytes, out of line, and a whole body's long
//! string goes from escape to escape by that search instead of one `memchr2` each (an
//! answer's `\n`s); a JSON body in several buffers reads the members after its large one
//! (`choices`, `content`) by the walk where that member ends, when the body ends in the same
//! buffer (`Scanner::walk_rest`: the scanner copied, the copy kept only when the walk reads to
//! the end, property-tested against the resumable reading alone). Inline, the 64-byte search
//! made `json_logprobs_split` 26.8 M (the scanner's loop heavier), so it is out of line, which
//! costs `json_long` ~900 more than inline.
//!
//! Third round (2026-12-02), against 0a2a14d, as its table gave them: gemini 1,927 → 801, json 5,875 → 5,163, json_pretty 6,958 → 6,118, json_long 17,641 → 16,758,
//! json_long_split 29,478 → 22,848, json_logprobs_split 29.3 M → 25.5 M.
//!
//! That round: `choices` and `candidates` are skipped in JSON bodies
//! (bracket-counted, not read member by member: they only tell a stream's first content); the
//! resumable scanner passes a skipped string's escapes in place and searches strings and keys
//! 16 bytes a step (`memchr2` only past 256 bytes; its skip of containers stays a byte loop,
//! see `probe::quote_or_bracket`: 16-byte steps there took 23.5 M instructions for
//! `json_logprobs_split` but 1.07 s against 0.70 s of wall-clock time for 400 bodies, 0.85 s
//! before this round); a settled Gemini chunk finds its usage key by `"u`
//! pairs 16 bytes a step (not `memmem`) and compares its tail with the last one in place
//! (only the bytes that differ looked at, where the strings are known from the kept tail's
//! map); SSE payloads are read by the JSON body's walk (`scan/whole.rs` has one walk now).
//! A reading of a whole body from its start and from its last usage key on (the middle
//! unread) measured 6,089 for `json_pretty` and 6,088 for `json_long`; not kept, see the
//! `usage` module documentation (a body broken before its usage would read differently whole
//! and split).
//!
//! Previous round:
//! Streaming chunks: untouched this round. JSON bodies this round (`usage/scan/probe.rs`, the
//! body walk in `usage/scan/whole.rs`): the next token, a string's end and a skipped
//! container's end are found 16 or 64 bytes at a time with SSE2 compares (through `safe_arch`),
//! a string longer than 64 bytes by `memchr2`; `choices` is read the scanner's way (its
//! `message` bracket-counted by in-string masks) instead of checked at every level; the provider
//! table is inlined into the walk. −9 % (compact), −19 % (pretty), −6 % (long answer: its
//! escapes stop each `memchr2` run). Targets missed by far. Where the compact body's 5,638 go:
//! ~614 fixed (`{}` alone: construction, framing, `finish` with normalisation), and for each of
//! the 23 members of the tracked objects (top level, the choice, `usage` and its two details)
//! ~67 instructions on the member's own path (key end, `:`, value dispatch, `,`) plus the key's
//! lookup (~20–40 for the 11 keys the hash mask lets through), its value (a skipped string's end
//! ~10–20, a number ~5 a digit), ~80 per tracked object opened and closed, ~300 for `message`
//! skipped. Tried and dropped this round (measured): a simdjson-style stage 1 classifying the
//! whole body into 64-byte masks of quotes, backslashes and whitespace before the walk (~130
//! instructions a block with SSE2's two-operand compares and mask gathering: 8,589 for the
//! pretty body, more than the scalar walk's 8,296: the walk still visits every token of the
//! tracked objects), and the walk as one loop with an explicit stack instead of recursion
//! (8,302). Reaching ~1,000 would need the tracked members' grammar checked and their keys
//! looked up at about 20 instructions each, which no token-by-token walk here approaches.
//!
//! Previous round: string ends by `memchr`'s SSE2 searcher (its first 16-byte probe inlined),
//! whitespace runs by one XOR a word. The round before: a settled stream's buffer
//! that is one skippable event is dropped before framing: one line search over the data line
//! (~85–95, the floor for exactness) plus ~80 (the `quiet` flag, shape compares, this loop).
//! Gemini: a settled chunk whose usage tail differs from the last one read only in counts is copied
//! and read once at the end; what is left is framing, the `memmem` for the key and the number-only
//! comparison (~1,100 for the ~200-byte tail). JSON bodies: irrelevant keys ruled out by a 64-bit
//! hash mask before the provider table, keys compared with the table by words, skipped scalars and
//! counts read without the value dispatch.

use std::hint::black_box;

use gateway_metrics_core::usage::{Body, Format, UsageReader};

const OPENAI_FIRST: &str = "data: {\"id\":\"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o-mini\",\"system_fingerprint\":\"fp_x\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hi\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n";
const OPENAI: &str = "data: {\"id\":\"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o-mini\",\"system_fingerprint\":\"fp_x\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n";
const OPENAI_END: &str = "data: {\"id\":\"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":19,\"completion_tokens\":10,\"total_tokens\":29,\"prompt_tokens_details\":{\"cached_tokens\":0},\"completion_tokens_details\":{\"reasoning_tokens\":0}}}\n\ndata: [DONE]\n\n";

/// The chunk of the callgrind measurement through nginx (each chunk its own buffer).
const CHAT_FIRST: &str = "data: {\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o-mini-2024-07-18\",\"system_fingerprint\":\"fp_bench\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\ndata: {\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o-mini-2024-07-18\",\"system_fingerprint\":\"fp_bench\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" tok0\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n";
const CHAT: &str = "data: {\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o-mini-2024-07-18\",\"system_fingerprint\":\"fp_bench\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" tok12\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n";

const ANTHROPIC_FIRST: &str = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5-20250929\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":25,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,\"output_tokens\":1}}}\n\nevent: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n";
const ANTHROPIC: &str = "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\" there, how are\"}}\n\n";
const ANTHROPIC_END: &str = "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":15}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";

const GEMINI_FIRST: &str = "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"Hi\"}],\"role\": \"model\"},\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 9,\"candidatesTokenCount\": 1,\"totalTokenCount\": 10,\"promptTokensDetails\": [{\"modality\": \"TEXT\",\"tokenCount\": 9}]},\"modelVersion\": \"gemini-2.5-flash\",\"responseId\": \"gtUaaI2wL8Wd1dkP_YnAkA8\"}\r\n\r\n";
const GEMINI: &str = "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \" there, how are\"}],\"role\": \"model\"},\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 9,\"candidatesTokenCount\": 4,\"totalTokenCount\": 13,\"promptTokensDetails\": [{\"modality\": \"TEXT\",\"tokenCount\": 9}]},\"modelVersion\": \"gemini-2.5-flash\",\"responseId\": \"gtUaaI2wL8Wd1dkP_YnAkA8\"}\r\n\r\n";

const RESPONSES_FIRST: &str = "event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"resp_1\",\"object\":\"response\",\"status\":\"in_progress\",\"model\":\"gpt-4.1-2025-04-14\",\"output\":[],\"usage\":null}}\n\nevent: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"sequence_number\":1,\"item_id\":\"msg_1\",\"output_index\":0,\"content_index\":0,\"delta\":\"Hi\",\"logprobs\":[]}\n\n";
const RESPONSES: &str = "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"sequence_number\":2,\"item_id\":\"msg_67ccd2bf17f0819081ff3bb2cf6508e6\",\"output_index\":0,\"content_index\":0,\"delta\":\" there\",\"logprobs\":[]}\n\n";

const JSON: &str = r#"{"id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG","object":"chat.completion","created":1741569952,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! How can I assist you today? If you have any questions about the weather, just ask.","refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":19,"completion_tokens":10,"total_tokens":29,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"service_tier":"default","system_fingerprint":"fp_50cad350e4"}"#;

/// The corpus's pretty-printed Chat Completions body (2-space indentation, 997 bytes).
const JSON_PRETTY: &str = include_str!("../../tests/usage_corpus/openai_chat_json.body");
/// Its answer, replaced by a long one in `json_long`.
const LONG_AT: &str = r#"The word \"usage\" here is text: {\"usage\": {\"prompt_tokens\": 5}}"#;

fn stream(first: &str, chunk: &str, end: &str, n: usize) {
    let mut r = UsageReader::new(Format::Auto, Body::EventStream);
    assert!(r.feed(first.as_bytes()));
    let chunk = chunk.as_bytes();
    for _ in 0..n {
        black_box(r.feed(black_box(chunk)));
    }
    r.feed(end.as_bytes());
    black_box(r.finish(true));
}

/// `n` rounds of reading `bodies` in turn with one reader, reset for each as the glue's
/// per-worker pool resets it.
#[inline(never)]
fn bodies(bodies: &[&[u8]], n: usize) {
    let mut r = UsageReader::new(Format::Auto, Body::Json);
    for _ in 0..n {
        for body in bodies {
            r.reset(Format::Auto, Body::Json);
            black_box(r.feed(black_box(body)));
            black_box(r.finish(true));
        }
    }
}

/// 64 bodies of `body`'s shape with the values a provider changes from answer to answer: the
/// id, the time, the answer (of other lengths) and the counts (`body` is the corpus's Chat
/// body, pretty-printed or compact).
fn varied(body: &str) -> Vec<Vec<u8>> {
    let sp = if body.contains("\"id\": ") { " " } else { "" };
    let answer = if body.contains(LONG_AT) {
        LONG_AT
    } else {
        "Hello! How can I assist you today? If you have any questions about the weather, just ask."
    };
    let answers = [
        "Sure.",
        "The capital of France is Paris.",
        "Here is a list:\\n1. one\\n2. two\\n3. \\\"three\\\"",
        "I can't help with that, but here is what I can do instead: explain the idea in general terms.",
    ];
    (0..64u64)
        .map(|k| {
            let (p, c) = (19 + k % 7, 10 + 3 * k);
            body.replace(
                "B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
                &format!("B9MHD{:024X}", k * 0x9E37_79B9_7F4A_7C15),
            )
            .replace("1741569952", &(1_741_569_952 + 7 * k).to_string())
            .replace(answer, answers[k as usize % answers.len()])
            .replace(
                &format!("\"prompt_tokens\":{sp}19"),
                &format!("\"prompt_tokens\":{sp}{p}"),
            )
            .replace(
                &format!("\"completion_tokens\":{sp}10"),
                &format!("\"completion_tokens\":{sp}{c}"),
            )
            .replace(
                &format!("\"total_tokens\":{sp}29"),
                &format!("\"total_tokens\":{sp}{}", p + c),
            )
            .into_bytes()
        })
        .collect()
}

/// An embeddings response of 256 numbers: more values than a JSON body's shape holds.
fn embeddings_body() -> String {
    let v: Vec<String> = (0..256).map(|k| format!("-0.{k:04}")).collect();
    format!(
        "{{\"object\":\"list\",\"data\":[{{\"object\":\"embedding\",\"index\":0,\"embedding\":[{}]}}],\"model\":\"text-embedding-3-small\",\"usage\":{{\"prompt_tokens\":8,\"total_tokens\":8}}}}",
        v.join(",")
    )
}

/// `n` streams of no further chunk: a new reader, the first events, the end (out of line, so
/// that `stream`'s loop stays as it is measured per chunk).
#[inline(never)]
fn starts(first: &str, end: &str, n: usize) {
    for _ in 0..n {
        let mut r = UsageReader::new(Format::Auto, Body::EventStream);
        assert!(r.feed(black_box(first.as_bytes())));
        r.feed(black_box(end.as_bytes()));
        black_box(r.finish(true));
    }
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("sizes") {
        let json = UsageReader::new(Format::Auto, Body::Json);
        let sse = UsageReader::new(Format::Auto, Body::EventStream);
        println!(
            "json reader {} bytes, event-stream reader {} bytes",
            json.state_bytes(),
            sse.state_bytes()
        );
        return;
    }
    let mut args = std::env::args().skip(1);
    let case = args.next().unwrap_or_else(|| "openai".into());
    let n: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(1000);
    match case.as_str() {
        "openai" => stream(OPENAI_FIRST, OPENAI, OPENAI_END, n),
        "chat" => stream(CHAT_FIRST, CHAT, OPENAI_END, n),
        "anthropic" => stream(ANTHROPIC_FIRST, ANTHROPIC, ANTHROPIC_END, n),
        "gemini" => stream(GEMINI_FIRST, GEMINI, "", n),
        "responses" => stream(RESPONSES_FIRST, RESPONSES, "", n),
        // Gemini chunks as the nginx benchmark sends them: each with its own text and a
        // running total one higher (the tail's digits change, sometimes its length).
        "gemini_growing" => {
            let chunks: Vec<String> = (0..n)
                .map(|i| GEMINI.replace(" there, how are", &format!(" tok{i}")).replace(
                    "\"candidatesTokenCount\": 4,\"totalTokenCount\": 13",
                    &format!("\"candidatesTokenCount\": {},\"totalTokenCount\": {}", i + 1, i + 10),
                ))
                .collect();
            let mut r = UsageReader::new(Format::Auto, Body::EventStream);
            assert!(r.feed(GEMINI_FIRST.as_bytes()));
            for c in &chunks {
                black_box(r.feed(black_box(c.as_bytes())));
            }
            black_box(r.finish(true));
        }
        // A whole stream's fixed part: a new reader, the unsettled first events and the end
        // (each stream case above with no further chunk), N times.
        "chat_start" => starts(CHAT_FIRST, OPENAI_END, n),
        "anthropic_start" => starts(ANTHROPIC_FIRST, ANTHROPIC_END, n),
        "gemini_start" => starts(GEMINI_FIRST, "", n),
        "responses_start" => starts(RESPONSES_FIRST, "", n),
        "json" => bodies(&[JSON.as_bytes()], n),
        "json_pretty" => bodies(&[JSON_PRETTY.as_bytes()], n),
        "json_varied" | "json_pretty_varied" => {
            let all = varied(if case == "json_varied" { JSON } else { JSON_PRETTY });
            // 64 bodies, each another (the replacements took).
            let distinct: std::collections::HashSet<&Vec<u8>> = all.iter().collect();
            assert_eq!(distinct.len(), all.len());
            let refs: Vec<&[u8]> = all.iter().map(Vec::as_slice).collect();
            bodies(&refs, n / refs.len())
        }
        "json_new" => {
            // A new reader each time: no shape noted before.
            for _ in 0..n {
                let mut r = UsageReader::new(Format::Auto, Body::Json);
                black_box(r.feed(black_box(JSON_PRETTY.as_bytes())));
                black_box(r.finish(true));
            }
        }
        "json_two_shapes" => {
            // The compact and the pretty body in turn (a reader keeps two shapes).
            bodies(&[JSON.as_bytes(), JSON_PRETTY.as_bytes()], n / 2)
        }
        "json_four_shapes" => {
            // Four shapes in turn, more than a reader keeps: mostly walked, noted now and then.
            let pretty_anthropic = JSON_PRETTY.replace("\"object\"", "\"kind\"");
            let compact_anthropic = JSON.replace("\"object\"", "\"kind\"");
            let all = [
                JSON.as_bytes(),
                JSON_PRETTY.as_bytes(),
                compact_anthropic.as_bytes(),
                pretty_anthropic.as_bytes(),
            ];
            bodies(&all, n / 4)
        }
        "json_after_unnotable" => {
            // A pooled reader whose first two bodies have more values than a shape holds
            // (embeddings), then the pretty body each time.
            let embeddings = embeddings_body();
            let mut r = UsageReader::new(Format::Auto, Body::Json);
            for _ in 0..2 {
                r.reset(Format::Auto, Body::Json);
                black_box(r.feed(black_box(embeddings.as_bytes())));
                black_box(r.finish(true));
            }
            for _ in 0..n {
                r.reset(Format::Auto, Body::Json);
                black_box(r.feed(black_box(JSON_PRETTY.as_bytes())));
                black_box(r.finish(true));
            }
        }
        "json_embeddings_alt" => {
            // An embeddings body (more values than a shape holds) and the pretty body in turn:
            // per pair.
            let embeddings = embeddings_body();
            bodies(&[embeddings.as_bytes(), JSON_PRETTY.as_bytes()], n)
        }
        "json_late_three" => {
            // Three shapes in turn that differ only at their end (more than kept): each body
            // costs failed replays of nearly its whole length besides the walk.
            let null_fp = JSON_PRETTY.replace("\"fp_50cad350e4\"", "null");
            let newline = format!("{JSON_PRETTY}\n");
            let all = [JSON_PRETTY.as_bytes(), null_fp.as_bytes(), newline.as_bytes()];
            bodies(&all, n / 3)
        }
        "json_long" => {
            // The pretty body with an 8,000-byte answer (a line break escaped every 80 bytes).
            let line = format!("{}\\n", &"All work and no play. ".repeat(4)[..78]);
            let body = JSON_PRETTY.replacen(LONG_AT, &line.repeat(100), 1);
            assert!(body.len() > 8_000);
            bodies(&[body.as_bytes()], n);
        }
        "json_long_split" => {
            // `json_long` as nginx hands a body over in its 4 KiB proxy buffers (the resumable
            // scanner's way).
            let line = format!("{}\\n", &"All work and no play. ".repeat(4)[..78]);
            let body = JSON_PRETTY.replacen(LONG_AT, &line.repeat(100), 1);
            let mut r = UsageReader::new(Format::Auto, Body::Json);
            for _ in 0..n {
                r.reset(Format::Auto, Body::Json);
                for piece in body.as_bytes().chunks(4096) {
                    black_box(r.feed(black_box(piece)));
                }
                black_box(r.finish(true));
            }
        }
        "json_logprobs_split" => {
            // A Chat body with `logprobs` (20 top alternatives a token, 2,000 tokens: ~2 MB of
            // short strings, numbers and brackets) in 4 KiB buffers.
            let alt = |t: usize| format!("{{\"token\":\"t{t}\",\"logprob\":-0.{t},\"bytes\":[116,{t}]}}");
            let tok = |i: usize| {
                let top: Vec<String> = (0..20).map(alt).collect();
                format!("{{\"token\":\"w{i}\",\"logprob\":-0.5,\"bytes\":[119],\"top_logprobs\":[{}]}}", top.join(","))
            };
            let content: Vec<String> = (0..2000).map(tok).collect();
            let body = format!("{{\"id\":\"x\",\"model\":\"gpt-4o\",\"choices\":[{{\"index\":0,\"message\":{{\"content\":\"hi\"}},\"logprobs\":{{\"content\":[{}]}}}}],\"usage\":{{\"prompt_tokens\":3,\"completion_tokens\":2000}}}}", content.join(","));
            for _ in 0..n {
                let mut r = UsageReader::new(Format::Auto, Body::Json);
                for piece in body.as_bytes().chunks(4096) {
                    black_box(r.feed(black_box(piece)));
                }
                black_box(r.finish(true));
            }
        }
        other => panic!(
            "unknown case {other}: openai, chat, anthropic, gemini, gemini_growing, responses, json, json_pretty, json_new, json_two_shapes, json_four_shapes, json_after_unnotable, json_embeddings_alt, json_late_three, json_long, json_long_split, json_logprobs_split or <stream>_start"
        ),
    }
}
