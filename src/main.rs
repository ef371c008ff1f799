//! The `coregate` command line: `serve`, `check`, `doctor`, `load`, `mock-provider`.

use clap::{Parser, Subcommand};
use coregate_gateway::config::Config;
use std::path::PathBuf;
use std::process::ExitCode;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "coregate",
    version,
    about = "Thread-per-core HTTP/1.1 gateway for voice-AI providers"
)]
struct Cli {
    /// Log level: error, warn, info or debug (default: $COREGATE_LOG, else info).
    #[arg(long, global = true)]
    log_level: Option<String>,
    /// Log lines as JSON objects (default: text, or $COREGATE_LOG_FORMAT=json).
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (with no config: the embedded default, gateway + mock provider).
    Serve {
        /// TOML config file (every key has a default).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Cores to run one shard on each, e.g. `0-3,6` (default: all online cores).
        #[arg(long)]
        cores: Option<String>,
        /// Data-plane address (default 0.0.0.0:8080).
        #[arg(long)]
        listen: Option<String>,
        /// Admin address for /stats and /metrics (default 127.0.0.1:9901; "" disables).
        #[arg(long)]
        admin: Option<String>,
        /// Shortcut: one provider at ADDR, every path except / and /health routed to it.
        #[arg(long)]
        upstream: Option<String>,
        /// Binary upgrade: start beside the coregate serving the same addresses and, once
        /// serving, have it drain (docs/operations.md, "Upgrade").
        #[arg(long)]
        takeover: bool,
    },
    /// Validate a config file and print the effective config.
    Check { file: PathBuf },
    /// Check this host against what the config needs (exit 0 ok, 1 warnings, 2 failures).
    Doctor {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Generate load: closed or open loop, scale and breaking-point profiles (docs/load.md).
    Load(Box<coregate_load::LoadArgs>),
    /// Run the mock voice-AI provider (see docs/mock-provider.md).
    MockProvider {
        #[arg(long, default_value = "127.0.0.1:9902")]
        listen: String,
        /// Cores, e.g. `0-1` (default: all online cores).
        #[arg(long, default_value = "all")]
        cores: String,
        /// Serve every endpoint over TLS with this PEM certificate chain (needs --tls-key).
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The PEM private key of --tls-cert.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
    },
}

fn load(path: Option<&PathBuf>) -> Result<Config, String> {
    match path {
        Some(p) => Config::load(p).map_err(|e| e.to_string()),
        None => Ok(Config::default()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = coregate_runtime::log::init(cli.log_level.as_deref(), cli.log_json) {
        eprintln!("coregate: --log-level / COREGATE_LOG: {e}");
        return ExitCode::from(2);
    }
    let result = match cli.command {
        Command::Serve {
            config,
            cores,
            listen,
            admin,
            upstream,
            takeover,
        } => coregate_gateway::server::serve(
            coregate_gateway::reload::ConfigSource {
                path: config,
                cores,
                listen,
                admin,
                upstream,
            },
            takeover,
        ),
        Command::Check { file } => Config::load(&file)
            .map(|c| print!("{}", c.to_toml()))
            .map_err(|e| e.to_string()),
        Command::Doctor { config } => {
            return match load(config.as_ref()) {
                Ok(cfg) => ExitCode::from(coregate_gateway::doctor::report(&cfg) as u8),
                Err(e) => {
                    eprintln!("coregate: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Load(args) => coregate_load::run(*args),
        Command::MockProvider {
            listen,
            cores,
            tls_cert,
            tls_key,
        } => {
            let tls = tls_cert
                .zip(tls_key)
                .map(|(cert, key)| coregate_mock::TlsFiles { cert, key });
            coregate_runtime::cores::parse_core_list(
                &cores,
                &coregate_runtime::cores::online_cores(),
            )
            .map_err(|e| format!("--cores: {e}"))
            .and_then(|c| coregate_mock::run(&listen, &c, tls))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            coregate_runtime::log::error(&e);
            ExitCode::FAILURE
        }
    }
}
