//! What the `outpost` command prints: tables and summaries rendered from library values and admin API
//! answers (kept out of `main.rs`, which only parses flags and calls the library).

use std::fmt::Write;

use serde_json::Value;

use outpost::import::ImportReport;
use outpost::store::{Salvaged, VerifyReport};

/// `outpost verify`'s table.
pub fn verify_report(r: &VerifyReport, temp_files: usize) -> String {
    let mut out = format!(
        "checked {} blob files, {} entries, {} queued writes\n",
        r.blob_files, r.entries, r.outbox_items
    );
    let rows = [
        ("orphan blob files", r.orphan_files),
        ("corrupt blobs", r.corrupt_blobs),
        ("missing blobs", r.missing_blobs),
        ("entries without a body", r.entries_without_body),
        ("undecodable entries", r.undecodable_entries),
        ("corrupt inline bodies", r.corrupt_inline_bodies),
        ("wrong refcounts", r.refcounts_wrong),
        ("stale index keys", r.stale_index_keys),
        ("entries without an access record", r.entries_without_access),
        ("access records of gone entries", r.stale_access_keys),
        ("undecodable queued writes (kept)", r.undecodable_outbox_items),
    ];
    for (what, n) in rows {
        let _ = writeln!(out, "  {what:<34} {n}");
    }
    if temp_files > 0 {
        let _ = writeln!(
            out,
            "  {:<34} {temp_files} (removed on open)",
            "temp files of interrupted fills"
        );
    }
    out
}

/// What `outpost verify --repair` says after rebuilding a damaged database.
pub fn salvage_report(s: &Salvaged, data_dir: &std::path::Path) -> String {
    if s.set_aside.is_empty() {
        return "rebuilt the database; every file could be read\n".to_string();
    }
    let lost = data_dir.join("db").join("lost");
    format!(
        "rebuilt the database; {} unreadable file(s) set aside in {} ({}): cached answers in them \
         will be fetched again, queued writes in them are lost (the count below is what remains)\n",
        s.set_aside.len(),
        lost.display(),
        s.set_aside.join(", ")
    )
}

/// The hit-rate line of `outpost status`, from `/api/stats`.
pub fn hit_rate_line(stats: &Value) -> String {
    let (mut served, mut lookups) = (0u64, 0u64);
    for (_, k) in stats["kinds"].as_object().into_iter().flatten() {
        let n = |f: &str| k[f].as_u64().unwrap_or(0);
        let c = n("hit") + n("stale") + n("revalidated") + n("offline");
        served += c;
        lookups += c + n("miss");
    }
    if lookups > 0 {
        format!(
            "hit rate: {:.0}% of {lookups} cacheable requests served from the cache",
            100.0 * served as f64 / lookups as f64
        )
    } else {
        "hit rate: no cacheable requests yet".to_string()
    }
}

/// `outpost queue list`, from `/api/queue`.
pub fn queue_table(v: &Value) -> String {
    let mut out = format!(
        "state: {}   pending: {}\n",
        v["state"]["state"].as_str().unwrap_or("?"),
        v["depth"]
    );
    for i in v["items"].as_array().into_iter().flatten() {
        out.push_str(&queue_row(i));
    }
    out
}

/// One item as `queue list` prints it (also what `queue drop` and `queue retry` acted on).
pub fn queue_row(i: &Value) -> String {
    format!(
        "{:<6} {:<11} {:<6} {:<40} attempts {:<3} {}\n",
        i["id"].as_str().unwrap_or("?"),
        i["state"].as_str().unwrap_or("?"),
        i["method"].as_str().unwrap_or("?"),
        i["uri"].as_str().unwrap_or("?"),
        i["attempts"].as_u64().unwrap_or(0),
        i["last_error"].as_str().unwrap_or("")
    )
}

/// `outpost import`'s summary line.
pub fn import_summary(report: &ImportReport, skipped: usize) -> String {
    format!(
        "imported {} files ({} bytes read), {} already present, {} duplicates ({} bytes saved), {} skipped",
        report.imported, report.bytes, report.unchanged, report.duplicates, report.bytes_saved, skipped
    )
}
