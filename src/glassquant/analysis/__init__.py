"""Analysis: traces of single outputs, overflow certificates."""
