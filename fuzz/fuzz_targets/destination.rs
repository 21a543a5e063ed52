//! Any string as a voice and a messaging destination. Besides not panicking,
//! an accepted destination's canonical text must parse back to the same
//! value: that text is what is stored, and the dispatcher parses it again.

#![no_main]

use herald_core::Destination;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    for parse in [Destination::parse_voice, Destination::parse_messaging] {
        if let Ok(destination) = parse(s) {
            assert_eq!(parse(destination.as_str()).as_ref(), Ok(&destination));
            let _ = destination.last_two_digits();
        }
    }
});
