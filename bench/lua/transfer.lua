-- POST /txn: move 1 from account a to account b and count it in a's "sent" counter, a and b
-- distinct and cycling over BENCH_KEYS accounts. The accounts always sum to 0; the "sent"
-- counters sum to the number of transfers applied.
local prefix = os.getenv("BENCH_KEY")
local keys = tonumber(os.getenv("BENCH_KEYS"))
local headers = {["Content-Type"] = "application/json"}
local n = 0
function request()
  n = n + 1
  local a = n % keys
  local b = (a + 1 + (n * 7919) % (keys - 1)) % keys
  local body = '{"then": [{"op": "increment", "counter": "' .. prefix .. 'acct-' .. a
    .. '", "by": -1}, {"op": "increment", "counter": "' .. prefix .. 'acct-' .. b
    .. '"}, {"op": "increment", "counter": "' .. prefix .. 'sent-' .. a .. '"}]}'
  return wrk.format("POST", "/txn", headers, body)
end
