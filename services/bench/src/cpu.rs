//! CPU time by thread name, for saying what bounds a figure: a reading of
//! this process's threads (`/proc/self/task/*/schedstat`) and of every
//! Postgres process on the machine, taken before and after a phase.
//!
//! Threads of the same name are summed (the runtime's workers, the blocking
//! pool); threads that ended during the phase are not counted.

use std::collections::BTreeMap;
use std::time::Instant;

/// CPU nanoseconds by thread name at one moment.
pub struct CpuReading {
    at: Instant,
    by_name: BTreeMap<String, u64>,
}

fn read_u64(path: &str) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn add_threads(dir: &str, name: Option<&str>, by_name: &mut BTreeMap<String, u64>) {
    let Ok(tasks) = std::fs::read_dir(dir) else {
        return;
    };
    for task in tasks.flatten() {
        let path = task.path();
        let Some(ns) = read_u64(&format!("{}/schedstat", path.display())) else {
            continue;
        };
        let thread = match name {
            Some(n) => n.to_string(),
            None => std::fs::read_to_string(path.join("comm"))
                .map(|c| c.trim().to_string())
                .unwrap_or_default(),
        };
        *by_name.entry(thread).or_default() += ns;
    }
}

impl CpuReading {
    pub fn now() -> CpuReading {
        let mut by_name = BTreeMap::new();
        add_threads("/proc/self/task", None, &mut by_name);
        if let Ok(procs) = std::fs::read_dir("/proc") {
            for p in procs.flatten() {
                let comm = std::fs::read_to_string(p.path().join("comm")).unwrap_or_default();
                if comm.trim() == "postgres" {
                    add_threads(
                        &format!("{}/task", p.path().display()),
                        Some("postgres (all)"),
                        &mut by_name,
                    );
                }
            }
        }
        CpuReading {
            at: Instant::now(),
            by_name,
        }
    }

    /// One line: the wall time since `self`, and each thread name's CPU
    /// share of one core over it (names under 2 % left out).
    pub fn report_since(&self, phase: &str) -> String {
        let now = CpuReading::now();
        let wall = now.at.duration_since(self.at).as_secs_f64();
        let mut shares: Vec<(String, f64)> = now
            .by_name
            .iter()
            .map(|(name, &ns)| {
                let before = self.by_name.get(name).copied().unwrap_or(0);
                (name.clone(), ns.saturating_sub(before) as f64 * 1e-9 / wall)
            })
            .filter(|(_, share)| *share >= 0.02)
            .collect();
        shares.sort_by(|a, b| b.1.total_cmp(&a.1));
        let total: f64 = shares.iter().map(|(_, s)| s).sum();
        let parts: Vec<String> = shares
            .iter()
            .map(|(name, share)| format!("{name} {:.0} %", share * 100.0))
            .collect();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        format!(
            "{phase}: {wall:.2} s wall; CPU by thread, % of one core: {}; sum {:.0} % of {}",
            parts.join(", "),
            total * 100.0,
            cores * 100
        )
    }
}
