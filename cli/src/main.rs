use clap::Parser;
use harvester::args::*;
use harvester::client::Client;
use harvester::commands::{self, live};
use harvester::{build, dev, nodelet, oci};
use std::process::ExitCode;

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
        // A nodelet following a controller also sends its lines to the hub,
        // each node's to its own buffer.
        .with(harvester_nodelet::log_tap::LogTap)
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
            registry_limits,
        } => oci::pull(&target, &keys, &output, &insecure_registry, registry_limits.limits()).await,
        Command::Verify {
            target,
            keys,
            insecure_registry,
            registry_limits,
        } => oci::verify(&target, &keys, &insecure_registry, registry_limits.limits()).await,
        Command::Controller {
            action: Some(action), ..
        } => commands::backup::run(action, client).await,
        Command::Controller {
            action: None,
            data,
            listen,
            node_timeout,
            insecure_registry,
            registry_limits,
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
            max_connections,
            handshake_timeout,
            header_timeout,
            rate_limit,
            rate_burst,
            max_streams,
            max_nodes,
            audit_retention,
            insecure_plain_http,
        } => {
            let data = data.expect("clap requires --data without a subcommand");
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
                    registry: oci::registry(&insecure_registry, registry_limits.limits())?
                        .options()
                        .clone(),
                    dashboard: (!no_dashboard).then_some(dashboard),
                    timezone,
                    log_memory: log_memory.bytes() as usize,
                    compile_key: (!no_compile).then(|| compile_key.unwrap_or_else(|| data.join("compiler.key"))),
                    compile_program: std::env::current_exe()?,
                    data,
                    transport,
                    node_cert_lifetime: node_cert_ttl.as_duration(),
                    audit_retention: audit_retention.as_duration(),
                    connections: harvester_controller::ConnectionLimits {
                        max_connections: max_connections.max(1),
                        handshake_timeout: handshake_timeout.as_duration(),
                        header_timeout: header_timeout.as_duration(),
                    },
                    api_limits: harvester_controller::ApiLimits {
                        requests_per_second: rate_limit,
                        burst: rate_burst,
                        streams_per_identity: max_streams,
                        max_nodes,
                    },
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
        Command::Explain { path, recursive } => commands::explain::explain(&path, recursive),
        Command::Schema => commands::explain::schema(),
        Command::Label { kind, rest, overwrite } => {
            let (name, changes) = match rest.split_first() {
                Some((first, more)) if !first.contains('=') && !first.ends_with('-') => (Some(first.as_str()), more),
                _ => (None, &rest[..]),
            };
            commands::edit::label(&client()?, &kind, name, changes, overwrite).await
        }
        Command::Edit { kind, name } => commands::edit::edit(&client()?, &kind, name.as_deref()).await,
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
            TokenCommand::Create {
                ttl,
                uses,
                description,
                labels,
            } => {
                let labels = labels
                    .map(|l| harvester_api::resources::parse_labels(&l).map_err(|e| anyhow::anyhow!("--labels: {e}")))
                    .transpose()?;
                commands::identity::token_create(&client()?, ttl.as_duration(), uses, &description, labels).await
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
    // The hub's and a board's data (keys, tokens' hashes, plugins'
    // configuration) is for their own user only, whatever creates the file.
    if matches!(cli.command, Command::Nodelet(_) | Command::Controller { .. }) {
        harvester_api::files::owner_only_umask();
    }
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
                    print_error(&e);
                }
                ExitCode::from(code)
            }
            Err(e) => {
                print_error(&e);
                ExitCode::FAILURE
            }
        },
    }
}

/// An error as the user reads it: one line per line it has, none of them
/// able to send the terminal escape sequences (errors quote what nodes,
/// plugins and registries said).
fn print_error(e: &anyhow::Error) {
    let text = format!("{e:#}");
    let lines: Vec<String> = text.lines().map(|l| commands::printable(l).into_owned()).collect();
    eprintln!("error: {}", lines.join("\n"));
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
