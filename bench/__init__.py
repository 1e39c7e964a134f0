"""Hapax's benchmark harness (issue #8): ``python -m bench`` from the repo root.

Not an installed package: it measures the gateway from outside, the way an
operator would, with the same binaries (``hapax serve``, Envoy, wrk).
"""
