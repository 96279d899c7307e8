//! The LED strip's frame, shared by all plugins of a node: each writes only
//! its granted indices, and `show` sends the whole frame.

use super::{DeviceResult, LedStrip, Rgb};
use std::sync::{Arc, Mutex, MutexGuard};

pub struct LedFrame {
    strip: Option<Arc<dyn LedStrip>>,
    frame: Mutex<Vec<Rgb>>,
}

impl LedFrame {
    pub fn new(strip: Option<Arc<dyn LedStrip>>) -> LedFrame {
        let len = strip.as_ref().map_or(0, |s| s.len());
        LedFrame {
            strip,
            frame: Mutex::new(vec![Rgb::OFF; len]),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Rgb>> {
        self.frame.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The buffered frame (what the next `show` sends).
    pub fn frame(&self) -> Vec<Rgb> {
        self.lock().clone()
    }

    /// Sets one LED of the buffered frame; false past the strip's end.
    pub fn set(&self, index: usize, color: Rgb) -> bool {
        match self.lock().get_mut(index) {
            Some(px) => {
                *px = color;
                true
            }
            None => false,
        }
    }

    /// Sends the buffered frame to the strip.
    pub fn show(&self) -> DeviceResult<()> {
        let frame = self.frame();
        match &self.strip {
            Some(s) => s.write_frame(&frame),
            None => Ok(()),
        }
    }
}
