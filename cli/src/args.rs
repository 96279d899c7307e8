//! The command line: every command, argument and example `harvester --help`
//! shows, in one place (the binary's `main` dispatches them).

use crate::nodelet;
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Harvester: sandboxed, signed plugins on a fleet of small boards.
#[derive(Debug, Parser)]
#[command(name = "harvester", version, about)]
pub struct Cli {
    /// The controller's URL (default: the client configuration's, else
    /// https://127.0.0.1:7000).
    #[arg(long, global = true, env = "HARVESTER_SERVER")]
    pub server: Option<String>,
    /// The client configuration: server, CA and credential (default:
    /// ~/.config/harvester/config.yaml; a hub writes one for its admin
    /// as DATA/admin.yaml).
    #[arg(long, global = true, env = "HARVESTER_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The context of the client configuration to use (default: its
    /// current one); for login, the name of the context to write.
    #[arg(long, global = true, env = "HARVESTER_CONTEXT", value_name = "NAME")]
    pub context: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
// Parsed once per process: boxing the controller's many flags would only add noise.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Run the controller (the hub): API, store, reconciler; or back it up
    /// and restore it.
    #[command(
        after_help = "Examples:\n  harvester controller --data /var/lib/harvester\n  harvester controller --data ./hub --listen 0.0.0.0:7000 --tls-san hub.local\n  harvester controller --data ./hub --insecure-plain-http   # loopback only, no identities\n  harvester controller backup hub.tar\n  harvester controller restore hub.tar --data ./hub-restored",
        args_conflicts_with_subcommands = true,
        subcommand_negates_reqs = true
    )]
    Controller {
        #[command(subcommand)]
        action: Option<ControllerAction>,
        /// Where the store lives.
        #[arg(long, value_name = "DIR", required = true)]
        data: Option<PathBuf>,
        /// Serve the API here (nodes and people).
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7000")]
        listen: SocketAddr,
        /// A node without a heartbeat for this long is NotReady.
        #[arg(long, value_name = "DURATION", default_value = "15s")]
        node_timeout: harvester_api::DurationSpec,
        /// Reach this registry over plain HTTP when resolving tags
        /// (loopback registries always are).
        #[arg(long, value_name = "HOST[:PORT]")]
        insecure_registry: Vec<String>,
        #[command(flatten)]
        registry_limits: crate::oci::RegistryLimits,
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
        /// How long the audit trail keeps an entry (2160h: 90 days); it also
        /// keeps at most 64 MiB of entries, dropping the oldest first.
        #[arg(long, value_name = "DURATION", default_value = "2160h")]
        audit_retention: harvester_api::DurationSpec,
        /// Connections each listener (API, dashboard) holds at once; more
        /// are closed as they arrive.
        #[arg(long, value_name = "N", default_value_t = 4096)]
        max_connections: usize,
        /// How long a client has to finish its TLS handshake.
        #[arg(long, value_name = "DURATION", default_value = "10s")]
        handshake_timeout: harvester_api::DurationSpec,
        /// How long a client has to send a request's headers, and an idle
        /// kept-alive connection to send its next request.
        #[arg(long, value_name = "DURATION", default_value = "10s")]
        header_timeout: harvester_api::DurationSpec,
        /// Requests per second each user, node, or address without an
        /// identity may make, on average (more get 429 with Retry-After).
        #[arg(long, value_name = "N", default_value_t = 5000.0)]
        rate_limit: f64,
        /// Requests each may make at once after being quiet.
        #[arg(long, value_name = "N", default_value_t = 10000.0)]
        rate_burst: f64,
        /// Streams (watches, log follows, dashboard pages) each user or node
        /// may hold open at once.
        #[arg(long, value_name = "N", default_value_t = 32)]
        max_streams: usize,
        /// Nodes the hub keeps; registering one more is refused.
        #[arg(long, value_name = "N", default_value_t = 10000)]
        max_nodes: usize,
        /// Plain HTTP and no identities at all: anyone who reaches the hub
        /// is its admin. Refused unless every listener is on loopback.
        #[arg(long, conflicts_with_all = ["tls_cert", "tls_san"])]
        insecure_plain_http: bool,
    },
    /// Join tokens, for boards to enrol with.
    #[command(
        after_help = "Examples:\n  harvester token create --ttl 1h --uses 3 --description 'greenhouse boards'\n  harvester token list"
    )]
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Nodes' identities.
    #[command(after_help = "Examples:\n  harvester node revoke pi4")]
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// People: users with a role (viewer, operator, admin) and a token.
    #[command(
        after_help = "Examples:\n  harvester user create alice --role operator > alice.token\n  harvester user list"
    )]
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Log in to a hub with a user's token: writes a context (server, the
    /// hub's CA, the credential) into the client configuration.
    #[command(
        after_help = "Examples:\n  harvester login https://hub.local:7000 --token-file alice.token\n  harvester --context lab login https://10.0.0.2:7000 --token-file -"
    )]
    Login {
        /// https://HOST:PORT
        server: String,
        /// The token, as user create printed it (a file, or - for stdin).
        #[arg(long, value_name = "FILE")]
        token_file: PathBuf,
    },
    /// Forget a context's credential (the current one, or --context).
    #[command(after_help = "Examples:\n  harvester logout\n  harvester --context lab logout")]
    Logout,
    /// The client configuration's contexts.
    #[command(after_help = "Examples:\n  harvester config get-contexts\n  harvester config use-context lab")]
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Who changed what, when, from where, with what outcome (admins).
    #[command(after_help = "Examples:\n  harvester audit\n  harvester audit --since 7d --user alice")]
    Audit {
        /// How far back.
        #[arg(long, value_name = "DURATION", default_value = "24h")]
        since: harvester_api::DurationSpec,
        /// Only this user's writes.
        #[arg(long)]
        user: Option<String>,
    },
    /// The user and role the current credential is.
    #[command(after_help = "Examples:\n  harvester whoami")]
    Whoami,
    /// Show log lines of a node or a plugin, as the hub received them.
    #[command(
        after_help = "Examples:\n  harvester logs plugin/dht22\n  harvester logs node/pi4 -f --tail 20\n  harvester logs plugin/buzzer --timezone UTC"
    )]
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
    #[command(
        after_help = "Examples:\n  harvester exec plugin/buzzer triple\n  harvester exec plugin/buzzer beep pattern=long --node pi4"
    )]
    Exec {
        /// plugin/NAME
        target: String,
        /// The plugin's command (buzzer: short, triple, long...).
        command: String,
        /// KEY=VALUE arguments.
        args: Vec<String>,
        /// Only on this node.
        #[arg(long)]
        node: Option<String>,
    },
    /// Build, push, sign and roll out a plugin folder, again on every save.
    #[command(
        after_help = "Examples:\n  harvester dev plugins/dht22\n  harvester dev plugins/dht22 --image 127.0.0.1:5000/dht22 --key cosign.key --once"
    )]
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
        /// Reach this registry over plain HTTP (loopback registries always are).
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
    #[command(
        after_help = "Examples:\n  harvester nodelet --controller https://hub.local:7000 --join-token-file join.token --name pi4 --labels role=sensor\n  harvester nodelet --standalone plugins.yaml"
    )]
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
    /// What a kind's fields are, from the schema the API reads manifests with.
    #[command(
        after_help = "Examples:\n  harvester explain plugin\n  harvester explain plugin.spec.grants\n  harvester explain plugin.spec.rollout --recursive"
    )]
    Explain {
        /// KIND[.FIELD...]: plugin, plugin.spec.grants.leds, node.status.
        path: String,
        /// Every field below, with its type, without descriptions.
        #[arg(long)]
        recursive: bool,
    },
    /// The JSON Schema of a manifest (a Plugin or a Node), for editors.
    #[command(
        after_help = "Examples:\n  harvester schema > harvester.schema.json\n  # then, first line of a manifest, for the YAML language server:\n  # yaml-language-server: $schema=./harvester.schema.json"
    )]
    Schema,
    /// Add, change or remove labels of an object.
    #[command(
        after_help = "Examples:\n  harvester label node pi4 role=sensor\n  harvester label plugin/dht22 app=climate tier-\n  harvester label no pi4 role=hub --overwrite"
    )]
    Label {
        /// plugin (pl) or node (no); or TYPE/NAME.
        #[arg(value_name = "TYPE")]
        kind: String,
        /// The object's name, then KEY=VALUE to set a label and KEY- to remove one.
        #[arg(value_name = "NAME KEY=VALUE|KEY-", num_args = 1.., required = true)]
        rest: Vec<String>,
        /// Replace a label that already has a value.
        #[arg(long)]
        overwrite: bool,
    },
    /// Edit a stored object in your editor (HARVESTER_EDITOR, EDITOR or vi) and apply it on save.
    #[command(after_help = "Examples:\n  harvester edit plugin dht22\n  HARVESTER_EDITOR=nano harvester edit node/pi4")]
    Edit {
        /// plugin (pl) or node (no); or TYPE/NAME.
        #[arg(value_name = "TYPE")]
        kind: String,
        /// The object's name.
        name: Option<String>,
    },
    /// This client's version, the hub's, and the engine hash compiled code depends on.
    #[command(after_help = "Examples:\n  harvester version\n  harvester version --client")]
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
    #[command(
        after_help = "Examples:\n  harvester rollout status plugin/dht22\n  harvester rollout history plugin/dht22\n  harvester rollout undo plugin/dht22 --to-revision 3"
    )]
    Rollout {
        #[command(subcommand)]
        command: RolloutCommand,
    },
    /// Create a cosign-compatible key pair: PREFIX.key (encrypted with
    /// COSIGN_PASSWORD or a prompted password) and PREFIX.pub.
    #[command(
        after_help = "Examples:\n  COSIGN_PASSWORD=... harvester keygen\n  harvester keygen --output-key-prefix release"
    )]
    Keygen {
        /// Where to write: PREFIX.key and PREFIX.pub.
        #[arg(long, value_name = "PREFIX", default_value = "cosign")]
        output_key_prefix: PathBuf,
    },
    /// Push a component to an OCI registry as a wasm artifact, and sign it.
    #[command(
        after_help = "Examples:\n  harvester push plugins/dht22/dht22.wasm 127.0.0.1:5000/dht22:1.2 --key cosign.key"
    )]
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
    #[command(after_help = "Examples:\n  harvester sign 127.0.0.1:5000/dht22:1.2 --key release.key")]
    Sign {
        /// host/repository:tag or host/repository@sha256:...
        target: String,
        /// The private key to sign with (COSIGN_PASSWORD or a prompt unlocks it).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// Reach this registry over plain HTTP (loopback registries always are).
        #[arg(long, value_name = "HOST[:PORT]")]
        insecure_registry: Vec<String>,
    },
    /// Check an image is signed, for its repository, by one of the keys.
    #[command(after_help = "Examples:\n  harvester verify 127.0.0.1:5000/dht22:1.2 --key cosign.pub")]
    Verify {
        /// host/repository:tag or host/repository@sha256:...
        target: String,
        /// A public key to trust (repeat for several).
        #[arg(long = "key", value_name = "FILE", required = true)]
        keys: Vec<PathBuf>,
        /// Reach this registry over plain HTTP (loopback registries always are).
        #[arg(long, value_name = "HOST[:PORT]")]
        insecure_registry: Vec<String>,
        #[command(flatten)]
        registry_limits: crate::oci::RegistryLimits,
    },
    /// Download an image's component after verifying its signature.
    #[command(after_help = "Examples:\n  harvester pull 127.0.0.1:5000/dht22:1.2 --key cosign.pub -o dht22.wasm")]
    Pull {
        /// host/repository:tag or host/repository@sha256:...
        target: String,
        /// A public key to trust (repeat for several).
        #[arg(long = "key", value_name = "FILE", required = true)]
        keys: Vec<PathBuf>,
        /// Where to write the component.
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
        /// Reach this registry over plain HTTP (loopback registries always are).
        #[arg(long, value_name = "HOST[:PORT]")]
        insecure_registry: Vec<String>,
        #[command(flatten)]
        registry_limits: crate::oci::RegistryLimits,
    },
    /// Work with plugin sources.
    #[command(after_help = "Examples:\n  harvester plugin build plugins/dht22")]
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a join token; it is printed once (the hub keeps its hash).
    #[command(
        after_help = "Examples:\n  harvester token create\n  harvester token create --ttl 24h --uses 10 --description 'north field'"
    )]
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
        /// The labels a board enrolling with it gets (KEY=VALUE,...); without
        /// them the board proposes its --labels once, at its first start.
        #[arg(long, value_name = "KEY=VALUE,...")]
        labels: Option<String>,
    },
    /// List join tokens (never their secrets).
    #[command(after_help = "Examples:\n  harvester token list")]
    List,
    /// Delete a join token by its ID.
    #[command(after_help = "Examples:\n  harvester token delete 3f2a9c")]
    Delete {
        /// The token's ID, as token list shows it.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Make a user; its token is printed once (the hub keeps its hash).
    #[command(after_help = "Examples:\n  harvester user create alice --role operator > alice.token")]
    Create {
        /// The user's name.
        name: String,
        /// viewer (read), operator (apply, roll out, exec) or admin (also tokens, users, audit).
        #[arg(long, value_parser = parse_role)]
        role: harvester_api::identity::Role,
    },
    /// List users and their roles.
    #[command(after_help = "Examples:\n  harvester user list")]
    List,
    /// Delete a user: its token, dashboard sessions and open watches end at once.
    #[command(after_help = "Examples:\n  harvester user delete alice")]
    Delete {
        /// The user's name.
        name: String,
    },
}

