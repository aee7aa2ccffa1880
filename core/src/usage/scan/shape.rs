//! A JSON body read again in the shape of the one before it.
//!
//! A provider answers an endpoint with bodies of one shape: the same members in the same
//! order, the same indentation; only values differ (ids, the answer, the counts). When the
//! walk ([`Scanner::feed_body`]) reads a body whole, it notes that shape ([`Shape`]): the body's
//! bytes with each value that may vary cut out and replaced by a [`Slot`], what the walk did
//! with it (a string skipped or read for an action, a count read, a number skipped, a usage
//! object opened or closed). The next body is read by replaying the shape: the bytes between
//! values are compared with the noted ones, 16 at a time, and each value is read by the
//! walk's own function for it. The first difference gives up, and the caller walks the body,
//! noting its shape for the next one.
//!
//! Why a replay that matches reads exactly as the walk (and so as the resumable scanner):
//! the walk's path depends only on the bytes compared here (keys, brackets, separators,
//! literals, whitespace) and on each value's kind and extent, which its slot checks the way
//! the walk finds them (a string ends at its first unescaped quote, a number is a run of
//! number bytes). A skipped container's end depends only on its brackets and quotes outside
//! strings: the compared bytes and the slots (strings ending where the walk's search ends
//! them, number runs holding neither) place them as they were. What depends on a value (a
//! count, the model, the event type, a content flag) is done by the walk's functions. The
//! provider table's answers depend on the keys (compared) and on the scanner's settings
//! (checked against the ones the shape was noted with). Property-tested against the resumable
//! scanner with pairs of bodies of one structure and differing values, damaged or not.
//!
//! **Folding.** Many values are the same in every body of a shape (`"object"`, the role, a
//! `finish_reason`, zero counts of cache or reasoning tokens, the model), and places (a usage
//! object's opening and closing) are where they were. So the noting also keeps each skipped
//! value, count and unescaped model of at most [`FOLD_MAX`] bytes ([`MAX_VALS`] in all), and
//! the replay compares them with the bytes around them as one run instead of reading them;
//! what a folded step does (a count's value set, the model taken, a usage object opened or
//! closed) is kept with its run and done after the run compares equal ([`Effect`]); the first
//! usage object's opening, where no step before it reads a count or opens or closes a usage
//! object, keeps none: the replay clears the counts being read at its start instead, which is
//! the same as clearing them there. Comparing
//! a kept value is reading it: the bytes are those the walk read there, followed by compared
//! bytes (a number's end is the byte after it; a value followed by no compared byte is not
//! folded), so the walk's functions would find the same extent and the same count or model.
//! When a run differs, its steps are replayed one by one ([`Scanner::unfold`], as before
//! folding): a folded value that changed is read as its slot reads it, the body still
//! matches, and that value is no longer folded in this shape (its kept bytes dropped): an id,
//! a time, the counts that vary are each read from their second body on; a body that differs
//! in compared bytes gives up as before. Property-tested against the resumable scanner with
//! provider-like bodies whose counts and models stay or change, and bodies read again after
//! their shape was unfolded.
//!
//! The cost is what the comparison and the values that vary cost, not the members' lookup:
//! ~1,750 instructions for a 997-byte pretty-printed Chat body with its id, time, answer and
//! counts changing from body to body (7 runs: the id, the time, the answer, the prompt and
//! completion counts, their total, the end), against ~5,600 walked. A body of another shape
//! costs its failed replay (mostly a few steps: shapes differ early) and the noting on top of
//! the walk. Bounded: at most [`MAX_STEPS`] values, [`MAX_LIT`] compared bytes, [`MAX_VALS`]
//! kept bytes and [`MAX_EFFECTS`] effects (a larger body is walked every time; values past
//! the last two bounds are read, not folded).

use super::probe;
use super::whole::{skip_scalar, w_string, Pos, Stop};
use super::Scanner;
use crate::usage::providers::{Act, Dialects, Node, MAX_COUNT};

/// The most values a shape notes.
pub(crate) const MAX_STEPS: usize = 128;
/// The most bytes a shape compares.
pub(crate) const MAX_LIT: usize = 2048;
/// The most bytes of values a shape keeps to fold ([`Shape::fold`]), and the longest value
/// kept (longer ones, an answer, vary anyway).
pub(crate) const MAX_VALS: usize = 512;
const FOLD_MAX: usize = 48;
/// The most folded values and places with an effect a shape holds.
const MAX_EFFECTS: usize = 32;
/// The bytes a shape's buffers hold at most ([`Shape::reserve`]).
pub(crate) const SHAPE_BYTES: usize = MAX_STEPS
    * (std::mem::size_of::<Step>() + std::mem::size_of::<Run>())
    + MAX_EFFECTS * std::mem::size_of::<Effect>()
    + MAX_LIT
    + MAX_VALS;

/// What the walk did with a value (or at a place) of the body.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Slot {
    /// The body ends.
    End,
    /// A string's rest (after its opening quote), skipped.
    SkipStr,
    /// A string's rest, read for this action.
    Str(Act),
    /// A number skipped (a run of number bytes).
    SkipNum,
    /// A count's digits.
    Count(u8),
    /// A number or literal read for this action.
    Scalar(Act),
    /// A usage object opened (its `{` compared before).
    Open,
    /// A usage object closed (its `}` compared before).
    Close,
    /// A container that is generated content of these dialects.
    Content(Dialects),
}

/// Compare `lit` bytes, then read `slot`; `val`: the length of the value the noted body had
/// there, kept after the `lit` bytes while it is folded (0: not kept or not folded; only
/// skipped values, counts and the model are).
#[derive(Clone, Copy, Debug)]
struct Step {
    lit: u16,
    val: u16,
    slot: Slot,
}

