//! Per-command resource limits (`RLIMIT_*`), as quire-ci is told them and
//! as they explain a command that a limit killed. Applying them to a
//! process is `sandbox`'s; carrying them into a job's sandbox is `jail`'s.

use rustix::process::Resource;

/// Per-command resource limits; `None` is unlimited.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    /// Processes of the command's user (RLIMIT_NPROC).
    pub processes: Option<u64>,
    /// Largest file a command may write, bytes (RLIMIT_FSIZE).
    pub file_size: Option<u64>,
    /// CPU seconds (RLIMIT_CPU).
    pub cpu_secs: Option<u64>,
    /// Address space, bytes (RLIMIT_AS).
    pub memory: Option<u64>,
}

impl Limits {
    pub fn rlimits(&self) -> Vec<(Resource, u64)> {
        [
            (Resource::Nproc, self.processes),
            (Resource::Fsize, self.file_size),
            (Resource::Cpu, self.cpu_secs),
            (Resource::As, self.memory),
        ]
        .into_iter()
        .filter_map(|(resource, limit)| Some((resource, limit?)))
        .collect()
    }

    /// What a command killed by `signal` ran into, if it was a limit.
    pub fn explain_signal(&self, signal: i32) -> Option<String> {
        match signal {
            25 => Some(match self.file_size {
                Some(bytes) => {
                    format!("the command tried to write a file larger than the limit of {bytes} bytes")
                }
                None => "the command exceeded the file size limit".to_string(),
            }),
            24 => Some(match self.cpu_secs {
                Some(secs) => format!("the command used more than its {secs} s of CPU time"),
                None => "the command exceeded its CPU time limit".to_string(),
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_signals_are_explained() {
        let limits = Limits { file_size: Some(1024), ..Limits::default() };
        assert!(limits.explain_signal(25).unwrap().contains("1024 bytes"));
        assert!(limits.explain_signal(24).is_some());
        assert_eq!(limits.explain_signal(9), None);
    }
}
