//! What a confined supervisor must leave as it found it: the cgroups of every process that was
//! there before (and still is), every sysctl, the mounts of the host's mount namespace, and the
//! cgroup directories.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

/// Sysctls that change by themselves (counters, random values).
const VOLATILE: &[&str] = &[
    "fs.dentry-state",
    "fs.file-nr",
    "fs.inode-nr",
    "fs.inode-state",
    "fs.aio-nr",
    "fs.quota.",
    "kernel.ns_last_pid",
    "kernel.random.",
    "kernel.pty.nr",
    "net.netfilter.nf_conntrack_count",
];

/// Cgroups the VM's own init creates and removes per process, whatever the tests do.
const VOLATILE_CGROUPS: &[&str] = &["/sys/fs/cgroup/memory/process_api/"];

pub struct HostCheck {
    /// pid → (start time, /proc/PID/cgroup).
    cgroups: BTreeMap<u32, (String, String)>,
    sysctl: BTreeMap<String, String>,
    mounts: BTreeSet<String>,
    cgroup_dirs: BTreeSet<String>,
}

fn processes() -> BTreeMap<u32, (String, String)> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let (Ok(stat), Ok(cgroup)) = (
            std::fs::read_to_string(format!("/proc/{pid}/stat")),
            std::fs::read_to_string(format!("/proc/{pid}/cgroup")),
        ) else {
            continue;
        };
        // Field 22 (start time), counted after the command name in parentheses.
        let start = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(19))
            .unwrap_or_default()
            .to_string();
        out.insert(pid, (start, cgroup));
    }
    out
}

fn sysctl() -> BTreeMap<String, String> {
    let out = Command::new("sysctl")
        .arg("-a")
        .output()
        .expect("sysctl runs (Debian's procps)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(" = "))
        .filter(|(k, _)| !VOLATILE.iter().any(|v| k.starts_with(v)))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Mount point, type and source of each mount of this (the host's) mount namespace.
fn mounts() -> BTreeSet<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let tail = l.split(" - ").nth(1).unwrap_or_default();
            format!("{} {tail}", f.get(4).unwrap_or(&""))
        })
        .collect()
}

fn cgroup_dirs() -> BTreeSet<String> {
    fn walk(dir: &Path, out: &mut BTreeSet<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                let p = e.path();
                let shown = format!("{}/", p.display());
                if VOLATILE_CGROUPS.iter().any(|v| shown.starts_with(v)) {
                    continue;
                }
                out.insert(p.display().to_string());
                walk(&p, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(Path::new("/sys/fs/cgroup"), &mut out);
    out
}

impl HostCheck {
    pub fn take() -> Self {
        Self {
            cgroups: processes(),
            sysctl: sysctl(),
            mounts: mounts(),
            cgroup_dirs: cgroup_dirs(),
        }
    }

    /// Panics with every difference found.
    pub fn assert_unchanged(&self) {
        let mut problems = Vec::new();
        let now = processes();
        for (pid, (start, before)) in &self.cgroups {
            if let Some((start_now, after)) = now.get(pid) {
                if start_now == start && after != before {
                    problems.push(format!(
                        "process {pid} moved from cgroups\n{before}to\n{after}"
                    ));
                }
            }
        }
        let sysctl = sysctl();
        for (k, v) in &self.sysctl {
            match sysctl.get(k) {
                Some(now) if now != v => problems.push(format!("sysctl {k}: {v} -> {now}")),
                None => problems.push(format!("sysctl {k} is gone")),
                _ => {}
            }
        }
        for k in sysctl.keys().filter(|k| !self.sysctl.contains_key(*k)) {
            problems.push(format!("new sysctl {k}"));
        }
        let mounts = mounts();
        for m in mounts.difference(&self.mounts) {
            problems.push(format!("mount left behind: {m}"));
        }
        for m in self.mounts.difference(&mounts) {
            problems.push(format!("mount gone: {m}"));
        }
        let dirs = cgroup_dirs();
        for d in dirs.difference(&self.cgroup_dirs) {
            problems.push(format!("cgroup directory left behind: {d}"));
        }
        assert!(
            problems.is_empty(),
            "the host changed:\n{}",
            problems.join("\n")
        );
    }
}

/// Remove the cgroup directory `dir` and everything under it (empty cgroups only), deepest
/// first; a missing directory is fine.
pub fn remove_cgroup(dir: &Path) {
    let mut all = Vec::new();
    fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(&e.path(), out);
                }
            }
        }
        out.push(dir.to_path_buf());
    }
    if dir.exists() {
        walk(dir, &mut all);
    }
    for d in all {
        for _ in 0..50 {
            if std::fs::remove_dir(&d).is_ok() || !d.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}
