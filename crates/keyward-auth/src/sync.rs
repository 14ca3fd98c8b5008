//! The one rule for keyward's short-lived mutexes, shared by keyward-auth and
//! the keyward server.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `mutex`, ignoring poisoning.
///
/// For mutexes whose critical sections only run map and field operations
/// that leave the data consistent at every step: a panic in another holder
/// cannot have left it half-changed, so refusing the lock would only turn
/// one panic into many.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_mutex_still_locks() {
        let mutex = Mutex::new(1);
        let poisoned = std::panic::catch_unwind(|| {
            let _guard = mutex.lock().expect("not poisoned yet");
            panic!("poison it");
        });
        assert!(poisoned.is_err());
        assert!(mutex.is_poisoned());
        *lock(&mutex) += 1;
        assert_eq!(*lock(&mutex), 2);
    }
}
