use clap::{Parser, Subcommand};
use harvester::{build, nodelet};
use std::path::PathBuf;
use std::process::ExitCode;

/// Harvester: sandboxed, signed plugins on a fleet of small boards.
#[derive(Debug, Parser)]
#[command(name = "harvester", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the node agent.
    Nodelet(nodelet::NodeletArgs),
    /// Work with plugin sources.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
}

#[derive(Debug, Subcommand)]
enum PluginCommand {
    /// Build a plugin folder (Python or Rust) into a WebAssembly component.
    Build {
        /// The plugin folder (with app.py or Cargo.toml, and wit/).
        dir: PathBuf,
        /// Where to write the component (default DIR/NAME.wasm).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HARVESTER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,wasmtime=warn,cranelift=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command {
        Command::Plugin {
            command: PluginCommand::Build { dir, output },
        } => build::build(&dir, output.as_deref()).map(|b| {
            println!(
                "built {} ({} plugin, world {}, {:.1} MB) in {:.1}s",
                b.output.display(),
                b.kind,
                b.world,
                b.size as f64 / 1e6,
                b.took.as_secs_f64()
            );
        }),
        Command::Nodelet(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(nodelet::run(args))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
