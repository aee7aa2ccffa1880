//! The response-usage corpus (`tests/usage_corpus/` at the workspace root): bodies in the
//! providers' wire formats and their expected reading, shared with the Python integration tests.

use std::path::PathBuf;

use gateway_metrics_core::usage::{Body, Format, Outcome, Tokens, UsageReader};

/// One body and what reading it must give.
#[derive(Clone, Debug)]
pub struct Case {
    pub file: String,
    pub body: Vec<u8>,
    pub format: Format,
    pub kind: Body,
    pub complete: bool,
    pub outcome: Outcome,
    pub model: Option<Vec<u8>>,
    /// Length of the shortest prefix whose feeding reports the first content.
    pub first_content_at: Option<usize>,
}

pub fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/usage_corpus")
}

/// A JSON value of cases.json (flat objects of strings, integers, booleans and null).
#[derive(Clone, Debug, PartialEq)]
enum V {
    S(String),
    N(u64),
    B(bool),
    Null,
}

/// Parses one flat JSON object (cases.json has one per line).
fn object(line: &str) -> Vec<(String, V)> {
    let b = line.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    let ws = |i: &mut usize| {
        while *i < b.len() && matches!(b[*i], b' ' | b'\t' | b'\r' | b'\n') {
            *i += 1
        }
    };
    let string = |i: &mut usize| -> String {
        assert_eq!(b[*i], b'"');
        *i += 1;
        let mut s = Vec::new();
        loop {
            match b[*i] {
                b'"' => break,
                b'\\' => {
                    *i += 1;
                    match b[*i] {
                        b'n' => s.push(b'\n'),
                        b't' => s.push(b'\t'),
                        b'r' => s.push(b'\r'),
                        b'u' => {
                            let cp = u32::from_str_radix(&line[*i + 1..*i + 5], 16).unwrap();
                            let mut buf = [0u8; 4];
                            s.extend_from_slice(
                                char::from_u32(cp).unwrap().encode_utf8(&mut buf).as_bytes(),
                            );
                            *i += 4;
                        }
                        c => s.push(c),
                    }
                }
                c => s.push(c),
            }
            *i += 1;
        }
        *i += 1;
        String::from_utf8(s).unwrap()
    };
    ws(&mut i);
    assert_eq!(b[i], b'{');
    i += 1;
    loop {
        ws(&mut i);
        if b[i] == b'}' {
            break;
        }
        let k = string(&mut i);
        ws(&mut i);
        assert_eq!(b[i], b':');
        i += 1;
        ws(&mut i);
        let v = match b[i] {
            b'"' => V::S(string(&mut i)),
            b't' => {
                i += 4;
                V::B(true)
            }
            b'f' => {
                i += 5;
                V::B(false)
            }
            b'n' => {
                i += 4;
                V::Null
            }
            _ => {
                let s = i;
                while b[i].is_ascii_digit() {
                    i += 1;
                }
                V::N(line[s..i].parse().unwrap())
            }
        };
        out.push((k, v));
        ws(&mut i);
        if b[i] == b',' {
            i += 1;
        }
    }
    out
}

pub fn load() -> Vec<Case> {
    let index =
        std::fs::read_to_string(dir().join("cases.json")).expect("tests/usage_corpus/cases.json");
    let mut cases = Vec::new();
    for line in index.lines().filter(|l| l.trim_start().starts_with('{')) {
        let o = object(line.trim_end_matches(','));
        let get = |k: &str| {
            o.iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
                .unwrap_or(V::Null)
        };
        let s = |k: &str| match get(k) {
            V::S(s) => Some(s),
            _ => None,
        };
        let n = |k: &str| match get(k) {
            V::N(n) => Some(n),
            _ => None,
        };
        let file = s("file").unwrap();
        let tokens = n("input").map(|input| Tokens {
            input,
            output: n("output").unwrap(),
            cached_input: n("cached_input").unwrap(),
            cache_write: n("cache_write").unwrap(),
            reasoning: n("reasoning").unwrap(),
        });
        let outcome = match s("outcome").unwrap().as_str() {
            "usage" => Outcome::Usage(tokens.unwrap()),
            "partial" => Outcome::Partial(tokens.unwrap()),
            "absent" => Outcome::Absent,
            "aborted" => Outcome::Aborted,
            "malformed" => Outcome::Malformed,
            o => panic!("{file}: outcome {o}"),
        };
        cases.push(Case {
            body: std::fs::read(dir().join(&file)).unwrap(),
            format: match s("format").unwrap().as_str() {
                "auto" => Format::Auto,
                "openai" => Format::OpenAi,
                "anthropic" => Format::Anthropic,
                "gemini" => Format::Gemini,
                f => panic!("{file}: format {f}"),
            },
            kind: if s("content_type").unwrap() == "text/event-stream" {
                Body::EventStream
            } else {
                Body::Json
            },
            complete: get("complete") == V::B(true),
            outcome,
            model: s("model").map(String::into_bytes),
            first_content_at: n("first_content_at").map(|n| n as usize),
            file,
        });
    }
    assert!(cases.len() >= 40, "corpus has {} cases", cases.len());
    cases
}

/// What feeding `body` in the pieces ending at `cuts` (sorted, last = body length) gives: the
/// outcome, the model, and the end of the piece that reported the first content.
pub fn run(
    format: Format,
    kind: Body,
    body: &[u8],
    cuts: &[usize],
    complete: bool,
) -> (Outcome, Option<Vec<u8>>, Option<usize>) {
    let mut r = UsageReader::new(format, kind);
    let mut first = None;
    let mut start = 0;
    let bound = r.state_bytes();
    for &end in cuts {
        if r.feed(&body[start..end]) {
            assert!(first.is_none(), "first content reported twice");
            first = Some(end);
        }
        assert_eq!(r.state_bytes(), bound, "state grew");
        start = end;
    }
    let out = r.finish(complete);
    (out, r.model().map(<[u8]>::to_vec), first)
}

/// Where the piece reporting the first content must end for these cuts.
pub fn expected_first(case: &Case, cuts: &[usize]) -> Option<usize> {
    case.first_content_at
        .map(|at| *cuts.iter().find(|&&c| c >= at).unwrap())
}
