"""Air quality from a BME680, shown on LED 2.

LED 2 follows the IAQ index (0 clean .. 500 very polluted): green up to 50,
yellow-green to 100, yellow to 150, orange to 200, red from 200, and purple
while the sensor's gas baseline is still being learnt (calibrating).
"""

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import bme680, leds, log, telemetry
from wit_world.imports.types import Rgb

LED = 2

GREEN = Rgb(0, 255, 0)
YELLOW_GREEN = Rgb(160, 255, 0)
YELLOW = Rgb(255, 200, 0)
ORANGE = Rgb(255, 120, 0)
RED = Rgb(255, 0, 0)
PURPLE = Rgb(128, 0, 255)

state = {"calibrating": None}


def colour_for(iaq, calibrating):
    if calibrating:
        return PURPLE
    if iaq <= 50:
        return GREEN
    if iaq <= 100:
        return YELLOW_GREEN
    if iaq <= 150:
        return YELLOW
    if iaq < 200:
        return ORANGE
    return RED


class Lifecycle(exports.Lifecycle):
    def init(self, cfg):
        log.log(log.Level.INFO, "bme680 air quality on LED 2")

    def tick(self):
        try:
            r = bme680.read()
        except Err as e:
            log.log(log.Level.WARN, f"bme680 read failed: {e.value}")
            return
        telemetry.emit("temperature", r.temperature_c, "celsius")
        telemetry.emit("humidity", r.humidity_pct, "percent")
        telemetry.emit("pressure", r.pressure_hpa, "hpa")
        telemetry.emit("gas_resistance", r.gas_ohms, "ohms")
        telemetry.emit("iaq", r.iaq, "iaq")
        telemetry.emit("calibrating", 1.0 if r.calibrating else 0.0, "bool")
        if state["calibrating"] is not r.calibrating:
            state["calibrating"] = r.calibrating
            if r.calibrating:
                log.log(log.Level.INFO, "gas baseline calibrating")
            else:
                log.log(log.Level.INFO, f"gas baseline learnt, IAQ {r.iaq:.0f}")
        leds.set(LED, colour_for(r.iaq, r.calibrating))
        leds.show()

    def on_command(self, name, args):
        raise Err(f"unknown command {name!r}")
