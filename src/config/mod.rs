//! Configuration: one TOML file (or none) plus command-line overrides, turned into a checked [`Config`].
//!
//! Two stages: serde reads a [`RawConfig`] from a `&str` (unknown keys rejected, [`raw`]), then
//! [`RawConfig::validate`] ([`validate`]) checks each section, parses sizes, durations, URLs, route
//! patterns and JSON paths, resolves upstream names, and merges flags and environment variables in. Every error names the
//! file, the line, the key path and the reason, e.g.
//! `config/outpost.toml:12: routes[2].upstream: no upstream named "medai" (known: api, media)`.
//!
//! Every default is written once, here, and documented in `config/outpost.toml`.

mod raw;
mod route;
mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Uri;
use serde::Serialize;

pub use crate::units::{parse_duration, parse_size};
pub use raw::RawConfig;

use crate::routes::{RouteConfig, RouteTable};
use crate::units::{ser_display, ser_duration, ser_opt_duration};

/// Default client-facing listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8787";
/// Default admin listen address.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:8788";
/// Default data directory.
pub const DEFAULT_DATA_DIR: &str = "./outpost-data";

/// Query parameters whose values never reach the log unless the config lists others (`log_redact`).
pub const DEFAULT_REDACT: &[&str] = &[
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
    "x-goog-signature",
    "x-goog-credential",
    "signature",
    "sig",
    "token",
    "access_token",
    "id_token",
    "refresh_token",
    "api_key",
    "apikey",
    "key",
    "password",
    "secret",
    "client_secret",
    "code",
];
/// Default cache size budget.
pub const DEFAULT_MAX_SIZE: &str = "500MB";
/// Name given to the upstream created by `--upstream URL` when the file names none.
pub const DEFAULT_UPSTREAM_NAME: &str = "api";

/// A configuration problem, located as precisely as the source allows.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The file's path as given.
        file: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown key, or a value of the wrong type.
    #[error("{}", invalid_text(.file, .line, .key, .reason))]
    Invalid {
        /// The file's path as given (or `<flags>` for command-line values).
        file: String,
        /// 1-based line, 0 when unknown.
        line: usize,
        /// Key path, e.g. `routes[2].upstream`.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

/// `FILE:LINE: key: reason`; without a line `FILE: key: reason`; for a flag `--flag: reason`.
fn invalid_text(file: &str, line: &usize, key: &str, reason: &str) -> String {
    match (file, *line) {
        ("<flags>", _) => format!("{key}: {reason}"),
        (_, 0) => format!("{file}: {key}: {reason}"),
        _ => format!("{file}:{line}: {key}: {reason}"),
    }
}

/// Values from flags and environment variables; they win over the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--upstream URL`: the default upstream's URL (created if the file has none).
    pub upstream: Option<String>,
    /// `--listen ADDR` / `OUTPOST_LISTEN`.
    pub listen: Option<String>,
    /// `--admin ADDR`.
    pub admin: Option<String>,
    /// `--data-dir DIR` / `OUTPOST_DATA_DIR`.
    pub data_dir: Option<PathBuf>,
    /// `--max-size SIZE`.
    pub max_size: Option<String>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Which trust anchors verify an https upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Roots {
    /// Mozilla's roots compiled in (webpki-roots).
    Webpki,
    /// The operating system's store.
    System,
    /// Only `ca_file`.
    None,
}

/// One named upstream.
#[derive(Debug, Clone, Serialize)]
pub struct UpstreamConfig {
    /// Name used by routes, logs and error bodies.
    pub name: String,
    /// Scheme + authority (+ optional base path).
    #[serde(serialize_with = "ser_display")]
    pub url: Uri,
    /// TCP (+TLS) connect timeout.
    #[serde(serialize_with = "ser_duration")]
    pub connect_timeout: Duration,
    /// Longest wait for the response head once the request is sent.
    #[serde(serialize_with = "ser_duration")]
    pub first_byte_timeout: Duration,
    /// Longest pause inside a response body; also the pool's idle timeout.
    #[serde(serialize_with = "ser_duration")]
    pub idle_timeout: Duration,
    /// Longest pause inside a `text/event-stream` body (`None`: no limit; such streams may be quiet for
    /// long, and TCP keep-alive still notices a vanished peer).
    #[serde(serialize_with = "ser_opt_duration")]
    pub stream_idle_timeout: Option<Duration>,
    /// Extra PEM CA bundle for private backends.
    pub ca_file: Option<PathBuf>,
    /// Built-in trust anchors.
    pub roots: Roots,
    /// Forward the client's Host header instead of the upstream's authority.
    pub preserve_host: bool,
    /// Idle pooled connections kept per host.
    pub pool_max_idle: usize,
    /// Path the connectivity probe requests while the upstream is offline (any answer = online).
    pub probe_path: String,
    /// How often the probe runs while offline.
    #[serde(serialize_with = "ser_duration")]
    pub probe_interval: Duration,
    /// What the backend's answers look like, to tell them from a captive portal's (`probe_expect`).
    pub expect: Option<BackendMark>,
    /// How long one probe may take.
    #[serde(serialize_with = "ser_duration")]
    pub probe_timeout: Duration,
}

/// Replay settings (`[queue]`).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct QueueSettings {
    /// First backoff step.
    #[serde(serialize_with = "ser_duration")]
    pub backoff_base: Duration,
    /// Largest backoff step.
    #[serde(serialize_with = "ser_duration")]
    pub backoff_cap: Duration,
    /// Attempts before an item becomes a dead letter.
    pub max_attempts: u32,
    /// Age after which an item becomes a dead letter.
    #[serde(serialize_with = "ser_duration")]
    pub max_age: Duration,
}

