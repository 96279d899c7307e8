use crate::bindings::buzzer::{Host, Pattern};
use crate::bindings::types::HwError;
use crate::hardware::BuzzerPattern;
use crate::sandbox::state::HostState;

impl HostState {
    fn buzzer(&self) -> Result<std::sync::Arc<dyn crate::hardware::Buzzer>, HwError> {
        // The grant itself was checked at link time: without it this
        // interface is not even linked.
        self.ctx
            .hardware
            .buzzer
            .clone()
            .ok_or_else(|| HostState::absent("buzzer"))
    }
}

impl Host for HostState {
    fn beep(&mut self, p: Pattern) -> Result<(), HwError> {
        let pattern = match p {
            Pattern::Short => BuzzerPattern::Short,
            Pattern::Triple => BuzzerPattern::Triple,
            Pattern::Long => BuzzerPattern::Long,
        };
        Ok(self.buzzer()?.play(pattern)?)
    }

    fn tone(&mut self, on: bool) -> Result<(), HwError> {
        Ok(self.buzzer()?.tone(on)?)
    }
}
