//! One exit-code scheme for every command of an operator binary.
//!
//! | code | meaning | who uses it |
//! |------|---------|-------------|
//! | 0 | success (for `diff`: nothing would change) | all |
//! | 1 | `diff` found changes | `diff` |
//! | 2 | the input is malformed or does not fit the schema (the file, field and line are named) | `render`, `diff`, `crd`, `rollout plan`, flags of any command |
//! | 3 | policy violations (printed; as JSON with `-o json`) | `render`, `diff`, `rollout plan` (an instance the candidate's policy refuses) |
//! | 4 | the operation failed: the cluster, the platform module, a file that cannot be written | all |
//!
//! Like `diff(1)` and `kubectl diff`, 1 is not an error: scripts can tell "would change" from
//! "could not tell".
use std::process::ExitCode;

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: success; for `diff`, nothing would change.
    Success,
    /// 1: `diff` found changes.
    Changes,
    /// 2: malformed input.
    BadInput,
    /// 3: policy violations.
    PolicyViolation,
    /// 4: the operation failed.
    Failed,
}

impl Exit {
    /// The numeric code.
    ///
    /// ```
    /// assert_eq!(cuebe_cli::exit::Exit::PolicyViolation.code(), 3);
    /// ```
    pub fn code(self) -> u8 {
        match self {
            Self::Success => 0,
            Self::Changes => 1,
            Self::BadInput => 2,
            Self::PolicyViolation => 3,
            Self::Failed => 4,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit.code())
    }
}