impl Default for QueueSettings {
    fn default() -> Self {
        QueueSettings {
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(300),
            max_attempts: 20,
            max_age: Duration::from_secs(7 * 86_400),
        }
    }
}

/// Cache-wide settings (`[cache]`).
#[derive(Debug, Clone, Serialize)]
pub struct CacheSettings {
    /// Shared-cache rules (s-maxage, no `private`, Authorization restrictions) instead of private ones.
    pub shared: bool,
    /// Hash every blob on every read, not only on first use after start.
    pub verify_on_read: bool,
    /// Evict by itself when over `max_size` (off: fills beyond the budget are not stored).
    pub auto_evict: bool,
    /// Entries not used for this long are evicted (pins excepted).
    #[serde(serialize_with = "ser_opt_duration")]
    pub max_unused: Option<Duration>,
    /// How requests are told apart by user (`partition`, `session_cookie`).
    pub partitioner: crate::cache::key::Partitioner,
    /// Whether stale answers the origin forbade may answer when it cannot be asked.
    pub offline_stale: crate::routes::OfflineStale,
    /// Apps may send `PURGE url` to the proxy port (their own answers only).
    pub allow_purge: bool,
    /// Memory for hot answers (decoded records, small bodies, RocksDB's block cache), in bytes.
    pub memory: u64,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            shared: false,
            verify_on_read: false,
            auto_evict: true,
            max_unused: None,
            partitioner: crate::cache::key::Partitioner::default(),
            offline_stale: crate::routes::OfflineStale::Always,
            allow_purge: false,
            memory: crate::store::DEFAULT_MEMORY as u64,
        }
    }
}

