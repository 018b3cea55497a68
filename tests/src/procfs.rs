//! Readers of `/proc`: what the kernel says about a process and its threads
//! (privileges, nice values, transparent huge pages, listening Unix
//! sockets).

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

/// The nice value this test process runs at, which a daemon started from
/// it inherits (not 0 under `nice cargo test`).
pub fn own_nice() -> i32 {
    nice_of(&std::fs::read_to_string("/proc/thread-self/stat").unwrap())
}

/// The nice value in a task's `stat` line.
fn nice_of(stat: &str) -> i32 {
    // Fields after the parenthesised name: state is field 3, nice field 19.
    let after = stat.rsplit_once(')').unwrap().1;
    after.split_whitespace().nth(16).unwrap().parse().unwrap()
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
        all.push((comm.trim().to_string(), nice_of(&stat)));
    }
    let found: Vec<i32> = all
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| *v)
        .collect();
    assert!(!found.is_empty(), "no thread named {name:?}: {all:?}");
    found
}

/// The `THP_enabled` flag of a process (`"self"` or a pid): 0 when
/// transparent huge pages are off for it by `prctl(PR_SET_THP_DISABLE)`.
/// The kernel prints the process's own flag, whatever the system-wide
/// policy in `/sys/kernel/mm/transparent_hugepage/enabled` says.
pub fn thp_enabled(pid: &str) -> u8 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("THP_enabled:"))
        .unwrap_or_else(|| panic!("no THP_enabled in /proc/{pid}/status"))
        .trim()
        .parse()
        .unwrap()
}

/// Whether some process listens on the Unix socket at `path` (an entry of
/// `/proc/net/unix` with that path and the accepting flag).
pub fn unix_socket_listens(path: &std::path::Path) -> bool {
    // __SO_ACCEPTCON in the Flags column: the socket listens.
    const ACCEPTING: u32 = 0x10000;
    let path = path.to_string_lossy();
    let table = std::fs::read_to_string("/proc/net/unix").unwrap();
    // Num RefCount Protocol Flags Type St Inode [Path]
    table.lines().skip(1).any(|l| {
        let cols: Vec<&str> = l.split_whitespace().collect();
        cols.len() >= 8
            && cols[7] == path
            && u32::from_str_radix(cols[3], 16).is_ok_and(|f| f & ACCEPTING != 0)
    })
}

/// How many TCP sockets on this machine are in CLOSE-WAIT towards `port`
/// on the remote side: closed by that peer, not yet closed by their owner.
pub fn close_wait_to(port: u16) -> usize {
    const CLOSE_WAIT: &str = "08";
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .map(|table| {
            table
                .lines()
                .skip(1)
                .filter(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    let remote_port = fields
                        .get(2)
                        .and_then(|a| a.rsplit_once(':'))
                        .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
                    remote_port == Some(port) && fields.get(3) == Some(&CLOSE_WAIT)
                })
                .count()
        })
        .sum()
}
