//! What keeps Lua code from running away, in both VMs: a memory limit on
//! the VM's allocator, and a deadline checked by an instruction-count hook.
//!
//! The hook is installed once, when a VM is made, on its main thread.
//! Lua copies a thread's hook to every coroutine created from it, so a
//! coroutine (even one made at top level and resumed in a run-fn) is under
//! the same deadline; the deadline itself lives in a thread-local, so each
//! OS thread running a VM has its own. Once the deadline has passed, the
//! hook raises on every instruction of that coroutine, so `pcall` cannot
//! swallow it: the error is raised again at the first instruction after
//! the `pcall`. A VM that is stuck inside one long C call (a huge pattern
//! match) never reaches the hook; the runtime's watchdog handles that.

use std::cell::Cell;
use std::ffi::c_char;
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
    fn an_allocation_bomb_hits_the_memory_limit() {
        let lua = vm();
        let err = lua.load("local t = {} for i = 1, 1e9 do t[i] = string.rep('x', 1024) .. i end").exec().unwrap_err();
        assert!(is_out_of_memory(&err), "{err}");
        let err = lua.load("return string.rep('x', 1024 * 1024 * 1024)").exec().unwrap_err();
        assert!(is_out_of_memory(&err), "{err}");
        lua.load("return 1 + 1").exec().unwrap();
    }
}
