//! Test material: a key pair made for herald's tests alone (it signs
//! nothing real), for the tests here and the fake providers of
//! `herald-server`'s tests.

/// An RSA private key in PKCS#8 PEM, as a Vonage application's.
pub const VONAGE_PRIVATE_KEY: &str = include_str!("../testdata/vonage-test-key.pem");
/// Its public key, with which a fake Vonage checks herald's tokens.
pub const VONAGE_PUBLIC_KEY: &str = include_str!("../testdata/vonage-test-key.pub.pem");
