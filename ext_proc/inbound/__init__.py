"""The client APIs Hapax speaks besides OpenAI's chat and embeddings.

An inbound API turns its requests into the canonical OpenAI chat body (client_request.py) and
the canonical chat answer back into its own shape (a ResponseStage run after the provider's
translator, shapes.py), so an inbound API adds no provider translator. The legacy completions
API is one (completions.py), Anthropic's Messages API another (messages_request.py,
messages_answer.py); what their answer shapes share is answer.py's.
"""