/// Steps `first..=last` read as one: compare the next `len` bytes of the shape (their runs
/// and the folded values and places between them), have the next `effects` effects of the
/// folded steps, then read the last step's slot.
#[derive(Clone, Copy, Debug)]
struct Run {
    len: u16,
    effects: u8,
    first: u8,
    last: u8,
    slot: Slot,
}

/// What a folded step does, as its slot would on the same bytes.
#[derive(Clone, Copy, Debug)]
enum Effect {
    /// A count's value, set in the usage object being read.
    Count(u8, u64),
    /// The model, the run's bytes `at..at + len`, and whether they are a label value as they
    /// are (checked once, here).
    Model(u16, u16, bool),
    /// A place ([`Slot::Open`], [`Slot::Close`], [`Slot::Content`]).
    Place(Slot),
}

/// The shape of a body walked whole (see the module documentation). Empty when there is
/// none.
#[derive(Default)]
pub(crate) struct Shape {
    /// The scanner's settings it was noted with (the provider table's answers depend on them).
    allow: Dialects,
    json_body: bool,
    /// The provider hints of the body's keys.
    hints: Dialects,
    steps: Vec<Step>,
    /// The steps as they are replayed: a kept value that no body read in this shape has
    /// changed is compared with the bytes around it, not read.
    runs: Vec<Run>,
    /// The runs' bytes, in order: each step's compared bytes, then its value while folded.
    bytes: Vec<u8>,
    /// The runs' effects, in order.
    effects: Vec<Effect>,
    /// The first usage object's opening is folded without its effect (the stage cleared):
    /// no step before it touches the stage, so the replay clears it at its start instead.
    clears_stage: bool,
}

impl Shape {
    /// Allocates the buffers to their bound (once: a reader reading JSON bodies then notes
    /// shapes without allocating).
    pub(crate) fn reserve(&mut self) {
        self.steps.reserve_exact(MAX_STEPS - self.steps.len());
        self.runs.reserve_exact(MAX_STEPS - self.runs.len());
        self.bytes
            .reserve_exact(MAX_LIT + MAX_VALS - self.bytes.len());
        self.effects.reserve_exact(MAX_EFFECTS - self.effects.len());
    }

    /// Bytes held (for the reader's state bound).
    pub(crate) fn capacity_bytes(&self) -> usize {
        self.steps.capacity() * std::mem::size_of::<Step>()
            + self.runs.capacity() * std::mem::size_of::<Run>()
            + self.effects.capacity() * std::mem::size_of::<Effect>()
            + self.bytes.capacity()
    }

    /// No shape held (none noted yet, or the last noting gave up).
    pub(crate) fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    fn clear(&mut self) {
        self.steps.clear();
        self.runs.clear();
        self.bytes.clear();
        self.effects.clear();
        self.clears_stage = false;
    }

    /// Makes the runs. Folded into the bytes compared around them: each kept value but those
    /// of the steps in `changed`, when bytes follow it in the same run (a number's end is the
    /// byte after it, which must be compared too), and each place; those with an effect (a
    /// count, the model, a place) when there is room for it. A value not folded is dropped,
    /// never to be folded again.
    fn fold(&mut self, changed: u128) {
        self.runs.clear();
        self.effects.clear();
        self.clears_stage = false;
        // No step so far reads a count or opens or closes a usage object.
        let mut stage_untouched = true;
        // Read and write offsets in `bytes` (compacted in place), where the run started.
        let (mut r, mut w, mut start) = (0usize, 0usize, 0usize);
        let (mut first, mut effects) = (0usize, 0u8);
        for k in 0..self.steps.len() {
            let s = self.steps[k];
            let (lit, val) = (usize::from(s.lit), usize::from(s.val));
            if r != w {
                self.bytes.copy_within(r..r + lit, w);
            }
            r += lit;
            w += lit;
            let kept = val > 0
                && changed & (1 << k) == 0
                && self.steps.get(k + 1).is_some_and(|t| t.lit > 0);
            let room = self.effects.len() < MAX_EFFECTS;
            let untouched = stage_untouched;
            stage_untouched &= !matches!(
                s.slot,
                Slot::Count(_) | Slot::Scalar(_) | Slot::Open | Slot::Close
            );
            let effect = match s.slot {
                Slot::SkipStr | Slot::SkipNum if kept => None,
                Slot::Open if untouched => {
                    self.clears_stage = true;
                    None
                }
                Slot::Count(slot) if kept && room => {
                    Some(Effect::Count(slot, digits_value(&self.bytes[r..r + val])))
                }
                // The string without its closing quote, where it will be in the run's bytes.
                Slot::Str(Act::Model) if kept && room => {
                    let clean = crate::labels::is_clean(&self.bytes[r..r + val - 1]);
                    Some(Effect::Model((w - start) as u16, (val - 1) as u16, clean))
                }
                Slot::Open | Slot::Close | Slot::Content(_) if room => Some(Effect::Place(s.slot)),
                _ => {
                    self.steps[k].val = 0;
                    // Bounded by the noting: at most MAX_LIT + MAX_VALS bytes, MAX_STEPS steps.
                    self.runs.push(Run {
                        len: (w - start) as u16,
                        effects,
                        first: first as u8,
                        last: k as u8,
                        slot: s.slot,
                    });
                    start = w;
                    first = k + 1;
                    effects = 0;
                    r += val;
                    continue;
                }
            };
            if let Some(e) = effect {
                self.effects.push(e);
                effects += 1;
            }
            if r != w {
                self.bytes.copy_within(r..r + val, w);
            }
            w += val;
            r += val;
        }
        self.bytes.truncate(w);
    }

