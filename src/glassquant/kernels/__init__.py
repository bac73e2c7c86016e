"""Fast paths. Each returns exactly the integers of the reference in ``dialects._base``."""
