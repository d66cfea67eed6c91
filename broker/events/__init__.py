"""Events: what the broker records about every state change, and how it reaches the message bus."""
