"""Envoy's external processor: the router and upstream steps, the translators, and what they count."""
