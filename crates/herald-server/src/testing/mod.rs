//! Test helpers that other crates' tests use too (with the `testing`
//! feature): a real SMTP server to send flows' email to, and the Python
//! that runs it and the OpenAPI document's validator; and loopback fakes
//! of Vonage ([`vonage`]), of Twilio ([`twilio`]) and of Meta's WhatsApp
//! Cloud API ([`whatsapp_cloud`]).
//!
//! The server is Python's aiosmtpd, which `.ci/run` installs into
//! `target/test-venv` (with openapi-spec-validator) and names in
//! `HERALD_TEST_PYTHON`.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::startup::config::SmtpSettings;

pub mod twilio;
pub mod vonage;
pub mod whatsapp_cloud;

/// An aiosmtpd on 127.0.0.1 that keeps what it receives in a maildir;
/// killed when dropped.
pub struct TestSmtp {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl TestSmtp {
    pub fn start() -> TestSmtp {
        TestSmtp::start_with(&[])
    }

    /// With more of aiosmtpd's options, such as `-s SIZE`.
    pub fn start_with(options: &[&str]) -> TestSmtp {
        let python = test_python();
        assert!(
            has_test_packages(&python),
            "the email tests need Python's aiosmtpd, and {python} cannot import it"
        );
        // The port is free when picked, not held: should another test
        // take it before aiosmtpd binds it, aiosmtpd exits, and a fresh
        // one is started on another port.
        let mut last_log = String::new();
        for _ in 0..3 {
            let mut server = TestSmtp::spawn(&python, options);
            if server.wait_until_listening() {
                return server;
            }
            last_log = server.log();
        }
        panic!("aiosmtpd could not listen three times: {last_log}");
    }

    fn spawn(python: &str, options: &[&str]) -> TestSmtp {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("server.log")).expect("a log file");
        let child = Command::new(python)
            .args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{port}"))
            .args(options)
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(dir.path().join("maildir"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("the log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {python} -m aiosmtpd: {e}"));
        TestSmtp { child, port, dir }
    }

    /// True once the server greets on its port (an SMTP greeting, so
    /// not some other listener); false if it exited.
    fn wait_until_listening(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if let Ok(stream) = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)) {
                stream
                    .set_read_timeout(Some(Duration::from_secs(5)))
                    .expect("a read timeout");
                let mut greeting = String::new();
                let _ = BufReader::new(stream).read_line(&mut greeting);
                assert!(
                    greeting.starts_with("220 "),
                    "port {} answered {greeting:?}, not aiosmtpd's greeting: {}",
                    self.port,
                    self.log()
                );
                return true;
            }
            assert!(
                Instant::now() < deadline,
                "aiosmtpd did not listen on port {} within 20 s: {}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    pub fn settings(&self) -> SmtpSettings {
        SmtpSettings {
            url: format!("smtp://127.0.0.1:{}", self.port).into(),
            from: "Herald <herald@example.com>".into(),
        }
    }

    /// Each email received, as the relay saw it: headers (with
    /// aiosmtpd's `X-MailFrom` and `X-RcptTo`, the envelope), a blank
    /// line, the body.
    pub fn received(&self) -> Vec<String> {
        let new = self.dir.path().join("maildir/new");
        let mut files: Vec<PathBuf> = match std::fs::read_dir(&new) {
            Ok(entries) => entries
                .map(|e| e.expect("a maildir entry").path())
                .collect(),
            Err(_) => return Vec::new(),
        };
        files.sort();
        files.iter().map(|f| read(f)).collect()
    }
}

/// What the tests run on Python, pinned as in `.ci/run`: aiosmtpd, the
/// SMTP server of the email tests, and openapi-spec-validator, the
/// standard check of the OpenAPI document; with the modules they import.
const TEST_PYTHON_PACKAGES: [(&str, &str); 2] = [
    ("aiosmtpd==1.4.6", "aiosmtpd"),
    ("openapi-spec-validator==0.9.0", "openapi_spec_validator"),
];

/// A Python that has the test packages: `HERALD_TEST_PYTHON` (which
/// `.ci/run` sets), else the venv `target/test-venv`, made and filled from
/// PyPI here when it is missing, so that a plain `cargo test` works on a
/// fresh machine too.
pub fn test_python() -> String {
    static PYTHON: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PYTHON
        .get_or_init(|| {
            if let Ok(python) = std::env::var("HERALD_TEST_PYTHON") {
                return python;
            }
            let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-venv");
            let python = venv.join("bin/python").display().to_string();
            if !has_test_packages(&python) {
                let pins = TEST_PYTHON_PACKAGES.map(|(pin, _)| pin);
                let made = Command::new("python3")
                    .arg("-m")
                    .arg("venv")
                    .arg(&venv)
                    .status()
                    .is_ok_and(|s| s.success())
                    && Command::new(&python)
                        .args(["-m", "pip", "install", "--quiet"])
                        .arg("--disable-pip-version-check")
                        .args(pins)
                        .status()
                        .is_ok_and(|s| s.success());
                assert!(
                    made,
                    "could not install {} into {}: the tests need them \
                     (or set HERALD_TEST_PYTHON to a Python that has them)",
                    pins.join(" "),
                    venv.display()
                );
            }
            python
        })
        .clone()
}

fn has_test_packages(python: &str) -> bool {
    let imports = TEST_PYTHON_PACKAGES
        .map(|(_, module)| format!("import {module}"))
        .join("; ");
    Command::new(python)
        .args(["-c", &imports])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Drop for TestSmtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).expect("a received email")
}

/// A port nothing listens on (for a moment).
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The value of the first header `name` of `email`.
pub fn header<'a>(email: &'a str, name: &str) -> Option<&'a str> {
    let (headers, _) = email.split_once("\n\n")?;
    headers.lines().find_map(|line| {
        let (n, value) = line.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

pub fn body(email: &str) -> &str {
    email.split_once("\n\n").map_or("", |(_, body)| body)
}