    #[cfg(test)]
    pub(crate) fn steps(&self) -> usize {
        self.steps.len()
    }

    #[cfg(test)]
    pub(crate) fn runs(&self) -> usize {
        self.runs.len()
    }
}

/// The JSON body shapes a reader keeps (the last two it noted or matched): a gateway that
/// alternates two providers or endpoints in one location still reads each in its shape.
const SHAPES: usize = 2;
/// A body read in a kept shape gives this much noting credit back; one walked without noting
/// gives 1, so that a reader whose kept shapes no body matches any more (taken by bodies of
/// other shapes, or emptied by bodies too large to note) still notes one now and then.
pub(crate) const MATCH_CREDIT: u16 = 16;
/// A shape noted takes this much credit (four bodies read in a kept shape, or 64 walked),
/// doubled for each noting in a row that gave up (a body of more values than a shape holds),
/// at most [`MAX_NOTE_FAILS`] times: such a body costs its noting up to the bound for nothing.
pub(crate) const NOTE_COST: u16 = 4 * MATCH_CREDIT;
pub(crate) const MAX_NOTE_FAILS: u8 = 3;
/// A new reader's credit (credit is capped at twice the next noting's cost).
pub(crate) const NOTE_CREDIT_CAP: u16 = 2 * NOTE_COST;
/// The bytes a reader's kept shapes hold at most.
pub(crate) const SHAPES_BYTES: usize = SHAPES * SHAPE_BYTES;

/// The shapes a reader keeps and when it notes a new one (see [`Shapes::read`]).
pub(crate) struct Shapes {
    shapes: [Shape; SHAPES],
    /// Per kept shape, its recent matches (halved at each body of no kept shape).
    uses: [u8; SHAPES],
    /// What noting a shape may still take: [`NOTE_COST`] a shape (more after notings that
    /// gave up), [`MATCH_CREDIT`] back per body read in a kept shape, 1 per body walked
    /// without noting; capped at twice a noting's cost when a body misses.
    credit: u16,
    /// Notings in a row that gave up (at most [`MAX_NOTE_FAILS`]).
    pub(crate) note_fails: u8,
    /// The buffers are allocated to their bound (they never shrink).
    reserved: bool,
    /// The shape noted last.
    noted: u8,
    /// Shapes noted, bodies read in a kept shape (tests only).
    #[cfg(test)]
    pub(crate) notes: u32,
    #[cfg(test)]
    pub(crate) matched: u32,
}

impl Default for Shapes {
    fn default() -> Self {
        Shapes {
            shapes: Default::default(),
            uses: [0; SHAPES],
            credit: NOTE_CREDIT_CAP,
            note_fails: 0,
            reserved: false,
            noted: 0,
            #[cfg(test)]
            notes: 0,
            #[cfg(test)]
            matched: 0,
        }
    }
}

impl Shapes {
    /// Allocates the shapes' buffers to their bound (once per reader).
    #[inline]
    pub(crate) fn reserve(&mut self) {
        if !self.reserved {
            for shape in &mut self.shapes {
                shape.reserve();
            }
            self.reserved = true;
        }
    }

    /// Bytes held (for the reader's state bound).
    pub(crate) fn capacity_bytes(&self) -> usize {
        self.shapes.iter().map(Shape::capacity_bytes).sum()
    }

    /// Reads the JSON body `buf`, held whole, with `scan` (just begun): in a kept shape, else
    /// walked (its shape noted in place of a kept one when noting has credit). False when
    /// the walk gave up (the scanner just begun).
    #[inline(always)]
    pub(crate) fn read(&mut self, scan: &mut Scanner, buf: &[u8]) -> bool {
        for k in 0..SHAPES {
            // (An empty shape is passed over here: trying it costs a call.)
            if !self.shapes[k].is_empty() && scan.feed_shaped(&mut self.shapes[k], buf) {
                self.uses[k] = self.uses[k].saturating_add(1);
                // Capped at the next miss (the cap changes only there).
                self.credit = self.credit.saturating_add(MATCH_CREDIT);
                #[cfg(test)]
                {
                    self.matched += 1;
                }
                return true;
            }
        }
        // Another shape. Noting costs more than the walk, so it takes credit that matches
        // give back (and walks, slowly: else a reader whose kept shapes no longer match
        // would never note again): bodies of more shapes in turn than are kept are walked,
        // noted now and then; bodies too large to note, noted ever more rarely. The noted
        // shape replaces an empty one (a noting that gave up leaves its place empty: bodies
        // too large to note, in turn with one shape, do not take its place), else the kept
        // one of fewer recent matches (on a tie, the one noted before the other); a miss
        // halves both counts, so that an old shape gives way.
        for u in &mut self.uses {
            *u /= 2;
        }
        let cost = NOTE_COST << self.note_fails;
        self.credit = self.credit.min(2 * cost);
        if self.credit < cost {
            self.credit += 1;
            return scan.feed_body(buf);
        }
        self.credit -= cost;
        #[cfg(test)]
        {
            self.notes += 1;
        }
        let k = match (self.shapes[0].is_empty(), self.shapes[1].is_empty()) {
            (true, false) => 0,
            (false, true) => 1,
            _ => match self.uses[0].cmp(&self.uses[1]) {
                std::cmp::Ordering::Less => 0,
                std::cmp::Ordering::Greater => 1,
                std::cmp::Ordering::Equal => 1 - usize::from(self.noted),
            },
        };
        self.noted = k as u8;
        self.uses[k] = 0;
        let read = scan.feed_body_noting(buf, &mut self.shapes[k]);
        self.note_fails = if self.shapes[k].is_empty() {
            (self.note_fails + 1).min(MAX_NOTE_FAILS)
        } else {
            0
        };
        read
    }
}

