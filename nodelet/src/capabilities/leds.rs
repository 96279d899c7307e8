use super::list;
use crate::bindings::leds::Host;
use crate::bindings::types::{HwError, Rgb as WitRgb};
use crate::hardware::{DeviceResult, LedStrip, Rgb};
use crate::sandbox::state::HostState;
use harvester_api::Capability;
use std::sync::{Arc, Mutex};

/// The strip's frame, shared by all plugins of a node: each writes only its
/// granted indices, and `show` sends the whole frame.
pub struct LedBuffer {
    strip: Option<Arc<dyn LedStrip>>,
    frame: Mutex<Vec<Rgb>>,
}

impl LedBuffer {
    pub fn new(strip: Option<Arc<dyn LedStrip>>) -> LedBuffer {
        let len = strip.as_ref().map_or(0, |s| s.len());
        LedBuffer {
            strip,
            frame: Mutex::new(vec![Rgb::OFF; len]),
        }
    }

    pub fn len(&self) -> usize {
        self.frame.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The buffered frame (what the next `show` sends).
    pub fn frame(&self) -> Vec<Rgb> {
        self.frame.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, index: usize, color: Rgb) -> bool {
        let mut f = self.frame.lock().unwrap_or_else(|e| e.into_inner());
        match f.get_mut(index) {
            Some(px) => {
                *px = color;
                true
            }
            None => false,
        }
    }

    fn show(&self) -> DeviceResult<()> {
        let frame = self.frame();
        match &self.strip {
            Some(s) => s.write_frame(&frame),
            None => Ok(()),
        }
    }
}

impl Host for HostState {
    fn count(&mut self) -> u32 {
        self.ctx.leds.len() as u32
    }

    fn set(&mut self, index: u32, color: WitRgb) -> Result<(), HwError> {
        if !self.ctx.grants.allows_led(index) {
            let granted = self
                .ctx
                .grants
                .leds
                .as_ref()
                .map(|g| list(&g.indices))
                .unwrap_or_default();
            return Err(self.deny(
                Capability::Leds,
                format!("LED {index} is not granted (granted: {granted})"),
            ));
        }
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
