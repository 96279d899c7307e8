//! `harvester nodelet`: the node agent's arguments, turned into the
//! nodelet crate's [`NodeConfig`]; `harvester_nodelet::node` runs it.

use anyhow::bail;
use clap::{Args, ValueEnum};
use harvester_nodelet::agent::{CompileMode, TrustPolicy};
use harvester_nodelet::node::{self, HardwareConfig, Mode, NodeConfig};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HardwareChoice {
    /// Simulated devices (any machine).
    Sim,
    /// This Raspberry Pi's devices (rppal): GPIO, I2C, SPI, DHT22, buzzer relay.
    Rpi,
    /// A Raspberry Pi's devices if this is one, simulated devices otherwise.
    Auto,
}

/// A BCM pin number, or `none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaybePin(pub Option<u8>);

fn pin_or_none(s: &str) -> Result<MaybePin, String> {
    if s == "none" {
        return Ok(MaybePin(None));
    }
    match s.parse::<u8>() {
        Ok(p) if p <= 27 => Ok(MaybePin(Some(p))),
        _ => Err(format!("{s:?}: a BCM pin number 0-27, or none")),
    }
}

#[derive(Debug, Args)]
pub struct NodeletArgs {
    /// Run the plugins of this local manifest, without a controller, and
    /// follow changes to it and to the component files.
    #[arg(long, value_name = "FILE", conflicts_with = "controller")]
    pub standalone: Option<PathBuf>,
    /// Follow this controller (one outbound connection).
    #[arg(long, value_name = "URL")]
    pub controller: Option<String>,
    /// This node's labels, for plugins' node selectors (role=sensor,board=pi4).
    #[arg(long, value_name = "K=V,...", default_value = "")]
    pub labels: String,
    /// How often the node reports to the controller.
    #[arg(long, value_name = "DURATION", default_value = "3s")]
    pub heartbeat: harvester_api::DurationSpec,
    /// This node's name.
    #[arg(long, default_value_t = default_name())]
    pub name: String,
    /// Where compiled components and state are kept.
    #[arg(long, value_name = "DIR", env = "HARVESTER_DATA")]
    pub data: Option<PathBuf>,
    /// Serve /status and /metrics here (read-only).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9101")]
    pub listen: SocketAddr,
    /// Serve plugin commands here: loopback only.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9102")]
    pub command_listen: SocketAddr,
    /// The join token to enrol with on first start (a file, or - for
    /// stdin; never on the command line). Later starts use the
    /// certificate kept in DATA/pki.
    #[arg(long, value_name = "FILE")]
    pub join_token_file: Option<PathBuf>,
    /// sim (simulated devices), rpi (a Raspberry Pi's real ones) or auto (rpi on a Pi).
    #[arg(long, value_enum, default_value_t = HardwareChoice::Auto)]
    pub hardware: HardwareChoice,
    /// On a Pi: the DHT22's data pin (BCM), or none.
    #[arg(long, value_name = "PIN", default_value = "4", value_parser = pin_or_none)]
    pub dht22_pin: MaybePin,
    /// On a Pi: the buzzer relay's input pin (BCM, active low), or none.
    #[arg(long, value_name = "PIN", default_value = "17", value_parser = pin_or_none)]
    pub buzzer_pin: MaybePin,
    /// On a Pi: WS2812B LEDs on SPI0 MOSI (GPIO10); 0 for no strip.
    #[arg(long, value_name = "N", default_value_t = 11)]
    pub led_count: usize,
    /// Pin a simulated value: temperature=31, humidity=40, pressure=1000,
    /// gas=50000, cpu-temperature=75 (repeatable).
    #[arg(long = "sim", value_name = "KEY=VALUE")]
    pub sim: Vec<String>,
    /// Which simulated devices this node has (besides GPIO, I2C and system
    /// facts): any of dht22, bme680, leds, buzzer.
    #[arg(long, value_name = "LIST", default_value = "dht22,bme680,leds,buzzer")]
    pub sim_devices: String,
    /// How often the manifest and components are checked for changes.
    #[arg(long, value_name = "DURATION", default_value = "1s")]
    pub poll: harvester_api::DurationSpec,
    /// Wait before restarting a trapped plugin (doubles per failure).
    #[arg(long, value_name = "DURATION", default_value = "1s")]
    pub restart_backoff: harvester_api::DurationSpec,
    /// Run only images signed by this public key (cosign format; repeat for
    /// several). Keys never come from the controller.
    #[arg(long = "trust-key", value_name = "FILE")]
    pub trust_keys: Vec<PathBuf>,
    /// Run components without a valid signature too. For development only:
    /// it says so loudly in the log and in every plugin's status.
    #[arg(long)]
    pub allow_unsigned: bool,
    /// Reach this registry over plain HTTP (loopback registries always are).
    #[arg(long, value_name = "HOST[:PORT]")]
    pub insecure_registry: Vec<String>,
    #[command(flatten)]
    pub registry_limits: crate::oci::RegistryLimits,
    /// Load code the hub compiled for this node when signed by this public
    /// key (the hub's DATA/compiler.pub; repeat for several).
    #[arg(long = "trust-compiler", value_name = "FILE")]
    pub trust_compilers: Vec<PathBuf>,
    /// Where runnable code comes from: `hub` (code the hub compiled; this
    /// board never runs the compiler), `local` (compile here), or `auto`:
    /// the hub's code when a --trust-compiler key is given, compiling here
    /// when the hub cannot help and the board has 1 GiB of memory or more.
    #[arg(long, value_enum, default_value_t = CompileChoice::Auto)]
    pub compile: CompileChoice,
    /// Every this long, delete the manifests, components, signature records
    /// and compiled code that no assignment (nor a guarded one's fallback)
    /// needs and that were written more than this long ago.
    #[arg(long, value_name = "DURATION", default_value = "10m")]
    pub collect_every: harvester_api::DurationSpec,
    /// What the `limits.memory` of the plugins placed on this board may add
    /// up to (default: three quarters of its memory; the rest is the
    /// system's and the node's). Reported to the hub, which places no more.
    #[arg(long, value_name = "SIZE")]
    pub plugin_memory: Option<harvester_api::MemorySize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CompileChoice {
    Auto,
    Hub,
    Local,
}

fn default_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_lowercase())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "node".into())
}

fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(d).join("harvester");
    }
    if let Some(h) = std::env::var_os("HOME") {
        return PathBuf::from(h).join(".local/share/harvester");
    }
    PathBuf::from("/var/lib/harvester")
}

fn keys(paths: &[PathBuf], flag: &str) -> anyhow::Result<Vec<harvester_registry::TrustedKey>> {
    paths
        .iter()
        .map(|p| harvester_registry::TrustedKey::load(p).map_err(|e| anyhow::anyhow!("{flag}: {e:#}")))
        .collect()
}

impl NodeletArgs {
    fn config(self) -> anyhow::Result<NodeConfig> {
        let mode = match (self.standalone, self.controller) {
            (Some(manifest), _) => {
                if self.compile == CompileChoice::Hub {
                    bail!("--compile hub needs a hub: use it with --controller, not --standalone");
                }
                Mode::Standalone {
                    manifest,
                    poll: self.poll.as_duration(),
                }
            }
            (None, Some(controller)) => Mode::Hub {
                controller,
                join_token: self.join_token_file.map(|f| {
                    if f.as_os_str() == "-" {
                        node::JoinTokenSource::Stdin
                    } else {
                        node::JoinTokenSource::File(f)
                    }
                }),
                labels: harvester_api::resources::parse_labels(&self.labels)
                    .map_err(|e| anyhow::anyhow!("--labels: {e}"))?,
                heartbeat: self.heartbeat.as_duration(),
                trust: TrustPolicy {
                    keys: keys(&self.trust_keys, "--trust-key")?,
                    allow_unsigned: self.allow_unsigned,
                    compilers: keys(&self.trust_compilers, "--trust-compiler")?,
                },
                compile: match self.compile {
                    CompileChoice::Auto => CompileMode::Auto,
                    CompileChoice::Hub => CompileMode::Hub,
                    CompileChoice::Local => CompileMode::Local,
                },
                collect_every: self.collect_every.as_duration(),
                plugin_memory: self.plugin_memory,
            },
            (None, None) => {
                bail!("give --controller URL to follow a controller, or --standalone FILE to run a local manifest")
            }
        };
        Ok(NodeConfig {
            data: self.data.unwrap_or_else(default_data_dir),
            listen: self.listen,
            command_listen: self.command_listen,
            hardware: HardwareConfig {
                choice: match self.hardware {
                    HardwareChoice::Sim => node::HardwareChoice::Sim,
                    HardwareChoice::Rpi => node::HardwareChoice::Rpi,
                    HardwareChoice::Auto => node::HardwareChoice::Auto,
                },
                rpi: harvester_nodelet::hardware::rpi::RpiConfig {
                    dht22_pin: self.dht22_pin.0,
                    buzzer_pin: self.buzzer_pin.0,
                    led_count: self.led_count,
                    ..Default::default()
                },
                sim_devices: self
                    .sim_devices
                    .split(',')
                    .map(str::trim)
                    .filter(|d| !d.is_empty())
                    .map(str::to_string)
                    .collect(),
                sim_values: self.sim,
            },
            restart_backoff: self.restart_backoff.as_duration(),
            registry: crate::oci::registry(&self.insecure_registry, self.registry_limits.limits())?
                .options()
                .clone(),
            name: self.name,
            mode,
        })
    }
}

pub async fn run(args: NodeletArgs) -> anyhow::Result<()> {
    node::run(args.config()?, shutdown_signal()).await
}

pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}
