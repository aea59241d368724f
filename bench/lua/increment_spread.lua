-- POST /counters/<prefix><n>/increment, n cycling over BENCH_KEYS counters.
local prefix = os.getenv("BENCH_KEY")
local keys = tonumber(os.getenv("BENCH_KEYS"))
local n = 0
function request()
  n = n + 1
  return wrk.format("POST", "/counters/" .. prefix .. (n % keys) .. "/increment")
end
