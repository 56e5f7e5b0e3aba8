"""The float architectures the registry (model/__init__.py) builds by name."""
