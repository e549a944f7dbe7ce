"""Event sources: microphone, camera and recorded sessions (read, write, replay)."""
