//! How much of a worker its scrapes may take: the worker's pacing state, shared by all the
//! scrapes on its event loop, and the clock they measure with.

use std::ptr;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;

use nginx_sys::*;

/// While busy, a slice starts at least PACE x its duration after the previous one started, and
/// at least BUSY_INTERVAL_NS after it ended (an nginx timer: whole ms): the scrapes take at most
/// 1/PACE of the worker's time (a few % with short slices), and at most ~16 KiB reach a client
/// every 1.5-2 ms (a busy server's own clients get the CPU first).
const PACE: u64 = 10;
const BUSY_INTERVAL_NS: u64 = 1_500_000;
/// Requests per second per worker (nginx's stub_status counter, when built in) above which the
/// worker counts as busy, whether or not the requests happened to come between two slices
/// (the clients may not have had the CPU just then).
#[cfg(gm_stat_stub)]
const BUSY_RATE: u64 = 2_000;
/// Once busy, scrapes stay paced for this long: a quiet moment in the middle of traffic is not
/// the end of it.
const BUSY_HOLD_NS: u64 = 50_000_000;
/// The worker ran longer than this (CPU time, scrapes aside) before coming back to a scrape
/// after a slice, twice in a row: it served other events. CPU time, not the clock: a worker
/// the machine's other processes kept waiting did not serve anything meanwhile; twice: the
/// kernel's own work for the scrape's socket sometimes lands between two slices. (With the
/// clock and 20 µs, 2 to 8 of 20 complete scrapes of a 38 MB page on an idle worker were paced
/// for 50 ms or more by such false alarms.)
const BUSY_GAP_NS: u64 = 100_000;

/// Pacing state of this worker, shared by its scrapes (all on its event loop): two scrapes at
/// once share the budget.
pub struct Pacing {
    /// Until then the worker counts as busy with other traffic.
    busy_until: AtomicU64,
    /// While busy, no slice of any scrape starts before this.
    next_at: AtomicU64,
    /// Last sample of nginx's request counter: when, its value and our scrapes' count then.
    sampled_at: AtomicU64,
    sampled: AtomicU64,
    sampled_own: AtomicU64,
    /// Scrapes this worker started (they are requests too, not traffic to protect).
    scrapes: AtomicU64,
    /// Time the event loop spent on scrapes (slices and their write events), all of them:
    /// a scrape's wake-up delayed by another scrape is not other traffic. The clock's time,
    /// and the worker's CPU time.
    work_ns: AtomicU64,
    work_cpu_ns: AtomicU64,
    /// Consecutive wake-ups after a gap longer than BUSY_GAP_NS.
    gaps: AtomicU64,
}

/// This worker's pacing state (each worker process has its own copy).
pub static PACING: Pacing = Pacing {
    busy_until: AtomicU64::new(0),
    next_at: AtomicU64::new(0),
    sampled_at: AtomicU64::new(0),
    sampled: AtomicU64::new(0),
    sampled_own: AtomicU64::new(0),
    scrapes: AtomicU64::new(0),
    work_ns: AtomicU64::new(0),
    work_cpu_ns: AtomicU64::new(0),
    gaps: AtomicU64::new(0),
};

impl Pacing {
    /// A scrape starts (a request too, but not traffic to protect).
    pub fn scrape_started(&self) {
        self.scrapes.fetch_add(1, Relaxed);
    }

    /// CPU time spent on scrapes so far (see `work_ns`).
    pub fn work_cpu(&self) -> u64 {
        self.work_cpu_ns.load(Relaxed)
    }

    /// The loop spent `ns` (`cpu` of CPU time) on a scrape outside its slices (its write
    /// events).
    pub fn add_work(&self, ns: u64, cpu: u64) {
        self.work_ns.fetch_add(ns, Relaxed);
        self.work_cpu_ns.fetch_add(cpu, Relaxed);
    }

