"""Configuration: titus.conf and titus.toml read into one checked model (load.py)."""
