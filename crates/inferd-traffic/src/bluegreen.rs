//! Blue-green: one environment takes all traffic; `switch` hands it to the other at once, and
//! only when that one can serve. Switching back is the rollback.

use crate::Conflict;
use crate::spec::Color;

/// The environment after a `switch` from `active`, given whether the incoming one is ready
/// (loaded, warmed, READY). Refused, changing nothing, when it is not.
pub fn switch(active: Color, incoming_ready: bool) -> Result<Color, Conflict> {
    if incoming_ready {
        Ok(active.other())
    } else {
        Err(Conflict {
            action: "switch",
            why: format!(
                "{} is not ready (loaded and warmed); {} stays active",
                name(active.other()),
                name(active)
            ),
        })
    }
}

fn name(c: Color) -> &'static str {
    match c {
        Color::Blue => "blue",
        Color::Green => "green",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switch_flips_to_a_ready_environment_and_back() {
        assert_eq!(switch(Color::Blue, true), Ok(Color::Green));
        assert_eq!(switch(Color::Green, true), Ok(Color::Blue));
    }

    #[test]
    fn switch_to_an_unready_environment_is_a_conflict() {
        let e = switch(Color::Blue, false).unwrap_err();
        assert_eq!(e.action, "switch");
        assert!(e.to_string().contains("green"), "{e}");
    }
}
