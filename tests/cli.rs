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

/// The service examples in `contrib/` start Outpost with the arguments they give, which parse, serve
/// and stop cleanly on SIGTERM; the systemd unit passes `systemd-analyze verify` where that exists, the
/// launchd plist parses as a property list where Python exists, and the container's config checks.
#[test]
fn service_examples_run_outpost_as_written() {
    let contrib = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib");
    let home = tempfile::tempdir().unwrap();
    let h = home.path().display().to_string();
    let unit = std::fs::read_to_string(contrib.join("outpost.service")).unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    assert!(unit.contains("ExecReload=/bin/kill -HUP $MAINPID"), "reload is SIGHUP");
    let systemd: Vec<String> = exec.replace("%h", &h).split_whitespace().map(String::from).collect();

    let plist = std::fs::read_to_string(contrib.join("dev.outpost.plist")).unwrap();
    let args = plist
        .split("<key>ProgramArguments</key>")
        .nth(1)
        .and_then(|r| r.split("</array>").next())
        .expect("ProgramArguments");
    let launchd: Vec<String> = args
        .split("<string>")
        .skip(1)
        .filter_map(|s| s.split("</string>").next())
        .map(|s| s.replace("/Users/YOU", &h))
        .collect();

    let containerfile = std::fs::read_to_string(contrib.join("Containerfile")).unwrap();
    let json_line = |prefix: &str| -> Vec<String> {
        let line = containerfile
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("{prefix}"));
        serde_json::from_str(line.trim()).unwrap()
    };
    let container: Vec<String> = json_line("ENTRYPOINT ")
        .into_iter()
        .chain(json_line("CMD "))
        .map(|s| s.replace("/etc/outpost", &format!("{h}/etc")))
        .collect();

    for (what, argv) in [("systemd", systemd), ("launchd", launchd), ("container", container)] {
        assert!(argv[0].ends_with("/outpost"), "{what}: {argv:?}");
        let config = argv
            .iter()
            .skip_while(|a| *a != "--config")
            .nth(1)
            .unwrap_or_else(|| panic!("{what}: --config"));
        std::fs::create_dir_all(std::path::Path::new(config).parent().unwrap()).unwrap();
        std::fs::write(
            config,
            format!(
                "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\ndata_dir = \"{h}/data-{what}\"\n\
                 [upstreams.api]\nurl = \"http://127.0.0.1:9\"\n"
            ),
        )
        .unwrap();
        let mut child = outpost()
            .args(&argv[1..])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
        assert!(
            line.starts_with("outpost listening on http://127.0.0.1:"),
            "{what}: {line}"
        );
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        let status = child.wait().unwrap();
        assert!(status.success(), "{what}: {status:?}");
    }

    let (ok, _, err) = check(&std::fs::read_to_string(contrib.join("container.toml")).unwrap());
    assert!(ok, "container.toml: {err}");

    if Command::new("systemd-analyze").arg("--version").output().is_ok() {
        let bin = home.path().join(".cargo/bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::copy(env!("CARGO_BIN_EXE_outpost"), bin.join("outpost")).unwrap();
        let runtime = home.path().join("run");
        std::fs::create_dir_all(&runtime).unwrap();
        let out = Command::new("systemd-analyze")
            .args(["verify", "--user"])
            .arg(contrib.join("outpost.service"))
            .env("HOME", home.path())
            .env("XDG_RUNTIME_DIR", &runtime)
            .output()
            .unwrap();
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "systemd-analyze verify: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        println!("SKIPPED systemd-analyze verify: not installed");
    }
    let plist_check = Command::new("python3")
        .args(["-c", "import plistlib,sys; plistlib.load(open(sys.argv[1],'rb'))"])
        .arg(contrib.join("dev.outpost.plist"))
        .status();
    match plist_check {
        Ok(s) => assert!(s.success(), "the plist does not parse"),
        Err(e) => println!("SKIPPED plist parse: {e}"),
    }
}

