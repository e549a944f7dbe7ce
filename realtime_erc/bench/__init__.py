"""The benchmark suite behind ``realtime-erc bench`` (JSON + markdown reports)."""
