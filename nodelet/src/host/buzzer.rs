//! `buzzer`: patterns and tones, granted whole; what it plays is reported
//! for the log, the hub and its dashboard.

use super::HostState;
use crate::bindings::buzzer::{Host, Pattern};
use crate::bindings::types::HwError;
use crate::events::EventKind;
use crate::hardware::BuzzerPattern;
use std::sync::Arc;

host_capability!(Buzzer, Buzzer, buzzer);

impl HostState {
    fn buzzer(&self) -> Result<Arc<dyn crate::hardware::Buzzer>, HwError> {
        // The grant itself was checked at link time: without it this
        // interface is not even linked.
        self.ctx
            .hardware
            .buzzer
            .clone()
            .ok_or_else(|| HostState::absent("buzzer"))
    }

    fn played(&self, action: &str) {
        self.ctx.report.emit(
            &self.ctx.plugin,
            EventKind::Buzzer {
                action: action.to_string(),
            },
        );
    }
}

impl Host for HostState {
    fn beep(&mut self, p: Pattern) -> Result<(), HwError> {
        let pattern = match p {
            Pattern::Short => BuzzerPattern::Short,
            Pattern::Triple => BuzzerPattern::Triple,
            Pattern::Long => BuzzerPattern::Long,
        };
        self.buzzer()?.play(pattern)?;
        let action = match pattern {
            BuzzerPattern::Short => "short",
            BuzzerPattern::Triple => "triple",
            BuzzerPattern::Long => "long",
        };
        self.played(action);
        Ok(())
    }

    fn tone(&mut self, on: bool) -> Result<(), HwError> {
        self.buzzer()?.tone(on)?;
        self.played(if on { "tone-on" } else { "tone-off" });
        Ok(())
    }
}
