//! Locks whose holder may have panicked.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, taking the data even if a holder panicked: the state behind
/// every berth mutex stays consistent between statements, and a daemon that
/// refused all further work after one panic would lose more than it protects.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    #[test]
    fn a_poisoned_lock_still_yields_its_data() {
        let m = Arc::new(Mutex::new(5));
        let m2 = Arc::clone(&m);
        let _ = std::thread::spawn(move || {
            let _g = m2.lock();
            panic!("poison it");
        })
        .join();
        assert!(m.is_poisoned());
        assert_eq!(*super::lock(&m), 5);
    }
}
