//! A register-level BME680 for machines without one.
//!
//! It answers I2C the way the chip does (register pointer with
//! auto-increment, register/value pairs on write, chip id 0x61 at 0xD0,
//! calibration at 0x89.. and 0xE1..), and on a forced-mode write to 0x74 it
//! "measures": it fills the data registers 0x1D..0x2B with raw ADC values
//! that the chip's own compensation formulas turn back into the simulated
//! room's temperature, humidity, pressure and gas resistance. The real
//! `bme680` driver therefore runs unchanged on top of it.

use super::world::SimWorld;
use std::sync::Arc;

const CHIP_ID_REG: u8 = 0xD0;
const CHIP_ID: u8 = 0x61;
const RESET_REG: u8 = 0xE0;
const RESET_CMD: u8 = 0xB6;
const CTRL_MEAS: u8 = 0x74;
const FIELD0: u8 = 0x1D;

/// Calibration of one real sensor, as the compensation formulas use it.
#[derive(Debug, Clone, Copy)]
struct Calib {
    t1: u16,
    t2: i16,
    t3: i8,
    p1: u16,
    p2: i16,
    p3: i8,
    p4: i16,
    p5: i16,
    p6: i8,
    p7: i8,
    p8: i16,
    p9: i16,
    p10: u8,
    h1: u16,
    h2: u16,
    h3: i8,
    h4: i8,
    h5: i8,
    h6: u8,
    h7: i8,
    range_sw_err: u8,
}

const CALIB: Calib = Calib {
    t1: 26115,
    t2: 26166,
    t3: 3,
    p1: 36186,
    p2: -10474,
    p3: 88,
    p4: 7005,
    p5: -95,
    p6: 30,
    p7: 60,
    p8: -3019,
    p9: -2521,
    p10: 30,
    h1: 760,
    h2: 1020,
    h3: 0,
    h4: 45,
    h5: 20,
    h6: 120,
    h7: -100,
    range_sw_err: 0,
};

pub struct FakeBme680 {
    regs: [u8; 256],
    pointer: u8,
    world: Arc<SimWorld>,
    measurements: u64,
}

impl FakeBme680 {
    pub fn new(world: Arc<SimWorld>) -> FakeBme680 {
        let mut fake = FakeBme680 {
            regs: [0; 256],
            pointer: 0,
            world,
            measurements: 0,
        };
        fake.reset();
        fake
    }

    /// How many measurements the chip has taken (for tests).
    pub fn measurements(&self) -> u64 {
        self.measurements
    }

    fn reset(&mut self) {
        self.regs = [0; 256];
        self.regs[CHIP_ID_REG as usize] = CHIP_ID;
        let c = CALIB;
        let mut put16 = |lsb: u8, v: u16| {
            self.regs[lsb as usize] = (v & 0xFF) as u8;
            self.regs[lsb as usize + 1] = (v >> 8) as u8;
        };
        put16(0xE9, c.t1);
        put16(0x8A, c.t2 as u16);
        put16(0x8E, c.p1);
        put16(0x90, c.p2 as u16);
        put16(0x94, c.p4 as u16);
        put16(0x96, c.p5 as u16);
        put16(0x9C, c.p8 as u16);
        put16(0x9E, c.p9 as u16);
        put16(0xEB, (-12000i16) as u16);
        let r = &mut self.regs;
        r[0x8C] = c.t3 as u8;
        r[0x92] = c.p3 as u8;
        r[0x99] = c.p6 as u8;
        r[0x98] = c.p7 as u8;
        r[0xA0] = c.p10;
        // h1 and h2 share 0xE2: h1 in its low nibble, h2 in its high one.
        r[0xE3] = (c.h1 >> 4) as u8;
        r[0xE2] = ((c.h1 & 0x0F) as u8) | (((c.h2 & 0x0F) as u8) << 4);
        r[0xE1] = (c.h2 >> 4) as u8;
        r[0xE4] = c.h3 as u8;
        r[0xE5] = c.h4 as u8;
        r[0xE6] = c.h5 as u8;
        r[0xE7] = c.h6;
        r[0xE8] = c.h7 as u8;
        r[0xED] = (-38i8) as u8;
        r[0xEE] = 18;
        r[0x00] = 40;
        r[0x02] = 1 << 4;
        r[0x04] = c.range_sw_err << 4;
    }

    /// An I2C write: the first byte sets the register pointer; then
    /// register/value pairs, as the chip's I2C protocol defines.
    pub fn write(&mut self, bytes: &[u8]) {
        let Some((&first, rest)) = bytes.split_first() else {
            return;
        };
        self.pointer = first;
        let mut reg = first;
        let mut values = rest.iter();
        while let Some(&value) = values.next() {
            self.write_register(reg, value);
            match values.next() {
                Some(&next) => reg = next,
                None => break,
            }
        }
    }

