"""The seed's example configuration, verbatim from the original design brief.

Several tests load it exactly as written: it must keep loading unchanged.
"""

SEED_YAML = """\
providers:
  anthropic: {type: anthropic, model: claude-3-haiku, api_key: "${ANTHROPIC_API_KEY}"}
  openai:    {type: openai,    model: gpt-4,          api_key: "${OPENAI_API_KEY}"}
provider_preference: [anthropic, openai]
routes:
  - path: "/v1/marketing/completions"
    handler: completion
    version: v1
    metrics_labels: {department: marketing}
"""
