"""Network health: pings each host in config HOSTS (comma separated).

Every host must also be granted (`net: {hosts: [...]}`); the node refuses
the rest. Reports round trips in seconds and 1/0 reachability per host.
"""

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import log, net, telemetry

TIMEOUT_MS = 1000

state = {"hosts": [], "up": {}}


def metric_name(host):
    return "".join(c if c.isalnum() else "_" for c in host.lower())


class Lifecycle(exports.Lifecycle):
    def init(self, cfg):
        values = dict(cfg)
        hosts = [h.strip() for h in values.get("HOSTS", "").split(",") if h.strip()]
        if not hosts:
            raise Err("config HOSTS is empty: list the hosts to ping, comma separated")
        state["hosts"] = hosts
        log.log(log.Level.INFO, f"monitoring {', '.join(hosts)}")

    def tick(self):
        for host in state["hosts"]:
            name = metric_name(host)
            try:
                rtt_ms = net.ping(host, TIMEOUT_MS)
                up = True
                telemetry.emit(f"rtt_{name}", rtt_ms / 1000.0, "seconds")
            except Err as e:
                up = False
                reason = e.value.value
            telemetry.emit(f"up_{name}", 1.0 if up else 0.0, "bool")
            if state["up"].get(host) is not up:
                state["up"][host] = up
                if up:
                    log.log(log.Level.INFO, f"{host} is reachable")
                else:
                    log.log(log.Level.WARN, f"{host} is unreachable: {reason}")

    def on_command(self, name, args):
        if name == "status":
            return ", ".join(f"{h}: {'up' if state['up'].get(h) else 'down'}" for h in state["hosts"])
        raise Err(f"unknown command {name!r}; try 'status'")
