//! Range header against a stored body: a partial answer always lies inside the body.
#![no_main]
use libfuzzer_sys::fuzz_target;
use outpost::cache::range::{decide, RangeAnswer};

fuzz_target!(|data: &[u8]| {
    let Some((&size_byte, header)) = data.split_first() else {
        return;
    };
    let Ok(v) = http::HeaderValue::from_bytes(header) else {
        return;
    };
    let mut req = http::HeaderMap::new();
    req.insert(http::header::RANGE, v);
    let size = u64::from(size_byte) * 997;
    if let RangeAnswer::Partial { start, end } = decide(&req, &http::HeaderMap::new(), size) {
        assert!(start <= end && end < size);
    }
});
