"""What the three web apps (the gateway, its console, the pool service) share: bearer
tokens, the runtime dependency, exceptions as OpenAI-shaped errors, /metrics and request ids.
Only fronts import it."""
