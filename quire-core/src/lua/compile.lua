-- Runs inside the compile VM, with Debian's Fennel loaded as `fennel`.
-- Compiles one pipeline source to Lua and reports what the Rust side needs to
-- map positions back to the .fnl file: the sourcemap (Lua line -> Fennel
-- line) and the position of every call form, for columns. Call positions
-- come from a compiler plugin, so the source is parsed only once.
local fennel, source, filename, allowed_globals, search_path, macro_path = ...

-- Modules and macros are found only where the Rust side allows (the
-- pipeline's own .quire directory), never on the host's FENNEL_PATH.
fennel.path = search_path
fennel["macro-path"] = macro_path

-- io.open is the Rust side's confined reader; a file that is there but
-- out of bounds stops the compilation with a plain message.
local confined_open = quire_open
quire_open = nil
io.open = function(path, mode)
  local handle, message, refused = confined_open(path, mode)
  if refused then error(message, 0) end
  return handle, message
end

-- Every call form compiled: {fennel line, 1-based column, head}.
local calls = {}
local positions = {
  name = "quire-call-positions",
  versions = "^1%.",
  call = function(ast)
    local head = ast[1]
    if ast.line and fennel["sym?"](head) then
      calls[#calls + 1] = {ast.line, (ast.col or 0) + 1, tostring(head)}
    end
  end,
}

local ok, lua_or_err = pcall(fennel.compileString, source, {
  filename = filename,
  allowedGlobals = allowed_globals,
  ["error-pinpoint"] = false,
  plugins = {positions},
})
if not ok then
  return false, tostring(lua_or_err)
end

local lines = {}
local map = require("fennel.compiler").sourcemap["@" .. filename] or {}
for i = 1, #map do
  local entry = map[i]
  lines[i] = (entry and entry[2]) or 0
end

return true, lua_or_err, lines, calls
