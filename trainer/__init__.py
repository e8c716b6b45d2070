"""Trainer service (needs the [trainer] extra): a later issue fills it in."""
