//! Stage two for `[[routes]]`: one route's pattern, upstream and policy knobs, checked and typed (the
//! media rewrite rules, which need every route, are added by [`super::validate`]).

use toml::Spanned;

use super::raw::RawRoute;
use super::validate::{find_nth_array_header, known, Ctx};
use super::{ConfigError, UpstreamConfig};
use crate::media::{JsonPath, MediaAlias};
use crate::routes::{
    ConflictPolicy, OfflineStale, OverlayList, Retention, RouteConfig, RoutePattern, RoutePolicy, Strategy,
};
use crate::units::parse_size;

/// One `[[routes]]` entry (its media rewrite rules are added once every route is known).
pub(super) fn route(
    cx: &Ctx<'_>,
    i: usize,
    raw: &RawRoute,
    upstreams: &[UpstreamConfig],
    default_upstream: usize,
) -> Result<RouteConfig, ConfigError> {
    let key = |k: &str| format!("routes[{i}].{k}");
    let pattern = match (&raw.path, &raw.prefix) {
        (Some(p), None) if p.get_ref().contains('*') => {
            let under = p.get_ref().split('*').next().unwrap_or("/");
            return Err(cx.err(
                Some(p.span()),
                &key("path"),
                format!("`*` is not a pattern in a path: for everything under a path write prefix = {under:?}"),
            ));
        }
        (Some(p), None) => RoutePattern::exact(p.get_ref()).map_err(|r| cx.err(Some(p.span()), &key("path"), r))?,
        (None, Some(p)) => RoutePattern::prefix(p.get_ref()).map_err(|r| cx.err(Some(p.span()), &key("prefix"), r))?,
        (Some(p), Some(_)) => return Err(cx.err(Some(p.span()), &key("path"), "give either path or prefix, not both")),
        (None, None) => {
            return Err(cx.err(
                find_nth_array_header(cx.src, "routes", i),
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
                    format!("no upstream named {:?} (known: {})", name.get_ref(), known(upstreams)),
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
    let policy = policy(cx, i, raw, &pattern)?;
    Ok(RouteConfig {
        name: raw.name.clone().unwrap_or_else(|| format!("route{i}")),
        pattern,
        upstream,
        upstream_name,
        strip_prefix,
        methods,
        policy,
    })
}

/// A route's policy knobs (defaults from [`RoutePolicy::default`]).
fn policy(cx: &Ctx<'_>, i: usize, raw: &RawRoute, pattern: &RoutePattern) -> Result<RoutePolicy, ConfigError> {
    let key = |k: &str| format!("routes[{i}].{k}");
    let d = RoutePolicy::default();
    let strategy = match &raw.strategy {
        None => d.strategy,
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
    let json_path =
        |p: &Spanned<String>, k: &str| JsonPath::parse(p.get_ref()).map_err(|r| cx.err(Some(p.span()), &key(k), r));
    let size = |v: &Option<Spanned<String>>, k: &str, default: u64| match v {
        None => Ok(default),
        Some(v) => parse_size(v.get_ref()).map_err(|r| cx.err(Some(v.span()), &key(k), r)),
    };
    Ok(RoutePolicy {
        strategy,
        kind: raw.kind.clone().unwrap_or(d.kind),
        ttl: cx.opt_duration(&raw.ttl, &key("ttl"))?,
        network_timeout: cx.duration(&raw.network_timeout, &key("network_timeout"), d.network_timeout)?,
        ignore_query: raw.ignore_query.clone().unwrap_or_default(),
        queue: raw.queue.unwrap_or(d.queue),
        supersede: raw.supersede.unwrap_or(d.supersede),
        overlay: raw.overlay.unwrap_or(d.overlay),
        overlay_list: match &raw.overlay_list {
            None => None,
            Some(l) => {
                let l = l.get_ref();
                let path = RoutePattern::exact(l.path.get_ref())
                    .map_err(|r| cx.err(Some(l.path.span()), &key("overlay_list.path"), r))?;
                if !l.path.get_ref().contains('{') && pattern.matches(l.path.get_ref()).is_none() {
                    return Err(cx.err(
                        Some(l.path.span()),
                        &key("overlay_list.path"),
                        "is not a path this route serves",
                    ));
                }
                let items = match &l.items {
                    None => None,
                    Some(p) => {
                        let jp = json_path(p, "overlay_list.items")?;
                        if !jp.is_single() {
                            return Err(cx.err(
                                Some(p.span()),
                                &key("overlay_list.items"),
                                "must name one array (no [*])",
                            ));
                        }
                        Some(jp)
                    }
                };
                let item_path = match &l.item_path {
                    None => None,
                    Some(t) => {
                        let bad = |r: String| cx.err(Some(t.span()), &key("overlay_list.item_path"), r);
                        RoutePattern::exact(t.get_ref()).map_err(bad)?;
                        check_template(t.get_ref(), &path).map_err(bad)?;
                        Some(t.get_ref().clone())
                    }
                };
                Some(OverlayList {
                    item_path,
                    path,
                    items,
                    id: l.id.clone().unwrap_or_else(|| "id".into()),
                    add_first: cx.keyword(
                        l.add.as_ref(),
                        &key("overlay_list.add"),
                        "place",
                        &[("last", false), ("first", true)],
                        false,
                    )?,
                })
            }
        },
        max_body: size(&raw.max_body, "max_body", d.max_body)?,
        conflict: cx.keyword(
            raw.conflict.as_ref(),
            &key("conflict"),
            "conflict policy",
            &[
                ("server-wins", ConflictPolicy::ServerWins),
                ("retry", ConflictPolicy::Retry),
                ("dead-letter", ConflictPolicy::DeadLetter),
            ],
            d.conflict,
        )?,
        ordering_key: match &raw.ordering_key {
            None => None,
            Some(t) => {
                check_template(t.get_ref(), pattern).map_err(|r| cx.err(Some(t.span()), &key("ordering_key"), r))?;
                Some(t.get_ref().clone())
            }
        },
        priority: raw.priority.unwrap_or(d.priority),
        invalidates: {
            let mut out = Vec::new();
            for (j, t) in raw.invalidates.iter().flatten().enumerate() {
                let k = format!("routes[{i}].invalidates[{j}]");
                if !t.get_ref().starts_with('/') {
                    return Err(cx.err(Some(t.span()), &k, "must be a path starting with '/'"));
                }
                check_template(t.get_ref(), pattern).map_err(|r| cx.err(Some(t.span()), &k, r))?;
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
        pins: raw.pins.as_ref().map(|p| json_path(p, "pins")).transpose()?,
        prefetch: raw.prefetch.unwrap_or(d.prefetch),
        media_alias: match &raw.media_alias {
            None => None,
            Some(a) => {
                let a = a.get_ref();
                Some(MediaAlias {
                    objects: json_path(&a.objects, "media_alias.objects")?,
                    id: a.id.clone().unwrap_or_else(|| "audio_file_id".into()),
                    url: a.url.clone().unwrap_or_else(|| "url".into()),
                })
            }
        },
        retain: match &raw.retain {
            None => None,
            Some(r) => {
                let r = r.get_ref();
                check_template(r.group.get_ref(), pattern)
                    .map_err(|e| cx.err(Some(r.group.span()), &key("retain.group"), e))?;
                let keep = *r.keep_last.get_ref();
                if keep < 1 {
                    return Err(cx.err(Some(r.keep_last.span()), &key("retain.keep_last"), "must be at least 1"));
                }
                let drop_entry = cx.keyword(
                    r.drop.as_ref(),
                    &key("retain.drop"),
                    "value",
                    &[("body", false), ("entry", true)],
                    false,
                )?;
                Some(Retention {
                    group: r.group.get_ref().clone(),
                    keep_last: keep as usize,
                    drop_entry,
                })
            }
        },
        logout: raw.logout.unwrap_or(d.logout),
        upgrade: raw.upgrade.unwrap_or(d.upgrade),
        per_user: cx.keyword(
            raw.partition.as_ref(),
            &key("partition"),
            "value",
            &[("user", true), ("none", false)],
            d.per_user,
        )?,
        rewrite_max: size(&raw.rewrite_max, "rewrite_max", d.rewrite_max)?,
        offline_stale: offline_stale(cx, raw.offline_stale.as_ref(), &key("offline_stale"))?,
    })
}

/// `offline_stale = "always" | "rfc"`.
pub(super) fn offline_stale(
    cx: &Ctx<'_>,
    v: Option<&Spanned<String>>,
    key: &str,
) -> Result<Option<OfflineStale>, ConfigError> {
    let known = [("always", Some(OfflineStale::Always)), ("rfc", Some(OfflineStale::Rfc))];
    cx.keyword(v, key, "value", &known, None)
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
