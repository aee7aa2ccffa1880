//! Exemplars: the trace of one request attached to the histogram bucket or counter it landed in
//! (OpenMetrics). A W3C `traceparent` gives the trace and span ids ([`TraceContext::parse`]); the
//! latest exemplar of each bucket lives in shared memory in a slot of [`SLOT_WORDS`] words
//! ([`write`], [`read`]).
//!
//! A slot is written by any worker process at any time, without a lock: a writer claims its
//! first word with a compare-and-swap (a second writer meanwhile leaves its own exemplar out),
//! writes the data, then publishes a check over the data in the first word. A reader takes an
//! exemplar only when the check matches the words it read, so it never pairs one request's
//! trace id with another request's value. A worker killed mid-write leaves its claim, which the
//! next writer takes over after a second: nothing stays locked.

use std::sync::atomic::{AtomicU64, Ordering};

/// Words per exemplar slot: the check, trace id (2), span id, value, timestamp.
pub const SLOT_WORDS: usize = 6;

/// The most slots one stored series can have (a series has at most 255 value words): histograms
/// with more than `MAX_SLOTS - 1` bounds keep no exemplars.
pub const MAX_SLOTS: usize = 255 / SLOT_WORDS;

/// Trace and span ids of a W3C trace context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
}

/// One exemplar as stored and read back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Exemplar {
    pub trace: TraceContext,
    /// The observed value (a duration, a token count, a cost).
    pub value: f64,
    /// When it was observed, milliseconds since the Unix epoch.
    pub ts_ms: u64,
}

fn hex_digit(c: u8) -> Option<u8> {
    // The W3C format is lowercase hex only.
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

fn hex_into(text: &[u8], out: &mut [u8]) -> Option<()> {
    if text.len() != out.len() * 2 {
        return None;
    }
    for (o, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        *o = hex_digit(pair[0])? << 4 | hex_digit(pair[1])?;
    }
    Some(())
}

impl TraceContext {
    /// Parses a W3C `traceparent` value, `VV-TTTT…(32)-SSSS…(16)-FF`. Version `00` must be
    /// exactly that; a later version may append `-` and more fields (read as version 00);
    /// version `ff`, upper-case hex, all-zero ids or any other shape give `None`. Spaces and
    /// tabs around the value (header whitespace) are ignored.
    pub fn parse(value: &[u8]) -> Option<TraceContext> {
        let v = value.trim_ascii();
        if v.len() < 55 {
            return None;
        }
        let mut version = [0u8; 1];
        hex_into(&v[0..2], &mut version)?;
        match version[0] {
            0xff => return None,
            0 if v.len() != 55 => return None,
            _ if v.len() > 55 && v[55] != b'-' => return None,
            _ => {}
        }
        if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
            return None;
        }
        let mut ctx = TraceContext {
            trace_id: [0; 16],
            span_id: [0; 8],
        };
        hex_into(&v[3..35], &mut ctx.trace_id)?;
        hex_into(&v[36..52], &mut ctx.span_id)?;
        let mut flags = [0u8; 1];
        hex_into(&v[53..55], &mut flags)?;
        if ctx.trace_id == [0; 16] || ctx.span_id == [0; 8] {
            return None;
        }
        Some(ctx)
    }
}

/// The check word over an exemplar's data words: always odd (a claim is even, a slot never
/// written is 0).
fn check(data: &[u64; 5]) -> u64 {
    let mut h: u64 = 0x6578_656d_706c_6172; // "exemplar"
    for &w in data {
        h = (h ^ w).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(31);
    }
    h ^= h >> 29;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    (h ^ (h >> 32)) | 1
}

fn words_of(e: &Exemplar) -> [u64; 5] {
    let t = &e.trace.trace_id;
    [
        u64::from_be_bytes(t[..8].try_into().unwrap_or_default()),
        u64::from_be_bytes(t[8..].try_into().unwrap_or_default()),
        u64::from_be_bytes(e.trace.span_id),
        e.value.to_bits(),
        e.ts_ms,
    ]
}

