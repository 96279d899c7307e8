//! `net`: ping and TCP checks of granted hosts, with bounded timeouts.

use super::{HostState, list};
use crate::bindings::net::Host;
use crate::bindings::types::HwError;
use harvester_api::{Capability, Grants};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

const MAX_TIMEOUT_MS: u32 = 10_000;

host_capability!(Net, Net, net);

/// The grant check: granted host names only (as written, any case).
fn check(grants: &Grants, host: &str) -> Result<(), String> {
    if grants.allows_host(host) {
        return Ok(());
    }
    let granted = grants.net.as_ref().map(|g| list(&g.hosts)).unwrap_or_default();
    Err(format!("host {host:?} is not granted (granted: {granted})"))
}

impl HostState {
    /// Resolves a granted host; anything else is denied before any packet leaves.
    fn granted_host(&self, host: &str, port: u16) -> Result<SocketAddr, HwError> {
        self.check(Capability::Net, check(&self.ctx.grants, host))?;
        (host, port)
            .to_socket_addrs()
            .map_err(|e| HwError::Failed(format!("cannot resolve {host}: {e}")))?
            .next()
            .ok_or_else(|| HwError::Failed(format!("{host} has no address")))
    }
}

fn timeout(ms: u32) -> Duration {
    Duration::from_millis(ms.clamp(1, MAX_TIMEOUT_MS) as u64)
}

impl Host for HostState {
    fn ping(&mut self, host: String, timeout_ms: u32) -> Result<f32, HwError> {
        let addr = self.granted_host(&host, 0)?.ip();
        ping(addr, timeout(timeout_ms))
    }

    fn tcp_check(&mut self, host: String, port: u16, timeout_ms: u32) -> Result<f32, HwError> {
        let addr = self.granted_host(&host, port)?;
        let started = Instant::now();
        TcpStream::connect_timeout(&addr, timeout(timeout_ms))
            .map_err(|e| HwError::Failed(format!("{host}:{port}: {e}")))?;
        Ok(started.elapsed().as_secs_f32() * 1000.0)
    }
}

/// One ICMP echo. Unprivileged datagram ICMP first (needs
/// net.ipv4.ping_group_range to include the nodelet's group), raw ICMP second
/// (needs CAP_NET_RAW).
fn ping(addr: IpAddr, timeout: Duration) -> Result<f32, HwError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| HwError::Failed(format!("ping: {e}")))?;
    rt.block_on(async {
        let kind = if addr.is_ipv4() { surge_ping::ICMP::V4 } else { surge_ping::ICMP::V6 };
        let mut last = None;
        for sock_type in [socket2::Type::DGRAM, socket2::Type::RAW] {
            let config = surge_ping::Config::builder().kind(kind).sock_type_hint(sock_type).build();
            let client = match surge_ping::Client::new(&config) {
                Ok(c) => c,
                Err(e) => {
                    last = Some(e.to_string());
                    continue;
                }
            };
            let mut pinger = client.pinger(addr, surge_ping::PingIdentifier(std::process::id() as u16)).await;
            pinger.timeout(timeout);
            return match pinger.ping(surge_ping::PingSequence(0), &[0u8; 16]).await {
                Ok((_, rtt)) => Ok(rtt.as_secs_f32() * 1000.0),
                Err(surge_ping::SurgeError::Timeout { .. }) => {
                    Err(HwError::Failed(format!("{addr}: no reply within {} ms", timeout.as_millis())))
                }
                Err(e) => Err(HwError::Failed(format!("{addr}: {e}"))),
            };
        }
        Err(HwError::Unavailable(format!(
            "ICMP is not permitted for this process ({}): allow it with sysctl net.ipv4.ping_group_range or CAP_NET_RAW",
            last.unwrap_or_default()
        )))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use harvester_api::grants::NetGrant;

    #[test]
    fn only_granted_hosts_are_reached() {
        let grants = Grants {
            net: Some(NetGrant {
                hosts: vec!["hub.local".into()],
            }),
            ..Grants::default()
        };
        assert_eq!(check(&grants, "HUB.local"), Ok(()));
        assert_eq!(
            check(&grants, "127.0.0.1"),
            Err("host \"127.0.0.1\" is not granted (granted: [hub.local])".into())
        );
    }
}
