use clap::{Parser, Subcommand};
use harvester::client::Client;
use harvester::commands::{self, live};
use harvester::{build, dev, nodelet, oci};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// Harvester: sandboxed, signed plugins on a fleet of small boards.
#[derive(Debug, Parser)]
#[command(name = "harvester", version, about)]
struct Cli {
    /// The controller's URL (default: the client configuration's, else
    /// https://127.0.0.1:7000).
    #[arg(long, global = true, env = "HARVESTER_SERVER")]
    server: Option<String>,
    /// The client configuration: server, CA and credential (default:
    /// ~/.config/harvester/config.yaml; a hub writes one for its admin
    /// as DATA/admin.yaml).
    #[arg(long, global = true, env = "HARVESTER_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// The context of the client configuration to use (default: its
    /// current one); for login, the name of the context to write.
    #[arg(long, global = true, env = "HARVESTER_CONTEXT", value_name = "NAME")]
    context: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the controller (the hub): API, store, reconciler.
    Controller {
        /// Where the store lives.
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7000")]
        listen: SocketAddr,
        /// A node without a heartbeat for this long is NotReady.
        #[arg(long, value_name = "DURATION", default_value = "15s")]
        node_timeout: harvester_api::DurationSpec,
        /// Reach this registry over plain HTTP when resolving tags
        /// (loopback registries always are).
        #[arg(long, value_name = "HOST[:PORT]")]
        insecure_registry: Vec<String>,
        /// Serve the dashboard here.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:3000")]
        dashboard: SocketAddr,
        /// Serve no dashboard.
        #[arg(long, conflicts_with = "dashboard")]
        no_dashboard: bool,
        /// The IANA time zone the dashboard shows times in (default: TZ,
        /// else this machine's zone).
        #[arg(long, value_name = "ZONE")]
        timezone: Option<String>,
        /// Memory for the nodes' recent log lines, all together (each node
        /// keeps up to 2,000 lines within its share).
        #[arg(long, value_name = "SIZE", default_value = "64Mi")]
        log_memory: harvester_api::MemorySize,
        /// The key the hub signs the code it compiles for nodes with (made
        /// on first start; its public half is written beside it as .pub,
        /// for the nodes' --trust-compiler). Default: DATA/compiler.key.
        #[arg(long, value_name = "FILE")]
        compile_key: Option<PathBuf>,
        /// Compile nothing for nodes: each node compiles for itself.
        #[arg(long, conflicts_with = "compile_key")]
        no_compile: bool,
        /// Another name or address the hub is reached by, for its
        /// certificate (repeat for several; localhost, 127.0.0.1, ::1,
        /// the host name and the listen address are always in it).
        #[arg(long, value_name = "NAME")]
        tls_san: Vec<String>,
        /// Serve this certificate chain (PEM, ending with the CA that
        /// issued it) instead of one from the hub CA.
        #[arg(long, value_name = "FILE", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The key of --tls-cert.
        #[arg(long, value_name = "FILE", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// How long a node certificate lives (nodes renew at two thirds).
        #[arg(long, value_name = "DURATION", default_value = "24h")]
        node_cert_ttl: harvester_api::DurationSpec,
        /// Plain HTTP and no identities at all: anyone who reaches the hub
        /// is its admin. Refused unless every listener is on loopback.
        #[arg(long, conflicts_with_all = ["tls_cert", "tls_san"])]
        insecure_plain_http: bool,
    },
    /// Join tokens, for boards to enrol with.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Nodes' identities.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// People: users with a role (viewer, operator, admin) and a token.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Log in to a hub with a user's token: writes a context (server, the
    /// hub's CA, the credential) into the client configuration.
    Login {
        /// https://HOST:PORT
        server: String,
        /// The token, as user create printed it (a file, or - for stdin).
        #[arg(long, value_name = "FILE")]
        token_file: PathBuf,
    },
    /// Forget a context's credential (the current one, or --context).
    Logout,
    /// The client configuration's contexts.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Who changed what, when, from where, with what outcome (admins).
    Audit {
        /// How far back.
        #[arg(long, value_name = "DURATION", default_value = "24h")]
        since: harvester_api::DurationSpec,
        /// Only this user's writes.
        #[arg(long)]
        user: Option<String>,
    },
    /// The user and role the current credential is.
    Whoami,
    /// Show log lines of a node or a plugin, as the hub received them.
    Logs {
        /// node/NAME or plugin/NAME.
        target: String,
        /// Keep printing new lines.
        #[arg(short, long)]
        follow: bool,
        /// How many recent lines to show first.
        #[arg(long, default_value_t = 100)]
        tail: usize,
        /// Show times in this IANA time zone (America/New_York, UTC...);
        /// default: the hub's (its --timezone, as the dashboard shows).
        #[arg(long, value_name = "ZONE")]
        timezone: Option<String>,
    },
    /// Run a plugin command on the nodes running it, through the hub:
    /// exec plugin/buzzer triple.
    Exec {
        /// plugin/NAME
        target: String,
        command: String,
        /// KEY=VALUE arguments.
        args: Vec<String>,
        /// Only on this node.
        #[arg(long)]
        node: Option<String>,
    },
    /// Build, push, sign and roll out a plugin folder, again on every save.
    Dev {
        /// The plugin folder (as for plugin build).
        dir: PathBuf,
        /// The Plugin to roll out (default: the folder's name).
        #[arg(long)]
        plugin: Option<String>,
        /// Push to this repository, host/repository (default: the Plugin's).
        #[arg(long, value_name = "REPOSITORY")]
        image: Option<String>,
        /// Sign each build with this private key (COSIGN_PASSWORD or a prompt, once).
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
        #[arg(long, value_name = "HOST[:PORT]")]
        insecure_registry: Vec<String>,
        /// Roll out once and exit instead of watching.
        #[arg(long)]
        once: bool,
        /// How long to wait for each rollout.
        #[arg(long, default_value = "180s")]
        timeout: harvester_api::DurationSpec,
    },
    /// Run the node agent.
    Nodelet(Box<nodelet::NodeletArgs>),
    /// Create or update objects from manifests.
    #[command(
        after_help = "Examples:\n  harvester apply -f manifests/fleet/\n  harvester apply -f dht22.yaml --dry-run=server\n  cat dht22.yaml | harvester apply -f -"
    )]
    Apply {
        /// A file, a directory of .yaml files, or - for stdin.
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// server: the hub validates, resolves and admits everything and stores nothing.
        #[arg(long, value_name = "server", value_parser = ["server"])]
        dry_run: Option<String>,
    },
    /// List or show objects.
    #[command(
        after_help = "Examples:\n  harvester get plugins -o wide\n  harvester get plugin/dht22 -o yaml\n  harvester get no -l role=sensor --show-labels\n  harvester get all -o name\n  harvester get plugins -w\n  harvester get plugins -o jsonpath='{range .items[*]}{.metadata.name}{\"\\n\"}{end}'\n  harvester get nodes -o custom-columns=NAME:.metadata.name,ARCH:.status.architecture --sort-by=.metadata.name"
    )]
    Get {
        /// plugins (pl), nodes (no) or all; or TYPE/NAME.
        #[arg(value_name = "TYPE")]
        kind: String,
        /// One object of that type.
        name: Option<String>,
        /// wide, yaml, json, name (TYPE/NAME per line), jsonpath=TEMPLATE
        /// or custom-columns=HEADER:.json.path,...; a table without it.
        #[arg(short, long, value_name = "FORMAT")]
        output: Option<String>,
        /// Only objects with these labels: a=b, a!=b, a in (b,c), a notin (b), a, !a; joined with commas.
        #[arg(short = 'l', long)]
        selector: Option<String>,
        /// Add every object's labels to the table.
        #[arg(long)]
        show_labels: bool,
        /// Order the list by the value at this JSONPath (.metadata.name, {.metadata.generation}).
        #[arg(long, value_name = "JSONPATH")]
        sort_by: Option<String>,
        /// After the list, print every change as it happens (resuming after a dropped connection).
        #[arg(short, long)]
        watch: bool,
    },
    /// Show one object in detail, with its conditions and events.
    #[command(after_help = "Examples:\n  harvester describe plugin dht22\n  harvester describe node/pi4")]
    Describe {
        /// plugin (pl) or node (no); or TYPE/NAME.
        #[arg(value_name = "TYPE")]
        kind: String,
        /// The object's name.
        name: Option<String>,
    },
    /// Delete objects by name or by manifest.
    #[command(
        after_help = "Examples:\n  harvester delete plugin dht22\n  harvester delete plugin/dht22\n  harvester delete -f manifests/fleet/dht22.yaml"
    )]
    Delete {
        /// plugin (pl) or node (no); or TYPE/NAME.
        #[arg(value_name = "TYPE")]
        kind: Option<String>,
        /// The object's name.
        name: Option<String>,
        /// Delete what this manifest (a file, a directory or - for stdin) holds.
        #[arg(short = 'f', long = "filename")]
        file: Option<PathBuf>,
    },
    /// What apply would change, as a unified diff; exit code 1 when it would
    /// change something, 0 when not, 2 on an error.
    #[command(
        after_help = "Examples:\n  harvester diff -f manifests/fleet/\n  harvester diff -f dht22.yaml && echo nothing to apply"
    )]
    Diff {
        /// A file, a directory of .yaml files, or - for stdin.
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
    },
    /// This client's version, the hub's, and the engine hash compiled code depends on.
    Version {
        /// Only this client's: ask no hub.
        #[arg(long)]
        client: bool,
    },
    /// A shell completion script: source it from your shell's startup file.
    #[command(
        after_help = "Examples:\n  harvester completion bash > ~/.local/share/bash-completion/completions/harvester\n  harvester completion zsh > \"${fpath[1]}/_harvester\"\n  harvester completion fish > ~/.config/fish/completions/harvester.fish"
    )]
    Completion {
        /// bash, zsh or fish.
        #[arg(value_enum)]
        shell: CompletionShell,
    },
    /// Follow, steer and undo a plugin's rollouts.
    Rollout {
        #[command(subcommand)]
        command: RolloutCommand,
    },
    /// Create a cosign-compatible key pair: PREFIX.key (encrypted with
    /// COSIGN_PASSWORD or a prompted password) and PREFIX.pub.
    Keygen {
        #[arg(long, value_name = "PREFIX", default_value = "cosign")]
        output_key_prefix: PathBuf,
    },
    /// Push a component to an OCI registry as a wasm artifact, and sign it.
    Push {
        /// The component (.wasm).
        file: PathBuf,
        /// Where: host/repository:tag.
        target: String,
        /// Sign the pushed digest with this private key.
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
        /// Reach this registry over plain HTTP (loopback registries always are).
        #[arg(long, value_name = "HOST[:PORT]")]
        insecure_registry: Vec<String>,
    },
    /// Sign an image already in a registry (adds to its signatures).
    Sign {
        /// host/repository:tag or host/repository@sha256:...
        target: String,
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        #[arg(long, value_name = "HOST[:PORT]")]
        insecure_registry: Vec<String>,
    },
    /// Check an image is signed, for its repository, by one of the keys.
    Verify {
        target: String,
        /// A public key to trust (repeat for several).
        #[arg(long = "key", value_name = "FILE", required = true)]
        keys: Vec<PathBuf>,
        #[arg(long, value_name = "HOST[:PORT]")]
        insecure_registry: Vec<String>,
    },
    /// Download an image's component after verifying its signature.
    Pull {
        target: String,
        /// A public key to trust (repeat for several).
        #[arg(long = "key", value_name = "FILE", required = true)]
        keys: Vec<PathBuf>,
        /// Where to write the component.
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
        #[arg(long, value_name = "HOST[:PORT]")]
        insecure_registry: Vec<String>,
    },
    /// Work with plugin sources.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Make a join token; it is printed once (the hub keeps its hash).
    Create {
        /// How long it stays valid (at most 30 days).
        #[arg(long, value_name = "DURATION", default_value = "1h")]
        ttl: harvester_api::DurationSpec,
        /// How many boards may enrol with it.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// What it is for, shown by token list.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List join tokens (never their secrets).
    List,
    /// Delete a join token by its ID.
    Delete { id: String },
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Make a user; its token is printed once (the hub keeps its hash).
    Create {
        name: String,
        #[arg(long, value_parser = parse_role)]
        role: harvester_api::identity::Role,
    },
    /// List users and their roles.
    List,
    /// Delete a user: its token, dashboard sessions and open watches end at once.
    Delete { name: String },
}

