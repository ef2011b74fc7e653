//! The `process_*` gauges that Prometheus' Go client exports from every Go program, etcd included.
//! Dashboards and `etcdctl check datascale` (which reads `process_resident_memory_bytes` before and
//! after its writes) expect them next to etcd's own metrics. Read from `/proc` at each scrape.

use std::fs;

use super::sample;

/// Linux reports CPU times and start times in `/proc` in USER_HZ ticks, 100 on every architecture
/// concord builds for (proc(5)); std has no `sysconf` to ask.
const USER_HZ: f64 = 100.0;

/// What the process collector reads, in its units.
#[derive(Debug, Default, PartialEq)]
struct Stats {
    cpu_seconds: f64,
    start_time_seconds: f64,
    virtual_bytes: f64,
    resident_bytes: f64,
    open_fds: f64,
    max_fds: f64,
}

/// Appends the gauges; any that `/proc` does not give (another OS) are left out.
pub fn render(out: &mut String) {
    let Some(stats) = read() else { return };
    let rows = [
        (
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            stats.cpu_seconds,
        ),
        ("process_open_fds", "gauge", "Number of open file descriptors.", stats.open_fds),
        ("process_max_fds", "gauge", "Maximum number of open file descriptors.", stats.max_fds),
        ("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", stats.virtual_bytes),
        ("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", stats.resident_bytes),
        (
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            stats.start_time_seconds,
        ),
    ];
    for (name, kind, help, value) in rows {
        sample(out, name, kind, help, value);
    }
}

fn read() -> Option<Stats> {
    let stat = fs::read_to_string("/proc/self/stat").ok()?;
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let boot = fs::read_to_string("/proc/stat").ok()?;
    let limits = fs::read_to_string("/proc/self/limits").ok()?;
    let open_fds = fs::read_dir("/proc/self/fd").ok()?.count();
    let mut stats = parse(&stat, &status, &boot, &limits)?;
    stats.open_fds = open_fds as f64;
    Some(stats)
}

/// The numbers out of `/proc/self/stat`, `/proc/self/status`, `/proc/stat` and `/proc/self/limits`.
fn parse(stat: &str, status: &str, boot: &str, limits: &str) -> Option<Stats> {
    // The command name in parentheses may hold spaces; the fields after it are numbered from 3.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<f64>().ok();
    let kib = |key: &str| {
        let line = status.lines().find(|l| l.starts_with(key))?;
        line[key.len()..].split_whitespace().next()?.parse::<f64>().ok().map(|k| k * 1024.0)
    };
    let boot_time = boot.lines().find_map(|l| l.strip_prefix("btime "))?.trim().parse::<f64>().ok()?;
    let max_fds = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    Some(Stats {
        cpu_seconds: (field(14)? + field(15)?) / USER_HZ,
        start_time_seconds: boot_time + field(22)? / USER_HZ,
        virtual_bytes: field(23)?,
        resident_bytes: kib("VmRSS:")?,
        open_fds: 0.0,
        max_fds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_procfs() {
        let stat = "4242 (con cord) S 1 4242 4242 0 -1 4194560 1500 0 0 0 250 50 0 0 20 0 9 0 12000 \
                    104857600 2560 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0";
        let status = "Name:\tconcord\nVmPeak:\t  200000 kB\nVmRSS:\t   10240 kB\nThreads:\t9\n";
        let boot = "cpu  1 2 3\nbtime 1764979200\nprocesses 99\n";
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max open files            1024                 524288               files     \n";
        let s = parse(stat, status, boot, limits).expect("parses");
        assert_eq!(
            s,
            Stats {
                cpu_seconds: 3.0,
                start_time_seconds: 1764979200.0 + 120.0,
                virtual_bytes: 104857600.0,
                resident_bytes: 10240.0 * 1024.0,
                open_fds: 0.0,
                max_fds: 1024.0,
            }
        );
    }

    #[test]
    fn reads_this_process() {
        let s = read().expect("/proc");
        assert!(s.resident_bytes > 0.0 && s.open_fds > 0.0 && s.max_fds > 0.0, "{s:?}");
        let mut out = String::new();
        render(&mut out);
        assert!(out.contains("\nprocess_resident_memory_bytes "), "{out}");
    }
}
