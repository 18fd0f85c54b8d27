//! Configuration: one TOML file (or none) plus command-line overrides, turned into a checked [`Config`].
//!
//! Two stages: serde reads a [`RawConfig`] from a `&str` (unknown keys rejected), then [`RawConfig::validate`]
//! parses sizes, durations, URLs and route patterns and resolves upstream names. Every error names the
//! file, the line, the key path and the reason, e.g.
//! `config/outpost.toml:12: routes[2].upstream: no upstream named "medai" (known: api, media)`.
//!
//! Every default is written once, here, and documented in `config/outpost.toml`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Uri;
use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::routes::{RoutePattern, RouteTable};

/// Default client-facing listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8787";
/// Default admin listen address.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:8788";
/// Default data directory.
pub const DEFAULT_DATA_DIR: &str = "./outpost-data";
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
    #[error("{file}:{line}: {key}: {reason}")]
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

/// The file as written: every key optional, unknown keys rejected.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    listen: Option<Spanned<String>>,
    admin_listen: Option<Spanned<String>>,
    data_dir: Option<String>,
    max_size: Option<Spanned<String>>,
    default_upstream: Option<Spanned<String>>,
    shutdown_grace: Option<Spanned<String>>,
    header_read_timeout: Option<Spanned<String>>,
    log_format: Option<Spanned<String>>,
    #[serde(default)]
    cache: RawCache,
    #[serde(default)]
    queue: RawQueue,
    #[serde(default)]
    encryption: RawEncryption,
    #[serde(default)]
    upstreams: BTreeMap<String, RawUpstream>,
    #[serde(default)]
    routes: Vec<RawRoute>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCache {
    shared: Option<bool>,
    verify_on_read: Option<bool>,
    auto_evict: Option<bool>,
    max_unused: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEncryption {
    key_file: Option<Spanned<String>>,
    key_env: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    url: Option<Spanned<String>>,
    connect_timeout: Option<Spanned<String>>,
    first_byte_timeout: Option<Spanned<String>>,
    idle_timeout: Option<Spanned<String>>,
    ca_file: Option<Spanned<String>>,
    roots: Option<Spanned<String>>,
    preserve_host: Option<bool>,
    pool_max_idle: Option<usize>,
    probe_path: Option<Spanned<String>>,
    probe_interval: Option<Spanned<String>>,
    probe_timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    name: Option<String>,
    path: Option<Spanned<String>>,
    prefix: Option<Spanned<String>>,
    upstream: Option<Spanned<String>>,
    strip_prefix: Option<Spanned<String>>,
    methods: Option<Vec<Spanned<String>>>,
    kind: Option<String>,
    strategy: Option<Spanned<String>>,
    ttl: Option<Spanned<String>>,
    network_timeout: Option<Spanned<String>>,
    ignore_query: Option<Vec<String>>,
    queue: Option<bool>,
    max_body: Option<Spanned<String>>,
    conflict: Option<Spanned<String>>,
    ordering_key: Option<Spanned<String>>,
    priority: Option<i32>,
    invalidates: Option<Vec<Spanned<String>>>,
    rewrite: Option<Vec<Spanned<String>>>,
    rewrite_max: Option<Spanned<String>>,
    pins: Option<Spanned<String>>,
    prefetch: Option<bool>,
    media_alias: Option<Spanned<RawMediaAlias>>,
    retain: Option<Spanned<RawRetain>>,
    logout: Option<bool>,
    queued_status: Option<Spanned<u16>>,
    queued_body: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetain {
    group: Spanned<String>,
    keep_last: Spanned<i64>,
    drop: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMediaAlias {
    objects: Spanned<String>,
    id: Option<String>,
    url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQueue {
    backoff_base: Option<Spanned<String>>,
    backoff_cap: Option<Spanned<String>>,
    max_attempts: Option<u32>,
    max_age: Option<Spanned<String>>,
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
    /// How long one probe may take.
    #[serde(serialize_with = "ser_duration")]
    pub probe_timeout: Duration,
}

/// How a route answers GETs (used by the cache; the foundation only forwards).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// RFC 9111 rules; stale served when the upstream is unreachable.
    Http,
    /// Answer from cache at once, refresh in the background.
    StaleWhileRevalidate,
    /// Cache if present, else network.
    CacheFirst,
    /// Network with a timeout, then cache.
    NetworkFirst,
    /// Never cache.
    NetworkOnly,
    /// Never contact the upstream.
    CacheOnly,
}

impl Strategy {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Http => "http",
            Strategy::StaleWhileRevalidate => "stale-while-revalidate",
            Strategy::CacheFirst => "cache-first",
            Strategy::NetworkFirst => "network-first",
            Strategy::NetworkOnly => "network-only",
            Strategy::CacheOnly => "cache-only",
        }
    }

    const ALL: [Strategy; 6] = [
        Strategy::Http,
        Strategy::StaleWhileRevalidate,
        Strategy::CacheFirst,
        Strategy::NetworkFirst,
        Strategy::NetworkOnly,
        Strategy::CacheOnly,
    ];
}

/// Per-route behaviour; later features read their knobs from here.
#[derive(Debug, Clone, Serialize)]
pub struct RoutePolicy {
    /// Caching strategy for GET/HEAD.
    pub strategy: Strategy,
    /// Content kind for stats and clearing (`messages`, `snapshots`, `audio`, `library`, ...).
    pub kind: String,
    /// Freshness lifetime for responses without cache headers.
    #[serde(serialize_with = "ser_opt_duration")]
    pub ttl: Option<Duration>,
    /// Network timeout of the `network-first` strategy.
    #[serde(serialize_with = "ser_duration")]
    pub network_timeout: Duration,
    /// Query parameter names (trailing `*` = prefix) left out of the cache key.
    pub ignore_query: Vec<String>,
    /// Queue mutating requests while the upstream is unreachable.
    pub queue: bool,
    /// Largest request body that can be queued.
    pub max_body: u64,
    /// What a replay answered 409/412 does.
    pub conflict: ConflictPolicy,
    /// Template over the route's `{params}`: items with different keys replay independently.
    pub ordering_key: Option<String>,
    /// Higher replays first (among items whose turn it is).
    pub priority: i32,
    /// GET paths (may use the route's `{params}`) invalidated when a write on this route succeeds.
    pub invalidates: Vec<String>,
    /// Media rewriting: absolute URLs of these upstreams inside this route's JSON responses become
    /// local URLs through the prefix route that serves each upstream.
    pub rewrite: Vec<MediaRewrite>,
    /// JSON bodies larger than this are passed through unrewritten.
    pub rewrite_max: u64,
    /// JSON path (`items[*].url`) of media URLs in this route's answers that are pinned (never evicted
    /// while the latest answer lists them).
    pub pins: Option<String>,
    /// Download pinned media in the background.
    pub prefetch: bool,
    /// Media identity inside this route's JSON answers: a new URL for a known id is served from the
    /// blob already stored for that id.
    pub media_alias: Option<MediaAlias>,
    /// Per-group retention of stored answers.
    pub retain: Option<Retention>,
    /// A successful request on this route logs the user out: their partition is cleared.
    pub logout: bool,
    /// Instead of 202, answer queued writes with this status and `queued_body`.
    pub queued_status: Option<u16>,
    /// Body template for `queued_status`: `{body}` is the request body, `{id}` the queue id.
    pub queued_body: Option<String>,
}

/// `retain = { group = "{thread_id}", keep_last = 50, drop = "body" }`.
#[derive(Debug, Clone, Serialize)]
pub struct Retention {
    /// Template over the route's `{params}`; answers with the same expansion (per user) form a group.
    pub group: String,
    /// How many of the newest stored answers per group keep their bodies.
    pub keep_last: usize,
    /// `true`: drop the whole entry; `false`: drop the body, keep the head as metadata.
    pub drop_entry: bool,
}

/// `media_alias = { objects = "items[*]", id = "audio_file_id", url = "url" }`.
#[derive(Debug, Clone, Serialize)]
pub struct MediaAlias {
    /// JSON path of the objects that carry both fields.
    pub objects: String,
    /// Field holding the stable media id.
    pub id: String,
    /// Field holding the (changing) media URL.
    pub url: String,
}

/// One media rewrite rule: `https://media.host/base/...` → `<client's host><local_prefix>/...`.
#[derive(Debug, Clone, Serialize)]
pub struct MediaRewrite {
    /// Upstream whose absolute URLs are rewritten.
    pub upstream: String,
    /// Its URL as text, without a trailing slash (what is matched).
    pub origin: String,
    /// The local path prefix routed to it (the route's strip_prefix).
    pub local_prefix: String,
}

/// What a replay that meets a conflict (409/412) does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConflictPolicy {
    /// Drop the write and record it among the dead letters as overridden by the server.
    ServerWins,
    /// Keep retrying with backoff.
    Retry,
    /// Stop and keep it as a dead letter for the user to decide.
    DeadLetter,
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

impl Default for RoutePolicy {
    fn default() -> Self {
        RoutePolicy {
            strategy: Strategy::Http,
            kind: "other".to_string(),
            ttl: None,
            network_timeout: Duration::from_secs(3),
            ignore_query: Vec::new(),
            queue: true,
            max_body: 1 << 20,
            conflict: ConflictPolicy::DeadLetter,
            ordering_key: None,
            priority: 0,
            invalidates: Vec::new(),
            queued_status: None,
            queued_body: None,
            rewrite: Vec::new(),
            rewrite_max: 4 << 20,
            pins: None,
            prefetch: false,
            media_alias: None,
            retain: None,
            logout: false,
        }
    }
}

/// One `[[routes]]` entry, checked.
#[derive(Debug, Clone, Serialize)]
pub struct RouteConfig {
    /// Name for logs and metrics (defaults to `route<N>`).
    pub name: String,
    /// What request paths it matches.
    pub pattern: RoutePattern,
    /// Index into [`Config::upstreams`].
    #[serde(skip)]
    pub upstream: usize,
    /// Upstream name (for display).
    #[serde(rename = "upstream")]
    pub upstream_name: String,
    /// Leading path removed before forwarding.
    pub strip_prefix: Option<String>,
    /// Methods it applies to; empty = all.
    #[serde(serialize_with = "ser_methods")]
    pub methods: Vec<http::Method>,
    /// Policy knobs.
    pub policy: RoutePolicy,
}

/// Cache-wide settings (`[cache]`).
#[derive(Debug, Clone, Copy, Serialize, Default)]
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
    /// Deadline for in-flight requests at shutdown.
    #[serde(serialize_with = "ser_duration")]
    pub shutdown_grace: Duration,
    /// A client must send its whole request head within this time (slowloris guard; also the idle
    /// limit between requests on a kept-alive connection).
    #[serde(serialize_with = "ser_duration")]
    pub header_read_timeout: Duration,
    /// Log format.
    pub log_format: LogFormat,
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

/// Turns a byte offset into a 1-based line number.
fn line_of(src: &str, offset: usize) -> usize {
    let end = offset.min(src.len());
    src.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count() + 1
}

struct Ctx<'a> {
    src: &'a str,
    file: &'a str,
}

