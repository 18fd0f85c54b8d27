//! Config TOML: any text gives a Config or an error naming the file, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(src) = std::str::from_utf8(data) {
        if let Err(e) = outpost::config::Config::from_toml(src, "f.toml", &outpost::config::Overrides::default()) {
            assert!(e.to_string().starts_with("f.toml"));
        }
    }
});
