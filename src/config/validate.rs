//! Stage two: every raw value checked and typed, section by section, with flags and environment merged
//! in by one function ([`merge`]). Every error names file, line, key and reason.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Uri;
use toml::Spanned;

use super::raw::{line_of, RawConfig, RawUpstream};
use super::{
    default_upstream_config, CacheSettings, Config, ConfigError, EncryptionKey, LogFormat, Overrides, QueueSettings,
    Roots, UpstreamConfig, DEFAULT_ADMIN, DEFAULT_DATA_DIR, DEFAULT_LISTEN, DEFAULT_MAX_SIZE, DEFAULT_UPSTREAM_NAME,
};
use crate::cache::key::Partitioner;
use crate::media::MediaRewrite;
use crate::routes::RouteConfig;
use crate::units::{parse_duration, parse_size};

/// Where errors point: the file's text and name.
pub(super) struct Ctx<'a> {
    pub(super) src: &'a str,
    pub(super) file: &'a str,
}

impl Ctx<'_> {
    pub(super) fn err(
        &self,
        span: Option<std::ops::Range<usize>>,
        key: &str,
        reason: impl std::fmt::Display,
    ) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_string(),
            line: span.map(|s| line_of(self.src, s.start)).unwrap_or(0),
            key: key.to_string(),
            reason: reason.to_string(),
        }
    }

    pub(super) fn duration(
        &self,
        v: &Option<Spanned<String>>,
        key: &str,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match v {
            None => Ok(default),
            Some(s) => parse_duration(s.get_ref()).map_err(|r| self.err(Some(s.span()), key, r)),
        }
    }

    /// One of a fixed set of words (`None`: the default); anything else names the known ones.
    pub(super) fn keyword<T: Copy>(
        &self,
        v: Option<&Spanned<String>>,
        key: &str,
        what: &str,
        known: &[(&str, T)],
        default: T,
    ) -> Result<T, ConfigError> {
        let Some(v) = v else { return Ok(default) };
        known
            .iter()
            .find(|(word, _)| *word == v.get_ref().as_str())
            .map(|(_, t)| *t)
            .ok_or_else(|| {
                let words: Vec<&str> = known.iter().map(|(w, _)| *w).collect();
                self.err(
                    Some(v.span()),
                    key,
                    format!("unknown {what} {:?} (known: {})", v.get_ref(), words.join(", ")),
                )
            })
    }

    pub(super) fn opt_duration(&self, v: &Option<Spanned<String>>, key: &str) -> Result<Option<Duration>, ConfigError> {
        v.as_ref().map(|_| self.duration(v, key, Duration::ZERO)).transpose()
    }

    /// Parses a merged setting, naming the flag or the file's key in errors.
    fn setting<T>(&self, s: &Setting<'_>, parse: impl Fn(&str) -> Result<T, String>) -> Result<T, ConfigError> {
        match s {
            Setting::Flag { flag, value } => parse(value).map_err(|r| FLAGS.err(None, flag, r)),
            Setting::File { key, value } => parse(value.get_ref()).map_err(|r| self.err(Some(value.span()), key, r)),
            Setting::Default { key, value } => parse(value).map_err(|r| FLAGS.err(None, key, r)),
        }
    }
}

/// Errors in command-line values.
const FLAGS: Ctx<'static> = Ctx {
    src: "",
    file: "<flags>",
};

/// One top-level value and where it came from: a flag (or its environment variable), the file, or
/// the default.
enum Setting<'a> {
    Flag {
        flag: &'static str,
        value: &'a str,
    },
    File {
        key: &'static str,
        value: &'a Spanned<String>,
    },
    Default {
        key: &'static str,
        value: &'static str,
    },
}

/// The values flags and environment variables can set, merged with the file: flags win, then the
/// file, then the defaults. The one place where that order is decided.
struct Merged<'a> {
    listen: Setting<'a>,
    admin: Setting<'a>,
    max_size: Setting<'a>,
    data_dir: PathBuf,
    /// `--upstream URL`: the default upstream's URL (created when the file has no upstreams).
    upstream: Option<&'a str>,
}