impl Ctx<'_> {
    fn err(&self, span: Option<std::ops::Range<usize>>, key: &str, reason: impl fmt::Display) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_string(),
            line: span.map(|s| line_of(self.src, s.start)).unwrap_or(0),
            key: key.to_string(),
            reason: reason.to_string(),
        }
    }

    fn duration(&self, v: &Option<Spanned<String>>, key: &str, default: Duration) -> Result<Duration, ConfigError> {
        match v {
            None => Ok(default),
            Some(s) => parse_duration(s.get_ref()).map_err(|r| self.err(Some(s.span()), key, r)),
        }
    }
}

/// Parses `"250ms"`, `"5s"`, `"2m"`, `"30d"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("invalid duration {s:?} ({e}); examples: \"250ms\", \"5s\", \"30d\""))
}

/// Parses `"500MB"`, `"1GiB"`, `"1048576"`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    s.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("invalid size {s:?} ({e}); examples: \"500MB\", \"2GiB\""))
}

fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("invalid socket address {s:?}; expected IP:PORT such as \"127.0.0.1:8787\""))
}

fn parse_upstream_url(s: &str) -> Result<Uri, String> {
    let uri: Uri = s.trim().parse().map_err(|e| format!("invalid URL {s:?}: {e}"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err(format!("URL {s:?} must start with http:// or https://")),
    }
    if uri.authority().is_none() {
        return Err(format!("URL {s:?} has no host"));
    }
    if uri.query().is_some() {
        return Err(format!("URL {s:?} must not have a query"));
    }
    Ok(uri)
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
                reason: inner.message().trim().to_string(),
            }
        })
    }

    /// Stage two: check every value, apply overrides and defaults.
    pub fn validate(self, src: &str, file: &str, ov: &Overrides) -> Result<Config, ConfigError> {
        let cx = Ctx { src, file };
        let flag = Ctx {
            src: "",
            file: "<flags>",
        };

        let listen = match (&ov.listen, &self.listen) {
            (Some(v), _) => parse_addr(v).map_err(|r| flag.err(None, "--listen", r))?,
            (None, Some(v)) => parse_addr(v.get_ref()).map_err(|r| cx.err(Some(v.span()), "listen", r))?,
            (None, None) => parse_addr(DEFAULT_LISTEN).map_err(|r| flag.err(None, "listen", r))?,
        };
        let admin_listen = match (&ov.admin, &self.admin_listen) {
            (Some(v), _) => parse_addr(v).map_err(|r| flag.err(None, "--admin", r))?,
            (None, Some(v)) => parse_addr(v.get_ref()).map_err(|r| cx.err(Some(v.span()), "admin_listen", r))?,
            (None, None) => parse_addr(DEFAULT_ADMIN).map_err(|r| flag.err(None, "admin_listen", r))?,
        };
        if listen == admin_listen && listen.port() != 0 {
            return Err(cx.err(
                self.admin_listen.as_ref().map(|s| s.span()),
                "admin_listen",
                format!("must differ from listen ({listen})"),
            ));
        }
        let data_dir = ov
            .data_dir
            .clone()
            .or_else(|| self.data_dir.clone().map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let max_size = match (&ov.max_size, &self.max_size) {
            (Some(v), _) => parse_size(v).map_err(|r| flag.err(None, "--max-size", r))?,
            (None, Some(v)) => parse_size(v.get_ref()).map_err(|r| cx.err(Some(v.span()), "max_size", r))?,
            (None, None) => parse_size(DEFAULT_MAX_SIZE).map_err(|r| flag.err(None, "max_size", r))?,
        };
        let shutdown_grace = cx.duration(&self.shutdown_grace, "shutdown_grace", Duration::from_secs(10))?;
        let header_read_timeout = cx.duration(
            &self.header_read_timeout,
            "header_read_timeout",
            Duration::from_secs(10),
        )?;
        let log_format = match self.log_format.as_ref().map(|s| (s.get_ref().as_str(), s.span())) {
            None | Some(("text", _)) => LogFormat::Text,
            Some(("json", _)) => LogFormat::Json,
            Some((other, span)) => {
                return Err(cx.err(
                    Some(span),
                    "log_format",
                    format!("unknown format {other:?} (known: text, json)"),
                ))
            }
        };

        let mut upstreams = Vec::with_capacity(self.upstreams.len() + 1);
        for (name, raw) in &self.upstreams {
            let key = |k: &str| format!("upstreams.{name}.{k}");
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                return Err(cx.err(
                    raw.url.as_ref().map(|s| s.span()),
                    &format!("upstreams.{name}"),
                    "upstream names use letters, digits, '-' and '_'",
                ));
            }
            let url = match &raw.url {
                Some(u) => parse_upstream_url(u.get_ref()).map_err(|r| cx.err(Some(u.span()), &key("url"), r))?,
                None => match (&ov.upstream, &self.default_upstream) {
                    // `--upstream` fills in the default upstream's URL if the file leaves it out.
                    (Some(u), Some(d)) if d.get_ref() == name => {
                        parse_upstream_url(u).map_err(|r| flag.err(None, "--upstream", r))?
                    }
                    _ => {
                        return Err(cx.err(
                            find_table_header(src, &format!("upstreams.{name}")),
                            &key("url"),
                            "missing (every upstream needs a url)",
                        ))
                    }
                },
            };
            let roots = match raw.roots.as_ref().map(|s| (s.get_ref().as_str(), s.span())) {
                None | Some(("webpki", _)) => Roots::Webpki,
                Some(("system", _)) => Roots::System,
                Some(("none", _)) => Roots::None,
                Some((other, span)) => {
                    return Err(cx.err(
                        Some(span),
                        &key("roots"),
                        format!("unknown roots {other:?} (known: webpki, system, none)"),
                    ))
                }
            };
            let ca_file = match &raw.ca_file {
                None => None,
                Some(p) => {
                    let path = PathBuf::from(p.get_ref());
                    if !path.is_file() {
                        return Err(cx.err(
                            Some(p.span()),
                            &key("ca_file"),
                            format!("no such file {:?}", p.get_ref()),
                        ));
                    }
                    Some(path)
                }
            };
            if roots == Roots::None && ca_file.is_none() && url.scheme_str() == Some("https") {
                return Err(cx.err(
                    raw.roots.as_ref().map(|s| s.span()),
                    &key("roots"),
                    "\"none\" needs a ca_file for an https upstream",
                ));
            }
            upstreams.push(UpstreamConfig {
                name: name.clone(),
                url,
                connect_timeout: cx.duration(&raw.connect_timeout, &key("connect_timeout"), Duration::from_secs(5))?,
                first_byte_timeout: cx.duration(
                    &raw.first_byte_timeout,
                    &key("first_byte_timeout"),
                    Duration::from_secs(30),
                )?,
                idle_timeout: cx.duration(&raw.idle_timeout, &key("idle_timeout"), Duration::from_secs(60))?,
                ca_file,
                roots,
                preserve_host: raw.preserve_host.unwrap_or(false),
                pool_max_idle: raw.pool_max_idle.unwrap_or(32),
                probe_path: match &raw.probe_path {
                    None => "/".to_string(),
                    Some(p) if p.get_ref().starts_with('/') => p.get_ref().clone(),
                    Some(p) => return Err(cx.err(Some(p.span()), &key("probe_path"), "must start with '/'")),
                },
                probe_interval: cx.duration(&raw.probe_interval, &key("probe_interval"), Duration::from_secs(2))?,
                probe_timeout: cx.duration(&raw.probe_timeout, &key("probe_timeout"), Duration::from_secs(2))?,
            });
        }

        let known = |ups: &[UpstreamConfig]| ups.iter().map(|u| u.name.as_str()).collect::<Vec<_>>().join(", ");
        let default_upstream = match (&self.default_upstream, &ov.upstream) {
            (Some(d), _) => upstreams.iter().position(|u| &u.name == d.get_ref()).ok_or_else(|| {
                cx.err(
                    Some(d.span()),
                    "default_upstream",
                    format!("no upstream named {:?} (known: {})", d.get_ref(), known(&upstreams)),
                )
            })?,
            (None, Some(u)) if upstreams.is_empty() => {
                let url = parse_upstream_url(u).map_err(|r| flag.err(None, "--upstream", r))?;
                upstreams.push(default_upstream_config(DEFAULT_UPSTREAM_NAME, url));
                0
            }
            (None, _) if upstreams.len() == 1 => 0,
            (None, _) if upstreams.is_empty() => {
                return Err(cx.err(
                    None,
                    "upstreams",
                    "no upstream configured: pass --upstream URL or add an [upstreams.NAME] table with a url",
                ))
            }
            (None, _) => upstreams
                .iter()
                .position(|u| u.name == DEFAULT_UPSTREAM_NAME)
                .ok_or_else(|| {
                    cx.err(
                        None,
                        "default_upstream",
                        format!(
                            "missing: with several upstreams ({}) say which one unmatched paths go to",
                            known(&upstreams)
                        ),
                    )
                })?,
        };
        // `--upstream` always wins over the default upstream's URL in the file.
        if let Some(u) = &ov.upstream {
            upstreams[default_upstream].url = parse_upstream_url(u).map_err(|r| flag.err(None, "--upstream", r))?;
        }

        let mut routes = Vec::with_capacity(self.routes.len());
        for (i, raw) in self.routes.iter().enumerate() {
            let key = |k: &str| format!("routes[{i}].{k}");
            let header = find_nth_array_header(src, "routes", i);
            let pattern = match (&raw.path, &raw.prefix) {
                (Some(p), None) => {
                    RoutePattern::exact(p.get_ref()).map_err(|r| cx.err(Some(p.span()), &key("path"), r))?
                }
                (None, Some(p)) => {
                    RoutePattern::prefix(p.get_ref()).map_err(|r| cx.err(Some(p.span()), &key("prefix"), r))?
                }
                (Some(p), Some(_)) => {
                    return Err(cx.err(Some(p.span()), &key("path"), "give either path or prefix, not both"))
                }
                (None, None) => {
                    return Err(cx.err(
                        header,
                        &format!("routes[{i}]"),
                        "needs a path (exact, with {params}) or a prefix",
                    ))
                }
            };
            let (upstream, upstream_name) = match &raw.upstream {
                None => (default_upstream, upstreams[default_upstream].name.clone()),
                Some(name) => match upstreams.iter().position(|u| &u.name == name.get_ref()) {
                    Some(ix) => (ix, name.get_ref().clone()),
                    None => {
                        return Err(cx.err(
                            Some(name.span()),
                            &key("upstream"),
                            format!("no upstream named {:?} (known: {})", name.get_ref(), known(&upstreams)),
                        ))
                    }
                },
            };
            let strip_prefix = match &raw.strip_prefix {
                None => None,
                Some(s) => {
                    let v = s.get_ref();
                    if !v.starts_with('/') || !pattern.literal_prefix().starts_with(v.as_str()) {
                        return Err(cx.err(
                            Some(s.span()),
                            &key("strip_prefix"),
                            format!("{v:?} must start with '/' and be a leading part of the route's pattern"),
                        ));
                    }
                    Some(v.clone())
                }
            };
            let mut methods = Vec::new();
            for (j, m) in raw.methods.iter().flatten().enumerate() {
                let method = http::Method::from_bytes(m.get_ref().to_ascii_uppercase().as_bytes()).map_err(|_| {
                    cx.err(
                        Some(m.span()),
                        &format!("routes[{i}].methods[{j}]"),
                        format!("invalid method {:?}", m.get_ref()),
                    )
                })?;
                methods.push(method);
            }
            let strategy = match &raw.strategy {
                None => Strategy::Http,
                Some(s) => Strategy::ALL
                    .into_iter()
                    .find(|k| k.as_str() == s.get_ref())
                    .ok_or_else(|| {
                        let names: Vec<_> = Strategy::ALL.iter().map(|k| k.as_str()).collect();
                        cx.err(
                            Some(s.span()),
                            &key("strategy"),
                            format!("unknown strategy {:?} (known: {})", s.get_ref(), names.join(", ")),
                        )
                    })?,
            };
            let defaults = RoutePolicy::default();
            let policy = RoutePolicy {
                strategy,
                kind: raw.kind.clone().unwrap_or(defaults.kind),
                ttl: match &raw.ttl {
                    None => None,
                    Some(_) => Some(cx.duration(&raw.ttl, &key("ttl"), Duration::ZERO)?),
                },
                network_timeout: cx.duration(
                    &raw.network_timeout,
                    &key("network_timeout"),
                    defaults.network_timeout,
                )?,
                ignore_query: raw.ignore_query.clone().unwrap_or_default(),
                queue: raw.queue.unwrap_or(defaults.queue),
                max_body: match &raw.max_body {
                    None => defaults.max_body,
                    Some(v) => parse_size(v.get_ref()).map_err(|r| cx.err(Some(v.span()), &key("max_body"), r))?,
                },
                conflict: match raw.conflict.as_ref().map(|s| (s.get_ref().as_str(), s.span())) {
                    None => defaults.conflict,
                    Some(("server-wins", _)) => ConflictPolicy::ServerWins,
                    Some(("retry", _)) => ConflictPolicy::Retry,
                    Some(("dead-letter", _)) => ConflictPolicy::DeadLetter,
                    Some((other, span)) => {
                        return Err(cx.err(
                            Some(span),
                            &key("conflict"),
                            format!("unknown conflict policy {other:?} (known: server-wins, retry, dead-letter)"),
                        ))
                    }
                },
                ordering_key: match &raw.ordering_key {
                    None => None,
                    Some(t) => {
                        check_template(t.get_ref(), &pattern)
                            .map_err(|r| cx.err(Some(t.span()), &key("ordering_key"), r))?;
                        Some(t.get_ref().clone())
                    }
                },
                priority: raw.priority.unwrap_or(0),
                invalidates: {
                    let mut out = Vec::new();
                    for (j, t) in raw.invalidates.iter().flatten().enumerate() {
                        let k = format!("routes[{i}].invalidates[{j}]");
                        if !t.get_ref().starts_with('/') {
                            return Err(cx.err(Some(t.span()), &k, "must be a path starting with '/'"));
                        }
                        check_template(t.get_ref(), &pattern).map_err(|r| cx.err(Some(t.span()), &k, r))?;
                        out.push(t.get_ref().clone());
                    }
                    out
                },
                queued_status: match &raw.queued_status {
                    None => None,
                    Some(v) if (200..300).contains(v.get_ref()) => Some(*v.get_ref()),
                    Some(v) => return Err(cx.err(Some(v.span()), &key("queued_status"), "must be a 2xx status")),
                },
                queued_body: raw.queued_body.clone(),
                rewrite: Vec::new(),
                pins: match &raw.pins {
                    None => None,
                    Some(p) => {
                        crate::rewrite::JsonPath::parse(p.get_ref())
                            .map_err(|r| cx.err(Some(p.span()), &key("pins"), r))?;
                        Some(p.get_ref().clone())
                    }
                },
                prefetch: raw.prefetch.unwrap_or(false),
                media_alias: match &raw.media_alias {
                    None => None,
                    Some(a) => {
                        let a = a.get_ref();
                        crate::rewrite::JsonPath::parse(a.objects.get_ref())
                            .map_err(|r| cx.err(Some(a.objects.span()), &key("media_alias.objects"), r))?;
                        Some(MediaAlias {
                            objects: a.objects.get_ref().clone(),
                            id: a.id.clone().unwrap_or_else(|| "audio_file_id".into()),
                            url: a.url.clone().unwrap_or_else(|| "url".into()),
                        })
                    }
                },
                retain: match &raw.retain {
                    None => None,
                    Some(r) => {
                        let r = r.get_ref();
                        check_template(r.group.get_ref(), &pattern)
                            .map_err(|e| cx.err(Some(r.group.span()), &key("retain.group"), e))?;
                        let keep = *r.keep_last.get_ref();
                        if keep < 1 {
                            return Err(cx.err(
                                Some(r.keep_last.span()),
                                &key("retain.keep_last"),
                                "must be at least 1",
                            ));
                        }
                        let drop_entry = match r.drop.as_ref().map(|d| (d.get_ref().as_str(), d.span())) {
                            None | Some(("body", _)) => false,
                            Some(("entry", _)) => true,
                            Some((other, span)) => {
                                return Err(cx.err(
                                    Some(span),
                                    &key("retain.drop"),
                                    format!("unknown value {other:?} (known: body, entry)"),
                                ))
                            }
                        };
                        Some(Retention {
                            group: r.group.get_ref().clone(),
                            keep_last: keep as usize,
                            drop_entry,
                        })
                    }
                },
                logout: raw.logout.unwrap_or(false),
                rewrite_max: match &raw.rewrite_max {
                    None => defaults.rewrite_max,
                    Some(v) => parse_size(v.get_ref()).map_err(|r| cx.err(Some(v.span()), &key("rewrite_max"), r))?,
                },
            };
            routes.push(RouteConfig {
                name: raw.name.clone().unwrap_or_else(|| format!("route{i}")),
                pattern,
                upstream,
                upstream_name,
                strip_prefix,
                methods,
                policy,
            });
        }

        // Media rewriting needs every route: the local prefix of an upstream is the strip_prefix of a prefix
        // route to it.
        for (i, raw) in self.routes.iter().enumerate() {
            for (j, name) in raw.rewrite.iter().flatten().enumerate() {
                let k = format!("routes[{i}].rewrite[{j}]");
                let Some(up) = upstreams.iter().position(|u| &u.name == name.get_ref()) else {
                    return Err(cx.err(
                        Some(name.span()),
                        &k,
                        format!("no upstream named {:?} (known: {})", name.get_ref(), known(&upstreams)),
                    ));
                };
                let local = routes
                    .iter()
                    .find(|r| r.upstream == up && r.strip_prefix.is_some())
                    .and_then(|r| r.strip_prefix.clone())
                    .ok_or_else(|| {
                        cx.err(
                            Some(name.span()),
                            &k,
                            format!("no route with a strip_prefix serves upstream {:?}; add one (e.g. prefix = \"/media/{0}/\", strip_prefix = \"/media/{0}\")", name.get_ref()),
                        )
                    })?;
                let origin = upstreams[up].url.to_string().trim_end_matches('/').to_string();
                routes[i].policy.rewrite.push(MediaRewrite {
                    upstream: name.get_ref().clone(),
                    origin,
                    local_prefix: local.trim_end_matches('/').to_string(),
                });
            }
            // Pins and aliases name media by the local URL the rewrite produces.
            for (what, span) in [
                ("pins", raw.pins.as_ref().map(|p| p.span())),
                ("media_alias", raw.media_alias.as_ref().map(|a| a.span())),
            ] {
                if let Some(span) = span {
                    if routes[i].policy.rewrite.is_empty() {
                        return Err(cx.err(
                            Some(span),
                            &format!("routes[{i}].{what}"),
                            "needs `rewrite` on the same route (media are recognised by their rewritten URLs)",
                        ));
                    }
                }
            }
        }

        let encryption = match (&self.encryption.key_file, &self.encryption.key_env) {
            (Some(f), Some(_)) => {
                return Err(cx.err(Some(f.span()), "encryption", "set key_file or key_env, not both"))
            }
            (Some(f), None) => Some(
                EncryptionKey::from_file(Path::new(f.get_ref()))
                    .map_err(|r| cx.err(Some(f.span()), "encryption.key_file", r))?,
            ),
            (None, Some(e)) => Some(
                EncryptionKey::from_env(e.get_ref()).map_err(|r| cx.err(Some(e.span()), "encryption.key_env", r))?,
            ),
            (None, None) => None,
        };

        Ok(Config {
            encryption,
            listen,
            admin_listen,
            data_dir,
            max_size,
            shutdown_grace,
            header_read_timeout,
            log_format,
            queue: {
                let d = QueueSettings::default();
                let q = &self.queue;
                let s = QueueSettings {
                    backoff_base: cx.duration(&q.backoff_base, "queue.backoff_base", d.backoff_base)?,
                    backoff_cap: cx.duration(&q.backoff_cap, "queue.backoff_cap", d.backoff_cap)?,
                    max_attempts: q.max_attempts.unwrap_or(d.max_attempts),
                    max_age: cx.duration(&q.max_age, "queue.max_age", d.max_age)?,
                };
                if s.backoff_base.is_zero() || s.backoff_cap < s.backoff_base {
                    return Err(cx.err(
                        q.backoff_cap.as_ref().map(|s| s.span()),
                        "queue.backoff_cap",
                        "backoff_base must be > 0 and backoff_cap >= backoff_base",
                    ));
                }
                s
            },
            cache: CacheSettings {
                shared: self.cache.shared.unwrap_or(false),
                verify_on_read: self.cache.verify_on_read.unwrap_or(false),
                auto_evict: self.cache.auto_evict.unwrap_or(true),
                max_unused: match &self.cache.max_unused {
                    None => None,
                    Some(_) => Some(cx.duration(&self.cache.max_unused, "cache.max_unused", Duration::ZERO)?),
                },
            },
            upstreams,
            default_upstream,
            routes,
        })
    }
}

