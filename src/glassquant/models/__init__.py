"""Real networks glassquant is measured on (all offline)."""
