//! The `outpost` command: parses flags, loads config, and calls the library. What it prints is
//! rendered in [`cli`].

/// What the command prints goes through these instead of std's: when stdout is a closed pipe
/// (`outpost check-config F | head -1`) the command ends quietly (exit 0) instead of panicking; other
/// write errors (a full disk under a redirect) are reported and exit 1.
macro_rules! print {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let written = write!(std::io::stdout(), $($t)*);
        $crate::stdout_written(written);
    }};
}

macro_rules! println {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let written = writeln!(std::io::stdout(), $($t)*);
        $crate::stdout_written(written);
    }};
}

mod cli;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

use outpost::config::{Config, EncryptionKey, LogFormat, Overrides};
use outpost::demo::{DemoBackend, DemoOptions};
use outpost::store::StoreError;
use outpost::Outpost;

// The binary's allocator (the library leaves the choice to whoever embeds it): glibc's malloc showed up
// as ~10 % of a profile of cache hits over many URLs, with lock contention between runtime threads;
// mimalloc keeps per-thread heaps. Measured effect in docs/benchmarks.md.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Offline-first caching reverse proxy for apps.
#[derive(Parser)]
#[command(name = "outpost", version, about)]
struct Cli {
    /// Log format (overrides the file's `log_format`).
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormatArg>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormatArg {
    Text,
    Json,
}

#[derive(clap::Args, Default)]
struct ServeArgs {
    /// Config file (TOML). Without one, --upstream is required. SIGHUP reads it again.
    #[arg(long, short, env = "OUTPOST_CONFIG")]
    config: Option<PathBuf>,
    /// URL of the default upstream (overrides the file).
    #[arg(long)]
    upstream: Option<String>,
    /// Address apps connect to [default: 127.0.0.1:8787].
    #[arg(long, env = "OUTPOST_LISTEN")]
    listen: Option<String>,
    /// Admin API address [default: 127.0.0.1:8788].
    #[arg(long)]
    admin: Option<String>,
    /// Data directory [default: ./outpost-data].
    #[arg(long, env = "OUTPOST_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Cache size budget, e.g. 500MB, 2GiB [default: 500MB].
    #[arg(long)]
    max_size: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Serve(ServeArgs),
    /// Print shell completions (bash, zsh, fish, elvish, powershell) to stdout.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) to stdout: `outpost man > outpost.1`.
    Man,
    /// Validate a config file and print the effective configuration.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
    /// Run the demo backend, the proxy and the offline story end to end.
    Demo {
        /// Keep everything running after the story, for exploring by hand.
        #[arg(long)]
        keep_running: bool,
        /// Show the proxy's logs (request lines at info) between the story's lines; without it only
        /// errors are logged (RUST_LOG overrides both).
        #[arg(long, short)]
        verbose: bool,
    },
    /// Run the demo backend alone.
    DemoBackend {
        /// API address.
        #[arg(long, default_value = "127.0.0.1:9100")]
        listen: SocketAddr,
        /// Media ("S3") address.
        #[arg(long, default_value = "127.0.0.1:9101")]
        media: SocketAddr,
        /// Control (fault knobs) address.
        #[arg(long, default_value = "127.0.0.1:9102")]
        control: SocketAddr,
        /// Size of every audio file, in bytes.
        #[arg(long, default_value_t = 1 << 20)]
        audio_size: usize,
    },
    /// Show a running instance's status (from its admin API).
    Status {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Check a data directory: every blob re-hashed, entries, refcounts, indexes, outbox. Exits 1 when it
    /// found problems it did not repair. Outpost must not be running on the data dir.
    Verify {
        /// The data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// Fix what can be fixed: drop corrupt and orphan blobs and the entries that lost their body,
        /// rewrite refcounts, remove stale index keys. Queued writes are never deleted.
        #[arg(long)]
        repair: bool,
        /// Key file of an encrypted data dir (as `encryption.key_file` in the config).
        #[arg(long, conflicts_with = "key_env")]
        key_file: Option<PathBuf>,
        /// Environment variable holding the key of an encrypted data dir (as `encryption.key_env`).
        #[arg(long)]
        key_env: Option<String>,
    },
    /// Import an existing on-disk audio cache (url → file mapping) into the store. Outpost must not be
    /// running on the data dir.
    Import {
        /// Directory the mapping's relative file names are relative to.
        dir: PathBuf,
        /// Mapping file: CSV lines `url,file` or JSON (`[{"url":..,"file":..}]` or `{"url": "file"}`).
        #[arg(long)]
        map: PathBuf,
        /// Config file (routes decide each URL's cache key).
        #[arg(long, short)]
        config: PathBuf,
        /// Data directory (overrides the file).
        #[arg(long, env = "OUTPOST_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Cache statistics and clearing of a running instance.
    Cache {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        action: CacheAction,
    },
    /// See and steer the queue of offline writes of a running instance.
    Queue {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        action: QueueAction,
    },
}

#[derive(clap::Args)]
struct AdminArgs {
    /// Admin address of the running instance [default: admin_listen of --config, else 127.0.0.1:8788].
    #[arg(long, global = true, env = "OUTPOST_ADMIN")]
    admin: Option<SocketAddr>,
    /// Admin token [default: read from DATA_DIR/admin.token].
    #[arg(long, global = true, env = "OUTPOST_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Data directory holding admin.token [default: data_dir of --config, else ./outpost-data].
    #[arg(long, global = true, env = "OUTPOST_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The running instance's config file: where its admin API listens and its data dir.
    #[arg(long, global = true, env = "OUTPOST_CONFIG")]
    config: Option<PathBuf>,
}

/// The admin API of a running instance, and the token it takes.
struct AdminTarget {
    admin: SocketAddr,
    data_dir: PathBuf,
    token: Option<String>,
}

impl AdminArgs {
    /// Flags and environment first, then the config file, then the defaults `serve` uses.
    fn resolve(self) -> anyhow::Result<AdminTarget> {
        let config = match &self.config {
            Some(path) => Some(Config::load(path, &Overrides::default())?),
            None => None,
        };
        let admin = match (self.admin, &config) {
            (Some(a), _) => a,
            (None, Some(c)) => c.admin_listen,
            (None, None) => outpost::config::DEFAULT_ADMIN
                .parse()
                .context("the default admin address")?,
        };
        let data_dir = match (self.data_dir, config) {
            (Some(d), _) => d,
            (None, Some(c)) => c.data_dir,
            (None, None) => PathBuf::from(outpost::config::DEFAULT_DATA_DIR),
        };
        Ok(AdminTarget {
            admin,
            data_dir,
            token: self.token,
        })
    }
}

impl AdminTarget {
    fn token(&self) -> anyhow::Result<String> {
        if let Some(t) = &self.token {
            return Ok(t.clone());
        }
        let path = outpost::admin::token_path(&self.data_dir);
        std::fs::read_to_string(&path)
            .map(|t| t.trim().to_string())
            .with_context(|| {
                format!(
                    "cannot read the admin token at {} (pass --config, --data-dir or --token)",
                    path.display()
                )
            })
    }
}

#[derive(Subcommand)]
enum CacheAction {
    /// Size per kind against the limit, hit rates, dedup savings, evictions.
    Stats,
    /// Clear everything (--all), one kind, or one user partition.
    Clear {
        /// Clear only this kind (messages, snapshots, audio, library, ...).
        #[arg(long)]
        kind: Option<String>,
        /// Clear only this partition (e.g. sub:alice).
        #[arg(long)]
        partition: Option<String>,
        /// Clear everything (needed when no --kind or --partition is given).
        #[arg(long, conflicts_with_all = ["kind", "partition"])]
        all: bool,
    },
    /// Remove every stored answer for one URL (all its Vary variants), for every user or one.
    Purge {
        /// The URL as the app asks for it: a path with its query (/api/v1/library?page=2) or an
        /// absolute URL on Outpost.
        url: String,
        /// Only this user's partition (e.g. sub:alice).
        #[arg(long)]
        partition: Option<String>,
    },
}

#[derive(Subcommand)]
enum QueueAction {
    /// List queued writes, dead letters and overridden writes.
    List,
    /// Make an item due now (also revives a dead letter).
    Retry {
        /// Item id (e.g. q12).
        id: String,
    },
    /// Remove an item for good.
    Drop {
        /// Item id.
        id: String,
    },
    /// Retry every dead letter.
    RetryDead,
    /// Stop replaying.
    Pause,
    /// Start replaying again.
    Resume,
}

/// Logs go to stderr from a writer thread of their own: a request's thread only queues its line (a slow
/// or blocked stderr never holds a request; past 64k queued lines new ones are dropped and counted).
/// Lines stay whole and in order; the returned guard writes out what is queued when dropped, at exit.
/// Colour only when stderr is a terminal.
fn init_logging(format: LogFormat) -> anyhow::Result<Logging> {
    init_logging_at(format, "info")
}

/// Logging with `default` as the filter when `RUST_LOG` is not set.
fn init_logging_at(format: LogFormat, default: &str) -> anyhow::Result<Logging> {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Past 8 MiB of lines waiting for stderr (tens of thousands), new ones are dropped and counted.
    let (writer, guard) = outpost::logbuf::spawn(std::io::stderr(), 8 << 20, "outpost-log")
        .map_err(|e| anyhow::anyhow!("cannot start the log writer thread: {e}"))?;
    let dropped = writer.clone();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(move || writer.clone());
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    Ok(Logging {
        guard: Some(guard),
        dropped,
    })
}

/// Keeps the log writer thread until the command ends.
struct Logging {
    guard: Option<outpost::logbuf::Guard>,
    dropped: outpost::logbuf::LineWriter,
}

impl Drop for Logging {
    fn drop(&mut self) {
        drop(self.guard.take());
        let n = self.dropped.dropped_lines();
        if n > 0 {
            eprintln!("outpost: {n} log lines were dropped because stderr could not keep up");
        }
    }
}

/// An admin API failure worded by its cause: nothing answering, or the API refusing (401, 404, 400...).
fn admin_error(addr: SocketAddr) -> impl Fn(outpost::admin::client::ClientError) -> anyhow::Error {
    move |e| match e {
        outpost::admin::client::ClientError::Transport(why) => {
            anyhow::anyhow!("no Outpost answering on admin address {addr} (is it running? pass --admin ADDR): {why}")
        }
        outpost::admin::client::ClientError::Answer(why) => {
            anyhow::anyhow!("the admin API at {addr} refused: {why}")
        }
    }
}

/// Ends the process on a failed write to stdout (see `println!` above).
fn stdout_written(r: std::io::Result<()>) {
    match r {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            eprintln!("error: cannot write to stdout: {e}");
            std::process::exit(1);
        }
    }
}

/// SIGHUP: reads the config file again (with the same flags and environment) and swaps it in; on an
/// error the running config stays and the error (file, line, key) is logged.
fn reload_config(outpost: &Outpost, file: Option<&std::path::Path>, overrides: &Overrides) {
    let loaded = match file {
        Some(path) => Config::load(path, overrides),
        None => Config::from_overrides(overrides),
    };
    match loaded {
        Err(e) => tracing::error!(error = %e, "config reload refused; the running config stays"),
        Ok(config) => match outpost.reload(config) {
            Ok(r) if r.restart_needed.is_empty() => {}
            Ok(r) => tracing::warn!(
                settings = %r.restart_needed.join(", "),
                "config reloaded; these changed settings take effect at the next restart"
            ),
            Err(e) => tracing::error!(error = %e, "config reload refused; the running config stays"),
        },
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Blocking work (file reads of large bodies, spool writes, synced commits) in at most 64 threads: each
    // costs its stack and an allocator cache, and a burst of uploads must not make hundreds of them.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(64)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let flag_format = cli.log_format.map(|f| match f {
        LogFormatArg::Text => LogFormat::Text,
        LogFormatArg::Json => LogFormat::Json,
    });
    match cli.command {
        Command::Serve(args) => {
            let overrides = Overrides {
                upstream: args.upstream,
                listen: args.listen,
                admin: args.admin,
                data_dir: args.data_dir,
                max_size: args.max_size,
            };
            let config = match &args.config {
                Some(path) => Config::load(path, &overrides)?,
                None => Config::from_overrides(&overrides)?,
            };
            let _logging = init_logging(flag_format.unwrap_or(config.log_format))?;
            let outpost = Outpost::start(config).await?;
            let stop = outpost::platform::stop_requested();
            let mut reload = outpost::platform::ReloadSignal::listen();
            println!(
                "outpost listening on http://{} (admin http://{})",
                outpost.addr(),
                outpost.admin_addr()
            );
            tokio::pin!(stop);
            loop {
                let hup = async {
                    match reload.as_mut() {
                        Some(r) => r.next().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = &mut stop => break,
                    got = hup => match got {
                        Some(()) => reload_config(&outpost, args.config.as_deref(), &overrides),
                        None => reload = None,
                    },
                }
            }
            tracing::info!("shutting down");
            outpost.shutdown().await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Completions { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "outpost", &mut out);
            print!("{}", String::from_utf8_lossy(&out));
            Ok(ExitCode::SUCCESS)
        }
        Command::Man => {
            let mut out = Vec::new();
            clap_mangen::Man::new(Cli::command())
                .render(&mut out)
                .context("rendering the man page")?;
            print!("{}", String::from_utf8_lossy(&out));
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { file } => match Config::load(&file, &Overrides::default()) {
            Ok(config) => {
                println!("{}: ok", file.display());
                println!("{}", config.to_pretty_json());
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{e}");
                Ok(ExitCode::FAILURE)
            }
        },
        Command::Demo { keep_running, verbose } => {
            let level = if verbose { "info" } else { "error" };
            let _logging = init_logging_at(flag_format.unwrap_or(LogFormat::Text), level)?;
            let report = outpost::demo::story::run(keep_running).await.context("demo")?;
            Ok(if report.failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::DemoBackend {
            listen,
            media,
            control,
            audio_size,
        } => {
            let _logging = init_logging(flag_format.unwrap_or(LogFormat::Text))?;
            let backend = DemoBackend::start(DemoOptions {
                api: listen,
                media,
                control,
                audio_size,
                ..Default::default()
            })
            .await
            .context("starting the demo backend")?;
            let stop = outpost::platform::stop_requested();
            println!("demo API     {}", backend.api_url());
            println!("demo media   {}", backend.media_url());
            println!(
                "demo control {}  (PUT /faults {{\"mode\":\"down\"}}, GET /mutations)",
                backend.control_url()
            );
            stop.await;
            backend.stop().await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { admin } => {
            let admin = admin.resolve()?;
            let token = admin.token()?;
            let body = outpost::admin::client::get_json(admin.admin, "/api/status", &token)
                .await
                .map_err(admin_error(admin.admin))?;
            println!("{}", outpost::admin::client::render_status(&body));
            if let Ok(stats) = outpost::admin::client::get_json(admin.admin, "/api/stats", &token).await {
                println!("{}", cli::hit_rate_line(&stats));
            }
            println!("dashboard: http://{}/", admin.admin);
            println!("admin token: {token}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify {
            data_dir,
            repair,
            key_file,
            key_env,
        } => {
            let _logging = init_logging(flag_format.unwrap_or(LogFormat::Text))?;
            let tmp = std::fs::read_dir(data_dir.join("blobs").join("tmp"))
                .map(|d| d.count())
                .unwrap_or(0);
            let key = match (key_file, key_env) {
                (Some(f), _) => Some(EncryptionKey::from_file(&f).map_err(anyhow::Error::msg)?),
                (None, Some(e)) => Some(EncryptionKey::from_env(&e).map_err(anyhow::Error::msg)?),
                (None, None) => None,
            };
            let open = || outpost::store::Store::open_with_key(&data_dir, key.as_ref().map(|k| k.bytes()));
            let store = match open() {
                Err(StoreError::Damaged { reason, .. }) if repair => {
                    // RocksDB cannot open it: rebuild from what can be read, then the usual repair.
                    println!("the database is damaged ({reason}); salvaging what can be read");
                    let salvaged = outpost::store::Store::salvage(&data_dir)
                        .with_context(|| format!("salvaging {}", data_dir.display()))?;
                    print!("{}", cli::salvage_report(&salvaged, &data_dir));
                    open().with_context(|| format!("opening {} after salvage", data_dir.display()))?
                }
                other => other.with_context(|| format!("opening {}", data_dir.display()))?,
            };
            let report = store.verify(repair).context("verifying")?;
            print!("{}", cli::verify_report(&report, tmp));
            if report.problems() == 0 {
                println!("clean");
                return Ok(ExitCode::SUCCESS);
            }
            if !repair {
                println!("{} problems found; run with --repair to fix them", report.problems());
                return Ok(ExitCode::from(1));
            }
            let after = store.verify(false).context("verifying after repair")?;
            if after.problems() == 0 {
                println!("repaired {} problems; now clean", report.problems());
                Ok(ExitCode::SUCCESS)
            } else {
                print!("{}", cli::verify_report(&after, 0));
                println!("{} problems remain after repair", after.problems());
                Ok(ExitCode::from(1))
            }
        }
        Command::Import {
            dir,
            map,
            config,
            data_dir,
        } => {
            let config = Config::load(
                &config,
                &Overrides {
                    data_dir,
                    ..Default::default()
                },
            )?;
            let (rows, mut errors) = outpost::import::read_map(&map, &dir)?;
            let total: u64 = rows
                .iter()
                .filter_map(|r| std::fs::metadata(&r.file).ok())
                .map(|m| m.len())
                .sum();
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar.set_message(format!("{} files", rows.len()));
            let report = outpost::import::import(&config, &rows, &|n| bar.inc(n))?;
            bar.finish();
            errors.extend(report.errors.iter().cloned());
            println!("{}", cli::import_summary(&report, errors.len()));
            for e in &errors {
                eprintln!("skipped: {e}");
            }
            Ok(if errors.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }
        Command::Cache { admin, action } => {
            let admin = admin.resolve()?;
            use http::Method;
            use outpost::admin::client::{admin_call_body, get_json};
            match action {
                CacheAction::Stats => {
                    let v = get_json(admin.admin, "/api/stats", &admin.token()?)
                        .await
                        .map_err(admin_error(admin.admin))?;
                    println!("{}", outpost::admin::client::render_stats(&v));
                }
                CacheAction::Clear { kind, partition, all } => {
                    let token = admin.token()?;
                    let body = match (&kind, &partition, all) {
                        (None, None, true) => serde_json::json!({"all": true}),
                        (None, None, false) => anyhow::bail!(
                            "say what to clear: --all, --kind KIND or --partition PARTITION (nothing was cleared)"
                        ),
                        _ => serde_json::json!({"kind": kind, "partition": partition}),
                    };
                    let v = admin_call_body(admin.admin, Method::POST, "/api/cache/clear", &token, &body)
                        .await
                        .map_err(admin_error(admin.admin))?;
                    println!(
                        "cleared {} entries, freed {} bytes",
                        v["cleared_entries"], v["freed_bytes"]
                    );
                }
                CacheAction::Purge { url, partition } => {
                    let mut q = form_urlencoded::Serializer::new(String::new());
                    q.append_pair("url", &url);
                    if let Some(p) = &partition {
                        q.append_pair("partition", p);
                    }
                    let path = format!("/api/cache?{}", q.finish());
                    let v = outpost::admin::client::admin_call(admin.admin, Method::DELETE, &path, &admin.token()?)
                        .await
                        .map_err(admin_error(admin.admin))?;
                    println!(
                        "purged {} entries for {url}, freed {} bytes",
                        v["purged_entries"], v["freed_bytes"]
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Queue { admin, action } => {
            let admin = admin.resolve()?;
            use http::Method;
            use outpost::admin::client::{admin_call, get_json};
            if let QueueAction::List = action {
                let v = get_json(admin.admin, "/api/queue", &admin.token()?)
                    .await
                    .map_err(admin_error(admin.admin))?;
                print!("{}", cli::queue_table(&v));
                return Ok(ExitCode::SUCCESS);
            }
            let token = admin.token()?;
            // What drop and retry act on, printed as `list` prints it.
            let item = match &action {
                QueueAction::Retry { id } | QueueAction::Drop { id } => {
                    let v = get_json(admin.admin, "/api/queue", &token)
                        .await
                        .map_err(admin_error(admin.admin))?;
                    v["items"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|i| i["id"].as_str() == Some(id.as_str()))
                        .cloned()
                }
                _ => None,
            };
            let (method, path, done) = match &action {
                QueueAction::Retry { id } => (Method::POST, format!("/api/queue/{id}/retry"), "retrying"),
                QueueAction::Drop { id } => (Method::DELETE, format!("/api/queue/{id}"), "dropped"),
                QueueAction::RetryDead => (Method::POST, "/api/queue/retry-dead".to_string(), "retried"),
                QueueAction::Pause => (Method::POST, "/api/queue/pause".to_string(), "queue"),
                QueueAction::Resume => (Method::POST, "/api/queue/resume".to_string(), "queue"),
                QueueAction::List => unreachable!("handled above"),
            };
            let v = admin_call(admin.admin, method, &path, &token)
                .await
                .map_err(admin_error(admin.admin))?;
            match (&action, item) {
                (QueueAction::Retry { .. } | QueueAction::Drop { .. }, Some(item)) => {
                    print!("{done}: {}", cli::queue_row(&item))
                }
                (QueueAction::RetryDead, _) => println!("{done} {} dead letters", v["retried"].as_u64().unwrap_or(0)),
                (QueueAction::Pause | QueueAction::Resume, _) => {
                    println!("{done} {}", v["state"]["state"].as_str().unwrap_or("?"))
                }
                _ => println!("{done}: {v}"),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