/// Every `{name}` in a template must be a parameter of the route's pattern.
fn check_template(t: &str, pattern: &RoutePattern) -> Result<(), String> {
    let mut rest = t;
    while let Some(open) = rest.find('{') {
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| format!("{t:?}: '{{' without '}}'"))?
            + open;
        let name = &rest[open + 1..close];
        if !pattern.has_param(name) {
            return Err(format!("{t:?}: the route's pattern has no {{{name}}}"));
        }
        rest = &rest[close + 1..];
    }
    Ok(())
}

/// An upstream with every knob at its default.
pub fn default_upstream_config(name: &str, url: Uri) -> UpstreamConfig {
    UpstreamConfig {
        name: name.to_string(),
        url,
        connect_timeout: Duration::from_secs(5),
        first_byte_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(60),
        ca_file: None,
        roots: Roots::Webpki,
        preserve_host: false,
        pool_max_idle: 32,
        probe_path: "/".to_string(),
        probe_interval: Duration::from_secs(2),
        probe_timeout: Duration::from_secs(2),
    }
}

/// Span of a `[name]` table header, for errors about keys missing from that table.
fn find_table_header(src: &str, name: &str) -> Option<std::ops::Range<usize>> {
    let needle = format!("[{name}]");
    src.find(&needle).map(|s| s..s + needle.len())
}

/// Span of the `n`th `[[name]]` header.
fn find_nth_array_header(src: &str, name: &str, n: usize) -> Option<std::ops::Range<usize>> {
    let needle = format!("[[{name}]]");
    src.match_indices(&needle).nth(n).map(|(s, _)| s..s + needle.len())
}

fn ser_display<S: serde::Serializer, T: fmt::Display>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

fn ser_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*d))
}

fn ser_opt_duration<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => ser_duration(d, s),
        None => s.serialize_none(),
    }
}

fn ser_methods<S: serde::Serializer>(m: &[http::Method], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(m.iter().map(|m| m.as_str()))
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
        let src = include_str!("../config/outpost.toml");
        let c = Config::from_toml(src, "config/outpost.toml", &Overrides::default()).unwrap();
        assert!(c.upstreams.len() >= 2);
        assert!(!c.routes.is_empty());
    }
}
