//! The node's composition root: builds the hardware, the metrics, the
//! runtime and the local HTTP server, then runs either a standalone
//! manifest or the agent that follows a hub, handing each part what it
//! needs. `harvester nodelet` only turns its arguments into a [`NodeConfig`].

use crate::agent::{self, AgentOptions, CompileMode, TrustPolicy};
use crate::hardware::sim::{self, SimHandles, SimProfile};
use crate::hardware::{Hardware, rpi};
use crate::metrics::Metrics;
use crate::runtime::{RestartPolicy, Runtime, RuntimeOptions};
use crate::uplink::LogBuffer;
use anyhow::{Context, bail};
use harvester_api::resources::Labels;
use harvester_registry::RegistryOptions;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// Which devices the node drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HardwareChoice {
    /// Simulated devices (any machine).
    Sim,
    /// This Raspberry Pi's devices (rppal).
    Rpi,
    /// A Raspberry Pi's devices if this is one, simulated devices otherwise.
    Auto,
}

/// A simulated device a node may have besides GPIO, I2C and system facts.
pub const SIM_DEVICES: [&str; 4] = ["dht22", "bme680", "leds", "buzzer"];

#[derive(Debug, Clone)]
pub struct HardwareConfig {
    pub choice: HardwareChoice,
    /// The Pi's wiring (pins, strip length), used when it drives a Pi.
    pub rpi: rpi::RpiConfig,
    /// Simulated devices, from [`SIM_DEVICES`].
    pub sim_devices: Vec<String>,
    /// Pinned simulated values, `KEY=VALUE` (`--sim`).
    pub sim_values: Vec<String>,
}

/// What the node follows.
#[derive(Debug, Clone)]
pub enum Mode {
    /// A local manifest, polled for changes.
    Standalone { manifest: PathBuf, poll: Duration },
    /// A hub.
    Hub {
        controller: String,
        /// For the first start: the join token to enrol with.
        join_token: Option<crate::agent::identity::JoinTokenSource>,
        labels: Labels,
        heartbeat: Duration,
        trust: TrustPolicy,
        compile: CompileMode,
        /// How often what no assignment needs is swept off the disk.
        collect_every: Duration,
        /// What plugins' `limits.memory` may add up to on this board.
        plugin_memory: Option<harvester_api::MemorySize>,
    },
}

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub name: String,
    pub data: PathBuf,
    /// Where /status and /metrics are served (read-only).
    pub listen: SocketAddr,
    /// Where plugin commands are served: loopback only.
    pub command_listen: SocketAddr,
    pub hardware: HardwareConfig,
    pub restart_backoff: Duration,
    pub registry: RegistryOptions,
    pub mode: Mode,
}

pub use crate::agent::identity::JoinTokenSource;

impl NodeConfig {
    /// A board on simulated hardware with no devices, following the hub at
    /// `controller` and enrolling with the join token in `token`, serving on
    /// ports the system picks: many of them run in one process in tests and
    /// benchmarks.
    pub fn simulated_follower(
        name: String,
        data: PathBuf,
        controller: String,
        token: PathBuf,
        heartbeat: Duration,
    ) -> NodeConfig {
        NodeConfig {
            name,
            data,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            command_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            hardware: HardwareConfig {
                choice: HardwareChoice::Sim,
                rpi: Default::default(),
                sim_devices: Vec::new(),
                sim_values: Vec::new(),
            },
            restart_backoff: Duration::from_secs(1),
            registry: RegistryOptions::default(),
            mode: Mode::Hub {
                controller,
                join_token: Some(JoinTokenSource::File(token)),
                labels: Labels::default(),
                heartbeat,
                trust: TrustPolicy::default(),
                compile: CompileMode::Local,
                collect_every: Duration::from_secs(600),
                plugin_memory: None,
            },
        }
    }

    fn check(&self) -> anyhow::Result<()> {
        if !self.command_listen.ip().is_loopback() {
            bail!(
                "--command-listen {}: plugin commands are served on loopback only (127.0.0.1 or [::1]); from elsewhere, use harvester exec through the hub",
                self.command_listen
            );
        }
        if let Mode::Hub { trust, compile, .. } = &self.mode
            && *compile == CompileMode::Hub
            && trust.compilers.is_empty()
        {
            bail!("--compile hub needs --trust-compiler FILE: the hub's public key (DATA/compiler.pub on the hub)");
        }
        if let Some(bad) = self
            .hardware
            .sim_devices
            .iter()
            .find(|d| !SIM_DEVICES.contains(&d.as_str()))
        {
            bail!("--sim-devices: unknown device {bad:?}; use {}", SIM_DEVICES.join(", "));
        }
        Ok(())
    }
}

fn apply_sim(handles: &SimHandles, settings: &[String]) -> anyhow::Result<()> {
    for s in settings {
        let (key, value) = s
            .split_once('=')
            .with_context(|| format!("--sim {s}: expected KEY=VALUE"))?;
        let v: f32 = value
            .parse()
            .with_context(|| format!("--sim {s}: {value:?} is not a number"))?;
        match key {
            "temperature" => handles.world.set_temperature(Some(v)),
            "humidity" => handles.world.set_humidity(Some(v)),
            "pressure" => handles.world.set_pressure(Some(v)),
            "gas" => handles.world.set_gas_resistance(Some(v)),
            "cpu-temperature" => handles.system.set_cpu_temperature(Some(v)),
            other => {
                bail!("--sim {s}: unknown key {other:?}; use temperature, humidity, pressure, gas or cpu-temperature")
            }
        }
    }
    Ok(())
}