/// The checked configuration Outpost runs with.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// Where the app connects.
    pub listen: SocketAddr,
    /// Admin API address.
    pub admin_listen: SocketAddr,
    /// RocksDB and blob files live here.
    pub data_dir: PathBuf,
    /// Cache budget in bytes (enforced by eviction).
    pub max_size: u64,
    /// Budgets of single kinds in bytes (`[budget] audio = "500MB"`), each within `max_size`.
    pub kind_limits: std::collections::BTreeMap<String, u64>,
    /// Deadline for in-flight requests at shutdown.
    #[serde(serialize_with = "ser_duration")]
    pub shutdown_grace: Duration,
    /// A client must send its whole request head within this time (slowloris guard; also the idle
    /// limit between requests on a kept-alive connection).
    #[serde(serialize_with = "ser_duration")]
    pub header_read_timeout: Duration,
    /// Log format.
    pub log_format: LogFormat,
    /// Query parameters whose values the request log shows as `REDACTED`.
    pub log_redact: Vec<String>,
    /// `/metrics` on the admin port answers without the admin token (for a scraper that cannot send it).
    pub public_metrics: bool,
    /// Stored bodies go from file to socket without a copy where the platform can (`sendfile(2)` on
    /// Linux); `false` takes the ordinary write path every platform has.
    pub zero_copy: bool,
    /// App connections open at once (more wait in the listen backlog).
    pub max_connections: usize,
    /// Longest pause inside a request body, and the longest a write body being read to be queued may
    /// take in all.
    #[serde(serialize_with = "ser_duration")]
    pub body_read_timeout: Duration,
    /// Bytes of write bodies held in memory at once while they are read to be queued; beyond it a write
    /// gets a 503 with `Retry-After`.
    pub max_buffered_bodies: u64,
    /// Cache-wide settings.
    pub cache: CacheSettings,
    /// Replay settings.
    pub queue: QueueSettings,
    /// Upstreams in name order.
    pub upstreams: Vec<UpstreamConfig>,
    /// Index of the upstream used when no route matches.
    #[serde(skip)]
    pub default_upstream: usize,
    /// Routes, first match wins.
    pub routes: Vec<RouteConfig>,
    /// Encryption at rest of stored bodies, response heads and queued requests (`None`: off).
    pub encryption: Option<EncryptionKey>,
}

/// The at-rest encryption key and where it came from. Neither `Debug` nor the serialized config shows
/// the key itself.
#[derive(Clone)]
pub struct EncryptionKey {
    key: [u8; 32],
    source: String,
}

impl EncryptionKey {
    /// Reads a key file (64 hex digits or base64 of 32 bytes; surrounding whitespace ignored).
    pub fn from_file(path: &Path) -> Result<EncryptionKey, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let key = crate::store::parse_key(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(EncryptionKey {
            key,
            source: format!("key file {}", path.display()),
        })
    }

    /// Reads the key from an environment variable.
    pub fn from_env(name: &str) -> Result<EncryptionKey, String> {
        let text = std::env::var(name).map_err(|e| format!("environment variable {name}: {e}"))?;
        let key = crate::store::parse_key(&text).map_err(|e| format!("environment variable {name}: {e}"))?;
        Ok(EncryptionKey {
            key,
            source: format!("environment variable {name}"),
        })
    }

    /// The key.
    pub fn bytes(&self) -> &[u8; 32] {
        &self.key
    }

    /// Where the key came from (for messages).
    pub fn source(&self) -> &str {
        &self.source
    }
}

impl fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncryptionKey").field("source", &self.source).finish()
    }
}

impl Serialize for EncryptionKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

impl Config {
    /// Reads, parses and validates a file, applying `overrides`.
    pub fn load(path: &Path, overrides: &Overrides) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let src = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
        Config::from_toml(&src, &file, overrides)
    }

    /// Parses and validates TOML text; `file` is only used in messages.
    pub fn from_toml(src: &str, file: &str, overrides: &Overrides) -> Result<Config, ConfigError> {
        RawConfig::parse(src, file)?.validate(src, file, overrides)
    }

    /// No file: defaults plus overrides (e.g. `outpost serve --upstream URL`).
    pub fn from_overrides(overrides: &Overrides) -> Result<Config, ConfigError> {
        RawConfig::default().validate("", "<flags>", overrides)
    }

    /// The route table built from [`Config::routes`].
    pub fn route_table(&self) -> RouteTable {
        RouteTable::new(self.routes.clone(), self.default_upstream)
    }

    /// The effective configuration as pretty JSON (for `check-config`).
    pub fn to_pretty_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("<unprintable: {e}>"))
    }
}

/// An upstream with every knob at its default.
pub fn default_upstream_config(name: &str, url: Uri) -> UpstreamConfig {
    UpstreamConfig {
        name: name.to_string(),
        url,
        connect_timeout: Duration::from_secs(5),
        first_byte_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(60),
        stream_idle_timeout: None,
        ca_file: None,
        roots: Roots::Webpki,
        preserve_host: false,
        pool_max_idle: 32,
        probe_path: "/".to_string(),
        probe_interval: Duration::from_secs(2),
        probe_timeout: Duration::from_secs(2),
        expect: None,
    }
}

