//! Identifiers, in the forms the contract fixes (CONTRACT §1.6).

use std::fmt;
use std::str::FromStr;

use rand::RngCore;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// An account's row id. Accounts are never exposed by id on the API; the key
/// names the account.
pub type AccountId = i64;

/// An id of 24 lowercase hex characters (96 random bits), like the hosted
/// platform's agent ids.
macro_rules! hex_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// A fresh random id.
            pub fn generate() -> Self {
                let mut bytes = [0u8; 12];
                rand::thread_rng().fill_bytes(&mut bytes);
                $name(bytes.iter().map(|b| format!("{b:02x}")).collect())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = ();

            /// Only the canonical form is an id; anything else names
            /// nothing, which callers answer with the contract's 404.
            fn from_str(s: &str) -> Result<Self, ()> {
                if s.len() == 24 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                    Ok($name(s.to_owned()))
                } else {
                    Err(())
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

hex_id!(
    /// An agent's id: 24 lowercase hex characters, like the hosted platform's.
    AgentId
);

hex_id!(
    /// A connection's id (CONTRACT §10): 24 lowercase hex characters.
    ConnectionId
);

hex_id!(
    /// A campaign's id (CONTRACT §12): 24 lowercase hex characters.
    CampaignId
);

/// A session's id: a UUID v7, so ids sort by creation time and the newest-first
/// listing can page by id alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SessionId(Uuid);

impl SessionId {
    pub fn generate() -> Self {
        SessionId(Uuid::now_v7())
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl FromStr for SessionId {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        // Only the lowercase hyphenated form the API hands out.
        if s.len() != 36 || s.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(());
        }
        Uuid::parse_str(s).map(SessionId).map_err(|_| ())
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// A voice conversation's id as callbacks carry it: `CON-` and a UUID.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ConversationUuid(String);

impl ConversationUuid {
    pub fn generate() -> Self {
        ConversationUuid(format!("CON-{}", Uuid::new_v4().hyphenated()))
    }

    pub fn from_stored(s: String) -> Self {
        ConversationUuid(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_ids_are_24_lowercase_hex() {
        let id = AgentId::generate();
        assert_eq!(id.as_str().len(), 24);
        assert_eq!(id.as_str().parse::<AgentId>(), Ok(id));
        assert!("60c09d70e6a68858f4220848".parse::<AgentId>().is_ok());
        assert!("60C09D70E6A68858F4220848".parse::<AgentId>().is_err());
        assert!("60c09d70e6a68858f422084".parse::<AgentId>().is_err());
        assert!("60c09d70e6a68858f422084g".parse::<AgentId>().is_err());
    }

    #[test]
    fn session_ids_round_trip_in_lowercase_only() {
        let id = SessionId::generate();
        let text = id.to_string();
        assert_eq!(text.parse::<SessionId>(), Ok(id));
        assert!(text.to_uppercase().parse::<SessionId>().is_err());
        assert!(SessionId::generate() > id, "v7 ids grow with time");
    }

    #[test]
    fn conversation_uuids_carry_the_prefix() {
        let c = ConversationUuid::generate();
        assert!(c.as_str().starts_with("CON-"));
        assert_eq!(c.as_str().len(), 40);
    }
}