/// The value of a run of at most 13 digits (a kept count's).
fn digits_value(digits: &[u8]) -> u64 {
    digits
        .iter()
        .fold(0u64, |n, &d| n * 10 + u64::from(d.wrapping_sub(b'0')))
}

/// Where the walk reports the values it reads (nothing, unless it notes a shape).
pub(crate) trait Rec {
    /// The value `b[at..end]` was read as `slot` (`at == end` for a place).
    fn slot(&mut self, b: &[u8], at: usize, slot: Slot, end: usize);
    /// `b[at..end]` is a container skipped whole.
    fn skipped(&mut self, b: &[u8], at: usize, end: usize);
}

/// The walk that notes nothing.
pub(crate) struct NoRec;

impl Rec for NoRec {
    #[inline(always)]
    fn slot(&mut self, _: &[u8], _: usize, _: Slot, _: usize) {}
    #[inline(always)]
    fn skipped(&mut self, _: &[u8], _: usize, _: usize) {}
}

/// Notes a shape as the walk reads.
struct Note<'s> {
    shape: &'s mut Shape,
    /// The body's bytes before this were noted.
    last: usize,
    /// Compared bytes and kept values noted.
    lits: usize,
    vals: usize,
    ok: bool,
}

impl Rec for Note<'_> {
    fn slot(&mut self, b: &[u8], at: usize, slot: Slot, end: usize) {
        let s = &mut *self.shape;
        if !self.ok
            || at < self.last
            || s.steps.len() == MAX_STEPS
            || self.lits + (at - self.last) > MAX_LIT
        {
            self.ok = false;
            return;
        }
        // A value is kept to be folded when its replay's reading of these bytes is the walk's:
        // a skipped string or number was found by the functions the replay calls (so ends
        // where the walk's did), the model must have no escapes (the walk unescapes those),
        // a count must be digits alone that the walk set (not one it found bad).
        let val = end - at;
        let keep = val <= FOLD_MAX
            && self.vals + val <= MAX_VALS
            && match slot {
                Slot::SkipStr => {
                    debug_assert_eq!(probe::string_end(b, at).map(|(e, _)| e + 1), Some(end));
                    true
                }
                Slot::SkipNum => {
                    debug_assert!(matches!(b.get(at), Some(b'0'..=b'9' | b'-')));
                    debug_assert_eq!(skip_scalar(b, at).ok(), Some(end));
                    true
                }
                Slot::Str(Act::Model) => probe::string_end(b, at) == Some((end - 1, false)),
                Slot::Count(_) => {
                    val > 0
                        && val <= 13
                        && b[at..end].iter().all(u8::is_ascii_digit)
                        && !matches!(b.get(end), Some(b'.' | b'e' | b'E' | b'+' | b'-'))
                        && digits_value(&b[at..end]) <= MAX_COUNT
                }
                _ => false,
            };
        let val = if keep { val } else { 0 };
        s.bytes.extend_from_slice(&b[self.last..at + val]);
        s.steps.push(Step {
            lit: (at - self.last) as u16,
            val: val as u16,
            slot,
        });
        self.lits += at - self.last;
        self.vals += val;
        self.last = end;
    }

    /// A skipped container's strings and numbers are slots (they vary: an answer, an index);
    /// keys (strings before a `:`), literals, brackets and whitespace are compared.
    fn skipped(&mut self, b: &[u8], mut k: usize, end: usize) {
        while self.ok {
            // Whitespace runs (indentation) a search step at a time.
            k = probe::tok(b, k);
            if k >= end {
                break;
            }
            match b[k] {
                b'"' => {
                    let Some((e, _)) = probe::string_end(b, k + 1) else {
                        self.ok = false;
                        return;
                    };
                    if b.get(probe::tok(b, e + 1)) != Some(&b':') {
                        self.slot(b, k + 1, Slot::SkipStr, e + 1);
                    }
                    k = e + 1;
                }
                b'0'..=b'9' | b'-' => match skip_scalar(b, k) {
                    Ok(j) => {
                        self.slot(b, k, Slot::SkipNum, j);
                        k = j;
                    }
                    Err(Stop) => self.ok = false,
                },
                _ => k += 1,
            }
        }
    }
}

impl Scanner {
    /// [`Scanner::feed_body`], noting the body's shape in `shape` when the walk reads it whole
    /// (else leaving `shape` empty).
    pub(crate) fn feed_body_noting(&mut self, b: &[u8], shape: &mut Shape) -> bool {
        shape.clear();
        let mut note = Note {
            shape,
            last: 0,
            lits: 0,
            vals: 0,
            ok: true,
        };
        let read = self.feed_body_with(&mut note, b);
        if read {
            note.slot(b, b.len(), Slot::End, b.len());
        }
        let ok = note.ok;
        if read && ok {
            shape.allow = self.allow;
            shape.json_body = self.json_body;
            shape.hints = self.facts.hints;
            shape.fold(0);
        } else {
            shape.clear();
        }
        read
    }

