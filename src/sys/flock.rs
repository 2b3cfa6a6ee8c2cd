//! fcntl lock requests.

/// A whole-file lock request of `kind` (`F_RDLCK`, `F_WRLCK`), for `F_OFD_SETLK`/`F_SETLK`.
pub fn whole_file(kind: libc::c_int) -> libc::flock {
    // SAFETY: `libc::flock` is a plain C struct of integers, for which all-zero is a valid
    // value; the fields that matter are set right below.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = 0;
    fl.l_len = 0;
    fl
}
