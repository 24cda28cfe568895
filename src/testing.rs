//! Support for fuzz harnesses (covf's own and a user's): catch a panic without printing it, on the calling
//! thread only, so that tests running in parallel still report their own panics.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Once;

thread_local! {
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

static INSTALL: Once = Once::new();

/// Runs `f` and catches a panic in it. While `f` runs, this thread's panics are not printed (a fuzz
/// harness reports failures itself, with the input); panics on every other thread, and on this one
/// afterwards, go to the hook that was installed before, as if this had never run.
pub fn catch_quietly<R>(f: impl FnOnce() -> R) -> std::thread::Result<R> {
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                previous(info);
            }
        }));
    });
    let was = QUIET.with(|q| q.replace(true));
    let r = catch_unwind(AssertUnwindSafe(f));
    QUIET.with(|q| q.set(was));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catches_the_panic_and_leaves_the_thread_loud_afterwards() {
        assert_eq!(catch_quietly(|| 7).unwrap(), 7);
        let e = catch_quietly(|| panic!("boom")).unwrap_err();
        assert_eq!(e.downcast_ref::<&str>(), Some(&"boom"));
        assert!(!QUIET.with(Cell::get));
        // Nested use restores the outer state.
        catch_quietly(|| {
            let _ = catch_quietly(|| panic!("inner"));
            assert!(QUIET.with(Cell::get));
        })
        .unwrap();
        assert!(!QUIET.with(Cell::get));
    }
}
