//! Micro-benchmarks of the destination parser, which runs once per trigger
//! at the HTTP boundary.
//!
//! Run with `cargo bench -p herald-core --bench destination`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use herald_core::{BadDestination, Destination};

type Parse = fn(&str) -> Result<Destination, BadDestination>;

/// Benchmarks `parse` on each `(name, input, accepted)` case, after checking
/// that the input is accepted or rejected as the name says, so that a change
/// in the parser can't silently turn a case into a different path.
fn bench_cases(c: &mut Criterion, group_name: &str, parse: Parse, cases: &[(&str, &str, bool)]) {
    let mut group = c.benchmark_group(group_name);
    for &(name, input, accepted) in cases {
        assert_eq!(
            parse(input).is_ok(),
            accepted,
            "{group_name}/{name}: {input:?}"
        );
        group.bench_function(name, |b| b.iter(|| parse(black_box(input))));
    }
    group.finish();
}

fn parse_voice(c: &mut Criterion) {
    bench_cases(
        c,
        "destination/parse_voice",
        Destination::parse_voice,
        &[
            // Digits only, the contract's canonical form (UK mobile).
            ("e164", "447700900123", true),
            // With the optional leading '+' (US number).
            ("e164_plus", "+14155550100", true),
            // A SIP URI: scheme, user, hostname, parameters checked.
            ("sip", "sip:alice@example.com", true),
            // A longer SIP URI: sips, IPv4 host, port and two parameters.
            (
                "sip_full",
                "sips:alice.smith@192.0.2.10:5061;transport=tls;lr",
                true,
            ),
            // Rejected by the cheap syntax check (a space): never reaches
            // the calling-code metadata.
            ("rejected_syntax", "+44 7700 900123", false),
            // Well-formed digits whose national length is impossible for
            // the calling code (+44 with 11 national digits): rejected only
            // after the metadata lookup, the most expensive rejection.
            ("rejected_length", "4477009001234", false),
        ],
    );
}

fn parse_messaging(c: &mut Criterion) {
    bench_cases(
        c,
        "destination/parse_messaging",
        Destination::parse_messaging,
        &[
            ("e164", "447700900123", true),
            ("e164_plus", "+14155550100", true),
            // SMS and WhatsApp take phone numbers only.
            ("rejected_sip", "sip:alice@example.com", false),
        ],
    );
}

criterion_group!(benches, parse_voice, parse_messaging);
criterion_main!(benches);
