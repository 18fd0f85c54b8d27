//! Media inside JSON answers: URL rewriting (so the app fetches audio through Outpost), JSON paths,
//! pins (media a route's latest answer lists is never evicted) and aliases (a new URL of a known media
//! id is answered from the blob already stored). All of it runs as a response hook of the proxy.
//!
//! Promises: rewriting runs on every 200 JSON answer of a rewriting route (the base URL is the client's
//! `Host`, so it cannot be stored rewritten); the alias table is written and a pin set replaced only
//! when the answer came from the network (a cache hit changes neither, so hits never write to the
//! store). Pins are set only by the list itself (the route's exact path, each query separately: an item
//! under a `prefix` route never unpins the library), kept per (route, user, list), stored in the data
//! dir and restored at start, so pinned media stay protected across restarts; a list answer seen from
//! the store with no pin set known for it sets one (data dirs from before pins were stored).
//! This module knows nothing of routes or upstreams: the caller says how a local media URL maps to
//! its cache key.

pub mod merge;
mod path;
mod rewrite;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use http::{Response, Uri};
use serde::Serialize;

pub use path::JsonPath;
pub use rewrite::{buffer_json, local_target, rewrite_json, rewrite_value, rewritten, Buffered, MediaRewrite};

use crate::body::{self, ProxyBody};
use crate::evict::Evictor;
use crate::store::Store;

/// `media_alias = { objects = "items[*]", id = "audio_file_id", url = "url" }`.
#[derive(Debug, Clone, Serialize)]
pub struct MediaAlias {
    /// JSON path of the objects that carry both fields.
    pub objects: JsonPath,
    /// Field holding the stable media id.
    pub id: String,
    /// Field holding the (changing) media URL.
    pub url: String,
}

/// A route's media knobs, as the hook needs them.
#[derive(Debug, Clone, Copy)]
pub struct MediaRules<'a> {
    /// Route name (pins are kept per route and user).
    pub route: &'a str,
    /// Rewrite rules (empty: no rewriting).
    pub rewrite: &'a [MediaRewrite],
    /// JSON bodies larger than this pass through untouched.
    pub max: u64,
    /// Media URLs to pin.
    pub pins: Option<&'a JsonPath>,
    /// Download pinned media in the background.
    pub prefetch: bool,
    /// Media identity rule.
    pub alias: Option<&'a MediaAlias>,
}

impl MediaRules<'_> {
    /// True when the route looks inside its JSON answers at all.
    pub fn any(&self) -> bool {
        !self.rewrite.is_empty() || self.pins.is_some() || self.alias.is_some()
    }
}

/// The request an answer is for, as the hooks need it.
#[derive(Debug, Clone, Copy)]
pub struct Asked<'a> {
    /// The answer came from the upstream (MISS, REVALIDATED), not the store.
    pub from_network: bool,
    /// The user's partition.
    pub partition: &'a str,
    /// The request's query when the answer is the route's list (the only answers that set pins).
    pub list: Option<&'a str>,
    /// `http://<client Host>` when the route rewrites.
    pub local_base: Option<&'a str>,
}

/// Maps a local media target (`/media/s3/r/1.mp3?...`) to its parsed URI and cache key.
pub type KeyOf<'a> = &'a (dyn Fn(&Uri) -> Vec<u8> + Sync);

/// Pinned media keys per pinning route, then user partition, then list query (nested so that the check
/// on every hit allocates nothing).
type PinSets = HashMap<String, HashMap<String, HashMap<String, HashSet<Vec<u8>>>>>;

/// The media hooks' state: pin sets per route and user, and where aliases and pins go.
pub struct MediaHooks {
    store: Arc<Store>,
    evictor: Arc<Evictor>,
    pins: Mutex<PinSets>,
}