/// The devices, and the simulated buzzer whose record `/status` shows.
fn hardware(name: &str, cfg: &HardwareConfig) -> anyhow::Result<(Hardware, Option<Arc<sim::SimBuzzer>>)> {
    let on_pi = std::fs::read_to_string("/proc/device-tree/model")
        .map(|m| m.contains("Raspberry Pi"))
        .unwrap_or(false);
    let use_pi = match cfg.choice {
        HardwareChoice::Rpi => true,
        HardwareChoice::Auto => on_pi,
        HardwareChoice::Sim => false,
    };
    if use_pi {
        if !cfg.sim_values.is_empty() {
            bail!("--sim pins simulated readings; this node drives real devices (--hardware sim to simulate)");
        }
        let (hardware, notes) = rpi::build(&cfg.rpi).map_err(|e| anyhow::anyhow!("--hardware rpi: {e}"))?;
        for n in notes {
            tracing::warn!("{n}");
        }
        return Ok((hardware, None));
    }
    let has = |d: &str| cfg.sim_devices.iter().any(|x| x == d);
    let profile = SimProfile {
        led_count: if has("leds") { 11 } else { 0 },
        buzzer: has("buzzer"),
        dht22: has("dht22"),
        bme680: has("bme680"),
        seed: name.bytes().map(u64::from).sum(),
        ..SimProfile::default()
    };
    let (hardware, handles) = sim::build(&profile);
    apply_sim(&handles, &cfg.sim_values)?;
    if cfg.choice == HardwareChoice::Auto {
        tracing::info!("not a Raspberry Pi: simulated devices (--hardware rpi for real ones)");
    }
    Ok((hardware, profile.buzzer.then(|| handles.buzzer.clone())))
}

/// Runs the node until `shutdown`, in its own span: its log lines (for the
/// hub, when it follows one) go to its own buffer, whatever else runs in
/// the process.
pub async fn run(config: NodeConfig, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    let logs = matches!(config.mode, Mode::Hub { .. }).then(|| Arc::new(LogBuffer::new(crate::uplink::LOG_BUFFER)));
    let span = crate::log_tap::node_span(&config.name, logs.as_ref());
    run_node(config, logs, shutdown).instrument(span).await
}

async fn run_node(
    config: NodeConfig,
    logs: Option<Arc<LogBuffer>>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    config.check()?;
    let (hardware, sim_buzzer) = hardware(&config.name, &config.hardware)?;
    tracing::info!(node = config.name, backend = hardware.backend, devices = ?hardware.inventory().devices, "hardware ready");

    let mended = harvester_api::files::private_folder(&config.data)
        .with_context(|| format!("the data folder {}", config.data.display()))?;
    if let Some(was) = mended.folder_was {
        tracing::warn!(
            dir = %config.data.display(),
            "the board's data folder was mode {was:o}, open to other users: now 0700, and {} entries in it owner-only (it holds the board's key and its plugins' configuration)",
            mended.entries
        );
    }
    let metrics = Arc::new(Metrics::new());
    let runtime = Arc::new(Runtime::with_metrics(
        RuntimeOptions {
            data_dir: config.data.clone(),
            restart: RestartPolicy {
                initial_backoff: config.restart_backoff,
                ..RestartPolicy::default()
            },
        },
        hardware,
        metrics.clone(),
    )?);
    if let Some(logs) = &logs {
        runtime.forward_plugin_lines(logs.clone());
    }

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let address = listener.local_addr()?;
    tracing::info!("serving /status and /metrics on http://{address}");
    let app = crate::server::router(config.name.clone(), runtime.clone(), metrics.clone(), sim_buzzer);
    let server = crate::log_tap::spawn(async move { axum::serve(listener, app).await });
    let commands = tokio::net::TcpListener::bind(config.command_listen)
        .await
        .with_context(|| format!("cannot listen on {} (--command-listen)", config.command_listen))?;
    tracing::info!("serving plugin commands on http://{}", commands.local_addr()?);
    let command_app = crate::server::command_router(runtime.clone());
    let command_server = crate::log_tap::spawn(async move { axum::serve(commands, command_app).await });

    let result = match config.mode {
        Mode::Standalone { manifest, poll } => {
            crate::standalone::run(runtime, manifest, poll.max(Duration::from_millis(50)), shutdown).await
        }
        Mode::Hub {
            controller,
            join_token,
            labels,
            heartbeat,
            trust,
            compile,
            collect_every,
            plugin_memory,
        } => {
            agent::run(
                runtime,
                metrics,
                AgentOptions {
                    controller,
                    join_token,
                    name: config.name,
                    labels,
                    data_dir: config.data,
                    heartbeat,
                    address: address.to_string(),
                    trust,
                    registry: config.registry,
                    logs,
                    compile,
                    collect_every,
                    plugin_memory,
                },
                shutdown,
            )
            .await
        }
    };
    server.abort();
    command_server.abort();
    result
}
