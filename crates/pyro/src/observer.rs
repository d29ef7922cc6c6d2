//! Progress from long operations, for front doors to render.

use std::sync::Arc;

/// Receives progress from long operations; front doors render it (phase lines, progress bars).
pub trait Observer: Send + Sync {
    /// A lifecycle phase began (`create`, `start`, `exec`, `cleanup`), with details.
    fn phase(&self, _phase: &str, _fields: &[(&str, String)]) {}
    /// A step of an environment build.
    fn build(&self, _environment: &str, _message: &str) {}
    /// Progress of pulling an image that was not in the cache.
    fn transfer(&self, _environment: &str, _event: &crate::env::Transfer) {}
    /// A sandbox with this id is about to be recorded. A front door that may drop the call
    /// midway keeps it, and removes that sandbox with [`Pyro::cleanup_sandbox`] afterwards.
    fn sandbox(&self, _id: &str) {}
}

/// An observer that ignores everything.
pub struct Quiet;
impl Observer for Quiet {}

/// Forwards build progress to an observer.
pub(crate) fn build_progress(
    observer: &Arc<dyn Observer>,
    env: &str,
) -> Box<dyn FnMut(&str) + Send> {
    let o = observer.clone();
    let env = env.to_string();
    Box::new(move |m: &str| o.build(&env, m))
}

/// Forwards pull progress to an observer.
pub(crate) fn transfer_progress(
    observer: &Arc<dyn Observer>,
    env: &str,
) -> Box<dyn FnMut(crate::env::Transfer) + Send> {
    let o = observer.clone();
    let env = env.to_string();
    Box::new(move |t| o.transfer(&env, &t))
}
