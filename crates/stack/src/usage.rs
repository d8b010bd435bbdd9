//! CPU and memory of running services: native servers from `/proc` (the server process and its
//! children, e.g. Postgres' backends), containers from the engine's one-shot stats.
//!
//! CPU is a share of one core over the time since the previous reading, so the first reading
//! of a process has memory but no CPU.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use bollard::container::{MemoryStatsStats, Stats, StatsOptions};
use futures::StreamExt;

/// What one service (or process) uses now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ResourceUsage {
    /// Percent of one core since the previous reading (100 = one core busy); `None` on the
    /// first reading.
    pub cpu_percent: Option<f32>,
    /// Resident memory.
    pub memory_bytes: u64,
}

/// One line of `/proc/<pid>/stat` that matters here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ProcStat {
    parent: u32,
    /// User plus system CPU time, in clock ticks.
    ticks: u64,
    /// Resident set size, in pages.
    rss_pages: u64,
}

/// Parses `/proc/<pid>/stat`. The command name (field 2) may contain spaces and parentheses,
/// so the fields are counted from its closing parenthesis.
fn parse_stat(text: &str) -> Option<ProcStat> {
    let after_name = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // After the name: state(3) ppid(4) … utime(14) stime(15) … rss(24); index = field - 3.
    let number = |field: usize| fields.get(field - 3)?.parse::<u64>().ok();
    Some(ProcStat {
        parent: u32::try_from(number(4)?).ok()?,
        ticks: number(14)? + number(15)?,
        rss_pages: number(24)?,
    })
}

/// One process's stat; `None` when it has ended (or never was).
fn read_stat(pid: u32) -> Option<ProcStat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Every process on the machine, read once per sample: finding a process's children takes
/// every process's parent.
fn process_table() -> HashMap<u32, ProcStat> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return HashMap::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            // A process may end between the listing and the read: it is simply not counted.
            Some((pid, read_stat(pid)?))
        })
        .collect()
}

/// `root` and, with `children`, every process below it.
fn tree(table: &HashMap<u32, ProcStat>, root: u32, children: bool) -> Vec<u32> {
    let mut members = vec![root];
    if children {
        let mut index = 0;
        while index < members.len() {
            let parent = members[index];
            members.extend(
                table
                    .iter()
                    .filter(|(_, stat)| stat.parent == parent)
                    .map(|(pid, _)| *pid),
            );
            index += 1;
        }
    }
    members.retain(|pid| table.contains_key(pid));
    members
}

/// Reads processes (with or without their children) and remembers each one's CPU time, so the
/// next reading can say how busy it was in between.
pub struct ProcessSampler {
    previous: Mutex<HashMap<u32, (u64, Instant)>>,
    ticks_per_second: f64,
    page_size: u64,
}

impl Default for ProcessSampler {
    fn default() -> Self {
        let sysconf = |var| {
            nix::unistd::sysconf(var)
                .ok()
                .flatten()
                .and_then(|v| u64::try_from(v).ok())
        };
        Self {
            previous: Mutex::new(HashMap::new()),
            ticks_per_second: sysconf(nix::unistd::SysconfVar::CLK_TCK).unwrap_or(100) as f64,
            page_size: sysconf(nix::unistd::SysconfVar::PAGE_SIZE).unwrap_or(4096),
        }
    }
}

impl ProcessSampler {
    /// Usage of each `(pid, with children)`, keyed by pid; a pid that is gone is left out.
    pub fn sample(&self, processes: &[(u32, bool)]) -> HashMap<u32, ResourceUsage> {
        // Without children, only the processes themselves are read, not the whole machine
        // (hundreds of files every few seconds for the app's own figures).
        let table = if processes.iter().any(|&(_, children)| children) {
            process_table()
        } else {
            processes
                .iter()
                .filter_map(|&(pid, _)| Some((pid, read_stat(pid)?)))
                .collect()
        };
        let now = Instant::now();
        let mut previous = self
            .previous
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut next = HashMap::new();
        let mut usage = HashMap::new();
        for &(pid, children) in processes {
            let members = tree(&table, pid, children);
            if members.is_empty() {
                continue;
            }
            let ticks: u64 = members.iter().map(|p| table[p].ticks).sum();
            let pages: u64 = members.iter().map(|p| table[p].rss_pages).sum();
            // A child that ended takes its ticks with it: a smaller total gives no reading.
            let cpu_percent = previous.get(&pid).and_then(|&(before, at)| {
                let seconds = now.duration_since(at).as_secs_f64();
                (ticks >= before && seconds > 0.0).then(|| {
                    ((ticks - before) as f64 / self.ticks_per_second / seconds * 100.0) as f32
                })
            });
            next.insert(pid, (ticks, now));
            usage.insert(
                pid,
                ResourceUsage {
                    cpu_percent,
                    memory_bytes: pages * self.page_size,
                },
            );
        }
        *previous = next;
        usage
    }
}

