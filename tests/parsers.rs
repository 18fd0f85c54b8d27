//! Bad-input robustness of every parser that sees outside data: config TOML, route patterns and matching,
//! Range, Cache-Control, Authorization (JWT partitions), JSON media rewriting and JSON paths, encryption
//! keys, sealed records and sealed blob headers (a changed one never opens).
//!
//! A deterministic mutation loop (seeded, so a failure reproduces): seeds from real inputs, mutated by
//! byte flips, insertions, deletions, truncation and splicing; every parser must return, never panic,
//! and keep its invariants. It is a cheap net in the test suite, not a replacement for coverage-guided
//! fuzzing.

use http::{HeaderMap, HeaderValue};
use outpost::cache::key;
use outpost::cache::policy::CacheControl;
use outpost::cache::range::{decide, RangeAnswer};
use outpost::config::{Config, Overrides};
use outpost::media::MediaRewrite;
use outpost::media::{rewrite_json, JsonPath};
use outpost::routes::RoutePattern;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const ROUNDS: usize = 20_000;

fn mutate(rng: &mut StdRng, seeds: &[&[u8]]) -> Vec<u8> {
    let mut v = seeds[rng.random_range(0..seeds.len())].to_vec();
    for _ in 0..rng.random_range(1..6) {
        let at = if v.is_empty() { 0 } else { rng.random_range(0..v.len()) };
        match rng.random_range(0..6) {
            0 if !v.is_empty() => v[at] ^= 1 << rng.random_range(0..8),
            1 => v.insert(at, rng.random()),
            2 if !v.is_empty() => {
                v.remove(at);
            }
            3 => v.truncate(at),
            4 => {
                let other = seeds[rng.random_range(0..seeds.len())];
                let from = rng.random_range(0..=other.len());
                v.splice(at..at, other[from..].iter().copied());
            }
            _ => {
                let interesting: &[&[u8]] = &[
                    b"-",
                    b",",
                    b"=",
                    b"\"",
                    b"{",
                    b"}",
                    b"[*]",
                    b"\0",
                    b"\xff",
                    b"99999999999999999999",
                ];
                v.splice(
                    at..at,
                    interesting[rng.random_range(0..interesting.len())].iter().copied(),
                );
            }
        }
    }
    v
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn config_parsing_never_panics() {
    let shipped = include_bytes!("../config/outpost.toml");
    let seeds: &[&[u8]] = &[
        shipped,
        b"[upstreams.api]\nurl = \"http://a\"\n[[routes]]\npath = \"/t/{id}\"\nretain = { group = \"{id}\", keep_last = 2 }\n",
        b"max_size = \"1GB\"\n[cache]\nmax_unused = \"30d\"\n[queue]\nbackoff_base = \"1s\"\n",
    ];
    let mut rng = StdRng::seed_from_u64(1);
    for _ in 0..ROUNDS / 10 {
        let src = text(&mutate(&mut rng, seeds));
        if let Err(e) = Config::from_toml(&src, "f.toml", &Overrides::default()) {
            assert!(e.to_string().starts_with("f.toml"), "errors name the file: {e}");
        }
    }
}

#[test]
fn route_patterns_and_matching_never_panic() {
    let seeds: &[&[u8]] = &[
        b"/api/v1/threads/{thread_id}/messages",
        b"/media/s3/",
        b"/{a}/{b}/x",
        b"/",
    ];
    let mut rng = StdRng::seed_from_u64(2);
    for _ in 0..ROUNDS {
        let src = text(&mutate(&mut rng, seeds));
        let path = text(&mutate(&mut rng, seeds));
        for p in [RoutePattern::exact(&src), RoutePattern::prefix(&src)]
            .into_iter()
            .flatten()
        {
            if let Some(params) = p.matches(&path) {
                assert!(params.iter().all(|(_, v)| !v.is_empty() && !v.contains('/')));
            }
        }
    }
}

#[test]
fn range_decisions_stay_inside_the_body() {
    let seeds: &[&[u8]] = &[
        b"bytes=0-99",
        b"bytes=100-",
        b"bytes=-500",
        b"bytes=0-1,5-9",
        b"items=0-1",
    ];
    let mut rng = StdRng::seed_from_u64(3);
    for _ in 0..ROUNDS {
        let mut req = HeaderMap::new();
        let Ok(v) = HeaderValue::from_bytes(&mutate(&mut rng, seeds)) else {
            continue;
        };
        req.insert(http::header::RANGE, v);
        let size = rng.random_range(0..5000u64);
        if let RangeAnswer::Partial { start, end } = decide(&req, &HeaderMap::new(), size) {
            assert!(start <= end && end < size, "{start}-{end} of {size}");
        }
    }
}

#[test]
fn cache_control_and_authorization_parsing_never_panic() {
    let token = outpost::demo::make_token("alice", 1);
    let bearer = format!("Bearer {token}");
    let seeds: &[&[u8]] = &[
        b"max-age=60, s-maxage=30, stale-while-revalidate=10",
        b"no-cache=\"set-cookie\", private, must-revalidate",
        b"only-if-cached, max-stale",
        bearer.as_bytes(),
        b"Basic dXNlcjpwYXNz",
    ];
    let mut rng = StdRng::seed_from_u64(4);
    for _ in 0..ROUNDS {
        let Ok(v) = HeaderValue::from_bytes(&mutate(&mut rng, seeds)) else {
            continue;
        };
        let mut h = HeaderMap::new();
        h.insert(http::header::CACHE_CONTROL, v.clone());
        h.insert(http::header::AUTHORIZATION, v);
        let _ = CacheControl::parse(&h);
        let p = key::partition(&h);
        assert!(!p.is_empty() && !p.contains('\0'), "{p:?}");
    }
}

#[test]
fn json_rewriting_and_paths_always_yield_valid_json() {
    let rules = vec![MediaRewrite {
        upstream: "media".into(),
        origin: "https://bucket.s3.example.com".into(),
        local_prefix: "/media/s3".into(),
    }];
    let seeds: &[&[u8]] = &[
        br#"{"items":[{"url":"https://bucket.s3.example.com/r/1.mp3?X-Amz-Signature=ab","audio_file_id":"a1"}]}"#,
        br#"[{"renders":[{"url":"https://bucket.s3.example.com/a.mp3"}]}, "https://bucket.s3.example.com"]"#,
        br#"{"deep":{"deeper":[[["https://bucket.s3.example.com/x"]]]}}"#,
    ];
    let paths: &[&[u8]] = &[b"items[*].url", b"a.b[0].c", b"[*]", b"x[*][*]"];
    let mut rng = StdRng::seed_from_u64(5);
    for _ in 0..ROUNDS {
        let body = mutate(&mut rng, seeds);
        if let Some(out) = rewrite_json(&body, &rules, "http://127.0.0.1:8787") {
            serde_json::from_slice::<serde_json::Value>(&out).expect("rewritten output is JSON");
        }
        if let Ok(jp) = JsonPath::parse(&text(&mutate(&mut rng, paths))) {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) {
                let _ = jp.strings(&v);
            }
        }
    }
}

