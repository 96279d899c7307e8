"""Host health: CPU temperature on LED 0, uptime and load as telemetry.

LED 0: green below 50 C, yellow 50-70 C, red above 70 C.
"""

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import leds, log, system, telemetry
from wit_world.imports.types import Rgb

LED = 0
WARM = 50.0
HOT = 70.0

GREEN = Rgb(0, 255, 0)
YELLOW = Rgb(255, 200, 0)
RED = Rgb(255, 0, 0)


def colour_for(temperature):
    if temperature > HOT:
        return RED
    if temperature >= WARM:
        return YELLOW
    return GREEN


class Lifecycle(exports.Lifecycle):
    def init(self, cfg):
        log.log(log.Level.INFO, "system health on LED 0")

    def tick(self):
        one, five, fifteen = system.load_average()
        telemetry.emit("load1", one, "ratio")
        telemetry.emit("load5", five, "ratio")
        telemetry.emit("uptime", float(system.uptime_seconds()), "seconds")
        try:
            t = system.cpu_temperature()
        except Err as e:
            log.log(log.Level.WARN, f"cpu temperature unavailable: {e.value}")
            return
        telemetry.emit("cpu_temperature", t, "celsius")
        leds.set(LED, colour_for(t))
        leds.show()

    def on_command(self, name, args):
        raise Err(f"unknown command {name!r}")
