"""Room climate from a DHT22, shown on LED 1.

LED 1: blue below 15 C, green 15-25 C, orange from 25 C up to HIGH_TEMP,
red above HIGH_TEMP (the alarm). Change HIGH_TEMP here, or set it in the
manifest's config, and the node swaps the new version in without a restart.
"""

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import config, dht22, leds, log, telemetry
from wit_world.imports.types import Rgb

HIGH_TEMP = 30.0
PIN = 4
LED = 1

BLUE = Rgb(0, 0, 255)
GREEN = Rgb(0, 255, 0)
ORANGE = Rgb(255, 120, 0)
RED = Rgb(255, 0, 0)

settings = {"high_temp": HIGH_TEMP, "pin": PIN, "alarm": False}


def colour_for(temperature):
    if temperature > settings["high_temp"]:
        return RED
    if temperature < 15.0:
        return BLUE
    if temperature < 25.0:
        return GREEN
    return ORANGE


def number(value, key):
    try:
        return float(value)
    except ValueError:
        raise Err(f"config {key}={value!r} is not a number")


class Lifecycle(exports.Lifecycle):
    def init(self, cfg):
        values = dict(cfg)
        settings["high_temp"] = number(values.get("HIGH_TEMP", HIGH_TEMP), "HIGH_TEMP")
        settings["pin"] = int(number(values.get("PIN", PIN), "PIN"))
        log.log(log.Level.INFO, f"dht22 on GPIO{settings['pin']}, alarm above {settings['high_temp']:.1f} C")

    def tick(self):
        try:
            reading = dht22.read(settings["pin"])
        except Err as e:
            log.log(log.Level.WARN, f"dht22 read failed: {e.value}")
            return
        t = reading.temperature_c
        telemetry.emit("temperature", t, "celsius")
        telemetry.emit("humidity", reading.humidity_pct, "percent")
        telemetry.emit("high_temp", settings["high_temp"], "celsius")
        alarm = t > settings["high_temp"]
        if alarm != settings["alarm"]:
            settings["alarm"] = alarm
            if alarm:
                log.log(log.Level.WARN, f"temperature {t:.1f} C is above {settings['high_temp']:.1f} C")
            else:
                log.log(log.Level.INFO, f"temperature {t:.1f} C is back under {settings['high_temp']:.1f} C")
        leds.set(LED, colour_for(t))
        leds.show()

    def on_command(self, name, args):
        if name == "status":
            return f"alarm above {settings['high_temp']:.1f} C"
        raise Err(f"unknown command {name!r}; try 'status'")