    /// Reads `b` by replaying `shape`: true leaves the scanner exactly as
    /// [`Scanner::feed_body`] of `b` would; false leaves it just begun (then walk `b`). A
    /// folded value that changed is unfolded for the bodies after this one.
    pub(crate) fn feed_shaped(&mut self, shape: &mut Shape, b: &[u8]) -> bool {
        if shape.runs.is_empty() || shape.allow != self.allow || shape.json_body != self.json_body {
            return false;
        }
        let known = self.model.done;
        let mut changed = 0u128;
        if shape.clears_stage {
            // What the first usage object's opening does (see `Shape::clears_stage`).
            self.stage.clear();
            self.stage_valid = false;
        }
        let read = self.replay(shape, b, &mut changed);
        if read.is_ok() && changed != 0 {
            shape.fold(changed);
        }
        self.facts.hints |= shape.hints;
        self.walked(read.map(|()| true), known)
    }

    fn replay(&mut self, shape: &Shape, b: &[u8], changed: &mut u128) -> Result<(), Stop> {
        let mut i = 0usize;
        let (mut bytes, mut effects): (&[u8], &[Effect]) = (&shape.bytes, &shape.effects);
        for run in &shape.runs {
            let (y, rest) = bytes.split_at_checked(usize::from(run.len)).ok_or(Stop)?;
            bytes = rest;
            let n = usize::from(run.effects);
            // (Two checks, without `i + len`'s overflow test.)
            match b.get(i..).and_then(|r| r.get(..y.len())) {
                Some(x) if probe::equal(x, y) => {
                    i += y.len();
                    if n > 0 {
                        let (folded, rest) = effects.split_at_checked(n).ok_or(Stop)?;
                        effects = rest;
                        for e in folded {
                            self.effect(*e, y, i);
                        }
                    }
                }
                _ => {
                    effects = effects.get(n..).ok_or(Stop)?;
                    i = self.unfold(shape, run, y, b, i, changed)?;
                }
            }
            i = match run.slot {
                Slot::End => return if i == b.len() { Ok(()) } else { Err(Stop) },
                Slot::SkipStr => probe::string_end(b, i).ok_or(Stop)?.0 + 1,
                Slot::Str(act) => w_string(self, b, i, act)?,
                Slot::SkipNum => match b.get(i) {
                    Some(b'0'..=b'9' | b'-') => skip_scalar(b, i)?,
                    _ => return Err(Stop),
                },
                Slot::Count(s) => match b.get(i) {
                    Some(b'0'..=b'9') => self.w_count(b, i, s)?,
                    _ => return Err(Stop),
                },
                Slot::Scalar(act) => self.w_scalar(b, i, act)?,
                place => self.place(place, i),
            };
        }
        Err(Stop)
    }

    /// A place's slot at `i`: what the walk does there.
    #[inline(always)]
    fn place(&mut self, slot: Slot, i: usize) -> usize {
        match slot {
            Slot::Open => {
                self.stage.clear();
                self.stage_valid = false;
            }
            Slot::Close => {
                self.w_close(Node::Usage, i);
            }
            Slot::Content(d) => self.facts.content |= d,
            _ => {}
        }
        i
    }

    /// A folded step's effect, as its slot has it on the kept bytes (the run's bytes `y`).
    #[inline(always)]
    fn effect(&mut self, e: Effect, y: &[u8], i: usize) {
        match e {
            Effect::Count(slot, num) => {
                self.stage.set(slot, num);
                self.stage_valid = true;
            }
            Effect::Model(at, len, clean) => {
                let (at, len) = (usize::from(at), usize::from(len));
                if let (false, Some(m)) = (self.model.done, y.get(at..at + len)) {
                    self.model.push(m);
                    self.model.finish();
                    self.model.label = clean;
                }
            }
            Effect::Place(slot) => {
                self.place(slot, i);
            }
        }
    }

