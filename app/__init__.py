"""lockstep: counters and JSON records over HTTP, correct under any concurrency."""
