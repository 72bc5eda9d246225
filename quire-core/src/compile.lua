-- Runs inside the compile VM, with Debian's Fennel loaded as `fennel`.
-- Compiles one pipeline source to Lua and reports what the Rust side needs to
-- map positions back to the .fnl file: the sourcemap (Lua line -> Fennel
-- line) and the position of every call form, for columns.
local fennel, source, filename, allowed_globals = ...

local ok, lua_or_err = pcall(fennel.compileString, source, {
  filename = filename,
  allowedGlobals = allowed_globals,
  ["error-pinpoint"] = false,
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

-- Every list whose head is a symbol: {fennel line, 1-based column, head}.
local calls = {}
local function walk(form)
  if type(form) ~= "table" then return end
  if fennel["list?"](form) and fennel["sym?"](form[1]) and form.line then
    calls[#calls + 1] = {form.line, (form.col or 0) + 1, tostring(form[1])}
  end
  for _, child in ipairs(form) do walk(child) end
  if not fennel["list?"](form) and not fennel["sequence?"](form) and not fennel["sym?"](form) then
    for k, v in pairs(form) do
      if type(k) ~= "number" then walk(v) end
    end
  end
end
for parsed, form in fennel.parser(source, filename) do
  if parsed then walk(form) end
end

return true, lua_or_err, lines, calls
