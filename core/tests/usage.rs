//! The response-usage reader against the corpus (`tests/usage_corpus/`), whole and split into
//! buffers every way, plus the bodies too large for the corpus (a 1 MB content delta, a 5 MB
//! Responses `response.completed`). `PROPTEST_CASES` sets the number of random splits.

mod common;

use common::corpus::{expected_first, load, run, Case};
use gateway_metrics_core::usage::{Body, Format, Outcome, Tokens, UsageReader, CARRY_CAP};
use proptest::prelude::*;

fn check(case: &Case, cuts: &[usize]) {
    let (out, model, first) = run(case.format, case.kind, &case.body, cuts, case.complete);
    assert_eq!(out, case.outcome, "{}: outcome", case.file);
    assert_eq!(model, case.model, "{}: model", case.file);
    assert_eq!(
        first,
        expected_first(case, cuts),
        "{}: first content",
        case.file
    );
}

#[test]
fn corpus_whole() {
    for case in load() {
        check(&case, &[case.body.len()]);
    }
}

#[test]
fn corpus_byte_by_byte() {
    for case in load() {
        let cuts: Vec<usize> = (1..=case.body.len()).collect();
        check(&case, &cuts);
    }
}

#[test]
fn corpus_in_fixed_sizes() {
    for case in load() {
        for size in [2, 3, 7, 16, 64, 100, 333, 1000, 4095, 4096, 4097] {
            let mut cuts: Vec<usize> = (size..case.body.len()).step_by(size).collect();
            cuts.push(case.body.len());
            check(&case, &cuts);
        }
    }
}

proptest! {
    #[test]
    fn corpus_any_split(seed in any::<u64>(), n in 1usize..40) {
        let cases = load();
        let case = &cases[(seed % cases.len() as u64) as usize];
        let len = case.body.len();
        let mut rng = seed;
        let mut cuts: Vec<usize> = (0..n).map(|_| {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (rng >> 33) as usize % (len + 1)
        }).collect();
        cuts.push(len);
        cuts.sort_unstable();
        let (out, model, first) = run(case.format, case.kind, &case.body, &cuts, case.complete);
        prop_assert_eq!(out, case.outcome, "{}", case.file);
        prop_assert_eq!(model, case.model.clone(), "{}", case.file);
        prop_assert_eq!(first, expected_first(case, &cuts), "{}", case.file);
    }
}

/// Feeds a body in `size` pieces.
fn pieces(body: &[u8], size: usize) -> Vec<usize> {
    let mut cuts: Vec<usize> = (size..body.len()).step_by(size).collect();
    cuts.push(body.len());
    cuts
}

fn chat_chunk(content: &str) -> String {
    format!(
        "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o-mini\",\"system_fingerprint\":\"fp_x\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{content}\"}},\"logprobs\":null,\"finish_reason\":null}}],\"usage\":null}}\n\n"
    )
}

#[test]
fn one_megabyte_delta() {
    // Text full of escapes and quoted usage JSON, as it is on the wire.
    let unit = r#"The API said \"usage\": {\"prompt_tokens\": 999999} and\n\t\\ more. "#;
    let text = unit.repeat(1024 * 1024 / unit.len() + 1);
    let mut body = chat_chunk("");
    body += &chat_chunk(&text);
    body += &chat_chunk(" done");
    body += "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":262144,\"total_tokens\":262151}}\n\ndata: [DONE]\n\n";
    let body = body.as_bytes();
    let first_at = chat_chunk("").len() + chat_chunk(&text).len();
    let want = Outcome::Usage(Tokens {
        input: 7,
        output: 262144,
        ..Tokens::default()
    });
    for size in [body.len(), 1 << 20, 16384, 8192, 4096, 1000, 17] {
        let cuts = pieces(body, size);
        let (out, model, first) = run(Format::Auto, Body::EventStream, body, &cuts, true);
        assert_eq!(out, want, "pieces of {size}");
        assert_eq!(model.as_deref(), Some(&b"gpt-4o-mini"[..]));
        assert_eq!(first, Some(*cuts.iter().find(|&&c| c >= first_at).unwrap()));
    }
}

