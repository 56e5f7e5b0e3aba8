"""The Python integer engines: numpy (the executable specification) and torch (an independent twin)."""
