//! Values that must never reach a log line: [`Redacted`] prints `<redacted>` in `Debug` and `Display`,
//! so a settings struct can derive `Debug` and still be logged.

use std::fmt;

/// A value that must never be printed: `Debug` and `Display` show `<redacted>`. Use [`Redacted::expose`]
/// at the one place that needs the value (an HTTP header, a cipher).
#[derive(Clone, PartialEq, Eq)]
pub struct Redacted<T>(T);

impl<T> Redacted<T> {
    pub fn new(value: T) -> Redacted<T> {
        Redacted(value)
    }

    /// The secret itself. Never log it.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Redacted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl<T> fmt::Display for Redacted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::Redacted;

    #[test]
    fn redacted_never_prints() {
        let r = Redacted::new("hunter2".to_string());
        assert_eq!(format!("{r} {r:?}"), "<redacted> <redacted>");
    }
}
