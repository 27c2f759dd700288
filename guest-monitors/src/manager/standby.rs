//! [`Gate`]: the fabric handler of a manager that may be standing by. Until the manager leads,
//! it refuses every request with `Unavailable` and a message naming the leader (which
//! `ManagerClient` follows); once the manager leads, it hands every request to the manager's
//! service.

use std::sync::{Arc, OnceLock, RwLock};

use lego_fabric::{Dispatch, ErrorCode, Handler, RemoteError, Request, RequestContext};
use lego_monitor_client::proto::manager::standby_refusal;

/// Refuses requests while standing by; serves them through the active handler once leading.
#[derive(Default)]
pub struct Gate {
    active: OnceLock<Arc<dyn Handler>>,
    leader: RwLock<Option<String>>,
}

impl Gate {
    /// A gate standing by, with no leader known.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the leader's address to name in refusals (`None`: no leader now).
    pub fn set_leader(&self, leader: Option<&str>) {
        *self.leader.write().unwrap_or_else(|e| e.into_inner()) = leader.map(str::to_string);
    }

    /// Starts serving every request through `handler` (once; later calls are ignored).
    pub fn activate(&self, handler: Arc<dyn Handler>) {
        let _ = self.active.set(handler);
    }

    /// Whether the gate serves.
    pub fn is_active(&self) -> bool {
        self.active.get().is_some()
    }
}

impl Handler for Gate {
    fn handle(&self, ctx: &RequestContext, req: Request) -> Result<Vec<u8>, RemoteError> {
        match self.active.get() {
            Some(h) => h.handle(ctx, req),
            None => {
                let leader = self.leader.read().unwrap_or_else(|e| e.into_inner());
                Err(RemoteError::new(
                    ErrorCode::Unavailable,
                    standby_refusal(leader.as_deref()),
                ))
            }
        }
    }

    fn dispatch(&self, req: &Request) -> Dispatch {
        match self.active.get() {
            Some(h) => h.dispatch(req),
            None => Dispatch::Inline,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lego_monitor_client::proto::manager::parse_standby_refusal;

    #[test]
    fn a_standby_refusal_names_the_leader() {
        assert_eq!(
            parse_standby_refusal(&standby_refusal(Some("10.0.0.1:7300"))),
            Some(Some("10.0.0.1:7300"))
        );
        assert_eq!(parse_standby_refusal(&standby_refusal(None)), Some(None));
        assert_eq!(parse_standby_refusal("vNode 3 is unknown"), None);
    }
}
