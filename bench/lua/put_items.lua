-- PUT /items/<prefix><n> with a small document, n cycling over BENCH_KEYS ids.
local prefix = os.getenv("BENCH_KEY")
local keys = tonumber(os.getenv("BENCH_KEYS"))
local headers = {["Content-Type"] = "application/json"}
local n = 0
function request()
  n = n + 1
  local body = '{"value": {"n": ' .. n .. ', "tag": "bench"}}'
  return wrk.format("PUT", "/items/" .. prefix .. (n % keys), headers, body)
end
