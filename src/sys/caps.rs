//! Raw capability syscalls (async-signal-safe, no allocation), for the pre-exec child and
//! for `jacamar-auth validate`'s checks of the service account.
//!
//! A service account holding only file capabilities (`cap_setuid,cap_setgid=ep`) keeps
//! them across `setresuid`: the kernel clears capabilities on a uid switch only for a
//! process that had uid 0. So the helper clears every set itself and checks the result.

#[repr(C)]
struct Header {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const VERSION_3: u32 = 0x2008_0522;

/// Empty the effective, permitted, inheritable and ambient sets of the calling thread.
pub fn clear_all() -> std::io::Result<()> {
    // SAFETY: prctl with integer arguments only. EINVAL means a kernel without ambient
    // capabilities (< 4.3), where there is nothing to clear.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINVAL) {
            return Err(e);
        }
    }
    let mut h = Header {
        version: VERSION_3,
        pid: 0,
    };
    let d = [Data::default(); 2];
    // SAFETY: capset reads a valid header and two data structs (version 3 layout).
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut h as *mut Header, d.as_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The calling thread's capability sets (version 3: two structs, capabilities 0-31 and
/// 32-63). Async-signal-safe.
fn capget() -> std::io::Result<[Data; 2]> {
    let mut h = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut d = [Data::default(); 2];
    // SAFETY: capget writes two data structs into `d`, which has room for them.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut h as *mut Header, d.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(d)
}

/// True when the effective, permitted and inheritable sets of the calling thread are empty.
pub fn all_empty() -> std::io::Result<bool> {
    let d = capget()?;
    Ok(d.iter()
        .all(|x| x.effective == 0 && x.permitted == 0 && x.inheritable == 0))
}

/// `CAP_SETGID` and `CAP_SETUID` (linux/capability.h).
pub const CAP_SETGID: u32 = 6;
pub const CAP_SETUID: u32 = 7;

/// True when every capability of `caps` (numbers below 32) is in the calling thread's
/// effective set.
pub fn effective_has(caps: &[u32]) -> std::io::Result<bool> {
    let d = capget()?;
    Ok(caps
        .iter()
        .all(|&c| c < 32 && d[0].effective & (1 << c) != 0))
}

/// The capabilities in the calling thread's permitted or effective set, as one mask
/// (bit N: capability N, as `CapPrm`/`CapEff` of `/proc/self/status`); 0 when it holds none.
pub fn held() -> std::io::Result<u64> {
    let d = capget()?;
    let low = u64::from(d[0].permitted | d[0].effective);
    let high = u64::from(d[1].permitted | d[1].effective);
    Ok((high << 32) | low)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_child_can_drop_everything() {
        let mut cmd = std::process::Command::new("/bin/true");
        // SAFETY: only raw syscalls and _exit in the child.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                super::clear_all()?;
                libc::_exit(if super::all_empty()? { 0 } else { 1 });
            });
        }
        assert_eq!(cmd.status().unwrap().code(), Some(0));
    }

    #[test]
    fn held_matches_proc_status() {
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
                .unwrap()
        };
        assert_eq!(super::held().unwrap(), field("CapPrm:") | field("CapEff:"));
    }
}
