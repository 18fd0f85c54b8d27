//! The command line: check-config messages and exit codes, serve without a file.

use std::process::Command;

fn outpost() -> Command {
    Command::new(env!("CARGO_BIN_EXE_outpost"))
}

fn check(src: &str) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outpost.toml");
    std::fs::write(&path, src).unwrap();
    let out = outpost().arg("check-config").arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).replace(&path.display().to_string(), "FILE");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
    )
}

#[test]
fn check_config_accepts_the_shipped_file_and_prints_the_effective_config() {
    let out = outpost()
        .args([
            "check-config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/outpost.toml"),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("\"listen\": \"127.0.0.1:8787\""), "{stdout}");
    assert!(stdout.contains("\"strategy\": \"cache-first\""), "{stdout}");
}

#[test]
fn check_config_errors_name_file_line_key_and_reason() {
    let cases = [
        (
            "[upstreams.api]\nurl = \"http://a\"\n[upstreams.media]\nurl = \"http://m\"\n[[routes]]\nprefix = \"/m\"\nupstream = \"medai\"\n",
            "FILE:7: routes[0].upstream: no upstream named \"medai\" (known: api, media)",
        ),
        ("[upstreams.api]\nurl = \"http://a\"\nbogus = 1\n", "FILE:3: upstreams.api.bogus: unknown field `bogus`"),
        ("listen = \"nowhere\"\n[upstreams.api]\nurl = \"http://a\"\n", "FILE:1: listen: invalid socket address"),
        ("[upstreams.api]\n", "FILE:1: upstreams.api.url: missing"),
        ("[upstreams.api]\nurl = \"http://a\"\n[[routes]]\nname = \"x\"\n", "FILE:3: routes[0]: needs a path"),
        ("[upstreams.api]\nurl = \"http://a\"\n[[routes]]\npath = \"/a/{id\"\n", "FILE:4: routes[0].path: pattern"),
        ("max_size = 12x\n", "FILE:1: <syntax>:"),
    ];
    for (src, want) in cases {
        let (ok, _, stderr) = check(src);
        assert!(!ok, "{src} must be rejected");
        assert!(stderr.starts_with(want), "for {src:?}\n got: {stderr}\nwant: {want}");
    }
}

#[test]
fn check_config_on_a_missing_file_says_so() {
    let out = outpost()
        .args(["check-config", "/nonexistent/outpost.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/outpost.toml: cannot read"));
}

#[test]
fn serve_without_a_file_or_upstream_explains_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let out = outpost()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--upstream"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn serve_with_only_an_upstream_flag_starts_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = outpost()
        .args([
            "serve",
            "--upstream",
            "http://127.0.0.1:9",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
        ])
        .env("OUTPOST_DATA_DIR", dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    assert!(line.starts_with("outpost listening on http://127.0.0.1:"), "{line}");
    assert!(
        dir.path().join("db").is_dir(),
        "the store opens in the data dir from OUTPOST_DATA_DIR"
    );
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

/// `outpost check-config F | head -1`: a reader that closes the pipe early ends the command quietly
/// (it panicked with exit 101 before).
#[test]
fn a_closed_pipe_on_stdout_ends_quietly() {
    let mut child = outpost()
        .args([
            "check-config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/outpost.toml"),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The reading end goes away before anything is read.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?} {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
}
