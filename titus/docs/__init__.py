"""Generated documentation: docs/options.md and docs/titus.8 from the option table."""
