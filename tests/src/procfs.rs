//! Readers of `/proc`: what the kernel says about a process and its threads
//! (privileges, nice values), for the tests of the daemon's priorities.

/// Whether this process may lower a thread's nice value to -10 (what the
/// daemon started from it inherits): `CAP_SYS_NICE`, or an `RLIMIT_NICE`
/// soft limit of at least 20 - (-10) = 30.
pub fn may_lower_nice_to_minus_10() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    const CAP_SYS_NICE: u32 = 23;
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let rlimit_nice = limits
        .lines()
        .find(|l| l.starts_with("Max nice priority"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|soft| soft.parse::<u64>().ok())
        .unwrap_or(0);
    cap_eff & (1 << CAP_SYS_NICE) != 0 || rlimit_nice >= 30
}

/// The nice values of the threads of process `pid` named `name`, one per
/// thread; panics when no thread has that name.
pub fn thread_nices(pid: u32, name: &str) -> Vec<i32> {
    let mut all = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let (Ok(comm), Ok(stat)) = (
            std::fs::read_to_string(dir.join("comm")),
            std::fs::read_to_string(dir.join("stat")),
        ) else {
            continue; // the thread ended meanwhile
        };
        // Fields after the parenthesised name: state is field 3, nice field 19.
        let after = stat.rsplit_once(')').unwrap().1;
        let nice: i32 = after.split_whitespace().nth(16).unwrap().parse().unwrap();
        all.push((comm.trim().to_string(), nice));
    }
    let found: Vec<i32> = all
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| *v)
        .collect();
    assert!(!found.is_empty(), "no thread named {name:?}: {all:?}");
    found
}
