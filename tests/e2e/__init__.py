"""End-to-end tests: the real Envoy, control plane and ext_proc over real sockets, real clients."""
