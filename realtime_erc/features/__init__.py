"""Per-utterance feature extractors (text, audio, visual) and the packaged weights they use."""