/// `status`, `queue` and `cache` find a running instance through its config file (admin address and
/// data dir with the token), print aligned tables with sizes for people, and `queue drop` prints the row
/// it dropped as `queue list` shows it.
#[tokio::test(flavor = "multi_thread")]
async fn admin_commands_find_the_instance_through_its_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let admin_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let file = dir.path().join("outpost.toml");
    std::fs::write(
        &file,
        format!(
            "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:{admin_port}\"\ndata_dir = \"{}\"\n\
             [upstreams.api]\nurl = \"http://127.0.0.1:9\"\n[budget]\nother = \"1MB\"\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let config = outpost::config::Config::load(&file, &Default::default()).unwrap();
    let running = outpost::Outpost::start(config).await.unwrap();
    let client = outpost::admin::client::HttpClient::new(std::time::Duration::from_secs(10));
    let put = client
        .call(
            http::Method::PUT,
            &format!("http://{}/api/v1/things/1", running.addr()),
            &[("content-type", "application/json")],
            Some(b"{}".to_vec()),
        )
        .await
        .unwrap();
    assert_eq!(put.head.status, 202, "queued while the upstream is down");
    let run = |args: Vec<String>| async move {
        tokio::task::spawn_blocking(move || {
            let out = outpost().args(&args).env_remove("OUTPOST_DATA_DIR").output().unwrap();
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        })
        .await
        .unwrap()
    };
    let f = file.display().to_string();
    let (ok, list, err) = run(vec!["queue".into(), "list".into(), "--config".into(), f.clone()]).await;
    assert!(ok, "{err}");
    let row = list
        .lines()
        .find(|l| l.contains("/api/v1/things/1"))
        .unwrap_or_else(|| panic!("{list}"));
    assert!(row.starts_with("q"), "{row}");
    let id = row.split_whitespace().next().unwrap().to_string();
    let (ok, dropped, err) = run(vec![
        "queue".into(),
        "drop".into(),
        id.clone(),
        "--config".into(),
        f.clone(),
    ])
    .await;
    assert!(ok, "{err}");
    assert_eq!(dropped, format!("dropped: {row}\n"));
    let (ok, stats, err) = run(vec!["cache".into(), "--config".into(), f.clone(), "stats".into()]).await;
    assert!(ok, "{err}");
    assert!(stats.starts_with("cache: 0 B of 500 MB (storing)"), "{stats}");
    let header = stats.lines().nth(1).unwrap();
    let api = stats
        .lines()
        .find(|l| l.starts_with("other "))
        .unwrap_or_else(|| panic!("{stats}"));
    assert!(api.contains("0 B of 1 MB"), "{stats}");
    // Columns line up: every row ends where the header does.
    assert_eq!(header.len(), api.len(), "{stats}");
    let (ok, status, err) = run(vec!["status".into(), "--config".into(), f.clone()]).await;
    assert!(ok, "{err}");
    assert!(status.contains("outpost"), "{status}");
    // Without the config the default admin address is asked, and the refusal says so.
    let (ok, _, err) = run(vec![
        "status".into(),
        "--admin".into(),
        "127.0.0.1:9".into(),
        "--token".into(),
        "x".into(),
    ])
    .await;
    assert!(!ok);
    assert!(err.contains("127.0.0.1:9"), "{err}");
    running.shutdown().await;
}

#[test]
fn completions_and_the_man_page_come_from_the_cli_definition() {
    let out = outpost().args(["completions", "bash"]).output().unwrap();
    assert!(out.status.success());
    let bash = String::from_utf8_lossy(&out.stdout);
    assert!(bash.contains("_outpost()") && bash.contains("check-config"), "{bash}");
    let out = outpost().arg("man").output().unwrap();
    assert!(out.status.success());
    let man = String::from_utf8_lossy(&out.stdout);
    assert!(man.starts_with(".ie") || man.contains(".TH outpost"), "{man}");
    assert!(man.contains("serve"), "{man}");
}
