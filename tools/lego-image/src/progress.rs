//! Progress lines on standard error, one per build step.

/// Prints one progress line (`lego-image: <message>`) to standard error.
pub fn step(message: &str) {
    eprintln!("lego-image: {message}");
}
