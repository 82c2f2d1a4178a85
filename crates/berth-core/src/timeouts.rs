//! Every timeout Berth puts on a call to an engine or an agent, named in one place. A call gets
//! the time its work needs: a stop waits the grace period the caller gave plus a margin for the
//! engine's kill and clean-up, so a server that ignores SIGTERM (busybox `httpd`, most model
//! servers as PID 1) is stopped, not reported as an unreachable engine.

use std::time::Duration;

/// Short engine calls (inspect, list, start, remove) from the hub.
pub const ENGINE_CALL: Duration = Duration::from_secs(10);
/// Short calls to an agent's API from the hub.
pub const AGENT_CALL: Duration = Duration::from_secs(15);
/// Connecting to an agent.
pub const AGENT_CONNECT: Duration = Duration::from_secs(5);
/// What a stop may take past its grace period: the engine's SIGKILL, the wait for the process
/// to go, and the engine's own bookkeeping on a busy host.
pub const STOP_MARGIN: Duration = Duration::from_secs(30);

/// Creating or starting a container: the engine sets up its filesystem, volumes and network,
/// which on a busy host takes far longer than an inspect.
pub const CONTAINER_SETUP: Duration = Duration::from_secs(90);

/// A create through an agent: the agent pulls a missing image itself and does not report the
/// pull's progress, so the call may take as long as a large pull.
pub const AGENT_CREATE: Duration = Duration::from_secs(30 * 60);

/// How long an image pull may go without a word of progress from the engine before it is
/// given up; a pull that keeps making progress is never cut off, however long it takes.
pub const PULL_INACTIVITY: Duration = Duration::from_secs(120);

/// How long a stop (or restart) with `grace_secs` of grace may take before it is given up.
pub fn stop(grace_secs: u32) -> Duration {
    Duration::from_secs(u64::from(grace_secs)) + STOP_MARGIN
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_outlasts_its_grace() {
        assert_eq!(stop(0), STOP_MARGIN);
        assert_eq!(stop(30), Duration::from_secs(60));
        assert!(stop(30) > ENGINE_CALL && stop(10) > AGENT_CALL);
        assert!(CONTAINER_SETUP > ENGINE_CALL && CONTAINER_SETUP > AGENT_CALL);
    }
}
