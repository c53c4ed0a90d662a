//! What the kernel says of a process's isolation, read from `/proc/<pid>`: its uid map, the links
//! of its network namespace, whether its `/` is read-only, and which process of a container is the
//! payload. Read only; never assumed from config.

use std::fs;

use crate::error::{Error, Result};

/// `/proc/<pid>/uid_map`, whitespace collapsed (`0 1073741824 65536`).
pub fn uid_map(pid: u32) -> Result<String> {
    let text = read(pid, "uid_map")?;
    Ok(text
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n"))
}

/// The interface names of `pid`'s network namespace (`/proc/<pid>/net/dev`).
pub fn net_links(pid: u32) -> Result<Vec<String>> {
    let text = read(pid, "net/dev")?;
    Ok(text
        .lines()
        .skip(2)
        .filter_map(|l| Some(l.split_once(':')?.0.trim().to_owned()))
        .collect())
}

/// Whether `/` is mounted read-only for `pid` (the last mount on `/` in its mountinfo wins).
pub fn read_only_root(pid: u32) -> Result<bool> {
    let text = read(pid, "mountinfo")?;
    text.lines()
        .rev()
        .find_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.get(4) == Some(&"/"))
                .then(|| f.get(5).is_some_and(|o| o.split(',').any(|o| o == "ro")))
        })
        .ok_or_else(|| Error::Runtime(format!("pid {pid} has no mount on / in its mountinfo")))
}

/// The pid as seen from the innermost pid namespace, from `NSpid:` in `/proc/<pid>/status`, and
/// how many namespaces deep it is.
pub fn ns_pid(pid: u32) -> Option<(u32, usize)> {
    let status = read(pid, "status").ok()?;
    let line = status.lines().find(|l| l.starts_with("NSpid:"))?;
    let pids: Vec<&str> = line["NSpid:".len()..].split_whitespace().collect();
    Some((pids.last()?.parse().ok()?, pids.len()))
}

/// The payload among a container's processes: with `--as-pid2` it is pid 2 of the container's
/// own pid namespace.
pub fn payload_among(pids: &[u32]) -> Option<u32> {
    pids.iter()
        .copied()
        .find(|&p| ns_pid(p).is_some_and(|(inner, depth)| inner == 2 && depth >= 2))
}

/// `pid` and every process under it (through `/proc/<pid>/task/*/children`).
pub fn with_descendants(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let mut next = 0;
    while next < all.len() && all.len() < 100_000 {
        let p = all[next];
        next += 1;
        let Ok(tasks) = fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let Ok(children) = fs::read_to_string(task.path().join("children")) else {
                continue;
            };
            all.extend(
                children
                    .split_whitespace()
                    .filter_map(|c| c.parse::<u32>().ok()),
            );
        }
    }
    all
}

/// `/proc/<pid>/environ`, as the kernel gives it (NUL-separated).
pub fn environ(pid: u32) -> Result<Vec<u8>> {
    fs::read(format!("/proc/{pid}/environ"))
        .map_err(|e| Error::io(format!("cannot read /proc/{pid}/environ"), e))
}

fn read(pid: u32, file: &str) -> Result<String> {
    fs::read_to_string(format!("/proc/{pid}/{file}"))
        .map_err(|e| Error::io(format!("cannot read /proc/{pid}/{file}"), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_reads_back() {
        let me = std::process::id();
        assert!(uid_map(me).unwrap().starts_with("0 0 "));
        assert!(net_links(me).unwrap().contains(&"lo".to_owned()));
        assert!(read_only_root(me).is_ok());
        assert_eq!(ns_pid(me).unwrap().0, me);
    }
}