impl MediaHooks {
    /// Hooks writing aliases to `store` and pins to `evictor`, with the pin sets stored earlier.
    pub fn new(store: Arc<Store>, evictor: Arc<Evictor>) -> MediaHooks {
        let mut pins: PinSets = HashMap::new();
        match store.pin_sets() {
            Ok(sets) => {
                for s in sets {
                    pins.entry(s.route)
                        .or_default()
                        .entry(s.partition)
                        .or_default()
                        .insert(s.list, s.keys.into_iter().collect());
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading stored pins failed; pins start empty"),
        }
        let hooks = MediaHooks {
            store,
            evictor,
            pins: Mutex::new(pins),
        };
        let all = hooks.all_pins(&hooks.pins.lock().unwrap_or_else(|p| p.into_inner()));
        hooks.evictor.set_pins(all);
        hooks
    }

    fn all_pins(&self, pins: &PinSets) -> HashSet<Vec<u8>> {
        pins.values()
            .flat_map(|users| users.values())
            .flat_map(|lists| lists.values().flatten())
            .cloned()
            .collect()
    }

    /// A user logged out: their pin sets go (from memory and the data dir).
    pub fn forget_user(&self, partition: &str) {
        let all = {
            let mut pins = self.pins.lock().unwrap_or_else(|p| p.into_inner());
            for users in pins.values_mut() {
                users.remove(partition);
            }
            self.all_pins(&pins)
        };
        self.evictor.set_pins(all);
        if let Err(e) = self.store.remove_pin_sets(partition) {
            tracing::warn!(error = %e, "removing stored pins failed");
        }
    }

    /// Runs on a `200` answer to a GET of a route with media rules. Returns the answer (rewritten when
    /// it applies) and the media to prefetch, or why a coded answer is refused (it does not decode, or
    /// inflates like a bomb).
    pub async fn on_answer(
        &self,
        resp: Response<ProxyBody>,
        rules: &MediaRules<'_>,
        asked: &Asked<'_>,
        key_of: KeyOf<'_>,
    ) -> Result<(Response<ProxyBody>, Vec<Uri>), String> {
        let Asked {
            from_network,
            partition,
            list,
            local_base,
        } = *asked;
        let pins = rules.pins.zip(list);
        let pins_unknown = pins.is_some_and(|(_, list)| !self.has_pin_set(rules.route, partition, list));
        let learn = from_network && (pins.is_some() || rules.alias.is_some());
        let rewrite = local_base.is_some() && !rules.rewrite.is_empty();
        if !rewrite && !learn && !pins_unknown {
            return Ok((resp, Vec::new()));
        }
        let (parts, bytes) = match buffer_json(resp, rules.max).await {
            Buffered::Untouched(resp) => return Ok((resp, Vec::new())),
            Buffered::Refused(e) => return Err(e),
            Buffered::Json(parts, bytes) => (parts, bytes),
        };
        let mut prefetch = Vec::new();
        if learn || pins_unknown {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) {
                if let (Some(alias), true) = (rules.alias, from_network) {
                    self.record_aliases(rules.rewrite, alias, &v, key_of);
                }
                if let Some((path, list)) = pins {
                    prefetch = self.update_pins(rules, path, (partition, list), &v, key_of);
                }
            }
        }
        let resp = match local_base {
            Some(base) if rewrite => rewritten(parts, bytes, rules.rewrite, base),
            _ => Response::from_parts(parts, body::full(bytes)),
        };
        Ok((resp, prefetch))
    }

    fn has_pin_set(&self, route: &str, partition: &str, list: &str) -> bool {
        let pins = self.pins.lock().unwrap_or_else(|p| p.into_inner());
        pins.get(route)
            .and_then(|users| users.get(partition))
            .is_some_and(|lists| lists.contains_key(list))
    }

    /// Remembers which media id each media URL in a JSON answer stands for, so that a later URL of the
    /// same id is answered from the blob already stored (`media_alias`).
    fn record_aliases(&self, rules: &[MediaRewrite], alias: &MediaAlias, v: &serde_json::Value, key_of: KeyOf<'_>) {
        let mut pairs = Vec::new();
        for obj in alias.objects.values(v) {
            let id = match obj.get(&alias.id) {
                Some(serde_json::Value::String(s)) if !s.is_empty() => s.clone(),
                Some(serde_json::Value::Number(n)) => n.to_string(),
                _ => continue,
            };
            let Some(url) = obj.get(&alias.url).and_then(serde_json::Value::as_str) else {
                continue;
            };
            let Some(uri) = local_target(url, rules).and_then(|t| t.parse::<Uri>().ok()) else {
                continue;
            };
            pairs.push((id, key_of(&uri)));
        }
        if !pairs.is_empty() {
            if let Err(e) = self.store.put_media_aliases(&pairs) {
                tracing::warn!(error = %e, "recording media aliases failed");
            }
        }
    }

    /// The latest answer of a list lists the media to keep: that set replaces the list's pins for this
    /// user (a removed item unpins), in memory and in the data dir. Returns the media to prefetch (with
    /// `prefetch`).
    fn update_pins(
        &self,
        rules: &MediaRules<'_>,
        path: &JsonPath,
        (partition, list): (&str, &str),
        v: &serde_json::Value,
        key_of: KeyOf<'_>,
    ) -> Vec<Uri> {
        let mut keys = HashSet::new();
        let mut wanted = Vec::new();
        for url in path.strings(v) {
            let Some(uri) = local_target(url, rules.rewrite).and_then(|t| t.parse::<Uri>().ok()) else {
                continue;
            };
            keys.insert(key_of(&uri));
            wanted.push(uri);
        }
        if let Err(e) = self.store.put_pin_set(rules.route, partition, list, &keys) {
            tracing::warn!(error = %e, "storing pins failed; they hold until a restart");
        }
        let all = {
            let mut pins = self.pins.lock().unwrap_or_else(|p| p.into_inner());
            pins.entry(rules.route.to_string())
                .or_default()
                .entry(partition.to_string())
                .or_default()
                .insert(list.to_string(), keys);
            self.all_pins(&pins)
        };
        self.evictor.set_pins(all);
        if rules.prefetch {
            wanted
        } else {
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header;

    fn json_answer(v: serde_json::Value) -> Response<ProxyBody> {
        let mut r = Response::new(body::full(v.to_string()));
        r.headers_mut()
            .insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
        r
    }

    fn library(ids: &[&str]) -> serde_json::Value {
        let items: Vec<_> = ids
            .iter()
            .map(|id| serde_json::json!({"audio_file_id": id, "url": format!("https://s3.example/r/{id}.mp3?sig=1")}))
            .collect();
        serde_json::json!({ "items": items })
    }

    /// Hooks learn from network answers only: a cache hit neither writes aliases to the store nor
    /// replaces the pin set (the bug: every 200 on a media_alias route wrote to RocksDB), except that
    /// the first answer a process sees sets the pins of that route and user.
    #[tokio::test]
    async fn aliases_and_pins_change_only_on_network_answers() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let evictor = Arc::new(Evictor::open(store.clone(), 1 << 30, true, None).unwrap());
        let hooks = MediaHooks::new(store.clone(), evictor.clone());
        let rewrite = vec![MediaRewrite {
            upstream: "media".into(),
            origin: "https://s3.example".into(),
            local_prefix: "/media/s3".into(),
        }];
        let pins = JsonPath::parse("items[*].url").unwrap();
        let alias = MediaAlias {
            objects: JsonPath::parse("items[*]").unwrap(),
            id: "audio_file_id".into(),
            url: "url".into(),
        };
        let rules = MediaRules {
            route: "library",
            rewrite: &rewrite,
            max: 1 << 20,
            pins: Some(&pins),
            prefetch: true,
            alias: Some(&alias),
        };
        let key_of = |uri: &Uri| format!("anon\0media\0{}", uri.path()).into_bytes();
        let key = |id: &str| key_of(&format!("/media/s3/r/{id}.mp3").parse().unwrap());
        let asked = |from_network| Asked {
            from_network,
            partition: "sub:u",
            list: Some(""),
            local_base: Some("http://127.0.0.1:8787"),
        };

        // A hit first (e.g. offline after a restart): pins are set, nothing is written to the store.
        let (resp, prefetch) = hooks
            .on_answer(json_answer(library(&["a1"])), &rules, &asked(false), &key_of)
            .await
            .unwrap();
        assert_eq!(prefetch.len(), 1);
        assert!(evictor.is_pinned(&key("a1")));
        assert_eq!(
            store.media_alias_of(&key("a1")).unwrap(),
            None,
            "no store write on a hit"
        );
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        assert!(String::from_utf8_lossy(&body).contains("http://127.0.0.1:8787/media/s3/r/a1.mp3"));

        // A network answer replaces the pins and records the aliases.
        let (_, prefetch) = hooks
            .on_answer(json_answer(library(&["a2"])), &rules, &asked(true), &key_of)
            .await
            .unwrap();
        assert_eq!(prefetch.len(), 1);
        assert!(evictor.is_pinned(&key("a2")) && !evictor.is_pinned(&key("a1")));
        assert_eq!(store.media_alias_of(&key("a2")).unwrap().as_deref(), Some("a2"));

        // Later hits (even of an older body) change neither, and prefetch nothing.
        let (_, prefetch) = hooks
            .on_answer(json_answer(library(&["a3"])), &rules, &asked(false), &key_of)
            .await
            .unwrap();
        assert!(prefetch.is_empty());
        assert!(evictor.is_pinned(&key("a2")) && !evictor.is_pinned(&key("a3")));
        assert_eq!(store.media_alias_of(&key("a3")).unwrap(), None);
    }
}
