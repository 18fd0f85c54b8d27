//! What a pending write shows to its user while it waits (the overlay's effect, for the queue view):
//! read from the routes in force, the same rules the proxy's overlay follows (`overlay`,
//! `overlay_list`), so the dashboard can say "GET /api/v1/notes/1 answers 404" before it happens.

use http::Method;

use crate::queue::{ItemState, OutboxRecord};
use crate::routes::{RoutePattern, RouteTable};

/// The path of the `overlay_list` collection whose items are written at `at` (its `item_path`, or its
/// own path), filled in with the same `{params}`.
fn list_written_at(table: &RouteTable, at: &str) -> Option<String> {
    table.routes().iter().find_map(|r| {
        let l = r.policy.overlay_list.as_ref()?;
        let written = RoutePattern::exact(l.item_path.as_deref().unwrap_or(l.path.as_str())).ok()?;
        let mut list = l.path.as_str().to_string();
        for (k, v) in written.matches(at)? {
            list = list.replace(&format!("{{{k}}}"), &v);
        }
        Some(list)
    })
}

/// One line per read the pending `item` changes for its user (empty: none).
pub(super) fn overlay_effects(item: &OutboxRecord, table: &RouteTable) -> Vec<String> {
    if item.state != ItemState::Pending {
        return Vec::new();
    }
    let path = item.uri.split('?').next().unwrap_or("");
    let spooled = item.body_file.is_some();
    let mut out = Vec::new();
    let own = table.route(&Method::GET, path);
    if own.policy.overlay && matches!(item.method.as_str(), "PUT" | "PATCH" | "DELETE") {
        out.push(match item.method.as_str() {
            _ if spooled => format!("GET {path}: no overlay (a spooled body is not read back)"),
            "PUT" => format!("GET {path} answers this body"),
            "DELETE" => format!("GET {path} answers 404"),
            _ if item.is_merge_patch() => format!("GET {path} answers the stored JSON with this merge patch"),
            _ => format!("GET {path}: no overlay (only merge patches are applied)"),
        });
    }
    // The collection this write adds to or changes an item of.
    let (at, id) = match item.method.as_str() {
        "POST" => (path, None),
        "PUT" | "PATCH" | "DELETE" => match path.rsplit_once('/') {
            Some((parent, id)) if !parent.is_empty() && !id.is_empty() => (parent, Some(id)),
            _ => return out,
        },
        _ => return out,
    };
    let Some(list) = list_written_at(table, at) else {
        return out;
    };
    out.push(match (item.method.as_str(), id) {
        _ if spooled => format!("GET {list}: no overlay (a spooled body is not read back)"),
        ("POST", _) => format!("GET {list} lists this new item"),
        ("PUT", Some(id)) => format!("GET {list} lists item {id} as this body"),
        ("DELETE", Some(id)) => format!("GET {list} leaves out item {id}"),
        (_, Some(id)) if item.is_merge_patch() => format!("GET {list} shows item {id} with this merge patch"),
        _ => format!("GET {list}: no overlay (only merge patches are applied)"),
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Overrides};

    #[test]
    fn each_pending_write_says_what_its_user_reads_meanwhile() {
        let config = Config::from_toml(
            r#"
[upstreams.api]
url = "http://127.0.0.1:9"
[[routes]]
prefix = "/api/v1/library"
overlay = true
overlay_list = { path = "/api/v1/library" }
[[routes]]
prefix = "/api/v1/plain"
[[routes]]
path = "/api/v1/threads/{t}/messages"
overlay_list = { path = "/api/v1/threads/{t}/messages", items = "messages", item_path = "/api/v1/msgs/{t}" }
"#,
            "t.toml",
            &Overrides::default(),
        )
        .unwrap();
        let table = config.route_table();
        let w = |method: &str, uri: &str, ct: &str| OutboxRecord {
            method: method.into(),
            uri: uri.into(),
            headers: vec![("content-type".into(), ct.as_bytes().to_vec())],
            ..Default::default()
        };
        let json = "application/json";
        let merge = "application/merge-patch+json";
        assert_eq!(
            overlay_effects(&w("POST", "/api/v1/library", json), &table),
            ["GET /api/v1/library lists this new item"]
        );
        assert_eq!(
            overlay_effects(&w("DELETE", "/api/v1/library/7", ""), &table),
            [
                "GET /api/v1/library/7 answers 404",
                "GET /api/v1/library leaves out item 7"
            ]
        );
        assert_eq!(
            overlay_effects(&w("PATCH", "/api/v1/library/7?x=1", merge), &table),
            [
                "GET /api/v1/library/7 answers the stored JSON with this merge patch",
                "GET /api/v1/library shows item 7 with this merge patch"
            ]
        );
        assert_eq!(
            overlay_effects(&w("PUT", "/api/v1/library/7", json), &table)[1],
            "GET /api/v1/library lists item 7 as this body"
        );
        assert!(overlay_effects(&w("PUT", "/api/v1/plain/1", json), &table).is_empty());
        assert_eq!(
            overlay_effects(&w("DELETE", "/api/v1/msgs/t9/m1", json), &table),
            ["GET /api/v1/threads/t9/messages leaves out item m1"]
        );
        let stopped = OutboxRecord {
            state: ItemState::DeadLetter,
            ..w("PUT", "/api/v1/library/7", json)
        };
        assert!(overlay_effects(&stopped, &table).is_empty());
    }
}