    /// `run`'s bytes `y` differ from `b`'s at `i`: its steps one by one, each folded value
    /// read as its slot reads it and marked in `changed` when it differs from the kept one;
    /// returns the position of the last step's slot.
    #[cold]
    #[inline(never)]
    fn unfold(
        &mut self,
        shape: &Shape,
        run: &Run,
        y: &[u8],
        b: &[u8],
        mut i: usize,
        changed: &mut u128,
    ) -> Pos {
        let mut o = 0usize;
        for k in usize::from(run.first)..=usize::from(run.last) {
            let step = shape.steps.get(k).ok_or(Stop)?;
            let lit = y.get(o..o + usize::from(step.lit)).ok_or(Stop)?;
            o += lit.len();
            if !b
                .get(i..i + lit.len())
                .is_some_and(|x| probe::equal(x, lit))
            {
                return Err(Stop);
            }
            i += lit.len();
            if k == usize::from(run.last) {
                return Ok(i);
            }
            let kept = y.get(o..o + usize::from(step.val)).ok_or(Stop)?;
            o += kept.len();
            // The replay's reading of these slots (what folds); one function for both cost
            // the replay ~60 instructions a body (measured).
            let end = match (step.slot, b.get(i)) {
                (Slot::SkipStr, _) => probe::string_end(b, i).ok_or(Stop)?.0 + 1,
                (Slot::SkipNum, Some(b'0'..=b'9' | b'-')) => skip_scalar(b, i)?,
                (Slot::Count(s), Some(b'0'..=b'9')) => self.w_count(b, i, s)?,
                (Slot::Str(act @ Act::Model), _) => w_string(self, b, i, act)?,
                (place @ (Slot::Open | Slot::Close | Slot::Content(_)), _) => self.place(place, i),
                _ => return Err(Stop),
            };
            if b[i..end] != *kept {
                *changed |= 1 << k;
            }
            i = end;
        }
        Err(Stop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::providers::{ALL, ANTHROPIC, GEMINI, OPENAI};
    use crate::usage::scan::whole::resumable_reading;
    use crate::usage::tests::{reading, variants};
    use proptest::prelude::*;

    use crate::usage::tests::begun_scanner as scanner;

    /// The resumable scanner's reading of `body` (after the model, when `known`).
    fn reference(allow: Dialects, json_body: bool, known: bool, body: &[u8]) -> String {
        if !known {
            return reading(&resumable_reading(allow, json_body, body));
        }
        let mut s = scanner(allow, json_body, true);
        s.walks_rest = false;
        s.feed(body);
        s.end();
        reading(&s)
    }

    /// Notes `a`'s shape and replays it on `b`: a replay that matches reads `b` as the
    /// resumable scanner does; one that does not leaves the scanner just begun. Returns
    /// whether it matched (`None`: `a` is not walked, no shape).
    fn check(a: &[u8], b: &[u8], allow: Dialects, json_body: bool, known: bool) -> Option<bool> {
        let mut shape = Shape::default();
        let mut s = scanner(allow, json_body, known);
        if !s.feed_body_noting(a, &mut shape) {
            assert_eq!(shape.steps(), 0);
            return None;
        }
        s.end();
        assert_eq!(reading(&s), reference(allow, json_body, known, a));
        let mut r = scanner(allow, json_body, known);
        let matched = r.feed_shaped(&mut shape, b);
        if matched {
            r.end();
            assert!(r.ended_cleanly(), "{:?}", String::from_utf8_lossy(b));
            assert_eq!(
                reading(&r),
                reference(allow, json_body, known, b),
                "{:?} in the shape of {:?}",
                String::from_utf8_lossy(b),
                String::from_utf8_lossy(a)
            );
        } else {
            assert_eq!(reading(&r), reading(&scanner(allow, json_body, known)));
        }
        // The shape, its values that `b` changed unfolded, reads both bodies as before.
        for (x, matches) in [(a, true), (b, matched)] {
            let mut r = scanner(allow, json_body, known);
            assert_eq!(r.feed_shaped(&mut shape, x), matches);
            if matches {
                r.end();
                assert_eq!(reading(&r), reference(allow, json_body, known, x));
            }
        }
        Some(matched)
    }

    /// Every corpus body is read in its own shape, and bodies of its shape with other
    /// values (counts, ids, the answer), damaged or not, read as the scanner reads them.
    #[test]
    fn corpus_bodies_in_their_shape() {
        let mut hits = 0;
        for (file, _, p) in crate::usage::tests::corpus_payloads() {
            // Other values of the same kinds: digits changed, digit runs longer, words
            // of the text (never in keys) changed.
            let other = String::from_utf8_lossy(&p)
                .replace('1', "7")
                .replace('9', "1234")
                .replace(" is ", " was ");
            for allow in [ALL, OPENAI, ANTHROPIC, GEMINI] {
                for json_body in [true, false] {
                    for known in [false, true] {
                        if check(&p, &p, allow, json_body, known).is_none() {
                            continue;
                        }
                        assert_eq!(check(&p, &p, allow, json_body, known), Some(true), "{file}");
                        for v in variants(other.as_bytes()) {
                            hits +=
                                usize::from(check(&p, &v, allow, json_body, known) == Some(true));
                        }
                    }
                }
            }
        }
        assert!(hits > 100, "{hits}");
    }

    /// The corpus's Chat body: 24 steps, its values and usage objects.
    #[test]
    fn chat_body_shape() {
        let body = include_bytes!("../../../../tests/usage_corpus/openai_chat_json.body");
        let mut s = scanner(ALL, true, false);
        let mut shape = Shape::default();
        assert!(s.feed_body_noting(body, &mut shape));
        let slots: Vec<Slot> = shape.steps.iter().map(|s| s.slot).collect();
        assert_eq!(slots.len(), 24);
        // The skipped values, the model, the counts and the usage object's places are folded
        // (not the answer: longer than kept values): 2 runs, up to the answer, to the end.
        assert_eq!(shape.steps.iter().filter(|s| s.val > 0).count(), 20);
        assert_eq!(shape.runs(), 2);
        assert_eq!(slots[3], Slot::Str(Act::Model));
        assert_eq!(
            slots.iter().filter(|s| matches!(s, Slot::Count(_))).count(),
            4
        );
        assert_eq!(slots.iter().filter(|&&s| s == Slot::Open).count(), 1);
        assert_eq!(slots.last(), Some(&Slot::End));
        // The usage object's opening is folded without its effect: the replay clears the
        // counts being read at its start (none may be left from a replay that gave up).
        assert!(shape.clears_stage);
        let mut r = scanner(ALL, true, false);
        r.stage.set(crate::usage::providers::slot::G_PROMPT, 99);
        r.stage_valid = true;
        assert!(r.feed_shaped(&mut shape, body));
        r.end();
        assert_eq!(
            r.facts.usage.get(crate::usage::providers::slot::G_PROMPT),
            None
        );
        assert_eq!(r.facts.usage.get(0), Some(19));
        // Its folded model is known to be a label value as it is.
        assert!(r.model.label);
        // Another body of that shape is read by the replay.
        let other = String::from_utf8_lossy(body)
            .replace("\"prompt_tokens\": 19", "\"prompt_tokens\": 1900")
            .replace("gpt-4o-2024-08-06", "gpt-4o-mini");
        let mut r = scanner(ALL, true, false);
        assert!(r.feed_shaped(&mut shape, other.as_bytes()));
        r.end();
        assert_eq!(r.facts.usage.get(0), Some(1900));
        assert_eq!(r.model.get(), Some(&b"gpt-4o-mini"[..]));
        // A model read (it changed): not known to be one.
        assert!(!r.model.label);
        // The changed count and model are read from now on.
        assert_eq!(shape.runs(), 4);
        // A folded value that changes is read again (the replay matches), and unfolded.
        let other = other.replace("B9MHDbslfk", "B9MHDxxxxx");
        for _ in 0..2 {
            let mut r = scanner(ALL, true, false);
            assert!(r.feed_shaped(&mut shape, other.as_bytes()));
            r.end();
            assert_eq!(r.facts.usage.get(0), Some(1900));
            assert_eq!(r.facts.usage.get(1), Some(10));
            assert_eq!(shape.runs(), 5);
        }
        // The noted body still matches, the id read as a value now.
        let mut r = scanner(ALL, true, false);
        assert!(r.feed_shaped(&mut shape, body));
        r.end();
        assert_eq!(r.facts.usage.get(0), Some(19));
        assert_eq!(r.model.get(), Some(&b"gpt-4o-2024-08-06"[..]));
        assert_eq!(shape.runs(), 5);
        // Settings of another reading are not replayed.
        for (allow, json_body) in [(OPENAI, true), (ALL, false)] {
            let mut r = scanner(allow, json_body, false);
            assert!(!r.feed_shaped(&mut shape, body));
        }
    }

    /// A folded model that is not a label value as it is (here: not plain ASCII) is not said
    /// to be one: the glue sanitises it.
    #[test]
    fn folded_model_not_a_label_value() {
        let body = include_str!("../../../../tests/usage_corpus/openai_chat_json.body")
            .replace("gpt-4o-2024-08-06", "mod\u{e8}le");
        let body = body.as_bytes();
        let mut s = scanner(ALL, true, false);
        let mut shape = Shape::default();
        assert!(s.feed_body_noting(body, &mut shape));
        let mut r = scanner(ALL, true, false);
        assert!(r.feed_shaped(&mut shape, body));
        assert_eq!(r.model.get(), Some("mod\u{e8}le".as_bytes()));
        assert!(!r.model.label);
    }

    /// Bounded: a body of more values than a shape holds is walked, its shape not noted.
    #[test]
    fn shape_is_bounded() {
        let members: Vec<String> = (0..MAX_STEPS).map(|k| format!("\"k{k}\":{k}")).collect();
        let body = format!("{{{}}}", members.join(","));
        let mut s = scanner(ALL, true, false);
        let mut shape = Shape::default();
        assert!(s.feed_body_noting(body.as_bytes(), &mut shape));
        assert_eq!(shape.steps(), 0);
        let long = format!("{{\"{}\":1}}", "k".repeat(MAX_LIT));
        let mut s = scanner(ALL, true, false);
        assert!(s.feed_body_noting(long.as_bytes(), &mut shape));
        assert_eq!(shape.steps(), 0);
    }

    /// A value of the generated JSON with two renderings: the same structure (keys mostly,
    /// brackets, whitespace) with two values at each leaf.
    #[derive(Clone, Debug)]
    enum J {
        Leaf(String, String),
        Arr(Vec<(String, J, String)>),
        Obj(Vec<(String, (String, String), String, J)>),
    }

    impl J {
        fn render(&self, side: usize, out: &mut String) {
            match self {
                J::Leaf(a, b) => out.push_str(if side == 0 { a } else { b }),
                J::Arr(items) => {
                    out.push('[');
                    for (k, (w, v, w2)) in items.iter().enumerate() {
                        if k > 0 {
                            out.push(',');
                        }
                        out.push_str(w);
                        v.render(side, out);
                        out.push_str(w2);
                    }
                    out.push(']');
                }
                J::Obj(items) => {
                    out.push('{');
                    for (k, (w, key, w2, v)) in items.iter().enumerate() {
                        if k > 0 {
                            out.push(',');
                        }
                        out.push_str(w);
                        out.push_str(if side == 0 { &key.0 } else { &key.1 });
                        out.push(':');
                        out.push_str(w2);
                        v.render(side, out);
                    }
                    out.push('}');
                }
            }
        }
    }

    fn ws() -> impl Strategy<Value = String> {
        prop::sample::select(vec!["", "", " ", "\n  ", "\n    "]).prop_map(str::to_string)
    }

    fn string() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop::sample::select(vec![
                "a", "usage", "x y", "\\\"", "\\\\", "\\n", "\\u00e9", "é", "{", "]", ":", "",
            ]),
            0..6,
        )
        .prop_map(|parts| format!("\"{}\"", parts.concat()))
    }

