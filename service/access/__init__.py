"""Who may do what: API keys, their scopes, and the caller a request is made by."""
