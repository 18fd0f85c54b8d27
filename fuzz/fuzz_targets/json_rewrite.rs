//! Media URL rewriting: whatever the body, a rewritten body is valid JSON.
#![no_main]
use libfuzzer_sys::fuzz_target;
use outpost::media::MediaRewrite;

fuzz_target!(|data: &[u8]| {
    let rules = [MediaRewrite {
        upstream: "media".into(),
        origin: "https://bucket.s3.example.com".into(),
        local_prefix: "/media/s3".into(),
    }];
    if let Some(out) = outpost::media::rewrite_json(data, &rules, "http://127.0.0.1:8787") {
        serde_json::from_slice::<serde_json::Value>(&out).expect("rewritten output is JSON");
    }
});
