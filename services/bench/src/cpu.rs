//! CPU time by thread name, for saying what bounds a figure: a reading of
//! this process's threads (`/proc/self/task/*/schedstat`) and of every
//! Postgres process on the machine, taken before and after a phase.
//!
//! Each thread is followed by its id and its time summed by name (the
//! runtime's workers, the blocking pool, all Postgres processes); a thread
//! that started during the phase counts from zero, one that ended during it
//! is left out (its time since the first reading cannot be read any more).

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

/// CPU nanoseconds of each thread (by id) at one moment, with its name.
pub struct CpuReading {
    at: Instant,
    threads: HashMap<u64, (String, u64)>,
}

fn read_u64(path: &str) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn add_threads(dir: &str, name: Option<&str>, threads: &mut HashMap<u64, (String, u64)>) {
    let Ok(tasks) = std::fs::read_dir(dir) else {
        return;
    };
    for task in tasks.flatten() {
        let path = task.path();
        let Some(tid) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        let Some(ns) = read_u64(&format!("{}/schedstat", path.display())) else {
            continue;
        };
        let thread = match name {
            Some(n) => n.to_string(),
            None => std::fs::read_to_string(path.join("comm"))
                .map(|c| c.trim().to_string())
                .unwrap_or_default(),
        };
        threads.insert(tid, (thread, ns));
    }
}

/// CPU seconds of the first thread named `name` of process `pid`, `None`
/// when it has none.
pub fn thread_seconds(pid: u32, name: &str) -> Option<f64> {
    let mut threads = HashMap::new();
    add_threads(&format!("/proc/{pid}/task"), None, &mut threads);
    threads
        .into_values()
        .find(|(n, _)| n == name)
        .map(|(_, ns)| ns as f64 * 1e-9)
}

impl CpuReading {
    pub fn now() -> CpuReading {
        let mut threads = HashMap::new();
        add_threads("/proc/self/task", None, &mut threads);
        if let Ok(procs) = std::fs::read_dir("/proc") {
            for p in procs.flatten() {
                let comm = std::fs::read_to_string(p.path().join("comm")).unwrap_or_default();
                if comm.trim() == "postgres" {
                    add_threads(
                        &format!("{}/task", p.path().display()),
                        Some("postgres (all)"),
                        &mut threads,
                    );
                }
            }
        }
        CpuReading {
            at: Instant::now(),
            threads,
        }
    }

    /// One line: the wall time since `self`, and each thread name's CPU
    /// share of one core over it (names under 2 % are left out of the list,
    /// not out of the sum).
    pub fn report_since(&self, phase: &str) -> String {
        let now = CpuReading::now();
        let wall = now.at.duration_since(self.at).as_secs_f64();
        let mut by_name: BTreeMap<&str, u64> = BTreeMap::new();
        for (tid, (name, ns)) in &now.threads {
            let before = self.threads.get(tid).map_or(0, |(_, ns)| *ns);
            *by_name.entry(name.as_str()).or_default() += ns.saturating_sub(before);
        }
        let mut shares: Vec<(&str, f64)> = by_name
            .into_iter()
            .map(|(name, ns)| (name, ns as f64 * 1e-9 / wall))
            .collect();
        let total: f64 = shares.iter().map(|(_, s)| s).sum();
        shares.retain(|(_, share)| *share >= 0.02);
        shares.sort_by(|a, b| b.1.total_cmp(&a.1));
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