fn merge<'a>(raw: &'a RawConfig, ov: &'a Overrides) -> Merged<'a> {
    fn pick<'a>(
        flag: (&'static str, Option<&'a String>),
        file: (&'static str, Option<&'a Spanned<String>>),
        default: &'static str,
    ) -> Setting<'a> {
        match (flag.1, file.1) {
            (Some(v), _) => Setting::Flag { flag: flag.0, value: v },
            (None, Some(v)) => Setting::File { key: file.0, value: v },
            (None, None) => Setting::Default {
                key: file.0,
                value: default,
            },
        }
    }
    Merged {
        listen: pick(
            ("--listen", ov.listen.as_ref()),
            ("listen", raw.listen.as_ref()),
            DEFAULT_LISTEN,
        ),
        admin: pick(
            ("--admin", ov.admin.as_ref()),
            ("admin_listen", raw.admin_listen.as_ref()),
            DEFAULT_ADMIN,
        ),
        max_size: pick(
            ("--max-size", ov.max_size.as_ref()),
            ("max_size", raw.max_size.as_ref()),
            DEFAULT_MAX_SIZE,
        ),
        data_dir: ov
            .data_dir
            .clone()
            .or_else(|| raw.data_dir.clone().map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
        upstream: ov.upstream.as_deref(),
    }
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
    /// `[budget] KIND = SIZE`: each a kind some route stores under, at most the global `max_size`.
    fn kind_limits(
        &self,
        cx: &Ctx<'_>,
        routes: &[RouteConfig],
        max_size: u64,
    ) -> Result<std::collections::BTreeMap<String, u64>, ConfigError> {
        let mut known: std::collections::BTreeSet<String> = routes.iter().map(|r| r.policy.kind.clone()).collect();
        known.insert(crate::routes::RoutePolicy::default().kind);
        let mut out = std::collections::BTreeMap::new();
        for (kind, size) in &self.budget {
            let key = format!("budget.{kind}");
            if !known.contains(kind) {
                let list: Vec<&str> = known.iter().map(String::as_str).collect();
                return Err(cx.err(
                    Some(size.span()),
                    &key,
                    format!("no route stores answers of kind {kind:?} (kinds: {})", list.join(", ")),
                ));
            }
            let limit = parse_size(size.get_ref()).map_err(|r| cx.err(Some(size.span()), &key, r))?;
            if limit > max_size {
                return Err(cx.err(
                    Some(size.span()),
                    &key,
                    format!("{} is more than max_size ({max_size} bytes)", size.get_ref()),
                ));
            }
            out.insert(kind.clone(), limit);
        }
        Ok(out)
    }

    /// Stage two: check every value, apply overrides and defaults.
    pub fn validate(self, src: &str, file: &str, ov: &Overrides) -> Result<Config, ConfigError> {
        let cx = Ctx { src, file };
        let merged = merge(&self, ov);
        let listen = cx.setting(&merged.listen, parse_addr)?;
        let admin_listen = cx.setting(&merged.admin, parse_addr)?;
        if listen == admin_listen && listen.port() != 0 {
            return Err(cx.err(
                self.admin_listen.as_ref().map(|s| s.span()),
                "admin_listen",
                format!("must differ from listen ({listen})"),
            ));
        }
        let max_size = cx.setting(&merged.max_size, parse_size)?;
        let log_format = cx.keyword(
            self.log_format.as_ref(),
            "log_format",
            "format",
            &[("text", LogFormat::Text), ("json", LogFormat::Json)],
            LogFormat::Text,
        )?;
        let (upstreams, default_upstream) = self.upstreams(&cx, merged.upstream)?;
        let routes = self.routes(&cx, &upstreams, default_upstream)?;
        let kind_limits = self.kind_limits(&cx, &routes, max_size)?;
        Ok(Config {
            kind_limits,
            encryption: self.encryption(&cx)?,
            listen,
            admin_listen,
            data_dir: merged.data_dir,
            max_size,
            shutdown_grace: cx.duration(&self.shutdown_grace, "shutdown_grace", Duration::from_secs(10))?,
            header_read_timeout: cx.duration(
                &self.header_read_timeout,
                "header_read_timeout",
                Duration::from_secs(10),
            )?,
            log_format,
            log_redact: match &self.log_redact {
                Some(names) => names.iter().map(|n| n.to_ascii_lowercase()).collect(),
                None => super::DEFAULT_REDACT.iter().map(|s| s.to_string()).collect(),
            },
            public_metrics: self.public_metrics.unwrap_or(false),
            zero_copy: self.zero_copy.unwrap_or(true),
            max_connections: match &self.max_connections {
                None => crate::server::DEFAULT_MAX_CONNECTIONS,
                Some(n) if (1..=1_000_000).contains(n.get_ref()) => *n.get_ref() as usize,
                Some(n) => return Err(cx.err(Some(n.span()), "max_connections", "must be between 1 and 1000000")),
            },
            body_read_timeout: cx.duration(&self.body_read_timeout, "body_read_timeout", Duration::from_secs(30))?,
            max_buffered_bodies: match &self.max_buffered_bodies {
                None => 64 << 20,
                Some(v) => parse_size(v.get_ref()).map_err(|r| cx.err(Some(v.span()), "max_buffered_bodies", r))?,
            },
            queue: self.queue(&cx)?,
            cache: {
                let d = CacheSettings::default();
                CacheSettings {
                    shared: self.cache.shared.unwrap_or(d.shared),
                    verify_on_read: self.cache.verify_on_read.unwrap_or(d.verify_on_read),
                    allow_purge: self.cache.allow_purge.unwrap_or(d.allow_purge),
                    memory: match &self.cache.memory {
                        None => d.memory,
                        Some(v) => match parse_size(v.get_ref()) {
                            Ok(n) if n >= 1 << 20 => n,
                            Ok(_) => return Err(cx.err(Some(v.span()), "cache.memory", "must be at least 1MiB")),
                            Err(r) => return Err(cx.err(Some(v.span()), "cache.memory", r)),
                        },
                    },
                    auto_evict: self.cache.auto_evict.unwrap_or(d.auto_evict),
                    max_unused: cx.opt_duration(&self.cache.max_unused, "cache.max_unused")?,
                    offline_stale: super::route::offline_stale(
                        &cx,
                        self.cache.offline_stale.as_ref(),
                        "cache.offline_stale",
                    )?
                    .unwrap_or(d.offline_stale),
                    partitioner: Partitioner {
                        trust_jwt_sub: cx.keyword(
                            self.cache.partition.as_ref(),
                            "cache.partition",
                            "value",
                            &[("auto", true), ("credential", false)],
                            true,
                        )?,
                        session_cookie: match &self.cache.session_cookie {
                            None => None,
                            Some(c) if is_token(c.get_ref()) => Some(c.get_ref().clone()),
                            Some(c) => {
                                return Err(cx.err(
                                    Some(c.span()),
                                    "cache.session_cookie",
                                    format!("{:?} is not a cookie name", c.get_ref()),
                                ))
                            }
                        },
                    },
                }
            },
            upstreams,
            default_upstream,
            routes,
        })
    }

    /// `[upstreams.NAME]` tables, `--upstream`, and which one unmatched paths go to.
    fn upstreams(&self, cx: &Ctx<'_>, flag_url: Option<&str>) -> Result<(Vec<UpstreamConfig>, usize), ConfigError> {
        let mut upstreams = Vec::with_capacity(self.upstreams.len() + 1);
        for (name, raw) in &self.upstreams {
            upstreams.push(self.upstream(cx, name, raw, flag_url)?);
        }
        let default_upstream = match (&self.default_upstream, flag_url) {
            (Some(d), _) => upstreams.iter().position(|u| &u.name == d.get_ref()).ok_or_else(|| {
                cx.err(
                    Some(d.span()),
                    "default_upstream",
                    format!("no upstream named {:?} (known: {})", d.get_ref(), known(&upstreams)),
                )
            })?,
            (None, Some(u)) if upstreams.is_empty() => {
                let url = parse_upstream_url(u).map_err(|r| FLAGS.err(None, "--upstream", r))?;
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
        if let Some(u) = flag_url {
            upstreams[default_upstream].url = parse_upstream_url(u).map_err(|r| FLAGS.err(None, "--upstream", r))?;
        }
        Ok((upstreams, default_upstream))
    }

    fn upstream(
        &self,
        cx: &Ctx<'_>,
        name: &str,
        raw: &RawUpstream,
        flag_url: Option<&str>,
    ) -> Result<UpstreamConfig, ConfigError> {
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
            None => match (flag_url, &self.default_upstream) {
                // `--upstream` fills in the default upstream's URL if the file leaves it out.
                (Some(u), Some(d)) if d.get_ref() == name => {
                    parse_upstream_url(u).map_err(|r| FLAGS.err(None, "--upstream", r))?
                }
                _ => {
                    return Err(cx.err(
                        find_table_header(cx.src, &format!("upstreams.{name}")),
                        &key("url"),
                        "missing (every upstream needs a url)",
                    ))
                }
            },
        };
        let roots = cx.keyword(
            raw.roots.as_ref(),
            &key("roots"),
            "roots",
            &[
                ("webpki", Roots::Webpki),
                ("system", Roots::System),
                ("none", Roots::None),
            ],
            Roots::Webpki,
        )?;
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
        let d = default_upstream_config(name, url);
        Ok(UpstreamConfig {
            connect_timeout: cx.duration(&raw.connect_timeout, &key("connect_timeout"), d.connect_timeout)?,
            first_byte_timeout: cx.duration(
                &raw.first_byte_timeout,
                &key("first_byte_timeout"),
                d.first_byte_timeout,
            )?,
            idle_timeout: cx.duration(&raw.idle_timeout, &key("idle_timeout"), d.idle_timeout)?,
            stream_idle_timeout: match &raw.stream_idle_timeout {
                None => None,
                Some(_) => Some(cx.duration(&raw.stream_idle_timeout, &key("stream_idle_timeout"), d.idle_timeout)?),
            },
            ca_file,
            roots,
            preserve_host: raw.preserve_host.unwrap_or(d.preserve_host),
            pool_max_idle: raw.pool_max_idle.unwrap_or(d.pool_max_idle),
            probe_path: match &raw.probe_path {
                None => d.probe_path.clone(),
                Some(p) if p.get_ref().starts_with('/') => p.get_ref().clone(),
                Some(p) => return Err(cx.err(Some(p.span()), &key("probe_path"), "must start with '/'")),
            },
            probe_interval: cx.duration(&raw.probe_interval, &key("probe_interval"), d.probe_interval)?,
            probe_timeout: cx.duration(&raw.probe_timeout, &key("probe_timeout"), d.probe_timeout)?,
            expect: match &raw.probe_expect {
                None => None,
                Some(e) => {
                    let v = e.get_ref();
                    if let Some(h) = &v.header {
                        if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                            return Err(cx.err(
                                Some(e.span()),
                                &key("probe_expect.header"),
                                format!("{h:?} is not a field name"),
                            ));
                        }
                    }
                    if v.status.is_some_and(|s| !(100..600).contains(&s)) {
                        return Err(cx.err(
                            Some(e.span()),
                            &key("probe_expect.status"),
                            "must be an HTTP status (100-599)",
                        ));
                    }
                    if v.status.is_none() && v.header.is_none() {
                        return Err(cx.err(Some(e.span()), &key("probe_expect"), "give status, header or both"));
                    }
                    Some(crate::config::BackendMark {
                        status: v.status,
                        header: v.header.as_ref().map(|h| h.to_ascii_lowercase()),
                    })
                }
            },
            ..d
        })
    }

    /// `[[routes]]`, then the media rules that need every route.
    fn routes(
        &self,
        cx: &Ctx<'_>,
        upstreams: &[UpstreamConfig],
        default_upstream: usize,
    ) -> Result<Vec<RouteConfig>, ConfigError> {
        let mut routes = Vec::with_capacity(self.routes.len());
        for (i, raw) in self.routes.iter().enumerate() {
            routes.push(super::route::route(cx, i, raw, upstreams, default_upstream)?);
        }
        // Media rewriting needs every route: the local prefix of an upstream is the strip_prefix of a
        // prefix route to it, or nothing when it is served unprefixed (the API itself, for pagination
        // links: the default upstream, or a route to it without strip_prefix).
        for (i, raw) in self.routes.iter().enumerate() {
            for (j, name) in raw.rewrite.iter().flatten().enumerate() {
                let k = format!("routes[{i}].rewrite[{j}]");
                let Some(up) = upstreams.iter().position(|u| &u.name == name.get_ref()) else {
                    return Err(cx.err(
                        Some(name.span()),
                        &k,
                        format!("no upstream named {:?} (known: {})", name.get_ref(), known(upstreams)),
                    ));
                };
                let unprefixed =
                    up == default_upstream || routes.iter().any(|r| r.upstream == up && r.strip_prefix.is_none());
                let local = routes
                    .iter()
                    .find(|r| r.upstream == up && r.strip_prefix.is_some())
                    .and_then(|r| r.strip_prefix.clone())
                    .or_else(|| unprefixed.then(String::new))
                    .ok_or_else(|| {
                        cx.err(
                            Some(name.span()),
                            &k,
                            format!("no route serves upstream {:?} under a local prefix; add one (e.g. prefix = \"/media/{0}/\", strip_prefix = \"/media/{0}\")", name.get_ref()),
                        )
                    })?;
                let origin = upstreams[up].url.to_string().trim_end_matches('/').to_string();
                routes[i].policy.rewrite.push(MediaRewrite {
                    upstream: name.get_ref().clone(),
                    origin,
                    local_prefix: local.trim_end_matches('/').to_string(),
                });
            }
            // The longest origin first: a media bucket under the API's host is not taken for the API.
            routes[i]
                .policy
                .rewrite
                .sort_by_key(|r| std::cmp::Reverse(r.origin.len()));
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
        Ok(routes)
    }

    fn encryption(&self, cx: &Ctx<'_>) -> Result<Option<EncryptionKey>, ConfigError> {
        Ok(match (&self.encryption.key_file, &self.encryption.key_env) {
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
        })
    }

    fn queue(&self, cx: &Ctx<'_>) -> Result<QueueSettings, ConfigError> {
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
        Ok(s)
    }
}

pub(super) fn known(ups: &[UpstreamConfig]) -> String {
    ups.iter().map(|u| u.name.as_str()).collect::<Vec<_>>().join(", ")
}

/// An HTTP token (RFC 9110 §5.6.2), what a cookie name must be.
pub(super) fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Span of a `[name]` table header, for errors about keys missing from that table.
fn find_table_header(src: &str, name: &str) -> Option<std::ops::Range<usize>> {
    let needle = format!("[{name}]");
    src.find(&needle).map(|s| s..s + needle.len())
}

/// Span of the `n`th `[[name]]` header.
pub(super) fn find_nth_array_header(src: &str, name: &str, n: usize) -> Option<std::ops::Range<usize>> {
    let needle = format!("[[{name}]]");
    src.match_indices(&needle).nth(n).map(|(s, _)| s..s + needle.len())
}
