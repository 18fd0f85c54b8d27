//! Cache-Control and Authorization (JWT partition) parsing never panic; partitions are never empty.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(v) = http::HeaderValue::from_bytes(data) else {
        return;
    };
    let mut h = http::HeaderMap::new();
    h.insert(http::header::CACHE_CONTROL, v.clone());
    h.insert(http::header::AUTHORIZATION, v);
    let _ = outpost::cache::policy::CacheControl::parse(&h);
    assert!(!outpost::cache::key::partition(&h).is_empty());
});