    /// An I2C read from the register pointer, auto-incrementing.
    pub fn read(&mut self, buf: &mut [u8]) {
        for b in buf.iter_mut() {
            *b = self.regs[self.pointer as usize];
            self.pointer = self.pointer.wrapping_add(1);
        }
    }

    fn write_register(&mut self, reg: u8, value: u8) {
        match reg {
            RESET_REG if value == RESET_CMD => self.reset(),
            CHIP_ID_REG => {}
            0x89..=0xA1 | 0xE1..=0xEF | 0x00..=0x04 => {}
            CTRL_MEAS => {
                if value & 0x03 == 0x01 {
                    self.measure();
                    // The chip returns to sleep after a forced measurement.
                    self.regs[CTRL_MEAS as usize] = value & !0x03;
                } else {
                    self.regs[CTRL_MEAS as usize] = value;
                }
            }
            _ => self.regs[reg as usize] = value,
        }
    }

    fn measure(&mut self) {
        self.measurements += 1;
        let env = self.world.room();
        let temp_adc = search(
            0,
            (1 << 20) - 1,
            |adc| temperature(adc).0 as i64,
            (env.temperature_c * 100.0) as i64,
        );
        let t_fine = temperature(temp_adc).1;
        // The formula is only meaningful (and monotonic) over real pressures.
        let pres_adc = search(
            PRES_ADC_LO,
            PRES_ADC_HI,
            |adc| pressure(t_fine, adc) as i64,
            (env.pressure_hpa * 100.0) as i64,
        );
        let hum_adc = search(
            HUM_ADC_LO,
            HUM_ADC_HI,
            |adc| humidity(t_fine, adc as u16) as i64,
            (env.humidity_pct * 1000.0) as i64,
        );
        let (gas_range, gas_adc) = gas_raw(env.gas_ohms);

        let r = &mut self.regs;
        let base = FIELD0 as usize;
        r[base] = 0x80; // new data, gas index 0
        r[base + 1] = (self.measurements & 0xFF) as u8;
        r[base + 2] = (pres_adc >> 12) as u8;
        r[base + 3] = (pres_adc >> 4) as u8;
        r[base + 4] = ((pres_adc & 0x0F) << 4) as u8;
        r[base + 5] = (temp_adc >> 12) as u8;
        r[base + 6] = (temp_adc >> 4) as u8;
        r[base + 7] = ((temp_adc & 0x0F) << 4) as u8;
        r[base + 8] = (hum_adc >> 8) as u8;
        r[base + 9] = (hum_adc & 0xFF) as u8;
        r[base + 13] = (gas_adc >> 2) as u8;
        // Low gas bits, gas valid (0x20), heater stable (0x10), range.
        r[base + 14] = (((gas_adc & 0x03) << 6) as u8) | 0x20 | 0x10 | gas_range;
    }
}

