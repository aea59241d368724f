-- GET /counters/<key> on one existing counter (BENCH_KEY).
wrk.path = "/counters/" .. os.getenv("BENCH_KEY")
