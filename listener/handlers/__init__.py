"""Built-in handlers and the factory that builds them from configuration."""
