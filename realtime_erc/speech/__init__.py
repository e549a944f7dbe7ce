"""Speech: voice activity detection, utterance segmentation, speech recognition."""
