//! `leds`: the plugin's granted indices of the node's shared frame.

use super::{HostState, list};
use crate::bindings::leds::Host;
use crate::bindings::types::{HwError, Rgb as WitRgb};
use crate::hardware::Rgb;
use harvester_api::{Capability, Grants};

host_capability!(Leds, Leds, leds);

/// The grant check: a plugin sets only the LEDs it was granted.
fn check(grants: &Grants, index: u32) -> Result<(), String> {
    if grants.allows_led(index) {
        return Ok(());
    }
    let granted = grants.leds.as_ref().map(|g| list(&g.indices)).unwrap_or_default();
    Err(format!("LED {index} is not granted (granted: {granted})"))
}

impl Host for HostState {
    fn count(&mut self) -> u32 {
        self.ctx.leds.len() as u32
    }

    fn set(&mut self, index: u32, color: WitRgb) -> Result<(), HwError> {
        self.check(Capability::Leds, check(&self.ctx.grants, index))?;
        if self.ctx.leds.is_empty() {
            return Err(HostState::absent("LED strip"));
        }
        if !self.ctx.leds.set(index as usize, Rgb::new(color.r, color.g, color.b)) {
            return Err(HwError::Unavailable(format!(
                "LED {index} is past the end of this node's strip of {}",
                self.ctx.leds.len()
            )));
        }
        Ok(())
    }

    fn show(&mut self) -> Result<(), HwError> {
        if self.ctx.leds.is_empty() {
            return Err(HostState::absent("LED strip"));
        }
        Ok(self.ctx.leds.show()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use harvester_api::grants::LedsGrant;

    #[test]
    fn only_granted_indices_may_be_set() {
        let grants = Grants {
            leds: Some(LedsGrant { indices: vec![1, 2] }),
            ..Grants::default()
        };
        assert_eq!(check(&grants, 2), Ok(()));
        assert_eq!(check(&grants, 3), Err("LED 3 is not granted (granted: [1, 2])".into()));
        assert!(
            check(&Grants::default(), 0)
                .unwrap_err()
                .contains("LED 0 is not granted")
        );
    }
}
