"""Bridges to other toolkits. Imported lazily; the core never needs them at run time."""
