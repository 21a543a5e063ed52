//! Sends the emails of flows' Send Email nodes over SMTP.
//!
//! The relay is the operator's (`HERALD_SMTP_URL`): what it accepts, and
//! where it may deliver, is its business, so unlike webhooks there is no
//! refusal of internal addresses here. TLS (`smtps://`, STARTTLS) goes
//! through the same rustls as every other outside call of herald's.
//!
//! Each email is one SMTP connection: flows send few, and a connection kept
//! open would have to be watched for the relay closing it.

use std::error::Error as _;
use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::{Address, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::startup::config::SmtpSettings;

/// How long one email may take, connecting included: the session waits for
/// it.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest reply of the relay kept in an error (they are recorded in
/// the session's events).
const MAX_REPLY: usize = 200;

/// Why an email was not sent. Each message is a short reason, safe to
/// record in the session's events: never the relay's password.
#[derive(Debug, thiserror::Error)]
pub enum EmailError {
    #[error("the recipient {0:?} is not an email address")]
    InvalidRecipient(String),
    #[error("could not connect to the mail server: {0}")]
    Connect(String),
    #[error("the mail server did not answer in time")]
    Timeout,
    #[error("TLS with the mail server failed: {0}")]
    Tls(String),
    /// A 4xx or 5xx reply: the code and the relay's own words.
    #[error("the mail server refused the email: {0}")]
    Refused(String),
    #[error("sending failed: {0}")]
    Failed(String),
}

/// `HERALD_SMTP_URL` or `HERALD_SMTP_FROM` cannot be used; the message
/// names the setting and what to change.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidSmtpSettings(String);

/// Sends through the configured relay.
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl Mailer {
    /// Checks the settings (at start-up: a mistake here stops the server
    /// rather than every email later). Connects to nothing.
    pub fn new(settings: &SmtpSettings) -> Result<Mailer, InvalidSmtpSettings> {
        let invalid_url =
            |reason: &str| InvalidSmtpSettings(format!("HERALD_SMTP_URL (--smtp-url) {reason}"));
        let url = url::Url::parse(settings.url.expose())
            .map_err(|e| invalid_url(&format!("is not a URL ({e})")))?;
        let tls = url
            .query_pairs()
            .find(|(k, _)| k == "tls")
            .map(|(_, v)| v.into_owned());
        let encrypted = match (url.scheme(), tls.as_deref()) {
            ("smtp", None) => false,
            ("smtp", Some("required" | "opportunistic")) | ("smtps", None) => true,
            ("smtp" | "smtps", Some(other)) => {
                return Err(invalid_url(&format!(
                    "has tls={other}: use tls=required (STARTTLS) or tls=opportunistic with smtp://, or smtps:// alone"
                )))
            }
            _ => return Err(invalid_url("must start with smtp:// or smtps://")),
        };
        if url.host_str().unwrap_or("").is_empty() {
            return Err(invalid_url("names no host"));
        }
        // Opportunistic STARTTLS falls back to plain text, so only a relay on
        // this machine may be given a password without TLS required.
        let plain = !encrypted || tls.as_deref() == Some("opportunistic");
        if url.password().is_some() && plain && !is_loopback(&url) {
            return Err(invalid_url(
                "would send its password unencrypted: use smtps:// or ?tls=required",
            ));
        }
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(settings.url.expose())
            .map_err(|e| invalid_url(&format!("cannot be used ({e})")))?
            .timeout(Some(SEND_TIMEOUT))
            .build();
        let from = settings.from.parse::<Mailbox>().map_err(|e| {
            InvalidSmtpSettings(format!(
                "HERALD_SMTP_FROM (--smtp-from) {:?} is not an email address ({e})",
                settings.from
            ))
        })?;
        Ok(Mailer { transport, from })
    }

    /// Sends a plain-text email to one address.
    pub async fn send(&self, to: &str, subject: &str, body: &str) -> Result<(), EmailError> {
        let recipient = to
            .trim()
            .parse::<Address>()
            .map_err(|_| EmailError::InvalidRecipient(shorten(to, 254)))?;
        let message = Message::builder()
            .from(self.from.clone())
            .to(Mailbox::new(None, recipient))
            .subject(subject)
            .message_id(Some(format!(
                "<{}@{}>",
                uuid::Uuid::new_v4(),
                self.from.email.domain()
            )))
            .header(ContentType::TEXT_PLAIN)
            .body(body.to_owned())
            .map_err(|e| EmailError::Failed(format!("could not build the email ({e})")))?;
        match tokio::time::timeout(SEND_TIMEOUT, self.transport.send(message)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(describe(&e)),
            Err(_) => Err(EmailError::Timeout),
        }
    }
}

fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// lettre's error as a reason: its kinds, with the innermost cause (an I/O
/// error, a TLS alert, the relay's reply), which never holds the password.
fn describe(e: &lettre::transport::smtp::Error) -> EmailError {
    let cause = innermost(e);
    if e.is_timeout() {
        EmailError::Timeout
    } else if e.is_tls() {
        EmailError::Tls(cause)
    } else if let Some(code) = e.status() {
        EmailError::Refused(shorten(&format!("{code} {cause}"), MAX_REPLY))
    } else if has_io_error(e) {
        EmailError::Connect(cause)
    } else {
        EmailError::Failed(shorten(&e.to_string(), MAX_REPLY))
    }
}

fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut last = e;
    while let Some(source) = last.source() {
        last = source;
    }
    shorten(&last.to_string(), MAX_REPLY)
}

