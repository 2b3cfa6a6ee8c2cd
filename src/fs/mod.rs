//! STUB of the fs contract (being implemented on branch `fs`).
use std::path::{Path, PathBuf};

pub struct UserInfo {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}
pub struct JobPaths {
    base: PathBuf,
}
impl JobPaths {
    pub fn new(
        _data_dir_raw: &str,
        _user: &UserInfo,
        _runner: &str,
        _cid: u32,
        _project: &str,
        _job: u64,
    ) -> Result<JobPaths, FsError> {
        Err(FsError::Stub)
    }
    pub fn base_dir(&self) -> &Path {
        &self.base
    }
    pub fn builds_dir(&self) -> PathBuf {
        self.base.clone()
    }
    pub fn cache_dir(&self) -> PathBuf {
        self.base.clone()
    }
    pub fn scripts_dir(&self) -> PathBuf {
        self.base.clone()
    }
}
pub struct DirPolicy {
    pub uid: u32,
    pub group_permissions: bool,
}
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("stub")]
    Stub,
}
pub fn ensure_job_dirs(_p: &JobPaths, _d: &DirPolicy) -> Result<(), FsError> {
    Err(FsError::Stub)
}
pub fn write_script(
    _p: &JobPaths,
    _d: &DirPolicy,
    _s: &str,
    _c: &[u8],
) -> Result<PathBuf, FsError> {
    Err(FsError::Stub)
}
pub fn cleanup_job(_p: &JobPaths, _r: bool) -> Result<(), FsError> {
    Err(FsError::Stub)
}
