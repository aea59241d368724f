-- PATCH one hot record (BENCH_KEY) with merge patches cycling over BENCH_KEYS fields.
local path = "/items/" .. os.getenv("BENCH_KEY")
local fields = tonumber(os.getenv("BENCH_KEYS"))
local headers = {["Content-Type"] = "application/merge-patch+json"}
local n = 0
function request()
  n = n + 1
  return wrk.format("PATCH", path, headers, '{"f' .. (n % fields) .. '": ' .. n .. '}')
end
