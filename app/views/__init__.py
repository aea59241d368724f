"""HTTP handlers: parse and validate the request, call the combiner or storage, answer."""
