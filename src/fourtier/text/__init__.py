"""Text: the encoders that turn VLM answers into e_i (paper §3.2), the embed stage's streaming writer and
reader, and the class texts of zero-shot recognition."""