/// `probe_expect = { status = 200, header = "x-api-version" }`: every answer of the backend carries
/// `header`, and its probe answers with `status`. Anything else (a Wi-Fi login page answering `200
/// text/html` to everything) is not the backend: the upstream counts as unreachable.
#[derive(Debug, Clone, Serialize)]
pub struct BackendMark {
    /// The probe's expected status.
    pub status: Option<u16>,
    /// A field every answer of the backend carries.
    pub header: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(src: &str) -> String {
        Config::from_toml(src, "t.toml", &Overrides::default())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn encryption_keys_load_from_a_file_and_bad_ones_name_the_key_and_reason() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.key");
        std::fs::write(&good, "ab".repeat(32)).unwrap();
        let short = dir.path().join("short.key");
        std::fs::write(&short, "abcd").unwrap();
        let up = "[upstreams.api]\nurl = \"http://a\"\n";
        let c = Config::from_toml(
            &format!("{up}[encryption]\nkey_file = {:?}\n", good.display().to_string()),
            "t.toml",
            &Overrides::default(),
        )
        .unwrap();
        let key = c.encryption.as_ref().unwrap();
        assert_eq!(key.bytes(), &[0xab; 32]);
        assert!(!format!("{c:?}").contains("171"), "the key never shows in Debug");
        assert!(!serde_json::to_string(&c)
            .unwrap()
            .to_lowercase()
            .contains(&"ab".repeat(8)));

        let e = err(&format!(
            "{up}[encryption]\nkey_file = {:?}\n",
            short.display().to_string()
        ));
        assert!(
            e.contains("t.toml") && e.contains("encryption.key_file") && e.contains("a key is 32 bytes"),
            "{e}"
        );
        let e = err(&format!("{up}[encryption]\nkey_file = \"/nonexistent/k\"\n"));
        assert!(
            e.contains("encryption.key_file") && e.contains("cannot read /nonexistent/k"),
            "{e}"
        );
        let e = err(&format!("{up}[encryption]\nkey_env = \"OUTPOST_TEST_UNSET_KEY_VAR\"\n"));
        assert!(
            e.contains("encryption.key_env") && e.contains("OUTPOST_TEST_UNSET_KEY_VAR"),
            "{e}"
        );
        let e = err(&format!("{up}[encryption]\nkey_file = \"a\"\nkey_env = \"B\"\n"));
        assert!(e.contains("not both"), "{e}");
        let e = err(&format!("{up}[encryption]\nkey = \"a\"\n"));
        assert!(e.contains("encryption") && e.contains("unknown field"), "{e}");
    }

    #[test]
    fn unknown_upstream_names_line_key_and_known_names() {
        let src = "[upstreams.api]\nurl = \"http://a\"\n[upstreams.media]\nurl = \"http://m\"\n\n[[routes]]\nprefix = \"/a\"\n[[routes]]\nprefix = \"/b\"\n[[routes]]\nprefix = \"/m\"\nupstream = \"medai\"\n";
        assert_eq!(
            err(src),
            "t.toml:12: routes[2].upstream: no upstream named \"medai\" (known: api, media)"
        );
    }

    #[test]
    fn unknown_key_is_rejected_with_its_path() {
        let e = err("[upstreams.api]\nurl = \"http://a\"\ntimeout = \"5s\"\n");
        assert!(e.starts_with("t.toml:3: upstreams.api"), "{e}");
        assert!(e.contains("unknown field `timeout`"), "{e}");
        let e = err("[upstreams.api]\nurl = \"http://a\"\n[[routes]]\nprefx = \"/a/\"\n");
        assert!(
            e.contains("unknown field `prefx`") && e.ends_with("did you mean `prefix`?"),
            "{e}"
        );
        let e = err("[cache]\nofline_stale = \"rfc\"\n[upstreams.api]\nurl = \"http://a\"\n");
        assert!(e.ends_with("did you mean `offline_stale`?"), "{e}");
        let e = err("[upstreams.api]\nurl = \"http://a\"\n[[routes]]\npath = \"/api/*\"\n");
        assert!(e.contains("routes[0].path") && e.contains("prefix = \"/api/\""), "{e}");
        let e = err("[upstreams.api]\nurl = \"http://a\"\nzzzzzz = 1\n");
        assert!(!e.contains("did you mean"), "nothing close: {e}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let e = err("max_size = \"lots\"\n[upstreams.api]\nurl = \"http://a\"\n");
        assert!(e.starts_with("t.toml:1: max_size: invalid size"), "{e}");
        let e = err("[upstreams.api]\nurl = \"ftp://a\"\n");
        assert!(e.starts_with("t.toml:2: upstreams.api.url:"), "{e}");
        let e = err("[upstreams.api]\nurl = \"http://a\"\nconnect_timeout = \"soon\"\n");
        assert!(
            e.starts_with("t.toml:3: upstreams.api.connect_timeout: invalid duration"),
            "{e}"
        );
        let e = err("[upstreams.api]\nurl = \"http://a\"\n[[routes]]\npath = \"/x\"\nstrategy = \"fast\"\n");
        assert!(
            e.starts_with("t.toml:5: routes[0].strategy: unknown strategy \"fast\""),
            "{e}"
        );
        let e = err("listen = 5\n");
        assert!(e.starts_with("t.toml:1: listen:"), "{e}");
    }

