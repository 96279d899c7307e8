//! A plugin's CPU budget: a share of one core, measured from its thread's
//! own CPU time (not fuel: fuel changes the compiled code, so the engine
//! hash, every cache and all code a hub compiled).
//!
//! A token bucket in CPU seconds, filled at the share per second of wall
//! time, up to one second's worth. Reading the thread's CPU clock is a
//! system call that costs as much as a small plugin's tick, so it is read
//! only when the call's wall time (never less than the CPU time it used)
//! says the plugin may be over its budget: a plugin well within its share
//! costs a few additions per tick.

use harvester_api::CpuShare;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct CpuBudget {
    share: f64,
    /// CPU seconds the plugin may still use; negative is a debt.
    tokens: f64,
    refilled: Instant,
    /// Wall seconds of calls since the CPU clock was last read: an upper
    /// bound of the CPU time they used.
    unmeasured: f64,
    /// The thread's CPU clock at the last reading.
    clock: Option<Duration>,
}

/// The calling thread's CPU time.
fn thread_cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec.max(0) as u64, t.tv_nsec.clamp(0, 999_999_999) as u32)
}

impl CpuBudget {
    pub fn new(share: CpuShare) -> CpuBudget {
        let share = share.fraction();
        CpuBudget {
            share,
            tokens: share,
            refilled: Instant::now(),
            unmeasured: 0.0,
            clock: None,
        }
    }

    /// Starts measuring on the calling thread: the plugin's own, which
    /// runs every call from now on.
    pub fn begin(&mut self) {
        self.clock = Some(thread_cpu_time());
        self.refilled = Instant::now();
    }

    /// A new version's share; what the plugin used is still owed.
    pub fn set_share(&mut self, share: CpuShare) {
        self.share = share.fraction();
    }

    /// Charges a call that took `wall` and ended at `now`, on the thread
    /// that ran it. Returns how long the plugin's next call must wait to
    /// bring it back within its share, if it is over.
    pub fn charge(&mut self, now: Instant, wall: Duration) -> Option<Duration> {
        let burst = self.share;
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.tokens = (self.tokens + elapsed * self.share).min(burst);
        self.unmeasured += wall.as_secs_f64();
        if self.unmeasured <= self.tokens {
            return None;
        }
        let clock = thread_cpu_time();
        let used = match self.clock.replace(clock) {
            Some(before) => clock.saturating_sub(before).as_secs_f64(),
            // Not begun on this thread: the calls' wall time, at most.
            None => self.unmeasured,
        };
        self.unmeasured = 0.0;
        self.tokens -= used;
        (self.tokens < 0.0).then(|| Duration::from_secs_f64(-self.tokens / self.share))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spin(d: Duration) -> Duration {
        let started = Instant::now();
        while started.elapsed() < d {
            std::hint::spin_loop();
        }
        started.elapsed()
    }

    #[test]
    fn a_plugin_within_its_share_waits_for_nothing_and_a_spinner_pays_its_debt() {
        let mut light = CpuBudget::new(CpuShare(500));
        let start = Instant::now();
        for i in 1..=100 {
            // 1 ms of work every 10 ms: a tenth of a core.
            let at = start + Duration::from_millis(10 * i);
            assert_eq!(light.charge(at, Duration::from_millis(1)), None);
        }
        assert!(light.clock.is_none(), "the CPU clock was never read");

        let mut spinner = CpuBudget::new(CpuShare(100));
        spinner.begin();
        let (cpu_before, began) = (thread_cpu_time(), Instant::now());
        // 300 ms of this thread's own CPU time, however long a loaded
        // machine takes to give it (bounded).
        while thread_cpu_time() - cpu_before < Duration::from_millis(300) && began.elapsed() < Duration::from_secs(20) {
            spin(Duration::from_millis(1));
        }
        let (wall, now) = (began.elapsed(), Instant::now());
        let cpu = (thread_cpu_time() - cpu_before).as_secs_f64();
        let wait = spinner.charge(now, wall).expect("over budget").as_secs_f64();
        // What it used, less the 100 ms of tokens it had (already full: the
        // refill meanwhile adds nothing), repaid at 100m: about 2 s.
        let owed = (cpu - 0.1) / 0.1;
        assert!(
            (wait - owed).abs() < 0.2,
            "wait {wait:.3}s, owed {owed:.3}s ({cpu:.3}s of CPU in {wall:?})"
        );
    }

    #[test]
    fn time_asleep_is_not_charged() {
        let mut b = CpuBudget::new(CpuShare(100));
        b.begin();
        let started = Instant::now();
        std::thread::sleep(Duration::from_millis(300));
        // 300 ms of wall time, almost no CPU: measured, and within budget.
        assert_eq!(b.charge(Instant::now(), started.elapsed()), None);
    }
}
