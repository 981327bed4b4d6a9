//! The process metrics Prometheus users expect from every exporter
//! (`process_resident_memory_bytes`, `process_open_fds`,
//! `process_max_fds`, `process_cpu_seconds_total`,
//! `process_start_time_seconds`), read from `/proc/self` when `/metrics`
//! is rendered, never on the request path. A file that is missing or
//! does not parse (not Linux, a restricted `/proc`) leaves its metric
//! out rather than reporting a wrong value.

use std::fmt::Write as _;

/// Clock ticks per second of `/proc/*/stat` (`USER_HZ`: 100 on every
/// Linux architecture sigma builds for).
const USER_HZ: f64 = 100.0;

/// What was read from `/proc/self`.
#[derive(Debug, Default, PartialEq)]
pub struct Process {
    /// Resident set size, bytes.
    pub rss_bytes: Option<u64>,
    /// Open file descriptors.
    pub open_fds: Option<u64>,
    /// The soft limit of open file descriptors.
    pub max_fds: Option<u64>,
    /// User plus system CPU time, seconds.
    pub cpu_seconds: Option<f64>,
    /// When the process started, seconds since the Unix epoch.
    pub start_time: Option<f64>,
}

impl Process {
    /// Reads the current values.
    pub fn read() -> Self {
        let status = std::fs::read_to_string("/proc/self/status").ok();
        let stat = std::fs::read_to_string("/proc/self/stat").ok();
        let limits = std::fs::read_to_string("/proc/self/limits").ok();
        let boot = std::fs::read_to_string("/proc/stat").ok();
        let (cpu_seconds, start_ticks) = stat.as_deref().map_or((None, None), parse_stat);
        Process {
            rss_bytes: status.as_deref().and_then(parse_rss),
            open_fds: std::fs::read_dir("/proc/self/fd")
                .ok()
                .map(|d| d.count() as u64),
            max_fds: limits.as_deref().and_then(parse_max_fds),
            cpu_seconds,
            start_time: start_ticks
                .zip(boot.as_deref().and_then(parse_btime))
                .map(|(ticks, btime)| btime as f64 + ticks as f64 / USER_HZ),
        }
    }

    /// Appends the exposition of what was read.
    pub fn render(&self, o: &mut String) {
        let mut gauge = |name: &str, help: &str, kind: &str, v: Option<String>| {
            if let Some(v) = v {
                let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
            }
        };
        gauge(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            "gauge",
            self.rss_bytes.map(|v| v.to_string()),
        );
        gauge(
            "process_open_fds",
            "Number of open file descriptors.",
            "gauge",
            self.open_fds.map(|v| v.to_string()),
        );
        gauge(
            "process_max_fds",
            "Maximum number of open file descriptors.",
            "gauge",
            self.max_fds.map(|v| v.to_string()),
        );
        gauge(
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds.",
            "counter",
            self.cpu_seconds.map(|v| v.to_string()),
        );
        gauge(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            "gauge",
            self.start_time.map(|v| v.to_string()),
        );
    }
}

/// `VmRSS:  1234 kB` of `/proc/self/status`, in bytes.
fn parse_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kb.checked_mul(1024)
}

/// CPU seconds (utime + stime) and the start time in ticks after boot,
/// from `/proc/self/stat`. The command name (field 2) may hold spaces and
/// parentheses, so the fields are counted after its last `)`.
fn parse_stat(stat: &str) -> (Option<f64>, Option<u64>) {
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return (None, None);
    };
    // `rest` starts at field 3 (state): utime is field 14, stime 15,
    // starttime 22.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Option<u64> { fields.get(n.checked_sub(3)?)?.parse().ok() };
    let cpu = field(14)
        .zip(field(15))
        .map(|(u, s)| u.saturating_add(s) as f64 / USER_HZ);
    (cpu, field(22))
}

/// `Max open files  SOFT  HARD  files` of `/proc/self/limits`.
fn parse_max_fds(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `btime SECONDS` of `/proc/stat`: when the machine booted.
fn parse_btime(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files_and_refuses_garbage() {
        assert_eq!(
            parse_rss("Name:\tsigma\nVmRSS:\t  2048 kB\n"),
            Some(2 << 20)
        );
        assert_eq!(parse_rss("VmRSS: lots\n"), None);
        let stat = "42 (sig ma) (x) S 1 2 3 4 5 6 7 8 9 10 250 150 0 0 20 0 4 0 12345 0 0";
        assert_eq!(parse_stat(stat), (Some(4.0), Some(12345)));
        assert_eq!(parse_stat("42 (sigma S 1"), (None, None));
        assert_eq!(parse_stat("42 (sigma) S 1"), (None, None));
        let limits = "Limit Soft Hard Units\nMax open files            1024                 524288               files\n";
        assert_eq!(parse_max_fds(limits), Some(1024));
        assert_eq!(
            parse_btime("cpu 1 2\nbtime 1700000000\n"),
            Some(1_700_000_000)
        );
        assert_eq!(parse_btime("cpu 1 2\n"), None);
    }

    #[test]
    fn this_process_is_readable() {
        let p = Process::read();
        assert!(p.rss_bytes.is_some_and(|r| r > 0), "{p:?}");
        assert!(p.open_fds.is_some_and(|n| n >= 3), "{p:?}");
        assert!(p.start_time.is_some_and(|t| t > 1.0e9), "{p:?}");
        let mut o = String::new();
        p.render(&mut o);
        assert!(
            o.contains("# TYPE process_cpu_seconds_total counter\n"),
            "{o}"
        );
    }
}
