//! The shared memory zone: creation, reuse across reloads, and the insert lock.
//!
//! The zone is nginx's slab pool; the module takes (almost) all of its pages as one region
//! formatted by `gateway_metrics_core::store`. `shpool->data` points at the region so that a
//! reload that keeps the zone (same name and size) finds it again with its counters.

use std::ffi::c_void;
use std::ptr;
use std::sync::atomic::AtomicU64;

use gateway_metrics_core::buckets::{Histogram, Histograms};
use gateway_metrics_core::render::CustomFamily;
use gateway_metrics_core::store::{InsertLock, Limits, Store};
use nginx_sys::*;

use crate::error::ConfError;

/// What the zone is configured with: the http block's settings that shape its series, handed
/// over once the block is parsed (postconfiguration), before nginx initialises the zone.
#[derive(Default)]
pub struct ZoneSpec {
    /// `gateway_metrics_max_series`.
    pub max_series: u64,
    /// The built-in histograms' bucket bounds.
    pub bounds: Histograms<Vec<f64>>,
    /// The declared families, in declaration order.
    pub custom: Vec<CustomFamily>,
}

/// Per-cycle state of the zone, allocated in the configuration pool.
pub struct ZoneCtx {
    pub name: String,
    pub spec: ZoneSpec,
    shpool: *mut ngx_slab_pool_t,
    region: *const AtomicU64,
    words: usize,
    /// Layout ids of the built-in histograms (0: not registered).
    pub layouts: Histograms<u8>,
    /// The declared families with their layout ids (0 for non-histograms), in declaration
    /// order: built once here, in the shape the renderer takes.
    pub custom: Vec<(CustomFamily, u8)>,
}

/// nginx's shm mutex of the zone's slab pool: works across processes and is force-unlocked by
/// the master when a worker dies holding it.
#[derive(Clone, Copy)]
pub struct ShmLock(*mut ngx_shmtx_t);

impl InsertLock for ShmLock {
    fn lock(&self) {
        // SAFETY: the mutex lives in the zone, mapped for the process's lifetime.
        unsafe { ngx_shmtx_lock(self.0) }
    }
    fn unlock(&self) {
        // SAFETY: as above; called by the Guard that locked it.
        unsafe { ngx_shmtx_unlock(self.0) };
    }
}

impl ZoneCtx {
    /// The store, once the zone is initialised.
    pub fn store(&self) -> Option<Store<'static>> {
        if self.region.is_null() {
            return None;
        }
        // SAFETY: region points at `words` AtomicU64-aligned words of shared memory that stay
        // mapped for the life of the process; all access goes through atomics.
        let words = unsafe { std::slice::from_raw_parts(self.region, self.words) };
        // Validated when the zone was initialised (init below); the region never moves.
        Store::attach(words)
    }

    pub fn lock(&self) -> ShmLock {
        // SAFETY: shpool is the zone's slab pool, set with region.
        ShmLock(unsafe { ptr::addr_of_mut!((*self.shpool).mutex) })
    }

    pub fn limits(&self) -> Limits {
        Limits {
            max_series: self.spec.max_series,
        }
    }

    /// Initialises the zone in the master (and again on every reload).
    fn init(&mut self, zone: &ngx_shm_zone_t, reused: bool) -> Result<bool, String> {
        let shpool = zone.shm.addr as *mut ngx_slab_pool_t;
        let base = zone.shm.addr as usize;
        let end = base + zone.shm.size;
        self.shpool = shpool;
        // SAFETY: nginx formatted the zone as a slab pool before calling init; we are the only
        // code running (the master, between cycles), and the slab calls lock themselves.
        let region = unsafe {
            if reused && !(*shpool).data.is_null() {
                (*shpool).data as *mut u8
            } else {
                let pages = (*shpool).pfree.saturating_sub(1);
                let bytes = pages * ngx_pagesize;
                let p = ngx_slab_alloc(shpool, bytes) as *mut u8;
                if p.is_null() {
                    return Err(format!(
                        "cannot allocate {bytes} bytes in zone \"{}\"",
                        self.name
                    ));
                }
                (*shpool).data = p as *mut c_void;
                ptr::write_bytes(p, 0, 64);
                // words: the size we allocated; remembered in the region's own header.
                self.words = bytes / 8;
                p
            }
        };
        if !(region as usize).is_multiple_of(8)
            || (region as usize) < base
            || region as usize >= end
        {
            return Err("zone data pointer out of bounds".into());
        }
        if self.words == 0 {
            // A reused region: its header says how long it is; check it against the mapping.
            // SAFETY: region is 8-aligned and inside the mapping (checked above).
            let total = unsafe {
                (*(region as *const AtomicU64).add(2)).load(std::sync::atomic::Ordering::Acquire)
            };
            let max = (end - region as usize) / 8;
            self.words = if total == 0 || total as usize > max {
                max
            } else {
                total as usize
            };
        }
        // SAFETY: as in store(): `words` words of mapped shared memory, atomics only.
        let words = unsafe { std::slice::from_raw_parts(region as *const AtomicU64, self.words) };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        // A zone nginx has just mapped is all zero: formatting it writes only its header.
        let (store, kept) =
            Store::open_or_format(words, now, !reused).map_err(|e| e.to_string())?;
        self.region = region as *const AtomicU64;
        let lock = self.lock();
        let spec = &self.spec;
        // A layout the zone cannot remember fails the configuration (a reload keeps the running
        // one): recording with another layout's bounds would put observations in wrong buckets.
        let register = |bounds: &[f64], what: &str| {
            store.register_layout(&lock, bounds).map_err(|e| {
                format!(
                    "cannot register the bucket layout of {what}: {e} (a zone remembers {} \
                     distinct layouts for the series it keeps; restore an earlier bucket list, \
                     or rename or resize the zone to start a new one)",
                    gateway_metrics_core::store::MAX_LAYOUTS
                )
            })
        };
        for h in Histogram::ALL {
            *self.layouts.get_mut(h) = register(spec.bounds.get(h), h.directive())?;
        }
        let mut custom = Vec::with_capacity(spec.custom.len());
        for f in &spec.custom {
            let layout = if f.bounds.is_empty() {
                0
            } else {
                register(&f.bounds, &format!("histogram \"{}\"", f.name))?
            };
            custom.push((f.clone(), layout));
        }
        self.custom = custom;
        Ok(kept)
    }
}

