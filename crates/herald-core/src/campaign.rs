//! A campaign's vocabulary (CONTRACT §12): the states of a campaign and of
//! each of its recipients, as the API shows them and the store keeps them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Defines a state enum whose words are its serde names, with `ALL`,
/// `as_str`, `FromStr` and `Display` agreeing on them.
macro_rules! states {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $word:literal,)* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($(#[$vdoc])* $variant,)*
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $word,)*
                }
            }
        }

        impl FromStr for $name {
            type Err = ();
            fn from_str(s: &str) -> Result<Self, ()> {
                $name::ALL.iter().copied().find(|v| v.as_str() == s).ok_or(())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

states!(
    /// Where a campaign is: `draft → running ⇄ paused → completed |
    /// cancelled`, and `scheduled` when started before its `start_at`.
    CampaignState {
        /// Created; recipients may be added; nobody is contacted.
        Draft = "draft",
        /// Started, waiting for its `start_at`.
        Scheduled = "scheduled",
        Running = "running",
        /// No new attempt starts; those under way finish.
        Paused = "paused",
        /// Every recipient reached a final state.
        Completed = "completed",
        /// Stopped for good; attempts under way finish.
        Cancelled = "cancelled",
    }
);

impl CampaignState {
    /// Whether the campaign is over: nothing more is done for it.
    pub fn is_final(self) -> bool {
        matches!(self, CampaignState::Completed | CampaignState::Cancelled)
    }
}

states!(
    /// Where one recipient of a campaign is.
    RecipientState {
        /// Not contacted yet.
        Pending = "pending",
        /// Waiting for its window to open, or for a retry, until its time.
        Waiting = "waiting",
        /// An attempt's session is under way.
        InProgress = "in_progress",
        /// An attempt's session completed.
        Completed = "completed",
        /// The last attempt's outcome is not tried again (or the attempts
        /// ran out): the recipient's last outcome says which.
        Failed = "failed",
        /// Passed over, for the reason recorded (opted out, …).
        Skipped = "skipped",
        /// Not reached by the campaign's `end_at`.
        Expired = "expired",
        /// The campaign was cancelled before it was reached.
        Cancelled = "cancelled",
    }
);

impl RecipientState {
    /// Whether nothing more will be done for the recipient.
    pub fn is_final(self) -> bool {
        !matches!(
            self,
            RecipientState::Pending | RecipientState::Waiting | RecipientState::InProgress
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_read_back_as_they_are_written() {
        for state in CampaignState::ALL {
            assert_eq!(state.as_str().parse::<CampaignState>(), Ok(*state));
            assert_eq!(
                serde_json::to_value(state).unwrap(),
                serde_json::json!(state.as_str())
            );
        }
        for state in RecipientState::ALL {
            assert_eq!(state.as_str().parse::<RecipientState>(), Ok(*state));
            assert_eq!(
                serde_json::to_value(state).unwrap(),
                serde_json::json!(state.as_str())
            );
        }
        assert_eq!(RecipientState::InProgress.as_str(), "in_progress");
        assert!("running ".parse::<CampaignState>().is_err());
        assert!(RecipientState::Expired.is_final() && !RecipientState::Waiting.is_final());
    }
}