fn parse_role(s: &str) -> Result<harvester_api::identity::Role, String> {
    s.parse()
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Make a context the current one.
    UseContext { name: String },
    /// List the contexts; * marks the current one.
    GetContexts,
}

#[derive(Debug, Subcommand)]
enum NodeCommand {
    /// End a node's access at once: its certificates stop working and its
    /// open connections close. The board keeps running its plugins.
    Revoke { name: String },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Debug, Subcommand)]
enum RolloutCommand {
    /// Wait until every selected node runs the plugin's newest revision
    /// (fails when it was rolled back or fails where it runs).
    Status {
        /// plugin/NAME
        target: String,
        /// How long to wait.
        #[arg(long, default_value = "60s")]
        timeout: harvester_api::DurationSpec,
    },
    /// The plugin's revisions: number, digest, what changed, who, when, outcome.
    History {
        /// plugin/NAME
        target: String,
    },
    /// Run an earlier revision again (the one before the newest, or --to-revision).
    Undo {
        /// plugin/NAME
        target: String,
        /// The revision to go back to (see rollout history).
        #[arg(long, value_name = "N")]
        to_revision: Option<u64>,
    },
    /// Stop a rollout where it stands: no further node gets the new revision.
    Pause {
        /// plugin/NAME
        target: String,
    },
    /// Go on with a paused rollout.
    Resume {
        /// plugin/NAME
        target: String,
    },
    /// End the pause step a canary waits at.
    Promote {
        /// plugin/NAME
        target: String,
    },
    /// Stop a rollout and send every updated node back to the stable revision.
    Abort {
        /// plugin/NAME
        target: String,
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
        /// Keep builds in this folder, keyed by a hash of the sources, and
        /// reuse one when the sources are the same.
        #[arg(long)]
        cache: Option<PathBuf>,
    },
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HARVESTER_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            "info,wasmtime=warn,cranelift=warn,bme680=warn,oci_client=warn,sigstore=error",
        )
    });
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        // A nodelet following a controller also sends its lines to the hub.
        .with(harvester_nodelet::uplink::LogTap)
        .init();
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let client = || Client::new(cli.server.as_deref(), cli.config.as_deref(), cli.context.as_deref());
    match cli.command {
        Command::Plugin {
            command: PluginCommand::Build { dir, output, cache },
        } => {
            if let Some(cache) = cache {
                let (out, reused) = build::build_from_cache(&dir, output.as_deref(), &cache)?;
                let how = if reused { "reused the build in" } else { "built into" };
                println!("{} ({how} {})", out.display(), cache.display());
                return Ok(());
            }
            let b = build::build(&dir, output.as_deref())?;
            println!(
                "built {} ({} plugin, world {}, {:.1} MB) in {:.1}s",
                b.output.display(),
                b.kind,
                b.world,
                b.size as f64 / 1e6,
                b.took.as_secs_f64()
            );
            Ok(())
        }
        Command::Nodelet(args) => nodelet::run(*args).await,
        Command::Keygen { output_key_prefix } => oci::keygen(&output_key_prefix),
        Command::Push {
            file,
            target,
            key,
            insecure_registry,
        } => oci::push(&file, &target, key.as_deref(), &insecure_registry).await,
        Command::Sign {
            target,
            key,
            insecure_registry,
        } => oci::sign(&target, &key, &insecure_registry).await,
        Command::Pull {
            target,
            keys,
            output,
            insecure_registry,
        } => oci::pull(&target, &keys, &output, &insecure_registry).await,
        Command::Verify {
            target,
            keys,
            insecure_registry,
        } => oci::verify(&target, &keys, &insecure_registry).await,
        Command::Controller {
            data,
            listen,
            node_timeout,
            insecure_registry,
            dashboard,
            no_dashboard,
            timezone,
            log_memory,
            compile_key,
            no_compile,
            tls_san,
            tls_cert,
            tls_key,
            node_cert_ttl,
            insecure_plain_http,
        } => {
            let transport = if insecure_plain_http {
                harvester_controller::Transport::PlainLoopback
            } else {
                harvester_controller::Transport::Tls {
                    names: tls_san,
                    files: tls_cert.zip(tls_key),
                }
            };
            let timezone = match timezone {
                Some(t) => {
                    live::Zone::parse(Some(&t))?;
                    t
                }
                None => live::system_zone(),
            };
            harvester_controller::run(
                harvester_controller::ControllerOptions {
                    listen,
                    node_timeout: node_timeout.as_duration(),
                    resync: std::time::Duration::from_secs(2),
                    registry: oci::registry(&insecure_registry)?.options().clone(),
                    dashboard: (!no_dashboard).then_some(dashboard),
                    timezone,
                    log_memory: log_memory.bytes() as usize,
                    compile_key: (!no_compile).then(|| compile_key.unwrap_or_else(|| data.join("compiler.key"))),
                    compile_program: std::env::current_exe()?,
                    data,
                    transport,
                    node_cert_lifetime: node_cert_ttl.as_duration(),
                },
                nodelet::shutdown_signal(),
            )
            .await
        }
        Command::Logs {
            target,
            follow,
            tail,
            timezone,
        } => {
            let client = client()?;
            // The hub's zone by default, as its dashboard shows times.
            let zone = match timezone {
                Some(t) => t,
                None => client.info().await?.timezone,
            };
            live::logs(&client, &target, follow, tail, live::Zone::parse(Some(&zone))?).await
        }
        Command::Exec {
            target,
            command,
            args,
            node,
        } => live::exec(&client()?, &target, &command, &args, node.as_deref()).await,
        Command::Dev {
            dir,
            plugin,
            image,
            key,
            insecure_registry,
            once,
            timeout,
        } => {
            dev::run(
                &client()?,
                dev::DevOptions {
                    dir,
                    plugin,
                    image,
                    key,
                    insecure_registry,
                    once,
                    timeout: timeout.as_duration(),
                },
            )
            .await
        }
        Command::Apply { file, dry_run } => commands::apply(&client()?, &file, dry_run.is_some()).await,
        Command::Get {
            kind,
            name,
            output,
            selector,
            show_labels,
            sort_by,
            watch,
        } => {
            let out = commands::get::Output {
                format: output.as_deref().unwrap_or(""),
                show_labels,
                sort_by: sort_by.as_deref(),
                watch,
            };
            commands::get(&client()?, &kind, name.as_deref(), &out, selector.as_deref()).await
        }
        Command::Describe { kind, name } => commands::describe(&client()?, &kind, name.as_deref()).await,
        Command::Diff { file } => match commands::diff::diff(&client()?, &file).await {
            Ok(true) => Err(Exit(1, None).into()),
            Ok(false) => Ok(()),
            Err(e) => Err(Exit(2, Some(e)).into()),
        },
        Command::Version { client: only_client } => {
            let hub = if only_client { None } else { Some(client()?) };
            commands::version(hub.as_ref()).await
        }
        Command::Completion { shell } => {
            use clap::CommandFactory;
            let shell = match shell {
                CompletionShell::Bash => clap_complete::Shell::Bash,
                CompletionShell::Zsh => clap_complete::Shell::Zsh,
                CompletionShell::Fish => clap_complete::Shell::Fish,
            };
            clap_complete::generate(shell, &mut Cli::command(), "harvester", &mut std::io::stdout());
            Ok(())
        }
        Command::Delete { kind, name, file } => {
            commands::delete(&client()?, kind.as_deref(), name.as_deref(), file.as_deref()).await
        }
        Command::Token { command } => match command {
            TokenCommand::Create { ttl, uses, description } => {
                commands::identity::token_create(&client()?, ttl.as_duration(), uses, &description).await
            }
            TokenCommand::List => commands::identity::token_list(&client()?).await,
            TokenCommand::Delete { id } => commands::identity::token_delete(&client()?, &id).await,
        },
        Command::Node {
            command: NodeCommand::Revoke { name },
        } => commands::identity::node_revoke(&client()?, &name).await,
        Command::User { command } => match command {
            UserCommand::Create { name, role } => commands::identity::user_create(&client()?, &name, role).await,
            UserCommand::List => commands::identity::user_list(&client()?).await,
            UserCommand::Delete { name } => commands::identity::user_delete(&client()?, &name).await,
        },
        Command::Login { server, token_file } => {
            commands::identity::login(&server, &token_file, cli.context.as_deref(), cli.config.as_deref()).await
        }
        Command::Logout => commands::identity::logout(cli.context.as_deref(), cli.config.as_deref()),
        Command::Config { command } => match command {
            ConfigCommand::UseContext { name } => commands::identity::use_context(&name, cli.config.as_deref()),
            ConfigCommand::GetContexts => commands::identity::get_contexts(cli.config.as_deref()),
        },
        Command::Audit { since, user } => {
            commands::identity::audit(&client()?, since.as_duration(), user.as_deref()).await
        }
        Command::Whoami => commands::identity::whoami(&client()?).await,
        Command::Rollout { command } => {
            let client = client()?;
            match command {
                RolloutCommand::Status { target, timeout } => {
                    commands::rollout_status(&client, &target, timeout.as_duration()).await
                }
                RolloutCommand::History { target } => commands::rollout::history(&client, &target).await,
                RolloutCommand::Undo { target, to_revision } => {
                    commands::rollout::undo(&client, &target, to_revision).await
                }
                RolloutCommand::Pause { target } => commands::rollout::decide(&client, &target, "pause").await,
                RolloutCommand::Resume { target } => commands::rollout::decide(&client, &target, "resume").await,
                RolloutCommand::Promote { target } => commands::rollout::decide(&client, &target, "promote").await,
                RolloutCommand::Abort { target } => commands::rollout::decide(&client, &target, "abort").await,
            }
        }
    }
}

fn main() -> ExitCode {
    // The hub runs each compile as its own child process (not a command
    // people type, so not in --help).
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == harvester_controller::compile::job::SUBCOMMAND)
    {
        return harvester_controller::compile::job::child_main();
    }
    harvester_pki::install_provider();
    let cli = Cli::parse();
    init_logging();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(run(cli)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => match e.downcast::<Exit>() {
            Ok(Exit(code, error)) => {
                if let Some(e) = error {
                    eprintln!("error: {e:#}");
                }
                ExitCode::from(code)
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

/// A command's own exit code (as `diff`'s 1 for "something would change"),
/// with the error to print, if any.
#[derive(Debug)]
struct Exit(u8, Option<anyhow::Error>);

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.1 {
            Some(e) => write!(f, "{e:#}"),
            None => write!(f, "exit code {}", self.0),
        }
    }
}

impl std::error::Error for Exit {}