#[test]
fn sealed_records_headers_and_keys_open_to_the_original_or_not_at_all() {
    use outpost::store::{parse_key, AtRest};
    let hex = "5e".repeat(32);
    let b64 = "XlpeXl5eXl5eXl5eXl5eXl5eXl5eXl5eXl5eXl5eXl4=";
    let key_seeds: &[&[u8]] = &[hex.as_bytes(), b64.as_bytes()];
    let at_rest = AtRest::new(&[0x5e; 32]);
    let plain = br#"{"Entry":{"status":200,"headers":[["etag",[34,120,34]]]}}"#;
    let sealed = at_rest.seal_record(b"anon\0api\0/x", plain);
    let prefix = AtRest::new_prefix();
    let name = blake3::hash(b"a blob").to_hex().to_string();
    let header = at_rest.header(&prefix, &name).unwrap();
    let mut rng = StdRng::seed_from_u64(9);
    for _ in 0..ROUNDS {
        let k = mutate(&mut rng, key_seeds);
        let _ = parse_key(&text(&k));

        let r = mutate(&mut rng, &[&sealed]);
        if let Some(opened) = at_rest.open_record(b"anon\0api\0/x", &r) {
            assert_eq!(r, sealed, "a changed record opened");
            assert_eq!(opened, plain);
        }
        let h = mutate(&mut rng, &[&header]);
        if let Ok(p) = at_rest.open_header(&h, &name) {
            assert_eq!(h, header, "a changed header opened");
            assert_eq!(p, prefix);
        }
    }
}
