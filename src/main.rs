//! The `snapshop` command line: `serve`, `eval` and `bench`. Thin: parsing and logging only.

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
        #[command(flatten)]
        report: Report<false>,
    },
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
        Command::Serve { overrides }
        | Command::Eval { overrides, .. }
        | Command::Bench { overrides, .. } => overrides,
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
