"""Unit tests: no gateway and no Envoy started; they answer in seconds (./dev test tests/unit)."""
