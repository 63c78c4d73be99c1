"""The collector: receives agents' segments over TLS and builds the feature database."""
