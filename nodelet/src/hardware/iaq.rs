//! Indoor air quality (IAQ) from BME680 gas resistance and humidity.
//!
//! Bosch's own IAQ algorithm (BSEC) is a closed binary, so we use the open
//! method popularised by the Pimoroni BME680 examples:
//!
//! 1. Burn-in: the first `burn_in_samples` gas readings (5 min at a 3 s tick on
//!    a real sensor) only learn the baseline, the mean of the last 50 of them.
//!    Meanwhile the reading is flagged `calibrating` and the IAQ is an estimate
//!    against the best gas value seen so far.
//! 2. Score (0-100, higher is cleaner): 75 points for gas, `75 * gas / baseline`
//!    capped at 75 (higher resistance means fewer volatile compounds), and 25
//!    points for humidity, full at 40 %RH and falling linearly to 0 at 0 and
//!    100 %RH.
//! 3. IAQ = (100 - score) * 5, on the 0 (clean) .. 500 (very polluted) scale the
//!    dashboard and the LED rules use.
//!
//! The baseline keeps drifting up slowly when the air is cleaner than ever
//! seen, so a sensor that burned in a stuffy room corrects itself.

use std::collections::VecDeque;

const HUMIDITY_BASELINE: f32 = 40.0;
const HUMIDITY_WEIGHT: f32 = 25.0;
const BASELINE_WINDOW: usize = 50;

#[derive(Debug, Clone)]
pub struct IaqEstimator {
    burn_in_samples: usize,
    seen: usize,
    window: VecDeque<f32>,
    best: f32,
    baseline: Option<f32>,
}

impl IaqEstimator {
    pub fn new(burn_in_samples: usize) -> IaqEstimator {
        IaqEstimator {
            burn_in_samples,
            seen: 0,
            window: VecDeque::with_capacity(BASELINE_WINDOW),
            best: 0.0,
            baseline: None,
        }
    }

    /// Feeds one reading; returns `(iaq, calibrating)`.
    pub fn update(&mut self, gas_ohms: f32, humidity_pct: f32) -> (f32, bool) {
        self.seen += 1;
        self.best = self.best.max(gas_ohms);
        let calibrating = match self.baseline {
            Some(ref mut b) => {
                if gas_ohms > *b {
                    // Cleaner than the baseline: move 1% of the way towards it.
                    *b += (gas_ohms - *b) * 0.01;
                }
                false
            }
            None => {
                if self.window.len() == BASELINE_WINDOW {
                    self.window.pop_front();
                }
                self.window.push_back(gas_ohms);
                if self.seen >= self.burn_in_samples {
                    self.baseline = Some(self.window.iter().sum::<f32>() / self.window.len() as f32);
                    false
                } else {
                    true
                }
            }
        };
        let baseline = self.baseline.unwrap_or(self.best).max(1.0);
        (score_to_iaq(gas_ohms, humidity_pct, baseline), calibrating)
    }

    pub fn baseline(&self) -> Option<f32> {
        self.baseline
    }
}

fn score_to_iaq(gas: f32, humidity: f32, baseline: f32) -> f32 {
    let offset = humidity - HUMIDITY_BASELINE;
    let hum_score = if offset > 0.0 {
        (100.0 - HUMIDITY_BASELINE - offset) / (100.0 - HUMIDITY_BASELINE) * HUMIDITY_WEIGHT
    } else {
        (HUMIDITY_BASELINE + offset) / HUMIDITY_BASELINE * HUMIDITY_WEIGHT
    };
    let gas_weight = 100.0 - HUMIDITY_WEIGHT;
    let gas_score = (gas / baseline * gas_weight).min(gas_weight);
    let score = (hum_score.clamp(0.0, HUMIDITY_WEIGHT) + gas_score.max(0.0)).clamp(0.0, 100.0);
    (100.0 - score) * 5.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calibrates_for_the_burn_in_then_scores_clean_air_near_zero() {
        let mut iaq = IaqEstimator::new(5);
        for _ in 0..4 {
            assert!(iaq.update(100_000.0, 40.0).1);
        }
        let (value, calibrating) = iaq.update(100_000.0, 40.0);
        assert!(!calibrating);
        assert!(value < 1.0, "clean air at ideal humidity scores ~0, got {value}");
        assert_eq!(iaq.baseline(), Some(100_000.0));
    }

    #[test]
    fn polluted_air_scores_high() {
        let mut iaq = IaqEstimator::new(1);
        iaq.update(100_000.0, 40.0);
        let (value, _) = iaq.update(20_000.0, 40.0);
        // Gas at 20% of baseline: score 25 + 15 = 40, IAQ 300.
        assert!((value - 300.0).abs() < 1.0, "{value}");
        let (humid, _) = iaq.update(100_000.0, 90.0);
        assert!(humid > 50.0 && humid < 120.0, "{humid}");
    }
}
