//! Capability grants: the only hardware a plugin may touch.
//!
//! Deny by default: a capability absent from [`Grants`] is not granted, and a
//! granted capability is scoped (which pins, which bus and addresses, which LED
//! indices, which hosts). `log`, `telemetry` and `config` touch nothing outside
//! the plugin and are always granted.

use crate::validation::ValidationErrors;
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeSet;
use std::fmt;

/// The WIT package every capability interface belongs to.
pub const WIT_PACKAGE: &str = "harvester:plugin";
/// The WIT package version the host implements.
pub const WIT_VERSION: &str = "0.1.0";

/// Highest BCM GPIO number on the 40-pin header of a Raspberry Pi.
pub const MAX_BCM_PIN: u8 = 27;
/// Longest WS2812B strip a grant may address.
pub const MAX_LED_INDEX: u32 = 1023;

/// One capability interface of the `harvester:plugin` package.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Capability {
    Gpio,
    I2c,
    Leds,
    Buzzer,
    Dht22,
    Bme680,
    System,
    Net,
    Log,
    Telemetry,
    Config,
}

impl Capability {
    pub const ALL: [Capability; 11] = [
        Capability::Gpio,
        Capability::I2c,
        Capability::Leds,
        Capability::Buzzer,
        Capability::Dht22,
        Capability::Bme680,
        Capability::System,
        Capability::Net,
        Capability::Log,
        Capability::Telemetry,
        Capability::Config,
    ];

