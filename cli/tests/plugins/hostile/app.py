"""Misbehaves on request. config MODE picks what every tick does:
count (default), loop, bomb, raise, err. Commands do the same once:
loop, bomb, raise, err, pin (write an ungranted pin), led (set LED 5)."""

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import config, gpio, leds, log, telemetry
from wit_world.imports.types import Rgb

state = {"ticks": 0, "mode": "count", "hog": []}


def misbehave(what):
    if what == "loop":
        while True:
            pass
    if what == "bomb":
        while True:
            state["hog"].append(bytearray(1 << 20))
    if what == "raise":
        raise ValueError("hostile plugin raised on purpose")
    if what == "err":
        raise Err("hostile plugin returned an error on purpose")


class Lifecycle(exports.Lifecycle):
    def init(self, cfg):
        values = dict(cfg)
        state["mode"] = values.get("MODE", "count")
        if values.get("FAIL_INIT") == "1":
            raise Err("refusing to start: FAIL_INIT=1")
        print(f"hostile plugin starting in mode {state['mode']}")

    def tick(self):
        state["ticks"] += 1
        telemetry.emit("ticks", float(state["ticks"]), "count")
        misbehave(state["mode"])

    def on_command(self, name, args):
        if name == "pin":
            try:
                gpio.write(18, True)
            except Err as e:
                return f"refused: {e.value}"
            return "wrote GPIO18"
        if name == "granted-pin":
            gpio.write(17, True)
            return "wrote GPIO17"
        if name == "led":
            try:
                leds.set(5, Rgb(255, 255, 255))
            except Err as e:
                return f"refused: {e.value}"
            return "set LED 5"
        misbehave(name)
        return f"did {name}"
