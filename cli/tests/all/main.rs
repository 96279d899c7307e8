//! Integration tests: real components built from the repo's plugins, run by
//! the real runtime (wasmtime), on simulated hardware; and the real
//! `harvester` binary as a process on loopback.

mod bad_input;
mod cache;
mod dashboard;
mod deploy;
mod faults;
mod first_run;
mod fleet;
mod hostile;
mod hot_swap;
mod identity;
mod kubectl;
mod process;
mod rollout;
mod sandbox;
mod showcase;
mod signed;
mod support;
mod telemetry;