pub fn parse_role(s: &str) -> Result<harvester_api::identity::Role, String> {
    s.parse()
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Make a context the current one.
    #[command(after_help = "Examples:\n  harvester config use-context lab")]
    UseContext {
        /// The context's name, as get-contexts lists it.
        name: String,
    },
    /// List the contexts; * marks the current one.
    #[command(after_help = "Examples:\n  harvester config get-contexts")]
    GetContexts,
}

#[derive(Debug, Subcommand)]
pub enum ControllerAction {
    /// Take a backup of the running hub through its API (admin role): its
    /// store (objects, revisions, uploaded components, users, tokens, the
    /// audit trail), read while no write can happen, with its CA and keys.
    /// Written with mode 0600: it holds the hub's secrets.
    #[command(after_help = "Examples:\n  harvester controller backup /srv/backups/hub-$(date +%F).tar")]
    Backup {
        /// Where to write the backup (a tar archive).
        file: PathBuf,
    },
    /// Unpack a backup into a new data folder; a controller started with
    /// --data on it is the hub that was backed up.
    #[command(after_help = "Examples:\n  harvester controller restore hub.tar --data /var/lib/harvester")]
    Restore {
        /// The backup to restore.
        file: PathBuf,
        /// The data folder to create (it must not exist, or be empty).
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// End a node's access at once: its certificates stop working and its
    /// open connections close. The board keeps running its plugins.
    #[command(after_help = "Examples:\n  harvester node revoke pi4")]
    Revoke {
        /// The node's name.
        name: String,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Wait until every selected node runs the plugin's newest revision
    /// (fails when it was rolled back or fails where it runs).
    #[command(after_help = "Examples:\n  harvester rollout status plugin/dht22 --timeout 5m")]
    Status {
        /// plugin/NAME
        /// plugin/NAME
        target: String,
        /// How long to wait.
        #[arg(long, default_value = "60s")]
        timeout: harvester_api::DurationSpec,
    },
    /// The plugin's revisions: number, digest, what changed, who, when, outcome.
    #[command(after_help = "Examples:\n  harvester rollout history plugin/dht22")]
    History {
        /// plugin/NAME
        /// plugin/NAME
        target: String,
    },
    /// Run an earlier revision again (the one before the newest, or --to-revision).
    #[command(
        after_help = "Examples:\n  harvester rollout undo plugin/dht22\n  harvester rollout undo plugin/dht22 --to-revision 3"
    )]
    Undo {
        /// plugin/NAME
        /// plugin/NAME
        target: String,
        /// The revision to go back to (see rollout history).
        #[arg(long, value_name = "N")]
        to_revision: Option<u64>,
    },
    /// Stop a rollout where it stands: no further node gets the new revision.
    #[command(after_help = "Examples:\n  harvester rollout pause plugin/dht22")]
    Pause {
        /// plugin/NAME
        /// plugin/NAME
        target: String,
    },
    /// Go on with a paused rollout.
    #[command(after_help = "Examples:\n  harvester rollout resume plugin/dht22")]
    Resume {
        /// plugin/NAME
        /// plugin/NAME
        target: String,
    },
    /// End the pause step a canary waits at.
    #[command(after_help = "Examples:\n  harvester rollout promote plugin/dht22")]
    Promote {
        /// plugin/NAME
        /// plugin/NAME
        target: String,
    },
    /// Stop a rollout and send every updated node back to the stable revision.
    #[command(after_help = "Examples:\n  harvester rollout abort plugin/dht22")]
    Abort {
        /// plugin/NAME
        /// plugin/NAME
        target: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Build a plugin folder (Python or Rust) into a WebAssembly component.
    #[command(
        after_help = "Examples:\n  harvester plugin build plugins/dht22\n  harvester plugin build plugins/netmon -o netmon.wasm --cache ~/.cache/harvester-builds"
    )]
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every command people type shows examples, and every argument says
    /// what it is (a default alone is not a description).
    #[test]
    fn every_command_has_examples_and_every_argument_a_description() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
                let at = format!("{path} {}", sub.get_name());
                let has_children = sub.get_subcommands().any(|s| !s.is_hide_set());
                if !has_children
                    && !sub
                        .get_after_help()
                        .is_some_and(|h| h.to_string().contains("Examples:"))
                {
                    missing.push(format!("{at}: no examples"));
                }
                for arg in sub.get_arguments() {
                    let id = arg.get_id().as_str();
                    if arg.is_hide_set() || id == "help" || id == "version" {
                        continue;
                    }
                    if arg.get_help().is_none() && arg.get_long_help().is_none() {
                        missing.push(format!("{at} {id}: no description"));
                    }
                }
                walk(sub, &at, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "harvester", &mut missing);
        assert!(missing.is_empty(), "{}", missing.join("\n"));
    }
}
