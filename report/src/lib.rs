//! How every LegoVMM program prints an error: its message, then each cause's, joined by ": ".
//!
//! The rule across the workspace: an error that wraps a cause keeps it as its
//! [`source`](Error::source) (thiserror's `#[source]` or `#[from]`) and does not print it in
//! its own message. [`error_chain`] then prints the whole chain once, at the place that
//! reports the error (a program's exit message, a log line, a message sent to a peer).
//!
//! This crate has no dependencies, so that the lowest crates (the fabric, the guest tools) can
//! use it as well as the programs.

#![warn(missing_docs)]

use std::error::Error;

/// The error's message and its causes', outermost first, joined by ": ".
///
/// A cause whose message the text so far already ends with is left out: a few foreign errors
/// (vm-memory's, serde_json's) print their cause and also return it as their source.
pub fn error_chain(e: &dyn Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(e) = cause {
        let text = e.to_string();
        if !text.is_empty() && !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt;

    #[derive(Debug)]
    struct Wrap {
        msg: &'static str,
        source: Option<Box<dyn Error + 'static>>,
    }

    impl fmt::Display for Wrap {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.msg)
        }
    }

    impl Error for Wrap {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.source.as_deref()
        }
    }

    fn wrap(msg: &'static str, source: impl Error + 'static) -> Wrap {
        Wrap {
            msg,
            source: Some(Box::new(source)),
        }
    }

    #[test]
    fn joins_every_cause_once() {
        let io = std::io::Error::other("disk full");
        let e = wrap("cannot save the state", wrap("could not write x", io));
        assert_eq!(
            error_chain(&e),
            "cannot save the state: could not write x: disk full"
        );
    }

    #[test]
    fn an_error_without_cause_is_its_message() {
        let e = std::io::Error::other("disk full");
        assert_eq!(error_chain(&e), "disk full");
    }

    #[test]
    fn skips_a_cause_the_message_already_ends_with() {
        let io = std::io::Error::other("disk full");
        let e = wrap("could not write x: disk full", io);
        assert_eq!(error_chain(&e), "could not write x: disk full");
    }
}