/// How long a writer may hold a slot before another one takes it over (a worker killed while
/// writing must not leave its slot claimed forever).
const CLAIM_MS: u64 = 1000;

/// Writes `e` into the slot (the first [`SLOT_WORDS`] words of `slot`), unless another process
/// is writing it right now (then that one's exemplar, as recent, stays). No lock: the first
/// word is claimed with a compare-and-swap (holding `ts << 1`, even, while the check words are
/// odd), then the data is written and the check published. Returns whether it was written.
#[inline]
pub fn write(slot: &[AtomicU64], e: &Exemplar) -> bool {
    let Some(slot) = slot.get(..SLOT_WORDS) else {
        return false;
    };
    let cur = slot[0].load(Ordering::Relaxed);
    let claimed_at = cur >> 1;
    if cur != 0 && cur & 1 == 0 && claimed_at.saturating_add(CLAIM_MS) > e.ts_ms {
        return false;
    }
    let claim = (e.ts_ms << 1).max(2);
    if slot[0]
        .compare_exchange(cur, claim, Ordering::Relaxed, Ordering::Relaxed)
        .is_err()
    {
        return false;
    }
    // The claim is visible before any data word changes.
    std::sync::atomic::fence(Ordering::Release);
    let data = words_of(e);
    for (w, d) in slot[1..].iter().zip(data) {
        w.store(d, Ordering::Relaxed);
    }
    // Only if nobody took the slot over meanwhile; if someone did, the check still tells a
    // reader whether the words it finds belong together.
    slot[0]
        .compare_exchange(claim, check(&data), Ordering::Release, Ordering::Relaxed)
        .is_ok()
}

/// Reads the slot's exemplar: `None` when it has none, or when what it holds is not one
/// exemplar's words (being written, or written by two processes at once).
pub fn read(slot: &[AtomicU64]) -> Option<Exemplar> {
    let slot = slot.get(..SLOT_WORDS)?;
    // A slot being written now is complete a few instructions later: look again a few times.
    for _ in 0..4 {
        let c = slot[0].load(Ordering::Acquire);
        if c == 0 {
            return None;
        }
        if c & 1 == 0 {
            // Claimed by a writer: its words are changing.
            std::hint::spin_loop();
            continue;
        }
        let mut data = [0u64; 5];
        for (d, w) in data.iter_mut().zip(&slot[1..]) {
            *d = w.load(Ordering::Relaxed);
        }
        std::sync::atomic::fence(Ordering::Acquire);
        if slot[0].load(Ordering::Relaxed) == c && check(&data) == c && data[4] != 0 {
            let mut trace_id = [0u8; 16];
            trace_id[..8].copy_from_slice(&data[0].to_be_bytes());
            trace_id[8..].copy_from_slice(&data[1].to_be_bytes());
            return Some(Exemplar {
                trace: TraceContext {
                    trace_id,
                    span_id: data[2].to_be_bytes(),
                },
                value: f64::from_bits(data[3]),
                ts_ms: data[4],
            });
        }
    }
    None
}

/// Words of an exemplar packed into a renderer's sums ([`pack`], [`unpack`]): time (0: none),
/// trace id (2), span id, value.
pub const PACKED_WORDS: usize = 5;

/// An exemplar as [`PACKED_WORDS`] plain words.
pub fn pack(e: &Exemplar) -> [u64; PACKED_WORDS] {
    let [hi, lo, span, value, ts] = words_of(e);
    [ts, hi, lo, span, value]
}