/// Adds the zone while parsing `gateway_metrics_zone`.
pub fn add_zone(cf: &mut ngx_conf_t, name: &[u8], size: usize) -> Result<*mut ZoneCtx, ConfError> {
    let ctx = ZoneCtx {
        name: String::from_utf8_lossy(name).into_owned(),
        spec: ZoneSpec::default(),
        shpool: ptr::null_mut(),
        region: ptr::null(),
        words: 0,
        layouts: Histograms::default(),
        custom: Vec::new(),
    };
    // SAFETY: the configuration's pool lives as long as the cycle the zone context serves.
    let ctx = unsafe { crate::boundary::pool_alloc(cf.pool, ctx) };
    // nginx keeps the name's pointer: it goes into the pool too.
    let mut zname = crate::boundary::conf_copy(cf, name);
    let (false, Some(zname)) = (ctx.is_null(), zname.as_mut()) else {
        return Err(ConfError::msg("out of memory"));
    };
    let tag = crate::boundary::module_tag();
    // SAFETY: cf is the conf being parsed; nginx returns its zone entry (new or of this name).
    let zone = unsafe { ngx_shared_memory_add(cf, zname, size, tag).as_mut() }
        .ok_or(ConfError::msg("cannot add shared memory zone"))?;
    if !zone.data.is_null() {
        return Err(ConfError::Other(format!(
            "zone \"{}\" is already used",
            String::from_utf8_lossy(name)
        )));
    }
    zone.init = Some(init_zone);
    zone.data = ctx as *mut c_void;
    Ok(ctx)
}

unsafe extern "C" fn init_zone(zone: *mut ngx_shm_zone_t, data: *mut c_void) -> ngx_int_t {
    // SAFETY: nginx passes our zone, whose data is the ZoneCtx set in add_zone; `data` is the
    // previous cycle's ZoneCtx when the zone is reused.
    let (zone, ctx) = unsafe { (&*zone, &mut *((*zone).data as *mut ZoneCtx)) };
    // SAFETY: ngx_cycle is valid in the master while it initialises zones.
    let log = unsafe { (*ngx_cycle).log };
    match ctx.init(zone, !data.is_null()) {
        Ok(kept) => {
            ngx::ngx_log_error!(
                NGX_LOG_NOTICE,
                log,
                "gateway_metrics: zone \"{}\" {} ({} bytes)",
                ctx.name,
                if kept {
                    "reused, counters kept"
                } else {
                    "initialised"
                },
                ctx.words * 8
            );
            NGX_OK as ngx_int_t
        }
        Err(e) => {
            ngx::ngx_log_error!(
                NGX_LOG_EMERG,
                log,
                "gateway_metrics: zone \"{}\": {}",
                ctx.name,
                e
            );
            NGX_ERROR as ngx_int_t
        }
    }
}

/// Is the process alive? (`kill(pid, 0)`: EPERM still means it exists.)
pub fn pid_alive(pid: u64) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks for the process's existence.
    let rc = unsafe { kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}
