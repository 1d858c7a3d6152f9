"""Pure cores: (what is wanted, what is observed, now) → what to do next. No I/O here."""