/// The exemplar of packed words (`None`: time 0, no exemplar).
pub fn unpack(w: &[u64]) -> Option<Exemplar> {
    let &[ts, hi, lo, span, value] = w.get(..PACKED_WORDS)? else {
        return None;
    };
    if ts == 0 {
        return None;
    }
    let mut trace_id = [0u8; 16];
    trace_id[..8].copy_from_slice(&hi.to_be_bytes());
    trace_id[8..].copy_from_slice(&lo.to_be_bytes());
    Some(Exemplar {
        trace: TraceContext {
            trace_id,
            span_id: span.to_be_bytes(),
        },
        value: f64::from_bits(value),
        ts_ms: ts,
    })
}

/// Keeps in the packed words `into` the later of what they hold and `e`.
pub fn merge_latest(into: &mut [u64], e: &Exemplar) {
    if let Some(w) = into.get_mut(..PACKED_WORDS) {
        if e.ts_ms > w[0] {
            w.copy_from_slice(&pack(e));
        }
    }
}

/// The latest of two exemplars (by timestamp).
pub fn latest(a: Option<Exemplar>, b: Option<Exemplar>) -> Option<Exemplar> {
    match (a, b) {
        (Some(x), Some(y)) => Some(if y.ts_ms > x.ts_ms { y } else { x }),
        (x, None) => x,
        (None, y) => y,
    }
}

fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(HEX[usize::from(b >> 4)]);
        out.push(HEX[usize::from(b & 15)]);
    }
}