/// A container's usage from one stats reading (the engine takes two samples about a second
/// apart, so CPU is known at once). Memory excludes the page cache, as `docker stats` does.
pub(crate) async fn container_usage(docker: &bollard::Docker, name: &str) -> Option<ResourceUsage> {
    let options = StatsOptions {
        stream: false,
        one_shot: false,
    };
    let stats = docker.stats(name, Some(options)).next().await?.ok()?;
    Some(usage_from_stats(&stats))
}

fn usage_from_stats(stats: &Stats) -> ResourceUsage {
    let cpu = &stats.cpu_stats;
    let before = &stats.precpu_stats;
    let busy = cpu
        .cpu_usage
        .total_usage
        .checked_sub(before.cpu_usage.total_usage);
    let total = cpu
        .system_cpu_usage
        .zip(before.system_cpu_usage)
        .and_then(|(now, then)| now.checked_sub(then))
        .filter(|delta| *delta > 0);
    let cores = cpu.online_cpus.unwrap_or(1).max(1);
    let cpu_percent = busy
        .zip(total)
        .map(|(busy, total)| (busy as f64 / total as f64 * cores as f64 * 100.0) as f32);
    let cache = match stats.memory_stats.stats {
        Some(MemoryStatsStats::V1(v1)) => v1.total_inactive_file,
        Some(MemoryStatsStats::V2(v2)) => v2.inactive_file,
        None => 0,
    };
    ResourceUsage {
        cpu_percent,
        memory_bytes: stats.memory_stats.usage.unwrap_or(0).saturating_sub(cache),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_odd_command_names_parse() {
        // Fields after the name: state ppid pgrp session tty tpgid flags minflt cminflt majflt
        // cmajflt utime stime cutime cstime priority nice threads itrealvalue starttime vsize rss
        let line = "42 (post gres) (x)) S 7 42 42 0 -1 4194560 100 0 0 0 30 12 0 0 20 0 1 0 \
                    500 1000000 250 18446744073709551615";
        assert_eq!(
            parse_stat(line),
            Some(ProcStat {
                parent: 7,
                ticks: 42,
                rss_pages: 250
            })
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn a_tree_holds_the_children_of_children() {
        let stat = |parent| ProcStat {
            parent,
            ticks: 0,
            rss_pages: 0,
        };
        let table = HashMap::from([(1, stat(0)), (10, stat(1)), (11, stat(10)), (20, stat(1))]);
        let mut members = tree(&table, 10, true);
        members.sort();
        assert_eq!(members, [10, 11]);
        assert_eq!(tree(&table, 10, false), [10]);
        assert!(tree(&table, 99, true).is_empty());
    }

    #[test]
    fn this_process_has_memory_at_once_and_cpu_from_the_second_reading() {
        let sampler = ProcessSampler::default();
        let me = std::process::id();
        let first = sampler.sample(&[(me, false)]);
        assert!(first[&me].memory_bytes > 1024 * 1024, "{first:?}");
        assert_eq!(first[&me].cpu_percent, None);
        // Burn some CPU so the second reading has something to measure.
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        std::hint::black_box(x);
        let second = sampler.sample(&[(me, false)]);
        assert!(second[&me].cpu_percent.is_some(), "{second:?}");
        assert!(sampler.sample(&[(u32::MAX, true)]).is_empty());
    }
}
