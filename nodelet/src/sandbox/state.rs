//! What a plugin's store holds: its grants and devices, its memory cap, and a
//! WASI context with no files, no sockets, no environment and no arguments.

use super::limits::MemoryCap;
use super::stdio::LineStream;
use crate::capabilities::leds::LedBuffer;
use crate::events::{EventKind, LogLevel, LogSource};
use crate::hardware::Hardware;
use crate::report::Reporter;
use harvester_api::Grants;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

/// Everything about one plugin version that does not change between calls.
pub struct PluginContext {
    pub plugin: String,
    pub grants: Grants,
    pub config: BTreeMap<String, String>,
    pub hardware: Hardware,
    pub leds: Arc<LedBuffer>,
    pub report: Arc<Reporter>,
    /// Telemetry names seen, to cap metric cardinality, each with its unit
    /// and its gauge: looking a series up by labels on every call would cost
    /// more than the rest of the call.
    pub telemetry_names: Mutex<BTreeMap<String, (String, prometheus::Gauge)>>,
}

impl PluginContext {
    pub fn log(&self, level: LogLevel, source: LogSource, message: String) {
        self.report
            .emit(&self.plugin, EventKind::Log { level, source, message });
    }
}

pub struct HostState {
    pub wasi: WasiCtx,
    pub table: ResourceTable,
    pub limits: MemoryCap,
    pub ctx: Arc<PluginContext>,
}

impl HostState {
    pub fn new(ctx: Arc<PluginContext>, memory_limit: u64) -> HostState {
        let out = {
            let ctx = ctx.clone();
            LineStream::new(Arc::new(move |line: &str| {
                ctx.log(LogLevel::Info, LogSource::Stdout, line.to_string())
            }))
        };
        let err = {
            let ctx = ctx.clone();
            LineStream::new(Arc::new(move |line: &str| {
                ctx.log(LogLevel::Warn, LogSource::Stderr, line.to_string())
            }))
        };
        // WasiCtxBuilder starts empty: no preopened directories, no env, no
        // args, stdin closed. Network use is switched off explicitly.
        let wasi = WasiCtxBuilder::new()
            .stdout(out)
            .stderr(err)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        HostState {
            wasi,
            table: ResourceTable::new(),
            limits: MemoryCap::new(memory_limit),
            ctx,
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}