/// The raw value in `lo..=hi` whose compensated value is closest to `target`.
/// Works for increasing and decreasing formulas alike.
fn search(lo: u32, hi: u32, f: impl Fn(u32) -> i64, target: i64) -> u32 {
    let increasing = f(hi) >= f(lo);
    let (mut lo, mut hi) = (lo, hi);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        let v = f(mid);
        if (v < target) == increasing {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    if (f(lo) - target).abs() <= (f(hi) - target).abs() {
        lo
    } else {
        hi
    }
}

// The compensation formulas of the BME680 datasheet (integer versions), which
// the driver applies to what we put in the data registers.

fn temperature(adc: u32) -> (i16, i32) {
    let c = CALIB;
    let var1: i64 = (adc as i64 >> 3) - ((c.t1 as i64) << 1);
    let var2: i64 = (var1 * (c.t2 as i64)) >> 11;
    let var3: i64 = ((var1 >> 1) * (var1 >> 1)) >> 12;
    let var3: i64 = (var3 * ((c.t3 as i64) << 4)) >> 14;
    let t_fine = (var2 + var3) as i32;
    ((((t_fine * 5) + 128) >> 8) as i16, t_fine)
}

/// Raw pressure values spanning roughly 1150 hPa down to 300 hPa.
const PRES_ADC_LO: u32 = 270_000;
const PRES_ADC_HI: u32 = 860_000;

fn pressure(t_fine: i32, adc: u32) -> u32 {
    let c = CALIB;
    let mut var1: i32 = (t_fine >> 1) - 64000;
    let mut var2: i32 = ((((var1 >> 2) * (var1 >> 2)) >> 11) * c.p6 as i32) >> 2;
    var2 += (var1 * (c.p5 as i32)) << 1;
    var2 = (var2 >> 2) + ((c.p4 as i32) << 16);
    var1 = (((((var1 >> 2) * (var1 >> 2)) >> 13) * ((c.p3 as i32) << 5)) >> 3) + ((c.p2 as i32 * var1) >> 1);
    var1 >>= 18;
    var1 = ((32768 + var1) * c.p1 as i32) >> 15;
    let mut comp: i32 = 1048576u32.wrapping_sub(adc) as i32;
    comp = ((comp - (var2 >> 12)) as u32).wrapping_mul(3125) as i32;
    if comp >= 0x40000000 {
        comp = ((comp as u32).wrapping_div(var1 as u32) << 1) as i32;
    } else {
        comp = ((comp << 1) as u32).wrapping_div(var1 as u32) as i32;
    }
    var1 = (c.p9 as i32).wrapping_mul((comp >> 3).wrapping_mul(comp >> 3) >> 13) >> 12;
    var2 = ((comp >> 2) * c.p8 as i32) >> 13;
    let var3: i32 = ((comp >> 8)
        .wrapping_mul(comp >> 8)
        .wrapping_mul(comp >> 8)
        .wrapping_mul(c.p10 as i32))
        >> 17;
    comp += (var1 + var2 + var3 + ((c.p7 as i32) << 7)) >> 4;
    comp as u32
}

/// Raw humidity values from about 0 to 100 %RH.
const HUM_ADC_LO: u32 = 10_000;
const HUM_ADC_HI: u32 = 50_000;

fn humidity(t_fine: i32, adc: u16) -> u32 {
    // i64 keeps the search's extreme probes from overflowing; over real
    // humidities the results equal the driver's i32 arithmetic.
    let c = CALIB;
    let t_fine = t_fine as i64;
    let temp_scaled: i64 = (t_fine * 5 + 128) >> 8;
    let var1: i64 = adc as i64 - c.h1 as i64 * 16 - ((temp_scaled * c.h3 as i64 / 100) >> 1);
    let var2: i64 = (c.h2 as i64
        * (temp_scaled * c.h4 as i64 / 100
            + ((temp_scaled * (temp_scaled * c.h5 as i64 / 100)) >> 6) / 100
            + (1 << 14)))
        >> 10;
    let var3: i64 = var1 * var2;
    let var4: i64 = (((c.h6 as i64) << 7) + temp_scaled * c.h7 as i64 / 100) >> 4;
    let var5: i64 = ((var3 >> 14) * (var3 >> 14)) >> 10;
    let var6: i64 = (var4 * var5) >> 1;
    (((((var3 + var6) >> 10) * 1000) >> 12).clamp(0, 100000)) as u32
}

const GAS_LOOKUP1: [u32; 16] = [
    2147483647, 2147483647, 2147483647, 2147483647, 2147483647, 2126008810, 2147483647, 2130303777, 2147483647,
    2147483647, 2143188679, 2136746228, 2147483647, 2126008810, 2147483647, 2147483647,
];
const GAS_LOOKUP2: [u32; 16] = [
    4096000000, 2048000000, 1024000000, 512000000, 255744255, 127110228, 64000000, 32258064, 16016016, 8000000,
    4000000, 2000000, 1, 500000, 250000, 125000,
];

fn gas_resistance(adc: u16, range: u8) -> u32 {
    let var1: i64 = ((1340 + 5 * CALIB.range_sw_err as i64) * GAS_LOOKUP1[range as usize] as i64) >> 16;
    let var2: i64 = ((adc as i64) << 15) - 16777216 + var1;
    if var2 <= 0 {
        return u32::MAX;
    }
    let var3: i64 = (GAS_LOOKUP2[range as usize] as i64 * var1) >> 9;
    ((var3 + (var2 >> 1)) / var2) as u32
}

/// The range and 10-bit ADC value the chip would report for `ohms`, picking
/// the range that resolves it best, as the chip's auto-ranging does.
fn gas_raw(ohms: f32) -> (u8, u16) {
    let mut best = (0u8, 1023u16, f32::MAX);
    for range in 0..16u8 {
        if range == 12 {
            continue;
        }
        for adc in 0..=1023u16 {
            let err = ((gas_resistance(adc, range) as f32 - ohms) / ohms).abs();
            if err < best.2 {
                best = (range, adc, err);
            }
        }
    }
    (best.0, best.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pressure_search_range_covers_real_pressures() {
        let t_fine = temperature(search(0, (1 << 20) - 1, |a| temperature(a).0 as i64, 2200)).1;
        let hi = pressure(t_fine, PRES_ADC_LO);
        let lo = pressure(t_fine, PRES_ADC_HI);
        assert!(hi > 110_000 && lo < 40_000, "{lo}..{hi} Pa");
    }
}
