//! `harvester nodelet`: the node agent.

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use harvester_nodelet::hardware::sim::{self, SimHandles, SimProfile};
use harvester_nodelet::runtime::RestartPolicy;
use harvester_nodelet::{Runtime, RuntimeOptions};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

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
    /// Serve /status, /metrics and plugin commands here.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9101")]
    pub listen: SocketAddr,
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

pub async fn run(args: NodeletArgs) -> anyhow::Result<()> {
    if args.standalone.is_none() && args.controller.is_none() {
        bail!("give --controller URL to follow a controller, or --standalone FILE to run a local manifest");
    }
    let labels =
        harvester_api::resources::parse_selector(&args.labels).map_err(|e| anyhow::anyhow!("--labels: {e}"))?;
    let trust = harvester_nodelet::agent::TrustPolicy {
        keys: args
            .trust_keys
            .iter()
            .map(|p| harvester_registry::TrustedKey::load(p).map_err(|e| anyhow::anyhow!("--trust-key: {e:#}")))
            .collect::<anyhow::Result<_>>()?,
        allow_unsigned: args.allow_unsigned,
        compilers: args
            .trust_compilers
            .iter()
            .map(|p| harvester_registry::TrustedKey::load(p).map_err(|e| anyhow::anyhow!("--trust-compiler: {e:#}")))
            .collect::<anyhow::Result<_>>()?,
    };
    let compile = match args.compile {
        CompileChoice::Auto => harvester_nodelet::agent::CompileMode::Auto,
        CompileChoice::Hub => harvester_nodelet::agent::CompileMode::Hub,
        CompileChoice::Local => harvester_nodelet::agent::CompileMode::Local,
    };
    if compile == harvester_nodelet::agent::CompileMode::Hub && trust.compilers.is_empty() {
        bail!("--compile hub needs --trust-compiler FILE: the hub's public key (DATA/compiler.pub on the hub)");
    }
    if compile == harvester_nodelet::agent::CompileMode::Hub && args.standalone.is_some() {
        bail!("--compile hub needs a hub: use it with --controller, not --standalone");
    }
    let registry = crate::oci::registry(&args.insecure_registry)?.options().clone();
    let on_pi = std::fs::read_to_string("/proc/device-tree/model")
        .map(|m| m.contains("Raspberry Pi"))
        .unwrap_or(false);
    let use_pi = match args.hardware {
        HardwareChoice::Rpi => true,
        HardwareChoice::Auto => on_pi,
        HardwareChoice::Sim => false,
    };
    let (hardware, sim_buzzer) = if use_pi {
        if !args.sim.is_empty() {
            bail!("--sim pins simulated readings; this node drives real devices (--hardware sim to simulate)");
        }
        let config = harvester_nodelet::hardware::rpi::RpiConfig {
            dht22_pin: args.dht22_pin.0,
            buzzer_pin: args.buzzer_pin.0,
            led_count: args.led_count,
            ..Default::default()
        };
        let (hardware, notes) =
            harvester_nodelet::hardware::rpi::build(&config).map_err(|e| anyhow::anyhow!("--hardware rpi: {e}"))?;
        for n in notes {
            tracing::warn!("{n}");
        }
        (hardware, None)
    } else {
        let devices: Vec<&str> = args
            .sim_devices
            .split(',')
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .collect();
        if let Some(bad) = devices
            .iter()
            .find(|d| !["dht22", "bme680", "leds", "buzzer"].contains(d))
        {
            bail!("--sim-devices: unknown device {bad:?}; use dht22, bme680, leds, buzzer");
        }
        let profile = SimProfile {
            led_count: if devices.contains(&"leds") { 11 } else { 0 },
            buzzer: devices.contains(&"buzzer"),
            dht22: devices.contains(&"dht22"),
            bme680: devices.contains(&"bme680"),
            seed: args.name.bytes().map(u64::from).sum(),
            ..SimProfile::default()
        };
        let (hardware, handles) = sim::build(&profile);
        apply_sim(&handles, &args.sim)?;
        if args.hardware == HardwareChoice::Auto {
            tracing::info!("not a Raspberry Pi: simulated devices (--hardware rpi for real ones)");
        }
        (hardware, profile.buzzer.then(|| handles.buzzer.clone()))
    };
    tracing::info!(node = args.name, backend = hardware.backend, devices = ?hardware.inventory().devices, "hardware ready");

    let data = args.data.clone().unwrap_or_else(default_data_dir);
    std::fs::create_dir_all(&data).with_context(|| format!("cannot create {}", data.display()))?;
    let runtime = Arc::new(Runtime::new(
        RuntimeOptions {
            data_dir: data.clone(),
            restart: RestartPolicy {
                initial_backoff: args.restart_backoff.as_duration(),
                ..RestartPolicy::default()
            },
        },
        hardware,
    )?);

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let listener_addr = listener.local_addr()?;
    tracing::info!("serving /status and /metrics on http://{listener_addr}");
    let app = harvester_nodelet::server::router(args.name.clone(), runtime.clone(), sim_buzzer);
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let address = listener_addr.to_string();
    let result = match (args.standalone.clone(), args.controller.clone()) {
        (Some(manifest), _) => {
            harvester_nodelet::standalone::run(
                runtime,
                manifest,
                args.poll.as_duration().max(Duration::from_millis(50)),
                shutdown_signal(),
            )
            .await
        }
        (None, Some(controller)) => {
            harvester_nodelet::agent::run(
                runtime,
                harvester_nodelet::agent::AgentOptions {
                    controller,
                    name: args.name.clone(),
                    labels,
                    data_dir: data,
                    heartbeat: args.heartbeat.as_duration(),
                    address,
                    trust,
                    registry,
                    logs: Some(harvester_nodelet::uplink::enable_log_tap()),
                    compile,
                },
                shutdown_signal(),
            )
            .await
        }
        (None, None) => unreachable!("checked above"),
    };
    server.abort();
    result
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