    /// A scrape's slice ran from `t0` to `end` and took `cpu` of CPU time: counted as scrape
    /// work, and while busy the next slice of any scrape waits (see PACE). Returns the scrape
    /// work so far in CPU time.
    pub fn slice_done(&self, t0: u64, end: u64, cpu: u64) -> u64 {
        self.next_at.store(
            (t0 + PACE * (end - t0)).max(end + BUSY_INTERVAL_NS),
            Relaxed,
        );
        self.work_ns.fetch_add(end - t0, Relaxed);
        self.work_cpu_ns.fetch_add(cpu, Relaxed) + cpu
    }

    /// A scrape woke up from its posted event at `now`, with the worker's CPU time at
    /// `cpu_now`, its last slice having ended at CPU time `cpu_end` with the scrape work then
    /// at `work_then`: if the worker ran longer than BUSY_GAP_NS before coming back, scrapes
    /// aside, twice in a row, it served other traffic.
    pub fn woke_up(&self, now: u64, cpu_now: u64, cpu_end: u64, work_then: u64) {
        let scrapes = self.work_cpu().saturating_sub(work_then);
        if cpu_now.saturating_sub(cpu_end).saturating_sub(scrapes) > BUSY_GAP_NS {
            if self.gaps.fetch_add(1, Relaxed) >= 1 {
                self.busy(now);
            }
        } else {
            self.gaps.store(0, Relaxed);
        }
    }

    /// Whether the worker is busy with other traffic at `now`, and if so the earliest start of
    /// the next slice.
    pub fn paced(&self, now: u64) -> Option<u64> {
        self.sample(now);
        (now < self.busy_until.load(Relaxed)).then(|| self.next_at.load(Relaxed))
    }

    /// Notes other traffic now.
    fn busy(&self, now: u64) {
        self.busy_until.store(now + BUSY_HOLD_NS, Relaxed);
    }

    /// Samples the request rate (stub_status' counter, all workers) at least 1 ms apart.
    #[cfg(gm_stat_stub)]
    fn sample(&self, now: u64) {
        let Some(n) = requests_counter() else { return };
        let dt = now.saturating_sub(self.sampled_at.load(Relaxed));
        if dt < 1_000_000 {
            return;
        }
        let own = self.scrapes.load(Relaxed);
        let seen = n
            .saturating_sub(self.sampled.load(Relaxed))
            .saturating_sub(own.saturating_sub(self.sampled_own.load(Relaxed)));
        if seen.saturating_mul(1_000_000_000) > BUSY_RATE * worker_processes() * dt {
            self.busy(now);
        }
        self.sampled_at.store(now, Relaxed);
        self.sampled.store(n, Relaxed);
        self.sampled_own.store(own, Relaxed);
    }

    #[cfg(not(gm_stat_stub))]
    fn sample(&self, _now: u64) {}
}

/// nginx's count of client requests (all workers), if stub_status is built in.
#[cfg(gm_stat_stub)]
fn requests_counter() -> Option<u64> {
    // SAFETY: with stub_status compiled in, nginx points ngx_stat_requests at a shared atomic
    // counter before any request is served.
    unsafe {
        let p = ptr::read(ptr::addr_of!(ngx_stat_requests));
        (!p.is_null()).then(|| ptr::read_volatile(p) as u64)
    }
}

/// `worker_processes` of the running cycle (at least 1).
#[cfg(gm_stat_stub)]
fn worker_processes() -> u64 {
    // SAFETY: ngx_cycle and its core conf are valid in a worker.
    unsafe {
        let ccf = *(*ngx_cycle).conf_ctx.add(ngx_core_module.index) as *const ngx_core_conf_t;
        if ccf.is_null() {
            1
        } else {
            ((*ccf).worker_processes as u64).max(1)
        }
    }
}

/// The calling thread's CPU time in nanoseconds (`CLOCK_THREAD_CPUTIME_ID`).
pub fn cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}

/// `CLOCK_MONOTONIC` in nanoseconds (the vDSO: no system call).
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}
