//! How a call goes: what the provider reports between dialling and the
//! conversation (CONTRACT §5.1).

use serde::{Deserialize, Serialize};

use super::Outcome;

/// Who picked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnsweredBy {
    Person,
    Machine,
}

/// How a call attempt ended before any conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallFailure {
    Busy,
    Rejected,
    Timeout,
    Failed,
    Cancelled,
}

impl CallFailure {
    /// The status word callbacks and outcomes use (CONTRACT §5.1).
    pub fn as_str(self) -> &'static str {
        self.outcome().as_str()
    }

    /// The session's outcome when its call ends so.
    pub fn outcome(self) -> Outcome {
        match self {
            CallFailure::Busy => Outcome::Busy,
            CallFailure::Rejected => Outcome::Rejected,
            CallFailure::Timeout => Outcome::Timeout,
            CallFailure::Failed => Outcome::Failed,
            CallFailure::Cancelled => Outcome::Cancelled,
        }
    }
}

/// A step of a call, as a provider reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "progress", rename_all = "snake_case")]
pub enum CallProgress {
    /// The person's phone rings.
    Ringing,
    /// The call was answered.
    Answered { by: AnsweredBy },
    /// The call ended before anyone answered.
    NotAnswered { failure: CallFailure },
    /// The call was answered and has now ended (the person hung up).
    Completed,
}