    #[test]
    fn retention_and_media_alias_rules_are_checked() {
        let base = "[upstreams.api]\nurl = \"http://a\"\n[[routes]]\npath = \"/t/{tid}/s/{sid}\"\n";
        let e = err(&format!("{base}retain = {{ group = \"{{thread}}\", keep_last = 5 }}\n"));
        assert!(e.starts_with("t.toml:5: routes[0].retain.group:"), "{e}");
        assert!(e.contains("no {thread}"), "{e}");
        let e = err(&format!("{base}retain = {{ group = \"{{tid}}\", keep_last = 0 }}\n"));
        assert!(
            e.starts_with("t.toml:5: routes[0].retain.keep_last: must be at least 1"),
            "{e}"
        );
        let e = err(&format!(
            "{base}retain = {{ group = \"{{tid}}\", keep_last = 2, drop = \"all\" }}\n"
        ));
        assert!(e.contains("routes[0].retain.drop: unknown value \"all\""), "{e}");
        let e = err(&format!("{base}retain = {{ keep_last = 2 }}\n"));
        assert!(e.contains("missing field `group`"), "{e}");
        let e = err(&format!("{base}media_alias = {{ objects = \"items[*]\" }}\n"));
        assert!(e.starts_with("t.toml:5: routes[0].media_alias: needs `rewrite`"), "{e}");
        let ok = Config::from_toml(
            &format!("{base}retain = {{ group = \"{{tid}}\", keep_last = 3, drop = \"entry\" }}\n"),
            "t.toml",
            &Overrides::default(),
        )
        .unwrap();
        let r = ok.routes[0].policy.retain.as_ref().unwrap();
        assert_eq!((r.group.as_str(), r.keep_last, r.drop_entry), ("{tid}", 3, true));
    }

    #[test]
    fn no_file_needs_an_upstream_flag() {
        let e = Config::from_overrides(&Overrides::default()).unwrap_err().to_string();
        assert!(e.contains("--upstream"), "{e}");
        let c = Config::from_overrides(&Overrides {
            upstream: Some("https://api.example.com".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.admin_listen.to_string(), DEFAULT_ADMIN);
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(c.max_size, 500_000_000);
        assert_eq!(c.upstreams[0].url.to_string(), "https://api.example.com/");
    }

    #[test]
    fn flags_win_over_the_file() {
        let src = "listen = \"127.0.0.1:1\"\nmax_size = \"1MB\"\n[upstreams.api]\nurl = \"http://a\"\n";
        let c = Config::from_toml(
            src,
            "t.toml",
            &Overrides {
                listen: Some("127.0.0.1:2".into()),
                max_size: Some("2MiB".into()),
                upstream: Some("http://b".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(c.listen.port(), 2);
        assert_eq!(c.max_size, 2 * 1024 * 1024);
        assert_eq!(c.upstreams[0].url.host(), Some("b"));
    }

    #[test]
    fn shipped_config_file_is_valid() {
        let src = include_str!("../../config/outpost.toml");
        let c = Config::from_toml(src, "config/outpost.toml", &Overrides::default()).unwrap();
        assert!(c.upstreams.len() >= 2);
        assert!(!c.routes.is_empty());
    }
}