#[test]
fn five_megabyte_responses_completed() {
    let text = "Lorem \\\"ipsum\\\" \\\"usage\\\": {\\\"input_tokens\\\": 1} dolor\\n"
        .repeat(5 * 1024 * 1024 / 50);
    let mut body = String::new();
    body += "event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"resp_1\",\"object\":\"response\",\"status\":\"in_progress\",\"model\":\"gpt-4.1-2025-04-14\",\"output\":[],\"usage\":null}}\n\n";
    body += "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"sequence_number\":1,\"item_id\":\"msg_1\",\"output_index\":0,\"content_index\":0,\"delta\":\"Lorem\"}\n\n";
    let first_at = body.len();
    body += &format!(
        "event: response.completed\ndata: {{\"type\":\"response.completed\",\"sequence_number\":2,\"response\":{{\"id\":\"resp_1\",\"object\":\"response\",\"status\":\"completed\",\"model\":\"gpt-4.1-2025-04-14\",\"output\":[{{\"type\":\"message\",\"id\":\"msg_1\",\"status\":\"completed\",\"role\":\"assistant\",\"content\":[{{\"type\":\"output_text\",\"annotations\":[],\"logprobs\":[],\"text\":\"{text}\"}}]}}],\"tools\":[{{\"type\":\"function\",\"parameters\":{{\"properties\":{{\"usage\":{{\"type\":\"object\"}}}}}}}}],\"usage\":{{\"input_tokens\":1200,\"input_tokens_details\":{{\"cached_tokens\":1024}},\"output_tokens\":1310720,\"output_tokens_details\":{{\"reasoning_tokens\":0}},\"total_tokens\":1311920}},\"metadata\":{{}}}}}}\n\n"
    );
    let body = body.as_bytes();
    assert!(body.len() > 5 * 1024 * 1024);
    let want = Outcome::Usage(Tokens {
        input: 1200,
        output: 1310720,
        cached_input: 1024,
        ..Tokens::default()
    });
    for size in [body.len(), 65536, 4096, 977] {
        let cuts = pieces(body, size);
        let (out, model, first) = run(Format::Auto, Body::EventStream, body, &cuts, true);
        assert_eq!(out, want, "pieces of {size}");
        assert_eq!(model.as_deref(), Some(&b"gpt-4.1-2025-04-14"[..]));
        assert_eq!(first, Some(*cuts.iter().find(|&&c| c >= first_at).unwrap()));
        // Cut inside the big event: usage had not arrived.
        let cut = &body[..body.len() - 200];
        let (out, _, _) = run(
            Format::Auto,
            Body::EventStream,
            cut,
            &pieces(cut, size),
            false,
        );
        assert_eq!(out, Outcome::Aborted);
    }
}

#[test]
fn big_json_body_with_usage_first_and_last() {
    let text = "x\\\"y ".repeat(600_000);
    let usage = r#""usage":{"input_tokens":10,"cache_read_input_tokens":20,"cache_creation_input_tokens":30,"output_tokens":40}"#;
    let content = format!(r#""content":[{{"type":"text","text":"{text}"}}]"#);
    let want = Outcome::Usage(Tokens {
        input: 60,
        output: 40,
        cached_input: 20,
        cache_write: 30,
        reasoning: 0,
    });
    for body in [
        format!(r#"{{{usage},"id":"msg_1","type":"message","model":"claude-x",{content}}}"#),
        format!(r#"{{"id":"msg_1","type":"message","model":"claude-x",{content},{usage}}}"#),
    ] {
        for size in [body.len(), 8192, 1000] {
            let (out, model, first) = run(
                Format::Auto,
                Body::Json,
                body.as_bytes(),
                &pieces(body.as_bytes(), size),
                true,
            );
            assert_eq!(out, want);
            assert_eq!(model.as_deref(), Some(&b"claude-x"[..]));
            assert_eq!(first, None);
        }
    }
}

#[test]
fn state_is_bounded_and_allocated_once() {
    let r = UsageReader::new(Format::Auto, Body::EventStream);
    assert!(
        r.state_bytes() <= CARRY_CAP + 2048,
        "{} bytes",
        r.state_bytes()
    );
    // An endless line never grows it (run() asserts after every buffer).
    let line = vec![b'a'; 100_000];
    let mut body = b"data: ".to_vec();
    body.extend_from_slice(&line);
    let (out, _, _) = run(
        Format::Auto,
        Body::EventStream,
        &body,
        &pieces(&body, 777),
        true,
    );
    assert_eq!(out, Outcome::Malformed);
}

#[test]
fn first_content_in_the_last_event_is_reported_by_finish() {
    let body = b"data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\ndata: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1}}";
    for size in [body.len(), 7, 1] {
        let mut r = UsageReader::new(Format::Auto, Body::EventStream);
        for piece in body.chunks(size) {
            assert!(!r.feed(piece));
        }
        assert!(!r.first_content_at_finish());
        let out = r.finish(true);
        assert_eq!(
            out,
            Outcome::Usage(Tokens {
                input: 3,
                output: 1,
                ..Tokens::default()
            })
        );
        assert!(r.first_content_at_finish(), "pieces of {size}");
    }
    // Content seen earlier is not reported again.
    let mut r = UsageReader::new(Format::Auto, Body::EventStream);
    assert!(r.feed(&chat_chunk("a").into_bytes()));
    r.feed(chat_chunk("b").trim_end().as_bytes());
    r.finish(true);
    assert!(!r.first_content_at_finish());
}