/// Appends an OpenMetrics exemplar, ` # {trace_id="…",span_id="…"} VALUE TIMESTAMP`, for a
/// sample line (before its newline). `value` is what the exemplar shows (the observation for a
/// bucket, the increment for a counter). Its label set is 63 characters, within the
/// specification's 128.
pub fn push(out: &mut Vec<u8>, e: &Exemplar, value: f64) {
    out.extend_from_slice(b" # {trace_id=\"");
    push_hex(out, &e.trace.trace_id);
    out.extend_from_slice(b"\",span_id=\"");
    push_hex(out, &e.trace.span_id);
    out.extend_from_slice(b"\"} ");
    crate::expo::push_f64(out, value);
    out.push(b' ');
    crate::expo::push_millis(out, e.ts_ms);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const TP: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_the_w3c_example() {
        let c = TraceContext::parse(TP).unwrap();
        assert_eq!(c.trace_id[0], 0x4b);
        assert_eq!(c.trace_id[15], 0x36);
        assert_eq!(c.span_id, [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]);
        assert_eq!(
            TraceContext::parse(b"  00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00\t"),
            Some(TraceContext { ..c })
        );
    }

    #[test]
    fn rejects_what_the_spec_rejects() {
        let bad: &[&[u8]] = &[
            b"",
            b"00",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", // upper case
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01", // zero trace
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", // zero span
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", // version ff
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", // 00 + more
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            b"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e473\"-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736\n00f067aa0ba902b7-01",
        ];
        for b in bad {
            assert_eq!(
                TraceContext::parse(b),
                None,
                "{}",
                String::from_utf8_lossy(b)
            );
        }
        // A later version may carry more fields.
        assert!(
            TraceContext::parse(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-zz")
                .is_some()
        );
        assert!(
            TraceContext::parse(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
                .is_some()
        );
    }

    #[test]
    fn parse_never_panics() {
        let mut seed = 7u64;
        for len in 0..120 {
            for _ in 0..200 {
                let v: Vec<u8> = (0..len)
                    .map(|_| {
                        seed = seed
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        b"0123456789abcdef-\" \nF"[(seed >> 59) as usize % 21]
                    })
                    .collect();
                let _ = TraceContext::parse(&v);
            }
        }
    }

    #[test]
    fn a_slot_round_trips_and_starts_empty() {
        let slot: Vec<AtomicU64> = (0..SLOT_WORDS).map(|_| AtomicU64::new(0)).collect();
        assert_eq!(read(&slot), None);
        let e = Exemplar {
            trace: TraceContext::parse(TP).unwrap(),
            value: 0.25,
            ts_ms: 1_700_000_000_123,
        };
        write(&slot, &e);
        assert_eq!(read(&slot), Some(e));
        let mut out = Vec::new();
        push(&mut out, &e, 1.0);
        assert_eq!(
            out,
            b" # {trace_id=\"4bf92f3577b34da6a3ce929d0e0e4736\",span_id=\"00f067aa0ba902b7\"} 1 1700000000.123"
        );
        // A slot claimed by a writer shows nothing until the writer is done; a claim older than
        // a second (its writer died) is taken over.
        let mut later = e;
        later.ts_ms += 10;
        slot[0].store(later.ts_ms << 1, Ordering::Relaxed);
        assert_eq!(read(&slot), None);
        assert!(!write(&slot, &later));
        later.ts_ms += CLAIM_MS;
        assert!(write(&slot, &later));
        assert_eq!(read(&slot), Some(later));
        // A word changed under the reader (a torn write) is no exemplar.
        slot[4].store(0.5f64.to_bits(), Ordering::Relaxed);
        assert_eq!(read(&slot), None);
        assert_eq!(read(&slot[..3]), None);
    }

    #[test]
    fn concurrent_writers_never_show_a_torn_exemplar() {
        // Each writer's exemplars have a trace id derived from their value: a reader must only
        // ever see matching pairs.
        let slot: Arc<Vec<AtomicU64>> =
            Arc::new((0..SLOT_WORDS).map(|_| AtomicU64::new(0)).collect());
        let of = |i: u64| Exemplar {
            trace: TraceContext {
                trace_id: [(i % 251) as u8 | 1; 16],
                span_id: (i | 1).to_be_bytes(),
            },
            value: i as f64,
            // Within a claim's lifetime of each other, as wall-clock times of live writers
            // are: no writer takes a claim over (that is for claims of dead writers).
            ts_ms: 1_700_000_000_000 + i % 997,
        };
        // The writers run until the reader has checked enough whole exemplars (not for a fixed
        // count: on a loaded machine they could all be done before the reader ever ran).
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writers: Vec<_> = (0..3u64)
            .map(|w| {
                let (slot, stop) = (slot.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        write(&slot, &of(i * 3 + w));
                        i += 1;
                    }
                })
            })
            .collect();
        // Bounded so that a reader that never sees an exemplar fails instead of hanging; a
        // writer preempted while it holds the claim only hides the slot for its time slice.
        let (mut seen, mut tries) = (0, 0u64);
        while seen < 1_000 && tries < 200_000_000 {
            tries += 1;
            if let Some(e) = read(&slot) {
                let i = e.value as u64;
                assert_eq!(e, of(i));
                seen += 1;
            }
        }
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.join().unwrap();
        }
        assert_eq!(seen, 1_000, "only {seen} whole exemplars in {tries} reads");
        let last = read(&slot).expect("the last write left a whole exemplar");
        assert_eq!(last, of(last.value as u64));
    }

    #[test]
    fn packed_words_round_trip_and_merge_the_latest() {
        let e = |ts| Exemplar {
            trace: TraceContext::parse(TP).unwrap(),
            value: 0.5,
            ts_ms: ts,
        };
        assert_eq!(unpack(&pack(&e(7))), Some(e(7)));
        let mut w = [0u64; PACKED_WORDS];
        assert_eq!(unpack(&w), None);
        merge_latest(&mut w, &e(9));
        merge_latest(&mut w, &e(8));
        assert_eq!(unpack(&w), Some(e(9)));
        assert_eq!(unpack(&w[..3]), None);
    }

    #[test]
    fn latest_takes_the_newer() {
        let e = |ts| Exemplar {
            trace: TraceContext::parse(TP).unwrap(),
            value: 1.0,
            ts_ms: ts,
        };
        assert_eq!(latest(Some(e(5)), Some(e(9))), Some(e(9)));
        assert_eq!(latest(Some(e(9)), Some(e(5))), Some(e(9)));
        assert_eq!(latest(None, Some(e(5))), Some(e(5)));
        assert_eq!(latest(None, None), None);
    }
}
