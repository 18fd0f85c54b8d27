//! Stage one: the file as written. serde reads every key as optional (unknown keys are rejected), with
//! spans kept so that stage two can name the line of a bad value.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::ConfigError;

/// The file as written: every key optional, unknown keys rejected.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub(super) listen: Option<Spanned<String>>,
    pub(super) admin_listen: Option<Spanned<String>>,
    pub(super) data_dir: Option<String>,
    pub(super) max_size: Option<Spanned<String>>,
    pub(super) default_upstream: Option<Spanned<String>>,
    pub(super) shutdown_grace: Option<Spanned<String>>,
    pub(super) header_read_timeout: Option<Spanned<String>>,
    pub(super) log_format: Option<Spanned<String>>,
    pub(super) log_redact: Option<Vec<String>>,
    pub(super) public_metrics: Option<bool>,
    pub(super) zero_copy: Option<bool>,
    pub(super) max_connections: Option<Spanned<i64>>,
    pub(super) body_read_timeout: Option<Spanned<String>>,
    pub(super) max_buffered_bodies: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) cache: RawCache,
    #[serde(default)]
    pub(super) queue: RawQueue,
    /// Limits of single kinds: `[budget] audio = "500MB"`.
    #[serde(default)]
    pub(super) budget: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    pub(super) encryption: RawEncryption,
    #[serde(default)]
    pub(super) upstreams: BTreeMap<String, RawUpstream>,
    #[serde(default)]
    pub(super) routes: Vec<RawRoute>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCache {
    pub(super) shared: Option<bool>,
    pub(super) verify_on_read: Option<bool>,
    pub(super) auto_evict: Option<bool>,
    pub(super) max_unused: Option<Spanned<String>>,
    pub(super) partition: Option<Spanned<String>>,
    pub(super) session_cookie: Option<Spanned<String>>,
    pub(super) offline_stale: Option<Spanned<String>>,
    pub(super) allow_purge: Option<bool>,
    pub(super) memory: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEncryption {
    pub(super) key_file: Option<Spanned<String>>,
    pub(super) key_env: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    pub(super) url: Option<Spanned<String>>,
    pub(super) connect_timeout: Option<Spanned<String>>,
    pub(super) first_byte_timeout: Option<Spanned<String>>,
    pub(super) idle_timeout: Option<Spanned<String>>,
    pub(super) stream_idle_timeout: Option<Spanned<String>>,
    pub(super) ca_file: Option<Spanned<String>>,
    pub(super) roots: Option<Spanned<String>>,
    pub(super) preserve_host: Option<bool>,
    pub(super) pool_max_idle: Option<usize>,
    pub(super) probe_path: Option<Spanned<String>>,
    pub(super) probe_interval: Option<Spanned<String>>,
    pub(super) probe_timeout: Option<Spanned<String>>,
    pub(super) probe_expect: Option<Spanned<RawExpect>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawExpect {
    pub(super) status: Option<u16>,
    pub(super) header: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub(super) name: Option<String>,
    pub(super) path: Option<Spanned<String>>,
    pub(super) prefix: Option<Spanned<String>>,
    pub(super) upstream: Option<Spanned<String>>,
    pub(super) strip_prefix: Option<Spanned<String>>,
    pub(super) methods: Option<Vec<Spanned<String>>>,
    pub(super) kind: Option<String>,
    pub(super) strategy: Option<Spanned<String>>,
    pub(super) ttl: Option<Spanned<String>>,
    pub(super) network_timeout: Option<Spanned<String>>,
    pub(super) ignore_query: Option<Vec<String>>,
    pub(super) queue: Option<bool>,
    pub(super) supersede: Option<bool>,
    pub(super) overlay: Option<bool>,
    pub(super) overlay_list: Option<Spanned<RawOverlayList>>,
    pub(super) max_body: Option<Spanned<String>>,
    pub(super) conflict: Option<Spanned<String>>,
    pub(super) ordering_key: Option<Spanned<String>>,
    pub(super) priority: Option<i32>,
    pub(super) invalidates: Option<Vec<Spanned<String>>>,
    pub(super) rewrite: Option<Vec<Spanned<String>>>,
    pub(super) rewrite_max: Option<Spanned<String>>,
    pub(super) pins: Option<Spanned<String>>,
    pub(super) prefetch: Option<bool>,
    pub(super) media_alias: Option<Spanned<RawMediaAlias>>,
    pub(super) retain: Option<Spanned<RawRetain>>,
    pub(super) logout: Option<bool>,
    pub(super) upgrade: Option<bool>,
    pub(super) partition: Option<Spanned<String>>,
    pub(super) offline_stale: Option<Spanned<String>>,
    pub(super) queued_status: Option<Spanned<u16>>,
    pub(super) queued_body: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOverlayList {
    pub(super) path: Spanned<String>,
    pub(super) items: Option<Spanned<String>>,
    pub(super) id: Option<String>,
    pub(super) add: Option<Spanned<String>>,
    pub(super) item_path: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRetain {
    pub(super) group: Spanned<String>,
    pub(super) keep_last: Spanned<i64>,
    pub(super) drop: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMediaAlias {
    pub(super) objects: Spanned<String>,
    pub(super) id: Option<String>,
    pub(super) url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawQueue {
    pub(super) backoff_base: Option<Spanned<String>>,
    pub(super) backoff_cap: Option<Spanned<String>>,
    pub(super) max_attempts: Option<u32>,
    pub(super) max_age: Option<Spanned<String>>,
}

/// Turns a byte offset into a 1-based line number.
pub(super) fn line_of(src: &str, offset: usize) -> usize {
    let end = offset.min(src.len());
    src.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count() + 1
}

impl RawConfig {
    /// Stage one: TOML text to raw values. Unknown keys and wrong types are errors with line and key path.
    pub fn parse(src: &str, file: &str) -> Result<RawConfig, ConfigError> {
        let de = toml::Deserializer::parse(src).map_err(|e| ConfigError::Invalid {
            file: file.to_string(),
            line: e.span().map(|s| line_of(src, s.start)).unwrap_or(0),
            key: "<syntax>".to_string(),
            reason: e.message().trim().to_string(),
        })?;
        serde_path_to_error::deserialize(de).map_err(|e| {
            // toml::Spanned shows up as an inner field in the path; people wrote just the key.
            let path = e.path().to_string().replace(".$__serde_spanned_private_value", "");
            let inner = e.into_inner();
            ConfigError::Invalid {
                file: file.to_string(),
                line: inner.span().map(|s| line_of(src, s.start)).unwrap_or(0),
                key: if path == "." { "<top>".to_string() } else { path },
                reason: with_suggestion(inner.message().trim()),
            }
        })
    }
}

/// serde's "unknown field `prefx`, expected one of `path`, `prefix`, ..." with the likeliest meant
/// name added: "...; did you mean `prefix`?".
fn with_suggestion(msg: &str) -> String {
    let Some(rest) = msg.strip_prefix("unknown field `") else {
        return msg.to_string();
    };
    let Some((given, expected)) = rest.split_once('`') else {
        return msg.to_string();
    };
    let best = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|known| (strsim::damerau_levenshtein(given, known), known))
        .filter(|(d, known)| *d <= 2.max(known.len() / 3))
        .min();
    match best {
        Some((_, known)) => format!("{msg}; did you mean `{known}`?"),
        None => msg.to_string(),
    }
}
