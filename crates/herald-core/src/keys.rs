//! API keys and callback signing secrets.
//!
//! Keys are 192 random bits, so a fast hash is as good as a password KDF for
//! storing them: no key can be guessed from its hash, and the trigger path
//! looks a key up with one SHA-256 instead of a deliberately slow function.

use base64::Engine;
use rand::{distributions::Alphanumeric, Rng, RngCore};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The stored form of a key.
pub type KeyHash = [u8; 32];

/// A new API key: 32 alphanumeric characters, like the hosted platform's.
pub fn generate_key() -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(32)
        .map(char::from)
        .collect()
}

pub fn hash_key(key: &str) -> KeyHash {
    Sha256::digest(key.as_bytes()).into()
}

/// Compares two key hashes in constant time, so that a lookup's timing says
/// nothing about how much of a guess was right.
pub fn hashes_equal(a: &KeyHash, b: &KeyHash) -> bool {
    a.ct_eq(b).into()
}

/// A new callback signing secret in the Standard Webhooks form: `whsec_` and
/// base64 of 24 random bytes.
pub fn generate_webhook_secret() -> String {
    let mut bytes = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_random_and_hash_stably() {
        let a = generate_key();
        let b = generate_key();
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        assert!(hashes_equal(&hash_key(&a), &hash_key(&a)));
        assert!(!hashes_equal(&hash_key(&a), &hash_key(&b)));
    }

    #[test]
    fn secrets_decode_to_24_bytes() {
        let s = generate_webhook_secret();
        let raw = base64::engine::general_purpose::STANDARD
            .decode(s.strip_prefix("whsec_").unwrap())
            .unwrap();
        assert_eq!(raw.len(), 24);
    }
}
