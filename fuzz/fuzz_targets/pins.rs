//! Pin extraction: a JSON path (first line) applied to a JSON body (the rest) never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (path, body) = text.split_once('\n').unwrap_or((&text, "{}"));
    if let Ok(jp) = outpost::media::JsonPath::parse(path) {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(body) {
            let _ = jp.strings(&v);
            let _ = jp.values(&v);
        }
    }
});
