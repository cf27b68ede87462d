//! The `snapshop` command line: `serve`, `keys`, `eval`, `bench` and `import`. Thin: parsing and
//! logging only.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use snapshop::config::{Config, LogFormat, Overrides};
use snapshop::search::Grouping;
use snapshop::Backend;

#[derive(Parser)]
#[command(
    name = "snapshop",
    version,
    about = "Product-image search: upload tagged products, search with phone photos"
)]
struct Cli {
    /// Optional TOML config file (lowest-priority layer above the defaults).
    #[arg(long, global = true, env = "SNAPSHOP_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

/// Which labelled images to use: a CSV manifest, a split, and optionally fewer products.
#[derive(Args)]
struct Dataset {
    /// CSV manifest: image,product_id,domain,split,tags.
    #[arg(long, default_value = "data/street2shop/manifest.csv")]
    manifest: PathBuf,
    /// Split to use.
    #[arg(long, default_value = "test")]
    split: String,
    /// Only the first N products of the split (in manifest order).
    #[arg(long)]
    limit_products: Option<usize>,
    /// First-pass candidates re-ranked.
    #[arg(long, default_value_t = 256)]
    candidates: usize,
}

/// Where a report goes.
#[derive(Args)]
struct Report<const EVAL: bool> {
    /// Where to write the JSON report.
    #[arg(long, default_value = if EVAL { "eval-report.json" } else { "bench-report.json" })]
    output: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP service.
    Serve {
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Create, list and revoke API keys, directly in the store (also while the server runs).
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
    /// Measure P@K through the real ingest and search code on a labelled CSV manifest.
    Eval {
        #[command(flatten)]
        overrides: Overrides,
        #[command(flatten)]
        data: Dataset,
        /// The K of P@K, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,5,10,20,50,100")]
        k: Vec<usize>,
        /// Rank products (a product at its best image, as the pipeline's P@K and the API do)
        /// or single shop images.
        #[arg(long, value_parser = parse_unit, default_value = "product")]
        unit: Grouping,
        /// Searches in flight at once.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        #[command(flatten)]
        report: Report<true>,
    },
    /// Per-stage search latency for one photo against a split's gallery, index build time and
    /// first-pass recall.
    Bench {
        #[command(flatten)]
        overrides: Overrides,
        #[command(flatten)]
        data: Dataset,
        /// The query photo, e.g. a 12 MP JPEG.
        #[arg(long)]
        image: PathBuf,
        #[arg(long, default_value_t = 30)]
        iterations: usize,
        /// Street photos used to measure recall against exact search.
        #[arg(long, default_value_t = 200)]
        recall_queries: usize,
        /// Grow the catalogue to N images with perturbed copies of the gallery's embeddings
        /// (no model call per image) and measure the service at that size (docs/performance.md).
        #[arg(long, value_name = "N")]
        catalogue: Option<usize>,
        /// With --catalogue: the sizes to measure at on the way (N itself always is).
        #[arg(long, value_delimiter = ',', default_value = "10000,30000")]
        checkpoints: Vec<usize>,
        /// With --catalogue: street photos used as first-pass queries.
        #[arg(long, default_value_t = 100)]
        queries: usize,
        /// With --catalogue: per-dimension noise of a copied embedding (0.03: cosine ~0.9).
        #[arg(long, default_value_t = 0.03)]
        noise: f32,
        /// With --catalogue: merchants the synthetic products are spread over.
        #[arg(long, default_value_t = 49)]
        merchants: usize,
        /// With --catalogue: synthetic products written at once.
        #[arg(long, default_value_t = 8)]
        write_concurrency: usize,
        /// With --catalogue: the seed of the perturbations.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[command(flatten)]
        report: Report<false>,
    },
    /// Bulk-import products from CSV, JSONL or Google Cloud Vision Product Search's bulk-import
    /// CSV into a running server, over its HTTP API; a rerun skips what is already there.
    ///
    /// Exit code 0: every row imported; 1: some rows failed (see the error report); 2: usage
    /// errors (bad options, unreadable file, server unreachable, key refused). See docs/import.md.
    Import {
        /// The input file (.csv or .jsonl; images are paths relative to it, file://, http(s)://
        /// or gs:// URIs).
        file: PathBuf,
        /// The server.
        #[arg(long, env = "SNAPSHOP_URL", default_value = "http://127.0.0.1:8080")]
        url: String,
        /// The merchant whose catalogue is loaded.
        #[arg(long)]
        merchant: String,
        /// A merchant key of that merchant, or an admin key (better from SNAPSHOP_KEY: a flag
        /// shows in the process list). Never printed.
        #[arg(long, env = "SNAPSHOP_KEY", hide_env_values = true)]
        key: String,
        /// csv, jsonl or gcp (default: by extension and first line).
        #[arg(long, value_parser = parse_format)]
        format: Option<snapshop::import::input::Format>,
        /// Products in flight at once.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// Attempts per HTTP call (429, 503 and connection errors are retried with backoff).
        #[arg(long, default_value_t = 6)]
        max_attempts: u32,
        /// Delete and recreate a product that differs, instead of changing it in place (and
        /// adding its missing images).
        #[arg(long)]
        replace: bool,
        /// The error report (CSV: row, product_id, code, message); default `<FILE>.errors.csv`.
        #[arg(long)]
        errors: Option<PathBuf>,
        /// auto (bars on a terminal, else a line every 5 s), plain or none.
        #[arg(long, value_parser = parse_progress, default_value = "auto")]
        progress: snapshop::import::Progress,
    },
}

#[derive(Subcommand)]
enum KeysAction {
    /// Create a key and print its token on stdout (the only time it is shown).
    ///
    /// `--admin`; or `--merchant M` (a merchant key); or `--search` with any number of
    /// `--merchant M` (a search key limited to them; none: every merchant).
    Create {
        /// An admin key.
        #[arg(long, conflicts_with = "search")]
        admin: bool,
        /// A search (publishable) key.
        #[arg(long)]
        search: bool,
        /// The merchant of a merchant key, or the merchants a search key may search.
        #[arg(long = "merchant", conflicts_with = "admin")]
        merchants: Vec<String>,
        /// Browser origins a search key may be used from (repeat for several).
        #[arg(long = "origin", requires = "search")]
        origins: Vec<String>,
        #[arg(long, default_value = "")]
        label: String,
        /// Days until the key expires (default: never).
        #[arg(long)]
        expires_in_days: Option<u64>,
        #[command(flatten)]
        overrides: Overrides,
    },
    /// List keys (prefix, kind, label, merchant, state); never their tokens.
    List {
        /// Revoked and expired keys too.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Revoke a key by id, effective at once.
    Revoke {
        id: i64,
        #[command(flatten)]
        overrides: Overrides,
    },
}

impl KeysAction {
    fn overrides(&self) -> &Overrides {
        match self {
            KeysAction::Create { overrides, .. }
            | KeysAction::List { overrides, .. }
            | KeysAction::Revoke { overrides, .. } => overrides,
        }
    }
}

/// `snapshop keys ...`.
async fn keys(config: &Config, action: KeysAction) -> anyhow::Result<()> {
    use snapshop::auth::{mint, now_ms, KeySpec};
    use snapshop_store::{KeyKind, KeyQuery};

    let url = config.database_url();
    std::fs::create_dir_all(&config.data_dir)?;
    let store = snapshop_store::open(&url).await?;
    match action {
        KeysAction::Create {
            admin,
            search,
            merchants,
            origins,
            label,
            expires_in_days,
            ..
        } => {
            for m in &merchants {
                snapshop::ids::Merchant::parse(m)
                    .map_err(|e| anyhow::anyhow!("--merchant {m}: {e}"))?;
            }
            let (kind, merchant, scope) = match (admin, search, merchants.as_slice()) {
                (true, _, _) => (KeyKind::Admin, None, None),
                (_, true, []) => (KeyKind::Search, None, None),
                (_, true, [one]) => (KeyKind::Search, Some(one.clone()), Some(merchants.clone())),
                (_, true, _) => (KeyKind::Search, None, Some(merchants.clone())),
                (false, false, [one]) => (KeyKind::Merchant, Some(one.clone()), None),
                (false, false, _) => anyhow::bail!(
                    "say which key: --admin, --merchant M (one), or --search [--merchant M]..."
                ),
            };
            let spec = KeySpec {
                kind,
                label,
                merchant,
                merchants: scope,
                origins,
                rate_limits: None,
                expires_at: expires_in_days.map(|d| now_ms() + (d as i64) * 86_400_000),
            };
            let (record, token) = mint(store.as_ref(), spec).await?;
            eprintln!(
                "created {} key {} ({}…); store it now, it is not shown again:",
                record.kind.as_str(),
                record.id,
                record.prefix
            );
            println!("{token}");
        }
        KeysAction::List { all, .. } => {
            let query = KeyQuery {
                include_inactive: all,
                ..KeyQuery::default()
            };
            let now = now_ms();
            println!(
                "{:>5}  {:<8}  {:<18}  {:<8}  {:<20}  label",
                "id", "kind", "prefix", "state", "merchant"
            );
            for k in store.access().list_keys(query, now).await? {
                let state = if k.revoked_at.is_some() {
                    "revoked"
                } else if !k.is_active(now) {
                    "expired"
                } else {
                    "active"
                };
                let scope = match (&k.merchant, &k.merchants) {
                    (_, Some(ms)) if ms.len() > 1 => ms.join(","),
                    (Some(m), _) => m.clone(),
                    (None, _) => "*".into(),
                };
                println!(
                    "{:>5}  {:<8}  {:<18}  {:<8}  {:<20}  {}",
                    k.id,
                    k.kind.as_str(),
                    format!("{}…", k.prefix),
                    state,
                    scope,
                    k.label
                );
            }
        }
        KeysAction::Revoke { id, .. } => {
            let k = store.access().revoke_key(id, now_ms()).await?;
            eprintln!("revoked {} key {} ({}…)", k.kind.as_str(), k.id, k.prefix);
        }
    }
    store.close().await;
    Ok(())
}

fn parse_format(s: &str) -> Result<snapshop::import::input::Format, String> {
    snapshop::import::input::Format::parse(s).ok_or_else(|| "expected csv, jsonl or gcp".into())
}

fn parse_progress(s: &str) -> Result<snapshop::import::Progress, String> {
    use snapshop::import::Progress;
    match s {
        "auto" => Ok(Progress::Auto),
        "plain" => Ok(Progress::Plain),
        "none" => Ok(Progress::Off),
        _ => Err("expected auto, plain or none".into()),
    }
}

/// `snapshop import`: a client of the HTTP API, so no server configuration is loaded.
fn import(command: Command) -> ExitCode {
    let Command::Import {
        file,
        url,
        merchant,
        key,
        format,
        concurrency,
        max_attempts,
        replace,
        errors,
        progress,
    } = command
    else {
        unreachable!("called for `import` only");
    };
    let mut opts = snapshop::import::ImportOptions::new(file, &url, &merchant, &key);
    opts.format = format;
    opts.concurrency = concurrency;
    opts.max_attempts = max_attempts;
    opts.replace = replace;
    opts.errors_file = errors;
    opts.progress = progress;
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("snapshop: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(snapshop::import::run(opts)) {
        Ok(summary) => {
            println!("{}", summary.line());
            if summary.errors > 0 {
                eprintln!(
                    "import: {} errors, listed in {}",
                    summary.errors,
                    summary.errors_file.display()
                );
            }
            ExitCode::from(summary.exit_code())
        }
        Err(e) => {
            eprintln!("snapshop import: {e}");
            ExitCode::from(2)
        }
    }
}

fn parse_unit(s: &str) -> Result<Grouping, String> {
    match s {
        "image" => Ok(Grouping::Image),
        "product" => Ok(Grouping::Product),
        _ => Err("expected `image` or `product`".into()),
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SNAPSHOP_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn,ort=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn write_report(path: &std::path::Path, report: &impl serde::Serialize) -> anyhow::Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(report)?)?;
    println!("report written to {}", path.display());
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let overrides = match &cli.command {
        // A client of the API: it needs no server configuration.
        Command::Import { .. } => return import(cli.command),
        Command::Serve { overrides }
        | Command::Eval { overrides, .. }
        | Command::Bench { overrides, .. } => overrides,
        Command::Keys { action } => action.overrides(),
    };
    let config = match Config::load(cli.config.as_deref(), std::env::vars(), overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("snapshop: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(config.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("snapshop: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve { .. } => {
                let app = snapshop::Application::build(config).await?;
                app.run_until(snapshop::app::shutdown_signal()).await
            }
            Command::Keys { action, .. } => keys(&config, action).await,
            Command::Import { .. } => unreachable!("run before the configuration is loaded"),
            Command::Eval {
                data,
                k,
                unit,
                concurrency,
                report,
                ..
            } => {
                let opts = snapshop::eval::EvalOptions {
                    manifest: data.manifest,
                    split: data.split,
                    limit_products: data.limit_products,
                    ks: k,
                    candidates: data.candidates,
                    unit,
                    concurrency,
                };
                let r = snapshop::eval::run_in_temp_dir(config, Backend::Ort, &opts).await?;
                print!("{}", snapshop::eval::table(&r));
                write_report(&report.output, &r)
            }
            Command::Bench {
                data,
                image,
                iterations,
                recall_queries,
                catalogue,
                checkpoints,
                queries,
                noise,
                merchants,
                write_concurrency,
                seed,
                report,
                ..
            } => {
                let opts = snapshop::bench::BenchOptions {
                    manifest: data.manifest,
                    split: data.split,
                    limit_products: data.limit_products,
                    image,
                    iterations,
                    recall_queries,
                    candidates: data.candidates,
                };
                if let Some(images) = catalogue {
                    let cat = snapshop::bench::catalogue::CatalogueOptions {
                        images,
                        checkpoints,
                        queries,
                        noise,
                        merchants,
                        write_concurrency,
                        seed,
                    };
                    let command = std::env::args().collect::<Vec<_>>().join(" ");
                    let r = snapshop::bench::catalogue::run_in_temp_dir(
                        config,
                        Backend::Ort,
                        &opts,
                        &cat,
                        command,
                    )
                    .await?;
                    print!("{}", snapshop::bench::catalogue::table(&r));
                    return write_report(&report.output, &r);
                }
                let r = snapshop::bench::run_in_temp_dir(config, Backend::Ort, &opts).await?;
                print!("{}", snapshop::bench::table(&r));
                write_report(&report.output, &r)
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("snapshop: {e:#}");
            ExitCode::FAILURE
        }
    }
}
