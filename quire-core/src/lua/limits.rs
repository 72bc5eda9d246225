//! What keeps Lua code from running away, in both VMs: a memory limit on
//! the VM's allocator, and a deadline checked by an instruction-count hook.
//!
//! In the execute VM the hook is installed once, when the VM is made, on
//! its main thread.
//! Lua copies a thread's hook to every coroutine created from it, so a
//! coroutine (even one made at top level and resumed in a run-fn) is under
//! the same deadline; the deadline itself lives in a thread-local, so each
//! OS thread running a VM has its own. Once the deadline has passed, the
//! hook raises on every instruction of that coroutine, so `pcall` cannot
//! swallow it: the error is raised again at the first instruction after
//! the `pcall`. A VM that is stuck inside one long C call (a huge pattern
//! match) never reaches the hook; the runtime's watchdog handles that.
//!
//! A count hook slows every instruction (Lua traps each one while a hook
//! is set). The compile VM runs Fennel's whole compiler, and its macros
//! cannot make coroutines (Fennel's macro sandbox has no `coroutine`), so
//! it gets a [`Watchdog`] instead: a thread that installs the hook only
//! once the deadline has passed, which costs nothing before.

use std::cell::Cell;
use std::ffi::c_char;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Instant;

use mlua::{ffi, Lua};

/// Instructions between two looks at the clock.
const CHECK_EVERY: i32 = 10_000;

/// What the hook raises, after the position where it stopped.
pub const DEADLINE_MESSAGE: &str = "did not finish in time";