    fn number() -> impl Strategy<Value = String> {
        prop_oneof![
            (0u64..2_000_000_000_000).prop_map(|n| n.to_string()),
            prop::sample::select(vec!["-1", "2.5", "1e3", "0", "00"]).prop_map(str::to_string),
        ]
    }

    /// Two values at a leaf: mostly of one kind, sometimes of two.
    fn leaf() -> impl Strategy<Value = J> {
        let lit = prop::sample::select(vec!["true", "false", "null"]).prop_map(str::to_string);
        prop_oneof![
            3 => (number(), number()).prop_map(|(a, b)| J::Leaf(a, b)),
            3 => (string(), string()).prop_map(|(a, b)| J::Leaf(a, b)),
            1 => lit.clone().prop_map(|a| J::Leaf(a.clone(), a)),
            1 => (prop_oneof![number(), string(), lit.clone()], prop_oneof![number(), string(), lit])
                .prop_map(|(a, b)| J::Leaf(a, b)),
        ]
    }

    fn key() -> impl Strategy<Value = (String, String)> {
        let known = prop::sample::select(crate::usage::scan::whole::body_props::KNOWN_KEYS)
            .prop_map(|k| format!("\"{k}\""));
        prop_oneof![
            6 => known.clone().prop_map(|k| (k.clone(), k)),
            1 => (known, string()),
        ]
    }

