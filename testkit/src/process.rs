//! Child processes that do not outlive a failed test.

use std::ops::{Deref, DerefMut};
use std::process::Child;

/// A child process killed (and reaped) when dropped: a test that panics midway leaves no node running
/// to take the machine's CPU and ports from the tests after it. A child that exited is left alone.
pub struct ChildGuard(pub Child);

impl Deref for ChildGuard {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for ChildGuard {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_dropped_guard_kills_its_child() {
        let child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        drop(super::ChildGuard(child));
        // Reaped by the guard: no such process any more.
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }
}
