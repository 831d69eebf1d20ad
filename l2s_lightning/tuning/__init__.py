"""The tuner's pure parts: signals of layer pairs from features, and the choice among measured settings."""