    /// The WIT interface name, as written in a manifest's `grants`.
    pub fn name(self) -> &'static str {
        match self {
            Capability::Gpio => "gpio",
            Capability::I2c => "i2c",
            Capability::Leds => "leds",
            Capability::Buzzer => "buzzer",
            Capability::Dht22 => "dht22",
            Capability::Bme680 => "bme680",
            Capability::System => "system",
            Capability::Net => "net",
            Capability::Log => "log",
            Capability::Telemetry => "telemetry",
            Capability::Config => "config",
        }
    }

    /// Capabilities that touch nothing outside the plugin.
    pub fn always_granted(self) -> bool {
        matches!(self, Capability::Log | Capability::Telemetry | Capability::Config)
    }

    /// Parses an import name such as `harvester:plugin/gpio@0.1.0`.
    pub fn from_interface(import: &str) -> Option<Capability> {
        let rest = import.strip_prefix(WIT_PACKAGE)?.strip_prefix('/')?;
        let name = rest.split('@').next()?;
        Capability::ALL.into_iter().find(|c| c.name() == name)
    }

    /// The fully qualified interface name this host implements.
    pub fn interface(self) -> String {
        format!("{WIT_PACKAGE}/{}@{WIT_VERSION}", self.name())
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a manifest grants one plugin.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Grants {
    /// GPIO pins the plugin may read and write, by BCM number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpio: Option<GpioGrant>,
    /// I2C bus addresses the plugin may talk to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub i2c: Option<I2cGrant>,
    /// WS2812B LEDs of the board's strip the plugin may set, by index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leds: Option<LedsGrant>,
    /// The buzzer (`buzzer:` with nothing after it grants it with defaults).
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub buzzer: Option<BuzzerGrant>,
    /// A DHT22 temperature and humidity sensor on one pin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dht22: Option<Dht22Grant>,
    /// The BME680 environment sensor.
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub bme680: Option<Bme680Grant>,
    /// The board's own readings (CPU temperature, load, memory).
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub system: Option<SystemGrant>,
    /// Network access, to the hosts listed only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<NetGrant>,
}

/// `buzzer:` with nothing after it means "granted with defaults", not "absent".
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Some(Option::<T>::deserialize(d)?.unwrap_or_default()))
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GpioGrant {
    /// BCM GPIO numbers (0-27); a pin is granted to one plugin per node.
    pub pins: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct I2cGrant {
    /// The I2C bus number (default 1).
    #[serde(default = "default_i2c_bus")]
    pub bus: u8,
    /// 7-bit device addresses (0x03-0x77).
    pub addresses: Vec<u8>,
}

fn default_i2c_bus() -> u8 {
    1
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LedsGrant {
    /// Positions on the strip, from 0; an LED is granted to one plugin per node.
    pub indices: Vec<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BuzzerGrant {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Dht22Grant {
    /// The BCM GPIO the sensor's data line is on.
    pub pin: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Bme680Grant {
    /// The sensor's I2C address (default 0x77).
    #[serde(default = "default_bme680_address")]
    pub address: u8,
}

impl Default for Bme680Grant {
    fn default() -> Self {
        Bme680Grant {
            address: default_bme680_address(),
        }
    }
}

fn default_bme680_address() -> u8 {
    0x77
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SystemGrant {}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NetGrant {
    /// Host names or IP addresses the plugin may reach.
    pub hosts: Vec<String>,
}

impl Grants {
    /// Whether the capability is granted at all (scope aside).
    pub fn grants(&self, cap: Capability) -> bool {
        match cap {
            Capability::Gpio => self.gpio.is_some(),
            Capability::I2c => self.i2c.is_some(),
            Capability::Leds => self.leds.is_some(),
            Capability::Buzzer => self.buzzer.is_some(),
            Capability::Dht22 => self.dht22.is_some(),
            Capability::Bme680 => self.bme680.is_some(),
            Capability::System => self.system.is_some(),
            Capability::Net => self.net.is_some(),
            Capability::Log | Capability::Telemetry | Capability::Config => true,
        }
    }

    /// The granted capabilities, always-granted ones included.
    pub fn capabilities(&self) -> BTreeSet<Capability> {
        Capability::ALL.into_iter().filter(|c| self.grants(*c)).collect()
    }

    pub fn allows_gpio_pin(&self, pin: u8) -> bool {
        self.gpio.as_ref().is_some_and(|g| g.pins.contains(&pin))
    }

    pub fn allows_i2c(&self, bus: u8, address: u8) -> bool {
        self.i2c
            .as_ref()
            .is_some_and(|g| g.bus == bus && g.addresses.contains(&address))
    }

    pub fn allows_led(&self, index: u32) -> bool {
        self.leds.as_ref().is_some_and(|g| g.indices.contains(&index))
    }

    pub fn allows_dht22_pin(&self, pin: u8) -> bool {
        self.dht22.as_ref().is_some_and(|g| g.pin == pin)
    }

    pub fn allows_host(&self, host: &str) -> bool {
        self.net
            .as_ref()
            .is_some_and(|g| g.hosts.iter().any(|h| h.eq_ignore_ascii_case(host)))
    }

    /// Output pins this plugin drives; two plugins on one node may not share one.
    pub fn output_pins(&self) -> BTreeSet<u8> {
        let mut pins: BTreeSet<u8> = self.gpio.iter().flat_map(|g| g.pins.iter().copied()).collect();
        pins.extend(self.dht22.iter().map(|g| g.pin));
        pins
    }

    /// Whether these grants hold anything no other plugin on the node may
    /// hold too (an output pin, an LED).
    pub fn holds_exclusive(&self) -> bool {
        !self.output_pins().is_empty() || self.leds.as_ref().is_some_and(|l| !l.indices.is_empty())
    }

    /// The LED indices granted.
    pub fn led_indices(&self) -> BTreeSet<u32> {
        self.leds.iter().flat_map(|l| l.indices.iter().copied()).collect()
    }

    /// The first exclusive resource both grant, if any: an output pin or an
    /// LED index. Two plugins on one node may not share those.
    pub fn clash(&self, other: &Grants) -> Option<String> {
        let mut held = Holdings::default();
        held.take("other", other);
        held.clashes(self).first().map(|c| c.what.to_string())
    }

    /// Checks every scope; `path` is where these grants sit, like `spec.grants`.
    pub fn validate(&self, path: &str, errors: &mut ValidationErrors) {
        if let Some(g) = &self.gpio {
            if g.pins.is_empty() {
                errors.push(
                    format!("{path}.gpio.pins"),
                    "grant at least one pin, or drop the gpio grant",
                );
            }
            check_pins(&g.pins, &format!("{path}.gpio.pins"), errors);
        }
        if let Some(g) = &self.i2c {
            if g.bus > 22 {
                errors.push(
                    format!("{path}.i2c.bus"),
                    format!("bus {} does not exist (0-22)", g.bus),
                );
            }
            if g.addresses.is_empty() {
                errors.push(format!("{path}.i2c.addresses"), "grant at least one address");
            }
            let mut seen = BTreeSet::new();
            for (i, a) in g.addresses.iter().enumerate() {
                if !(0x03..=0x77).contains(a) {
                    errors.push(
                        format!("{path}.i2c.addresses[{i}]"),
                        format!("address {a:#04x} is reserved or out of range (0x03-0x77)"),
                    );
                }
                if !seen.insert(*a) {
                    errors.push(
                        format!("{path}.i2c.addresses[{i}]"),
                        format!("address {a:#04x} is listed twice"),
                    );
                }
            }
        }
        if let Some(g) = &self.leds {
            if g.indices.is_empty() {
                errors.push(format!("{path}.leds.indices"), "grant at least one LED index");
            }
            let mut seen = BTreeSet::new();
            for (i, idx) in g.indices.iter().enumerate() {
                if *idx > MAX_LED_INDEX {
                    errors.push(
                        format!("{path}.leds.indices[{i}]"),
                        format!("LED index {idx} is out of range (0-{MAX_LED_INDEX})"),
                    );
                }
                if !seen.insert(*idx) {
                    errors.push(
                        format!("{path}.leds.indices[{i}]"),
                        format!("LED index {idx} is listed twice"),
                    );
                }
            }
        }
        if let Some(g) = &self.dht22 {
            check_pins(&[g.pin], &format!("{path}.dht22.pin"), errors);
        }
        if let Some(g) = &self.bme680
            && g.address != 0x76
            && g.address != 0x77
        {
            errors.push(
                format!("{path}.bme680.address"),
                format!("a BME680 answers at 0x76 or 0x77, not {:#04x}", g.address),
            );
        }
        if let (Some(gpio), Some(dht)) = (&self.gpio, &self.dht22)
            && gpio.pins.contains(&dht.pin)
        {
            errors.push(
                format!("{path}.dht22.pin"),
                format!("pin {} is also granted as plain gpio; a pin has one use", dht.pin),
            );
        }
        if let Some(g) = &self.net {
            if g.hosts.is_empty() {
                errors.push(format!("{path}.net.hosts"), "grant at least one host");
            }
            for (i, h) in g.hosts.iter().enumerate() {
                if h.is_empty() || h.len() > 253 || !h.chars().all(|c| c.is_ascii_alphanumeric() || ".-:".contains(c)) {
                    errors.push(
                        format!("{path}.net.hosts[{i}]"),
                        format!("{h:?} is not a host name or IP address"),
                    );
                }
            }
        }
    }
}

fn check_pins(pins: &[u8], path: &str, errors: &mut ValidationErrors) {
    let mut seen = BTreeSet::new();
    for (i, pin) in pins.iter().enumerate() {
        let at = if pins.len() == 1 && !path.ends_with('s') {
            path.to_string()
        } else {
            format!("{path}[{i}]")
        };
        if *pin > MAX_BCM_PIN {
            errors.push(
                at.clone(),
                format!("pin {pin} is not a valid BCM GPIO (0-{MAX_BCM_PIN})"),
            );
        }
        if !seen.insert(*pin) {
            errors.push(at, format!("pin {pin} is listed twice"));
        }
    }
}

/// Something only one plugin on a node may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exclusive {
    /// An output pin (a `gpio` pin or the `dht22` data pin).
    Pin(u8),
    Led(u32),
}

impl fmt::Display for Exclusive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exclusive::Pin(p) => write!(f, "GPIO pin {p}"),
            Exclusive::Led(i) => write!(f, "LED {i}"),
        }
    }
}

/// A resource a plugin wants that another already holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clash<'a> {
    pub what: Exclusive,
    pub holder: &'a str,
}

/// Who holds each output pin and LED on one node: the one rule for
/// exclusive grants, used by the standalone manifest, the hub's placement
/// and its apply-time admission check alike.
#[derive(Debug, Clone, Default)]
pub struct Holdings<'a> {
    pins: std::collections::BTreeMap<u8, &'a str>,
    leds: std::collections::BTreeMap<u32, &'a str>,
}

