-- POST /counters/<key>/increment on one hot counter (BENCH_KEY).
wrk.method = "POST"
wrk.path = "/counters/" .. os.getenv("BENCH_KEY") .. "/increment"