    fn value() -> impl Strategy<Value = J> {
        leaf().prop_recursive(5, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec((ws(), inner.clone(), ws()), 0..5).prop_map(J::Arr),
                proptest::collection::vec((ws(), key(), ws(), inner), 0..6).prop_map(J::Obj),
            ]
        })
    }

    /// A count's two values: mostly the same (folded), else another count or another kind.
    fn count() -> impl Strategy<Value = J> {
        prop_oneof![
            3 => (0u64..100_000).prop_map(|n| J::Leaf(n.to_string(), n.to_string())),
            2 => (0u64..100_000, 0u64..100_000).prop_map(|(a, b)| J::Leaf(a.to_string(), b.to_string())),
            1 => leaf(),
        ]
    }

    fn member(
        keys: &'static [&'static str],
        v: BoxedStrategy<J>,
    ) -> impl Strategy<Value = (String, (String, String), String, J)> {
        (ws(), prop::sample::select(keys), ws(), v)
            .prop_map(|(w, k, w2, v)| (w, (format!("\"{k}\""), format!("\"{k}\"")), w2, v))
    }

    /// A usage object of one provider's counts (and details objects of counts, and anything).
    fn usage() -> impl Strategy<Value = J> {
        const COUNTS: &[&str] = &[
            "prompt_tokens",
            "completion_tokens",
            "total_tokens",
            "input_tokens",
            "output_tokens",
            "cache_read_input_tokens",
            "cache_creation_input_tokens",
            "promptTokenCount",
            "candidatesTokenCount",
            "thoughtsTokenCount",
            "cached_tokens",
            "reasoning_tokens",
        ];
        const DETAILS: &[&str] = &[
            "prompt_tokens_details",
            "completion_tokens_details",
            "cache_creation",
        ];
        let details =
            proptest::collection::vec(member(COUNTS, count().boxed()), 0..3).prop_map(J::Obj);
        proptest::collection::vec(
            prop_oneof![
                4 => member(COUNTS, count().boxed()),
                1 => member(DETAILS, details.boxed()),
                1 => (ws(), key(), ws(), value()),
            ],
            0..7,
        )
        .prop_map(J::Obj)
    }

    /// A provider's body: an id, the model (mostly the same twice), a usage object, others.
    fn body() -> impl Strategy<Value = J> {
        let model = prop_oneof![
            3 => prop::sample::select(vec!["\"gpt-4o\"", "\"claude-x\""]).prop_map(|m| J::Leaf(m.into(), m.into())),
            1 => (string(), string()).prop_map(|(a, b)| J::Leaf(a, b)),
        ];
        proptest::collection::vec(
            prop_oneof![
                2 => member(&["id"], (string(), string()).prop_map(|(a, b)| J::Leaf(a, b)).boxed()),
                2 => member(&["model", "modelVersion"], model.boxed()),
                3 => member(&["usage", "usageMetadata"], usage().boxed()),
                2 => (ws(), key(), ws(), value()),
            ],
            1..7,
        )
        .prop_map(J::Obj)
    }

    /// `v`'s two renderings, wrapped, the second damaged in one byte when asked.
    fn renderings(
        v: &J,
        wrap: impl Fn(String) -> String,
        damage: Option<(f64, u8)>,
    ) -> (String, Vec<u8>) {
        let (mut a, mut b) = (String::new(), String::new());
        v.render(0, &mut a);
        v.render(1, &mut b);
        let mut b = wrap(b).into_bytes();
        if let Some((at, c)) = damage {
            let n = b.len();
            b[((n as f64 * at) as usize).min(n - 1)] = c;
        }
        (wrap(a), b)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Provider-like bodies (ids, models, usage objects of counts, other members), the
        /// second with other values or the same, whole or damaged in one byte: read in the
        /// first's shape exactly as the resumable scanner reads them, or not at all.
        #[test]
        fn replay_reads_provider_bodies_as_the_scanner(
            v in body(),
            allow in prop::sample::select(vec![ALL, OPENAI, ANTHROPIC, GEMINI]),
            json_body in any::<bool>(), known in any::<bool>(),
            damage in proptest::option::of((0.0f64..1.0, prop::sample::select(
                b"{}[]\",:0an \\".to_vec()))),
        ) {
            let (a, b) = renderings(&v, |x| x, damage);
            prop_assert_eq!(check(a.as_bytes(), a.as_bytes(), allow, json_body, known), Some(true));
            check(a.as_bytes(), &b, allow, json_body, known);
        }

        /// Two bodies of one structure with other values at the leaves (and sometimes other
        /// keys or kinds): the second, whole or damaged in one byte, is read in the first's
        /// shape exactly as the resumable scanner reads it, or not at all.
        #[test]
        fn replay_reads_as_the_scanner(
            v in value(), top in 0..3u8,
            allow in prop::sample::select(vec![ALL, OPENAI, ANTHROPIC, GEMINI]),
            json_body in any::<bool>(), known in any::<bool>(),
            damage in proptest::option::of((0.0f64..1.0, prop::sample::select(
                b"{}[]\",:0an \\".to_vec()))),
        ) {
            // In an array, under an unknown key, or (an object) at the top level, where its
            // known keys are read: counts, the model, usage objects.
            let wrap = |x: String| match top {
                0 => format!("[{x}]"),
                2 if x.starts_with('{') => x,
                _ => format!("{{\"x\":{x}}}"),
            };
            let (a, b) = renderings(&v, wrap, damage);
            prop_assert_eq!(check(a.as_bytes(), a.as_bytes(), allow, json_body, known), Some(true));
            check(a.as_bytes(), &b, allow, json_body, known);
        }
    }
}