impl<'a> Holdings<'a> {
    /// What `grants` would take from someone else: pins first, then LEDs.
    pub fn clashes(&self, grants: &Grants) -> Vec<Clash<'a>> {
        let pins = grants
            .output_pins()
            .into_iter()
            .filter_map(|p| self.pins.get(&p).map(|h| (Exclusive::Pin(p), *h)));
        let leds = grants
            .led_indices()
            .into_iter()
            .filter_map(|i| self.leds.get(&i).map(|h| (Exclusive::Led(i), *h)));
        pins.chain(leds).map(|(what, holder)| Clash { what, holder }).collect()
    }

    /// Records `holder` as holding everything exclusive in `grants`.
    pub fn take(&mut self, holder: &'a str, grants: &Grants) {
        self.pins.extend(grants.output_pins().into_iter().map(|p| (p, holder)));
        self.leds.extend(grants.led_indices().into_iter().map(|i| (i, holder)));
    }

    /// Takes everything in `grants` for `holder`, or nothing if any of it
    /// is held by someone else already.
    pub fn claim(&mut self, holder: &'a str, grants: &Grants) -> Result<(), Vec<Clash<'a>>> {
        let clashes = self.clashes(grants);
        if !clashes.is_empty() {
            return Err(clashes);
        }
        self.take(holder, grants);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Grants, String> {
        serde_yaml::from_str(yaml).map_err(|e| e.to_string())
    }

    #[test]
    fn output_pins_and_leds_clash_inputs_and_buses_do_not() {
        let a = parse("{gpio: {pins: [17]}, leds: {indices: [1]}, i2c: {bus: 1, addresses: [0x77]}}").unwrap();
        let pin = parse("{gpio: {pins: [27, 17]}}").unwrap();
        let dht_on_17 = parse("{dht22: {pin: 17}}").unwrap();
        let led = parse("{leds: {indices: [2, 1]}}").unwrap();
        let bus = parse("{i2c: {bus: 1, addresses: [0x77]}}").unwrap();
        assert_eq!(a.clash(&pin).as_deref(), Some("GPIO pin 17"));
        assert_eq!(a.clash(&dht_on_17).as_deref(), Some("GPIO pin 17"));
        assert_eq!(led.clash(&a).as_deref(), Some("LED 1"));
        assert_eq!(a.clash(&bus), None, "a shared I2C bus is serialised, not refused");
        assert_eq!(pin.clash(&led), None);
    }

    #[test]
    fn a_claim_takes_all_or_nothing_and_names_every_clash() {
        let a = parse("{gpio: {pins: [17, 27]}, leds: {indices: [1]}}").unwrap();
        let b = parse("{dht22: {pin: 27}, leds: {indices: [1, 2]}}").unwrap();
        let c = parse("{leds: {indices: [2]}}").unwrap();
        let mut held = Holdings::default();
        assert!(held.claim("a", &a).is_ok());
        let clashes = held.claim("b", &b).unwrap_err();
        assert_eq!(
            clashes,
            vec![
                Clash {
                    what: Exclusive::Pin(27),
                    holder: "a"
                },
                Clash {
                    what: Exclusive::Led(1),
                    holder: "a"
                }
            ]
        );
        // b took nothing, so LED 2 is still free.
        assert!(held.claim("c", &c).is_ok());
        let last = &held.clashes(&b)[2];
        assert_eq!((last.what.to_string(), last.holder), ("LED 2".to_string(), "c"));
    }

    #[test]
    fn nothing_is_granted_by_default() {
        let g = parse("{}").unwrap();
        assert!(!g.grants(Capability::Gpio));
        assert!(!g.allows_gpio_pin(17));
        assert!(g.grants(Capability::Log));
        assert_eq!(
            g.capabilities().into_iter().collect::<Vec<_>>(),
            vec![Capability::Log, Capability::Telemetry, Capability::Config]
        );
    }

    #[test]
    fn scopes_are_exact() {
        let g = parse(
            "gpio: {pins: [17]}\ni2c: {bus: 1, addresses: [0x77]}\nleds: {indices: [1]}\nnet: {hosts: [127.0.0.1]}",
        )
        .unwrap();
        assert!(g.allows_gpio_pin(17) && !g.allows_gpio_pin(18));
        assert!(g.allows_i2c(1, 0x77) && !g.allows_i2c(1, 0x76) && !g.allows_i2c(0, 0x77));
        assert!(g.allows_led(1) && !g.allows_led(0));
        assert!(g.allows_host("127.0.0.1") && !g.allows_host("127.0.0.2"));
    }

    #[test]
    fn an_empty_grant_means_granted_with_defaults() {
        let g = parse("buzzer:\nbme680:\nsystem: {}").unwrap();
        assert!(g.grants(Capability::Buzzer) && g.grants(Capability::System));
        assert_eq!(g.bme680.unwrap().address, 0x77);
    }

    #[test]
    fn unknown_capabilities_are_rejected_by_name() {
        let err = parse("camera: {}").unwrap_err();
        assert!(err.contains("unknown field `camera`"), "{err}");
        let err = parse("gpio: {pins: [4], mode: out}").unwrap_err();
        assert!(err.contains("unknown field `mode`"), "{err}");
    }

    #[test]
    fn validation_names_the_field_path() {
        let g = parse("gpio: {pins: [4, 17, 41]}\nleds: {indices: [1, 1]}\ndht22: {pin: 4}").unwrap();
        let mut errs = ValidationErrors::default();
        g.validate("spec.grants", &mut errs);
        let text = errs.to_string();
        assert!(
            text.contains("spec.grants.gpio.pins[2]: pin 41 is not a valid BCM GPIO (0-27)"),
            "{text}"
        );
        assert!(
            text.contains("spec.grants.leds.indices[1]: LED index 1 is listed twice"),
            "{text}"
        );
        assert!(
            text.contains("spec.grants.dht22.pin: pin 4 is also granted as plain gpio"),
            "{text}"
        );
    }

    #[test]
    fn interface_names_round_trip() {
        assert_eq!(
            Capability::from_interface("harvester:plugin/gpio@0.1.0"),
            Some(Capability::Gpio)
        );
        assert_eq!(Capability::from_interface("harvester:plugin/camera@0.1.0"), None);
        assert_eq!(Capability::from_interface("wasi:cli/stdout@0.2.0"), None);
        assert_eq!(Capability::Leds.interface(), "harvester:plugin/leds@0.1.0");
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// A pin list is valid exactly when every pin is a BCM GPIO and none
        /// repeats; every bad entry is reported at its own index.
        #[test]
        fn gpio_pin_validation_matches_the_rule(pins in proptest::collection::vec(0u8..40, 1..8)) {
            let g = Grants { gpio: Some(GpioGrant { pins: pins.clone() }), ..Grants::default() };
            let mut errs = ValidationErrors::default();
            g.validate("spec.grants", &mut errs);
            let mut seen = BTreeSet::new();
            let mut expected = Vec::new();
            for (i, p) in pins.iter().enumerate() {
                if *p > MAX_BCM_PIN {
                    expected.push(format!("spec.grants.gpio.pins[{i}]"));
                }
                if !seen.insert(*p) {
                    expected.push(format!("spec.grants.gpio.pins[{i}]"));
                }
            }
            let got: Vec<String> = errs.0.iter().map(|e| e.path.clone()).collect();
            prop_assert_eq!(got, expected);
            for p in 0u8..40 {
                prop_assert_eq!(g.allows_gpio_pin(p), pins.contains(&p));
            }
        }
    }
}
