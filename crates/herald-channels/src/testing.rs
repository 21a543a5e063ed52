//! Test material: an RSA key pair made afresh for each test process (it
//! signs nothing real), for the tests here, the fake providers of
//! `herald-server`'s tests and `herald bench`. It is made with the
//! `openssl` command, which `.ci/run` installs when it is absent.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

struct KeyPair {
    private: String,
    public: String,
}

fn openssl(args: &[&str], input: Option<&str>) -> String {
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the openssl command runs (it makes the test key pair)");
    let mut stdin = child.stdin.take().expect("piped");
    if let Some(input) = input {
        stdin
            .write_all(input.as_bytes())
            .expect("openssl reads the key");
    }
    drop(stdin);
    let output = child.wait_with_output().expect("openssl finishes");
    assert!(output.status.success(), "openssl {args:?} failed");
    String::from_utf8(output.stdout).expect("PEM is text")
}

fn key_pair() -> &'static KeyPair {
    static PAIR: OnceLock<KeyPair> = OnceLock::new();
    PAIR.get_or_init(|| {
        let private = openssl(
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
            ],
            None,
        );
        let public = openssl(&["pkey", "-pubout"], Some(&private));
        KeyPair { private, public }
    })
}

/// An RSA private key in PKCS#8 PEM, as a Vonage application's.
pub fn vonage_private_key() -> &'static str {
    &key_pair().private
}

/// Its public key, with which a fake Vonage checks herald's tokens.
pub fn vonage_public_key() -> &'static str {
    &key_pair().public
}