thread_local! {
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Limits a VM's memory to `bytes` and puts it under the thread's deadline.
pub fn install(lua: &Lua, memory_bytes: usize) -> mlua::Result<()> {
    lua.set_memory_limit(memory_bytes)?;
    reset_hook(lua)
}

/// Installs the deadline hook on `lua`'s main thread from another thread,
/// once `deadline` has passed, unless dropped before. The VM must outlive
/// the watchdog; the thread running the VM must have [`arm`]ed (or
/// [`set`]) the same deadline.
pub struct Watchdog {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    pub fn start(lua: &Lua, deadline: Instant) -> mlua::Result<Watchdog> {
        let mut state: usize = 0;
        // SAFETY: only reads the main state's address.
        unsafe { lua.exec_raw::<()>((), |s| state = s as usize)? };
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("lua deadline".into())
            .spawn(move || {
                if stopped.recv_timeout(deadline.saturating_duration_since(Instant::now()))
                    == Err(mpsc::RecvTimeoutError::Timeout)
                {
                    // SAFETY: the VM outlives the watchdog, whose drop waits
                    // for this thread; lua_sethook may be called while the
                    // VM runs ("asynchronously", in Lua's words).
                    unsafe {
                        ffi::lua_sethook(
                            state as *mut ffi::lua_State,
                            Some(deadline_hook),
                            ffi::LUA_MASKCOUNT,
                            1,
                        )
                    };
                }
            })
            .map_err(mlua::Error::external)?;
        Ok(Watchdog { stop: Some(stop), thread: Some(thread) })
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Sets the thread's deadline without touching any VM's hook (for a VM
/// under a [`Watchdog`]).
pub fn set(deadline: Instant) {
    DEADLINE.with(|d| d.set(Some(deadline)));
}

/// Sets the deadline of Lua code running on this thread from now on.
pub fn arm(lua: &Lua, deadline: Instant) -> mlua::Result<()> {
    DEADLINE.with(|d| d.set(Some(deadline)));
    reset_hook(lua)
}

/// Lifts the deadline (between phases that have their own).
pub fn disarm() {
    DEADLINE.with(|d| d.set(None));
}

/// Whether `error` is the deadline hook's.
pub fn is_deadline(error: &mlua::Error) -> bool {
    error.to_string().contains(DEADLINE_MESSAGE)
}

/// Whether `error` is an allocation refused by the memory limit.
pub fn is_out_of_memory(error: &mlua::Error) -> bool {
    match error {
        mlua::Error::MemoryError(_) => true,
        mlua::Error::CallbackError { cause, .. } | mlua::Error::WithContext { cause, .. } => {
            is_out_of_memory(cause)
        }
        other => other.to_string().contains("not enough memory"),
    }
}

/// (Re)installs the hook on the main thread at its normal rate; a hook
/// that escalated after a deadline is calmed down again.
fn reset_hook(lua: &Lua) -> mlua::Result<()> {
    // SAFETY: only sets the hook of the main state, with a hook function
    // that touches nothing but the state it is called for.
    unsafe {
        lua.exec_raw::<()>((), |state| {
            ffi::lua_sethook(state, Some(deadline_hook), ffi::LUA_MASKCOUNT, CHECK_EVERY);
        })
    }
}

/// Raises once the thread's deadline has passed. It holds nothing that
/// needs dropping when `lua_error` unwinds out of it.
unsafe extern "C-unwind" fn deadline_hook(state: *mut ffi::lua_State, _ar: *mut ffi::lua_Debug) {
    let expired = DEADLINE.with(|d| d.get()).is_some_and(|at| Instant::now() >= at);
    if !expired {
        return;
    }
    // From now on every instruction of this coroutine raises.
    ffi::lua_sethook(state, Some(deadline_hook), ffi::LUA_MASKCOUNT, 1);
    ffi::luaL_where(state, 1);
    ffi::lua_pushlstring(state, DEADLINE_MESSAGE.as_ptr() as *const c_char, DEADLINE_MESSAGE.len());
    ffi::lua_concat(state, 2);
    ffi::lua_error(state);
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn vm() -> Lua {
        let lua = Lua::new();
        install(&lua, 64 * 1024 * 1024).unwrap();
        lua
    }

    #[test]
    fn the_deadline_stops_a_loop_that_pcall_tries_to_shield() {
        let lua = vm();
        arm(&lua, Instant::now() + Duration::from_millis(50)).unwrap();
        let err = lua.load("while true do pcall(function() while true do end end) end").exec().unwrap_err();
        assert!(is_deadline(&err), "{err}");
        disarm();
    }

    #[test]
    fn the_deadline_reaches_a_coroutine_made_before_it_was_armed() {
        let lua = vm();
        lua.load("spin = coroutine.wrap(function() while true do end end)").exec().unwrap();
        arm(&lua, Instant::now() + Duration::from_millis(50)).unwrap();
        let err = lua.load("spin()").exec().unwrap_err();
        assert!(is_deadline(&err), "{err}");
        disarm();
    }

    #[test]
    fn a_new_deadline_calms_an_escalated_hook() {
        let lua = vm();
        arm(&lua, Instant::now()).unwrap();
        assert!(lua.load("local x = 0 for i = 1, 1e6 do x = x + i end").exec().is_err());
        arm(&lua, Instant::now() + Duration::from_secs(60)).unwrap();
        lua.load("local x = 0 for i = 1, 1e6 do x = x + i end").exec().unwrap();
        disarm();
    }

    #[test]
    fn a_watchdog_stops_a_loop_only_once_the_deadline_has_passed() {
        let lua = Lua::new();
        let deadline = Instant::now() + Duration::from_millis(100);
        set(deadline);
        let watchdog = Watchdog::start(&lua, deadline).unwrap();
        let err = lua.load("while true do end").exec().unwrap_err();
        drop(watchdog);
        disarm();
        assert!(is_deadline(&err), "{err}");
        assert!(Instant::now() >= deadline);
    }

    #[test]
    fn an_allocation_bomb_hits_the_memory_limit() {
        let lua = vm();
        let err = lua
            .load("local t = {} for i = 1, 1e9 do t[i] = string.rep('x', 1024) .. i end")
            .exec()
            .unwrap_err();
        assert!(is_out_of_memory(&err), "{err}");
        let err = lua.load("return string.rep('x', 1024 * 1024 * 1024)").exec().unwrap_err();
        assert!(is_out_of_memory(&err), "{err}");
        lua.load("return 1 + 1").exec().unwrap();
    }
}
