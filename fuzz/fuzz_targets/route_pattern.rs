//! Route patterns and matching: first line is the pattern, the rest the path.
#![no_main]
use libfuzzer_sys::fuzz_target;
use outpost::routes::RoutePattern;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (pattern, path) = text.split_once('\n').unwrap_or((&text, "/"));
    for p in [RoutePattern::exact(pattern), RoutePattern::prefix(pattern)]
        .into_iter()
        .flatten()
    {
        if let Some(params) = p.matches(path) {
            assert!(params.iter().all(|(_, v)| !v.is_empty() && !v.contains('/')));
        }
    }
});
