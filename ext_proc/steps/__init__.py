"""ext_proc's two steps: the router step (once per request) and the upstream step (once per attempt)."""
