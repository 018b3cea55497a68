//! The process's memory uses small pages: no transparent huge pages.
//!
//! mimalloc asks the kernel for transparent huge pages on the memory it
//! reserves (`madvise(MADV_HUGEPAGE)`, which counts even where the system's
//! policy is the common `madvise`). The first touch of each 2 MiB region is
//! then one page fault that zeroes a whole huge page, in whichever thread
//! happens to touch it. On the project's box a switch that grew the control
//! thread's heap into a fresh region spent 7-8 ms of CPU in that fault
//! (perf: `clear_page_erms` under `do_huge_pmd_anonymous_page`, from
//! `mi_page_free_list_extend`): the slowest switches of a 200-switch run,
//! and the same can land on any request. With small pages the heap grows a
//! 4 KiB fault at a time.
//!
//! Huge pages bought nothing measurable on the data plane (`benches/ab.py`
//! with `MIMALLOC_ALLOW_THP=0` on one side: req/s 1.01x, CPU per request
//! 0.99x, memory per idle connection 0.98x), so, like Redis's `disable-thp`,
//! bgproxy turns them off for its own process at start. The system's
//! setting is left alone; the commands of deploy steps inherit the flag,
//! as they inherit bgproxy's limits.

use tracing::warn;

/// Turns transparent huge pages off for this process (all its threads).
pub fn use_small_pages() {
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        warn!("transparent huge pages stay on: prctl(PR_SET_THP_DISABLE) failed ({e}); a first touch of fresh memory may take a few milliseconds");
    }
}