fn has_io_error(e: &lettre::transport::smtp::Error) -> bool {
    let mut source = e.source();
    while let Some(err) = source {
        if err.is::<std::io::Error>() {
            return true;
        }
        source = err.source();
    }
    false
}

fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    //! Against a real SMTP server: Python's aiosmtpd, which `.ci/run`
    //! installs into `target/test-venv` and names in `HERALD_TEST_PYTHON`.

    use std::process::{Command, Stdio};

    use super::*;
    use crate::testing::*;

    #[tokio::test]
    async fn sends_an_email_the_relay_receives() {
        let server = TestSmtp::start();
        let mailer = Mailer::new(&server.settings()).unwrap();
        mailer
            .send(
                "ada@example.org",
                "Your appointment",
                "See you on Monday at 10.\nReply STOP to stop.",
            )
            .await
            .unwrap();

        let received = server.received();
        assert_eq!(received.len(), 1, "{received:?}");
        let email = &received[0];
        assert_eq!(header(email, "X-MailFrom"), Some("herald@example.com"));
        assert_eq!(header(email, "X-RcptTo"), Some("ada@example.org"));
        assert_eq!(header(email, "From"), Some("Herald <herald@example.com>"));
        assert_eq!(header(email, "To"), Some("ada@example.org"));
        assert_eq!(header(email, "Subject"), Some("Your appointment"));
        assert_eq!(
            header(email, "Content-Type"),
            Some("text/plain; charset=utf-8")
        );
        assert!(header(email, "Message-ID").is_some_and(|id| id.ends_with("@example.com>")));
        assert!(header(email, "Date").is_some());
        assert_eq!(
            body(email).replace("\r\n", "\n").trim_end(),
            "See you on Monday at 10.\nReply STOP to stop."
        );
    }

    #[tokio::test]
    async fn a_subject_cannot_add_headers() {
        let server = TestSmtp::start();
        let mailer = Mailer::new(&server.settings()).unwrap();
        mailer
            .send("ada@example.org", "Hi\r\nBcc: eve@example.net", "Hello")
            .await
            .unwrap();
        let received = server.received();
        assert_eq!(received.len(), 1);
        let email = &received[0];
        assert_eq!(header(email, "Bcc"), None, "{email}");
        assert_eq!(header(email, "X-RcptTo"), Some("ada@example.org"));
    }

    #[tokio::test]
    async fn non_ascii_text_arrives_intact() {
        let server = TestSmtp::start();
        let mailer = Mailer::new(&server.settings()).unwrap();
        let (subject, text) = ("Rendez-vous à 10 h ✔", "À lundi, Zoë.\nПривет. 日本語");
        mailer.send("zoe@example.org", subject, text).await.unwrap();
        let received = server.received();
        assert_eq!(received.len(), 1);
        // Python's email package reads it as any mail client would.
        let decoded = Command::new(test_python())
            .args([
                "-c",
                "import email, email.policy, json, sys\n\
                 m = email.message_from_string(sys.stdin.read(), policy=email.policy.default)\n\
                 print(json.dumps({'subject': m['subject'], 'body': m.get_content()}))",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child
                    .stdin
                    .take()
                    .expect("piped")
                    .write_all(received[0].as_bytes())?;
                child.wait_with_output()
            })
            .expect("python decodes the email");
        let decoded: serde_json::Value = serde_json::from_slice(&decoded.stdout).unwrap();
        assert_eq!(decoded["subject"], subject);
        assert_eq!(
            decoded["body"]
                .as_str()
                .unwrap()
                .replace("\r\n", "\n")
                .trim_end(),
            text
        );
    }

    #[tokio::test]
    async fn a_refusal_carries_the_relays_reply() {
        let server = TestSmtp::start_with(&["-s", "300"]);
        let mailer = Mailer::new(&server.settings()).unwrap();
        let error = mailer
            .send("ada@example.org", "Too long", &"x".repeat(1000))
            .await
            .unwrap_err();
        assert!(matches!(error, EmailError::Refused(_)), "{error:?}");
        assert!(
            error
                .to_string()
                .starts_with("the mail server refused the email: 552"),
            "{error}"
        );
        assert!(server.received().is_empty());
    }

    #[tokio::test]
    async fn a_closed_port_is_an_error() {
        let port = free_port();
        let mailer = Mailer::new(&SmtpSettings {
            url: format!("smtp://127.0.0.1:{port}").into(),
            from: "herald@localhost".into(),
        })
        .unwrap();
        let error = mailer
            .send("ada@example.org", "Hi", "Hello")
            .await
            .unwrap_err();
        assert!(matches!(error, EmailError::Connect(_)), "{error:?}");
        assert!(
            error
                .to_string()
                .starts_with("could not connect to the mail server"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn bad_recipients_are_refused_before_connecting() {
        // Nothing listens here: a recipient that got past the check would
        // fail differently.
        let mailer = Mailer::new(&SmtpSettings {
            url: format!("smtp://127.0.0.1:{}", free_port()).into(),
            from: "herald@localhost".into(),
        })
        .unwrap();
        for to in [
            "",
            "ada",
            "ada@",
            "@example.org",
            "ada@example.org\r\nRCPT TO:<eve@example.net>",
            "Ada <ada@example.org>, eve@example.net",
        ] {
            let error = mailer.send(to, "Hi", "Hello").await.unwrap_err();
            assert!(
                matches!(error, EmailError::InvalidRecipient(_)),
                "{to:?}: {error:?}"
            );
        }
    }

    #[test]
    fn settings_are_checked_at_start_up() {
        let check = |url: &str, from: &str| {
            Mailer::new(&SmtpSettings {
                url: url.into(),
                from: from.into(),
            })
            .err()
            .map(|e| e.to_string())
        };
        for good in [
            "smtp://127.0.0.1:2525",
            "smtp://relay.internal",
            "smtp://mailer:s3cret@mail.example.com:587?tls=required",
            "smtp://mail.example.com:587?tls=opportunistic",
            "smtps://mailer:s3cret@mail.example.com",
            "smtp://mailer:s3cret@localhost:2525",
        ] {
            assert_eq!(check(good, "herald@example.com"), None, "{good}");
        }
        for (bad, expected) in [
            ("mail.example.com", "is not a URL"),
            ("http://mail.example.com", "must start with smtp://"),
            ("smtp://mail.example.com?tls=starttls", "use tls=required"),
            (
                "smtp://mailer:s3cret@mail.example.com:25",
                "would send its password unencrypted",
            ),
            (
                "smtp://mailer:s3cret@mail.example.com:587?tls=opportunistic",
                "would send its password unencrypted",
            ),
        ] {
            let error = check(bad, "herald@example.com").unwrap_or_else(|| panic!("{bad}"));
            assert!(error.starts_with("HERALD_SMTP_URL"), "{error}");
            assert!(error.contains(expected), "{bad}: {error}");
            assert!(!error.contains("s3cret"), "{error}");
        }
        let error = check("smtp://127.0.0.1:25", "herald").unwrap();
        assert!(error.starts_with("HERALD_SMTP_FROM"), "{error}");
        assert_eq!(check("smtp://127.0.0.1:25", "herald@localhost"), None);
    }

    #[test]
    fn long_reasons_are_cut() {
        assert_eq!(shorten("abc", 3), "abc");
        assert_eq!(shorten("abcd", 3), "abc…");
        assert_eq!(shorten("ééé", 2), "éé…");
    }
}
