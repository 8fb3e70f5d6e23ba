//! Fuzzes the JWKS parser and sanitizer with arbitrary IdP response bodies. Beyond "never
//! panics": an accepted document re-parses to the same keys (the sanitized form is a fixed
//! point) and never carries a private or symmetric key member.
#![no_main]

use keyrelay::domain::key_set::KeySetDocument;
use libfuzzer_sys::fuzz_target;

const PRIVATE_MEMBERS: [&str; 7] = ["d", "p", "q", "dp", "dq", "qi", "k"];

fuzz_target!(|body: &[u8]| {
    let Ok(parsed) = KeySetDocument::parse(body) else {
        return;
    };
    let document = parsed.document;
    let again = KeySetDocument::parse(document.json())
        .expect("a sanitized document parses again")
        .document;
    assert!(
        again.same_keys_as(&document),
        "sanitizing is not a fixed point"
    );
    let json: serde_json::Value =
        serde_json::from_slice(document.json()).expect("sanitized output is JSON");
    for key in json["keys"].as_array().expect("a keys array") {
        for member in PRIVATE_MEMBERS {
            assert!(
                key.get(member).is_none(),
                "private member {member} published"
            );
        }
    }
});
