-- GET /access: count one access, answer the count as text.
wrk.path = "/access"
